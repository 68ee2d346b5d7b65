//! Writes: PutRecord(s) split by shard, each shard's records written as one Raft entry on its
//! leader (or forwarded there), charged against the shard's write quota ([`super::quota`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use riptide_proto::v1;
use riptide_proto::{RESENT_HEADER, SequenceNumber, ShardId};
use riptide_raft::RaftError;

use super::Core;
use super::quota::{Bucket, Quota};
use super::routing::{self, LEADER_WAIT, Route};
use crate::controller::ShardInfo;
use crate::error::ServiceError;
use crate::shard::ShardCommand;
use crate::validate;

/// A record to put, with its shard already chosen.
#[derive(Debug, Clone)]
pub struct RoutedRecord {
    pub partition_key: String,
    pub data: Bytes,
    /// The hash key that chose the shard; sent along when forwarding so that the leader's node
    /// picks the same shard.
    pub hash_key: u128,
}

/// Each record's outcome: where it was written, or why not.
pub type PutResults = Vec<Result<(ShardId, SequenceNumber), ServiceError>>;

impl Core {
    /// Puts one record: PutRecords with one entry, its fields named without the `records[0].`
    /// prefix. `sequence_number_for_ordering` is checked for form only: sequence numbers always
    /// increase within a shard, which is what Kinesis promises for it.
    pub async fn put_record(
        &self,
        stream: &str,
        entry: v1::PutRecordsEntry,
        sequence_number_for_ordering: Option<&str>,
    ) -> Result<(ShardId, SequenceNumber), ServiceError> {
        if let Some(s) = sequence_number_for_ordering {
            SequenceNumber::parse(s, "sequence_number_for_ordering")?;
        }
        let mut results = self.put_entries(stream, vec![entry], |_| "").await?;
        results
            .pop()
            .ok_or_else(|| ServiceError::internal("no result for the record"))?
    }

    /// Puts records; one result per record, in order. Bad input fails the whole call, naming
    /// the record (`records[i].`).
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<v1::PutRecordsEntry>,
    ) -> Result<PutResults, ServiceError> {
        self.put_entries(stream, records, |i| format!("records[{i}]."))
            .await
    }

    /// [`Core::put_records`], with `field_prefix` giving the prefix of record `i`'s fields in
    /// errors about its input (formatted only for an error).
    async fn put_entries<P: std::fmt::Display>(
        &self,
        stream: &str,
        records: Vec<v1::PutRecordsEntry>,
        field_prefix: impl Fn(usize) -> P,
    ) -> Result<PutResults, ServiceError> {
        let mut total = 0usize;
        for (i, r) in records.iter().enumerate() {
            validate::record(&r.partition_key, r.data.len())
                .map_err(|e| e.in_field(field_prefix(i)))?;
            total += r.data.len() + r.partition_key.len();
        }
        validate::put_records(records.len(), total)?;
        let info = self.writable_stream(stream).await?;
        let ranges: Vec<_> = info.shards.iter().map(ShardInfo::range).collect();
        // Shard index -> (positions in the request, records).
        let mut by_shard: BTreeMap<usize, (Vec<usize>, Vec<RoutedRecord>)> = BTreeMap::new();
        for (i, r) in records.into_iter().enumerate() {
            let hash_key = match &r.explicit_hash_key {
                Some(k) => riptide_proto::parse_hash_key(k, "explicit_hash_key")
                    .map_err(|e| ServiceError::from(e).in_field(field_prefix(i)))?,
                None => riptide_proto::hash_key_of(&r.partition_key),
            };
            let shard = riptide_proto::shard_for(&ranges, hash_key).ok_or_else(|| {
                ServiceError::internal(format!("no shard of {stream:?} holds hash key {hash_key}"))
            })?;
            let slot = by_shard.entry(shard).or_default();
            slot.0.push(i);
            slot.1.push(RoutedRecord {
                partition_key: r.partition_key,
                data: r.data,
                hash_key,
            });
        }
        let count = by_shard.values().map(|(p, _)| p.len()).sum();
        let puts = by_shard.into_iter().map(|(shard, (positions, recs))| {
            let info = &info;
            async move {
                let sh = &info.shards[shard];
                let n = recs.len();
                let results = match self.put_shard(&info.name, sh, recs).await {
                    Ok(r) => r,
                    Err(e) => vec![Err(e); n],
                };
                (positions, ShardId(sh.index), results)
            }
        });
        let mut out: Vec<Option<Result<(ShardId, SequenceNumber), ServiceError>>> =
            vec![None; count];
        for (positions, shard, results) in futures::future::join_all(puts).await {
            for (pos, r) in positions.into_iter().zip(results) {
                out[pos] = Some(r.map(|seq| (shard, seq)));
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServiceError::internal("record lost its result"))))
            .collect())
    }

    /// Writes records of one shard: as one Raft entry when this node leads it, forwarded to its
    /// leader otherwise.
    async fn put_shard(
        &self,
        stream: &str,
        shard: &ShardInfo,
        records: Vec<RoutedRecord>,
    ) -> Result<Vec<Result<SequenceNumber, ServiceError>>, ServiceError> {
        // A write refused before it was appended (a leader whose lease is not established
        // yet, or one that just stepped down) is routed and sent again, for a little while.
        let deadline = Instant::now() + LEADER_WAIT;
        // A forward its leader leaves unanswered is routed again when another node leads the
        // shard now, until the forward timeout.
        let recheck_until = tokio::time::Instant::now() + routing::FORWARD_TIMEOUT;
        let mut charged = false;
        loop {
            let group = match self.route(shard).await? {
                Route::Local(group) => group,
                Route::Remote(addrs) => {
                    match self
                        .put_remote(stream, shard, &records, &addrs, recheck_until)
                        .await
                    {
                        // The leader this node forwarded to did not answer, and another leads
                        // the shard now: the records go there (or are written here) as well.
                        None => {
                            routing::note_resent();
                            continue;
                        }
                        // The leader this node knows is gone (its connection is refused, so
                        // the records never reached it): wait for the next leader instead of
                        // failing, as for a local NotLeader.
                        Some(Err((_, true))) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        Some(other) => return other.map_err(|(e, _)| e),
                    }
                }
            };
            #[cfg(feature = "failpoints")]
            self.hold_writes_while_asked().await;
            if !charged {
                self.take_quota(shard, &records)?;
                charged = true;
            }
            let entry = ShardCommand::encode_put(
                self.clock.now_ms(),
                records
                    .iter()
                    .map(|r| (r.partition_key.as_str(), r.data.as_ref())),
            );
            match group.write(entry).await {
                Ok(out) => {
                    return Ok((0..records.len() as u32)
                        .map(|pos| Ok(SequenceNumber::from_entry(out.index, pos)))
                        .collect());
                }
                Err(RaftError::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(RaftError::Discarded { .. }) => {
                    return Err(ServiceError::MayHaveBeenApplied {
                        what: format!("shard {}", ShardId(shard.index)),
                        effect: "the records",
                        done: "stored",
                    });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Forwards one shard's records to the node that leads it (or may know who does); `None`
    /// when that node left them unanswered and another leads the shard now
    /// ([`Core::forward_to_leader`]).
    async fn put_remote(
        &self,
        stream: &str,
        shard: &ShardInfo,
        records: &[RoutedRecord],
        addrs: &[String],
        recheck_until: tokio::time::Instant,
    ) -> Option<Result<Vec<Result<SequenceNumber, ServiceError>>, (ServiceError, bool)>> {
        let req = v1::PutRecordsRequest {
            stream_name: stream.to_string(),
            records: records
                .iter()
                .map(|r| v1::PutRecordsEntry {
                    data: r.data.clone(),
                    partition_key: r.partition_key.clone(),
                    explicit_hash_key: Some(r.hash_key.to_string()),
                })
                .collect(),
            numeric_positions: true,
        };
        let resp = self
            .forward_to_leader(shard, addrs, recheck_until, |addr| {
                let req = req.clone();
                async move {
                    let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                    let resp = c.put_records(routing::onward(req)).await?;
                    // The node forwarded to may have sent the records to two leaders itself.
                    if resp.metadata().contains_key(RESENT_HEADER) {
                        routing::note_resent();
                    }
                    Ok(resp)
                }
            })
            .await?;
        let resp = match resp {
            Ok(resp) => resp.into_inner(),
            Err(e) => return Some(Err(e)),
        };
        Some(Ok(resp
            .records
            .into_iter()
            .map(|r| {
                if r.error_code.is_empty() {
                    r.position().map(|(_, seq)| seq).map_err(ServiceError::from)
                } else {
                    Err(ServiceError::Remote {
                        code: r
                            .error_code
                            .parse()
                            .unwrap_or(riptide_proto::ErrorCode::Internal),
                        message: r.error_message,
                    })
                }
            })
            .collect()))
    }

    /// For tests: while the failpoint `core::hold_writes:<data dir>` is set (to `return`),
    /// the writes this node would append as a shard's leader wait unanswered, as at a leader
    /// that froze; the failpoint `core::holding_write:<data dir>` is evaluated once per write
    /// held, so that a test can count them (`fail::cfg_callback`). Named after the node's data
    /// directory, since the nodes of a test share one process and its failpoint registry.
    #[cfg(feature = "failpoints")]
    async fn hold_writes_while_asked(&self) {
        let dir = self.config.data_dir.display();
        let hold = format!("core::hold_writes:{dir}");
        if fail::eval(&hold, |_| ()).is_none() {
            return;
        }
        fail::eval(&format!("core::holding_write:{dir}"), |_| ());
        while fail::eval(&hold, |_| ()).is_some() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Charges a write against the shard's quota, when one is configured, at the time of the
    /// node's clock.
    fn take_quota(&self, shard: &ShardInfo, records: &[RoutedRecord]) -> Result<(), ServiceError> {
        let limits = &self.config.limits;
        let quota = Quota {
            records_per_sec: limits.shard_write_records_per_sec,
            bytes_per_sec: limits.shard_write_bytes_per_sec,
        };
        if !quota.is_on() {
            return Ok(());
        }
        let bytes: u64 = records
            .iter()
            .map(|r| (r.data.len() + r.partition_key.len()) as u64)
            .sum();
        let now = self.clock.now_ms();
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        quotas
            .entry(shard.group)
            .or_insert_with(|| Bucket::full(quota, now))
            .take(quota, now, records.len() as u64, bytes)
            .map_err(|exceeded| ServiceError::Throttled {
                shard: ShardId(shard.index),
                quota: exceeded,
            })
    }
}
