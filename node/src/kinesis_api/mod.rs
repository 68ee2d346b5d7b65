//! The Kinesis-compatible HTTP API: `POST /` with `X-Amz-Target: Kinesis_20131202.<Action>`,
//! bodies in JSON (`application/x-amz-json-1.1`) or CBOR (`application/x-amz-cbor-1.1`), so that
//! boto3, the AWS CLI and the AWS SDKs work against Riptide with only their endpoint changed.
//!
//! A thin layer over [`Core`], like the gRPC services: it decodes the request, checks the
//! Authorization header's form ([`sigv4`]), calls the action ([`actions`]) and encodes the
//! answer, or the error as `{"__type": ..., "message": ...}` with the HTTP status that
//! [`riptide_proto::ErrorCode`] maps it to ([`ServiceError::code`] gives the code).
//!
//! Calls that reach a node that is starting are held until it can serve them, as those of the
//! gRPC API are ([`crate::server::core::readiness`]).

pub mod actions;
pub mod arn;
pub mod cbor;
pub mod sigv4;
pub mod value;

use std::sync::{Arc, Weak};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::ServiceError;
use crate::server::core::Core;
use value::{Format, Obj, Value};

/// The `X-Amz-Target` prefix of every Kinesis action.
pub const TARGET_PREFIX: &str = "Kinesis_20131202.";
/// Largest request body: a 5 MiB PutRecords call grows by a third in base64, plus framing.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// Serves the Kinesis API on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    core: &Arc<Core>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    // The core is held weakly, as by the gRPC services: a client's open connection must not
    // keep a stopped node's storage open.
    let gateway = Arc::new(Gateway {
        core: Arc::downgrade(core),
    });
    let app = axum::Router::new().fallback(handle).with_state(gateway);
    let listener = listener.tap_io(|tcp| {
        // Answers are small and clients wait for them: no Nagle delay.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

struct Gateway {
    core: Weak<Core>,
}

/// A request that failed, in the format it came in.
struct Failure {
    error: ServiceError,
    format: Format,
}

impl From<ServiceError> for Failure {
    fn from(error: ServiceError) -> Self {
        Failure {
            error,
            format: Format::Json,
        }
    }
}

async fn handle(
    State(gateway): State<Arc<Gateway>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let request_id = format!("{:032x}", rand::random::<u128>());
    let action = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .unwrap_or("")
        .to_string();
    // Whatever is logged while serving the request names its action and request id.
    let span = tracing::info_span!("kinesis_api", action = %action, request_id = %request_id);
    let outcome = serve_one(&gateway, &method, &uri, &headers, &action, body)
        .instrument(span.clone())
        .await;
    let _enter = span.enter();
    let (status, format, answer) = match outcome {
        Ok((format, v)) => (StatusCode::OK, format, v),
        Err(Failure { error, format }) => {
            let code = error.code();
            tracing::debug!(%code, "kinesis request refused: {error}");
            let status = StatusCode::from_u16(code.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = Value::map([
                ("__type", Value::text(code.kinesis_type())),
                ("message", Value::text(error.to_string())),
            ]);
            (status, format, body)
        }
    };
    let bytes = match format {
        Format::Json => answer.json_bytes(),
        Format::Cbor => cbor::encode(&answer),
    };
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert("x-amzn-requestid", v);
    }
    resp
}

/// The request's wire format, from its Content-Type (JSON when there is none).
fn format_of(headers: &HeaderMap) -> Result<Format, ServiceError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let ct = ct.to_str().unwrap_or("");
    let base = ct.split(';').next().unwrap_or("").trim();
    match base {
        "application/x-amz-json-1.1" | "application/x-amz-json-1.0" | "application/json" => {
            Ok(Format::Json)
        }
        "application/x-amz-cbor-1.1" | "application/cbor" => Ok(Format::Cbor),
        _ => Err(ServiceError::Serialization(format!(
            "Content-Type: must be application/x-amz-json-1.1 or application/x-amz-cbor-1.1, got {ct:?}"
        ))),
    }
}

/// The region to show ARNs in: the one the request was signed for. A well-formed
/// Authorization header is required when one is present.
fn check_auth(headers: &HeaderMap) -> Result<String, ServiceError> {
    let Some(auth) = headers.get(header::AUTHORIZATION) else {
        return Ok(arn::DEFAULT_REGION.to_string());
    };
    let bad = |m: String| ServiceError::IncompleteSignature(m);
    let auth = auth
        .to_str()
        .map_err(|_| bad("Authorization: must be ASCII text".into()))?;
    let parsed = sigv4::parse(auth).map_err(|e| bad(e.to_string()))?;
    if !headers.contains_key("x-amz-date") && !headers.contains_key(header::DATE) {
        return Err(bad(
            "Authorization: a signed request needs an X-Amz-Date or Date header".into(),
        ));
    }
    if !parsed.region.is_empty() {
        return Ok(parsed.region);
    }
    // SigV4a names its regions in a header instead.
    Ok(headers
        .get("x-amz-region-set")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|r| !r.is_empty() && *r != "*")
        .unwrap_or(arn::DEFAULT_REGION)
        .to_string())
}

fn decode(format: Format, bytes: &[u8]) -> Result<Value, ServiceError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Map(Vec::new()));
    }
    match format {
        Format::Json => Value::parse_json(bytes)
            .map_err(|e| ServiceError::Serialization(format!("request body: not valid JSON: {e}"))),
        Format::Cbor => cbor::decode(bytes)
            .map_err(|e| ServiceError::Serialization(format!("request body: not valid CBOR: {e}"))),
    }
}

async fn serve_one(
    gateway: &Gateway,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    action: &str,
    body: Body,
) -> Result<(Format, Value), Failure> {
    let format = format_of(headers)?;
    let fail = |error: ServiceError| Failure { error, format };
    if method != Method::POST || uri.path() != "/" {
        return Err(fail(ServiceError::UnknownOperation(format!(
            "{method} {}: the Kinesis API is served as POST / only",
            uri.path()
        ))));
    }
    let region = check_auth(headers).map_err(fail)?;
    if action.is_empty() {
        let target = headers
            .get("x-amz-target")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        return Err(fail(ServiceError::UnknownOperation(format!(
            "X-Amz-Target: must be {TARGET_PREFIX}<Action>, got {target:?}"
        ))));
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
        .await
        .map_err(|e| {
            fail(ServiceError::Serialization(format!(
                "request body: unreadable or over the limit of {MAX_BODY_BYTES} bytes: {e}"
            )))
        })?;
    let doc = decode(format, &bytes).map_err(fail)?;
    let req = Obj::root(&doc, format).map_err(fail)?;
    let core = gateway
        .core
        .upgrade()
        .ok_or_else(|| fail(ServiceError::unavailable("this node is shutting down")))?;
    core.check_serving().map_err(fail)?;
    // Held while the node is starting and cannot serve yet (see `server::core::readiness`).
    if !core.is_ready() {
        core.await_ready().await;
        core.check_serving().map_err(fail)?;
    }
    let ctx = actions::Ctx {
        core: &core,
        region: &region,
    };
    actions::run(&ctx, action, &req)
        .await
        .map(|v| (format, v))
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use riptide_proto::ErrorCode;

    #[test]
    fn content_types_pick_the_format() {
        let mut h = HeaderMap::new();
        assert_eq!(format_of(&h), Ok(Format::Json));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-cbor-1.1"),
        );
        assert_eq!(format_of(&h), Ok(Format::Cbor));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-amz-json-1.1; charset=utf-8"),
        );
        assert_eq!(format_of(&h), Ok(Format::Json));
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml"));
        let e = format_of(&h).expect_err("xml");
        assert_eq!(e.code(), ErrorCode::Serialization);
        assert!(e.to_string().starts_with("Content-Type"));
    }

    #[test]
    fn signed_requests_need_a_well_formed_header_and_a_date() {
        let sig = "0".repeat(64);
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=k/20240101/eu-central-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature={sig}"
        );
        let mut h = HeaderMap::new();
        assert_eq!(check_auth(&h).as_deref(), Ok(arn::DEFAULT_REGION));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&auth).expect("ascii"),
        );
        let e = check_auth(&h).expect_err("no date");
        assert_eq!(e.code(), ErrorCode::IncompleteSignature);
        assert!(e.to_string().contains("X-Amz-Date"));
        h.insert("x-amz-date", HeaderValue::from_static("20240101T000000Z"));
        assert_eq!(check_auth(&h).as_deref(), Ok("eu-central-1"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("AWS4-HMAC-SHA256 nonsense"),
        );
        assert_eq!(
            check_auth(&h).expect_err("malformed").code(),
            ErrorCode::IncompleteSignature
        );
    }

    #[test]
    fn empty_bodies_are_empty_requests_and_bad_ones_are_serialization_errors() {
        assert_eq!(decode(Format::Json, b""), Ok(Value::Map(vec![])));
        assert_eq!(decode(Format::Cbor, b" "), Ok(Value::Map(vec![])));
        assert_eq!(
            decode(Format::Json, b"{\"a\":").expect_err("cut").code(),
            ErrorCode::Serialization
        );
        assert_eq!(
            decode(Format::Cbor, &[0xa1]).expect_err("cut").code(),
            ErrorCode::Serialization
        );
    }
}
