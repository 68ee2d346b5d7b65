//! A Riptide node: the engine, the gRPC server (Raft transport, stream, admin and node-internal
//! services on one address), the Kinesis HTTP API on its own address when configured
//! ([`crate::kinesis_api`]) and the node's background tasks:
//! - registration: the node records its address, region and zone in the controller;
//! - the reconciler: creates the shard groups the controller placed on this node, forms those
//!   it is first replica of, reports when their first leader is elected, removes the groups of
//!   deleted streams and the replicas moved to other nodes, and (on the controller's leader)
//!   adds registered nodes to the controller group as learners;
//! - liveness and repair ([`liveness`]): the controller's leader probes every node and moves
//!   the replicas of nodes silent for too long, or draining, to other nodes;
//! - membership ([`membership`]): each shard leader brings its group's voters and learners to
//!   the controller's placement;
//! - retention: each shard leader trims records older than its stream's retention.
//!
//! The tasks log their failures through [`Core::background_failure`]: at warn, at most once per
//! kind every 30 s, once the node has started.

pub mod api;
mod balancer;
pub mod core;
pub mod liveness;
pub mod membership;
pub mod peers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use riptide_proto::v1::admin_service_server::AdminServiceServer;
use riptide_proto::v1::node_internal_server::NodeInternalServer;
use riptide_proto::v1::stream_service_server::StreamServiceServer;
use riptide_raft::{
    EngineConfig, GroupId, NodeId, RaftEngine, Role, StateMachine, StateMachineFactory,
    StorageError, TransportSettings,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::controller::{
    CONTROLLER_GROUP, ControllerCommand, ControllerMachine, ControllerView, NodeInfo, StreamStatus,
};
use crate::shard::{ShardCommand, ShardMachine, ShardReader, ShardWakers};
use api::Api;
use core::{CONTROLLER_VOTERS, Core};

const KIND_CONTROLLER: &[u8] = b"controller";
const KIND_SHARD: &[u8] = b"shard";
/// Largest gRPC message a node accepts from clients: a 5 MiB PutRecords call or a 10 MiB
/// GetRecords answer, with room for framing.
const MAX_API_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

struct Factory {
    shard_applied: Arc<ShardWakers>,
    controller_applied: Arc<watch::Sender<u64>>,
}

impl StateMachineFactory for Factory {
    fn create(&self, group: GroupId, kind: &[u8]) -> Result<Box<dyn StateMachine>, StorageError> {
        match kind {
            KIND_CONTROLLER => Ok(Box::new(ControllerMachine::new(
                self.controller_applied.clone(),
            ))),
            KIND_SHARD => Ok(Box::new(ShardMachine::new(
                self.shard_applied.sender(group.0),
            ))),
            other => Err(StorageError::Corrupt {
                what: format!("group {group} registration"),
                reason: format!("unknown group kind {:?}", String::from_utf8_lossy(other)),
            }),
        }
    }
}

/// A running node.
pub struct Node {
    core: Arc<Core>,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The Kinesis HTTP API's address and server, when `kinesis_listen` is set.
    kinesis: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    /// Opens the node's data, binds its address and starts serving.
    pub async fn start(config: NodeConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        config.validate()?;
        let shard_applied = Arc::new(ShardWakers::default());
        let controller_applied = Arc::new(watch::channel(0u64).0);
        let factory = Factory {
            shard_applied: shard_applied.clone(),
            controller_applied: controller_applied.clone(),
        };
        let id = NodeId(config.node_id);
        let mut engine_config = EngineConfig::new(id, &config.data_dir);
        engine_config.record_cache_bytes = config.record_cache_bytes();
        engine_config.settings_by_kind = HashMap::from([
            (KIND_CONTROLLER.to_vec(), config.timing.controller()),
            (KIND_SHARD.to_vec(), config.timing.shard()),
        ]);
        // The addresses first: a port in use fails the start before any group runs.
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let kinesis_listener = if config.kinesis_listen.is_empty() {
            None
        } else {
            let l = tokio::net::TcpListener::bind(&config.kinesis_listen)
                .await
                .with_context(|| {
                    format!("kinesis_listen: cannot bind {}", config.kinesis_listen)
                })?;
            let kinesis_addr = l.local_addr()?;
            Some((l, kinesis_addr))
        };
        let members = config.initial_members()?;
        let engine = RaftEngine::open(engine_config, Arc::new(factory))
            .await
            .with_context(|| format!("opening node {id} in {}", config.data_dir.display()))?;
        if let Err(e) = form_controller(&engine, &config, id, &members).await {
            // Its groups and watcher stop before the error reaches the caller.
            engine.shutdown().await;
            return Err(e);
        }

        let (stop, stopped) = watch::channel(false);
        let core = Arc::new(Core::new(
            config,
            engine.clone(),
            clock,
            shard_applied,
            controller_applied.subscribe(),
            stopped.clone(),
        ));
        let api = Api::new(&core);
        let mut builder = riptide_raft::transport::server_builder(&TransportSettings::default());
        let router = builder
            .add_service(engine.service())
            .add_service(
                StreamServiceServer::new(api.clone())
                    .max_decoding_message_size(MAX_API_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_API_MESSAGE_BYTES),
            )
            .add_service(AdminServiceServer::new(api.clone()))
            .add_service(NodeInternalServer::new(api));
        let mut server_stop = stopped.clone();
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(
                    // The builder's tcp_nodelay applies only to sockets tonic accepts itself:
                    // without it here every answer waited for the client's delayed ACK.
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async move {
                        let _ = server_stop.wait_for(|s| *s).await;
                    },
                )
                .await
        });
        let kinesis = match kinesis_listener {
            Some((l, kinesis_addr)) => {
                let (core, stopped) = (core.clone(), stopped.clone());
                let server =
                    tokio::spawn(async move { crate::kinesis_api::serve(l, &core, stopped).await });
                tracing::info!(node_id = %id, addr = %kinesis_addr, "kinesis api listening");
                Some((kinesis_addr, server))
            }
            None => None,
        };
        let tasks = vec![
            tokio::spawn(register(core.clone())),
            tokio::spawn(reconcile_loop(core.clone())),
            tokio::spawn(liveness::run(core.clone())),
            tokio::spawn(balancer::run(core.clone())),
            tokio::spawn(membership::run(core.clone())),
            tokio::spawn(retention_loop(core.clone())),
        ];
        tracing::info!(node_id = %id, %addr, "node started");
        Ok(Self {
            core,
            addr,
            stop,
            server,
            kinesis,
            tasks,
        })
    }

    /// The address the Kinesis HTTP API listens on, when it is on.
    pub fn kinesis_addr(&self) -> Option<SocketAddr> {
        self.kinesis.as_ref().map(|(a, _)| *a)
    }

    pub fn id(&self) -> u64 {
        self.core.node_id()
    }

    /// The address the node listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> &RaftEngine {
        &self.core.engine
    }

    /// The nodes registered in the controller, as this node has applied it.
    pub fn core_nodes(&self) -> Result<Vec<NodeInfo>, crate::error::ServiceError> {
        self.core.nodes()
    }

    /// Stops the node: background tasks, then every group (so that the other replicas elect
    /// new leaders at once), then the server and storage.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let abort = t.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        self.core.engine.shutdown().await;
        // Peers and clients keep their connections open; requests still in flight get a moment
        // to finish.
        let servers = std::iter::once(self.server.abort_handle()).chain(
            self.kinesis
                .as_ref()
                .map(|(_, server)| server.abort_handle()),
        );
        let aborts: Vec<_> = servers.collect();
        let finished = async {
            let _ = self.server.await;
            if let Some((_, server)) = self.kinesis {
                let _ = server.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(1), finished)
            .await
            .is_err()
        {
            for abort in aborts {
                abort.abort();
            }
        }
        // The node's data may be opened again (by a restart in the same process) only once
        // the last request and group task has let go of it.
        let closed = self.core.engine.closed_signal();
        let id = self.core.node_id();
        drop(self.core);
        if !closed.wait(Duration::from_secs(15)).await {
            tracing::warn!(node_id = id, "storage still in use 15s after shutdown");
        }
    }
}

/// Creates the controller group on a node that has none, and forms it on the first of the
/// initial members.
async fn form_controller(
    engine: &RaftEngine,
    config: &NodeConfig,
    id: NodeId,
    members: &[crate::config::InitialMember],
) -> Result<()> {
    if engine.group(CONTROLLER_GROUP).is_err() {
        engine
            .create_group(
                CONTROLLER_GROUP,
                config.timing.controller(),
                KIND_CONTROLLER,
            )
            .await
            .context("creating the controller group")?;
    }
    let voters: BTreeMap<NodeId, String> = members
        .iter()
        .take(CONTROLLER_VOTERS)
        .map(|m| (NodeId(m.id), m.address.clone()))
        .collect();
    if voters.keys().next() == Some(&id) {
        engine
            .group(CONTROLLER_GROUP)?
            .initialize(voters)
            .await
            .context("forming the controller group")?;
    }
    Ok(())
}

/// Waits `d`, or less when the node shuts down; returns false on shutdown.
async fn pause(core: &Core, d: Duration) -> bool {
    let mut stop = core.shutdown.clone();
    tokio::select! {
        _ = tokio::time::sleep(d) => !*core.shutdown.borrow(),
        _ = stop.wait_for(|s| *s) => false,
    }
}

/// Records this node in the controller, retrying until it is there.
async fn register(core: Arc<Core>) {
    let me = NodeInfo {
        id: core.node_id(),
        address: core.config.advertised().to_string(),
        region: core.config.region.clone(),
        zone: core.config.zone.clone(),
        draining: false,
    };
    loop {
        let known = core
            .nodes()
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.id == me.id));
        // The controller keeps a node's draining mark when it registers again.
        if known.is_some_and(|k| {
            (&k.address, &k.region, &k.zone) == (&me.address, &me.region, &me.zone)
        }) {
            return;
        }
        match core
            .propose(&ControllerCommand::RegisterNode(me.clone()))
            .await
        {
            Ok(_) => tracing::info!(node_id = me.id, "registered with the controller"),
            Err(e) => {
                core.background_failure("registration", "registering with the controller", &e)
            }
        }
        if !pause(&core, Duration::from_millis(500)).await {
            return;
        }
    }
}

async fn reconcile_loop(core: Arc<Core>) {
    let mut changed = core.controller_applied.clone();
    let mut formed: HashSet<u64> = HashSet::new();
    let mut stop = core.shutdown.clone();
    loop {
        // Evaluated on every controller change, so that the node says when it became ready
        // even before a client call asks.
        core.is_ready();
        if let Err(e) = reconcile(&core, &mut formed).await {
            core.background_failure("reconciler", "reconcile pass", &e);
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One pass of the reconciler; see the module docs.
async fn reconcile(
    core: &Core,
    formed: &mut HashSet<u64>,
) -> Result<(), crate::error::ServiceError> {
    let me = core.node_id();
    let controller = core.controller()?;
    let nodes = core.nodes()?;
    let streams = core.streams()?;
    let addrs: HashMap<u64, String> = nodes.iter().map(|n| (n.id, n.address.clone())).collect();

    // On the controller's leader: every registered node follows the controller as a learner.
    let status = controller.status();
    if status.role == Role::Leader {
        for n in &nodes {
            let id = NodeId(n.id);
            if !status.voters.contains(&id) && !status.learners.contains(&id) {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    controller.add_learner(id, n.address.clone()),
                )
                .await
                {
                    Ok(Ok(())) => tracing::info!(node_id = n.id, "node follows the controller"),
                    Ok(Err(e)) => {
                        let _span = tracing::info_span!("learner", node_id = n.id).entered();
                        core.background_failure(
                            "reconciler",
                            "adding a controller learner",
                            &e.into(),
                        );
                    }
                    Err(_) => {
                        tracing::debug!(node_id = n.id, "controller learner still catching up")
                    }
                }
            }
        }
    }

    let mut wanted: BTreeSet<GroupId> = BTreeSet::new();
    for s in &streams {
        for sh in &s.shards {
            if !sh.replicas.contains(&me) {
                continue;
            }
            let gid = GroupId(sh.group);
            wanted.insert(gid);
            let group = match core.engine.group(gid) {
                Ok(g) => g,
                Err(_) => {
                    core.engine
                        .create_group(gid, core.config.timing.shard(), KIND_SHARD)
                        .await?
                }
            };
            // Only a shard that is not ready yet is formed: once it is, its replicas may have
            // changed, and a new first replica must join the group, not form another.
            if !sh.ready && sh.replicas.first() == Some(&me) && !formed.contains(&sh.group) {
                let members: BTreeMap<NodeId, String> = sh
                    .replicas
                    .iter()
                    .filter_map(|r| addrs.get(r).map(|a| (NodeId(*r), a.clone())))
                    .collect();
                if members.len() == sh.replicas.len() {
                    group.initialize(members).await?;
                    formed.insert(sh.group);
                }
            }
            if !sh.ready && group.status().role == Role::Leader {
                core.propose(&ControllerCommand::ShardReady {
                    stream: s.name.clone(),
                    created_ms: s.created_ms,
                    shard: sh.index,
                })
                .await?;
            }
        }
    }
    // Groups no longer placed here: a deleted stream's go at once; a replica moved to another
    // node stays until the shard's leader says it is no longer a voter, so that the group never
    // loses a voter before the placed replicas have taken over.
    let placed: HashMap<u64, &Vec<u64>> = streams
        .iter()
        .flat_map(|s| s.shards.iter().map(|sh| (sh.group, &sh.replicas)))
        .collect();
    let mut moved = Vec::new();
    for gid in core.engine.group_ids() {
        if gid == CONTROLLER_GROUP || wanted.contains(&gid) {
            continue;
        }
        match placed.get(&gid.0) {
            None => {
                tracing::info!(group_id = %gid, "removing a shard no longer placed on this node");
                core.engine.delete_group(gid).await?;
                formed.remove(&gid.0);
            }
            Some(replicas) => {
                let mut ask: Vec<String> = replicas
                    .iter()
                    .filter_map(|r| addrs.get(r).cloned())
                    .collect();
                if let Ok(g) = core.engine.group(gid) {
                    let status = g.status();
                    if let Some(a) = status.leader.and_then(|l| status.addresses.get(&l)) {
                        ask.push(a.clone());
                    }
                }
                ask.sort();
                ask.dedup();
                moved.push((gid, ask));
            }
        }
    }
    let checks = moved
        .into_iter()
        .map(|(gid, ask)| async move { (gid, left_the_group(core, gid, &ask).await) });
    for (gid, left) in futures::future::join_all(checks).await {
        if left {
            tracing::info!(group_id = %gid, "removing a replica moved to another node");
            core.engine.delete_group(gid).await?;
            formed.remove(&gid.0);
        }
    }
    Ok(())
}

/// Whether the leader of `gid`, found among `ask`, says this node is no longer one of the
/// group's voters.
async fn left_the_group(core: &Core, gid: GroupId, ask: &[String]) -> bool {
    let me = core.node_id();
    let answers = ask.iter().map(|addr| async move {
        let call = async {
            let mut req =
                tonic::Request::new(riptide_proto::v1::GroupMembershipRequest { group_id: gid.0 });
            req.set_timeout(Duration::from_secs(1));
            core.peers
                .internal(addr)
                .ok()?
                .group_membership(req)
                .await
                .ok()
        };
        tokio::time::timeout(Duration::from_secs(1), call)
            .await
            .ok()
            .flatten()
            .map(|r| r.into_inner())
    });
    futures::future::join_all(answers)
        .await
        .into_iter()
        .flatten()
        .any(|m| m.leader && !m.voters.contains(&me))
}

async fn retention_loop(core: Arc<Core>) {
    let every = Duration::from_millis(core.config.retention_check_interval_ms);
    while pause(&core, every).await {
        if let Err(e) = trim_expired(&core).await {
            core.background_failure("retention", "retention pass", &e);
        }
    }
}

/// On every shard this node leads, removes the records older than the stream's retention; on
/// every shard replica it hosts, has the log entries below the trim mark deleted.
async fn trim_expired(core: &Core) -> Result<(), crate::error::ServiceError> {
    let controller = core.controller()?;
    let now = core.clock.now_ms();
    for s in ControllerView::streams(controller.view())? {
        if s.status != StreamStatus::Active {
            continue;
        }
        let before_ms = now.saturating_sub(u64::from(s.retention_hours) * 3_600_000);
        for sh in &s.shards {
            let Ok(group) = core.engine.group(GroupId(sh.group)) else {
                continue;
            };
            release_trimmed(&group).await?;
            if group.status().role != Role::Leader {
                continue;
            }
            let Some(first) = ShardReader::first(group.view())? else {
                continue;
            };
            if first.arrival_ms < before_ms {
                group
                    .write(ShardCommand::Trim { before_ms }.encode())
                    .await?;
                tracing::debug!(stream = %s.name, shard = sh.index, before_ms, "trimmed expired records");
            }
        }
    }
    Ok(())
}

/// A trim releases the log entries below its mark; they are deleted once openraft purged them
/// too, which on its own it does only every `snapshot_after_entries` entries. A shard that
/// writes little would keep its trimmed entries for long, so this asks for a snapshot (a view
/// of the store, nothing is copied) and a purge up to the mark. The purge goes no further
/// than the snapshot, so one built in the background is used on the next pass.
async fn release_trimmed(group: &riptide_raft::Group) -> Result<(), crate::error::ServiceError> {
    let Some(upto) = ShardReader::trimmed_before(group.view())?
        .log_index()
        .checked_sub(1)
    else {
        return Ok(());
    };
    let status = group.status();
    if status.purged_index.is_some_and(|p| p >= upto) {
        return Ok(());
    }
    if status.snapshot_index.is_none_or(|s| s < upto) {
        group.trigger_snapshot().await?;
    }
    group.purge_log(upto).await?;
    Ok(())
}
