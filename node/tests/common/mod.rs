//! A cluster of in-process nodes on 127.0.0.1 for the node's tests: each node has its own data
//! directory and port, and can be stopped and started again with its data.

#![allow(dead_code)]

pub use riptide_test_ports as ports;

use std::sync::Arc;
use std::time::Duration;

use riptide_node::clock::OffsetClock;
use riptide_node::config::NodeConfig;
use riptide_node::server::Node;
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::v1::{self, StreamStatus};
use tonic::transport::Channel;

pub type Api = StreamServiceClient<Channel>;

pub struct TestCluster {
    _dir: tempfile::TempDir,
    pub configs: Vec<NodeConfig>,
    nodes: Vec<Option<Node>>,
    pub clock: OffsetClock,
}

/// Waits for `cond` up to `timeout`, polling; panics with `what` when it never holds.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl TestCluster {
    pub async fn start(n: usize, tweak: impl Fn(&mut NodeConfig)) -> Self {
        Self::start_first(n, n, tweak).await
    }

    /// A cluster of `n` nodes of which only the first `started` run (and have registered);
    /// [`TestCluster::restart`] starts the others.
    pub async fn start_first(n: usize, started: usize, tweak: impl Fn(&mut NodeConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| ports::free_port()).collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let configs: Vec<NodeConfig> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let mut c = NodeConfig {
                    node_id: i as u64 + 1,
                    listen: format!("127.0.0.1:{p}"),
                    data_dir: dir.path().join(format!("node-{}", i + 1)),
                    zone: format!("zone-{i}"),
                    initial_cluster: initial.clone(),
                    // Tests place leaders themselves; those of the balancer turn it on.
                    leader_balance_interval_ms: 0,
                    ..NodeConfig::default()
                };
                tweak(&mut c);
                c
            })
            .collect();
        let clock = OffsetClock::default();
        let mut nodes = Vec::new();
        for c in &configs[..started] {
            nodes.push(Some(
                Node::start(c.clone(), Arc::new(clock.clone()))
                    .await
                    .expect("node starts"),
            ));
        }
        nodes.resize_with(n, || None);
        let cluster = Self {
            _dir: dir,
            configs,
            nodes,
            clock,
        };
        cluster.wait_registered(started).await;
        cluster
    }

    /// Waits until every running node knows `n` registered nodes.
    pub async fn wait_registered(&self, n: usize) {
        eventually(Duration::from_secs(60), "every node registered", || async {
            self.nodes
                .iter()
                .flatten()
                .all(|node| node.core_nodes().map(|v| v.len() == n).unwrap_or(false))
        })
        .await;
    }

    pub fn endpoint(&self, i: usize) -> String {
        format!("http://{}", self.configs[i].listen)
    }

    pub async fn api(&self, i: usize) -> Api {
        StreamServiceClient::connect(self.endpoint(i))
            .await
            .expect("connect")
            .max_decoding_message_size(64 << 20)
    }

    pub fn node(&self, i: usize) -> Option<&Node> {
        self.nodes[i].as_ref()
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].is_some()
    }

    /// Stops node `i` (its data stays).
    pub async fn stop(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            n.shutdown().await;
        }
    }

    /// Starts node `i` again from its data.
    pub async fn restart(&mut self, i: usize) {
        assert!(self.nodes[i].is_none(), "node {i} is running");
        let node = Node::start(self.configs[i].clone(), Arc::new(self.clock.clone()))
            .await
            .expect("node restarts");
        self.nodes[i] = Some(node);
    }

    pub async fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i).await;
        }
    }

    pub async fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.restart(i).await;
        }
        self.wait_registered(self.configs.len()).await;
    }

    /// Index of the node that leads `group`, if a running node says it does.
    pub fn leader_of(&self, group: u64) -> Option<usize> {
        self.nodes.iter().enumerate().find_map(|(i, n)| {
            let n = n.as_ref()?;
            let g = n.engine().group(riptide_raft::GroupId(group)).ok()?;
            (g.status().role == riptide_raft::Role::Leader).then_some(i)
        })
    }

    /// Creates a stream through node `via` and waits until it is ACTIVE.
    pub async fn create_active(
        &self,
        via: usize,
        name: &str,
        shards: u32,
    ) -> v1::StreamDescription {
        let mut api = self.api(via).await;
        api.create_stream(v1::CreateStreamRequest {
            stream_name: name.into(),
            shard_count: shards,
            retention_period_hours: 0,
            ..Default::default()
        })
        .await
        .expect("create stream");
        wait_active(&mut api, name).await
    }

    pub async fn shutdown(mut self) {
        self.stop_all().await;
    }
}

/// Group ids are not on the wire; the controller gives the shards of the first stream groups
/// 1..=n, of the next the following ids. Reads them from a node's controller view instead.
pub fn shard_groups(node: &Node, stream: &str) -> Vec<u64> {
    let ctl = node
        .engine()
        .group(riptide_raft::GroupId(0))
        .expect("controller group");
    riptide_node::controller::ControllerView::stream(ctl.view(), stream)
        .expect("read controller")
        .expect("stream exists")
        .shards
        .iter()
        .map(|s| s.group)
        .collect()
}

/// Reads a whole shard from `iterator` on, following next iterators until a call returns no
/// records.
pub async fn read_from(api: &mut Api, iterator: String) -> Vec<v1::Record> {
    let mut it = iterator;
    let mut out = Vec::new();
    loop {
        let resp = api
            .get_records(v1::GetRecordsRequest {
                shard_iterator: it,
                limit: 0,
                numeric_positions: false,
            })
            .await
            .expect("get records")
            .into_inner();
        if resp.records.is_empty() {
            return out;
        }
        out.extend(resp.records);
        it = resp.next_shard_iterator;
    }
}

pub async fn iterator(
    api: &mut Api,
    stream: &str,
    shard: u32,
    kind: v1::ShardIteratorType,
    seq: &str,
    ts: u64,
) -> Result<String, tonic::Status> {
    api.get_shard_iterator(v1::GetShardIteratorRequest {
        stream_name: stream.into(),
        shard_id: riptide_proto::ShardId(shard).to_string(),
        shard_iterator_type: kind as i32,
        starting_sequence_number: seq.into(),
        timestamp_ms: ts,
    })
    .await
    .map(|r| r.into_inner().shard_iterator)
}

/// Waits until `name` is ACTIVE in the view of the node behind `api`, and returns it.
pub async fn wait_active(api: &mut Api, name: &str) -> v1::StreamDescription {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let d = api
            .describe_stream(v1::DescribeStreamRequest {
                stream_name: name.into(),
            })
            .await
            .expect("describe")
            .into_inner()
            .stream
            .expect("stream");
        if d.status == StreamStatus::Active as i32 {
            return d;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {name} never became ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
