//! A node whose storage failed: it reports itself down, refuses every call with an error that
//! is not retryable, and the other nodes take over its shards.
//!
//! The store's syncs are made to fail with the failpoint `log_writer::sync_fails:<store dir>`
//! (named after one node's store, since the three nodes share this process and its failpoint
//! registry), so this binary is built only with the `failpoints` feature, and nextest runs it
//! in a process of its own.

mod common;

use std::time::Duration;

use common::{TestCluster, eventually, shard_groups};
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::{self};
use riptide_proto::{ErrorCode, status_code};

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
