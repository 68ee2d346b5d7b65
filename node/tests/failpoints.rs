//! Faults injected with failpoints, so this binary is built only with the `failpoints`
//! feature, and nextest runs each test in a process of its own. Failpoints are named after one
//! node's directory, since the three nodes share this process and its failpoint registry.
//!
//! - A node whose storage failed (its syncs fail with `log_writer::sync_fails:<store dir>`):
//!   it reports itself down, refuses every call with an error that is not retryable, and the
//!   other nodes take over its shards.
//! - A shard leader that takes a forwarded write in and leaves it unanswered
//!   (`core::hold_writes:<data dir>`): once another node leads the shard, the forwarding node
//!   sends the write there, or writes it itself, and says that it sent it twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestCluster, eventually, iterator, read_from, shard_groups};
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::{self};
use riptide_proto::{ErrorCode, RESENT_HEADER, status_code};

const WAIT: Duration = Duration::from_secs(60);
const STREAM: &str = "poisoned";
const SHARDS: u32 = 3;

/// A PutRecords call with a record for every shard (keys spread over the hash space).
fn one_per_shard(round: u32) -> v1::PutRecordsRequest {
    let step = u128::MAX / u128::from(SHARDS);
    v1::PutRecordsRequest {
        stream_name: STREAM.into(),
        records: (0..SHARDS)
            .map(|s| v1::PutRecordsEntry {
                data: format!("round {round} shard {s}").into_bytes().into(),
                partition_key: format!("k{s}"),
                explicit_hash_key: Some((step * u128::from(s) + step / 2).to_string()),
            })
            .collect(),
        numeric_positions: false,
    }
}

async fn own_status(cluster: &TestCluster, i: usize) -> v1::NodeStatus {
    let mut admin = AdminServiceClient::connect(cluster.endpoint(i))
        .await
        .expect("connect");
    admin
        .cluster_status(v1::ClusterStatusRequest { local_only: true })
        .await
        .expect("a node whose storage failed still answers the status probe")
        .into_inner()
        .nodes
        .remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_storage_failed_reports_itself_down_and_its_shards_move_away() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, STREAM, SHARDS).await;
    let groups = shard_groups(cluster.node(0).expect("up"), STREAM);
    // The victim leads shard 0, so that its shards must find other leaders.
    let mut victim = None;
    eventually(WAIT, "shard 0 has a leader", || {
        victim = cluster.leader_of(groups[0]);
        let found = victim.is_some();
        async move { found }
    })
    .await;
    let victim = victim.expect("checked above");
    let healthy: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let mut api = cluster.api(healthy[0]).await;
    let put = api
        .put_records(one_per_shard(0))
        .await
        .expect("put")
        .into_inner();
    assert_eq!(put.failed_record_count, 0, "{put:?}");

    // Every sync of the victim's store fails from now on; the next write it syncs poisons it.
    let store = cluster.configs[victim].data_dir.join("db");
    fail::cfg(
        format!("log_writer::sync_fails:{}", store.display()),
        "return",
    )
    .expect("failpoint");
    let mut round = 1;
    eventually(WAIT, "the victim's storage is poisoned", || {
        round += 1;
        let mut api = api.clone();
        let poisoned = cluster
            .node(victim)
            .expect("up")
            .engine()
            .storage_poisoned()
            .is_some();
        async move {
            if !poisoned {
                // Outcomes do not matter: the writes are there to make the victim sync.
                let _ = api.put_records(one_per_shard(round)).await;
            }
            poisoned
        }
    })
    .await;

    // It reports itself down, with the reason, to the probe and to the cluster status.
    let own = own_status(&cluster, victim).await;
    assert!(!own.up, "{own:?}");
    assert!(own.storage_failure.contains("sync failed"), "{own:?}");
    assert!(own.leading_groups.is_empty(), "{own:?}");

    // It refuses every other call with an error that is not retryable and says why.
    let mut at_victim = cluster.api(victim).await;
    let refusals = [
        at_victim
            .put_records(one_per_shard(0))
            .await
            .expect_err("put at the victim"),
        at_victim
            .describe_stream(v1::DescribeStreamRequest {
                stream_name: STREAM.into(),
            })
            .await
            .expect_err("describe at the victim"),
        at_victim
            .list_streams(v1::ListStreamsRequest::default())
            .await
            .expect_err("list at the victim"),
    ];
    for status in refusals {
        let code = status_code(&status);
        assert_eq!(code, ErrorCode::Internal, "{status:?}");
        assert!(!code.is_retryable());
        assert!(
            status.message().contains("storage failed"),
            "{}",
            status.message()
        );
    }

    // The other nodes elect new leaders for its shards, and take writes to every shard again.
    eventually(
        WAIT,
        "every shard takes writes through the other nodes",
        || {
            round += 1;
            let mut api = api.clone();
            let req = one_per_shard(round);
            async move {
                api.put_records(req)
                    .await
                    .is_ok_and(|r| r.into_inner().failed_record_count == 0)
            }
        },
    )
    .await;
    for g in &groups {
        let leader = cluster.leader_of(*g);
        assert!(
            leader.is_some_and(|l| l != victim),
            "group {g} is led by {leader:?}, the victim is {victim}"
        );
    }

    // The controller's leader counts the victim as down: it has not taken an answer from it
    // for longer than a node may stay silent and still take replicas (3 s), so the victim's
    // replicas move away once `replica_repair_after_ms` has passed, as for a silent node.
    eventually(
        WAIT,
        "the controller's leader counts the victim as down",
        || {
            let cluster = &cluster;
            let healthy = healthy.clone();
            async move {
                for i in healthy {
                    let Ok(mut admin) = AdminServiceClient::connect(cluster.endpoint(i)).await
                    else {
                        continue;
                    };
                    let Ok(status) = admin
                        .cluster_status(v1::ClusterStatusRequest { local_only: false })
                        .await
                    else {
                        continue;
                    };
                    let status = status.into_inner();
                    if status.controller_leader != i as u64 + 1 {
                        continue;
                    }
                    return status.nodes.iter().any(|n| {
                        n.node_id == victim as u64 + 1
                            && !n.up
                            && !n.storage_failure.is_empty()
                            && n.since_last_answer_ms.is_none_or(|ms| ms > 3_000)
                    });
                }
                false
            }
        },
    )
    .await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_its_leader_leaves_unanswered_goes_to_the_next_leader() {
    forwarded_write_moves_to_the_next_leader(NextLeader::AnotherNode).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_write_its_leader_leaves_unanswered_is_written_by_the_forwarding_node() {
    forwarded_write_moves_to_the_next_leader(NextLeader::TheForwardingNode).await;
}

/// Where the shard's leadership moves while its old leader holds a forwarded write.
enum NextLeader {
    AnotherNode,
    TheForwardingNode,
}

/// A write sent to a node that does not lead the shard, forwarded to the leader, which holds it
/// unanswered (`core::hold_writes`) while its connection stays up: once the leadership moved,
/// the forwarding node gives up on the old leader and the write is stored once, by the new
/// one, and the answer says it was sent twice. Without the re-check the forwarding node would
/// wait on the old leader until the forward timed out, and answer an error.
async fn forwarded_write_moves_to_the_next_leader(next: NextLeader) {
    const HELD: &str = "held";
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, HELD, 1).await;
    let group = shard_groups(cluster.node(0).expect("up"), HELD)[0];
    let mut leader = None;
    eventually(WAIT, "the shard has a leader", || {
        leader = cluster.leader_of(group);
        let found = leader.is_some();
        async move { found }
    })
    .await;
    let leader = leader.expect("checked above");
    let forwarder = (leader + 1) % 3;
    let new_leader = match next {
        NextLeader::AnotherNode => (leader + 2) % 3,
        NextLeader::TheForwardingNode => forwarder,
    };
    let put = |data: &str| v1::PutRecordsRequest {
        stream_name: HELD.into(),
        records: vec![v1::PutRecordsEntry {
            data: data.as_bytes().to_vec().into(),
            partition_key: "k".into(),
            explicit_hash_key: None,
        }],
        numeric_positions: false,
    };
    let mut api = cluster.api(forwarder).await;
    let first = api.put_records(put("before")).await.expect("put");
    assert!(!first.metadata().contains_key(RESENT_HEADER));

    let dir = cluster.configs[leader].data_dir.display().to_string();
    let held = Arc::new(AtomicUsize::new(0));
    fail::cfg(format!("core::hold_writes:{dir}"), "return").expect("failpoint");
    fail::cfg_callback(format!("core::holding_write:{dir}"), {
        let held = Arc::clone(&held);
        move || {
            held.fetch_add(1, Ordering::SeqCst);
        }
    })
    .expect("failpoint");
    let write = tokio::spawn({
        let mut api = api.clone();
        async move { api.put_records(put("moved")).await }
    });
    eventually(WAIT, "the old leader holds the forwarded write", || {
        let n = held.load(Ordering::SeqCst);
        async move { n == 1 }
    })
    .await;
    cluster
        .node(leader)
        .expect("up")
        .engine()
        .group(riptide_raft::GroupId(group))
        .expect("replica")
        .transfer_leader(riptide_raft::NodeId(new_leader as u64 + 1), WAIT)
        .await
        .expect("transfer");

    let answer = tokio::time::timeout(WAIT, write)
        .await
        .expect("the forwarding node answers")
        .expect("task")
        .expect("the write is stored by the next leader");
    assert!(
        answer.metadata().contains_key(RESENT_HEADER),
        "the answer says the write was sent twice: {:?}",
        answer.metadata()
    );
    let answer = answer.into_inner();
    assert_eq!(answer.failed_record_count, 0, "{answer:?}");
    assert_eq!(
        held.load(Ordering::SeqCst),
        1,
        "the old leader held it once"
    );
    fail::remove(format!("core::hold_writes:{dir}"));
    fail::remove(format!("core::holding_write:{dir}"));

    let mut reader = cluster.api(new_leader).await;
    let it = iterator(
        &mut reader,
        HELD,
        0,
        v1::ShardIteratorType::TrimHorizon,
        "",
        0,
    )
    .await
    .expect("iterator");
    let stored: Vec<Vec<u8>> = read_from(&mut reader, it)
        .await
        .into_iter()
        .map(|r| r.data.to_vec())
        .collect();
    assert_eq!(stored, [b"before".to_vec(), b"moved".to_vec()]);
    cluster.shutdown().await;
}
