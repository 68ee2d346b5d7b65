//! Stream deletion, write quotas and the admin service on a real cluster.

mod common;

use std::time::Duration;

use common::{TestCluster, eventually, shard_groups};
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::{self};
use riptide_proto::{ErrorCode, status_code};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_stream_removes_its_groups_and_data_everywhere() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, "gone", 2).await;
    let groups = shard_groups(cluster.node(0).expect("up"), "gone");
    let mut api = cluster.api(1).await;
    api.put_record(v1::PutRecordRequest {
        stream_name: "gone".into(),
        data: b"old".to_vec().into(),
        partition_key: "k".into(),
        ..Default::default()
    })
    .await
    .expect("put");
    api.delete_stream(v1::DeleteStreamRequest {
        stream_name: "gone".into(),
    })
    .await
    .expect("delete");
    let status = api
        .describe_stream(v1::DescribeStreamRequest {
            stream_name: "gone".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(status_code(&status), ErrorCode::NotFound);
    eventually(
        Duration::from_secs(30),
        "every node dropped the deleted stream's groups",
        || async {
            (0..3).all(|i| {
                let ids = cluster.node(i).expect("up").engine().group_ids();
                groups
                    .iter()
                    .all(|g| !ids.contains(&riptide_raft::GroupId(*g)))
            })
        },
    )
    .await;
    // A new stream of the same name starts empty.
    cluster.create_active(2, "gone", 1).await;
    let it = common::iterator(
        &mut api,
        "gone",
        0,
        v1::ShardIteratorType::TrimHorizon,
        "",
        0,
    )
    .await
    .expect("iterator");
    assert!(common::read_from(&mut api, it).await.is_empty());
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_a_shard_quota_are_throttled_per_record() {
    let cluster = TestCluster::start(3, |c| c.limits.shard_write_records_per_sec = 100).await;
    cluster.create_active(0, "q", 1).await;
    let mut api = cluster.api(0).await;
    let batch = |n: usize| v1::PutRecordsRequest {
        stream_name: "q".into(),
        records: (0..n)
            .map(|i| v1::PutRecordsEntry {
                data: vec![1].into(),
                partition_key: format!("k{i}"),
                explicit_hash_key: None,
            })
            .collect(),
        numeric_positions: false,
    };
    // The clock stands still: the bucket refills only when the test moves it.
    cluster.clock.stop();
    let first = api.put_records(batch(80)).await.expect("put").into_inner();
    assert_eq!(first.failed_record_count, 0);
    let second = api.put_records(batch(80)).await.expect("put").into_inner();
    assert_eq!(
        second.failed_record_count, 80,
        "the quota of 100 records/s let 160 through"
    );
    assert!(second.records.iter().all(|r| {
        r.error_code == "Throttled"
            && r.error_message
                .contains("limits.shard_write_records_per_sec")
    }));
    // The bucket refills with the cluster's clock: a second later the quota is whole again.
    cluster.clock.advance(1_000);
    let third = api.put_records(batch(80)).await.expect("put").into_inner();
    assert_eq!(third.failed_record_count, 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reports_nodes_and_moves_leaders() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, "adm", 3).await;
    let groups = shard_groups(cluster.node(0).expect("up"), "adm");
    let mut admin = AdminServiceClient::connect(cluster.endpoint(1))
        .await
        .expect("connect");
    let status = admin
        .cluster_status(v1::ClusterStatusRequest { local_only: false })
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.nodes.len(), 3);
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.up && n.shard_replicas == 3 && n.controller_voter)
    );
    assert_eq!(status.nodes.iter().map(|n| n.shard_leaders).sum::<u32>(), 3);
    assert_eq!((status.streams, status.shards), (1, 3));

    // Move shard 0's leadership to another replica.
    let leader = cluster.leader_of(groups[0]).expect("leader");
    let to = ((leader + 1) % 3) as u64 + 1;
    admin
        .transfer_shard_leader(v1::TransferShardLeaderRequest {
            stream_name: "adm".into(),
            shard_id: "shardId-000000000000".into(),
            to_node: to,
        })
        .await
        .expect("transfer");
    assert_eq!(cluster.leader_of(groups[0]), Some(to as usize - 1));
    let bad = admin
        .transfer_shard_leader(v1::TransferShardLeaderRequest {
            stream_name: "adm".into(),
            shard_id: "shardId-000000000000".into(),
            to_node: 9,
        })
        .await
        .expect_err("node 9 holds no replica");
    assert_eq!(status_code(&bad), ErrorCode::InvalidArgument);
    assert!(bad.message().contains("to_node"));

    // Drain node 3: it leads nothing afterwards.
    let drained = admin
        .drain_node(v1::DrainNodeRequest { node_id: 3 })
        .await
        .expect("drain")
        .into_inner();
    assert_eq!(drained.leaders_remaining, 0);
    for g in &groups {
        assert_ne!(
            cluster.leader_of(*g),
            Some(2),
            "node 3 still leads group {g}"
        );
    }

    // A stopped node shows as down.
    cluster.stop(2).await;
    let status = admin
        .cluster_status(v1::ClusterStatusRequest { local_only: false })
        .await
        .expect("status")
        .into_inner();
    let down: Vec<u64> = status
        .nodes
        .iter()
        .filter(|n| !n.up)
        .map(|n| n.node_id)
        .collect();
    assert_eq!(down, [3]);
    cluster.shutdown().await;
}
