//! The group registry: every Raft group a node hosts, over one store and one transport.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{RaftError, StorageError};
use crate::group::Group;
use crate::settings::{GroupSettings, TransportSettings};
use crate::store::keys::{self, META_REGISTRATION};
use crate::store::log_store::GroupLogStore;
use crate::store::state_machine::{self, GroupStateMachine};
use crate::store::{
    Family, GroupCommit, GroupView, NodeStore, Op, RecordReads, WriterStats, decode, encode,
};
use crate::transport::{
    ElectionStats, Failover, GroupNetworkFactory, PeerPool, TransportHandler, TransportService,
    TransportStats,
};
use crate::types::{GroupId, NodeId, Raft, StateMachine};

/// Creates the application state machine of a group. `kind` is what the group was created with
/// (for example "controller" or "shard"), so one factory can serve every class of group.
pub trait StateMachineFactory: Send + Sync + 'static {
    fn create(&self, group: GroupId, kind: &[u8]) -> Result<Box<dyn StateMachine>, StorageError>;
}

/// How to run a node's engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub node_id: NodeId,
    /// Holds the RocksDB and the snapshot spool.
    pub data_dir: PathBuf,
    pub transport: TransportSettings,
    pub group_commit: GroupCommit,
    /// Settings by group kind (the `kind` given to [`RaftEngine::create_group`]). When a
    /// group's kind is here, these settings replace the ones stored with the group each time
    /// it starts, so that a node's configured timeouts reach groups created before they were
    /// changed.
    pub settings_by_kind: HashMap<Vec<u8>, GroupSettings>,
    /// Bytes of the newest segment data (log entries' data) kept in memory for readers (0:
    /// none).
    pub record_cache_bytes: usize,
}

impl EngineConfig {
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            transport: TransportSettings::default(),
            group_commit: GroupCommit::On,
            settings_by_kind: HashMap::new(),
            record_cache_bytes: crate::store::DEFAULT_RECORD_CACHE_BYTES,
        }
    }
}

/// What is stored about a group so that it can be opened again after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Registration {
    settings: GroupSettings,
    kind: Vec<u8>,
}

struct EngineInner {
    config: EngineConfig,
    store: NodeStore,
    pool: Arc<PeerPool>,
    stats: Arc<TransportStats>,
    /// Peers the failover watcher last found gone.
    gone: Arc<Mutex<std::collections::HashSet<u64>>>,
    /// Turns true at shutdown: ends the failover watcher and the `Watch` calls peers hold.
    closing: tokio::sync::watch::Sender<bool>,
    /// The groups the transport routes to.
    rafts: Arc<RwLock<HashMap<GroupId, Raft>>>,
    groups: Mutex<HashMap<GroupId, Group>>,
    factory: Arc<dyn StateMachineFactory>,
    /// Serialises create, start, stop and delete.
    lifecycle: tokio::sync::Mutex<()>,
}

/// A node's multi-raft engine. Cheap to clone.
#[derive(Clone)]
pub struct RaftEngine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for RaftEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftEngine")
            .field("node_id", &self.inner.config.node_id)
            .finish()
    }
}

impl RaftEngine {
    /// Opens the node's store and every group found in it.
    pub async fn open(
        config: EngineConfig,
        factory: Arc<dyn StateMachineFactory>,
    ) -> Result<Self, RaftError> {
        let store = NodeStore::open_with(
            &config.data_dir.join("db"),
            config.group_commit,
            config.record_cache_bytes,
        )?;
        let stats = Arc::new(TransportStats::default());
        let pool = Arc::new(PeerPool::new(config.transport.clone(), stats.clone()));
        let (closing, _) = tokio::sync::watch::channel(false);
        let engine = Self {
            inner: Arc::new(EngineInner {
                config,
                store,
                pool,
                stats,
                gone: Arc::default(),
                closing,
                rafts: Arc::new(RwLock::new(HashMap::new())),
                groups: Mutex::new(HashMap::new()),
                factory,
                lifecycle: tokio::sync::Mutex::new(()),
            }),
        };
        let registered = engine.inner.store.registered_groups()?;
        for (group, raw) in registered {
            let reg: Registration = decode(&raw, "group registration")?;
            if let Some(ops) =
                state_machine::recover_interrupted_install(&engine.inner.store, group)?
            {
                tracing::warn!(group_id = %group, "snapshot install was interrupted; group restarts empty");
                engine.inner.store.writer.write_durable(ops).await?;
                engine.inner.store.log_deleted_whole(group)?;
            }
            engine.start(group, &reg).await?;
        }
        if engine.inner.config.transport.notice_dead_leaders {
            tokio::spawn(engine.failover().run(engine.inner.closing.subscribe()));
        }
        Ok(engine)
    }

    fn failover(&self) -> Failover {
        Failover {
            node: self.inner.config.node_id,
            groups: self.inner.rafts.clone(),
            pool: self.inner.pool.clone(),
            stats: self.inner.stats.clone(),
            probe_timeout: self.inner.config.transport.dead_peer_probe(),
            gone: self.inner.gone.clone(),
        }
    }

    /// Peers whose process this node last found gone (a connection refused or reset, or the
    /// peer said it was shutting down) and that have not answered since. A leadership handed
    /// to one of them would wait for nothing.
    pub fn peers_gone(&self) -> Vec<NodeId> {
        let gone = self.inner.gone.lock().unwrap_or_else(|e| e.into_inner());
        let mut peers: Vec<NodeId> = gone.iter().map(|n| NodeId(*n)).collect();
        peers.sort();
        peers
    }

    /// Elections this node started, by cause, and the gaps between the heartbeats it received.
    pub fn election_stats(&self) -> ElectionStats {
        self.inner.stats.snapshot()
    }

    /// Acts as if `node`'s process had been found gone: in every group this node follows
    /// `node` in, the replica with the longest log campaigns at once. The failover watcher does
    /// this by itself when a peer refuses connections; tests call it to see that a leader
    /// that is in fact alive cannot serve stale reads afterwards.
    #[doc(hidden)]
    pub async fn treat_as_gone(&self, node: NodeId) {
        self.failover()
            .take_over_from(node, "told so by the caller")
            .await;
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// The transport service to add to this node's gRPC server.
    pub fn service(&self) -> TransportService {
        let handler = TransportHandler::new(
            self.inner.config.node_id,
            self.inner.rafts.clone(),
            self.inner.config.data_dir.join("snapshot-spool"),
            self.inner.stats.clone(),
            self.inner.closing.subscribe(),
        );
        TransportService::new(handler)
            .max_decoding_message_size(self.inner.config.transport.max_message_bytes)
            .max_encoding_message_size(self.inner.config.transport.max_message_bytes)
    }

    /// A handle that tells when this engine's RocksDB has been closed: after
    /// [`RaftEngine::shutdown`] and once every handle to the engine and its groups is dropped.
    pub fn closed_signal(&self) -> crate::store::StoreClosed {
        self.inner.store.closed_signal()
    }

    /// Counters of the log writer.
    pub fn writer_stats(&self) -> WriterStats {
        self.inner.store.writer.stats()
    }

    /// How reads of log entries' data found it since the node started: in the record cache or
    /// in a segment file.
    pub fn record_reads(&self) -> RecordReads {
        self.inner.store.record_reads()
    }

    /// Why the store stopped accepting writes, if it did.
    pub fn storage_poisoned(&self) -> Option<String> {
        self.inner.store.writer.poisoned()
    }

    async fn start(&self, group: GroupId, reg: &Registration) -> Result<Group, RaftError> {
        let inner = &self.inner;
        let settings = inner
            .config
            .settings_by_kind
            .get(&reg.kind)
            .unwrap_or(&reg.settings);
        let config = settings.to_openraft(&format!("group-{group}"))?;
        let app = inner.factory.create(group, &reg.kind)?;
        let log = GroupLogStore::new(
            inner.store.clone(),
            group,
            settings.log_is_data,
            usize::try_from(settings.log_cache_bytes).unwrap_or(usize::MAX),
        )?;
        let sm = GroupStateMachine::new(
            inner.store.clone(),
            group,
            app,
            inner.config.transport.snapshot_chunk_bytes,
            settings.log_is_data,
            log.flushed(),
        )?;
        let network = GroupNetworkFactory::new(inner.pool.clone(), group, inner.config.node_id);
        let raft = Raft::new(inner.config.node_id.0, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| RaftError::Stopped {
                group,
                reason: e.to_string(),
            })?;
        let handle = Group {
            id: group,
            node: inner.config.node_id,
            raft: raft.clone(),
            view: GroupView::new(inner.store.clone(), group),
            membership_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        inner
            .rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
        inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, handle.clone());
        tracing::debug!(group_id = %group, node_id = %inner.config.node_id, "group started");
        Ok(handle)
    }

    /// Creates `group` on this node with `settings`, durably registered so that it is opened
    /// again after a restart. The group has no members until [`Group::initialize`] is called on
    /// one of its replicas, or a leader adds this node.
    pub async fn create_group(
        &self,
        group: GroupId,
        settings: GroupSettings,
        kind: &[u8],
    ) -> Result<Group, RaftError> {
        settings.validate()?;
        if group.0 > keys::MAX_GROUP_ID {
            return Err(RaftError::InvalidSettings {
                key: "group_id".into(),
                reason: format!("must be at most {}, got {}", keys::MAX_GROUP_ID, group.0),
            });
        }
        let _l = self.inner.lifecycle.lock().await;
        if self.group(group).is_ok() || self.is_registered(group)? {
            return Err(RaftError::GroupExists(group));
        }
        let reg = Registration {
            settings,
            kind: kind.to_vec(),
        };
        self.inner
            .store
            .writer
            .write_durable(vec![Op::Put(
                Family::RaftMeta,
                keys::meta_key(group, META_REGISTRATION).to_vec(),
                encode(&reg),
            )])
            .await?;
        self.start(group, &reg).await
    }

    fn is_registered(&self, group: GroupId) -> Result<bool, RaftError> {
        Ok(self
            .inner
            .store
            .get(Family::RaftMeta, &keys::meta_key(group, META_REGISTRATION))?
            .is_some())
    }

    /// The running group `group`.
    pub fn group(&self, group: GroupId) -> Result<Group, RaftError> {
        self.inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .cloned()
            .ok_or(RaftError::GroupNotFound(group))
    }

    /// Ids of the running groups.
    pub fn group_ids(&self) -> Vec<GroupId> {
        let mut ids: Vec<_> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect();
        ids.sort();
        ids
    }

    /// Stops `group` on this node, keeping its data; [`RaftEngine::start_group`] or a restart
    /// of the node opens it again.
    pub async fn stop_group(&self, group: GroupId) -> Result<(), RaftError> {
        let _l = self.inner.lifecycle.lock().await;
        self.stop_locked(group).await
    }

    async fn stop_locked(&self, group: GroupId) -> Result<(), RaftError> {
        let handle = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group)
            .ok_or(RaftError::GroupNotFound(group))?;
        self.inner
            .rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        shutdown_raft(&handle.raft, group).await;
        self.inner.store.inner.log_caches.remove(group);
        self.inner.stats.forget_group(group);
        Ok(())
    }

    /// Starts a stopped group again from its stored state.
    pub async fn start_group(&self, group: GroupId) -> Result<Group, RaftError> {
        let _l = self.inner.lifecycle.lock().await;
        if let Ok(g) = self.group(group) {
            return Ok(g);
        }
        let raw = self
            .inner
            .store
            .get(Family::RaftMeta, &keys::meta_key(group, META_REGISTRATION))?
            .ok_or(RaftError::GroupNotFound(group))?;
        let reg: Registration = decode(&raw, "group registration")?;
        self.start(group, &reg).await
    }

    /// Stops `group` and deletes its log, vote and data from this node.
    pub async fn delete_group(&self, group: GroupId) -> Result<(), RaftError> {
        let _l = self.inner.lifecycle.lock().await;
        match self.stop_locked(group).await {
            Ok(()) | Err(RaftError::GroupNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        if !self.is_registered(group)? {
            return Err(RaftError::GroupNotFound(group));
        }
        self.inner
            .store
            .writer
            .write_durable(NodeStore::delete_group_ops(group))
            .await?;
        self.inner.store.log_deleted_whole(group)?;
        Ok(())
    }

    /// Forgets the cached channel to `node` (after its address changed).
    pub fn forget_peer(&self, node: NodeId) {
        self.inner.pool.forget(node);
    }

    /// Stops every group, then the log writer (after a final sync).
    pub async fn shutdown(&self) {
        let _l = self.inner.lifecycle.lock().await;
        self.inner.closing.send_replace(true);
        let groups: Vec<_> = self
            .inner
            .groups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .collect();
        self.inner
            .rafts
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        let stops = groups.iter().map(|(id, g)| shutdown_raft(&g.raft, *id));
        futures::future::join_all(stops).await;
        let store = self.inner.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.shutdown()).await;
    }
}

async fn shutdown_raft(raft: &Raft, group: GroupId) {
    match tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(group_id = %group, "group shutdown: {e}"),
        Err(_) => tracing::warn!(group_id = %group, "group did not shut down within 10s"),
    }
}
