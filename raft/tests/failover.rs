//! A leader whose process is gone is replaced at once, without waiting for its lease and an
//! election timeout; a leader that is in fact alive cannot serve a stale read once its
//! followers have elected another.
//!
//! The groups here have election timeouts far longer than the tests' deadlines, so that only
//! the failover watcher can have elected the new leaders the tests wait for.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestCluster, groups, stored_entries, test_settings};
use riptide_raft::{GroupId, GroupSettings, NodeId, RaftError, Role};

const T: Duration = Duration::from_secs(20);

/// Timeouts no election can finish within [`T`]: a follower waits for the lease (the
/// maximum) and then at least the minimum before it campaigns.
fn slow_elections() -> GroupSettings {
    GroupSettings {
        election_timeout_min_ms: 60_000,
        election_timeout_max_ms: 90_000,
        ..test_settings()
    }
}

/// Waits until one of `among` leads `group`, as it reports itself.
async fn leader_among(cluster: &TestCluster, group: GroupId, among: &[NodeId]) -> NodeId {
    let deadline = Instant::now() + T;
    loop {
        for id in among {
            if cluster.engine(*id).group(group).expect("group").role() == Role::Leader {
                return *id;
            }
        }
        assert!(
            Instant::now() < deadline,
            "none of {among:?} leads group {group} after {T:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the first leader, which the slow timeouts would not elect: one node campaigns
/// at once when a group is initialised.
async fn first_leaders(cluster: &TestCluster, gs: &[GroupId]) {
    for g in gs {
        cluster.leader_of(*g, T).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_followers_of_a_killed_leader_elect_a_successor_at_once() {
    let mut cluster = TestCluster::start(3).await;
    let gs = groups(3);
    cluster
        .create_groups_with(&gs, &cluster.ids(), slow_elections())
        .await;
    first_leaders(&cluster, &gs).await;
    for g in &gs {
        cluster.write(*g, Bytes::from_static(b"before"), T).await;
    }
    let victim = cluster.leader_of(gs[0], T).await;
    let led: Vec<GroupId> = {
        let mut led = Vec::new();
        for g in &gs {
            if cluster.leader_of(*g, T).await == victim {
                led.push(*g);
            }
        }
        led
    };
    let survivors: Vec<NodeId> = cluster.ids().into_iter().filter(|n| *n != victim).collect();
    // The first elections (one campaign per group when it is initialised) count as well.
    let before: Vec<_> = survivors
        .iter()
        .map(|id| cluster.engine(*id).election_stats())
        .collect();
    cluster.kill(victim).await;
    for g in &led {
        let leader = leader_among(&cluster, *g, &survivors).await;
        let out = cluster.write(*g, Bytes::from_static(b"after"), T).await;
        cluster.wait_applied_everywhere(*g, out.index, T).await;
        let entries = stored_entries(cluster.engine(leader).group(*g).expect("group").view());
        let data: Vec<&[u8]> = entries.iter().map(|(_, d)| d.as_slice()).collect();
        assert_eq!(data, vec![b"before".as_slice(), b"after".as_slice()]);
    }
    let stats: Vec<_> = survivors
        .iter()
        .map(|id| cluster.engine(*id).election_stats())
        .collect();
    assert!(
        stats.iter().any(|s| s.dead_leaders_noticed > 0),
        "no survivor noticed the dead leader: {stats:?}"
    );
    assert!(
        stats
            .iter()
            .zip(&before)
            .all(|(s, b)| s.timeout_elections == b.timeout_elections),
        "an election timeout ran out: {before:?} then {stats:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_leader_taken_for_gone_serves_no_stale_read() {
    let cluster = TestCluster::start(3).await;
    let gs = groups(1);
    let g = gs[0];
    cluster
        .create_groups_with(&gs, &cluster.ids(), slow_elections())
        .await;
    first_leaders(&cluster, &gs).await;
    cluster.write(g, Bytes::from_static(b"first"), T).await;
    let old = cluster.leader_of(g, T).await;
    let followers: Vec<NodeId> = cluster.ids().into_iter().filter(|n| *n != old).collect();

    // As if the followers' connections to the leader had been reset and the leader had
    // refused new ones: it is in fact alive and still takes itself for the leader.
    for f in &followers {
        cluster.engine(*f).treat_as_gone(old).await;
    }
    let new = leader_among(&cluster, g, &followers).await;
    let written = cluster
        .engine(new)
        .group(g)
        .expect("group")
        .write(Bytes::from_static(b"second"))
        .await
        .expect("the new leader commits");

    // The old leader must not confirm a read that misses the new write: either it refuses
    // (it no longer leads), or what it then reads includes the write.
    let stale = cluster.engine(old).group(g).expect("group");
    match stale.read_barrier().await {
        Err(RaftError::NotLeader { .. }) => {}
        Ok(()) => {
            let entries = stored_entries(stale.view());
            assert!(
                entries.iter().any(|(i, _)| *i == written.index),
                "node {old} confirmed a read without entry {}: {entries:?}",
                written.index
            );
        }
        Err(e) => panic!("read barrier on node {old}: {e}"),
    }
    cluster.shutdown().await;
}
