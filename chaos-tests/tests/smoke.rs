//! The smoke drills: a three-node cluster in three regions, each node in its own network
//! namespace; a leader killed three times, a leader isolated, a one-way cut and a paused leader,
//! and, apart, three whole-cluster power cuts, each on a fresh cluster while producers write.
//! Every acknowledged record must be read back where it was acknowledged, once and in order,
//! with nothing made up, and writes must resume after every fault.
//!
//! Needs root, iproute2 and fuse3, as CI has: on a machine without them the tests fail and say
//! what is missing; they are never skipped.

use std::path::PathBuf;
use std::time::Duration;

use riptide_chaos::cluster::Topology;
use riptide_chaos::drills::{self, DrillOptions, Scenario};
use riptide_chaos::workload::WorkloadConfig;

fn riptide_bin() -> PathBuf {
    // target/debug/deps/smoke-HASH -> target/debug/riptide, built by the same cargo run.
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    dir.join("riptide")
}

/// The smoke drills' options: a three-node cluster in three regions, 3 shards, 3 producers.
fn options(out: &std::path::Path) -> DrillOptions {
    let bin = riptide_bin();
    assert!(
        bin.is_file(),
        "{} is missing: `cargo build -p riptide` first",
        bin.display()
    );
    DrillOptions {
        bin,
        proxy_bin: None,
        out: out.to_path_buf(),
        topology: Topology {
            regions: 3,
            nodes_per_region: 1,
            region_rtt_ms: 0,
            timing_profile: "data-centre".into(),
            replica_repair_after_ms: None,
        },
        shards: 3,
        workload: WorkloadConfig {
            producers: 3,
            rate_per_producer: 40,
            ..WorkloadConfig::default()
        },
        kills: 3,
        cuts: 3,
        disk_sync_latency: Duration::from_micros(500),
        hold: Duration::from_secs(4),
        settle: Duration::from_secs(2),
    }
}

/// Writes resumed on every shard after every fault of `r`.
fn assert_resumed(r: &drills::ScenarioResult) {
    let name = r.scenario.name();
    assert!(r.report.ok(), "{name}:\n{}", r.report.summary());
    assert!(
        r.report.acknowledged > 100,
        "{name}: too few writes acknowledged"
    );
    assert!(!r.report.faults.is_empty(), "{name}: no fault recorded");
    for fault in &r.report.faults {
        for (shard, outage) in &fault.per_shard {
            assert!(
                outage.resumed,
                "{name}: writes to {shard} never resumed after {} on {}",
                fault.name, fault.target
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_drill_loses_nothing() {
    let out = tempfile::tempdir().expect("temporary folder");
    let opts = options(out.path());
    let mut results = Vec::new();
    for scenario in [
        Scenario::LeaderKill,
        Scenario::Isolate,
        Scenario::OneWayCut,
        Scenario::Pause,
    ] {
        let result = drills::run(scenario, &opts)
            .await
            .unwrap_or_else(|e| panic!("{}: the drill itself failed: {e}", scenario.name()));
        results.push(result);
    }
    println!("{}", drills::table(&results));
    for r in &results {
        assert_resumed(r);
    }
    assert_eq!(
        results[0].outages_ms.len(),
        3,
        "leader-kill: one outage per kill"
    );
}

/// The whole cluster loses power three times while producers write PutRecords batches: each
/// node is killed and its data directory (the power-loss file system) loses every write it
/// never synced. Every acknowledged record must be read back. Needs /dev/fuse and fusermount3
/// (fuse3), which `.ci/run` installs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_loss_smoke_loses_nothing() {
    let out = tempfile::tempdir().expect("temporary folder");
    let mut opts = options(out.path());
    opts.workload.batch = 10;
    opts.workload.record_bytes = 100;
    let result = drills::run(Scenario::PowerLoss, &opts)
        .await
        .unwrap_or_else(|e| panic!("power-loss: the drill itself failed: {e}"));
    println!("{}", drills::table(std::slice::from_ref(&result)));
    assert_resumed(&result);
    assert_eq!(result.outages_ms.len(), 3, "one outage per cut");
}
