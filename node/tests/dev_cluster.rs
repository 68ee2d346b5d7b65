//! The development cluster starts, commits, stops and comes back with its data.

use bytes::Bytes;
use riptide_node::dev::{CONTROLLER_GROUP, DevCluster, DevOptions};

fn free_base_port() -> u16 {
    // Three consecutive free ports: take one and hope the next two are free too, retrying.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_keeps_its_data_across_restarts() {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = DevOptions {
        data_dir: dir.path().to_path_buf(),
        base_port: free_base_port(),
        groups: 2,
    };
    let cluster = DevCluster::start(&opts).await.expect("start");
    let first = cluster
        .write(CONTROLLER_GROUP, Bytes::from_static(b"one"))
        .await
        .expect("write");
    let text = cluster.describe();
    assert!(text.contains("group   0: leader"), "{text}");
    assert!(text.contains("group   2: leader"), "{text}");
    cluster.shutdown().await;

    let cluster = DevCluster::start(&opts).await.expect("restart");
    let second = cluster
        .write(CONTROLLER_GROUP, Bytes::from_static(b"two"))
        .await
        .expect("write after restart");
    assert!(
        second > first,
        "log index {second} after restart, {first} before"
    );
    cluster.shutdown().await;
}
