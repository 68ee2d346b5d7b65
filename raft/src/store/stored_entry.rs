//! How a log entry is kept in the `raft_log` family: whole, or as its log id and a pointer to
//! its data in a segment ([`super::segments`]).

use serde::Serialize;

use super::decode;
use super::segments::Pointer;
use crate::error::StorageError;
use crate::types::{Entry, LogId};

/// How a log entry is kept in the raft_log family: whole, in the value...
pub(crate) const ENTRY_INLINE: u8 = 0;
/// ...or as its log id and a pointer to its data in a segment.
const ENTRY_IN_SEGMENT: u8 = 1;

/// A raft_log value of an entry whose data is in a segment.
#[derive(Serialize, serde::Deserialize)]
struct SegmentEntry {
    log_id: LogId,
    data: Pointer,
}

/// A raft_log value, decoded.
pub(crate) enum StoredEntry {
    Inline(Entry),
    InSegment(LogId, Pointer),
}

impl StoredEntry {
    pub(crate) fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        match raw.split_first() {
            Some((&ENTRY_INLINE, rest)) => Ok(Self::Inline(decode(rest, "raft_log entry")?)),
            Some((&ENTRY_IN_SEGMENT, rest)) => {
                let e: SegmentEntry = decode(rest, "raft_log entry pointer")?;
                Ok(Self::InSegment(e.log_id, e.data))
            }
            Some((tag, _)) => Err(StorageError::corrupt(
                "raft_log entry",
                format!("unknown kind {tag}"),
            )),
            None => Err(StorageError::corrupt("raft_log entry", "empty value")),
        }
    }

    pub(crate) fn log_id(&self) -> LogId {
        match self {
            Self::Inline(e) => e.log_id,
            Self::InSegment(log_id, _) => *log_id,
        }
    }
}

/// The raft_log value of `entry`, kept whole.
pub(crate) fn encode_inline(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_INLINE);
    bincode::serialize_into(&mut out, entry).expect("engine types always serialize");
    out
}

/// The raft_log value of an entry whose data is at `data`.
pub(crate) fn encode_in_segment(log_id: LogId, data: Pointer) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_IN_SEGMENT);
    bincode::serialize_into(&mut out, &SegmentEntry { log_id, data })
        .expect("engine types always serialize");
    out
}
