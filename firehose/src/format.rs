//! Turning records into object bytes: raw with a delimiter, JSON lines or Parquet, then
//! compressed. Records a format cannot take come back as failures with the reason, for the
//! error output.

use std::io::Write;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use base64::Engine;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression as PqCompression, GzipLevel, ZstdLevel};
use parquet::file::properties::WriterProperties;
use riptide_client::SequenceNumber;

use crate::config::{Column, ColumnType, Compression, Format, FormatKind};

/// One record on its way through the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub seq: SequenceNumber,
    pub partition_key: String,
    pub arrival_ms: u64,
    pub data: Vec<u8>,
}

/// A record that goes to the error output, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub item: Item,
    /// A short code: `FormatMismatch`, `PartitionFailed`, `ProcessingFailed`,
    /// `DeliveryFailed`, `TransformFailed`.
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("compression: {0}")]
    Io(#[from] std::io::Error),
}

/// The file extension of objects in this format, compression included.
pub fn extension(format: &Format) -> String {
    let base = match format.kind {
        FormatKind::Raw => "",
        FormatKind::JsonLines => ".jsonl",
        FormatKind::Parquet => return ".parquet".to_string(),
    };
    let comp = match format.compression {
        Compression::None => "",
        Compression::Gzip => ".gz",
        Compression::Zstd => ".zst",
        Compression::Snappy => ".sz",
    };
    format!("{base}{comp}")
}

/// Encodes records into one object's bytes, returning the records that did not fit. `None`
/// bytes when no record fitted.
pub fn encode(
    format: &Format,
    items: &[Item],
) -> Result<(Option<Vec<u8>>, Vec<Failed>), FormatError> {
    let mut failed = Vec::new();
    let plain = match format.kind {
        FormatKind::Raw => {
            if items.is_empty() {
                return Ok((None, failed));
            }
            let delimiter = format.delimiter.as_bytes();
            let mut out =
                Vec::with_capacity(items.iter().map(|i| i.data.len() + delimiter.len()).sum());
            for item in items {
                out.extend_from_slice(&item.data);
                out.extend_from_slice(delimiter);
            }
            out
        }
        FormatKind::JsonLines => {
            let mut out = Vec::new();
            let mut any = false;
            for item in items {
                match serde_json::from_slice::<serde_json::Value>(&item.data) {
                    Ok(value) => {
                        serde_json::to_writer(&mut out, &value)
                            .expect("writing a parsed value into memory cannot fail");
                        out.push(b'\n');
                        any = true;
                    }
                    Err(e) => failed.push(Failed {
                        item: item.clone(),
                        code: "FormatMismatch",
                        message: format!("record is not JSON: {e}"),
                    }),
                }
            }
            if !any {
                return Ok((None, failed));
            }
            out
        }
        FormatKind::Parquet => {
            let (bytes, misfits) = encode_parquet(format, items)?;
            return Ok((bytes, misfits));
        }
    };
    Ok((Some(compress(format.compression, &plain)?), failed))
}

/// Compresses bytes; `none` returns them as they are.
pub fn compress(compression: Compression, plain: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    match compression {
        Compression::None => Ok(plain.to_vec()),
        Compression::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(plain.len() / 3),
                flate2::Compression::default(),
            );
            enc.write_all(plain)?;
            enc.finish()
        }
        Compression::Zstd => zstd::encode_all(plain, 3),
        Compression::Snappy => {
            let mut enc = snap::write::FrameEncoder::new(Vec::with_capacity(plain.len() / 2));
            enc.write_all(plain)?;
            enc.into_inner().map_err(|e| e.into_error())
        }
    }
}

/// Undoes [`compress`].
#[cfg(test)]
pub fn decompress(compression: Compression, bytes: &[u8]) -> Result<Vec<u8>, std::io::Error> {
    use std::io::Read;
    let mut out = Vec::new();
    match compression {
        Compression::None => out.extend_from_slice(bytes),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
        }
        Compression::Zstd => out = zstd::decode_all(bytes)?,
        Compression::Snappy => {
            snap::read::FrameDecoder::new(bytes).read_to_end(&mut out)?;
        }
    }
    Ok(out)
}

/// The Arrow schema of the configured Parquet columns.
pub fn arrow_schema(columns: &[Column]) -> Schema {
    Schema::new(
        columns
            .iter()
            .map(|c| {
                let t = match c.kind {
                    ColumnType::String => DataType::Utf8,
                    ColumnType::Int64 => DataType::Int64,
                    ColumnType::Float64 => DataType::Float64,
                    ColumnType::Boolean => DataType::Boolean,
                    ColumnType::TimestampMillis => DataType::Timestamp(TimeUnit::Millisecond, None),
                };
                Field::new(&c.name, t, c.nullable)
            })
            .collect::<Vec<_>>(),
    )
}

/// Why a record does not fit the schema, if it does not.
fn misfit(columns: &[Column], value: &serde_json::Value) -> Option<String> {
    let Some(obj) = value.as_object() else {
        return Some("record is not a JSON object".to_string());
    };
    for c in columns {
        match obj.get(&c.name) {
            None | Some(serde_json::Value::Null) => {
                if !c.nullable {
                    return Some(format!("field {:?} is missing and not nullable", c.name));
                }
            }
            Some(v) => {
                let fits = match c.kind {
                    ColumnType::String => v.is_string(),
                    ColumnType::Int64 | ColumnType::TimestampMillis => v.as_i64().is_some(),
                    ColumnType::Float64 => v.is_number(),
                    ColumnType::Boolean => v.is_boolean(),
                };
                if !fits {
                    return Some(format!(
                        "field {:?} is not of type {:?}: {v}",
                        c.name, c.kind
                    ));
                }
            }
        }
    }
    None
}

fn encode_parquet(
    format: &Format,
    items: &[Item],
) -> Result<(Option<Vec<u8>>, Vec<Failed>), FormatError> {
    let mut failed = Vec::new();
    let mut rows = Vec::with_capacity(items.len());
    for item in items {
        match serde_json::from_slice::<serde_json::Value>(&item.data) {
            Ok(value) => match misfit(&format.schema, &value) {
                None => rows.push(value),
                Some(message) => failed.push(Failed {
                    item: item.clone(),
                    code: "FormatMismatch",
                    message,
                }),
            },
            Err(e) => failed.push(Failed {
                item: item.clone(),
                code: "FormatMismatch",
                message: format!("record is not JSON: {e}"),
            }),
        }
    }
    if rows.is_empty() {
        return Ok((None, failed));
    }
    let columns: Vec<ArrayRef> = format
        .schema
        .iter()
        .map(|c| column_array(c, &rows))
        .collect();
    let schema = Arc::new(arrow_schema(&format.schema));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let compression = match format.compression {
        Compression::None => PqCompression::UNCOMPRESSED,
        Compression::Gzip => PqCompression::GZIP(GzipLevel::default()),
        Compression::Zstd => PqCompression::ZSTD(ZstdLevel::default()),
        Compression::Snappy => PqCompression::SNAPPY,
    };
    let props = WriterProperties::builder()
        .set_compression(compression)
        .build();
    let mut out = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut out, schema, Some(props))?;
    writer.write(&batch)?;
    writer.close()?;
    Ok((Some(out), failed))
}

/// One column of rows that all passed [`misfit`].
fn column_array(c: &Column, rows: &[serde_json::Value]) -> ArrayRef {
    let field = |row: &serde_json::Value| row.get(&c.name).filter(|v| !v.is_null()).cloned();
    match c.kind {
        ColumnType::String => {
            let mut b = StringBuilder::new();
            for row in rows {
                b.append_option(field(row).and_then(|v| v.as_str().map(str::to_owned)));
            }
            Arc::new(b.finish())
        }
        ColumnType::Int64 => {
            let mut b = Int64Builder::new();
            for row in rows {
                b.append_option(field(row).and_then(|v| v.as_i64()));
            }
            Arc::new(b.finish())
        }
        ColumnType::TimestampMillis => {
            let mut b = TimestampMillisecondBuilder::new();
            for row in rows {
                b.append_option(field(row).and_then(|v| v.as_i64()));
            }
            Arc::new(b.finish())
        }
        ColumnType::Float64 => {
            let mut b = Float64Builder::new();
            for row in rows {
                b.append_option(field(row).and_then(|v| v.as_f64()));
            }
            Arc::new(b.finish())
        }
        ColumnType::Boolean => {
            let mut b = BooleanBuilder::new();
            for row in rows {
                b.append_option(field(row).and_then(|v| v.as_bool()));
            }
            Arc::new(b.finish())
        }
    }
}

/// The error output's form: one JSON object per failed record.
pub fn encode_failures(delivery: &str, shard: &str, failed: &[Failed]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in failed {
        let line = serde_json::json!({
            "deliveryStreamName": delivery,
            "shardId": shard,
            "sequenceNumber": f.item.seq.to_string(),
            "partitionKey": f.item.partition_key,
            "approximateArrivalTimestamp": f.item.arrival_ms,
            "errorCode": f.code,
            "errorMessage": f.message,
            "rawData": base64::engine::general_purpose::STANDARD.encode(&f.item.data),
        });
        serde_json::to_writer(&mut out, &line).expect("writing JSON into memory cannot fail");
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64, data: &str) -> Item {
        Item {
            seq: SequenceNumber(n),
            partition_key: format!("k{n}"),
            arrival_ms: 1,
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn compressed_raw_records_decompress_to_the_exact_records() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Zstd,
            Compression::Snappy,
        ] {
            let format = Format {
                kind: FormatKind::Raw,
                delimiter: "|".into(),
                compression,
                schema: Vec::new(),
            };
            let (bytes, failed) =
                encode(&format, &[item(1, "a"), item(2, "b\nc")]).expect("encodes");
            assert!(failed.is_empty());
            let plain = decompress(compression, &bytes.expect("bytes")).expect("decompresses");
            assert_eq!(plain, b"a|b\nc|", "{compression:?}");
        }
    }

    #[test]
    fn json_lines_refuse_records_that_are_not_json() {
        let format = Format {
            kind: FormatKind::JsonLines,
            ..Format::default()
        };
        let (bytes, failed) =
            encode(&format, &[item(1, "{\"a\":\n1}"), item(2, "nope")]).expect("encodes");
        assert_eq!(bytes.expect("bytes"), b"{\"a\":1}\n");
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].item.seq, SequenceNumber(2));
    }

    #[test]
    fn parquet_sends_misfits_to_the_error_output() {
        let format = Format {
            kind: FormatKind::Parquet,
            compression: Compression::Snappy,
            schema: vec![
                Column {
                    name: "id".into(),
                    kind: ColumnType::Int64,
                    nullable: false,
                },
                Column {
                    name: "name".into(),
                    kind: ColumnType::String,
                    nullable: true,
                },
            ],
            ..Format::default()
        };
        let (bytes, failed) = encode(
            &format,
            &[
                item(1, r#"{"id": 1, "name": "x"}"#),
                item(2, r#"{"id": "two"}"#),
                item(3, r#"{"id": 3}"#),
                item(4, r#"[1]"#),
            ],
        )
        .expect("encodes");
        let seqs: Vec<u64> = failed.iter().map(|f| f.item.seq.0).collect();
        assert_eq!(seqs, vec![2, 4]);
        let bytes = bytes::Bytes::from(bytes.expect("bytes"));
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
            .expect("reads")
            .build()
            .expect("reader");
        let batches: Vec<RecordBatch> = reader.map(|b| b.expect("batch")).collect();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 2);
        assert_eq!(batches[0].schema().field(0).data_type(), &DataType::Int64);
    }
}
