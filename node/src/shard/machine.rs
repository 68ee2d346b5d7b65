//! The shard state machine. Each committed `Put` entry stores its records in the `records`
//! family, keyed by sequence number (the entry's log index and the record's position in it), so
//! every replica holds the same records under the same sequence numbers. `Trim` entries remove
//! the records older than the stream's retention, by range, on every replica alike.

use bytes::Bytes;
use riptide_proto::SequenceNumber;
use riptide_raft::{AppliedEntry, DataFamily, GroupBatch, GroupView, StateMachine, StorageError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A record as a producer sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    pub partition_key: String,
    pub data: Bytes,
}

/// What a shard's Raft log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardCommand {
    /// Records received by the leader at `arrival_ms`; record `i` gets the sequence number
    /// `SequenceNumber::from_entry(entry index, i)`.
    Put {
        arrival_ms: u64,
        records: Vec<NewRecord>,
    },
    /// Deletes every record that arrived before `before_ms`.
    Trim { before_ms: u64 },
}

impl ShardCommand {
    pub fn encode(&self) -> Bytes {
        Bytes::from(bincode::serialize(self).expect("shard commands always serialize"))
    }

    fn decode(raw: &[u8], index: u64) -> Result<Self, StorageError> {
        bincode::deserialize(raw).map_err(|e| StorageError::Corrupt {
            what: format!("shard command at index {index}"),
            reason: e.to_string(),
        })
    }
}

/// A record as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub sequence_number: SequenceNumber,
    pub arrival_ms: u64,
    pub partition_key: String,
    pub data: Bytes,
}

const META_LAST: &[u8] = b"last";
const META_TRIM: &[u8] = b"trim";
/// Bytes before the partition key in a stored value: arrival time and key length.
const VALUE_HEADER: usize = 8 + 2;

fn encode_value(arrival_ms: u64, r: &NewRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(VALUE_HEADER + r.partition_key.len() + r.data.len());
    v.extend_from_slice(&arrival_ms.to_be_bytes());
    // Partition keys are at most 256 characters of at most 4 bytes, far below u16::MAX.
    v.extend_from_slice(&(r.partition_key.len() as u16).to_be_bytes());
    v.extend_from_slice(r.partition_key.as_bytes());
    v.extend_from_slice(&r.data);
    v
}

fn decode_record(key: &[u8], value: &[u8]) -> Result<StoredRecord, StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        what: "stored record".into(),
        reason: reason.into(),
    };
    let seq: [u8; 8] = key.try_into().map_err(|_| corrupt("key is not 8 bytes"))?;
    if value.len() < VALUE_HEADER {
        return Err(corrupt("value shorter than its header"));
    }
    let arrival_ms = u64::from_be_bytes(value[..8].try_into().expect("8 bytes checked above"));
    let pk_len = usize::from(u16::from_be_bytes([value[8], value[9]]));
    let pk_end = VALUE_HEADER + pk_len;
    if value.len() < pk_end {
        return Err(corrupt("partition key runs past the value"));
    }
    let partition_key = std::str::from_utf8(&value[VALUE_HEADER..pk_end])
        .map_err(|_| corrupt("partition key is not UTF-8"))?
        .to_owned();
    Ok(StoredRecord {
        sequence_number: SequenceNumber(u64::from_be_bytes(seq)),
        arrival_ms,
        partition_key,
        data: Bytes::copy_from_slice(&value[pk_end..]),
    })
}

fn encode_last(seq: SequenceNumber, arrival_ms: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.0.to_be_bytes());
    v[8..].copy_from_slice(&arrival_ms.to_be_bytes());
    v
}

/// The state machine of one shard replica.
pub struct ShardMachine {
    /// Bumped after every applied batch, to wake the subscriptions of this node.
    applied: std::sync::Arc<watch::Sender<u64>>,
}

impl ShardMachine {
    pub fn new(applied: std::sync::Arc<watch::Sender<u64>>) -> Self {
        Self { applied }
    }
}

impl StateMachine for ShardMachine {
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        let mut last = None;
        let mut responses = Vec::with_capacity(entries.len());
        for e in entries {
            if e.data.is_empty() {
                responses.push(Bytes::new());
                continue;
            }
            match ShardCommand::decode(&e.data, e.index)? {
                ShardCommand::Put {
                    arrival_ms,
                    records,
                } => {
                    for (pos, r) in records.iter().enumerate() {
                        let seq = SequenceNumber::from_entry(e.index, pos as u32);
                        batch.put(
                            DataFamily::Records,
                            &seq.0.to_be_bytes(),
                            &encode_value(arrival_ms, r),
                        );
                        last = Some((seq, arrival_ms));
                    }
                }
                ShardCommand::Trim { before_ms } => {
                    // Records written earlier in this same batch are newer than anything a
                    // trim removes, so reading the applied state is enough.
                    if let Some(keep_from) = ShardReader::first_at_or_after(view, before_ms)? {
                        batch.delete_range(
                            DataFamily::Records,
                            &0u64.to_be_bytes(),
                            &keep_from.0.to_be_bytes(),
                        );
                        batch.put(DataFamily::ShardMeta, META_TRIM, &keep_from.0.to_be_bytes());
                    } else if let Some((seq, _)) = ShardReader::last(view)? {
                        // Everything is older than the cut.
                        let next = seq.0 + 1;
                        batch.delete_range(
                            DataFamily::Records,
                            &0u64.to_be_bytes(),
                            &next.to_be_bytes(),
                        );
                        batch.put(DataFamily::ShardMeta, META_TRIM, &next.to_be_bytes());
                    }
                }
            }
            responses.push(Bytes::new());
        }
        if let Some((seq, arrival_ms)) = last {
            batch.put(
                DataFamily::ShardMeta,
                META_LAST,
                &encode_last(seq, arrival_ms),
            );
        }
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
        Ok(responses)
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }
}

/// Reads of a shard replica's applied records.
pub struct ShardReader;

impl ShardReader {
    /// The newest record's sequence number and arrival time; kept after a trim removes it.
    pub fn last(view: &GroupView) -> Result<Option<(SequenceNumber, u64)>, StorageError> {
        let Some(v) = view.get(DataFamily::ShardMeta, META_LAST)? else {
            return Ok(None);
        };
        if v.len() != 16 {
            return Err(StorageError::Corrupt {
                what: "shard's last record marker".into(),
                reason: format!("{} bytes instead of 16", v.len()),
            });
        }
        let seq = u64::from_be_bytes(v[..8].try_into().expect("length checked"));
        let at = u64::from_be_bytes(v[8..].try_into().expect("length checked"));
        Ok(Some((SequenceNumber(seq), at)))
    }

    /// Up to `limit` records from sequence number `from` on, stopping before `max_bytes` of
    /// data would be passed (the first record is always returned).
    pub fn read(
        view: &GroupView,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut failure = None;
        view.scan(
            DataFamily::Records,
            &from.to_be_bytes(),
            None,
            |k, v| match decode_record(k, v) {
                Ok(r) => {
                    bytes += r.data.len() + r.partition_key.len();
                    if !out.is_empty() && bytes > max_bytes {
                        return false;
                    }
                    out.push(r);
                    out.len() < limit
                }
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// The sequence number of the first retained record that arrived at or after `ms`.
    pub fn first_at_or_after(
        view: &GroupView,
        ms: u64,
    ) -> Result<Option<SequenceNumber>, StorageError> {
        let mut found = None;
        let mut failure = None;
        view.scan(DataFamily::Records, &[], None, |k, v| {
            let (Ok(key), Some(at)) = (<[u8; 8]>::try_from(k), v.get(..8)) else {
                failure = Some(StorageError::Corrupt {
                    what: "stored record".into(),
                    reason: "malformed key or value header".into(),
                });
                return false;
            };
            let at = u64::from_be_bytes(at.try_into().expect("8 bytes"));
            if at >= ms {
                found = Some(SequenceNumber(u64::from_be_bytes(key)));
                return false;
            }
            true
        })?;
        match failure {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// The first retained record, if any.
    pub fn first(view: &GroupView) -> Result<Option<StoredRecord>, StorageError> {
        Ok(Self::read(view, 0, 1, usize::MAX)?.into_iter().next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_records_round_trip() {
        let r = NewRecord {
            partition_key: "user-1".into(),
            data: Bytes::from_static(b"hello"),
        };
        let v = encode_value(1234, &r);
        let seq = SequenceNumber::from_entry(9, 3);
        let back = decode_record(&seq.0.to_be_bytes(), &v).expect("decodes");
        assert_eq!(back.sequence_number, seq);
        assert_eq!(back.arrival_ms, 1234);
        assert_eq!(back.partition_key, "user-1");
        assert_eq!(back.data, r.data);
        assert!(decode_record(&[0; 8], &v[..5]).is_err());
        assert!(decode_record(&[0; 7], &v).is_err());
    }

    #[test]
    fn commands_round_trip() {
        let c = ShardCommand::Put {
            arrival_ms: 7,
            records: vec![NewRecord {
                partition_key: "k".into(),
                data: Bytes::from_static(b"d"),
            }],
        };
        assert_eq!(ShardCommand::decode(&c.encode(), 1).expect("decodes"), c);
        assert!(ShardCommand::decode(b"\xff\xff\xff", 1).is_err());
    }
}
