//! The node's service error: what went wrong, as a variant carrying what a caller needs (the
//! field and the limit, the leader hint, whether a write may have been applied). The one
//! mapping from a variant to the wire-level [`ErrorCode`] is [`ServiceError::code`]; the code
//! maps on to a gRPC status, a Kinesis error type and an HTTP status in `riptide_proto::error`.

use riptide_proto::{ErrorCode, ShardId};
use riptide_raft::{RaftError, StorageError};

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// A field of the request is malformed or breaks a limit.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    /// What a field names does not exist: a stream, a shard, a node, a group.
    #[error("{field}: {reason}")]
    NotFound { field: String, reason: String },
    /// A stream of that name exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The stream is busy: still being created, or being deleted.
    #[error("{0}")]
    ResourceInUse(String),
    /// A count limit (streams, shards, tags) would be exceeded.
    #[error("{field}: {reason}")]
    LimitExceeded { field: String, reason: String },
    /// The shard iterator is older than 5 minutes.
    #[error("{0}")]
    ExpiredIterator(String),
    /// A shard's write quota is used up for now.
    #[error("shard {shard}: {quota}")]
    Throttled {
        shard: ShardId,
        quota: crate::server::core::quota::Exceeded,
    },
    /// This node does not lead `what` and may not forward the request any further (it was
    /// forwarded as often as it may be); `leader_hint` is the node this node takes for the
    /// leader, when it knows one.
    #[error("{what}: its leader moved while the request was forwarded (leader: {}); retry", leader_text(.leader_hint))]
    NotLeader {
        what: String,
        leader_hint: Option<u64>,
    },
    /// `what` has no leader for now: an election is under way, or too few replicas are up.
    #[error("{what}: {why}")]
    NoLeader { what: String, why: String },
    /// A write whose outcome is unknown: it was appended, then the leadership changed before
    /// it committed. It may or may not have taken effect.
    #[error(
        "{what}: leadership changed during the write; {effect} may or may not have been {done}"
    )]
    MayHaveBeenApplied {
        what: String,
        /// What the write was for ("the records", "the change").
        effect: &'static str,
        /// What would have happened to it ("stored", "applied").
        done: &'static str,
    },
    /// This node's storage failed (a write or sync failed and poisoned it): it serves nothing
    /// until it is restarted on working storage.
    #[error("this node's storage failed and it serves no requests until it is restarted: {reason}")]
    StorageFailed { reason: String },
    /// The node cannot serve the request for now, for another reason than a missing leader: the
    /// cluster is still starting, the node is shutting down, a peer could not be reached.
    #[error("{0}")]
    Unavailable(String),
    /// A bug, or an unexpected failure of the engine.
    #[error("{0}")]
    Internal(String),
    /// A Kinesis request that does not match the API's schema: a missing member, a member of
    /// the wrong length, pattern or range.
    #[error("{0}")]
    Validation(String),
    /// A Kinesis request body that cannot be decoded, or a member of the wrong type.
    #[error("{0}")]
    Serialization(String),
    /// A malformed Authorization header.
    #[error("{0}")]
    IncompleteSignature(String),
    /// The API has no operation of that name.
    #[error("{0}")]
    UnknownOperation(String),
    /// The operation or option exists in Kinesis but Riptide does not serve it yet.
    #[error("{0}")]
    Unsupported(String),
    /// An error decided elsewhere and known here only by its code and message: another node's
    /// answer to a forwarded request, or the controller's refusal of a command.
    #[error("{message}")]
    Remote { code: ErrorCode, message: String },
}

fn leader_text(hint: &Option<u64>) -> String {
    hint.map_or_else(|| "unknown".into(), |id| format!("node {id}"))
}

impl ServiceError {
    /// The wire-level code of each variant: the one mapping from a node error to an API's
    /// error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::InvalidArgument { .. } => ErrorCode::InvalidArgument,
            ServiceError::NotFound { .. } => ErrorCode::NotFound,
            ServiceError::AlreadyExists(_) => ErrorCode::AlreadyExists,
            ServiceError::ResourceInUse(_) => ErrorCode::ResourceInUse,
            ServiceError::LimitExceeded { .. } => ErrorCode::LimitExceeded,
            ServiceError::ExpiredIterator(_) => ErrorCode::ExpiredIterator,
            ServiceError::Throttled { .. } => ErrorCode::Throttled,
            ServiceError::NotLeader { .. }
            | ServiceError::NoLeader { .. }
            | ServiceError::MayHaveBeenApplied { .. }
            | ServiceError::Unavailable(_) => ErrorCode::Unavailable,
            ServiceError::StorageFailed { .. } | ServiceError::Internal(_) => ErrorCode::Internal,
            ServiceError::Validation(_) => ErrorCode::Validation,
            ServiceError::Serialization(_) => ErrorCode::Serialization,
            ServiceError::IncompleteSignature(_) => ErrorCode::IncompleteSignature,
            ServiceError::UnknownOperation(_) => ErrorCode::UnknownOperation,
            ServiceError::Unsupported(_) => ErrorCode::Unsupported,
            ServiceError::Remote { code, .. } => *code,
        }
    }

    /// Whether the same request may succeed later (as its code says: Unavailable and
    /// Throttled). A node whose storage failed answers Internal: not retryable there.
    pub fn is_retryable(&self) -> bool {
        self.code().is_retryable()
    }

    /// A field of the request is wrong.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// What `field` names does not exist.
    pub fn not_found(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ServiceError::NotFound {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        ServiceError::Unavailable(message.into())
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ServiceError::Internal(message.into())
    }

    /// The error with `prefix` put in front of the field it names, for a field checked on its
    /// own that belongs to a list in the request (`records[3].`); other errors are kept.
    pub fn in_field(self, prefix: impl std::fmt::Display) -> Self {
        match self {
            ServiceError::InvalidArgument { field, reason } => ServiceError::InvalidArgument {
                field: format!("{prefix}{field}"),
                reason,
            },
            other => other,
        }
    }
}

impl From<RaftError> for ServiceError {
    fn from(e: RaftError) -> Self {
        match e {
            RaftError::NotLeader {
                group, leader_hint, ..
            } => ServiceError::NotLeader {
                what: format!("group {group}"),
                leader_hint: leader_hint.map(|n| n.0),
            },
            RaftError::Discarded { group } => ServiceError::MayHaveBeenApplied {
                what: format!("group {group}"),
                effect: "the write",
                done: "applied",
            },
            RaftError::Storage(e) => e.into(),
            RaftError::InvalidSettings { key, reason } => {
                ServiceError::InvalidArgument { field: key, reason }
            }
            RaftError::GroupExists(_) => ServiceError::AlreadyExists(e.to_string()),
            RaftError::MembershipChange { .. } => ServiceError::Internal(e.to_string()),
            // An election, a timeout, a membership change under way, the transport: retry. A
            // group that is not hosted here (yet) or that stopped (the node is shutting down)
            // is served elsewhere.
            RaftError::Timeout { .. }
            | RaftError::MembershipChangeInProgress { .. }
            | RaftError::Transport(_)
            | RaftError::GroupNotFound(_)
            | RaftError::Stopped { .. } => ServiceError::Unavailable(e.to_string()),
        }
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Poisoned(reason) => ServiceError::StorageFailed { reason },
            // Shutting down: the other nodes serve.
            StorageError::Closed => ServiceError::Unavailable(e.to_string()),
            other => ServiceError::Internal(format!("storage: {other}")),
        }
    }
}

impl From<riptide_proto::IdError> for ServiceError {
    fn from(e: riptide_proto::IdError) -> Self {
        ServiceError::InvalidArgument {
            field: e.field.to_string(),
            reason: e.reason,
        }
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        e.code().status(e.to_string())
    }
}

impl From<tonic::Status> for ServiceError {
    fn from(s: tonic::Status) -> Self {
        ServiceError::Remote {
            code: riptide_proto::status_code(&s),
            message: s.message().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riptide_raft::{GroupId, NodeId};

    #[test]
    fn field_errors_name_the_field_and_take_a_list_prefix() {
        let e = ServiceError::invalid("partition_key", "must be 1 to 256 characters, got 0");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert_eq!(
            e.clone().in_field("records[2].").to_string(),
            "records[2].partition_key: must be 1 to 256 characters, got 0"
        );
        let other = ServiceError::unavailable("no leader");
        assert_eq!(other.clone().in_field("records[2]."), other);
    }

    #[test]
    fn engine_errors_keep_what_a_caller_needs() {
        let not_leader = ServiceError::from(RaftError::NotLeader {
            group: GroupId(4),
            leader_hint: Some(NodeId(2)),
            leader_addr: None,
        });
        assert_eq!(
            not_leader,
            ServiceError::NotLeader {
                what: "group 4".into(),
                leader_hint: Some(2)
            }
        );
        assert!(not_leader.is_retryable());
        let discarded = ServiceError::from(RaftError::Discarded { group: GroupId(4) });
        assert!(matches!(discarded, ServiceError::MayHaveBeenApplied { .. }));
        assert!(discarded.to_string().contains("may or may not"));
        let poisoned = ServiceError::from(RaftError::Storage(StorageError::Poisoned(
            "sync failed: eio".into(),
        )));
        assert_eq!(
            poisoned,
            ServiceError::StorageFailed {
                reason: "sync failed: eio".into()
            }
        );
        assert_eq!(poisoned.code(), ErrorCode::Internal);
        assert!(!poisoned.is_retryable());
        assert!(poisoned.to_string().contains("storage failed"));
    }

    #[test]
    fn a_status_round_trip_keeps_code_and_message() {
        let e = ServiceError::not_found("stream_name", "stream \"s\" does not exist");
        let back = ServiceError::from(tonic::Status::from(e.clone()));
        assert_eq!(back.code(), ErrorCode::NotFound);
        assert_eq!(back.to_string(), e.to_string());
    }
}
