//! The HTTP endpoint destination, in Firehose's HTTP endpoint delivery format: a POST of
//! `{"requestId", "timestamp", "records": [{"data": base64}]}`; the endpoint accepts the batch
//! by answering 200 with the same `requestId`. At-least-once: the request id is derived from
//! the batch's shard and sequence numbers, so a batch sent again (a retry, or after a restart)
//! carries the same id and the receiver can drop it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use riptide_client::{SequenceNumber, ShardId, StartingPosition};
use serde::{Deserialize, Serialize};

use crate::format::Item;
use crate::naming::{BatchRange, ResumePoint};
use crate::sink::objects::{StoreError, write_file_atomically};

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("endpoint answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("endpoint answered with request id {got:?}, not {sent:?}")]
    WrongRequestId { sent: String, got: String },
}

/// The stable id of a batch's request.
pub fn request_id(delivery: &str, shard: ShardId, range: BatchRange) -> String {
    format!("{delivery}-{shard}-{}-{}", range.first, range.last)
}

/// The request body for a batch.
pub fn request_body(request_id: &str, timestamp_ms: u64, items: &[Item]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let records: Vec<serde_json::Value> = items
        .iter()
        .map(|i| serde_json::json!({ "data": b64.encode(&i.data) }))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "requestId": request_id,
        "timestamp": timestamp_ms,
        "records": records,
    }))
    .expect("serialising JSON values cannot fail")
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    request_id: String,
    #[serde(default)]
    error_message: Option<String>,
}

/// Sends batches to one endpoint.
#[derive(Debug, Clone)]
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    access_key: Option<String>,
}

impl HttpSink {
    pub fn new(
        url: &str,
        access_key: Option<&str>,
        timeout: Duration,
    ) -> Result<HttpSink, HttpError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .build()?;
        Ok(HttpSink {
            client,
            url: url.to_string(),
            access_key: access_key.map(str::to_string),
        })
    }

    /// Sends one request; Ok when the endpoint accepted it.
    pub async fn send(&self, request_id: &str, items: &[Item]) -> Result<(), HttpError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut req = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .header("X-Amz-Firehose-Request-Id", request_id)
            .header("X-Amz-Firehose-Protocol-Version", "1.0")
            .body(request_body(request_id, now, items));
        if let Some(key) = &self.access_key {
            req = req.header("X-Amz-Firehose-Access-Key", key);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        let parsed: Option<Response> = serde_json::from_slice(&body).ok();
        if !status.is_success() {
            let message = parsed
                .and_then(|r| r.error_message)
                .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect());
            return Err(HttpError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        match parsed {
            Some(r) if r.request_id == request_id => Ok(()),
            Some(r) => Err(HttpError::WrongRequestId {
                sent: request_id.to_string(),
                got: r.request_id,
            }),
            None => Err(HttpError::Refused {
                status: status.as_u16(),
                message: "answer is not the JSON {\"requestId\", \"timestamp\"}".into(),
            }),
        }
    }
}

/// Where the HTTP destination keeps a shard's state.
pub fn state_path(state_dir: &Path, delivery: &str, shard: ShardId) -> PathBuf {
    state_dir
        .join("http")
        .join(delivery)
        .join(format!("{shard}.json"))
}

/// A shard's state at an HTTP destination: the last sequence number the endpoint accepted, and
/// the batch being sent. A batch is recorded before it is sent, so that after a crash it is
/// cut again at the same records and sent with the same request id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpState {
    pub delivered: Option<SequenceNumber>,
    pub sending: Option<BatchRange>,
}

#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    delivered: Option<String>,
    sending: Option<(String, String)>,
}

impl HttpState {
    /// Where the shard resumes.
    pub fn resume_point(&self) -> Option<ResumePoint> {
        match (self.sending, self.delivered) {
            (Some(r), d) if d.is_none_or(|d| d < r.first) => Some(ResumePoint {
                from: StartingPosition::AtSequence(r.first),
                cut_at: Some(r.last),
            }),
            (_, Some(d)) => Some(ResumePoint {
                from: StartingPosition::AfterSequence(d),
                cut_at: None,
            }),
            (_, None) => None,
        }
    }

    fn to_bytes(self) -> Vec<u8> {
        let file = StateFile {
            delivered: self.delivered.map(|s| s.to_string()),
            sending: self
                .sending
                .map(|r| (r.first.to_string(), r.last.to_string())),
        };
        serde_json::to_vec(&file).expect("serialising the state cannot fail")
    }

    fn from_bytes(bytes: &[u8]) -> Result<HttpState, String> {
        let file: StateFile = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let seq = |s: &str| SequenceNumber::parse(s, "sequence_number").map_err(|e| e.to_string());
        Ok(HttpState {
            delivered: file.delivered.as_deref().map(seq).transpose()?,
            sending: match file.sending {
                Some((first, last)) => Some(BatchRange {
                    first: seq(&first)?,
                    last: seq(&last)?,
                }),
                None => None,
            },
        })
    }
}

pub async fn read_state(path: &Path) -> Result<HttpState, StoreError> {
    match tokio::fs::read(path).await {
        Ok(bytes) => HttpState::from_bytes(&bytes).map_err(|message| StoreError::Key {
            key: path.display().to_string(),
            message,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HttpState::default()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

pub async fn write_state(path: &Path, state: HttpState) -> Result<(), StoreError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || write_file_atomically(&path, &state.to_bytes())).await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_being_sent_is_sent_again_with_the_same_bounds() {
        let r = |a, b| BatchRange {
            first: SequenceNumber(a),
            last: SequenceNumber(b),
        };
        assert_eq!(HttpState::default().resume_point(), None);
        let sending = HttpState {
            delivered: Some(SequenceNumber(9)),
            sending: Some(r(10, 20)),
        };
        assert_eq!(
            sending.resume_point(),
            Some(ResumePoint {
                from: StartingPosition::AtSequence(SequenceNumber(10)),
                cut_at: Some(SequenceNumber(20)),
            })
        );
        let done = HttpState {
            delivered: Some(SequenceNumber(20)),
            sending: Some(r(10, 20)),
        };
        assert_eq!(
            done.resume_point(),
            Some(ResumePoint {
                from: StartingPosition::AfterSequence(SequenceNumber(20)),
                cut_at: None,
            })
        );
        assert_eq!(HttpState::from_bytes(&sending.to_bytes()), Ok(sending));
        assert!(HttpState::from_bytes(b"{\"delivered\": \"x\"}").is_err());
    }

    #[test]
    fn the_request_carries_its_id_and_base64_records() {
        let items = vec![Item {
            seq: SequenceNumber(1),
            partition_key: "k".into(),
            arrival_ms: 5,
            data: b"hello".to_vec(),
        }];
        let range = BatchRange {
            first: SequenceNumber(1),
            last: SequenceNumber(9),
        };
        let id = request_id("d", ShardId(1), range);
        assert_eq!(id, request_id("d", ShardId(1), range));
        assert_ne!(id, request_id("d", ShardId(2), range));
        let body: serde_json::Value =
            serde_json::from_slice(&request_body(&id, 77, &items)).expect("json");
        assert_eq!(body["requestId"], id.as_str());
        assert_eq!(body["timestamp"], 77);
        assert_eq!(body["records"][0]["data"], "aGVsbG8=");
    }
}
