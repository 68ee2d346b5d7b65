//! The client's one error type: the [`ErrorCode`] every Riptide API reports (the node's, or the
//! nearest one for a failure that never reached a node), a message that names the field or the
//! cause, and the kind of failure with what a caller needs to act on it.

use std::fmt;
use std::time::Duration;

use riptide_proto::ErrorCode;
use riptide_proto::error::ERROR_CODE_HEADER;

/// Why a call failed.
///
/// `code` and `message` are the wire-level view, the same for every kind: for errors a node
/// reported they are the node's own (the message names the offending field and limit); for
/// failures that never got an answer from a node, `code` is the nearest one (mostly
/// [`ErrorCode::Unavailable`]) and the message names the address that could not be reached.
/// `kind` says where the failure came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
#[non_exhaustive]
pub struct ClientError {
    /// What went wrong, as every Riptide API reports it.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
    /// Where the failure came from.
    pub kind: ClientErrorKind,
}

/// Where a [`ClientError`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientErrorKind {
    /// A node answered the call with an error (its code and message are the error's).
    Refused,
    /// The call failed on its way to or from the node at `address`: it could not be reached,
    /// the connection broke, or the answer could not be read. `sent` says whether the request
    /// may have reached the node; it is false only when the connection was refused.
    Transport { address: String, sent: bool },
    /// The node at `address` did not answer within `after` (the request may have been
    /// applied).
    TimedOut { address: String, after: Duration },
    /// A field of the request is wrong; found before anything was sent.
    InvalidArgument { field: String, reason: String },
    /// A node's answer breaks the API's rules: `what` is missing or unreadable.
    Malformed { what: String },
    /// The stream did not become ACTIVE: it is being deleted, or still not ACTIVE after the
    /// wait.
    NotActive { stream: String },
    /// The producer was closed before the record could be sent.
    ProducerClosed,
}

impl ClientError {
    fn new(code: ErrorCode, message: impl Into<String>, kind: ClientErrorKind) -> Self {
        Self {
            code,
            message: message.into(),
            kind,
        }
    }

    /// Whether repeating the same request later may succeed ([`ErrorCode::Unavailable`] and
    /// [`ErrorCode::Throttled`]).
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }

    /// Whether the request may have taken effect although it failed: it timed out or lost its
    /// connection after it was sent, or the node answered Unavailable or Internal (a write
    /// whose leader changed before it committed, or a node whose storage failed, cannot tell
    /// whether the write went through). A put that failed so may be stored; sent again, it may
    /// be stored twice.
    pub fn may_have_been_applied(&self) -> bool {
        match &self.kind {
            ClientErrorKind::Refused => {
                matches!(self.code, ErrorCode::Unavailable | ErrorCode::Internal)
            }
            ClientErrorKind::Transport { sent, .. } => *sent,
            ClientErrorKind::TimedOut { .. } => true,
            ClientErrorKind::InvalidArgument { .. }
            | ClientErrorKind::Malformed { .. }
            | ClientErrorKind::NotActive { .. }
            | ClientErrorKind::ProducerClosed => false,
        }
    }

    /// An error a node answered with, in a result of its own (a record of a PutRecords
    /// answer): `code` is the node's code name, `message` its message.
    pub(crate) fn refused(code: &str, message: impl Into<String>) -> Self {
        Self::new(
            code.parse().unwrap_or(ErrorCode::Internal),
            message,
            ClientErrorKind::Refused,
        )
    }

    /// An error for an answer from a node that breaks the API's own rules.
    pub(crate) fn malformed(what: impl fmt::Display) -> Self {
        let what = what.to_string();
        Self::new(
            ErrorCode::Internal,
            format!("malformed response from node: {what}"),
            ClientErrorKind::Malformed { what },
        )
    }

    /// An error for a field that a local check refused before anything was sent.
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let (field, reason) = (field.into(), reason.into());
        Self::new(
            ErrorCode::InvalidArgument,
            format!("{field}: {reason}"),
            ClientErrorKind::InvalidArgument { field, reason },
        )
    }

    /// The error with `prefix` put in front of the field it names (`records[3].`), for a field
    /// checked on its own that belongs to a list in the request; other errors are kept.
    pub(crate) fn in_field(self, prefix: impl fmt::Display) -> Self {
        match self.kind {
            ClientErrorKind::InvalidArgument { field, reason } => {
                Self::invalid(format!("{prefix}{field}"), reason)
            }
            _ => self,
        }
    }

    /// No answer from the node at `address` within `after`.
    pub(crate) fn timed_out(address: &str, after: Duration) -> Self {
        Self::new(
            ErrorCode::Unavailable,
            format!("{address}: no answer within {after:?}"),
            ClientErrorKind::TimedOut {
                address: address.to_string(),
                after,
            },
        )
    }

    /// The stream is not ACTIVE, as `message` says.
    pub(crate) fn not_active(stream: &str, message: impl Into<String>) -> Self {
        Self::new(
            ErrorCode::ResourceInUse,
            message,
            ClientErrorKind::NotActive {
                stream: stream.to_string(),
            },
        )
    }

    /// The producer is closed.
    pub(crate) fn producer_closed() -> Self {
        Self::new(
            ErrorCode::Internal,
            "the producer is closed",
            ClientErrorKind::ProducerClosed,
        )
    }

    /// Converts a status from a call to the node at `address`. A node's own errors keep their
    /// message; failures of the transport get the address in front so that the reader knows
    /// which endpoint could not be reached.
    pub(crate) fn from_status(status: &tonic::Status, address: &str) -> Self {
        if came_from_node(status) {
            return Self::new(
                riptide_proto::status_code(status),
                status.message(),
                ClientErrorKind::Refused,
            );
        }
        let code = transport_code(status);
        let mut message = format!("{address}: {}", status.message());
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message.push_str(": ");
                message.push_str(&text);
            }
            source = cause.source();
        }
        Self::new(
            code,
            message,
            ClientErrorKind::Transport {
                address: address.to_string(),
                sent: !riptide_proto::connection_refused(status),
            },
        )
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status, "node")
    }
}

impl From<riptide_proto::IdError> for ClientError {
    /// A field of the request that does not parse (checked before sending).
    fn from(e: riptide_proto::IdError) -> Self {
        Self::invalid(e.field, e.reason)
    }
}

/// The code of a status that did not come from a node: a connection that failed, broke or
/// timed out is [`ErrorCode::Unavailable`] (worth retrying elsewhere or later); anything else
/// (a response that could not be decoded, an unknown method) is [`ErrorCode::Internal`].
fn transport_code(status: &tonic::Status) -> ErrorCode {
    match status.code() {
        tonic::Code::Unavailable
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded
        | tonic::Code::Unknown => ErrorCode::Unavailable,
        tonic::Code::Internal if status.message().starts_with("h2 protocol error") => {
            ErrorCode::Unavailable
        }
        tonic::Code::ResourceExhausted => ErrorCode::Throttled,
        _ => ErrorCode::Internal,
    }
}

/// Whether a Riptide node produced the status (it carries the error-code header), as opposed
/// to the transport failing on the way.
pub(crate) fn came_from_node(status: &tonic::Status) -> bool {
    status.metadata().contains_key(ERROR_CODE_HEADER)
}

/// Whether the request behind `status` certainly never reached a node, so that even a
/// request that must not be applied twice can be sent again: the connection was refused.
pub(crate) fn never_sent(status: &tonic::Status) -> bool {
    !came_from_node(status) && riptide_proto::connection_refused(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_keep_their_code_and_message() {
        let status = ErrorCode::InvalidArgument.status("shard_count: must be 1 to 1000, got 0");
        let err = ClientError::from_status(&status, "127.0.0.1:7101");
        assert_eq!(err.code, ErrorCode::InvalidArgument);
        assert_eq!(err.kind, ClientErrorKind::Refused);
        assert_eq!(err.message, "shard_count: must be 1 to 1000, got 0");
        assert!(!err.is_retryable());
        assert!(!err.may_have_been_applied());
        assert_eq!(
            err.to_string(),
            "InvalidArgument: shard_count: must be 1 to 1000, got 0"
        );
        // A node that cannot tell whether a write went through answers Unavailable or
        // Internal.
        let unknown = ClientError::from_status(&ErrorCode::Internal.status("storage failed"), "a");
        assert!(unknown.may_have_been_applied() && !unknown.is_retryable());
    }

    #[test]
    fn transport_failures_name_the_address_and_are_retryable() {
        let status = tonic::Status::unavailable("connection refused");
        let err = ClientError::from_status(&status, "127.0.0.1:7102");
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(
            err.message.starts_with("127.0.0.1:7102: "),
            "{}",
            err.message
        );
        assert!(err.is_retryable());
        assert!(matches!(
            &err.kind,
            ClientErrorKind::Transport { address, sent: true } if address == "127.0.0.1:7102"
        ));
        // Without the header, OUT_OF_RANGE is a local decoding limit, not an expired iterator.
        let too_big = tonic::Status::out_of_range("decoded message length too large");
        assert_eq!(
            ClientError::from_status(&too_big, "a").code,
            ErrorCode::Internal
        );
    }

    #[test]
    fn local_field_errors_take_a_list_prefix_and_were_never_applied() {
        let e = ClientError::invalid("explicit_hash_key", "must be a decimal number");
        assert_eq!(e.message, "explicit_hash_key: must be a decimal number");
        let e = e.in_field("records[4].");
        assert_eq!(
            e.message,
            "records[4].explicit_hash_key: must be a decimal number"
        );
        assert!(matches!(
            &e.kind,
            ClientErrorKind::InvalidArgument { field, .. } if field == "records[4].explicit_hash_key"
        ));
        assert!(!e.may_have_been_applied());
        let t = ClientError::timed_out("n1:7101", Duration::from_secs(10));
        assert!(t.is_retryable() && t.may_have_been_applied());
        assert_eq!(t.clone().in_field("records[0]."), t);
    }

    #[test]
    fn only_refused_connections_count_as_never_sent() {
        let mut refused = tonic::Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert!(never_sent(&refused));
        assert!(!ClientError::from_status(&refused, "a").may_have_been_applied());
        assert!(!never_sent(&tonic::Status::unavailable("reset by peer")));
    }

    #[tokio::test]
    async fn a_refused_connection_is_recognised_as_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("uri")
            .connect_lazy();
        let status = riptide_proto::v1::stream_service_client::StreamServiceClient::new(channel)
            .list_streams(riptide_proto::v1::ListStreamsRequest::default())
            .await
            .expect_err("nothing listens");
        assert!(never_sent(&status), "{status:?}");
        let err = ClientError::from_status(&status, &addr.to_string());
        assert_eq!(err.code, ErrorCode::Unavailable);
        assert!(err.message.contains(&addr.to_string()), "{err}");
        assert!(!never_sent(&ErrorCode::Unavailable.status("no leader")));
    }
}
