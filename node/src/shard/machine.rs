//! The shard state machine. A shard's Raft log is its record store (the group is
//! `log_is_data`): a committed `Put` entry stays in the log, and readers read the records from
//! the log entries up to the last applied one. Applying a batch of 500 records therefore writes
//! only the shard's "last record" marker; the records' bytes are written once, by the log
//! append that made them durable. Record `i` of the entry at index `n` has the sequence number
//! `SequenceNumber::from_entry(n, i)`, so every replica holds the same records under the same
//! sequence numbers, and a reader finds a sequence number's entry by its index. `Trim` entries
//! release the log entries older than the stream's retention on every replica alike (all
//! records of an entry share its arrival time, so a trim never splits an entry); the engine
//! deletes them once its own log purge has passed them too.
//!
//! Entry format (big-endian):
//! - Put: `1 ‖ arrival_ms u64 ‖ count u32 ‖ count × (key length u16 ‖ key ‖ data length u32 ‖
//!   data)`
//! - Trim: `2 ‖ before_ms u64`

use bytes::{BufMut, Bytes, BytesMut};
use riptide_proto::SequenceNumber;
use riptide_raft::{AppliedEntry, DataFamily, GroupBatch, GroupView, StateMachine, StorageError};
use tokio::sync::watch;

/// A record as a producer sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRecord {
    pub partition_key: String,
    pub data: Bytes,
}

/// What a shard's Raft log carries.
#[derive(Debug, Clone, PartialEq, Eq)]
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

const TAG_PUT: u8 = 1;
const TAG_TRIM: u8 = 2;
/// Bytes of a Put entry before its first record: tag, arrival time, record count.
const PUT_HEADER: usize = 1 + 8 + 4;

impl ShardCommand {
    pub fn encode(&self) -> Bytes {
        match self {
            ShardCommand::Put {
                arrival_ms,
                records,
            } => Self::encode_put(
                *arrival_ms,
                records
                    .iter()
                    .map(|r| (r.partition_key.as_str(), r.data.as_ref())),
            ),
            ShardCommand::Trim { before_ms } => {
                let mut b = BytesMut::with_capacity(9);
                b.put_u8(TAG_TRIM);
                b.put_u64(*before_ms);
                b.freeze()
            }
        }
    }

    /// Encodes a Put entry straight from borrowed records, copying each record's bytes once.
    /// Partition keys are at most 256 characters (1 KiB) and data at most 1 MiB, as the API
    /// validates before a record gets here.
    pub fn encode_put<'a>(
        arrival_ms: u64,
        records: impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone,
    ) -> Bytes {
        let body: usize = records
            .clone()
            .map(|(k, d)| 2 + k.len() + 4 + d.len())
            .sum();
        let mut b = BytesMut::with_capacity(PUT_HEADER + body);
        b.put_u8(TAG_PUT);
        b.put_u64(arrival_ms);
        b.put_u32(records.len() as u32);
        for (k, d) in records {
            b.put_u16(k.len() as u16);
            b.put_slice(k.as_bytes());
            b.put_u32(d.len() as u32);
            b.put_slice(d);
        }
        b.freeze()
    }

    #[cfg(test)]
    fn decode(raw: &[u8], index: u64) -> Result<Self, StorageError> {
        match Entry::parse(raw, index)? {
            Entry::Trim { before_ms } => Ok(ShardCommand::Trim { before_ms }),
            Entry::Put(put) => Ok(ShardCommand::Put {
                arrival_ms: put.arrival_ms,
                records: put
                    .records()
                    .map(|r| {
                        r.map(|(k, d)| NewRecord {
                            partition_key: k.to_owned(),
                            data: Bytes::copy_from_slice(d),
                        })
                    })
                    .collect::<Result<_, _>>()?,
            }),
        }
    }
}

/// A stored or logged entry, parsed without copying.
enum Entry<'a> {
    Put(PutEntry<'a>),
    Trim { before_ms: u64 },
}

/// A Put entry whose records have been checked to fit the entry exactly.
struct PutEntry<'a> {
    index: u64,
    arrival_ms: u64,
    count: u32,
    /// The records, after the header.
    body: &'a [u8],
}

fn corrupt(index: u64, reason: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what: format!("shard entry at index {index}"),
        reason: reason.into(),
    }
}

impl<'a> Entry<'a> {
    fn parse(raw: &'a [u8], index: u64) -> Result<Self, StorageError> {
        match raw.first() {
            Some(&TAG_PUT) => {
                if raw.len() < PUT_HEADER {
                    return Err(corrupt(index, "put entry shorter than its header"));
                }
                let arrival_ms = u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes"));
                let count = u32::from_be_bytes(raw[9..13].try_into().expect("4 bytes"));
                if count > 1 << SequenceNumber::POSITION_BITS {
                    return Err(corrupt(index, format!("{count} records in one entry")));
                }
                let put = PutEntry {
                    index,
                    arrival_ms,
                    count,
                    body: &raw[PUT_HEADER..],
                };
                // Walk the lengths once, so that readers can trust them.
                let mut n = 0u32;
                let mut it = put.records();
                for r in &mut it {
                    r?;
                    n += 1;
                }
                if n != count || !it.rest.is_empty() {
                    return Err(corrupt(index, "record lengths do not fill the entry"));
                }
                Ok(Entry::Put(put))
            }
            Some(&TAG_TRIM) if raw.len() == 9 => Ok(Entry::Trim {
                before_ms: u64::from_be_bytes(raw[1..9].try_into().expect("8 bytes")),
            }),
            Some(tag) => Err(corrupt(
                index,
                format!("unknown tag {tag} or wrong length {}", raw.len()),
            )),
            None => Err(corrupt(index, "empty entry")),
        }
    }
}

impl<'a> PutEntry<'a> {
    fn records(&self) -> Records<'a> {
        Records {
            index: self.index,
            left: self.count,
            rest: self.body,
        }
    }
}

/// The records of a Put entry, in order: partition key and data.
struct Records<'a> {
    index: u64,
    left: u32,
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(&'a str, &'a [u8]), StorageError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let r = self.rest;
        let fail = |why: &str| Some(Err(corrupt(self.index, why.to_string())));
        let Some(klen) = r
            .get(..2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
        else {
            return fail("record runs past the entry");
        };
        let Some(key) = r.get(2..2 + klen) else {
            return fail("partition key runs past the entry");
        };
        let Ok(key) = std::str::from_utf8(key) else {
            return fail("partition key is not UTF-8");
        };
        let d = 2 + klen;
        let Some(dlen) = r
            .get(d..d + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        else {
            return fail("record runs past the entry");
        };
        let Some(data) = r.get(d + 4..d + 4 + dlen) else {
            return fail("record data runs past the entry");
        };
        self.rest = &r[d + 4 + dlen..];
        Some(Ok((key, data)))
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

fn encode_last(seq: SequenceNumber, arrival_ms: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&seq.0.to_be_bytes());
    v[8..].copy_from_slice(&arrival_ms.to_be_bytes());
    v
}

/// One watch per shard group on this node, bumped after every batch the group applies, so that
/// a subscription wakes for its own shard only.
#[derive(Default)]
pub struct ShardWakers {
    senders: std::sync::Mutex<std::collections::HashMap<u64, std::sync::Arc<watch::Sender<u64>>>>,
}

impl ShardWakers {
    /// The sender of `group`'s watch, created on first use.
    pub fn sender(&self, group: u64) -> std::sync::Arc<watch::Sender<u64>> {
        self.senders
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(group)
            .or_insert_with(|| std::sync::Arc::new(watch::channel(0).0))
            .clone()
    }

    /// A receiver that changes after every batch `group` applies on this node.
    pub fn subscribe(&self, group: u64) -> watch::Receiver<u64> {
        self.sender(group).subscribe()
    }
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
            match Entry::parse(&e.data, e.index)? {
                Entry::Put(put) => {
                    if put.count > 0 {
                        let seq = SequenceNumber::from_entry(e.index, put.count - 1);
                        last = Some((seq, put.arrival_ms));
                    }
                }
                Entry::Trim { before_ms } => {
                    // Entries written earlier in this same batch are newer than anything a
                    // trim removes, so reading the applied state is enough.
                    let keep_from = match ShardReader::first_at_or_after(view, before_ms)? {
                        Some(seq) => Some(seq),
                        // Everything is older than the cut.
                        None => ShardReader::last(view)?
                            .map(|(seq, _)| SequenceNumber::from_entry(seq.log_index() + 1, 0)),
                    };
                    if let Some(keep_from) = keep_from {
                        if let Some(upto) = keep_from.log_index().checked_sub(1) {
                            batch.release_log(upto);
                        }
                        batch.put(DataFamily::ShardMeta, META_TRIM, &keep_from.0.to_be_bytes());
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
        Ok(responses)
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }

    fn applied(&mut self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
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

    /// The first sequence number not trimmed (0 before the first trim).
    pub fn trimmed_before(view: &GroupView) -> Result<SequenceNumber, StorageError> {
        let Some(v) = view.get(DataFamily::ShardMeta, META_TRIM)? else {
            return Ok(SequenceNumber(0));
        };
        let raw: [u8; 8] = v.as_slice().try_into().map_err(|_| StorageError::Corrupt {
            what: "shard's trim marker".into(),
            reason: format!("{} bytes instead of 8", v.len()),
        })?;
        Ok(SequenceNumber(u64::from_be_bytes(raw)))
    }

    /// Calls `f` with each retained Put entry from the one holding `from` to the last applied,
    /// in order, until it returns false.
    fn scan_puts(
        view: &GroupView,
        from: SequenceNumber,
        mut f: impl FnMut(PutEntry<'_>, &Bytes) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let Some((last, _)) = Self::last(view)? else {
            return Ok(());
        };
        let floor = Self::trimmed_before(view)?;
        let from = from.max(floor).log_index();
        view.scan_log(from, last.log_index(), |index, data| {
            match Entry::parse(&data, index)? {
                Entry::Put(put) => f(put, &data),
                Entry::Trim { .. } => Ok(true),
            }
        })
    }

    /// Up to `limit` records from sequence number `from` on, stopping before `max_bytes` of
    /// data would be passed (the first record is always returned). The records returned share
    /// the bytes of the log entries they were read from.
    pub fn read(
        view: &GroupView,
        from: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<StoredRecord>, StorageError> {
        // `scan_puts` starts at the trim mark, which is always an entry's first record, so a
        // position below the mark skips nothing.
        let from = SequenceNumber(from);
        let (first_index, first_pos) = (from.log_index(), from.position());
        let mut out = Vec::new();
        let mut bytes = 0usize;
        Self::scan_puts(view, from, |put, value| {
            let index = put.index;
            for (pos, r) in put.records().enumerate() {
                let pos = pos as u32;
                let (key, data) = r?;
                if index == first_index && pos < first_pos {
                    continue;
                }
                bytes += data.len() + key.len();
                if !out.is_empty() && bytes > max_bytes {
                    return Ok(false);
                }
                out.push(StoredRecord {
                    sequence_number: SequenceNumber::from_entry(index, pos),
                    arrival_ms: put.arrival_ms,
                    partition_key: key.to_owned(),
                    data: value.slice_ref(data),
                });
                if out.len() >= limit {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        Ok(out)
    }

    /// The sequence number of the first retained record that arrived at or after `ms`.
    pub fn first_at_or_after(
        view: &GroupView,
        ms: u64,
    ) -> Result<Option<SequenceNumber>, StorageError> {
        let mut found = None;
        Self::scan_puts(view, SequenceNumber(0), |put, _| {
            if put.arrival_ms >= ms && put.count > 0 {
                found = Some(SequenceNumber::from_entry(put.index, 0));
                return Ok(false);
            }
            Ok(true)
        })?;
        Ok(found)
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
    fn commands_round_trip() {
        let c = ShardCommand::Put {
            arrival_ms: 7,
            records: vec![
                NewRecord {
                    partition_key: "k".into(),
                    data: Bytes::from_static(b"d"),
                },
                NewRecord {
                    partition_key: "clé-ünïcode".into(),
                    data: Bytes::new(),
                },
                NewRecord {
                    partition_key: "x".repeat(256),
                    data: Bytes::from(vec![7u8; 100_000]),
                },
            ],
        };
        assert_eq!(ShardCommand::decode(&c.encode(), 1).expect("decodes"), c);
        let t = ShardCommand::Trim { before_ms: 99 };
        assert_eq!(ShardCommand::decode(&t.encode(), 2).expect("decodes"), t);
    }

    #[test]
    fn malformed_entries_are_refused_with_their_index() {
        let good = ShardCommand::Put {
            arrival_ms: 7,
            records: vec![NewRecord {
                partition_key: "key".into(),
                data: Bytes::from_static(b"data"),
            }],
        }
        .encode();
        let mut trailing = good.to_vec();
        trailing.push(0);
        let mut more_counted = good.to_vec();
        more_counted[12] = 2;
        let mut bad_utf8 = good.to_vec();
        bad_utf8[15] = 0xff;
        for (raw, why) in [
            (&good[..good.len() - 1], "data runs past"),
            (&good[..5], "shorter than its header"),
            (&trailing[..], "do not fill"),
            (&more_counted[..], "runs past"),
            (&bad_utf8[..], "UTF-8"),
            (&b"\xff\x00"[..], "unknown tag"),
            (&b""[..], "empty"),
        ] {
            let err = ShardCommand::decode(raw, 42).expect_err(why).to_string();
            assert!(
                err.contains("index 42") && err.contains(why),
                "{why}: {err}"
            );
        }
    }
}
