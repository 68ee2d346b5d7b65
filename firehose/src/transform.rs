//! The optional transform step (Firehose's Lambda): the batch is POSTed to an HTTP endpoint as
//! `{"invocationId", "records": [{"recordId", "approximateArrivalTimestamp", "data"}]}` and the
//! answer gives every record back as `Ok` (with new data), `Dropped` or `ProcessingFailed`.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use serde::Deserialize;

use crate::format::{Failed, Item};

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("transform request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("transform answered {status}: {body}")]
    Status { status: u16, body: String },
    #[error("transform answer is malformed: {0}")]
    Malformed(String),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    records: Vec<AnswerRecord>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerRecord {
    record_id: String,
    result: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    error_message: Option<String>,
}

/// What the transform made of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Transformed {
    pub ok: Vec<Item>,
    pub dropped: usize,
    pub failed: Vec<Failed>,
}

#[derive(Debug, Clone)]
pub struct Transformer {
    client: reqwest::Client,
    url: String,
}

impl Transformer {
    pub fn new(url: &str, timeout: Duration) -> Result<Transformer, TransformError> {
        Ok(Transformer {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            url: url.to_string(),
        })
    }

    /// Sends a batch through the transform.
    pub async fn run(
        &self,
        invocation_id: &str,
        items: &[Item],
    ) -> Result<Transformed, TransformError> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let records: Vec<serde_json::Value> = items
            .iter()
            .map(|i| {
                serde_json::json!({
                    "recordId": i.seq.to_string(),
                    "approximateArrivalTimestamp": i.arrival_ms,
                    "partitionKey": i.partition_key,
                    "data": b64.encode(&i.data),
                })
            })
            .collect();
        let body = serde_json::json!({ "invocationId": invocation_id, "records": records });
        let resp = self
            .client
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&body).expect("serialising JSON values cannot fail"))
            .send()
            .await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        if !status.is_success() {
            return Err(TransformError::Status {
                status: status.as_u16(),
                body: String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            });
        }
        let answer: Answer =
            serde_json::from_slice(&bytes).map_err(|e| TransformError::Malformed(e.to_string()))?;
        apply(items, answer)
    }
}

/// Matches the answer to the batch: every record must come back exactly once.
fn apply(items: &[Item], answer: Answer) -> Result<Transformed, TransformError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if answer.records.len() != items.len() {
        return Err(TransformError::Malformed(format!(
            "{} records sent, {} returned",
            items.len(),
            answer.records.len()
        )));
    }
    let mut by_id: HashMap<String, AnswerRecord> = HashMap::new();
    for r in answer.records {
        let id = r.record_id.clone();
        if by_id.insert(id.clone(), r).is_some() {
            return Err(TransformError::Malformed(format!(
                "record {id} returned twice"
            )));
        }
    }
    let mut out = Transformed::default();
    for item in items {
        let r = by_id.remove(&item.seq.to_string()).ok_or_else(|| {
            TransformError::Malformed(format!("record {} not returned", item.seq))
        })?;
        match r.result.as_str() {
            "Ok" => {
                let data = match r.data {
                    Some(d) => b64.decode(d.as_bytes()).map_err(|e| {
                        TransformError::Malformed(format!(
                            "record {}: data is not base64: {e}",
                            item.seq
                        ))
                    })?,
                    None => {
                        return Err(TransformError::Malformed(format!(
                            "record {} is Ok without data",
                            item.seq
                        )));
                    }
                };
                out.ok.push(Item {
                    data,
                    ..item.clone()
                });
            }
            "Dropped" => out.dropped += 1,
            "ProcessingFailed" => out.failed.push(Failed {
                item: item.clone(),
                code: "ProcessingFailed",
                message: r
                    .error_message
                    .unwrap_or_else(|| "the transform marked the record ProcessingFailed".into()),
            }),
            other => {
                return Err(TransformError::Malformed(format!(
                    "record {}: result {other:?} is not Ok, Dropped or ProcessingFailed",
                    item.seq
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use riptide_client::SequenceNumber;

    use super::*;

    fn item(n: u64) -> Item {
        Item {
            seq: SequenceNumber(n),
            partition_key: "k".into(),
            arrival_ms: 0,
            data: b"x".to_vec(),
        }
    }

    #[test]
    fn results_sort_records_into_ok_dropped_and_failed() {
        let answer: Answer = serde_json::from_value(serde_json::json!({"records": [
            {"recordId": "00000000000000000002", "result": "Dropped"},
            {"recordId": "00000000000000000001", "result": "Ok", "data": "eQ=="},
            {"recordId": "00000000000000000003", "result": "ProcessingFailed", "errorMessage": "bad"},
        ]}))
        .expect("answer");
        let t = apply(&[item(1), item(2), item(3)], answer).expect("applies");
        assert_eq!(t.ok.len(), 1);
        assert_eq!(t.ok[0].data, b"y");
        assert_eq!(t.dropped, 1);
        assert_eq!(t.failed[0].message, "bad");
    }

    #[test]
    fn an_answer_missing_a_record_is_malformed() {
        let answer: Answer = serde_json::from_value(serde_json::json!({"records": [
            {"recordId": "00000000000000000001", "result": "Ok", "data": "eQ=="},
            {"recordId": "00000000000000000001", "result": "Ok", "data": "eQ=="},
        ]}))
        .expect("answer");
        assert!(apply(&[item(1), item(2)], answer).is_err());
    }
}
