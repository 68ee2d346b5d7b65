//! Reads: shard iterators (where one starts: [`super::positions`]) and GetRecords, served by
//! the shard's leader (forwarded there from other nodes).

use riptide_proto::v1;
use riptide_proto::{SequenceNumber, ShardId};

use super::Core;
use super::positions::{self, Start};
use super::routing::{self, Route};
use crate::error::ServiceError;
use crate::shard::ShardReader;
use crate::shard::iterator::{IteratorError, ShardIterator};
use crate::validate;

impl Core {
    /// A shard iterator, as the request asks for it: checked here, resolved to a position by
    /// the shard's leader.
    pub async fn get_shard_iterator(
        &self,
        req: v1::GetShardIteratorRequest,
    ) -> Result<String, ServiceError> {
        let info = self.stream(&req.stream_name)?;
        let shard = self.shard(&info, &req.shard_id)?;
        let start = Start::from_request(
            req.shard_iterator_type,
            &req.starting_sequence_number,
            req.timestamp_ms,
        )?;
        let recheck_until = tokio::time::Instant::now() + routing::FORWARD_TIMEOUT;
        let group = loop {
            let addrs = match self.route(shard).await? {
                Route::Local(g) => break g,
                Route::Remote(addrs) => addrs,
            };
            let forwarded = self
                .forward_to_leader(shard, &addrs, recheck_until, |addr| {
                    let req = req.clone();
                    async move {
                        let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                        c.get_shard_iterator(routing::onward(req)).await
                    }
                })
                .await;
            // None: the leader did not answer and another leads the shard now; route again.
            if let Some(answer) = forwarded {
                return Ok(answer.map_err(|(e, _)| e)?.into_inner().shard_iterator);
            }
        };
        let view = group.view();
        let newest = ShardReader::last(view)?.map(|(s, _)| s);
        let first_at_or_after = match start {
            Start::AtTimestamp(ms) => ShardReader::first_at_or_after(view, ms)?,
            _ => None,
        };
        let position =
            positions::start_position(ShardId(shard.index), start, newest, first_at_or_after)?;
        Ok(ShardIterator {
            stream: info.name.clone(),
            stream_created_ms: info.created_ms,
            shard: ShardId(shard.index),
            position,
            issued_ms: self.clock.now_ms(),
        }
        .encode())
    }

    /// Up to `limit` records (0: the most one call returns) from the iterator `token`, with
    /// the iterator to continue from.
    pub async fn get_records(
        &self,
        token: &str,
        limit: u32,
        numeric_positions: bool,
    ) -> Result<v1::GetRecordsResponse, ServiceError> {
        let limit = validate::get_limit(limit)?;
        let it = ShardIterator::decode(token, self.clock.now_ms()).map_err(|e| match e {
            IteratorError::Malformed(why) => {
                ServiceError::invalid("shard_iterator", format!("malformed: {why}"))
            }
            IteratorError::Expired { .. } => ServiceError::ExpiredIterator(e.to_string()),
        })?;
        let info = self.stream(&it.stream)?;
        if info.created_ms != it.stream_created_ms {
            return Err(ServiceError::not_found(
                "shard_iterator",
                format!(
                    "stream {:?} was deleted after the iterator was issued",
                    it.stream
                ),
            ));
        }
        let shard = self.shard(&info, &it.shard.to_string())?;
        let recheck_until = tokio::time::Instant::now() + routing::FORWARD_TIMEOUT;
        let group = loop {
            let addrs = match self.route(shard).await? {
                Route::Local(g) => break g,
                Route::Remote(addrs) => addrs,
            };
            let req = v1::GetRecordsRequest {
                shard_iterator: token.to_string(),
                limit: limit as u32,
                numeric_positions,
            };
            let forwarded = self
                .forward_to_leader(shard, &addrs, recheck_until, |addr| {
                    let req = req.clone();
                    async move {
                        let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                        c.get_records(routing::onward(req)).await
                    }
                })
                .await;
            // None: the leader did not answer and another leads the shard now; route again.
            if let Some(answer) = forwarded {
                return Ok(answer.map_err(|(e, _)| e)?.into_inner());
            }
        };
        let view = group.view().clone();
        let position = it.position;
        let read = move || {
            let records =
                ShardReader::read(&view, position, limit, validate::MAX_GET_RECORDS_BYTES)?;
            let last = ShardReader::last(&view)?;
            Ok::<_, riptide_raft::StorageError>((records, last))
        };
        // Readers at the tail (subscriptions, live consumers) read entries still in memory:
        // no disk to wait for, so no hand-off to the blocking pool either.
        let (records, newest) = if group
            .view()
            .log_cached_from(SequenceNumber(position).log_index())
        {
            read()?
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| ServiceError::internal(format!("read task failed: {e}")))??
        };
        let last_returned = records.last().map(|r| (r.sequence_number, r.arrival_ms));
        let next = positions::next_position(last_returned.map(|(s, _)| s), it.position);
        let millis_behind_latest = positions::millis_behind_latest(last_returned, newest);
        Ok(v1::GetRecordsResponse {
            records: records
                .into_iter()
                .map(|r| {
                    let (sequence_number, sequence) = if numeric_positions {
                        (String::new(), r.sequence_number.0)
                    } else {
                        (r.sequence_number.to_string(), 0)
                    };
                    v1::Record {
                        sequence_number,
                        approximate_arrival_timestamp_ms: r.arrival_ms,
                        data: r.data,
                        partition_key: r.partition_key,
                        sequence,
                    }
                })
                .collect(),
            next_shard_iterator: ShardIterator {
                position: next,
                issued_ms: self.clock.now_ms(),
                ..it
            }
            .encode(),
            millis_behind_latest,
        })
    }
}
