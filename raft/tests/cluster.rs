//! The engine on a 3-node in-process cluster with 100 groups, over the real transport.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, groups, stored_entries};
use riptide_raft::{GroupId, NodeId, Role};

const GROUPS: u64 = 100;
const T: Duration = Duration::from_secs(60);

async fn cluster_with_groups() -> (TestCluster, Vec<GroupId>) {
    let cluster = TestCluster::start(3).await;
    let gs = groups(GROUPS);
    cluster.create_groups(&gs, &cluster.ids()).await;
    (cluster, gs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_elects_a_leader() {
    let (cluster, gs) = cluster_with_groups().await;
    let mut leaders = BTreeSet::new();
    for g in &gs {
        let leader = cluster.leader_of(*g, T).await;
        leaders.insert(leader);
        // Every member learns the group's three voters.
        for id in cluster.ids() {
            let group = cluster.engine(id).group(*g).expect("group");
            let deadline = std::time::Instant::now() + T;
            while group.status().voters.len() != 3 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "group {g} on node {id}: {:?}",
                    group.status()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    assert!(!leaders.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_all_groups_replicate_to_all_members() {
    let (cluster, gs) = cluster_with_groups().await;
    let writes = futures::future::join_all(gs.iter().map(|g| {
        let cluster = &cluster;
        async move {
            let mut last = 0;
            for i in 0..5u32 {
                let data = Bytes::from(format!("group {g} entry {i}"));
                last = cluster.write(*g, data, T).await.index;
            }
            (*g, last)
        }
    }))
    .await;
    for (g, last) in writes {
        cluster.wait_applied_everywhere(g, last, T).await;
        let replicas: Vec<_> = cluster
            .ids()
            .into_iter()
            .map(|id| stored_entries(cluster.engine(id).group(g).expect("group").view()))
            .collect();
        assert_eq!(replicas[0].len(), 5, "group {g} stored {:?}", replicas[0]);
        assert!(
            replicas.iter().all(|r| r == &replicas[0]),
            "group {g}: replicas differ"
        );
        let expected: Vec<Vec<u8>> = (0..5)
            .map(|i| format!("group {g} entry {i}").into_bytes())
            .collect();
        let got: Vec<Vec<u8>> = replicas[0].iter().map(|(_, d)| d.clone()).collect();
        assert_eq!(got, expected);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_leader_elects_another_and_writes_resume() {
    let (mut cluster, gs) = cluster_with_groups().await;
    for g in &gs {
        cluster.write(*g, Bytes::from_static(b"before"), T).await;
    }
    let victim = cluster.leader_of(gs[0], T).await;
    let led_by_victim: Vec<GroupId> = {
        let mut v = Vec::new();
        for g in &gs {
            if cluster.leader_of(*g, T).await == victim {
                v.push(*g);
            }
        }
        v
    };
    assert!(!led_by_victim.is_empty());
    cluster.kill(victim).await;
    for g in &gs {
        let leader = cluster.leader_of(*g, T).await;
        assert_ne!(leader, victim);
        let out = cluster.write(*g, Bytes::from_static(b"after"), T).await;
        cluster.wait_applied_everywhere(*g, out.index, T).await;
        let entries = stored_entries(cluster.engine(leader).group(*g).expect("group").view());
        let data: Vec<&[u8]> = entries.iter().map(|(_, d)| d.as_slice()).collect();
        assert_eq!(
            data,
            vec![b"before".as_slice(), b"after".as_slice()],
            "group {g}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_restores_every_group_with_every_committed_entry() {
    let (mut cluster, gs) = cluster_with_groups().await;
    let mut last = Vec::new();
    for g in &gs {
        for i in 0..3 {
            let out = cluster.write(*g, Bytes::from(format!("e{i}")), T).await;
            if i == 2 {
                last.push((*g, out.index));
            }
        }
    }
    for (g, idx) in &last {
        cluster.wait_applied_everywhere(*g, *idx, T).await;
    }
    let node = NodeId(2);
    let before: Vec<_> = gs
        .iter()
        .map(|g| stored_entries(cluster.engine(node).group(*g).expect("group").view()))
        .collect();
    cluster.kill(node).await;
    cluster.restart(node).await;
    assert_eq!(cluster.engine(node).group_ids(), gs, "every group reopened");
    for (i, (g, idx)) in last.iter().enumerate() {
        let group = cluster.engine(node).group(*g).expect("group");
        // Entries applied before the restart are read back from disk at once, before any
        // catch-up from the other replicas.
        assert_eq!(
            stored_entries(group.view()),
            before[i],
            "group {g} right after restart"
        );
        group.wait_applied(*idx, T).await.expect("applied");
        assert!(group.status().last_log_index >= Some(*idx), "group {g}");
        assert_eq!(stored_entries(group.view()), before[i], "group {g}");
        assert_eq!(before[i].len(), 3);
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_learner_catches_up_through_a_snapshot_after_the_log_was_purged() {
    let (mut cluster, gs) = cluster_with_groups().await;
    let g = gs[0];
    let mut last = 0;
    for i in 0..50 {
        last = cluster
            .write(g, Bytes::from(format!("r{i}")), T)
            .await
            .index;
    }
    cluster.wait_applied_everywhere(g, last, T).await;
    for id in cluster.ids() {
        let group = cluster.engine(id).group(g).expect("group");
        group.trigger_snapshot().await.expect("snapshot");
        let deadline = std::time::Instant::now() + T;
        while group.status().snapshot_index < Some(last) {
            assert!(std::time::Instant::now() < deadline, "snapshot not built");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        group.purge_log(last).await.expect("purge");
        while group.status().purged_index < Some(last) {
            assert!(
                std::time::Instant::now() < deadline,
                "log not purged on {id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let learner = cluster.add_node().await;
    cluster
        .engine(learner)
        .create_group(g, common::test_settings(), b"log")
        .await
        .expect("create on learner");
    let leader = cluster.leader_of(g, T).await;
    let lg = cluster.engine(leader).group(g).expect("group");
    lg.add_learner(learner, cluster.addr(learner))
        .await
        .expect("add learner");

    let on_learner = cluster.engine(learner).group(g).expect("group");
    on_learner
        .wait_applied(last, T)
        .await
        .expect("learner applied");
    let status = on_learner.status();
    assert_eq!(status.role, Role::Learner);
    // The learner has no log below the snapshot: it got the entries through the snapshot.
    assert!(
        status.purged_index >= Some(last) || status.snapshot_index >= Some(last),
        "{status:?}"
    );
    let expected = stored_entries(lg.view());
    assert_eq!(stored_entries(on_learner.view()), expected);
    assert_eq!(expected.len(), 50);

    // And it keeps up with new writes through the log.
    let out = cluster
        .write(g, Bytes::from_static(b"after snapshot"), T)
        .await;
    on_learner
        .wait_applied(out.index, T)
        .await
        .expect("applied");
    assert_eq!(stored_entries(on_learner.view()).len(), 51);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_to_a_named_node() {
    let (cluster, gs) = cluster_with_groups().await;
    for g in gs.iter().take(10) {
        let leader = cluster.leader_of(*g, T).await;
        let target = cluster
            .ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("another node");
        cluster
            .engine(leader)
            .group(*g)
            .expect("group")
            .transfer_leader(target, T)
            .await
            .expect("transfer");
        assert_eq!(cluster.leader_of(*g, T).await, target, "group {g}");
        let out = cluster.write(*g, Bytes::from_static(b"x"), T).await;
        assert_eq!(cluster.leader_of(*g, T).await, target);
        cluster.wait_applied_everywhere(*g, out.index, T).await;
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_learner_promote_and_remove_change_the_membership() {
    let (mut cluster, gs) = cluster_with_groups().await;
    let g = gs[3];
    cluster.write(g, Bytes::from_static(b"one"), T).await;
    let new = cluster.add_node().await;
    cluster
        .engine(new)
        .create_group(g, common::test_settings(), b"log")
        .await
        .expect("create");
    let leader = cluster.leader_of(g, T).await;
    let lg = cluster.engine(leader).group(g).expect("group");
    lg.add_learner(new, cluster.addr(new))
        .await
        .expect("learner");
    assert!(lg.status().learners.contains(&new));

    lg.promote(BTreeSet::from([new])).await.expect("promote");
    let st = lg.status();
    assert!(st.voters.contains(&new) && st.voters.len() == 4, "{st:?}");

    let removed = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader && *id != new)
        .expect("a third node");
    lg.remove(BTreeSet::from([removed])).await.expect("remove");
    let st = lg.status();
    assert!(
        !st.voters.contains(&removed) && !st.learners.contains(&removed),
        "{st:?}"
    );
    assert_eq!(st.voters.len(), 3);

    // The group still commits with its new members.
    let out = cluster.write(g, Bytes::from_static(b"two"), T).await;
    cluster
        .engine(new)
        .group(g)
        .expect("group")
        .wait_applied(out.index, T)
        .await
        .expect("new member applied");

    // One joint change swaps a voter for a learner: the removed node has kept its (stale)
    // replica, so it catches up as a learner first.
    lg.add_learner(removed, cluster.addr(removed))
        .await
        .expect("learner again");
    let dropped = *st
        .voters
        .iter()
        .find(|id| **id != leader && **id != new)
        .expect("a third voter");
    let wanted = BTreeSet::from([leader, new, removed]);
    lg.set_voters(wanted.clone()).await.expect("set voters");
    let st = lg.status();
    assert_eq!(st.voters, wanted, "{st:?}");
    assert!(
        !st.learners.contains(&dropped) && !st.addresses.contains_key(&dropped),
        "{st:?}"
    );
    let out = cluster.write(g, Bytes::from_static(b"three"), T).await;
    cluster
        .engine(removed)
        .group(g)
        .expect("group")
        .wait_applied(out.index, T)
        .await
        .expect("promoted learner applied");

    cluster.shutdown().await;
}

/// A restarted leader leads again only after winning an election, in a new term. A leader sends
/// its entries to its followers while its own sync of them may still run, so when every node
/// loses power at once the followers can hold entries the leader lost. Leading again in the
/// same term without an election, it would write new entries at those entries' indexes with the
/// same term: two different entries under one log id, which the followers take for the ones
/// they hold, so an acknowledged entry is not what a later leader serves. In a new term its
/// shorter log loses the election instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_leader_leads_again_only_after_an_election() {
    let mut cluster = TestCluster::start(3).await;
    let g = GroupId(1);
    cluster.create_groups(&[g], &cluster.ids()).await;
    let before = cluster.write(g, Bytes::from_static(b"before"), T).await;
    cluster.wait_applied_everywhere(g, before.index, T).await;
    let leader = cluster.leader_of(g, T).await;
    for id in cluster.ids() {
        cluster.kill(id).await;
    }
    // The old leader first, the others right after, as when power comes back.
    cluster.restart(leader).await;
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        cluster.restart(id).await;
    }
    let after = cluster.write(g, Bytes::from_static(b"after"), T).await;
    assert!(
        after.term > before.term,
        "written in term {} after the restart, as before it ({}): node {leader} led again \
         without an election",
        after.term,
        before.term
    );
    cluster.shutdown().await;
}
