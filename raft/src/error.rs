//! Errors of the engine's public API.

use crate::types::{GroupId, NodeId};

/// Errors of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    RocksDb(#[from] rocksdb::Error),
    #[error("storage is poisoned after a failed write or sync and accepts no more writes: {0}")]
    Poisoned(String),
    #[error("corrupt stored value at {what}: {reason}")]
    Corrupt { what: String, reason: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("storage is shut down")]
    Closed,
    #[error(
        "the data directory {path} holds storage format {found}, and this build reads format {expected} only; \
         there is no in-place upgrade: move the directory away and start the node on an empty one"
    )]
    Format {
        path: String,
        found: u32,
        expected: u32,
    },
}

impl StorageError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl ToString) -> Self {
        Self::Corrupt {
            what: what.into(),
            reason: reason.to_string(),
        }
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Io(io) => io,
            other => std::io::Error::other(other),
        }
    }
}

/// Errors of the engine's public API.
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error("group {0} is not hosted on this node")]
    GroupNotFound(GroupId),
    #[error("group {0} already exists on this node")]
    GroupExists(GroupId),
    #[error("this node is not the leader of group {group}; leader hint: {leader_hint:?}")]
    NotLeader {
        group: GroupId,
        leader_hint: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The entry was appended but then discarded (truncated by a new leader, or purged below a
    /// snapshot): it may or may not have been committed elsewhere.
    #[error(
        "group {group}: the entry was discarded after it was appended; it may or may not be committed"
    )]
    Discarded { group: GroupId },
    #[error("group {group} already has a membership change in progress")]
    MembershipChangeInProgress { group: GroupId },
    #[error("membership change of group {group} refused: {reason}")]
    MembershipChange { group: GroupId, reason: String },
    #[error("invalid setting {key}: {reason}")]
    InvalidSettings { key: String, reason: String },
    #[error("group {group} timed out: {what}")]
    Timeout { group: GroupId, what: String },
    #[error("group {group} has stopped: {reason}")]
    Stopped { group: GroupId, reason: String },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("transport: {0}")]
    Transport(String),
}
