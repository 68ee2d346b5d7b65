//! The node's service error: an [`ErrorCode`] and a message that names the field and the limit.

use riptide_proto::ErrorCode;
use riptide_raft::{RaftError, StorageError};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    pub code: ErrorCode,
    pub message: String,
}

impl ServiceError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unavailable, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
}

impl From<RaftError> for ServiceError {
    fn from(e: RaftError) -> Self {
        let code = match &e {
            RaftError::NotLeader { .. }
            | RaftError::Discarded { .. }
            | RaftError::Timeout { .. }
            | RaftError::Stopped { .. }
            | RaftError::GroupNotFound(_)
            | RaftError::MembershipChangeInProgress { .. }
            | RaftError::Transport(_) => ErrorCode::Unavailable,
            RaftError::InvalidSettings { .. } => ErrorCode::InvalidArgument,
            RaftError::GroupExists(_) => ErrorCode::AlreadyExists,
            RaftError::MembershipChange { .. } | RaftError::Storage(_) => ErrorCode::Internal,
        };
        Self::new(code, e.to_string())
    }
}

impl From<StorageError> for ServiceError {
    fn from(e: StorageError) -> Self {
        Self::internal(format!("storage: {e}"))
    }
}

impl From<riptide_proto::IdError> for ServiceError {
    fn from(e: riptide_proto::IdError) -> Self {
        Self::invalid(e.to_string())
    }
}

impl From<ServiceError> for tonic::Status {
    fn from(e: ServiceError) -> Self {
        e.code.status(e.message)
    }
}

impl From<tonic::Status> for ServiceError {
    fn from(s: tonic::Status) -> Self {
        Self::new(riptide_proto::status_code(&s), s.message().to_string())
    }
}
