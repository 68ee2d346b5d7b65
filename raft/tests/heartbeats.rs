//! A follower that was unreachable for a while hears the leader's heartbeats again once it is
//! back, even if nothing is written.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, groups};
use riptide_raft::AckedAt;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_reach_a_follower_again_after_it_was_down() {
    let mut cluster = TestCluster::start(3).await;
    let gs = groups(1);
    let g = gs[0];
    cluster.create_groups(&gs, &cluster.ids()).await;
    let leader = cluster.leader_of(g, T).await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");

    // Long enough for the leader's heartbeats to the follower to fail several times in a row
    // (the transport waits longer before each new attempt).
    cluster.kill(follower).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.restart(follower).await;

    // Nothing is written: only heartbeats can tell the leader that the follower is there. The
    // catch-up after the restart is acknowledged once; the heartbeats that follow are each
    // acknowledged anew. The leader must see ten acknowledgements after the first one (a
    // heartbeat goes out every 100 ms; the deadline only bounds the wait). Without the
    // heartbeats, the last acknowledgement stays the catch-up's.
    let acked_at = |c: &TestCluster| -> Option<AckedAt> {
        let group = c.engine(leader).group(g).expect("group on the leader");
        let acks = group.follower_acks().expect("still the leader");
        acks.get(&follower).copied().flatten()
    };
    let deadline = Instant::now() + T;
    let mut last = acked_at(&cluster);
    let mut newer = 0;
    while newer < 11 {
        let now = acked_at(&cluster);
        if now > last {
            newer += 1;
            last = now;
        }
        assert!(
            Instant::now() < deadline,
            "the leader {leader} heard node {follower} {newer} times after its restart; \
             its last acknowledgement arrived {:?} ago",
            last.map(|a| a.elapsed())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        cluster.leader_of(g, T).await,
        leader,
        "no election happened"
    );
    cluster.shutdown().await;
}
