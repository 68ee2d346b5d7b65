//! Deliveries whose output is checked record by record: buffering hints, compression and
//! Parquet, and transforms that drop and fail records.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buffering_hints_compression_and_parquet_hold() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let size_bytes = (0.01f64 * 1024.0 * 1024.0) as usize;
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "by-size"
stream = "events"
buffer = {{ size_mib = 0.01, interval_seconds = 900 }}
format = {{ kind = "raw", delimiter = "\n", compression = "gzip" }}
destination = {{ kind = "directory", path = "{d}/by-size" }}

[[delivery]]
name = "by-interval"
stream = "events"
buffer = {{ size_mib = 64, interval_seconds = 1 }}
format = {{ kind = "raw", delimiter = "\n", compression = "zstd" }}
destination = {{ kind = "directory", path = "{d}/by-interval" }}

[[delivery]]
name = "snappy"
stream = "events"
buffer = {{ size_mib = 64, interval_seconds = 1 }}
format = {{ kind = "raw", delimiter = "\n", compression = "snappy" }}
destination = {{ kind = "directory", path = "{d}/snappy" }}

[[delivery]]
name = "parquet"
stream = "events"
buffer = {{ size_mib = 64, interval_seconds = 1 }}
format = {{ kind = "parquet", compression = "zstd", schema = [
  {{ name = "id", type = "int64" }},
  {{ name = "customer_id", type = "string" }},
  {{ name = "amount", type = "float64", nullable = true }},
] }}
destination = {{ kind = "directory", path = "{d}/parquet" }}
"#,
        ep = cluster.endpoint,
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    // 1,000 good records of 80 to 120 bytes, and 20 that do not fit the Parquet schema.
    let mut records: Vec<Vec<u8>> = (0..1_000u64)
        .map(|i| {
            format!(
                r#"{{"id":{i},"customer_id":"c{}","amount":{}.5,"pad":"{}"}}"#,
                i % 3,
                i,
                "y".repeat((i % 40) as usize)
            )
            .into_bytes()
        })
        .collect();
    for i in 0..20u64 {
        records.push(format!(r#"{{"id":"not a number {i}"}}"#).into_bytes());
    }
    write_exact(&client, "events", &records).await;
    let expected: Vec<u8> = records
        .iter()
        .flat_map(|r| [&r[..], b"\n"].concat())
        .collect();
    let max_record = records.iter().map(Vec::len).max().unwrap_or(0);

    // By interval: small batches appear within seconds although far below 64 MiB.
    let concat = |sub: &str, decode: &dyn Fn(&[u8]) -> Vec<u8>| -> Vec<u8> {
        read_tree(&dir.path().join(sub))
            .into_iter()
            .filter(|(k, _)| !k.starts_with("errors/"))
            .flat_map(|(_, b)| decode(&b))
            .collect()
    };
    let unzstd = |b: &[u8]| zstd::decode_all(b).expect("zstd");
    let unsnappy = |b: &[u8]| {
        use std::io::Read;
        let mut out = Vec::new();
        snap::read::FrameDecoder::new(b)
            .read_to_end(&mut out)
            .expect("snappy");
        out
    };
    wait_for(
        "the interval-cut objects",
        Duration::from_secs(60),
        || async {
            concat("by-interval", &unzstd).len() >= expected.len()
                && concat("snappy", &unsnappy).len() >= expected.len()
        },
    )
    .await;
    // Object names sort by sequence number: concatenated, they are the records in order.
    assert_eq!(
        concat("by-interval", &unzstd),
        expected,
        "zstd objects are the records"
    );
    assert_eq!(
        concat("snappy", &unsnappy),
        expected,
        "snappy objects are the records"
    );

    // By size: every object holds at most 10 KiB of records, and only as little as that when
    // the next record would not have fitted; the rest waits for the 900 s interval.
    wait_for("the size-cut objects", Duration::from_secs(60), || async {
        let got = concat("by-size", &gunzip);
        got.len() + size_bytes >= expected.len()
    })
    .await;
    let objects = read_tree(&dir.path().join("by-size"));
    assert!(objects.len() >= 5, "{} objects", objects.len());
    for (key, bytes) in &objects {
        let plain = gunzip(bytes);
        let data_bytes = plain.len() - lines(&plain).len();
        assert!(
            data_bytes <= size_bytes && data_bytes + max_record > size_bytes,
            "{key}: {data_bytes} bytes of records is not a size cut of {size_bytes}"
        );
    }
    assert!(
        concat("by-size", &gunzip).len() < expected.len(),
        "the tail waits for the interval"
    );

    // Parquet reads back with the configured schema; misfits are in the error prefix.
    wait_for(
        "parquet objects and errors",
        Duration::from_secs(60),
        || async {
            read_tree(&dir.path().join("parquet"))
                .iter()
                .any(|(k, _)| k.starts_with("errors/"))
        },
    )
    .await;
    let mut rows = 0;
    let mut ids = Vec::new();
    for (key, bytes) in read_tree(&dir.path().join("parquet")) {
        if key.starts_with("errors/") {
            for line in lines(&bytes) {
                let v: serde_json::Value = serde_json::from_slice(line).expect("json");
                assert_eq!(v["errorCode"], "FormatMismatch", "{v}");
            }
            continue;
        }
        assert!(key.ends_with(".parquet"), "{key}");
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes),
        )
        .expect("parquet file");
        let schema = reader.schema().clone();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["id", "customer_id", "amount"]);
        assert_eq!(schema.field(0).data_type(), &arrow_schema::DataType::Int64);
        assert_eq!(
            schema.field(2).data_type(),
            &arrow_schema::DataType::Float64
        );
        for batch in reader.build().expect("reader") {
            let batch = batch.expect("batch");
            rows += batch.num_rows();
            let col = batch
                .column(0)
                .as_any()
                .downcast_ref::<arrow_array::Int64Array>()
                .expect("int64 ids");
            ids.extend(col.values().iter().copied());
        }
    }
    assert_eq!(rows, 1_000);
    assert_eq!(ids, (0..1_000).collect::<Vec<i64>>());
    let errors: usize = read_tree(&dir.path().join("parquet/errors"))
        .iter()
        .map(|(_, b)| lines(b).len())
        .sum();
    assert_eq!(errors, 20);

    // A clean shutdown delivers what is buffered: the size-cut tail arrives.
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    assert_eq!(
        concat("by-size", &gunzip),
        expected,
        "gzip objects are the records"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transform_drops_and_fails_records_as_it_says() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 2).await;
    let transform = TransformEndpoint::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "transformed"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 1 }}
format = {{ kind = "json-lines" }}
transform = {{ url = "{t}" }}
destination = {{ kind = "directory", path = "{d}/out" }}
"#,
        ep = cluster.endpoint,
        t = transform.url,
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    write_records(&client, "events", 0..1_000).await;
    let out = dir.path().join("out");
    let delivered = || -> Vec<serde_json::Value> {
        read_tree(&out)
            .into_iter()
            .filter(|(k, _)| !k.starts_with("errors/"))
            .flat_map(|(_, b)| {
                lines(&b)
                    .into_iter()
                    .map(|l| serde_json::from_slice(l).expect("json line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let failed = || -> Vec<serde_json::Value> {
        read_tree(&out.join("errors"))
            .into_iter()
            .flat_map(|(_, b)| {
                lines(&b)
                    .into_iter()
                    .map(|l| serde_json::from_slice(l).expect("json line"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for(
        "800 delivered and 100 failed",
        Duration::from_secs(60),
        || async { delivered().len() >= 800 && failed().len() >= 100 },
    )
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    let got = delivered();
    let mut ids: Vec<u64> = got.iter().map(|v| v["id"].as_u64().expect("id")).collect();
    ids.sort_unstable();
    let want: Vec<u64> = (0..1_000).filter(|i| i % 10 >= 2).collect();
    assert_eq!(
        ids, want,
        "dropped and failed records are not delivered, the rest once"
    );
    assert!(
        got.iter().all(|v| v["transformed"] == true),
        "records carry the new data"
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut failed_ids = Vec::new();
    for f in failed() {
        assert_eq!(f["errorCode"], "ProcessingFailed");
        let raw = b64
            .decode(f["rawData"].as_str().unwrap_or_default())
            .expect("base64");
        let id = common::record_id(&raw);
        assert_eq!(f["errorMessage"], format!("id {id} ends in 1"));
        failed_ids.push(id);
    }
    failed_ids.sort_unstable();
    assert_eq!(
        failed_ids,
        (0..1_000).filter(|i| i % 10 == 1).collect::<Vec<u64>>()
    );
}
