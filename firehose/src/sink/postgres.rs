//! The PostgreSQL destination, loaded as Redshift is: each batch is one `COPY ... FROM STDIN`
//! into the table, the failed records into the error table, and the shard's checkpoint row,
//! all in one transaction. A batch is in the table exactly once: a crash before the commit
//! leaves nothing of it and the checkpoint where it was.

use bytes::Bytes;
use futures::SinkExt;
use riptide_client::{SequenceNumber, ShardId};
use tokio_postgres::{Client, NoTls};

use crate::config::PgColumn;
use crate::format::{Failed, Item};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error(
        "the checkpoint of {shard} moved to {found:?} while this daemon expected {expected:?}: \
         is another daemon delivering it?"
    )]
    CheckpointMoved {
        shard: String,
        expected: Option<String>,
        found: Option<String>,
    },
    #[error("checkpoint {0:?} is not a sequence number")]
    BadCheckpoint(String),
}

impl PgError {
    /// Whether retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PgError::CheckpointMoved { .. } | PgError::BadCheckpoint(_)
        )
    }
}

/// What fills a column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnSource {
    Data,
    PartitionKey,
    SequenceNumber,
    Shard,
    ArrivalTimestamp,
    Field(String),
}

impl ColumnSource {
    pub fn parse(s: &str) -> Option<ColumnSource> {
        Some(match s {
            "data" => ColumnSource::Data,
            "partition_key" => ColumnSource::PartitionKey,
            "sequence_number" => ColumnSource::SequenceNumber,
            "shard" => ColumnSource::Shard,
            "arrival_timestamp" => ColumnSource::ArrivalTimestamp,
            _ => match s.strip_prefix("field:") {
                Some(name) if !name.is_empty() => ColumnSource::Field(name.to_string()),
                _ => return None,
            },
        })
    }
}

/// One shard's connection to the table.
#[derive(Debug)]
pub struct PgSink {
    url: String,
    delivery: String,
    table: String,
    columns: Vec<(String, ColumnSource)>,
    checkpoint_table: String,
    error_table: String,
    client: Option<Client>,
}

impl PgSink {
    pub fn new(
        url: &str,
        delivery: &str,
        table: &str,
        columns: &[PgColumn],
        checkpoint_table: &str,
        error_table: Option<&str>,
    ) -> PgSink {
        let columns = if columns.is_empty() {
            vec![("data".to_string(), ColumnSource::Data)]
        } else {
            columns
                .iter()
                .map(|c| {
                    (
                        c.name.clone(),
                        ColumnSource::parse(&c.from).expect("validated with the configuration"),
                    )
                })
                .collect()
        };
        PgSink {
            url: url.to_string(),
            delivery: delivery.to_string(),
            table: table.to_string(),
            columns,
            checkpoint_table: checkpoint_table.to_string(),
            error_table: error_table.map_or_else(|| format!("{table}_errors"), str::to_string),
            client: None,
        }
    }

    async fn client(&mut self) -> Result<&mut Client, PgError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!("postgres connection ended: {e}");
                }
            });
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("connected just above"))
    }

    /// Creates the checkpoint and error tables when they are missing (the data table is the
    /// user's).
    pub async fn prepare(&mut self) -> Result<(), PgError> {
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {cp} (delivery text NOT NULL, shard_id text NOT NULL, \
             sequence_number text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (delivery, shard_id));
             CREATE TABLE IF NOT EXISTS {err} (delivery text NOT NULL, shard_id text NOT NULL, \
             sequence_number text NOT NULL, partition_key text NOT NULL, \
             approximate_arrival_ms bigint NOT NULL, error_code text NOT NULL, \
             error_message text NOT NULL, raw_data bytea NOT NULL, \
             failed_at timestamptz NOT NULL DEFAULT now());",
            cp = self.checkpoint_table,
            err = self.error_table
        );
        let r = self.client().await?.batch_execute(&sql).await;
        self.forget_on_error(r)
    }

    fn forget_on_error<T>(&mut self, r: Result<T, tokio_postgres::Error>) -> Result<T, PgError> {
        r.map_err(|e| {
            if e.is_closed() {
                self.client = None;
            }
            PgError::Db(e)
        })
    }

    /// The last sequence number delivered for `shard`, from its checkpoint row.
    pub async fn checkpoint(&mut self, shard: ShardId) -> Result<Option<SequenceNumber>, PgError> {
        let sql = format!(
            "SELECT sequence_number FROM {} WHERE delivery = $1 AND shard_id = $2",
            self.checkpoint_table
        );
        let delivery = self.delivery.clone();
        let shard_name = shard.to_string();
        let r = self
            .client()
            .await?
            .query_opt(&sql, &[&delivery, &shard_name])
            .await;
        let row = self.forget_on_error(r)?;
        match row {
            None => Ok(None),
            Some(row) => {
                let text: String = row.try_get(0)?;
                SequenceNumber::parse(&text, "sequence_number")
                    .map(Some)
                    .map_err(|_| PgError::BadCheckpoint(text))
            }
        }
    }

    /// The table's rows for `items` in COPY's text form, and the records that cannot be rows.
    pub fn rows(&self, shard: ShardId, items: Vec<Item>) -> (Vec<u8>, Vec<Item>, Vec<Failed>) {
        let shard_name = shard.to_string();
        let mut out = Vec::new();
        let mut kept = Vec::with_capacity(items.len());
        let mut failed = Vec::new();
        let needs_json = self
            .columns
            .iter()
            .any(|(_, s)| matches!(s, ColumnSource::Field(_)));
        'items: for item in items {
            let json = if needs_json {
                match serde_json::from_slice::<serde_json::Value>(&item.data) {
                    Ok(v) if v.is_object() => Some(v),
                    _ => {
                        failed.push(Failed {
                            item,
                            code: "FormatMismatch",
                            message: "record is not a JSON object".into(),
                        });
                        continue;
                    }
                }
            } else {
                None
            };
            let mut line = Vec::new();
            for (i, (_, source)) in self.columns.iter().enumerate() {
                if i > 0 {
                    line.push(b'\t');
                }
                let value: Option<String> = match source {
                    ColumnSource::Data => match std::str::from_utf8(&item.data) {
                        Ok(s) => Some(s.to_string()),
                        Err(_) => {
                            failed.push(Failed {
                                item,
                                code: "FormatMismatch",
                                message: "record is not UTF-8 text".into(),
                            });
                            continue 'items;
                        }
                    },
                    ColumnSource::PartitionKey => Some(item.partition_key.clone()),
                    ColumnSource::SequenceNumber => Some(item.seq.to_string()),
                    ColumnSource::Shard => Some(shard_name.clone()),
                    ColumnSource::ArrivalTimestamp => {
                        let ms = i64::try_from(item.arrival_ms).unwrap_or(i64::MAX);
                        chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
                            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
                    }
                    ColumnSource::Field(name) => {
                        json.as_ref()
                            .and_then(|j| j.get(name))
                            .and_then(|v| match v {
                                serde_json::Value::Null => None,
                                serde_json::Value::String(s) => Some(s.clone()),
                                other => Some(other.to_string()),
                            })
                    }
                };
                match value {
                    None => line.extend_from_slice(b"\\N"),
                    Some(v) => copy_escape(&v, &mut line),
                }
            }
            line.push(b'\n');
            out.extend_from_slice(&line);
            kept.push(item);
        }
        (out, kept, failed)
    }

    /// Delivers one batch in one transaction: its rows, its failed records into the error
    /// table, and the checkpoint moved from `previous` to `last`.
    pub async fn deliver(
        &mut self,
        shard: ShardId,
        previous: Option<SequenceNumber>,
        last: SequenceNumber,
        rows: &[u8],
        failed: &[Failed],
    ) -> Result<(), PgError> {
        let r = self
            .deliver_inner(shard, previous, last, rows, failed)
            .await;
        if let Err(PgError::Db(e)) = &r
            && e.is_closed()
        {
            self.client = None;
        }
        r
    }

    async fn deliver_inner(
        &mut self,
        shard: ShardId,
        previous: Option<SequenceNumber>,
        last: SequenceNumber,
        rows: &[u8],
        failed: &[Failed],
    ) -> Result<(), PgError> {
        let shard_name = shard.to_string();
        let delivery = self.delivery.clone();
        let copy_rows = format!(
            "COPY {} ({}) FROM STDIN",
            self.table,
            self.columns
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let copy_errors = format!(
            "COPY {} (delivery, shard_id, sequence_number, partition_key, \
             approximate_arrival_ms, error_code, error_message, raw_data) FROM STDIN",
            self.error_table
        );
        let lock = format!(
            "SELECT sequence_number FROM {} WHERE delivery = $1 AND shard_id = $2 FOR UPDATE",
            self.checkpoint_table
        );
        let upsert = format!(
            "INSERT INTO {} (delivery, shard_id, sequence_number) VALUES ($1, $2, $3) \
             ON CONFLICT (delivery, shard_id) DO UPDATE SET sequence_number = excluded.sequence_number, \
             updated_at = now()",
            self.checkpoint_table
        );
        let error_rows = error_rows(&delivery, &shard_name, failed);
        let client = self.client().await?;
        let tx = client.transaction().await?;
        let found: Option<String> = tx
            .query_opt(&lock, &[&delivery, &shard_name])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        let expected = previous.map(|p| p.to_string());
        if found != expected {
            return Err(PgError::CheckpointMoved {
                shard: shard_name,
                expected,
                found,
            });
        }
        if !rows.is_empty() {
            let sink = tx.copy_in::<_, Bytes>(&copy_rows).await?;
            futures::pin_mut!(sink);
            sink.send(Bytes::copy_from_slice(rows)).await?;
            sink.finish().await?;
        }
        if !error_rows.is_empty() {
            let sink = tx.copy_in::<_, Bytes>(&copy_errors).await?;
            futures::pin_mut!(sink);
            sink.send(Bytes::from(error_rows)).await?;
            sink.finish().await?;
        }
        let last = last.to_string();
        tx.execute(&upsert, &[&delivery, &shard_name, &last])
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn error_rows(delivery: &str, shard: &str, failed: &[Failed]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in failed {
        let mut hex = String::with_capacity(2 + f.item.data.len() * 2);
        hex.push_str("\\x");
        for b in &f.item.data {
            hex.push_str(&format!("{b:02x}"));
        }
        let fields = [
            delivery.to_string(),
            shard.to_string(),
            f.item.seq.to_string(),
            f.item.partition_key.clone(),
            f.item.arrival_ms.to_string(),
            f.code.to_string(),
            f.message.clone(),
            hex,
        ];
        for (i, v) in fields.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            copy_escape(v, &mut out);
        }
        out.push(b'\n');
    }
    out
}

/// Escapes a value for COPY's text format.
fn copy_escape(v: &str, out: &mut Vec<u8>) {
    for b in v.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0 => out.extend_from_slice(b"\\000"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_escape_values_and_refuse_what_does_not_fit() {
        let sink = PgSink::new(
            "host=127.0.0.1",
            "d",
            "t",
            &[
                PgColumn {
                    name: "id".into(),
                    from: "field:id".into(),
                },
                PgColumn {
                    name: "body".into(),
                    from: "data".into(),
                },
            ],
            "cp",
            None,
        );
        let item = |n: u64, data: &[u8]| Item {
            seq: SequenceNumber(n),
            partition_key: "k".into(),
            arrival_ms: 0,
            data: data.to_vec(),
        };
        let (rows, kept, failed) = sink.rows(
            ShardId(0),
            vec![
                item(1, b"{\"id\": 7, \"t\": \"a\\tb\"}"),
                item(2, b"not json"),
                item(3, b"{\"x\": 1}"),
            ],
        );
        let text = String::from_utf8(rows).expect("utf-8");
        assert_eq!(
            text,
            "7\t{\"id\": 7, \"t\": \"a\\\\tb\"}\n\\N\t{\"x\": 1}\n"
        );
        assert_eq!(kept.len(), 2);
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].item.seq, SequenceNumber(2));
        assert_eq!(sink.error_table, "t_errors");
    }
}
