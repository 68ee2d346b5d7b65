//! `riptide bench --api kinesis`: the data path through the Kinesis HTTP API (AWS JSON 1.1,
//! base64 data) instead of native gRPC. PutRecords calls are batched per producer here, the
//! way an SDK-based producer batches them; consumers poll GetRecords.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use riptide_bench_measure::workload::{Ack, Outcome, Publisher};

/// A failed Kinesis call.
#[derive(Debug, thiserror::Error)]
pub enum KinesisCallError {
    #[error("{action}: {source}")]
    Transport {
        action: &'static str,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{action}: reading the answer: {source}")]
    Body {
        action: &'static str,
        source: hyper::Error,
    },
    #[error("{action}: HTTP {status}: {kind}: {message}")]
    Refused {
        action: &'static str,
        status: u16,
        kind: String,
        message: String,
    },
    #[error("{action}: malformed answer: {reason}")]
    Malformed {
        action: &'static str,
        reason: String,
    },
}

impl KinesisCallError {
    /// Whether the node refused for lack of capacity.
    pub fn is_throttle(&self) -> bool {
        matches!(self, Self::Refused { kind, .. }
            if kind.contains("ProvisionedThroughputExceeded") || kind.contains("LimitExceeded"))
    }
}

/// A Kinesis API endpoint.
#[derive(Clone)]
pub struct KinesisHttp {
    http: HttpClient<HttpConnector, Full<Bytes>>,
    url: String,
}

impl KinesisHttp {
    /// `endpoint` is `http://host:port` (or `host:port`).
    pub fn new(endpoint: &str) -> Self {
        let url = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let http = HttpClient::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Self { http, url }
    }

    /// Calls `action` with a JSON body and returns the JSON answer.
    pub async fn call(
        &self,
        action: &'static str,
        body: &Value,
    ) -> Result<Value, KinesisCallError> {
        let request = hyper::Request::post(&self.url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", format!("Kinesis_20131202.{action}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| KinesisCallError::Malformed {
                action,
                reason: format!("request: {e}"),
            })?;
        let answer = self
            .http
            .request(request)
            .await
            .map_err(|source| KinesisCallError::Transport { action, source })?;
        let status = answer.status().as_u16();
        let body = answer
            .into_body()
            .collect()
            .await
            .map_err(|source| KinesisCallError::Body { action, source })?
            .to_bytes();
        let value: Value =
            serde_json::from_slice(&body).map_err(|e| KinesisCallError::Malformed {
                action,
                reason: e.to_string(),
            })?;
        if status != 200 {
            let text = |k: &str| {
                value
                    .get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            return Err(KinesisCallError::Refused {
                action,
                status,
                kind: text("__type"),
                message: text("message"),
            });
        }
        Ok(value)
    }

    /// An iterator of `shard` at its trim horizon, or at `timestamp_ms` when given.
    pub async fn shard_iterator(
        &self,
        stream: &str,
        shard: &str,
        timestamp_ms: Option<u64>,
    ) -> Result<String, KinesisCallError> {
        let body = match timestamp_ms {
            None => json!({"StreamName": stream, "ShardId": shard,
                           "ShardIteratorType": "TRIM_HORIZON"}),
            Some(ms) => json!({"StreamName": stream, "ShardId": shard,
                               "ShardIteratorType": "AT_TIMESTAMP",
                               "Timestamp": ms as f64 / 1000.0}),
        };
        let answer = self.call("GetShardIterator", &body).await?;
        answer
            .get("ShardIterator")
            .and_then(Value::as_str)
            .map(String::from)
            .ok_or(KinesisCallError::Malformed {
                action: "GetShardIterator",
                reason: "no ShardIterator".into(),
            })
    }

    /// One GetRecords call: the records' data, the next iterator (none once the shard is
    /// closed) and how far behind the newest record the page ends.
    pub async fn get_records(
        &self,
        iterator: &str,
    ) -> Result<(Vec<Vec<u8>>, Option<String>, u64), KinesisCallError> {
        let action = "GetRecords";
        let answer = self
            .call(action, &json!({"ShardIterator": iterator, "Limit": 10_000}))
            .await?;
        let malformed = |reason: &str| KinesisCallError::Malformed {
            action,
            reason: reason.into(),
        };
        let mut out = Vec::new();
        for r in answer
            .get("Records")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("no Records"))?
        {
            let data = r
                .get("Data")
                .and_then(Value::as_str)
                .ok_or_else(|| malformed("a record without Data"))?;
            out.push(
                BASE64
                    .decode(data)
                    .map_err(|_| malformed("Data is not base64"))?,
            );
        }
        let next = answer
            .get("NextShardIterator")
            .and_then(Value::as_str)
            .map(String::from);
        let behind = answer
            .get("MillisBehindLatest")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        Ok((out, next, behind))
    }
}

type Queued = (String, Bytes, oneshot::Sender<Outcome>);

/// A producer over PutRecords: batches records (up to `batch_records`, waiting at most
/// `linger` after the first) and keeps at most `in_flight` calls going. Records the node
/// refuses are not retried: they count as throttled or failed.
pub struct KinesisPublisher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl KinesisPublisher {
    /// Starts the batching task; it ends once the publisher is dropped and its calls are done.
    pub fn start(
        api: Arc<KinesisHttp>,
        stream: String,
        batch_records: usize,
        linger: Duration,
        in_flight: usize,
    ) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(batcher(
            api,
            stream,
            batch_records.max(1),
            linger,
            in_flight.max(1),
            rx,
        ));
        Self { queue }
    }
}

impl Publisher for KinesisPublisher {
    fn publish(&mut self, _seq: u64, key: &str, data: Bytes) -> Option<Ack> {
        let (tx, rx) = oneshot::channel();
        let queued = self.queue.send((key.to_string(), data, tx)).is_ok();
        Some(Box::pin(async move {
            if !queued {
                return Outcome::Failed;
            }
            rx.await.unwrap_or(Outcome::Failed)
        }))
    }
}

async fn batcher(
    api: Arc<KinesisHttp>,
    stream: String,
    batch_records: usize,
    linger: Duration,
    in_flight: usize,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut calls = JoinSet::new();
    let mut batch: Vec<Queued> = Vec::new();
    let mut first_at: Option<Instant> = None;
    let mut open = true;
    loop {
        let due = first_at.is_some_and(|t| t.elapsed() >= linger) || !open;
        if !batch.is_empty() && (batch.len() >= batch_records || due) && calls.len() < in_flight {
            let records = std::mem::take(&mut batch);
            first_at = None;
            calls.spawn(put_records(Arc::clone(&api), stream.clone(), records));
            continue;
        }
        if !open && batch.is_empty() && calls.is_empty() {
            return;
        }
        let wake = first_at.map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            |t| t + linger,
        );
        tokio::select! {
            item = rx.recv(), if open && batch.len() < batch_records => match item {
                Some(item) => {
                    first_at.get_or_insert_with(Instant::now);
                    batch.push(item);
                }
                None => open = false,
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => {}
            _ = tokio::time::sleep_until(wake.into()), if first_at.is_some() && calls.len() < in_flight => {}
        }
    }
}

async fn put_records(api: Arc<KinesisHttp>, stream: String, records: Vec<Queued>) {
    let entries: Vec<Value> = records
        .iter()
        .map(|(key, data, _)| json!({"PartitionKey": key, "Data": BASE64.encode(data)}))
        .collect();
    let answer = api
        .call(
            "PutRecords",
            &json!({"StreamName": stream, "Records": entries}),
        )
        .await;
    match answer {
        Ok(answer) => {
            let results = answer.get("Records").and_then(Value::as_array);
            for (i, (_, _, reply)) in records.into_iter().enumerate() {
                let outcome = match results.and_then(|r| r.get(i)) {
                    Some(r) if r.get("SequenceNumber").is_some() => Outcome::Acked { attempts: 1 },
                    Some(r)
                        if r.get("ErrorCode")
                            .and_then(Value::as_str)
                            .is_some_and(|c| c.contains("ProvisionedThroughputExceeded")) =>
                    {
                        Outcome::Throttled
                    }
                    _ => Outcome::Failed,
                };
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::debug!("bench PutRecords failed: {e}");
            let outcome = if e.is_throttle() {
                Outcome::Throttled
            } else {
                Outcome::Failed
            };
            for (_, _, reply) in records {
                let _ = reply.send(outcome);
            }
        }
    }
}
