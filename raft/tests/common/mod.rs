//! An in-process test cluster: N engines on 127.0.0.1 ports, each with its own data directory,
//! talking over the real tonic transport. Nodes can be killed and restarted from their data.

#![allow(dead_code)]

pub use riptide_test_ports as ports;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use riptide_raft::{
    AppliedEntry, DataFamily, EngineConfig, GroupBatch, GroupId, GroupSettings, GroupView, NodeId,
    RaftEngine, RaftError, StateMachine, StateMachineFactory, StorageError, TransportSettings,
    WriteOutcome,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Stores every entry under its log index; answers with the index.
pub struct LogMachine;

impl StateMachine for LogMachine {
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        _view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        Ok(entries
            .iter()
            .map(|e| {
                batch.put(DataFamily::Records, &e.index.to_be_bytes(), &e.data);
                Bytes::copy_from_slice(&e.index.to_be_bytes())
            })
            .collect())
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }
}

pub struct LogMachineFactory;

impl StateMachineFactory for LogMachineFactory {
    fn create(&self, _group: GroupId, _kind: &[u8]) -> Result<Box<dyn StateMachine>, StorageError> {
        Ok(Box::new(LogMachine))
    }
}

/// Every (index, data) a group's state machine stored on one replica.
pub fn stored_entries(view: &GroupView) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    view.scan(DataFamily::Records, &[], None, |k, v| {
        let idx = u64::from_be_bytes(k.try_into().expect("8-byte key"));
        out.push((idx, v.to_vec()));
        true
    })
    .expect("scan");
    out
}

pub fn test_settings() -> GroupSettings {
    GroupSettings::data_shard()
}

pub struct TestNode {
    pub id: NodeId,
    pub dir: PathBuf,
    pub addr: String,
    engine: Option<RaftEngine>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

pub struct TestCluster {
    _tmp: Option<tempfile::TempDir>,
    root: PathBuf,
    pub nodes: Vec<TestNode>,
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=error".into()),
        )
        .with_test_writer()
        .try_init();
}

impl TestCluster {
    /// Starts `n` nodes with ids 1..=n.
    pub async fn start(n: u64) -> Self {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut cluster = Self::start_in(tmp.path(), n).await;
        cluster._tmp = Some(tmp);
        cluster
    }

    /// Starts `n` nodes with their data under `root`, which the caller cleans up.
    pub async fn start_in(root: &std::path::Path, n: u64) -> Self {
        init_tracing();
        let mut cluster = Self {
            nodes: Vec::new(),
            _tmp: None,
            root: root.to_path_buf(),
        };
        for _ in 0..n {
            cluster.add_node().await;
        }
        cluster
    }

    /// Starts again the nodes `(id, address)` whose data is under `root`.
    pub async fn reopen(root: &std::path::Path, nodes: &[(u64, String)]) -> Self {
        init_tracing();
        let mut cluster = Self {
            nodes: Vec::new(),
            _tmp: None,
            root: root.to_path_buf(),
        };
        for (id, addr) in nodes {
            assert_eq!(
                *id,
                cluster.nodes.len() as u64 + 1,
                "node ids are 1..=n in order"
            );
            cluster.nodes.push(TestNode {
                id: NodeId(*id),
                dir: root.join(format!("node-{id}")),
                addr: addr.clone(),
                engine: None,
                server: None,
            });
            cluster.restart(NodeId(*id)).await;
        }
        cluster
    }

    /// Adds and starts one more node; returns its id.
    pub async fn add_node(&mut self) -> NodeId {
        let id = NodeId(self.nodes.len() as u64 + 1);
        let addr = format!("127.0.0.1:{}", ports::free_port());
        self.nodes.push(TestNode {
            id,
            dir: self.root.join(format!("node-{}", id.0)),
            addr,
            engine: None,
            server: None,
        });
        self.restart(id).await;
        id
    }

    fn node_mut(&mut self, id: NodeId) -> &mut TestNode {
        &mut self.nodes[(id.0 - 1) as usize]
    }

    pub fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[(id.0 - 1) as usize]
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn live_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.engine.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn engine(&self, id: NodeId) -> &RaftEngine {
        self.node(id).engine.as_ref().expect("node is running")
    }

    pub fn addr(&self, id: NodeId) -> String {
        self.node(id).addr.clone()
    }

    /// Starts (or restarts) node `id` from its data directory.
    pub async fn restart(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        assert!(node.engine.is_none(), "node {id} is already running");
        let mut config = EngineConfig::new(id, node.dir.clone());
        config.transport = TransportSettings::default();
        // The previous incarnation may still be releasing the database lock.
        let deadline = Instant::now() + Duration::from_secs(10);
        let engine = loop {
            match RaftEngine::open(config.clone(), Arc::new(LogMachineFactory)).await {
                Ok(e) => break e,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("open node {id}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("node {id} did not open: {e}"),
            }
        };
        let listener = {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::net::TcpListener::bind(&node.addr).await {
                    Ok(l) => break l,
                    Err(e) if Instant::now() < deadline => {
                        tracing::debug!("bind {}: {e}; retrying", node.addr);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("bind {}: {e}", node.addr),
                }
            }
        };
        let (tx, rx) = oneshot::channel::<()>();
        let svc = engine.service();
        let settings = TransportSettings::default();
        let handle = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = riptide_raft::transport::server_builder(&settings)
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        node.engine = Some(engine);
        node.server = Some((tx, handle));
    }

    /// Stops node `id`: its server stops answering and its groups stop. Its data stays.
    pub async fn kill(&mut self, id: NodeId) {
        let node = self.node_mut(id);
        let engine = node.engine.take().expect("node is running");
        let (tx, handle) = node.server.take().expect("server is running");
        let _ = tx.send(());
        engine.shutdown().await;
        let abort = handle.abort_handle();
        if tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .is_err()
        {
            abort.abort();
        }
    }

    pub async fn shutdown(mut self) {
        for id in self.live_ids() {
            self.kill(id).await;
        }
    }

    /// Creates `groups` on every node of `members` and forms each with them as voters.
    pub async fn create_groups(&self, groups: &[GroupId], members: &[NodeId]) {
        self.create_groups_with(groups, members, test_settings())
            .await
    }

    /// [`TestCluster::create_groups`] with the given group settings.
    pub async fn create_groups_with(
        &self,
        groups: &[GroupId],
        members: &[NodeId],
        settings: GroupSettings,
    ) {
        let addrs: BTreeMap<NodeId, String> = members.iter().map(|m| (*m, self.addr(*m))).collect();
        for g in groups {
            for m in members {
                self.engine(*m)
                    .create_group(*g, settings.clone(), b"log")
                    .await
                    .expect("create group");
            }
        }
        for (i, g) in groups.iter().enumerate() {
            // Spread the initial elections over the members.
            let first = members[i % members.len()];
            self.engine(first)
                .group(*g)
                .expect("group")
                .initialize(addrs.clone())
                .await
                .expect("initialize");
        }
    }

    /// The node that leads `group`, as the leader itself reports, among live nodes.
    pub async fn leader_of(&self, group: GroupId, timeout: Duration) -> NodeId {
        let deadline = Instant::now() + timeout;
        loop {
            for id in self.live_ids() {
                if let Ok(g) = self.engine(id).group(group)
                    && g.leader() == Some(id)
                {
                    return id;
                }
            }
            assert!(
                Instant::now() < deadline,
                "group {group} has no leader after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Writes `data` to `group` through its leader, retrying on leader changes until `timeout`.
    pub async fn write(&self, group: GroupId, data: Bytes, timeout: Duration) -> WriteOutcome {
        let deadline = Instant::now() + timeout;
        loop {
            let leader = self
                .leader_of(group, deadline.saturating_duration_since(Instant::now()))
                .await;
            match self
                .engine(leader)
                .group(group)
                .expect("group")
                .write(data.clone())
                .await
            {
                Ok(o) => return o,
                Err(RaftError::NotLeader { .. }) | Err(RaftError::Stopped { .. }) => {}
                Err(e) => panic!("write to group {group}: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "write to group {group} timed out"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until every live member of `group` has applied `index`.
    pub async fn wait_applied_everywhere(&self, group: GroupId, index: u64, timeout: Duration) {
        for id in self.live_ids() {
            if let Ok(g) = self.engine(id).group(group) {
                g.wait_applied(index, timeout)
                    .await
                    .unwrap_or_else(|e| panic!("node {id}: {e}"));
            }
        }
    }
}

pub fn groups(n: u64) -> Vec<GroupId> {
    (1..=n).map(GroupId).collect()
}
