//! The client's one error type: an [`ErrorCode`] from the node (or the nearest code for a
//! failure that never reached one) and a message that names the field or the cause.

use std::fmt;

use riptide_proto::ErrorCode;
use riptide_proto::error::ERROR_CODE_HEADER;

/// Why a call failed.
///
/// For errors a node reported, `code` is the node's [`ErrorCode`] and `message` is the node's
/// own message, which names the offending field and limit. For failures that never got an
/// answer from a node (connection refused, timeout), `code` is [`ErrorCode::Unavailable`] and
/// the message names the address that could not be reached.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ClientError {
    /// What went wrong, as every Riptide API reports it.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl ClientError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Whether repeating the same request later may succeed ([`ErrorCode::Unavailable`] and
    /// [`ErrorCode::Throttled`]).
    pub fn is_retryable(&self) -> bool {
        self.code.is_retryable()
    }

    /// An error for an answer from a node that breaks the API's own rules.
    pub(crate) fn malformed(what: impl fmt::Display) -> Self {
        Self::new(
            ErrorCode::Internal,
            format!("malformed response from node: {what}"),
        )
    }

    /// An error for a local check that failed before anything was sent.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArgument, message)
    }

    /// Converts a status from a call to the node at `address`. A node's own errors keep their
    /// message; failures of the transport get the address in front so that the reader knows
    /// which endpoint could not be reached.
    pub(crate) fn from_status(status: &tonic::Status, address: &str) -> Self {
        if came_from_node(status) {
            return Self::new(riptide_proto::status_code(status), status.message());
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
        Self::new(code, message)
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        Self::from_status(&status, "node")
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
        assert_eq!(err.message, "shard_count: must be 1 to 1000, got 0");
        assert!(!err.is_retryable());
        assert_eq!(
            err.to_string(),
            "InvalidArgument: shard_count: must be 1 to 1000, got 0"
        );
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
        // Without the header, OUT_OF_RANGE is a local decoding limit, not an expired iterator.
        let too_big = tonic::Status::out_of_range("decoded message length too large");
        assert_eq!(
            ClientError::from_status(&too_big, "a").code,
            ErrorCode::Internal
        );
    }

    #[test]
    fn only_refused_connections_count_as_never_sent() {
        let mut refused = tonic::Status::unavailable("tcp connect error");
        refused.set_source(std::sync::Arc::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )));
        assert!(never_sent(&refused));
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
