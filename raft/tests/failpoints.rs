//! Crash between a write and its sync: nothing reported committed may be lost.
//!
//! The test runs a 3-node cluster in a child process (this test binary, started again) with
//! the failpoint `log_writer::before_sync` set to panic after a number of syncs; a panic hook
//! turns that panic into an abort, so the child dies at once with appends written to RocksDB's
//! WAL buffer but not synced (the WAL is in manual-flush mode, so they are lost). The child
//! prints every write the cluster acknowledged. The parent then starts the cluster again from
//! the same data directories and checks that every acknowledged entry is there.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, groups, stored_entries};

const T: Duration = Duration::from_secs(30);
const CHILD_ENV: &str = "RIPTIDE_FAILPOINT_CHILD_DIR";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_entries_survive_a_crash_between_write_and_sync() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(dir.into()).await;
        return;
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "committed_entries_survive_a_crash_between_write_and_sync",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .env("FAILPOINTS", "log_writer::before_sync=400*off->panic")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let mut acked = BTreeSet::new();
    let mut addrs = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        // The test harness may print its own words before the child's on the same line.
        let start = ["ACK ", "ADDR "]
            .iter()
            .filter_map(|tag| line.find(tag))
            .min()
            .unwrap_or(0);
        let parts: Vec<&str> = line[start..].split_whitespace().collect();
        match parts.as_slice() {
            ["ACK", g, idx, data] => {
                acked.insert((
                    g.parse::<u64>().expect("group"),
                    idx.parse::<u64>().expect("index"),
                    data.to_string(),
                ));
            }
            ["ADDR", id, addr] => addrs.push((id.parse::<u64>().expect("id"), addr.to_string())),
            _ => {}
        }
    }
    let status = child.wait().expect("child exit");
    assert!(
        !status.success(),
        "the child must die at the failpoint, it exited {status}"
    );
    assert!(
        acked.len() > 20,
        "the child acknowledged only {} writes",
        acked.len()
    );

    // Start the same three nodes again from their data directories and addresses.
    let cluster = TestCluster::reopen(tmp.path(), &addrs).await;
    let gs = groups(GROUPS);
    for g in &gs {
        let leader = cluster.leader_of(*g, T).await;
        let group = cluster.engine(leader).group(*g).expect("group");
        // A write in the new term commits everything before it.
        let out = cluster
            .write(*g, Bytes::from_static(b"after-crash"), T)
            .await;
        group.wait_applied(out.index, T).await.expect("applied");
        let stored: BTreeSet<(u64, String)> = stored_entries(group.view())
            .into_iter()
            .map(|(i, d)| (i, String::from_utf8_lossy(&d).into_owned()))
            .collect();
        for (ag, idx, data) in acked.iter().filter(|(ag, _, _)| ag == &g.0) {
            assert!(
                stored.contains(&(*idx, data.clone())),
                "group {ag}: acknowledged entry {idx} ({data}) is missing after the crash"
            );
        }
    }
    cluster.shutdown().await;
}

const GROUPS: u64 = 5;

async fn child(dir: std::path::PathBuf) {
    std::panic::set_hook(Box::new(|_| std::process::abort()));
    let _scenario = fail::FailScenario::setup();
    let cluster = TestCluster::start_in(&dir, 3).await;
    for id in cluster.ids() {
        println!("ADDR {} {}", id.0, cluster.addr(id));
    }
    let gs = groups(GROUPS);
    cluster.create_groups(&gs, &cluster.ids()).await;
    let writers = gs.iter().map(|g| {
        let cluster = &cluster;
        async move {
            for i in 0u64.. {
                let data = format!("g{}-w{i}", g.0);
                let out = cluster.write(*g, Bytes::from(data.clone()), T).await;
                println!("ACK {} {} {}", g.0, out.index, data);
            }
        }
    });
    // Runs until the failpoint aborts the process.
    let _ =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(writers)).await;
    panic!("the failpoint never fired");
}
