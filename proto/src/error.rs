//! The one error-code enum of Riptide's APIs and its mapping to gRPC status codes, Kinesis error
//! types and HTTP statuses.

use std::fmt;
use std::str::FromStr;

pub use crate::headers::ERROR_CODE_HEADER;

/// What went wrong, as every API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A field is malformed or breaks a limit; the message names the field and the limit.
    InvalidArgument,
    /// The stream, shard or node does not exist.
    NotFound,
    /// A stream with that name exists already.
    AlreadyExists,
    /// The resource is busy (for example a stream still being created or deleted).
    ResourceInUse,
    /// A configured count limit (streams, shards) would be exceeded.
    LimitExceeded,
    /// The shard iterator is older than 5 minutes.
    ExpiredIterator,
    /// A per-shard throughput quota was exceeded; retry later.
    Throttled,
    /// No leader could be reached in time (an election, or too few replicas up); retry.
    Unavailable,
    /// A bug or a storage failure on the node.
    Internal,
    /// The request does not match the API's schema: a required member is missing, a member
    /// has the wrong type or breaks its declared length, pattern or range.
    Validation,
    /// The request body could not be decoded (not JSON or CBOR, or a value of the wrong kind).
    Serialization,
    /// The Authorization header is not a well-formed AWS Signature Version 4 header.
    IncompleteSignature,
    /// The API has no operation of that name.
    UnknownOperation,
    /// The operation exists in the Kinesis API but Riptide does not implement it yet.
    Unsupported,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidArgument,
        ErrorCode::NotFound,
        ErrorCode::AlreadyExists,
        ErrorCode::ResourceInUse,
        ErrorCode::LimitExceeded,
        ErrorCode::ExpiredIterator,
        ErrorCode::Throttled,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Validation,
        ErrorCode::Serialization,
        ErrorCode::IncompleteSignature,
        ErrorCode::UnknownOperation,
        ErrorCode::Unsupported,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "InvalidArgument",
            ErrorCode::NotFound => "NotFound",
            ErrorCode::AlreadyExists => "AlreadyExists",
            ErrorCode::ResourceInUse => "ResourceInUse",
            ErrorCode::LimitExceeded => "LimitExceeded",
            ErrorCode::ExpiredIterator => "ExpiredIterator",
            ErrorCode::Throttled => "Throttled",
            ErrorCode::Unavailable => "Unavailable",
            ErrorCode::Internal => "Internal",
            ErrorCode::Validation => "Validation",
            ErrorCode::Serialization => "Serialization",
            ErrorCode::IncompleteSignature => "IncompleteSignature",
            ErrorCode::UnknownOperation => "UnknownOperation",
            ErrorCode::Unsupported => "Unsupported",
        }
    }

    /// The gRPC status code of the native API.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorCode::ResourceInUse => tonic::Code::FailedPrecondition,
            ErrorCode::LimitExceeded => tonic::Code::ResourceExhausted,
            ErrorCode::ExpiredIterator => tonic::Code::OutOfRange,
            ErrorCode::Throttled => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
            ErrorCode::Validation | ErrorCode::Serialization => tonic::Code::InvalidArgument,
            ErrorCode::IncompleteSignature => tonic::Code::Unauthenticated,
            ErrorCode::UnknownOperation | ErrorCode::Unsupported => tonic::Code::Unimplemented,
        }
    }

    /// The `__type` of the Kinesis API's error body.
    pub fn kinesis_type(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "InvalidArgumentException",
            ErrorCode::NotFound => "ResourceNotFoundException",
            ErrorCode::AlreadyExists | ErrorCode::ResourceInUse => "ResourceInUseException",
            ErrorCode::LimitExceeded => "LimitExceededException",
            ErrorCode::ExpiredIterator => "ExpiredIteratorException",
            ErrorCode::Throttled => "ProvisionedThroughputExceededException",
            ErrorCode::Unavailable => "ServiceUnavailable",
            ErrorCode::Internal => "InternalFailure",
            ErrorCode::Validation => "ValidationException",
            ErrorCode::Serialization => "SerializationException",
            ErrorCode::IncompleteSignature => "IncompleteSignatureException",
            ErrorCode::UnknownOperation => "UnknownOperationException",
            ErrorCode::Unsupported => "UnsupportedOperationException",
        }
    }

    /// The HTTP status the Kinesis API answers with: AWS's 400 for every client error
    /// (throttling included), 500 and 503 for the server's own failures.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            ErrorCode::InvalidArgument
            | ErrorCode::NotFound
            | ErrorCode::AlreadyExists
            | ErrorCode::ResourceInUse
            | ErrorCode::LimitExceeded
            | ErrorCode::ExpiredIterator
            | ErrorCode::Throttled
            | ErrorCode::Validation
            | ErrorCode::Serialization
            | ErrorCode::IncompleteSignature
            | ErrorCode::UnknownOperation
            | ErrorCode::Unsupported => 400,
        }
    }

    /// Whether repeating the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorCode::Throttled | ErrorCode::Unavailable)
    }

    /// A gRPC status that carries this code and `message`.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        let mut status = tonic::Status::new(self.grpc(), message);
        status.metadata_mut().insert(
            ERROR_CODE_HEADER,
            tonic::metadata::MetadataValue::from_static(self.name()),
        );
        status
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ErrorCode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|c| c.name() == s).ok_or(())
    }
}

/// Whether a call failed because the peer refused the TCP connection: the request certainly
/// never reached it (a process that was killed or has not started), so even a request that
/// must not be applied twice may be sent again.
pub fn connection_refused(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        source = cause.source();
    }
    false
}

/// The [`ErrorCode`] of a status from a Riptide node: the code it carries, or the nearest one
/// for a status that did not come from a node (a transport failure, a timeout).
pub fn status_code(status: &tonic::Status) -> ErrorCode {
    if let Some(code) = status
        .metadata()
        .get(ERROR_CODE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        return code;
    }
    match status.code() {
        tonic::Code::InvalidArgument => ErrorCode::InvalidArgument,
        tonic::Code::NotFound => ErrorCode::NotFound,
        tonic::Code::AlreadyExists => ErrorCode::AlreadyExists,
        tonic::Code::FailedPrecondition => ErrorCode::ResourceInUse,
        tonic::Code::OutOfRange => ErrorCode::ExpiredIterator,
        tonic::Code::ResourceExhausted => ErrorCode::Throttled,
        tonic::Code::Unimplemented => ErrorCode::Unsupported,
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            ErrorCode::Unavailable
        }
        _ => ErrorCode::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_survives_a_status_round_trip() {
        for code in ErrorCode::ALL {
            let status = code.status("boom");
            assert_eq!(status_code(&status), code);
            assert_eq!(code.name().parse::<ErrorCode>(), Ok(code));
        }
    }

    #[test]
    fn every_code_has_its_own_kinesis_type_except_the_two_in_use_codes() {
        let mut types: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.kinesis_type()).collect();
        types.sort_unstable();
        types.dedup();
        // AlreadyExists and ResourceInUse are both ResourceInUseException in Kinesis.
        assert_eq!(types.len(), ErrorCode::ALL.len() - 1);
        assert_eq!(ErrorCode::Validation.kinesis_type(), "ValidationException");
        assert_eq!(ErrorCode::Throttled.http_status(), 400);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
    }

    #[test]
    fn statuses_from_elsewhere_map_to_the_nearest_code() {
        assert_eq!(
            status_code(&tonic::Status::unavailable("connection refused")),
            ErrorCode::Unavailable
        );
        assert_eq!(
            status_code(&tonic::Status::unknown("?")),
            ErrorCode::Internal
        );
    }
}
