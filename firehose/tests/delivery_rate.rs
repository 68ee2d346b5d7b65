//! The daemon's delivery rate to a directory against a plain consumer reading the same stream
//! in the same run (issue 7's acceptance 6). A measurement, so it is ignored in the suite;
//! run it with
//! `cargo test --manifest-path firehose/Cargo.toml --target-dir target/firehose --test delivery_rate -- --ignored --nocapture`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Cluster, Daemon, write_records};
use riptide_client::StartingPosition;

const N: u64 = 200_000;

/// Bytes of records on disk (raw, newline after each).
fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(e.path()),
                Ok(m) if !e.file_name().to_string_lossy().starts_with('.') => total += m.len(),
                _ => {}
            }
        }
    }
    total
}

/// Reads every record of the stream with one plain consumer per shard, as fast as it can;
/// returns the bytes read (plus one per record, as the daemon writes a newline) and the time.
async fn consume_all(client: &riptide_client::Client) -> (u64, Duration) {
    let shards = client.list_shards("events").await.expect("shards");
    let started = Instant::now();
    let mut readers = Vec::new();
    for s in shards {
        let id = s.shard_id.parse().expect("shard id");
        let mut consumer = client
            .consumer("events", id, StartingPosition::TrimHorizon)
            .with_limit(10_000);
        readers.push(tokio::spawn(async move {
            let mut bytes = 0u64;
            loop {
                let batch = consumer.next_batch().await.expect("read");
                bytes += batch.iter().map(|r| r.data.len() as u64 + 1).sum::<u64>();
                if batch.is_empty() && consumer.caught_up() {
                    return bytes;
                }
            }
        }));
    }
    let mut total = 0;
    for r in readers {
        total += r.await.expect("reader");
    }
    (total, started.elapsed())
}

/// Bytes the daemon writes for records `0..n` of [`write_records`], a newline after each.
fn bytes_written(n: u64) -> u64 {
    (0..n)
        .map(|id| {
            format!(
                r#"{{"id":{id},"customer_id":"c{}","pad":"{}"}}"#,
                id % 5,
                "x".repeat(40)
            )
            .len() as u64
                + 1
        })
        .sum()
}

/// Starts a daemon that delivers the whole stream to a new directory, waits until every
/// byte is there and stops it; returns the time from its start to the last byte.
async fn deliver_all(endpoint: &str, total: u64) -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display();
    let config = format!(
        r#"
endpoints = ["{endpoint}"]
state_dir = "{d}/state"

[[delivery]]
name = "rate"
stream = "events"
buffer = {{ size_mib = 1, interval_seconds = 0.2 }}
destination = {{ kind = "directory", path = "{d}/out" }}
"#
    );
    let started = Instant::now();
    let mut daemon = Daemon::start(dir.path(), &config);
    let out = dir.path().join("out");
    // Polled finely: the poll interval is part of the daemon's measured time.
    let deadline = Instant::now() + Duration::from_secs(300);
    while bytes_on_disk(&out) < total {
        assert!(
            Instant::now() < deadline,
            "the daemon did not deliver everything in 300 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    assert!(
        daemon.stop(),
        "the daemon did not stop cleanly:\n{}",
        daemon.logs()
    );
    assert_eq!(bytes_on_disk(&out), total, "records delivered twice");
    elapsed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run it alone with --ignored"]
async fn delivery_to_a_directory_keeps_up_with_a_plain_consumer() {
    let cluster = Cluster::start().await;
    let client = cluster.stream("events", 4).await;
    write_records(&client, "events", 0..N).await;

    // The machine is shared: each side runs three times, alternating, and the medians are
    // compared. The first consumer run also warms the nodes' caches for everyone.
    let mut consumer_times = Vec::new();
    let mut daemon_times = Vec::new();
    let mut total = 0;
    for round in 0..3 {
        let (bytes, consumer) = consume_all(&client).await;
        total = bytes;
        let daemon = deliver_all(&cluster.endpoint, total).await;
        eprintln!("round {round}: consumer {consumer:?}, daemon {daemon:?}");
        consumer_times.push(consumer);
        daemon_times.push(daemon);
    }
    consumer_times.sort();
    daemon_times.sort();
    let (consumer_time, daemon_time) = (consumer_times[1], daemon_times[1]);
    assert_eq!(total, bytes_written(N));
    let consumer_rate = N as f64 / consumer_time.as_secs_f64();
    let daemon_rate = N as f64 / daemon_time.as_secs_f64();
    eprintln!(
        "{N} records, medians of 3: plain consumer {consumer_time:?} ({consumer_rate:.0} records/s), \
         daemon to a directory {daemon_time:?} ({daemon_rate:.0} records/s), ratio {:.2}",
        daemon_rate / consumer_rate
    );
    assert!(
        daemon_rate >= 0.8 * consumer_rate,
        "the daemon delivers at {daemon_rate:.0} records/s, under 80% of the consumer's {consumer_rate:.0}"
    );
}
