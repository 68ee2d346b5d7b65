//! The development cluster starts, takes records, stops, and comes back with its data.

mod common;

use common::{Api, iterator, ports, read_from, wait_active};
use riptide_node::dev::{DevCluster, DevOptions};
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::v1::{self, ShardIteratorType};

async fn read_all(api: &mut Api, name: &str) -> Vec<String> {
    let it = iterator(api, name, 0, ShardIteratorType::TrimHorizon, "", 0)
        .await
        .expect("iterator");
    read_from(api, it)
        .await
        .into_iter()
        .map(|r| String::from_utf8(r.data.to_vec()).expect("utf-8"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_keeps_its_records_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = DevOptions {
        data_dir: dir.path().to_path_buf(),
        base_port: ports::consecutive(3),
        kinesis_port: ports::free_port(),
    };
    let cluster = DevCluster::start(&opts).await.expect("start");
    // Node 1 serves the Kinesis API on the port asked for, and says so.
    let kinesis = format!("127.0.0.1:{}", opts.kinesis_port);
    assert_eq!(
        cluster.nodes()[0].kinesis_addr().map(|a| a.to_string()),
        Some(kinesis.clone())
    );
    assert!(
        cluster.nodes()[1..]
            .iter()
            .all(|n| n.kinesis_addr().is_none())
    );
    assert!(cluster.describe().contains(&format!("http://{kinesis}")));
    // Any node accepts any request: create through node 2, write through node 3.
    let eps = cluster.endpoints();
    let mut c2 = StreamServiceClient::connect(eps[1].clone())
        .await
        .expect("connect");
    let mut c3 = StreamServiceClient::connect(eps[2].clone())
        .await
        .expect("connect");
    c2.create_stream(v1::CreateStreamRequest {
        stream_name: "dev".into(),
        shard_count: 1,
        retention_period_hours: 0,
        ..Default::default()
    })
    .await
    .expect("create");
    wait_active(&mut c2, "dev").await;
    wait_active(&mut c3, "dev").await;
    for word in ["one", "two"] {
        c3.put_record(v1::PutRecordRequest {
            stream_name: "dev".into(),
            data: word.as_bytes().to_vec().into(),
            partition_key: word.into(),
            ..Default::default()
        })
        .await
        .expect("put");
    }
    assert_eq!(read_all(&mut c2, "dev").await, ["one", "two"]);
    cluster.shutdown().await;

    let cluster = DevCluster::start(&opts).await.expect("restart");
    let mut c1 = StreamServiceClient::connect(cluster.endpoints()[0].clone())
        .await
        .expect("connect");
    wait_active(&mut c1, "dev").await;
    assert_eq!(read_all(&mut c1, "dev").await, ["one", "two"]);
    cluster.shutdown().await;
}

/// The gRPC API holds client calls while the cluster forms, as the Kinesis API does: a
/// CreateStream sent to node 2 as soon as its port accepts a connection, while the development
/// cluster is still starting, succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_stream_sent_as_the_grpc_port_opens_succeeds() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = DevOptions {
        data_dir: dir.path().to_path_buf(),
        base_port: ports::consecutive(3),
        kinesis_port: 0,
    };
    let node2 = format!("127.0.0.1:{}", opts.base_port + 1);
    let starting = tokio::spawn({
        let opts = opts.clone();
        async move { DevCluster::start(&opts).await }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while tokio::net::TcpStream::connect(&node2).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node 2 never opened its port"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let mut api = StreamServiceClient::connect(format!("http://{node2}"))
        .await
        .expect("connect");
    api.create_stream(v1::CreateStreamRequest {
        stream_name: "early".into(),
        shard_count: 2,
        ..Default::default()
    })
    .await
    .expect("created while the cluster was starting");
    let cluster = starting.await.expect("start task").expect("start");
    let desc = wait_active(&mut api, "early").await;
    for shard in &desc.shards {
        assert_eq!(shard.replicas.len(), 3, "{shard:?}");
    }
    cluster.shutdown().await;
}
