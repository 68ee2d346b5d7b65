//! Replica repair and draining on six in-process nodes in three regions (two per region): the
//! replicas of a node that stopped answering, or that is drained, move to other nodes, both in
//! the controller's placement and in each shard group's actual Raft membership, and every
//! record stays readable in order.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestCluster, eventually, iterator, read_from};
use riptide_node::config::NodeConfig;
use riptide_node::controller::{ControllerView, NodeInfo, ShardInfo, StreamInfo};
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::{self, ShardIteratorType};
use riptide_proto::{SequenceNumber, ShardId};
use riptide_raft::GroupId;

const NODES: usize = 6;
const SHARDS: u32 = 4;
const WAIT: Duration = Duration::from_secs(90);
/// How long a node stays silent before the controller's leader moves its replicas.
const REPAIR_AFTER_MS: u64 = 2_000;

/// Nodes 1 and 2 in region-0, 3 and 4 in region-1, 5 and 6 in region-2.
fn three_regions(c: &mut NodeConfig) {
    c.region = format!("region-{}", (c.node_id - 1) / 2);
}

fn region_of(node: u64) -> String {
    format!("region-{}", (node - 1) / 2)
}

/// The stream as node `i` has applied the controller.
fn stream_at(cluster: &TestCluster, i: usize, name: &str) -> StreamInfo {
    let node = cluster.node(i).expect("node is up");
    let ctl = node.engine().group(GroupId(0)).expect("controller group");
    ControllerView::stream(ctl.view(), name)
        .expect("read controller")
        .expect("stream exists")
}

fn nodes_at(cluster: &TestCluster, i: usize) -> Vec<NodeInfo> {
    cluster
        .node(i)
        .expect("node is up")
        .core_nodes()
        .expect("nodes")
}

/// Indexes of the nodes that are up.
fn up(cluster: &TestCluster) -> Vec<usize> {
    (0..NODES).filter(|i| cluster.is_up(*i)).collect()
}

/// Writes `n` records over 20 keys through node `via`; returns (shard, sequence number, data)
/// of each, all of which must succeed.
async fn write(
    cluster: &TestCluster,
    via: usize,
    stream: &str,
    tag: &str,
    n: usize,
) -> Vec<(String, String, Vec<u8>)> {
    let mut api = cluster.api(via).await;
    let records: Vec<v1::PutRecordsEntry> = (0..n)
        .map(|i| v1::PutRecordsEntry {
            data: format!("{tag}-{i}").into_bytes().into(),
            partition_key: format!("key-{}", i % 20),
            explicit_hash_key: None,
        })
        .collect();
    let resp = api
        .put_records(v1::PutRecordsRequest {
            stream_name: stream.into(),
            records: records.clone(),
            numeric_positions: false,
        })
        .await
        .expect("put records")
        .into_inner();
    assert_eq!(resp.failed_record_count, 0, "{:?}", resp.records);
    resp.records
        .into_iter()
        .zip(records)
        .map(|(r, e)| (r.shard_id, r.sequence_number, e.data.to_vec()))
        .collect()
}

/// Reads every shard from its trim horizon through node `via` and checks that it holds
/// exactly the records written to it, in the order of their sequence numbers.
async fn assert_all_readable(
    cluster: &TestCluster,
    via: usize,
    stream: &str,
    written: &[(String, String, Vec<u8>)],
) {
    let mut expected: BTreeMap<String, Vec<(SequenceNumber, Vec<u8>)>> = BTreeMap::new();
    for (shard, seq, data) in written {
        let seq = SequenceNumber::parse(seq, "sequence_number").expect("sequence number");
        expected
            .entry(shard.clone())
            .or_default()
            .push((seq, data.clone()));
    }
    let mut api = cluster.api(via).await;
    for shard in 0..SHARDS {
        let id = ShardId(shard).to_string();
        let mut want = expected.remove(&id).unwrap_or_default();
        want.sort();
        let it = iterator(
            &mut api,
            stream,
            shard,
            ShardIteratorType::TrimHorizon,
            "",
            0,
        )
        .await
        .expect("iterator");
        let got: Vec<(SequenceNumber, Vec<u8>)> = read_from(&mut api, it)
            .await
            .into_iter()
            .map(|r| {
                (
                    SequenceNumber::parse(&r.sequence_number, "sequence_number").expect("seq"),
                    r.data.to_vec(),
                )
            })
            .collect();
        assert_eq!(got.len(), want.len(), "{id}: record count");
        assert_eq!(got, want, "{id}: records differ");
    }
}

/// Whether every shard of `stream`, as every running node sees the controller, has three
/// replicas in three regions without `gone`, and whether each group's leader has exactly those
/// as voters (no learners) and every placed replica has applied what its leader has. Says what
/// is still missing otherwise.
fn converged(cluster: &TestCluster, stream: &str, gone: u64) -> Result<(), String> {
    let live = up(cluster);
    let first = stream_at(cluster, live[0], stream);
    for i in &live {
        let s = stream_at(cluster, *i, stream);
        if s.shards != first.shards {
            return Err(format!("node {} has not applied the placement yet", i + 1));
        }
    }
    for sh in &first.shards {
        check_shard(cluster, sh, gone)?;
    }
    Ok(())
}

fn check_shard(cluster: &TestCluster, sh: &ShardInfo, gone: u64) -> Result<(), String> {
    let placed: BTreeSet<u64> = sh.replicas.iter().copied().collect();
    if placed.len() != 3 || placed.contains(&gone) {
        return Err(format!("shard {} placed on {:?}", sh.index, sh.replicas));
    }
    let regions: BTreeSet<String> = placed.iter().map(|n| region_of(*n)).collect();
    if regions.len() != 3 {
        return Err(format!(
            "shard {} shares a region: {:?}",
            sh.index, sh.replicas
        ));
    }
    let Some(leader) = cluster.leader_of(sh.group) else {
        return Err(format!("shard {} has no leader", sh.index));
    };
    let group = cluster
        .node(leader)
        .expect("leader is up")
        .engine()
        .group(GroupId(sh.group))
        .map_err(|e| e.to_string())?;
    let status = group.status();
    let voters: BTreeSet<u64> = status.voters.iter().map(|v| v.0).collect();
    if voters != placed || !status.learners.is_empty() {
        return Err(format!(
            "shard {}: voters {voters:?}, learners {:?}, placed {placed:?}",
            sh.index, status.learners
        ));
    }
    let applied = status.applied_index;
    for n in &placed {
        let replica = cluster
            .node(*n as usize - 1)
            .ok_or_else(|| format!("placed node {n} is down"))?
            .engine()
            .group(GroupId(sh.group))
            .map_err(|_| format!("node {n} does not host shard {}", sh.index))?;
        if replica.status().applied_index < applied {
            return Err(format!("node {n} lags on shard {}", sh.index));
        }
    }
    Ok(())
}

/// Waits until [`converged`] holds and node `gone` (when up) hosts no shard group; panics
/// with what was still missing at the deadline.
async fn wait_converged(cluster: &TestCluster, stream: &str, gone: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let gone_index = gone as usize - 1;
    loop {
        let missing = converged(cluster, stream, gone).and_then(|()| {
            let left = match cluster.is_up(gone_index) {
                true => shard_groups_on(cluster, gone_index),
                false => Vec::new(),
            };
            match left.is_empty() {
                true => Ok(()),
                false => Err(format!("node {gone} still hosts groups {left:?}")),
            }
        });
        let Err(missing) = missing else {
            return;
        };
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas of node {gone} did not move within {WAIT:?}: {missing}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Shard groups node `i` hosts.
fn shard_groups_on(cluster: &TestCluster, i: usize) -> Vec<GroupId> {
    cluster
        .node(i)
        .expect("node is up")
        .engine()
        .group_ids()
        .into_iter()
        .filter(|g| *g != GroupId(0))
        .collect()
}

async fn start() -> TestCluster {
    TestCluster::start(NODES, |c| {
        three_regions(c);
        c.replica_repair_after_ms = REPAIR_AFTER_MS;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_of_a_lost_node_move_to_the_region_it_left() {
    let mut cluster = start().await;
    cluster.create_active(0, "repair", SHARDS).await;
    let mut written = write(&cluster, 0, "repair", "before", 200).await;

    // Stop the controller's leader, so that a new leader must notice the loss with fresh
    // timers; it holds replicas like every node (4 shards x 3 replicas over 6 nodes).
    let ctl_leader = cluster.leader_of(0).expect("controller leader");
    let victim = ctl_leader as u64 + 1;
    let before = stream_at(&cluster, ctl_leader, "repair");
    let held: Vec<u32> = before
        .shards
        .iter()
        .filter(|sh| sh.replicas.contains(&victim))
        .map(|sh| sh.index)
        .collect();
    assert!(
        !held.is_empty(),
        "node {victim} holds no replica: {before:?}"
    );
    for sh in &before.shards {
        let regions: BTreeSet<String> = sh.replicas.iter().map(|n| region_of(*n)).collect();
        assert_eq!(regions.len(), 3, "initial placement {:?}", sh.replicas);
    }
    cluster.stop(ctl_leader).await;
    let via = up(&cluster)[0];

    // Writes go on while the replica is replaced.
    eventually(WAIT, "every shard has a leader again", || async {
        before
            .shards
            .iter()
            .all(|sh| cluster.leader_of(sh.group).is_some())
    })
    .await;
    written.extend(write(&cluster, via, "repair", "during", 200).await);

    wait_converged(&cluster, "repair", victim).await;
    let after = stream_at(&cluster, via, "repair");
    for index in &held {
        let replicas = &after.shards[*index as usize].replicas;
        let same_region: Vec<u64> = replicas
            .iter()
            .copied()
            .filter(|n| region_of(*n) == region_of(victim))
            .collect();
        assert_eq!(
            same_region.len(),
            1,
            "shard {index} did not get its lost region back: {replicas:?}"
        );
    }
    for sh in &after.shards {
        if !held.contains(&sh.index) {
            assert_eq!(
                sh.replicas, before.shards[sh.index as usize].replicas,
                "shard {} did not need a move",
                sh.index
            );
        }
    }
    written.extend(write(&cluster, via, "repair", "after", 200).await);
    assert_all_readable(&cluster, via, "repair", &written).await;

    // A stopped node is reported down, and the controller's leader says how long it has been
    // silent: longer than the repair's wait, since its replicas moved (or nothing, when it
    // never answered this leader). The nodes that are up answered this leader after that.
    let ctl_leader = cluster.leader_of(0).expect("controller leader");
    let mut admin = AdminServiceClient::connect(cluster.endpoint(ctl_leader))
        .await
        .expect("connect");
    let status = admin
        .cluster_status(v1::ClusterStatusRequest { local_only: false })
        .await
        .expect("status")
        .into_inner();
    let stopped = status
        .nodes
        .iter()
        .find(|n| n.node_id == victim)
        .expect("the stopped node is listed");
    assert!(!stopped.up, "{stopped:?}");
    assert!(
        stopped
            .since_last_answer_ms
            .is_none_or(|ms| ms > REPAIR_AFTER_MS),
        "the stopped node's replicas moved before it was silent for long: {stopped:?}"
    );
    for n in status.nodes.iter().filter(|n| n.node_id != victim) {
        assert!(n.up, "{n:?}");
        let ms = n.since_last_answer_ms.expect("live node has answered");
        assert!(
            stopped
                .since_last_answer_ms
                .is_none_or(|silent| ms < silent),
            "a live node answered before the stopped node went silent: {n:?}, {stopped:?}"
        );
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_returns_after_its_replicas_moved_deletes_them() {
    let mut cluster = start().await;
    cluster.create_active(0, "back", SHARDS).await;
    let mut written = write(&cluster, 0, "back", "before", 100).await;
    // A node that is not a controller voter, so that the controller keeps all its voters.
    let victim_index = NODES - 1;
    let victim = victim_index as u64 + 1;
    let held = shard_groups_on(&cluster, victim_index);
    assert!(!held.is_empty(), "node {victim} holds no replica");
    cluster.stop(victim_index).await;
    wait_converged(&cluster, "back", victim).await;
    written.extend(write(&cluster, 0, "back", "while-away", 100).await);

    cluster.restart(victim_index).await;
    // It is placed nowhere, deletes its old replicas, and the groups keep their membership.
    wait_converged(&cluster, "back", victim).await;
    assert!(
        nodes_at(&cluster, 0)
            .iter()
            .any(|n| n.id == victim && !n.draining),
        "the node is still a member"
    );
    written.extend(write(&cluster, victim_index, "back", "after", 100).await);
    assert_all_readable(&cluster, victim_index, "back", &written).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_keeps_no_leader_and_no_replica() {
    // The default repair delay (5 minutes): a drain must not wait for it.
    let cluster = TestCluster::start(NODES, three_regions).await;
    cluster.create_active(0, "drain", SHARDS).await;
    let mut written = write(&cluster, 0, "drain", "before", 200).await;

    // Make the node to drain lead a shard it holds.
    let s = stream_at(&cluster, 0, "drain");
    let victim_index = 3;
    let victim = victim_index as u64 + 1;
    let mine: Vec<&ShardInfo> = s
        .shards
        .iter()
        .filter(|sh| sh.replicas.contains(&victim))
        .collect();
    assert!(!mine.is_empty(), "node {victim} holds no replica");
    let mut admin = AdminServiceClient::connect(cluster.endpoint(0))
        .await
        .expect("connect");
    admin
        .transfer_shard_leader(v1::TransferShardLeaderRequest {
            stream_name: "drain".into(),
            shard_id: ShardId(mine[0].index).to_string(),
            to_node: victim,
        })
        .await
        .expect("transfer");
    eventually(WAIT, "the node to drain leads a shard", || async {
        cluster.leader_of(mine[0].group) == Some(victim_index)
    })
    .await;

    let drained = admin
        .drain_node(v1::DrainNodeRequest { node_id: victim })
        .await
        .expect("drain")
        .into_inner();
    assert!(drained.leaders_moved >= 1, "{drained:?}");
    assert_eq!(drained.leaders_remaining, 0, "{drained:?}");
    assert_eq!(drained.replicas_moved, mine.len() as u32, "{drained:?}");
    assert_eq!(drained.replicas_remaining, 0, "{drained:?}");

    wait_converged(&cluster, "drain", victim).await;
    for sh in &stream_at(&cluster, 0, "drain").shards {
        assert_ne!(cluster.leader_of(sh.group), Some(victim_index));
    }
    written.extend(write(&cluster, victim_index, "drain", "after", 200).await);
    assert_all_readable(&cluster, 0, "drain", &written).await;

    // The node is marked draining everywhere, and takes no new replicas.
    let status = admin
        .cluster_status(v1::ClusterStatusRequest { local_only: false })
        .await
        .expect("status")
        .into_inner();
    let draining: Vec<u64> = status
        .nodes
        .iter()
        .filter(|n| n.draining)
        .map(|n| n.node_id)
        .collect();
    assert_eq!(draining, [victim]);
    let fresh = cluster.create_active(2, "after-drain", 6).await;
    for sh in &fresh.shards {
        assert!(!sh.replicas.contains(&victim), "{sh:?}");
        assert_eq!(sh.replicas.len(), 3);
    }
    assert!(
        (0..NODES).all(|i| nodes_at(&cluster, i)
            .iter()
            .any(|n| n.id == victim && n.draining)),
        "some node does not see the drain"
    );
    cluster.shutdown().await;
}

/// The controller's voters as node `i` sees them.
fn controller_voters(cluster: &TestCluster, i: usize) -> BTreeSet<u64> {
    let node = cluster.node(i).expect("node is up");
    let ctl = node.engine().group(GroupId(0)).expect("controller group");
    ctl.status().voters.iter().map(|v| v.0).collect()
}

/// Index of the node that leads the controller.
fn controller_leader(cluster: &TestCluster) -> Option<usize> {
    cluster.leader_of(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_controller_voter_is_replaced_so_the_metadata_survives_the_next_loss() {
    // Nodes 1 to 3 vote in the controller; the others follow it as learners.
    let mut cluster = start().await;
    eventually(WAIT, "a controller leader", || async {
        controller_leader(&cluster).is_some()
    })
    .await;
    let leader = controller_leader(&cluster).expect("leader");
    let original = controller_voters(&cluster, leader);
    assert_eq!(original, BTreeSet::from([1, 2, 3]));
    let lost: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // One voter is lost for good: a learner takes its vote, from a region the staying voters
    // are not in. Nodes 1 and 2 are region-0, node 3 region-1: losing node 3 leaves region-1
    // and region-2 uncovered (node 4 wins on its id); losing node 1 or 2 leaves region-2.
    let first = lost[0];
    cluster.stop(first).await;
    let lost_id = first as u64 + 1;
    let expected = if lost_id == 3 { 4 } else { 5 };
    eventually(WAIT, "a learner replaces the lost voter", || async {
        let Some(l) = controller_leader(&cluster) else {
            return false;
        };
        let v = controller_voters(&cluster, l);
        v.len() == 3 && !v.contains(&lost_id) && v.contains(&expected)
    })
    .await;

    // A second original voter is lost: the controller still has a majority and takes changes.
    cluster.stop(lost[1]).await;
    // The controller's leader counts a node as down after 3 s without an answer; from then on
    // no new shard waits for it to form its group.
    let second = lost[1] as u64 + 1;
    let admin = AdminServiceClient::connect(cluster.endpoint(leader))
        .await
        .expect("connect");
    eventually(
        WAIT,
        "the controller's leader counts the node as down",
        || {
            let mut admin = admin.clone();
            async move {
                let Ok(status) = admin
                    .cluster_status(v1::ClusterStatusRequest { local_only: false })
                    .await
                else {
                    return false;
                };
                status
                    .into_inner()
                    .nodes
                    .iter()
                    .find(|n| n.node_id == second)
                    .and_then(|n| n.since_last_answer_ms)
                    .is_some_and(|ms| ms > 3_000)
            }
        },
    )
    .await;
    let via = (0..NODES)
        .find(|i| cluster.is_up(*i))
        .expect("a node is up");
    let desc = tokio::time::timeout(WAIT, cluster.create_active(via, "after-loss", 2))
        .await
        .expect("the controller still takes a new stream");
    assert_eq!(desc.shards.len(), 2);
    cluster.shutdown().await;
}

/// A shard's log is its record store. Purging the log below a snapshot keeps the records, and a
/// replica built on a new node while its leader's log is purged can only be caught up by a
/// snapshot: the snapshot carries the retained log entries, so that replica holds every record
/// and serves them once it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_rebuilt_from_a_snapshot_after_a_purge_holds_every_record() {
    let mut cluster = start().await;
    cluster.create_active(0, "rebuilt", SHARDS).await;
    let mut written = write(&cluster, 0, "rebuilt", "before", 300).await;

    // Purge every shard's log on every replica, up to what it applied.
    for i in up(&cluster) {
        let engine = cluster.node(i).expect("node is up").engine();
        for g in shard_groups_on(&cluster, i) {
            let group = engine.group(g).expect("group");
            let applied = group.status().applied_index.expect("applied");
            group.trigger_snapshot().await.expect("snapshot");
            eventually(WAIT, "snapshot built", || async {
                group.status().snapshot_index >= Some(applied)
            })
            .await;
            group.purge_log(applied).await.expect("purge");
            eventually(WAIT, "log purged", || async {
                group.status().purged_index >= Some(applied)
            })
            .await;
        }
    }
    assert_all_readable(&cluster, 0, "rebuilt", &written).await;

    // Lose a node that holds replicas; they are rebuilt on the other node of its region.
    let victim = 6u64;
    let held: Vec<ShardInfo> = stream_at(&cluster, 0, "rebuilt")
        .shards
        .into_iter()
        .filter(|sh| sh.replicas.contains(&victim))
        .collect();
    assert!(!held.is_empty(), "node {victim} holds no replica");
    cluster.stop(victim as usize - 1).await;
    wait_converged(&cluster, "rebuilt", victim).await;
    let replacement = 5u64;

    // Every rebuilt replica got a snapshot, and leads its shard for the reads below.
    for sh in &held {
        let group = cluster
            .node(replacement as usize - 1)
            .expect("replacement is up")
            .engine()
            .group(GroupId(sh.group))
            .expect("replacement hosts the shard");
        assert!(
            group.status().snapshot_index.is_some(),
            "shard {} was not rebuilt from a snapshot: {:?}",
            sh.index,
            group.status()
        );
        let leader = cluster.leader_of(sh.group).expect("shard leader");
        cluster
            .node(leader)
            .expect("leader is up")
            .engine()
            .group(GroupId(sh.group))
            .expect("leader hosts the shard")
            .transfer_leader(riptide_raft::NodeId(replacement), WAIT)
            .await
            .expect("leadership moves to the rebuilt replica");
    }
    written.extend(write(&cluster, 0, "rebuilt", "after", 200).await);
    assert_all_readable(&cluster, replacement as usize - 1, "rebuilt", &written).await;
    cluster.shutdown().await;
}
