//! `riptide dev`: a three-node cluster in one process, on 127.0.0.1, for trying Riptide out.
//!
//! Each node has its own data directory under one folder and its own transport port. The
//! cluster keeps its data: starting it again with the same folder brings back every group.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use riptide_raft::{
    AppliedEntry, DataFamily, EngineConfig, GroupBatch, GroupId, GroupSettings, GroupView, NodeId,
    RaftEngine, RaftError, StateMachine, StateMachineFactory, StorageError, TransportSettings,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Options of the development cluster.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Folder that holds the three nodes' data directories.
    pub data_dir: PathBuf,
    /// Port of node 1's transport; nodes 2 and 3 take the next two.
    pub base_port: u16,
    /// How many data groups to run besides the controller group.
    pub groups: u64,
}

/// The group every node runs first; later issues make it the controller.
pub const CONTROLLER_GROUP: GroupId = GroupId(0);

/// A state machine that keeps every committed entry, keyed by its log index.
struct EntryLog;

impl StateMachine for EntryLog {
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        _view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        for e in entries {
            batch.put(DataFamily::Records, &e.index.to_be_bytes(), &e.data);
        }
        Ok(vec![Bytes::new(); entries.len()])
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }
}

struct EntryLogFactory;

impl StateMachineFactory for EntryLogFactory {
    fn create(&self, _: GroupId, _: &[u8]) -> Result<Box<dyn StateMachine>, StorageError> {
        Ok(Box::new(EntryLog))
    }
}

struct DevNode {
    engine: RaftEngine,
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// A running development cluster.
pub struct DevCluster {
    nodes: Vec<DevNode>,
}

impl DevCluster {
    /// Starts the three nodes, creates the groups on first start, and waits for their leaders.
    pub async fn start(opts: &DevOptions) -> Result<Self> {
        let transport = TransportSettings::default();
        let mut nodes = Vec::new();
        for i in 0..3u16 {
            let id = NodeId(u64::from(i) + 1);
            let port = opts
                .base_port
                .checked_add(i)
                .context("base port too high")?;
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let dir = opts.data_dir.join(format!("node-{}", id.0));
            let config = EngineConfig::new(id, dir.clone());
            let engine = RaftEngine::open(config, Arc::new(EntryLogFactory))
                .await
                .with_context(|| format!("opening node {id} in {}", dir.display()))?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding node {id} to {addr}"))?;
            let (stop, stopped) = oneshot::channel::<()>();
            let svc = engine.service();
            let builder = riptide_raft::transport::server_builder(&transport);
            let server = tokio::spawn(async move {
                let mut builder = builder;
                builder
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
            });
            nodes.push(DevNode {
                engine,
                addr,
                stop,
                server,
            });
        }
        let cluster = Self { nodes };
        cluster.ensure_groups(opts.groups).await?;
        Ok(cluster)
    }

    async fn ensure_groups(&self, groups: u64) -> Result<()> {
        let members: BTreeMap<NodeId, String> = self
            .nodes
            .iter()
            .map(|n| (n.engine.node_id(), n.addr.to_string()))
            .collect();
        let mut ids = vec![(CONTROLLER_GROUP, GroupSettings::controller())];
        ids.extend((1..=groups).map(|g| (GroupId(g), GroupSettings::data_shard())));
        for (i, (g, settings)) in ids.iter().enumerate() {
            for n in &self.nodes {
                if n.engine.group(*g).is_err() {
                    n.engine
                        .create_group(*g, settings.clone(), b"entry-log")
                        .await?;
                }
            }
            let first = &self.nodes[i % self.nodes.len()];
            first.engine.group(*g)?.initialize(members.clone()).await?;
        }
        for (g, _) in &ids {
            self.nodes[0]
                .engine
                .group(*g)?
                .wait_for_leader(Duration::from_secs(30))
                .await?;
        }
        Ok(())
    }

    /// One line per group: its leader and its commit index.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "node {} listening on {} (transport)\n",
                n.engine.node_id(),
                n.addr
            ));
        }
        for g in self.nodes[0].engine.group_ids() {
            if let Ok(group) = self.nodes[0].engine.group(g) {
                let s = group.status();
                out.push_str(&format!(
                    "group {:>3}: leader {:<6} term {:<4} committed {:?}\n",
                    g.0,
                    s.leader
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "-".into()),
                    s.term,
                    s.committed_index
                ));
            }
        }
        out
    }

    /// Writes `data` to `group` through its leader, following leader changes for up to 30
    /// seconds (after a restart the groups first elect their leaders again).
    pub async fn write(&self, group: GroupId, data: Bytes) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // A replica that reports itself as leader; others may still remember an old one.
            let leader = self.nodes.iter().find_map(|n| {
                let g = n.engine.group(group).ok()?;
                (g.leader() == Some(n.engine.node_id())).then_some(g)
            });
            if let Some(g) = leader {
                match g.write(data.clone()).await {
                    Ok(out) => return Ok(out.index),
                    Err(RaftError::NotLeader { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("group {group} has no leader that accepts writes after 30s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node: servers first, then groups, then storage (after a final sync).
    pub async fn shutdown(self) {
        for n in self.nodes {
            let _ = n.stop.send(());
            n.engine.shutdown().await;
            let abort = n.server.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), n.server)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}
