//! The development cluster starts, takes records, stops, and comes back with its data.

mod common;

use common::{Api, iterator, read_from, wait_active};
use riptide_node::dev::{DevCluster, DevOptions};
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::v1::{self, ShardIteratorType};

fn free_base_port() -> u16 {
    // Three consecutive free ports: take one and check that the next two are free too.
    for _ in 0..50 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = l.local_addr().expect("addr").port();
        if p > 60000 {
            continue;
        }
        let ok = (1..3).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok());
        if ok {
            return p;
        }
    }
    panic!("no three consecutive free ports");
}

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
        base_port: free_base_port(),
        kinesis_port: std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port(),
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
