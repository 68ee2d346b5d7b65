//! The daemon against a real cluster and real destinations: a directory, moto's S3-compatible
//! server, PostgreSQL and an HTTP endpoint (see common/ for the fixtures).
//!
//! Each test holds `serial()` for its whole run so that the heavy tests take turns on the
//! machine's cores; every test has its own runtime, so holding that lock across awaits blocks
//! nothing but the other tests.
#![allow(clippy::await_holding_lock)]

mod common;
mod formats;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    Cluster, Daemon, Endpoint, Postgres, S3, TransformEndpoint, assert_ids, count_ids, lines,
    read_tree, serial, wait_for, write_records,
};

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .expect("gzip object decompresses");
    out
}

/// The records of a directory delivery in gzip'd JSON lines (error files left out).
fn dir_records(out: &Path) -> Vec<Vec<u8>> {
    read_tree(out)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("errors/"))
        .flat_map(|(_, b)| {
            lines(&gunzip(&b))
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The records of the S3 delivery in zstd'd raw lines.
async fn s3_records(s3: &S3) -> Vec<Vec<u8>> {
    s3.objects()
        .await
        .into_iter()
        .filter(|(k, _)| !k.starts_with("errors/"))
        .flat_map(|(_, b)| {
            let plain = zstd::decode_all(&b[..]).expect("zstd object decompresses");
            lines(&plain)
                .into_iter()
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

async fn pg_counts(pg: &tokio_postgres::Client) -> HashMap<u64, u32> {
    pg.query("SELECT id, count(*) FROM events GROUP BY id", &[])
        .await
        .expect("query events")
        .into_iter()
        .map(|r| {
            let id: i64 = r.get(0);
            let n: i64 = r.get(1);
            (id as u64, n as u32)
        })
        .collect()
}

async fn pg_rows(pg: &tokio_postgres::Client) -> u64 {
    let row = pg
        .query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count events");
    row.get::<_, i64>(0) as u64
}

fn http_received(endpoint: &Endpoint) -> usize {
    endpoint
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .records
        .len()
}

fn http_unique(endpoint: &Endpoint) -> usize {
    let got = endpoint.received.lock().unwrap_or_else(|p| p.into_inner());
    got.records
        .iter()
        .map(|r| common::record_id(r))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// Writes `records` in order to one shard (one partition key), returning them.
async fn write_exact(client: &riptide_client::Client, stream: &str, records: &[Vec<u8>]) {
    for chunk in records.chunks(500) {
        let entries: Vec<riptide_client::v1::PutRecordsEntry> = chunk
            .iter()
            .map(|r| riptide_client::v1::PutRecordsEntry {
                data: r.clone().into(),
                partition_key: "one-key".to_string(),
                explicit_hash_key: None,
            })
            .collect();
        let results = client
            .put_records(stream, entries)
            .await
            .expect("put records");
        assert_eq!(results.len(), chunk.len());
        for r in results {
            r.expect("record written");
        }
    }
}

const N: u64 = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_record_arrives_exactly_once_across_two_kills() {
    let _serial = serial();
    let started = Instant::now();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 4).await;
    let s3 = S3::start("deliveries").await;
    let pg = Postgres::start().await;
    let pgc = pg.client().await;
    pgc.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, body text NOT NULL, seq text NOT NULL)",
    )
    .await
    .expect("create table");
    let endpoint = Endpoint::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"
progress_interval_seconds = 2

[[delivery]]
name = "to-dir"
stream = "events"
buffer = {{ size_mib = 0.5, interval_seconds = 1 }}
format = {{ kind = "json-lines", compression = "gzip" }}
destination = {{ kind = "directory", path = "{d}/out", prefix = "{{stream}}/{{field:customer_id}}/" }}

[[delivery]]
name = "to-s3"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 1 }}
format = {{ kind = "raw", compression = "zstd" }}
retry = {{ duration_seconds = 120 }}
destination = {{ kind = "s3", bucket = "deliveries", endpoint = "{s3}", access_key_id = "test", secret_access_key = "test", prefix = "{{stream}}/{{timestamp:%Y/%m/%d/%H}}/" }}

[[delivery]]
name = "to-pg"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 1 }}
[delivery.destination]
kind = "postgres"
url = "{pg}"
table = "events"
columns = [{{ name = "id", from = "field:id" }}, {{ name = "body", from = "data" }}, {{ name = "seq", from = "sequence_number" }}]

[[delivery]]
name = "to-http"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 1 }}
destination = {{ kind = "http", url = "{http}", error_directory = "{d}/http-errors" }}
"#,
        ep = cluster.endpoint,
        s3 = s3.endpoint(),
        pg = pg.url(),
        http = endpoint.url,
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    let writer = {
        let client = client.clone();
        tokio::spawn(async move { write_records(&client, "events", 0..N).await })
    };
    // Kill the daemon twice while it delivers: once some records are in PostgreSQL, and again
    // once more have arrived after the restart.
    for (kill, threshold) in [(1, 5_000u64), (2, 30_000)] {
        wait_for(
            &format!("{threshold} rows in postgres before kill {kill}"),
            Duration::from_secs(120),
            || async { pg_rows(&pgc).await >= threshold },
        )
        .await;
        daemon.kill();
        let rows = pg_rows(&pgc).await;
        eprintln!(
            "kill {kill} after {:?}, {rows} rows in postgres",
            started.elapsed()
        );
        assert!(rows < N, "kill {kill} came after the delivery had finished");
        daemon.restart();
    }
    writer.await.expect("writer task");
    eprintln!("all {N} records written after {:?}", started.elapsed());
    let out = dir.path().join("out");
    wait_for(
        "every record in every destination",
        Duration::from_secs(240),
        || async {
            pg_rows(&pgc).await >= N
                && http_unique(&endpoint) as u64 >= N
                && dir_records(&out).len() as u64 >= N
                && s3_records(&s3).await.len() as u64 >= N
        },
    )
    .await;
    eprintln!("delivered after {:?}", started.elapsed());
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );

    let dir_ids = dir_records(&out);
    assert_ids(
        "directory",
        &count_ids(dir_ids.iter().map(Vec::as_slice)),
        N,
        false,
    );
    let s3_ids = s3_records(&s3).await;
    assert_ids("s3", &count_ids(s3_ids.iter().map(Vec::as_slice)), N, false);
    assert_ids("postgres", &pg_counts(&pgc).await, N, false);
    {
        let got = endpoint.received.lock().unwrap_or_else(|p| p.into_inner());
        assert_ids(
            "http",
            &count_ids(got.records.iter().map(Vec::as_slice)),
            N,
            true,
        );
        // A record that came twice came with the same request id each time: a receiver that
        // drops repeated request ids gets every record once.
        let mut ids_of: HashMap<u64, std::collections::HashSet<&str>> = HashMap::new();
        for (r, id) in got.records.iter().zip(&got.record_requests) {
            ids_of.entry(common::record_id(r)).or_default().insert(id);
        }
        let resent = got.records.len() - N as usize;
        let split: Vec<_> = ids_of
            .iter()
            .filter(|(_, ids)| ids.len() > 1)
            .take(5)
            .collect();
        assert!(
            split.is_empty(),
            "records sent under several request ids: {split:?}"
        );
        eprintln!("http: {resent} records received again, all under their first request id");
    }
    // The directory is partitioned by the customer field, the bucket by arrival hour.
    let keys: Vec<String> = read_tree(&out).into_iter().map(|(k, _)| k).collect();
    for c in 0..5 {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("events/c{c}/events-shardId-"))),
            "no object for customer c{c}: {keys:?}"
        );
    }
    assert!(
        s3.objects()
            .await
            .iter()
            .all(|(k, _)| k.starts_with("events/20")),
        "s3 keys are not under events/YYYY/..."
    );
    // The restarts removed the temporary files the kills left.
    let temps: Vec<&String> = keys
        .iter()
        .filter(|k| k.rsplit('/').next().is_some_and(|n| n.starts_with('.')))
        .collect();
    assert!(temps.is_empty(), "temporary files left: {temps:?}");
    // Nothing went to the error outputs.
    assert!(read_tree(&dir.path().join("http-errors")).is_empty());
    assert!(!out.join("errors").exists());
    eprintln!("checked after {:?}", started.elapsed());
}

/// Reads the running daemon's status through `riptide-firehose status`.
fn status_text(config: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_riptide-firehose"))
        .arg("status")
        .arg(config)
        .output()
        .expect("run riptide-firehose status");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The retries counter of a delivery in the status file.
fn status_retries(state_dir: &Path, delivery: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(state_dir.join("status.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|d| d["name"] == delivery)
        .and_then(|d| d["retries"].as_u64())
        .unwrap_or(0)
}

/// Records read and not yet delivered, over every shard of a delivery, from the status file.
fn status_pending(state_dir: &Path, delivery: &str) -> u64 {
    let Ok(text) = std::fs::read_to_string(state_dir.join("status.json")) else {
        return 0;
    };
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["deliveries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| d["name"] == delivery)
        .flat_map(|d| d["shards"].as_object().cloned().unwrap_or_default())
        .map(|(_, s)| s["pending_records"].as_u64().unwrap_or(0))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_down_for_30_seconds_is_caught_up_without_loss_or_doubles() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 2).await;
    let mut s3 = S3::start("outage").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "to-s3"
stream = "events"
buffer = {{ size_mib = 0.2, interval_seconds = 1 }}
retry = {{ duration_seconds = 300 }}
destination = {{ kind = "s3", bucket = "outage", endpoint = "{s3}", access_key_id = "test", secret_access_key = "test" }}
"#,
        ep = cluster.endpoint,
        s3 = s3.endpoint(),
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    let raw_records = |objects: Vec<(String, Vec<u8>)>| -> Vec<Vec<u8>> {
        objects
            .into_iter()
            .flat_map(|(_, b)| {
                lines(&b)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    write_records(&client, "events", 0..5_000).await;
    wait_for(
        "the first records in s3",
        Duration::from_secs(60),
        || async { !s3.objects().await.is_empty() },
    )
    .await;
    s3.proxy.down().await;
    let down_at = Instant::now();
    let at_down = raw_records(s3.objects().await).len();
    // Records keep coming while the store is down: many more than the daemon may hold.
    write_records(&client, "events", 5_000..65_000).await;
    let state = dir.path().join("state");
    wait_for("the daemon to retry", Duration::from_secs(30), || async {
        status_retries(&state, "to-s3") > 0
    })
    .await;
    let status = status_text(&daemon.config);
    assert!(
        status.contains("to-s3:"),
        "status shows the delivery: {status}"
    );
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(down_at.elapsed())).await;
    // Back-pressure: per shard at most three batches (in delivery, in the channel, being
    // cut) and one page of 10,000 records are held; the reader waits for the rest.
    let batch_records = (0.2 * 1024.0 * 1024.0 / 75.0) as u64 + 1;
    let bound = 2 * (3 * batch_records + 10_000);
    let pending = status_pending(&state, "to-s3");
    assert!(
        pending > 0 && pending <= bound,
        "{pending} records held while the store is down (bound {bound})"
    );
    assert_eq!(
        raw_records(s3.objects().await).len(),
        at_down,
        "objects appeared while the store was down"
    );
    s3.proxy.up().await;
    write_records(&client, "events", 65_000..70_000).await;
    wait_for(
        "every record in s3 after the outage",
        Duration::from_secs(120),
        || async { raw_records(s3.objects().await).len() >= 70_000 },
    )
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    let objects = s3.objects().await;
    assert!(
        objects.iter().all(|(k, _)| !k.starts_with("errors/")),
        "records went to the error output during a short outage"
    );
    let all = raw_records(objects);
    assert_ids(
        "s3 after an outage",
        &count_ids(all.iter().map(Vec::as_slice)),
        70_000,
        false,
    );
    assert!(
        status_retries(&state, "to-s3") > 0,
        "the final status must show the retries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_destination_down_past_the_retry_duration_sends_records_to_the_error_output() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 2).await;
    let endpoint = Endpoint::start().await;
    endpoint
        .failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "to-http"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 1 }}
retry = {{ duration_seconds = 2 }}
destination = {{ kind = "http", url = "{http}", error_directory = "{d}/errors" }}
"#,
        ep = cluster.endpoint,
        http = endpoint.url,
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    write_records(&client, "events", 0..1_000).await;
    let errors = dir.path().join("errors");
    let failed = || -> Vec<serde_json::Value> {
        read_tree(&errors)
            .into_iter()
            .flat_map(|(_, b)| {
                lines(&b)
                    .into_iter()
                    .map(|l| serde_json::from_slice(l).expect("error line is JSON"))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for(
        "1,000 records in the error output",
        Duration::from_secs(60),
        || async { failed().len() >= 1_000 },
    )
    .await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut raw = Vec::new();
    for line in failed() {
        assert_eq!(line["errorCode"], "DeliveryFailed", "{line}");
        let message = line["errorMessage"].as_str().unwrap_or_default();
        assert!(
            message.contains("503") && message.contains("down for the test"),
            "{line}"
        );
        assert_eq!(line["deliveryStreamName"], "to-http");
        raw.push(
            b64.decode(line["rawData"].as_str().unwrap_or_default())
                .expect("base64"),
        );
    }
    assert_ids(
        "error output",
        &count_ids(raw.iter().map(Vec::as_slice)),
        1_000,
        false,
    );
    assert!(
        endpoint
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .records
            .is_empty()
    );
    // Once the endpoint is back, new records are delivered to it.
    endpoint
        .failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    write_records(&client, "events", 1_000..1_500).await;
    wait_for(
        "new records at the endpoint",
        Duration::from_secs(60),
        || async { http_unique(&endpoint) >= 500 },
    )
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    assert_eq!(
        failed().len(),
        1_000,
        "records after the outage went to the error output"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_rows_checkpoints_and_error_table_commit_together() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 2).await;
    let pg = Postgres::start().await;
    let pgc = pg.client().await;
    pgc.batch_execute(
        "CREATE TABLE events (id bigint NOT NULL, customer text, arrived timestamptz NOT NULL, \
         shard text NOT NULL, seq text NOT NULL, key text NOT NULL)",
    )
    .await
    .expect("create table");
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "to-pg"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 0.5 }}
[delivery.destination]
kind = "postgres"
url = "{pg}"
table = "events"
columns = [
  {{ name = "id", from = "field:id" }},
  {{ name = "customer", from = "field:customer_id" }},
  {{ name = "arrived", from = "arrival_timestamp" }},
  {{ name = "shard", from = "shard" }},
  {{ name = "seq", from = "sequence_number" }},
  {{ name = "key", from = "partition_key" }},
]
"#,
        ep = cluster.endpoint,
        pg = pg.url(),
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    write_records(&client, "events", 0..1_000).await;
    let bad: Vec<Vec<u8>> = (0..10)
        .map(|i| format!("not json {i}").into_bytes())
        .collect();
    write_exact(&client, "events", &bad).await;
    let errors = || async {
        pgc.query_one("SELECT count(*) FROM events_errors", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
    };
    wait_for(
        "1,000 rows and 10 errors",
        Duration::from_secs(60),
        || async { pg_rows(&pgc).await >= 1_000 && errors().await >= 10 },
    )
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    assert_ids("postgres", &pg_counts(&pgc).await, 1_000, false);
    let row = pgc
        .query_one("SELECT customer, shard, key FROM events WHERE id = 7", &[])
        .await
        .expect("row 7");
    assert_eq!(row.get::<_, String>(0), "c2");
    assert!(row.get::<_, String>(1).starts_with("shardId-"));
    assert_eq!(row.get::<_, String>(2), "key-7");
    let failed = pgc
        .query(
            "SELECT error_code, error_message, raw_data FROM events_errors ORDER BY raw_data",
            &[],
        )
        .await
        .expect("error rows");
    assert_eq!(failed.len(), 10);
    for (i, r) in failed.iter().enumerate() {
        assert_eq!(r.get::<_, String>(0), "FormatMismatch");
        assert!(r.get::<_, String>(1).contains("not a JSON object"));
        assert_eq!(r.get::<_, Vec<u8>>(2), format!("not json {i}").into_bytes());
    }
    // Each shard's checkpoint is the newest sequence number in the table or the error table.
    let checkpoints = pgc
        .query(
            "SELECT c.shard_id, c.sequence_number, greatest( \
               (SELECT max(seq) FROM events e WHERE e.shard = c.shard_id), \
               (SELECT max(sequence_number) FROM events_errors x WHERE x.shard_id = c.shard_id)) \
             FROM riptide_firehose_checkpoints c WHERE c.delivery = 'to-pg'",
            &[],
        )
        .await
        .expect("checkpoints");
    assert_eq!(checkpoints.len(), 2, "one checkpoint per shard");
    for r in checkpoints {
        assert_eq!(
            r.get::<_, String>(1),
            r.get::<_, String>(2),
            "checkpoint of {}",
            r.get::<_, String>(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_sent_again_after_a_crash_keeps_its_request_id() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 2).await;
    let endpoint = Endpoint::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "to-http"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 0.5 }}
destination = {{ kind = "http", url = "{http}", error_directory = "{d}/errors" }}
"#,
        ep = cluster.endpoint,
        http = endpoint.url,
    );
    let mut daemon = Daemon::start(dir.path(), &config);
    write_records(&client, "events", 0..2_000).await;
    wait_for(
        "some records at the endpoint",
        Duration::from_secs(60),
        || async { http_unique(&endpoint) > 0 },
    )
    .await;
    // The endpoint takes the next batch in and holds its answer: the daemon is killed before
    // it hears that the batch was accepted.
    endpoint
        .hold_next
        .store(true, std::sync::atomic::Ordering::SeqCst);
    write_records(&client, "events", 2_000..4_000).await;
    wait_for(
        "a batch held by the endpoint",
        Duration::from_secs(60),
        || async { endpoint.held.load(std::sync::atomic::Ordering::SeqCst) },
    )
    .await;
    daemon.kill();
    let held = http_received(&endpoint);
    // More records before the restart: a batch cut afresh would now end elsewhere.
    write_records(&client, "events", 4_000..6_000).await;
    daemon.restart();
    wait_for(
        "every record at the endpoint, and the held batch again",
        Duration::from_secs(60),
        || async {
            let got = endpoint.received.lock().unwrap_or_else(|p| p.into_inner());
            let unique: std::collections::HashSet<u64> =
                got.records.iter().map(|r| common::record_id(r)).collect();
            unique.len() >= 6_000 && got.records.len() > held.max(6_000)
        },
    )
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    let got = endpoint.received.lock().unwrap_or_else(|p| p.into_inner());
    assert_ids(
        "http",
        &count_ids(got.records.iter().map(Vec::as_slice)),
        6_000,
        true,
    );
    let mut ids_of: HashMap<u64, std::collections::HashSet<&str>> = HashMap::new();
    let mut times: HashMap<u64, u32> = HashMap::new();
    for (r, id) in got.records.iter().zip(&got.record_requests) {
        let rid = common::record_id(r);
        ids_of.entry(rid).or_default().insert(id);
        *times.entry(rid).or_default() += 1;
    }
    let resent = times.values().filter(|n| **n > 1).count();
    assert!(resent > 0, "the held batch was not sent again");
    let split: Vec<_> = ids_of
        .iter()
        .filter(|(_, ids)| ids.len() > 1)
        .take(5)
        .collect();
    assert!(
        split.is_empty(),
        "records sent under several request ids: {split:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_cut_short_by_a_crash_is_written_again_to_the_same_objects() {
    let _serial = serial();
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{ep}"]
state_dir = "{d}/state"

[[delivery]]
name = "by-customer"
stream = "events"
buffer = {{ size_mib = 16, interval_seconds = 1 }}
format = {{ kind = "json-lines" }}
destination = {{ kind = "directory", path = "{d}/out", prefix = "{{field:customer_id}}/" }}
"#,
        ep = cluster.endpoint,
    );
    let out = dir.path().join("out");
    let records = |out: &Path| -> Vec<Vec<u8>> {
        read_tree(out)
            .into_iter()
            .flat_map(|(_, b)| {
                lines(&b)
                    .into_iter()
                    .map(<[u8]>::to_vec)
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut daemon = Daemon::start(dir.path(), &config);
    write_records(&client, "events", 0..100).await;
    wait_for("the first 100 records", Duration::from_secs(60), || async {
        records(&out).len() >= 100
    })
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    // Make the newest batch look cut short by a crash: all but one of its objects (one per
    // customer) are gone.
    let keys: Vec<String> = read_tree(&out).into_iter().map(|(k, _)| k).collect();
    let newest = keys
        .iter()
        .filter_map(|k| k.rsplit('-').next().map(|last| last.to_string()))
        .max()
        .expect("objects");
    let of_newest: Vec<&String> = keys.iter().filter(|k| k.ends_with(&newest)).collect();
    assert!(of_newest.len() >= 2, "one object per customer: {keys:?}");
    let removed: Vec<String> = of_newest[1..].iter().map(|k| k.to_string()).collect();
    for k in &removed {
        std::fs::remove_file(out.join(k)).expect("remove");
    }
    assert!(records(&out).len() < 100);
    // Records that came later must not join the repeated batch.
    write_records(&client, "events", 100..200).await;
    daemon.restart();
    wait_for("all 200 records", Duration::from_secs(60), || async {
        records(&out).len() >= 200
    })
    .await;
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    for k in &removed {
        assert!(out.join(k).exists(), "{k} was not written again");
    }
    let all = records(&out);
    assert_ids(
        "directory",
        &count_ids(all.iter().map(Vec::as_slice)),
        200,
        false,
    );
}
