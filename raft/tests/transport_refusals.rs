//! Bad input to the transport gets an error back, and the node keeps serving its groups.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestCluster, groups};
use riptide_raft::NodeId;
use riptide_raft::transport::pb::raft_transport_client::RaftTransportClient;
use riptide_raft::transport::pb::{RaftRequest, SnapshotChunk};
use tonic::Code;

const T: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_the_node_keeps_serving() {
    let cluster = TestCluster::start(3).await;
    let gs = groups(10);
    cluster.create_groups(&gs, &cluster.ids()).await;
    for g in &gs {
        cluster.leader_of(*g, T).await;
    }
    let node = NodeId(1);
    let mut client = RaftTransportClient::connect(format!("http://{}", cluster.addr(node)))
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX);
    let req = |group: u64, target: u64, payload: Vec<u8>| RaftRequest {
        group_id: group,
        target_node: target,
        from_node: 2,
        payload: payload.into(),
        entry_data: Vec::new(),
    };

    // A group this node does not host.
    let err = client
        .vote(req(999, 1, vec![]))
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(err.message().contains("group 999"), "{err}");

    // A message addressed to another node.
    let err = client
        .vote(req(1, 3, vec![]))
        .await
        .expect_err("wrong node");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err}");
    assert!(err.message().contains("node 3"), "{err}");

    // A payload that does not decode, on every unary call.
    let garbage = vec![0xff; 37];
    let err = client
        .vote(req(1, 1, garbage.clone()))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .pre_vote(req(1, 1, garbage.clone()))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .append(req(1, 1, garbage.clone()))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .transfer_leader(req(1, 1, garbage.clone()))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A truncated payload: a length prefix that promises more than is there.
    let mut lying = vec![0u8; 16];
    lying[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let err = client
        .append(req(1, 1, lying))
        .await
        .expect_err("lying length");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A message larger than the limit.
    let huge = vec![0u8; 65 << 20];
    let err = client.append(req(1, 1, huge)).await.expect_err("oversized");
    assert!(
        matches!(
            err.code(),
            Code::ResourceExhausted | Code::OutOfRange | Code::Internal
        ),
        "{err}"
    );

    // A replication stream whose first message is garbage.
    let stream = futures::stream::iter(vec![req(1, 1, garbage.clone())]);
    let err = client
        .append_stream(stream)
        .await
        .expect_err("garbage stream");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // A snapshot whose header is garbage, and one that stops before its last chunk.
    let chunk = |header: Vec<u8>, done: bool| SnapshotChunk {
        group_id: 1,
        target_node: 1,
        from_node: 2,
        header,
        data: vec![1, 2, 3],
        done,
    };
    let err = client
        .install_snapshot(futures::stream::iter(vec![chunk(garbage.clone(), true)]))
        .await
        .expect_err("bad header");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let err = client
        .install_snapshot(futures::stream::iter(vec![chunk(vec![], false)]))
        .await
        .expect_err("no valid header");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // The node still serves every group: writes commit and reach all three replicas.
    for g in &gs {
        let out = cluster
            .write(*g, Bytes::from_static(b"still here"), T)
            .await;
        cluster.wait_applied_everywhere(*g, out.index, T).await;
    }
    cluster.shutdown().await;
}
