//! `riptide bench` (riptide-cli) against the in-process development cluster (riptide-node) and,
//! as the `riptide` binary, against three `riptide node` processes: the report has every
//! measure, and its loss rate comes from reading the records back (the counts match what the
//! stream holds). No figure here is a timing threshold: performance is measured by running the
//! bench, never by tests.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use common::{NodeProcesses, riptide_bin, run_with_deadline};
use riptide_bench_measure::report::Report;
use riptide_cli::bench::{BenchArgs, run_riptide};
use riptide_client::{Client, ShardId, StartingPosition};
use riptide_node::dev::{DevCluster, DevOptions};
use riptide_test_ports as ports;

#[derive(Debug, Parser)]
struct Cli {
    #[command(flatten)]
    bench: BenchArgs,
}

fn bench_args(extra: &[&str]) -> BenchArgs {
    let base = [
        "bench",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--probe",
        "300ms",
        "--producers",
        "2",
        "--shards",
        "2",
        "--record-bytes",
        "100",
        "--window",
        "200",
        "--quiet",
    ];
    Cli::parse_from(base.iter().chain(extra)).bench
}

/// Every record the stream holds, over all shards.
async fn count_records(client: &Client, stream: &str) -> u64 {
    let mut total = 0;
    for shard in client.list_shards(stream).await.expect("list shards") {
        let shard: ShardId = shard.shard_id.parse().expect("shard id");
        let mut consumer = client
            .consumer(stream, shard, StartingPosition::TrimHorizon)
            .with_limit(10_000)
            .with_poll_interval(Duration::from_millis(5));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "reading {shard} took too long");
            let records = consumer.next_batch().await.expect("read");
            total += records.len() as u64;
            if records.is_empty() && consumer.caught_up() {
                break;
            }
        }
    }
    total
}

/// What every report of a run without faults must show.
fn check_report(r: &Report) {
    assert_eq!(r.system, "riptide");
    assert!(r.durability.contains("majority"));
    let loss = &r.loss;
    assert!(loss.acknowledged > 0, "nothing acknowledged: {r:?}");
    assert_eq!(loss.lost, 0, "{loss:?}");
    assert_eq!(loss.loss_rate, 0.0);
    assert_eq!(loss.read_back, loss.acknowledged);
    assert_eq!(
        r.errors.errors + r.errors.throttles + r.errors.unanswered,
        0
    );
    // P counts the measured window only: some but not all acknowledged records.
    assert!(r.production.records > 0 && r.production.records < loss.acknowledged);
    assert_eq!(r.production.bytes, r.production.records * 100);
    assert!(r.production.records_per_sec > 0.0);
    let backlog = r.processing_backlog.expect("backlog rate");
    assert!(backlog.records >= loss.acknowledged);
    assert!(r.processing_live.records > 0);
    for p in [&r.put_ack_latency_ms, &r.end_to_end_latency_ms] {
        assert!(p.count > 0);
        assert!(p.p50 <= p.p90 && p.p90 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!(p.p50 > 0.0);
    }
    assert!(!r.timeline.is_empty());
    let probe = r.fsync_probe.as_ref().expect("fsync probe");
    assert!(probe.fsyncs_per_sec > 0.0);
    assert_eq!(r.workload.replicas, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_against_the_dev_cluster_reads_every_acknowledged_record_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = ports::consecutive(3);
    let kinesis_port = ports::free_port();
    let opts = DevOptions {
        data_dir: dir.path().join("dev"),
        base_port,
        kinesis_port,
    };
    let cluster = DevCluster::start(&opts).await.expect("start");
    let endpoint = cluster.endpoints()[0].clone();
    let probe_dir = dir.path().to_str().expect("utf-8 path").to_string();
    let args = bench_args(&[
        "--stream",
        "kept",
        "--keep-stream",
        "--consumers",
        "poll",
        "--probe-dir",
        &probe_dir,
    ]);
    let report = run_riptide(&endpoint, &args).await.expect("bench");
    check_report(&report);
    assert_eq!(report.workload.load, "closed");
    assert!(report.workload.consumers.starts_with("polling"));

    // The read-back ledger matches what the stream holds, counted independently here: every
    // record in the stream is an acknowledged one, a failed send written all the same, or a
    // retried send's second copy.
    let client = Client::connect(&endpoint).await.expect("connect");
    let held = count_records(&client, "kept").await;
    let l = &report.loss;
    assert_eq!(
        held,
        l.acknowledged + l.read_not_acknowledged + l.duplicates_read_back,
        "{l:?}"
    );

    // A second run on the same stream reads back only its own records.
    let again = run_riptide(&endpoint, &args).await.expect("second bench");
    check_report(&again);
    assert_eq!(again.loss.read_back, again.loss.acknowledged);

    // The same through the Kinesis HTTP API: records written with PutRecords and read with
    // GetRecords, and all of them read back.
    let kinesis_endpoint = format!("http://127.0.0.1:{kinesis_port}");
    let through_kinesis = bench_args(&[
        "--api",
        "kinesis",
        "--kinesis-endpoint",
        &kinesis_endpoint,
        "--consumers",
        "poll",
        "--probe-dir",
        &probe_dir,
    ]);
    let report = run_riptide(&endpoint, &through_kinesis)
        .await
        .expect("bench through the Kinesis API");
    check_report(&report);
    assert!(report.workload.api.starts_with("Kinesis HTTP API"));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_command_against_three_node_processes() {
    let nodes = NodeProcesses::start(3, |_| None, &[]);
    nodes.wait_formed().await;
    let endpoints = &nodes.endpoints;
    let out_dir = tempfile::tempdir().expect("temp dir");
    let plot = out_dir.path().join("run.svg");
    let mut command = Command::new(riptide_bin());
    command
        .args(["--endpoint", &endpoints.join(",")])
        .args([
            "bench",
            "--json",
            "--quiet",
            "--duration",
            "3s",
            "--warmup",
            "1s",
        ])
        .args(["--probe", "300ms", "--producers", "2", "--shards", "3"])
        .args(["--record-bytes", "100", "--rate", "1000"])
        .arg("--probe-dir")
        .arg(out_dir.path())
        .arg("--plot")
        .arg(&plot);
    let output = tokio::task::spawn_blocking(move || run_with_deadline(command, 180))
        .await
        .expect("bench process task");
    assert!(
        output.status.success(),
        "riptide bench failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Report = serde_json::from_slice(&output.stdout).expect("JSON report");
    check_report(&report);
    assert_eq!(report.workload.load, "open");
    assert_eq!(report.workload.offered_records_per_sec, Some(1000.0));
    assert_eq!(report.workload.shards, 3);
    // Open loop at 1,000 records/s for 1 s of warm-up and 3 s: about 4,000 records sent.
    assert!(
        (3_900..=4_100).contains(&report.loss.acknowledged),
        "{:?}",
        report.loss
    );
    let svg = std::fs::read_to_string(&plot).expect("plot written");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    drop(nodes);
}
