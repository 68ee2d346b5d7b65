//! A follower that was unreachable for a while hears the leader's heartbeats again once it is
//! back, even if nothing is written.

mod common;

use std::time::{Duration, Instant};

use common::{TestCluster, groups};

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

    // Nothing is written: only heartbeats can tell the leader that the follower is there. Once
    // the follower answered, it must keep answering: every sample over three seconds must show
    // an acknowledgement younger than ten heartbeat intervals (100 ms each). Without the
    // heartbeats, the last acknowledgement is the catch-up's, and it ages past that.
    let fresh = Duration::from_secs(1);
    let ack_age = |c: &TestCluster| -> Option<Duration> {
        let group = c.engine(leader).group(g).expect("group on the leader");
        let acks = group.follower_acks().expect("still the leader");
        acks.get(&follower).copied().flatten()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ack_age(&cluster).is_some_and(|age| age < fresh) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node {follower} never acknowledged the leader {leader} after its restart: last ack {:?} ago",
            ack_age(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let age = ack_age(&cluster);
        assert!(
            age.is_some_and(|a| a < fresh),
            "the leader {leader} stopped hearing from node {follower}: last ack {age:?} ago"
        );
    }
    assert_eq!(
        cluster.leader_of(g, T).await,
        leader,
        "no election happened"
    );
    cluster.shutdown().await;
}
