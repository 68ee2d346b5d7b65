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
    /// Whether the store is poisoned: a write or sync failed, so it takes no more writes and
    /// every group of the node stops. The node must be restarted (on repaired storage); no
    /// retry on this node can succeed. Every other storage error is fatal to the call (and
    /// usually to its group) too, but says nothing about later writes.
    pub fn is_poisoned(&self) -> bool {
        matches!(self, StorageError::Poisoned(_))
    }

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

/// What a caller can do about a [`RaftError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftErrorKind {
    /// Transient: the same call may succeed later, or on the group's leader (this node does
    /// not lead, an election or a membership change is under way, a timeout, the transport).
    /// A write refused with [`RaftError::Discarded`] is retryable too, but its first attempt
    /// may have been committed.
    Retryable,
    /// The call does not fit the group as it is (it exists already, it is not hosted here, a
    /// refused membership change, invalid settings): repeating it fails the same way.
    Refused,
    /// The group or the node's storage stopped (a failed write or sync poisons the store,
    /// data is corrupt, the engine shut down): nothing on this node succeeds again until it
    /// is restarted.
    Fatal,
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

impl RaftError {
    /// Whether the caller may retry, must change the call, or must give this node up.
    pub fn kind(&self) -> RaftErrorKind {
        match self {
            RaftError::NotLeader { .. }
            | RaftError::Discarded { .. }
            | RaftError::MembershipChangeInProgress { .. }
            | RaftError::Timeout { .. }
            | RaftError::Transport(_) => RaftErrorKind::Retryable,
            RaftError::GroupNotFound(_)
            | RaftError::GroupExists(_)
            | RaftError::MembershipChange { .. }
            | RaftError::InvalidSettings { .. } => RaftErrorKind::Refused,
            RaftError::Stopped { .. } | RaftError::Storage(_) => RaftErrorKind::Fatal,
        }
    }

    /// Whether the same call may succeed later ([`RaftErrorKind::Retryable`]).
    pub fn is_retryable(&self) -> bool {
        self.kind() == RaftErrorKind::Retryable
    }

    /// Whether this node can no longer serve the group, or anything ([`RaftErrorKind::Fatal`]).
    pub fn is_fatal(&self) -> bool {
        self.kind() == RaftErrorKind::Fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_split_into_retryable_refused_and_fatal() {
        let g = GroupId(7);
        let retryable = [
            RaftError::NotLeader {
                group: g,
                leader_hint: Some(NodeId(2)),
                leader_addr: None,
            },
            RaftError::Discarded { group: g },
            RaftError::Timeout {
                group: g,
                what: "election".into(),
            },
            RaftError::Transport("reset".into()),
        ];
        assert!(retryable.iter().all(RaftError::is_retryable));
        assert!(retryable.iter().all(|e| !e.is_fatal()));
        let refused = [RaftError::GroupExists(g), RaftError::GroupNotFound(g)];
        assert!(refused.iter().all(|e| e.kind() == RaftErrorKind::Refused));
        let poisoned = RaftError::Storage(StorageError::Poisoned("sync failed".into()));
        assert!(poisoned.is_fatal() && !poisoned.is_retryable());
        assert!(StorageError::Poisoned("x".into()).is_poisoned());
        assert!(!StorageError::Closed.is_poisoned());
        let stopped = RaftError::Stopped {
            group: g,
            reason: "storage error".into(),
        };
        assert!(stopped.is_fatal());
    }
}
