//! The node's storage: one RocksDB shared by every group it hosts, and the segment files that
//! hold the data of their log entries.
//!
//! - [`node_store`]: [`NodeStore`], the RocksDB, its options and the reads and writes every
//!   other part goes through; [`segment_recovery`]: what opening a store checks in the segments,
//!   and the reclaiming of segments no group points into; [`format`]: the layout version.
//! - [`segments`]: the segment files; [`record_cache`]: the newest segment data, in memory.
//! - [`stored_entry`]: how a log entry is kept in `raft_log` (whole, or a pointer).
//! - [`log_writer`]: group commit; [`log_store`], [`state_machine`], [`snapshot`]: openraft's
//!   storage traits per group; [`log_cache`]: each group's newest entries.
//! - [`group_batch`] and [`group_view`]: the application's writes and reads of its group.

#[cfg(test)]
mod conformance;
pub(crate) mod dirs;
pub(crate) mod flushed;
mod format;
mod group_batch;
mod group_view;
pub(crate) mod keys;
pub(crate) mod log_cache;
pub(crate) mod log_store;
mod log_writer;
mod node_store;
#[cfg(test)]
mod power_cut_tests;
pub(crate) mod record_cache;
mod segment_recovery;
pub(crate) mod segments;
pub(crate) mod snapshot;
pub(crate) mod state_machine;
mod stored_entry;

use serde::{Serialize, de::DeserializeOwned};

pub use group_batch::GroupBatch;
pub use group_view::{GroupView, KeyValue};
pub(crate) use log_writer::LogWriter;
pub use log_writer::WriterStats;
pub(crate) use node_store::StoreInner;
pub use node_store::{NodeStore, StoreClosed};
pub use segments::RecordReads;
pub(crate) use stored_entry::{ENTRY_INLINE, StoredEntry, encode_in_segment, encode_inline};

use crate::error::StorageError;

/// Column families of the node's RocksDB. Fixed: groups never add families of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    RaftLog,
    RaftMeta,
    SmMeta,
    Data(DataFamily),
}

/// Column families a state machine writes its data to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataFamily {
    /// A shard's records.
    Records,
    /// A shard's own metadata (retention watermark, counters).
    ShardMeta,
    /// The controller's metadata.
    Controller,
}

impl DataFamily {
    pub(crate) const ALL: [DataFamily; 3] = [
        DataFamily::Records,
        DataFamily::ShardMeta,
        DataFamily::Controller,
    ];

    pub(crate) fn code(self) -> u8 {
        match self {
            DataFamily::Records => 1,
            DataFamily::ShardMeta => 2,
            DataFamily::Controller => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl Family {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::RaftLog => "raft_log",
            Family::RaftMeta => "raft_meta",
            Family::SmMeta => "sm_meta",
            Family::Data(DataFamily::Records) => "records",
            Family::Data(DataFamily::ShardMeta) => "shard_meta",
            Family::Data(DataFamily::Controller) => "controller",
        }
    }

    pub(crate) const ALL: [Family; 6] = [
        Family::RaftLog,
        Family::RaftMeta,
        Family::SmMeta,
        Family::Data(DataFamily::Records),
        Family::Data(DataFamily::ShardMeta),
        Family::Data(DataFamily::Controller),
    ];
}

/// One write operation, queued for the log writer.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Family, Vec<u8>, Vec<u8>),
    Delete(Family, Vec<u8>),
    DeleteRange(Family, Vec<u8>, Vec<u8>),
}

impl Op {
    pub(crate) fn size(&self) -> usize {
        match self {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::DeleteRange(_, a, b) => a.len() + b.len(),
        }
    }
}

/// Default size of a node's record cache, the newest segment data kept in memory for readers
/// ([`NodeStore::open_with`], [`record_cache`]).
pub const DEFAULT_RECORD_CACHE_BYTES: usize = 512 << 20;

/// Whether the log writer merges concurrent writes into one batch and one sync (the default),
/// or writes and syncs each request on its own (for comparison in benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCommit {
    On,
    Off,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("engine types always serialize")
}

pub(crate) fn decode<T: DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, StorageError> {
    bincode::deserialize(raw).map_err(|e| StorageError::corrupt(what, e))
}
