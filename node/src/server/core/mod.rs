//! The node's internal service: every request of the gRPC API and of the Kinesis HTTP API is
//! carried out here, by role:
//! - [`streams`]: stream administration (create, delete, retention, tags, mode, listings,
//!   descriptions) through controller proposals;
//! - [`controller`]: controller proposals, committed through the controller's leader;
//! - [`routing`]: where a shard's request is served (here, or forwarded to its leader) and the
//!   forwarding between nodes, hop counts included;
//! - [`writes`]: PutRecord(s) and the per-shard write quotas ([`quota`]);
//! - [`reads`]: shard iterators ([`positions`]) and GetRecords;
//! - [`admin`]: cluster status, leader transfers, draining, group membership;
//! - [`readiness`]: whether a starting node can serve client calls, which it holds until then.
//!
//! The decisions are pure functions of their own modules, tested without a cluster:
//! [`quota`], [`positions`], [`paging`], [`readiness`], and the replica counts of
//! [`crate::controller::placement`].

pub mod admin;
pub mod controller;
pub mod paging;
pub mod positions;
pub mod quota;
pub mod readiness;
pub mod reads;
pub mod routing;
pub mod streams;
pub mod writes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riptide_raft::{Group, RaftEngine};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::controller::{CONTROLLER_GROUP, ControllerView, NodeInfo, StreamInfo};
use crate::error::ServiceError;
use crate::server::liveness::Liveness;
use crate::server::peers::Peers;
use crate::shard::ShardWakers;
use crate::warn_limit::WarnLimit;
use riptide_proto::StreamName;

pub use crate::controller::placement::REPLICATION;
pub use paging::{DEFAULT_LIST_STREAMS, MAX_LIST_STREAMS};
pub use routing::Route;
pub use streams::{ON_DEMAND_SHARDS, RetentionChange, StreamLimits};

/// Voters of the controller group: the first nodes of the initial cluster.
pub const CONTROLLER_VOTERS: usize = 3;

pub struct Core {
    pub config: NodeConfig,
    pub engine: RaftEngine,
    pub clock: Arc<dyn Clock>,
    pub peers: Peers,
    /// Per shard group: changes after every batch its state machine applies on this node.
    pub shard_applied: Arc<ShardWakers>,
    /// Changes after every batch the controller applies here.
    pub controller_applied: watch::Receiver<u64>,
    /// Becomes true when the node shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The write quota's token bucket of each shard group this node leads (or led).
    quotas: Mutex<HashMap<u64, quota::Bucket>>,
    /// When each node last answered, while this node leads the controller.
    liveness: Mutex<Liveness>,
    /// Node and stream records read since the controller last applied a batch here.
    controller_cache: Mutex<ControllerCache>,
    /// When the node started, for the hold of client calls while it is not ready.
    started: tokio::time::Instant,
    /// Set once the node is ready ([`readiness`]); never cleared.
    ready: AtomicBool,
    /// Failures of the background tasks, logged at warn at most once per kind every 30 s.
    warnings: Mutex<WarnLimit>,
}

/// The controller's node and stream records as this node last read them, tagged with the value
/// of `controller_applied` seen before they were read. Every request for a shard looks up its
/// stream, so reading the record from RocksDB and parsing its JSON each time would cost more
/// than the rest of the lookup; any applied controller batch makes the whole cache stale.
#[derive(Default)]
struct ControllerCache {
    generation: u64,
    nodes: Option<Vec<NodeInfo>>,
    /// Existing streams only: a name that does not exist is not remembered, so that requests
    /// naming made-up streams cannot grow the map.
    streams: HashMap<String, StreamInfo>,
}

impl ControllerCache {
    /// The cache as of `generation`: emptied when it was filled under another one.
    fn at(&mut self, generation: u64) -> &mut Self {
        if self.generation != generation {
            *self = Self {
                generation,
                ..Self::default()
            };
        }
        self
    }
}

impl Core {
    pub fn new(
        config: NodeConfig,
        engine: RaftEngine,
        clock: Arc<dyn Clock>,
        shard_applied: Arc<ShardWakers>,
        controller_applied: watch::Receiver<u64>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self {
            config,
            engine,
            clock,
            peers: Peers::default(),
            shard_applied,
            controller_applied,
            shutdown,
            quotas: Mutex::new(HashMap::new()),
            liveness: Mutex::new(Liveness::new(Instant::now())),
            controller_cache: Mutex::new(ControllerCache::default()),
            started: tokio::time::Instant::now(),
            ready: AtomicBool::new(false),
            warnings: Mutex::new(WarnLimit::default()),
        }
    }

    /// Whether this node can serve client calls ([`readiness`]); once it can, always true.
    pub fn is_ready(&self) -> bool {
        if self.ready.load(Ordering::Acquire) {
            return true;
        }
        let ready = self.not_ready().is_none();
        if ready && !self.ready.swap(true, Ordering::AcqRel) {
            tracing::info!(node_id = self.node_id(), "ready to serve client calls");
        }
        ready
    }

    /// Why this node cannot serve client calls yet, as it has applied the controller.
    fn not_ready(&self) -> Option<readiness::NotReady> {
        let Ok(nodes) = self.nodes() else {
            return Some(readiness::NotReady::Unregistered);
        };
        let voters = self
            .controller()
            .map(|g| g.status().voters.len())
            .unwrap_or(0);
        readiness::readiness(self.node_id(), &nodes, voters).err()
    }

    /// How much longer this node holds client calls it cannot serve yet: `None` once its
    /// `start_hold_ms` is over.
    fn start_hold_left(&self) -> Option<Duration> {
        readiness::hold_left(
            self.started.elapsed(),
            Duration::from_millis(self.config.start_hold_ms),
        )
    }

    /// Whether the node is still starting: not ready, and within its start hold.
    pub fn is_starting(&self) -> bool {
        !self.is_ready() && self.start_hold_left().is_some()
    }

    /// Holds a client call until this node is ready, or its start hold is over, or it shuts
    /// down; the call then goes on as usual (and gets the error it would have got, when the
    /// node still is not ready). Node-to-node calls never come here.
    pub async fn await_ready(&self) {
        if self.ready.load(Ordering::Acquire) {
            return;
        }
        let mut applied = self.controller_applied.clone();
        let mut stop = self.shutdown.clone();
        loop {
            if self.is_ready() {
                return;
            }
            let Some(left) = self.start_hold_left() else {
                tracing::debug!(
                    node_id = self.node_id(),
                    "start hold over, answering a call while not ready: {}",
                    self.not_ready()
                        .map_or_else(|| "ready now".to_string(), |r| r.to_string())
                );
                return;
            };
            let applied_changed = async {
                if applied.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            // Registrations arrive as controller batches; the controller's voters are learnt
            // from its membership, which is polled.
            tokio::select! {
                _ = applied_changed => {}
                _ = tokio::time::sleep(left.min(Duration::from_millis(50))) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Logs a failure of a background task: at warn, at most once per kind every 30 s
    /// ([`WarnLimit`]), or at debug while the node is starting, when failures (no controller
    /// leader yet, peers not up yet) are expected and pass.
    pub fn background_failure(&self, task: &'static str, what: &'static str, error: &ServiceError) {
        if self.is_starting() {
            tracing::debug!(task, "{what} failed while the node starts: {error}");
            return;
        }
        self.warnings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .warn((task, what, error.code().name()), Instant::now(), error);
    }

    /// What the controller's leader knows of the other nodes' liveness.
    pub fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    /// Why this node's storage stopped taking writes (a failed write or sync poisoned it), if
    /// it did. Such a node serves nothing until it is restarted.
    pub fn storage_failure(&self) -> Option<String> {
        self.engine.storage_poisoned()
    }

    /// Whether this node may serve requests: refused, with an error that is not retryable, once
    /// its storage failed. Every API call passes here first, except the cluster status, which
    /// reports the failure instead.
    pub fn check_serving(&self) -> Result<(), ServiceError> {
        match self.storage_failure() {
            Some(reason) => Err(ServiceError::StorageFailed { reason }),
            None => Ok(()),
        }
    }

    pub fn controller(&self) -> Result<Group, ServiceError> {
        self.engine.group(CONTROLLER_GROUP).map_err(|_| {
            ServiceError::unavailable("the controller group is not running on this node")
        })
    }

    fn controller_cache(&self) -> std::sync::MutexGuard<'_, ControllerCache> {
        self.controller_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// The registered nodes, as this node has applied the controller.
    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ServiceError> {
        let generation = *self.controller_applied.borrow();
        if let Some(nodes) = &self.controller_cache().at(generation).nodes {
            return Ok(nodes.clone());
        }
        let nodes = ControllerView::nodes(self.controller()?.view())?;
        self.controller_cache().at(generation).nodes = Some(nodes.clone());
        Ok(nodes)
    }

    /// Every stream, as this node has applied the controller.
    pub fn streams(&self) -> Result<Vec<StreamInfo>, ServiceError> {
        Ok(ControllerView::streams(self.controller()?.view())?)
    }

    /// The stream named `name`; NotFound when it does not exist.
    pub fn stream(&self, name: &str) -> Result<StreamInfo, ServiceError> {
        let name = StreamName::new(name)?;
        let generation = *self.controller_applied.borrow();
        if let Some(info) = self
            .controller_cache()
            .at(generation)
            .streams
            .get(name.as_str())
        {
            return Ok(info.clone());
        }
        let info =
            ControllerView::stream(self.controller()?.view(), name.as_str())?.ok_or_else(|| {
                ServiceError::not_found("stream_name", format!("stream \"{name}\" does not exist"))
            })?;
        self.controller_cache()
            .at(generation)
            .streams
            .insert(name.as_str().to_string(), info.clone());
        Ok(info)
    }
}
