//! The node's internal service: every request of the gRPC API (and, later, of the Kinesis HTTP
//! API) is carried out here. Requests for a shard go to the shard's leader: served here when
//! this node leads it, forwarded otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use riptide_proto::v1;
use riptide_proto::{ErrorCode, SequenceNumber, ShardId, StreamName};
use riptide_raft::{Group, GroupId, NodeId, RaftEngine, RaftError, Role};
use tokio::sync::watch;

use crate::clock::Clock;
use crate::config::NodeConfig;
use crate::controller::placement::{self, Candidate};
use crate::controller::{
    CONTROLLER_GROUP, ControllerCommand, ControllerReply, ControllerView, CountLimits, NodeInfo,
    ShardInfo, StreamInfo, StreamMode, StreamStatus, decode_reply,
};
use crate::error::ServiceError;
use crate::server::liveness::Liveness;
use crate::server::peers::{MAX_HOPS, Peers, forwarded};
use crate::shard::iterator::{IteratorError, ShardIterator};
use crate::shard::{ShardCommand, ShardReader, ShardWakers};
use crate::validate;

tokio::task_local! {
    /// Set, within a request's task, to the address of the node a part of the request was
    /// forwarded to; the API layer reports it to the client in `x-riptide-forwarded-to`.
    pub static FORWARDED_TO: std::cell::RefCell<Option<String>>;
}

/// Replicas per shard (fewer when the cluster is smaller).
pub const REPLICATION: usize = 3;
/// Voters of the controller group: the first nodes of the initial cluster.
pub const CONTROLLER_VOTERS: usize = 3;
/// How long a write waits for this node to see a new stream turn ACTIVE.
const CREATING_WAIT: Duration = Duration::from_secs(2);
/// How long a request waits for a shard or the controller to elect a leader.
const LEADER_WAIT: Duration = Duration::from_secs(3);
/// How long a drain waits for the controller to place the node's replicas elsewhere.
const DRAIN_PLACEMENT_WAIT: Duration = Duration::from_secs(5);
/// Shards of an ON_DEMAND stream created without a shard count, as in Kinesis.
pub const ON_DEMAND_SHARDS: u32 = 4;
/// Streams a listing returns when the request names no limit, and the most it may ask for.
pub const DEFAULT_LIST_STREAMS: u32 = 100;
pub const MAX_LIST_STREAMS: u32 = 10_000;

/// Which way a retention change may go (Kinesis has one call for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionChange {
    Increase,
    Decrease,
}

/// The cluster's stream and shard counts against their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Shards the cluster may hold (`limits.max_shards`).
    pub shard_limit: u32,
    /// Shards of every stream (no shard is ever closed yet).
    pub open_shards: u32,
    pub on_demand_streams: u32,
    /// Streams the cluster may hold (`limits.max_streams`), ON_DEMAND ones included.
    pub on_demand_stream_limit: u32,
}

/// Where a shard's leader is.
pub enum Route {
    /// This node leads it.
    Local(Group),
    /// Addresses to try, best first.
    Remote(Vec<String>),
}

/// A record to put, with its shard already chosen.
#[derive(Debug, Clone)]
pub struct RoutedRecord {
    pub partition_key: String,
    pub data: Bytes,
    /// The hash key that chose the shard; sent along when forwarding so that the leader's node
    /// picks the same shard.
    pub hash_key: u128,
}

/// Token bucket of a per-shard write quota.
struct Bucket {
    records: f64,
    bytes: f64,
    at: Instant,
}

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
    quotas: Mutex<HashMap<u64, Bucket>>,
    /// When each node last answered, while this node leads the controller.
    liveness: Mutex<Liveness>,
    /// Node and stream records read since the controller last applied a batch here.
    controller_cache: Mutex<ControllerCache>,
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
        }
    }

    /// What the controller's leader knows of the other nodes' liveness.
    pub fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    // -----------------------------------------------------------------------------------------
    // Controller
    // -----------------------------------------------------------------------------------------

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

    pub fn nodes(&self) -> Result<Vec<NodeInfo>, ServiceError> {
        let generation = *self.controller_applied.borrow();
        if let Some(nodes) = &self.controller_cache().at(generation).nodes {
            return Ok(nodes.clone());
        }
        let nodes = ControllerView::nodes(self.controller()?.view())?;
        self.controller_cache().at(generation).nodes = Some(nodes.clone());
        Ok(nodes)
    }

    pub fn streams(&self) -> Result<Vec<StreamInfo>, ServiceError> {
        Ok(ControllerView::streams(self.controller()?.view())?)
    }

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
                ServiceError::not_found(format!("stream_name: stream \"{name}\" does not exist"))
            })?;
        self.controller_cache()
            .at(generation)
            .streams
            .insert(name.as_str().to_string(), info.clone());
        Ok(info)
    }

    /// Addresses to try for the controller's leader when this node does not know it.
    fn controller_fallbacks(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if let Ok(members) = self.config.initial_members() {
            out.extend(
                members
                    .into_iter()
                    .filter(|m| m.id != self.node_id())
                    .map(|m| m.address),
            );
        }
        if !self.config.join.is_empty() {
            out.push(self.config.join.clone());
        }
        if let Ok(nodes) = self.nodes() {
            out.extend(
                nodes
                    .into_iter()
                    .filter(|n| n.id != self.node_id())
                    .map(|n| n.address),
            );
        }
        out.dedup();
        out
    }

    /// Commits `cmd` in the controller (through its leader) and returns the reply, once this
    /// node has applied it too, so that reads here see it.
    pub async fn propose(
        &self,
        cmd: &ControllerCommand,
        hops: u32,
    ) -> Result<ControllerReply, ServiceError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let group = self.controller()?;
            let status = group.status();
            if status.role == Role::Leader {
                match group.write(self.at_leader(cmd.clone()).encode()).await {
                    Ok(out) => return reply(&out.response),
                    // Refused before it was appended: look for the leader again.
                    Err(RaftError::NotLeader { .. }) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(RaftError::Discarded { .. }) => {
                        return Err(ServiceError::unavailable(
                            "the controller's leadership changed during the request; it may or may not have taken effect",
                        ));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            let mut targets: Vec<String> = status
                .leader
                .and_then(|l| status.addresses.get(&l).cloned())
                .into_iter()
                .collect();
            if targets.is_empty() && hops == 0 {
                targets = self.controller_fallbacks();
            }
            if hops < MAX_HOPS {
                for addr in &targets {
                    let msg = v1::ControllerProposal {
                        command: cmd.encode().to_vec(),
                        hops: hops + 1,
                    };
                    let mut client = self.peers.internal(addr)?;
                    match client.propose_to_controller(forwarded(msg, hops + 1)).await {
                        Ok(out) => {
                            let out = out.into_inner();
                            // Let local reads see the change; a lagging learner is no error.
                            let _ = group.wait_applied(out.index, Duration::from_secs(5)).await;
                            return reply(&out.reply);
                        }
                        Err(s) if riptide_proto::status_code(&s) == ErrorCode::Unavailable => {
                            tracing::debug!(peer = %addr, "controller proposal not taken: {}", s.message());
                        }
                        Err(s) => return Err(s.into()),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::unavailable(
                    "the controller has no reachable leader (are a majority of its voters up?)",
                ));
            }
            let _ = group.wait_for_leader(Duration::from_millis(500)).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Serves a proposal forwarded by another node: commits it if this node leads the
    /// controller, forwards it once more otherwise.
    pub async fn propose_forwarded(
        &self,
        raw: &[u8],
        hops: u32,
    ) -> Result<v1::ControllerOutcome, ServiceError> {
        let cmd = ControllerCommand::decode(raw).map_err(|e| {
            ServiceError::invalid(format!("command: not a controller command: {e}"))
        })?;
        let group = self.controller()?;
        if group.status().role == Role::Leader {
            let out = group.write(self.at_leader(cmd).encode()).await.map_err(|e| match e {
                RaftError::NotLeader { .. } => ServiceError::unavailable(
                    "the controller's leadership changed during the request; it may or may not have taken effect",
                ),
                other => other.into(),
            })?;
            return Ok(v1::ControllerOutcome {
                reply: out.response.to_vec(),
                index: out.index,
            });
        }
        let status = group.status();
        let Some(addr) = status
            .leader
            .and_then(|l| status.addresses.get(&l).cloned())
        else {
            return Err(ServiceError::unavailable(
                "the controller has no leader yet",
            ));
        };
        if hops >= MAX_HOPS {
            return Err(ServiceError::unavailable(
                "the controller's leader moved; retry",
            ));
        }
        let msg = v1::ControllerProposal {
            command: raw.to_vec(),
            hops: hops + 1,
        };
        Ok(self
            .peers
            .internal(&addr)?
            .propose_to_controller(forwarded(msg, hops + 1))
            .await?
            .into_inner())
    }

    // -----------------------------------------------------------------------------------------
    // Streams
    // -----------------------------------------------------------------------------------------

    pub async fn create_stream(
        &self,
        name: &str,
        shard_count: u32,
        retention_hours: u32,
        preferred_leader_region: Option<String>,
    ) -> Result<StreamInfo, ServiceError> {
        self.create_stream_with(
            name,
            Some(shard_count),
            retention_hours,
            StreamMode::Provisioned,
            BTreeMap::new(),
            preferred_leader_region,
        )
        .await
    }

    /// Creates a stream in `mode` with `tags`. An ON_DEMAND stream created without a shard
    /// count gets [`ON_DEMAND_SHARDS`]; a PROVISIONED one needs a count.
    pub async fn create_stream_with(
        &self,
        name: &str,
        shard_count: Option<u32>,
        retention_hours: u32,
        mode: StreamMode,
        tags: BTreeMap<String, String>,
        preferred_leader_region: Option<String>,
    ) -> Result<StreamInfo, ServiceError> {
        let name = StreamName::new(name)?;
        let preferred_leader_region = self.known_region(preferred_leader_region)?;
        let limits = &self.config.limits;
        let shard_count = match (shard_count, mode) {
            (Some(n), _) => n,
            (None, StreamMode::OnDemand) => ON_DEMAND_SHARDS.min(limits.max_shards_per_stream),
            (None, StreamMode::Provisioned) => {
                return Err(ServiceError::invalid(
                    "shard_count: required for a PROVISIONED stream (1 to limits.max_shards_per_stream)",
                ));
            }
        };
        validate::shard_count(shard_count, limits.max_shards_per_stream)?;
        let retention_hours = validate::retention("retention_period_hours", retention_hours, true)?;
        if !tags.is_empty() {
            validate::tags("tags", tags.iter())?;
            if tags.len() > validate::MAX_TAGS_PER_STREAM as usize {
                return Err(ServiceError::new(
                    ErrorCode::LimitExceeded,
                    format!(
                        "tags: {} tags given, the limit is {} per stream",
                        tags.len(),
                        validate::MAX_TAGS_PER_STREAM
                    ),
                ));
            }
        }
        let placements = self.place_shards(
            shard_count,
            preferred_leader_region.as_deref(),
            &BTreeSet::new(),
        )?;
        let cmd = ControllerCommand::CreateStream {
            name: name.as_str().to_string(),
            retention_hours,
            created_ms: self.clock.now_ms(),
            placements,
            limits: CountLimits {
                max_streams: limits.max_streams,
                max_shards: limits.max_shards,
            },
            mode,
            tags,
            preferred_leader_region,
        };
        match self.propose(&cmd, 0).await? {
            ControllerReply::Stream(s) => Ok(s),
            ControllerReply::Done => Err(ServiceError::internal("controller gave no stream back")),
        }
    }

    /// Placements for `shards` new shards over the registered nodes that take replicas (not
    /// draining), by their current load; nodes in `down` never form a group while another
    /// node can (see [`placement::place`]).
    fn place_shards(
        &self,
        shards: u32,
        preferred_leader_region: Option<&str>,
        down: &BTreeSet<u64>,
    ) -> Result<Vec<Vec<u64>>, ServiceError> {
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        for s in self.streams()? {
            for sh in s.shards {
                for r in sh.replicas {
                    *load.entry(r).or_default() += 1;
                }
            }
        }
        let nodes = self.nodes()?;
        // A cluster that is starting has nodes that have not registered yet: placing now would
        // give every shard fewer replicas than the cluster will have, for good (repair moves
        // replicas, it does not add them). The controller's voters are nodes the cluster was
        // started with.
        let voters = self.controller()?.status().voters.len();
        let wanted = REPLICATION.min(voters);
        if nodes.len() < wanted {
            return Err(ServiceError::unavailable(format!(
                "only {} of the cluster's nodes have registered with the controller, and a shard \
                 needs {wanted} replicas; retry in a moment (a cluster that is starting registers \
                 its nodes within seconds; one left with fewer nodes needs more nodes added)",
                nodes.len()
            )));
        }
        let candidates: Vec<Candidate> = nodes
            .into_iter()
            .filter(|n| !n.draining)
            .map(|n| Candidate {
                id: n.id,
                load: load.get(&n.id).copied().unwrap_or(0),
                region: n.region,
                zone: n.zone,
            })
            .collect();
        if candidates.is_empty() {
            return Err(ServiceError::unavailable(
                "no node that takes replicas has registered with the controller (none yet, or all are draining); retry in a moment",
            ));
        }
        Ok(placement::place(
            &candidates,
            shards,
            REPLICATION,
            preferred_leader_region,
            down,
        ))
    }

    /// What the controller's leader changes in a command before it commits it: a new stream's
    /// placements are made again with what only the leader knows, which nodes are down, so
    /// that no shard waits for a down node to form its group.
    fn at_leader(&self, cmd: ControllerCommand) -> ControllerCommand {
        let ControllerCommand::CreateStream {
            name,
            retention_hours,
            created_ms,
            placements,
            limits,
            mode,
            tags,
            preferred_leader_region,
        } = cmd
        else {
            return cmd;
        };
        let down = self.down_nodes();
        let placements = match down {
            Some(down) if !down.is_empty() => self
                .place_shards(
                    placements.len() as u32,
                    preferred_leader_region.as_deref(),
                    &down,
                )
                .unwrap_or(placements),
            _ => placements,
        };
        ControllerCommand::CreateStream {
            name,
            retention_hours,
            created_ms,
            placements,
            limits,
            mode,
            tags,
            preferred_leader_region,
        }
    }

    /// Registered nodes that have not answered the liveness probes lately, as the controller's
    /// leader sees them; `None` on other nodes, or before the leader heard from every node.
    fn down_nodes(&self) -> Option<BTreeSet<u64>> {
        let nodes = self.nodes().ok()?;
        let repair_after = Duration::from_millis(self.config.replica_repair_after_ms);
        let liveness = self.liveness();
        let now = Instant::now();
        if !liveness.settled(&nodes, self.node_id(), now, repair_after) {
            return None;
        }
        Some(
            liveness
                .health(&nodes, self.node_id(), now, repair_after)
                .into_iter()
                .filter(|h| !h.usable && !h.info.draining)
                .map(|h| h.info.id)
                .collect(),
        )
    }

    pub async fn delete_stream(&self, name: &str) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        self.propose(
            &ControllerCommand::DeleteStream {
                name: name.as_str().to_string(),
            },
            0,
        )
        .await
        .map(|_| ())
    }

    pub async fn set_retention(&self, name: &str, hours: u32) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        let hours = validate::retention("retention_period_hours", hours, false)?;
        self.propose(
            &ControllerCommand::SetRetention {
                name: name.as_str().to_string(),
                hours,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    /// Sets (or, with `None`, clears) the region whose replicas should lead the stream's
    /// shards; the leader balancer moves the leaders within seconds.
    pub async fn set_preferred_leader_region(
        &self,
        name: &str,
        region: Option<String>,
    ) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        let region = self.known_region(region)?;
        self.propose(
            &ControllerCommand::SetPreferredLeaderRegion {
                name: name.as_str().to_string(),
                region,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    /// A preferred leader region as given: `None` or empty for none, otherwise a region some
    /// registered node is in (a misspelt region would otherwise be silently ignored).
    fn known_region(&self, region: Option<String>) -> Result<Option<String>, ServiceError> {
        let Some(region) = region.filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let known: BTreeSet<String> = self.nodes()?.into_iter().map(|n| n.region).collect();
        if known.contains(&region) {
            Ok(Some(region))
        } else {
            Err(ServiceError::invalid(format!(
                "preferred_leader_region: no node of the cluster is in region {region:?} (regions: {})",
                known.into_iter().collect::<Vec<_>>().join(", ")
            )))
        }
    }

    /// Changes the retention in one direction only, as Kinesis's Increase and Decrease calls do.
    pub async fn change_retention(
        &self,
        name: &str,
        hours: u32,
        change: RetentionChange,
    ) -> Result<(), ServiceError> {
        let current = self.stream(name)?.retention_hours;
        match change {
            RetentionChange::Increase if hours < current => Err(ServiceError::invalid(format!(
                "retention_period_hours: {hours} is shorter than the stream's current {current} hours; decrease it instead"
            ))),
            RetentionChange::Decrease if hours > current => Err(ServiceError::invalid(format!(
                "retention_period_hours: {hours} is longer than the stream's current {current} hours; increase it instead"
            ))),
            _ => self.set_retention(name, hours).await,
        }
    }

    /// Sets tags on a stream (replacing the values of keys it has); a stream holds at most
    /// [`validate::MAX_TAGS_PER_STREAM`] tags.
    pub async fn tag_stream(
        &self,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        validate::tags("tags", tags.iter())?;
        self.propose(
            &ControllerCommand::UpdateTags {
                name: name.as_str().to_string(),
                set: tags,
                remove: Vec::new(),
                max_tags: validate::MAX_TAGS_PER_STREAM,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    /// Removes tags from a stream; keys it does not have are ignored.
    pub async fn untag_stream(&self, name: &str, keys: Vec<String>) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        validate::tag_keys("tag_keys", &keys)?;
        self.propose(
            &ControllerCommand::UpdateTags {
                name: name.as_str().to_string(),
                set: BTreeMap::new(),
                remove: keys,
                max_tags: validate::MAX_TAGS_PER_STREAM,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    pub async fn set_stream_mode(&self, name: &str, mode: StreamMode) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        self.propose(
            &ControllerCommand::SetStreamMode {
                name: name.as_str().to_string(),
                mode,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    /// Streams whose names sort after `exclusive_start`, in name order, at most `limit` (0
    /// takes [`DEFAULT_LIST_STREAMS`]); true when more follow.
    pub fn list_streams(
        &self,
        exclusive_start: &str,
        limit: u32,
    ) -> Result<(Vec<StreamInfo>, bool), ServiceError> {
        let limit = match limit {
            0 => DEFAULT_LIST_STREAMS,
            l if l <= MAX_LIST_STREAMS => l,
            l => {
                return Err(ServiceError::invalid(format!(
                    "limit: must be 1 to {MAX_LIST_STREAMS}, got {l}"
                )));
            }
        } as usize;
        let mut streams: Vec<StreamInfo> = self
            .streams()?
            .into_iter()
            .filter(|s| s.name.as_str() > exclusive_start)
            .collect();
        streams.sort_by(|a, b| a.name.cmp(&b.name));
        let more = streams.len() > limit;
        streams.truncate(limit);
        Ok((streams, more))
    }

    /// The stream's shards after `exclusive_start` (all when `None`), at most `limit`; true
    /// when more follow.
    pub fn shards_page(
        info: &StreamInfo,
        exclusive_start: Option<ShardId>,
        limit: usize,
    ) -> (&[ShardInfo], bool) {
        let from = exclusive_start
            .map(|s| (s.0 as usize).saturating_add(1))
            .unwrap_or(0)
            .min(info.shards.len());
        let rest = &info.shards[from..];
        let n = rest.len().min(limit);
        (&rest[..n], rest.len() > n)
    }

    /// The stream's tags in key order after `exclusive_start` (all when `None`), at most
    /// `limit`; true when more follow.
    pub fn tags_page<'a>(
        info: &'a StreamInfo,
        exclusive_start: Option<&str>,
        limit: usize,
    ) -> (Vec<(&'a String, &'a String)>, bool) {
        let rest: Vec<_> = info
            .tags
            .iter()
            .filter(|(k, _)| exclusive_start.is_none_or(|s| k.as_str() > s))
            .collect();
        let more = rest.len() > limit;
        (rest.into_iter().take(limit).collect(), more)
    }

    /// Shard and stream counts against the configured limits.
    pub fn stream_limits(&self) -> Result<StreamLimits, ServiceError> {
        let streams = self.streams()?;
        Ok(StreamLimits {
            shard_limit: self.config.limits.max_shards,
            open_shards: streams.iter().map(|s| s.shards.len() as u32).sum(),
            on_demand_streams: streams
                .iter()
                .filter(|s| s.mode == StreamMode::OnDemand)
                .count() as u32,
            on_demand_stream_limit: self.config.limits.max_streams,
        })
    }

    /// The stream's description as the API shows it, with each shard's leader as this node
    /// knows it (0 where it hosts no replica).
    pub fn describe(&self, s: &StreamInfo) -> v1::StreamDescription {
        v1::StreamDescription {
            stream_name: s.name.clone(),
            status: match s.status {
                StreamStatus::Creating => v1::StreamStatus::Creating,
                StreamStatus::Active => v1::StreamStatus::Active,
            } as i32,
            shards: s
                .shards
                .iter()
                .map(|sh| v1::Shard {
                    shard_id: ShardId(sh.index).to_string(),
                    hash_key_range: Some(v1::HashKeyRange {
                        starting_hash_key: sh.hash_start.to_string(),
                        ending_hash_key: sh.hash_end.to_string(),
                    }),
                    replicas: sh.replicas.clone(),
                    leader: self
                        .engine
                        .group(GroupId(sh.group))
                        .ok()
                        .and_then(|g| g.leader())
                        .map(|l| l.0)
                        .unwrap_or(0),
                    starting_sequence_number: SequenceNumber(0).to_string(),
                })
                .collect(),
            retention_period_hours: s.retention_hours,
            created_at_ms: s.created_ms,
            preferred_leader_region: s.preferred_leader_region.clone().unwrap_or_default(),
        }
    }

    /// [`Core::describe`], with the leaders of the shards this node holds no replica of filled
    /// in: their replicas' nodes are asked which groups they lead (one status call per node,
    /// concurrently, 500 ms at most). A shard whose replicas do not answer keeps leader 0.
    pub async fn describe_with_leaders(&self, s: &StreamInfo) -> v1::StreamDescription {
        let mut desc = self.describe(s);
        let unknown: Vec<&ShardInfo> = s
            .shards
            .iter()
            .zip(&desc.shards)
            .filter(|(sh, d)| d.leader == 0 && self.engine.group(GroupId(sh.group)).is_err())
            .map(|(sh, _)| sh)
            .collect();
        if unknown.is_empty() {
            return desc;
        }
        let ask: BTreeSet<u64> = unknown
            .iter()
            .flat_map(|sh| sh.replicas.iter().copied())
            .filter(|id| *id != self.node_id())
            .collect();
        let Ok(nodes) = self.nodes() else {
            return desc;
        };
        let calls = nodes
            .into_iter()
            .filter(|n| ask.contains(&n.id))
            .map(|n| async move {
                let status = self
                    .probe_node(n.id, &n.address, Duration::from_millis(500))
                    .await?;
                Some((n.id, status.leading_groups))
            });
        let mut leader_of: HashMap<u64, u64> = HashMap::new();
        for (node, groups) in futures::future::join_all(calls).await.into_iter().flatten() {
            for g in groups {
                leader_of.insert(g, node);
            }
        }
        for (sh, d) in s.shards.iter().zip(desc.shards.iter_mut()) {
            if d.leader == 0
                && let Some(l) = leader_of.get(&sh.group)
            {
                d.leader = *l;
            }
        }
        desc
    }

    pub(crate) fn shard<'a>(
        &self,
        s: &'a StreamInfo,
        id: &str,
    ) -> Result<&'a ShardInfo, ServiceError> {
        let shard: ShardId = id.parse()?;
        s.shards.get(shard.0 as usize).ok_or_else(|| {
            ServiceError::not_found(format!(
                "shard_id: stream {:?} has no shard {shard} (it has {} shards)",
                s.name,
                s.shards.len()
            ))
        })
    }

    /// The stream, once it takes writes. A node whose view of the controller lags behind may
    /// still see a new stream as CREATING after another node reported it ACTIVE, so a CREATING
    /// stream is looked up again for up to [`CREATING_WAIT`] before the request is refused.
    async fn writable_stream(&self, name: &str) -> Result<StreamInfo, ServiceError> {
        let deadline = Instant::now() + CREATING_WAIT;
        let mut changed = self.controller_applied.clone();
        loop {
            let s = self.stream(name)?;
            if s.status == StreamStatus::Active {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::new(
                    ErrorCode::ResourceInUse,
                    format!("stream_name: stream \"{}\" is still CREATING", s.name),
                ));
            }
            let _ = tokio::time::timeout(left, changed.changed()).await;
        }
    }

    // -----------------------------------------------------------------------------------------
    // Shard routing
    // -----------------------------------------------------------------------------------------

    /// Finds the shard's leader: this node, or the addresses to forward to.
    pub async fn route(&self, shard: &ShardInfo, hops: u32) -> Result<Route, ServiceError> {
        // Only a request this node does not lead needs the other nodes' addresses.
        let addresses = || -> Result<HashMap<u64, String>, ServiceError> {
            Ok(self
                .nodes()?
                .into_iter()
                .map(|n| (n.id, n.address))
                .collect())
        };
        let mut why = "no node on the forwarding path hosts it".to_string();
        let mut known = None;
        if let Ok(group) = self.engine.group(GroupId(shard.group)) {
            if group.leader().is_none() {
                let _ = group.wait_for_leader(LEADER_WAIT).await;
            }
            if group.role() == Role::Leader {
                return Ok(Route::Local(group));
            }
            let status = group.status();
            let nodes = known.insert(addresses()?);
            // A replica that has not yet received the group's membership knows the leader's id
            // but not its address: the controller knows every node's address.
            let leader_addr = status.leader.and_then(|l| {
                status
                    .addresses
                    .get(&l)
                    .or_else(|| nodes.get(&l.0))
                    .cloned()
            });
            if let Some(addr) = leader_addr {
                if hops >= MAX_HOPS {
                    return Err(ServiceError::unavailable(format!(
                        "shard {}: its leader moved while the request was forwarded; retry",
                        ShardId(shard.index)
                    )));
                }
                return Ok(Route::Remote(vec![addr]));
            }
            why = format!(
                "no leader yet (an election is under way or too few replicas are up; node {} sees role {:?} in term {})",
                self.node_id(),
                status.role,
                status.term
            );
        }
        if hops >= MAX_HOPS {
            return Err(ServiceError::unavailable(format!(
                "shard {}: {why}; retry",
                ShardId(shard.index)
            )));
        }
        // Ask the other replicas, which may know the leader.
        let nodes = match known {
            Some(nodes) => nodes,
            None => addresses()?,
        };
        let addrs: Vec<String> = shard
            .replicas
            .iter()
            .filter(|r| **r != self.node_id())
            .filter_map(|r| nodes.get(r).cloned())
            .collect();
        if addrs.is_empty() {
            return Err(ServiceError::unavailable(format!(
                "shard {}: {why}",
                ShardId(shard.index)
            )));
        }
        Ok(Route::Remote(addrs))
    }

    /// Tries `call` on each address in turn, moving on only when a node cannot be reached.
    async fn forward<T, F, Fut>(&self, addrs: &[String], call: F) -> Result<T, ServiceError>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        self.forward_or_refused(addrs, call)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Core::forward`], also saying, on failure, whether every node tried refused the
    /// connection: then the request certainly reached none of them.
    async fn forward_or_refused<T, F, Fut>(
        &self,
        addrs: &[String],
        mut call: F,
    ) -> Result<T, (ServiceError, bool)>
    where
        F: FnMut(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = ServiceError::unavailable("no replica to forward to");
        let mut all_refused = true;
        for addr in addrs {
            match call(addr.clone()).await {
                Ok(v) => {
                    let _ = FORWARDED_TO.try_with(|f| *f.borrow_mut() = Some(addr.clone()));
                    return Ok(v);
                }
                Err(s) => {
                    all_refused &= riptide_proto::connection_refused(&s);
                    let e = ServiceError::from(s);
                    // A node that answered with anything else than "unreachable" has decided.
                    if e.code != ErrorCode::Unavailable {
                        return Err((e, false));
                    }
                    last = e;
                }
            }
        }
        Err((last, all_refused && !addrs.is_empty()))
    }

    // -----------------------------------------------------------------------------------------
    // Writes
    // -----------------------------------------------------------------------------------------

    /// Puts one record: PutRecords with one entry, its fields named without the `records[0].`
    /// prefix. `sequence_number_for_ordering` is checked for form only: sequence numbers always
    /// increase within a shard, which is what Kinesis promises for it.
    pub async fn put_record(
        &self,
        stream: &str,
        entry: v1::PutRecordsEntry,
        sequence_number_for_ordering: Option<&str>,
        hops: u32,
    ) -> Result<(ShardId, SequenceNumber), ServiceError> {
        if let Some(s) = sequence_number_for_ordering {
            SequenceNumber::parse(s, "sequence_number_for_ordering")?;
        }
        let mut results = self
            .put_records(stream, vec![entry], hops)
            .await
            .map_err(|mut e| {
                e.message = e.message.replace("records[0].", "");
                e
            })?;
        results
            .pop()
            .ok_or_else(|| ServiceError::internal("no result for the record"))?
    }

    /// Puts records; one result per record, in order. Bad input fails the whole call.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<v1::PutRecordsEntry>,
        hops: u32,
    ) -> Result<Vec<Result<(ShardId, SequenceNumber), ServiceError>>, ServiceError> {
        let mut total = 0usize;
        for (i, r) in records.iter().enumerate() {
            // The field prefix is formatted only for an error.
            validate::record(
                format_args!("records[{i}]."),
                &r.partition_key,
                r.data.len(),
            )?;
            total += r.data.len() + r.partition_key.len();
        }
        validate::put_records(records.len(), total)?;
        let info = self.writable_stream(stream).await?;
        let ranges: Vec<_> = info.shards.iter().map(ShardInfo::range).collect();
        // Shard index -> (positions in the request, records).
        let mut by_shard: BTreeMap<usize, (Vec<usize>, Vec<RoutedRecord>)> = BTreeMap::new();
        for (i, r) in records.into_iter().enumerate() {
            let hash_key = match &r.explicit_hash_key {
                Some(k) => riptide_proto::parse_hash_key(k, "explicit_hash_key")
                    .map_err(|e| ServiceError::invalid(format!("records[{i}].{e}")))?,
                None => riptide_proto::hash_key_of(&r.partition_key),
            };
            let shard = riptide_proto::shard_for(&ranges, hash_key).ok_or_else(|| {
                ServiceError::internal(format!("no shard of {stream:?} holds hash key {hash_key}"))
            })?;
            let slot = by_shard.entry(shard).or_default();
            slot.0.push(i);
            slot.1.push(RoutedRecord {
                partition_key: r.partition_key,
                data: r.data,
                hash_key,
            });
        }
        let count = by_shard.values().map(|(p, _)| p.len()).sum();
        let puts = by_shard.into_iter().map(|(shard, (positions, recs))| {
            let info = &info;
            async move {
                let sh = &info.shards[shard];
                let n = recs.len();
                let results = match self.put_shard(&info.name, sh, recs, hops).await {
                    Ok(r) => r,
                    Err(e) => vec![Err(e); n],
                };
                (positions, ShardId(sh.index), results)
            }
        });
        let mut out: Vec<Option<Result<(ShardId, SequenceNumber), ServiceError>>> =
            vec![None; count];
        for (positions, shard, results) in futures::future::join_all(puts).await {
            for (pos, r) in positions.into_iter().zip(results) {
                out[pos] = Some(r.map(|seq| (shard, seq)));
            }
        }
        Ok(out
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(ServiceError::internal("record lost its result"))))
            .collect())
    }

    /// Writes records of one shard: as one Raft entry when this node leads it, forwarded to its
    /// leader otherwise.
    async fn put_shard(
        &self,
        stream: &str,
        shard: &ShardInfo,
        records: Vec<RoutedRecord>,
        hops: u32,
    ) -> Result<Vec<Result<SequenceNumber, ServiceError>>, ServiceError> {
        // A write refused before it was appended (a leader whose lease is not established
        // yet, or one that just stepped down) is routed and sent again, for a little while.
        let deadline = Instant::now() + LEADER_WAIT;
        let mut charged = false;
        loop {
            let group = match self.route(shard, hops).await? {
                Route::Local(group) => group,
                Route::Remote(addrs) => {
                    match self.put_remote(stream, &records, &addrs, hops).await {
                        // The leader this node knows is gone (its connection is refused, so
                        // the records never reached it): wait for the next leader instead of
                        // failing, as for a local NotLeader.
                        Err((_, true)) if Instant::now() < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                        other => return other.map_err(|(e, _)| e),
                    }
                }
            };
            if !charged {
                self.take_quota(shard, &records)?;
                charged = true;
            }
            let entry = ShardCommand::encode_put(
                self.clock.now_ms(),
                records
                    .iter()
                    .map(|r| (r.partition_key.as_str(), r.data.as_ref())),
            );
            match group.write(entry).await {
                Ok(out) => {
                    return Ok((0..records.len() as u32)
                        .map(|pos| Ok(SequenceNumber::from_entry(out.index, pos)))
                        .collect());
                }
                Err(RaftError::NotLeader { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(RaftError::Discarded { .. }) => {
                    return Err(ServiceError::unavailable(format!(
                        "shard {}: leadership changed during the write; the records may or may not have been stored",
                        ShardId(shard.index)
                    )));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Forwards one shard's records to the node that leads it (or may know who does).
    async fn put_remote(
        &self,
        stream: &str,
        records: &[RoutedRecord],
        addrs: &[String],
        hops: u32,
    ) -> Result<Vec<Result<SequenceNumber, ServiceError>>, (ServiceError, bool)> {
        let req = v1::PutRecordsRequest {
            stream_name: stream.to_string(),
            records: records
                .iter()
                .map(|r| v1::PutRecordsEntry {
                    data: r.data.clone(),
                    partition_key: r.partition_key.clone(),
                    explicit_hash_key: Some(r.hash_key.to_string()),
                })
                .collect(),
            numeric_positions: true,
        };
        let resp = self
            .forward_or_refused(addrs, |addr| {
                let req = req.clone();
                async move {
                    let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                    c.put_records(forwarded(req, hops + 1)).await
                }
            })
            .await?
            .into_inner();
        Ok(resp
            .records
            .into_iter()
            .map(|r| {
                if r.error_code.is_empty() {
                    r.position().map(|(_, seq)| seq).map_err(ServiceError::from)
                } else {
                    Err(ServiceError::new(
                        r.error_code.parse().unwrap_or(ErrorCode::Internal),
                        r.error_message,
                    ))
                }
            })
            .collect())
    }

    /// Charges a write against the shard's quota, when one is configured.
    fn take_quota(&self, shard: &ShardInfo, records: &[RoutedRecord]) -> Result<(), ServiceError> {
        let limits = &self.config.limits;
        let (rps, bps) = (
            f64::from(limits.shard_write_records_per_sec),
            limits.shard_write_bytes_per_sec as f64,
        );
        if rps == 0.0 && bps == 0.0 {
            return Ok(());
        }
        let n = records.len() as f64;
        let bytes: f64 = records
            .iter()
            .map(|r| (r.data.len() + r.partition_key.len()) as f64)
            .sum();
        let mut quotas = self.quotas.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let b = quotas.entry(shard.group).or_insert(Bucket {
            records: rps,
            bytes: bps,
            at: now,
        });
        let dt = now.duration_since(b.at).as_secs_f64();
        b.at = now;
        b.records = (b.records + dt * rps).min(rps);
        b.bytes = (b.bytes + dt * bps).min(bps);
        if rps > 0.0 && b.records < n {
            return Err(ServiceError::new(
                ErrorCode::Throttled,
                format!(
                    "shard {}: write rate over {} records/s (limits.shard_write_records_per_sec)",
                    ShardId(shard.index),
                    limits.shard_write_records_per_sec
                ),
            ));
        }
        if bps > 0.0 && b.bytes < bytes {
            return Err(ServiceError::new(
                ErrorCode::Throttled,
                format!(
                    "shard {}: write rate over {} bytes/s (limits.shard_write_bytes_per_sec)",
                    ShardId(shard.index),
                    limits.shard_write_bytes_per_sec
                ),
            ));
        }
        b.records -= n;
        b.bytes -= bytes;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Reads
    // -----------------------------------------------------------------------------------------

    pub async fn get_shard_iterator(
        &self,
        req: v1::GetShardIteratorRequest,
        hops: u32,
    ) -> Result<String, ServiceError> {
        let info = self.stream(&req.stream_name)?;
        let shard = self.shard(&info, &req.shard_id)?;
        let kind = v1::ShardIteratorType::try_from(req.shard_iterator_type)
            .ok()
            .filter(|k| *k != v1::ShardIteratorType::Unspecified)
            .ok_or_else(|| {
                ServiceError::invalid(format!(
                    "shard_iterator_type: must be TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER or AT_TIMESTAMP, got {}",
                    req.shard_iterator_type
                ))
            })?;
        let seq = match kind {
            v1::ShardIteratorType::AtSequenceNumber
            | v1::ShardIteratorType::AfterSequenceNumber => Some(SequenceNumber::parse(
                &req.starting_sequence_number,
                "starting_sequence_number",
            )?),
            _ => None,
        };
        let group = match self.route(shard, hops).await? {
            Route::Local(g) => g,
            Route::Remote(addrs) => {
                return Ok(self
                    .forward(&addrs, |addr| {
                        let req = req.clone();
                        async move {
                            let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                            c.get_shard_iterator(forwarded(req, hops + 1)).await
                        }
                    })
                    .await?
                    .into_inner()
                    .shard_iterator);
            }
        };
        let view = group.view();
        let last = ShardReader::last(view)?;
        let next_after_last = last.map(|(s, _)| s.0 + 1).unwrap_or(0);
        let check = |s: SequenceNumber| match last {
            Some((l, _)) if s <= l => Ok(()),
            _ => Err(ServiceError::invalid(format!(
                "starting_sequence_number: {s} is beyond the newest record of shard {} ({})",
                ShardId(shard.index),
                last.map(|(l, _)| l.to_string())
                    .unwrap_or_else(|| "none yet".into())
            ))),
        };
        let position = match (kind, seq) {
            (v1::ShardIteratorType::TrimHorizon, _) => 0,
            (v1::ShardIteratorType::Latest, _) => next_after_last,
            (v1::ShardIteratorType::AtSequenceNumber, Some(s)) => {
                check(s)?;
                s.0
            }
            (v1::ShardIteratorType::AfterSequenceNumber, Some(s)) => {
                check(s)?;
                s.0 + 1
            }
            (v1::ShardIteratorType::AtTimestamp, _) => {
                ShardReader::first_at_or_after(view, req.timestamp_ms)?
                    .map(|s| s.0)
                    .unwrap_or(next_after_last)
            }
            _ => return Err(ServiceError::internal("iterator type checked above")),
        };
        Ok(ShardIterator {
            stream: info.name.clone(),
            stream_created_ms: info.created_ms,
            shard: ShardId(shard.index),
            position,
            issued_ms: self.clock.now_ms(),
        }
        .encode())
    }

    pub async fn get_records(
        &self,
        token: &str,
        limit: u32,
        numeric_positions: bool,
        hops: u32,
    ) -> Result<v1::GetRecordsResponse, ServiceError> {
        let limit = validate::get_limit(limit)?;
        let it = ShardIterator::decode(token, self.clock.now_ms()).map_err(|e| match e {
            IteratorError::Malformed(_) => ServiceError::invalid(e.to_string()),
            IteratorError::Expired { .. } => {
                ServiceError::new(ErrorCode::ExpiredIterator, e.to_string())
            }
        })?;
        let info = self.stream(&it.stream)?;
        if info.created_ms != it.stream_created_ms {
            return Err(ServiceError::not_found(format!(
                "shard_iterator: stream {:?} was deleted after the iterator was issued",
                it.stream
            )));
        }
        let shard = self.shard(&info, &it.shard.to_string())?;
        let group = match self.route(shard, hops).await? {
            Route::Local(g) => g,
            Route::Remote(addrs) => {
                let req = v1::GetRecordsRequest {
                    shard_iterator: token.to_string(),
                    limit: limit as u32,
                    numeric_positions,
                };
                return Ok(self
                    .forward(&addrs, |addr| {
                        let req = req.clone();
                        async move {
                            let mut c = self.peers.stream(&addr).map_err(tonic::Status::from)?;
                            c.get_records(forwarded(req, hops + 1)).await
                        }
                    })
                    .await?
                    .into_inner());
            }
        };
        let view = group.view().clone();
        let position = it.position;
        let read = move || {
            let records =
                ShardReader::read(&view, position, limit, validate::MAX_GET_RECORDS_BYTES)?;
            let last = ShardReader::last(&view)?;
            Ok::<_, riptide_raft::StorageError>((records, last))
        };
        // Readers at the tail (subscriptions, live consumers) read entries still in memory:
        // no disk to wait for, so no hand-off to the blocking pool either.
        let (records, last) = if group
            .view()
            .log_cached_from(SequenceNumber(position).log_index())
        {
            read()?
        } else {
            tokio::task::spawn_blocking(read)
                .await
                .map_err(|e| ServiceError::internal(format!("read task failed: {e}")))??
        };
        let next = records
            .last()
            .map(|r| r.sequence_number.0 + 1)
            .unwrap_or(it.position);
        let millis_behind_latest = match (records.last(), last) {
            (Some(r), Some((l, at))) if r.sequence_number < l => at.saturating_sub(r.arrival_ms),
            _ => 0,
        };
        Ok(v1::GetRecordsResponse {
            records: records
                .into_iter()
                .map(|r| {
                    let (sequence_number, sequence) = if numeric_positions {
                        (String::new(), r.sequence_number.0)
                    } else {
                        (r.sequence_number.to_string(), 0)
                    };
                    v1::Record {
                        sequence_number,
                        approximate_arrival_timestamp_ms: r.arrival_ms,
                        data: r.data,
                        partition_key: r.partition_key,
                        sequence,
                    }
                })
                .collect(),
            next_shard_iterator: ShardIterator {
                position: next,
                issued_ms: self.clock.now_ms(),
                ..it
            }
            .encode(),
            millis_behind_latest,
        })
    }

    // -----------------------------------------------------------------------------------------
    // Administration
    // -----------------------------------------------------------------------------------------

    /// Node `id`'s own line of the cluster status (a `local_only` ClusterStatus at `address`);
    /// `None` when it does not answer within `timeout`, or another node answers there.
    pub async fn probe_node(
        &self,
        id: u64,
        address: &str,
        timeout: Duration,
    ) -> Option<v1::NodeStatus> {
        let call = async {
            let mut req = tonic::Request::new(v1::ClusterStatusRequest { local_only: true });
            req.set_timeout(timeout);
            self.peers
                .admin(address)
                .ok()?
                .cluster_status(req)
                .await
                .ok()
        };
        tokio::time::timeout(timeout, call)
            .await
            .ok()
            .flatten()?
            .into_inner()
            .nodes
            .into_iter()
            .next()
            .filter(|s| s.node_id == id)
    }

    /// This node's own line of the cluster status.
    pub fn local_status(&self) -> v1::NodeStatus {
        let mut leading_groups = Vec::new();
        let mut replicas = 0;
        for id in self.engine.group_ids() {
            if id == CONTROLLER_GROUP {
                continue;
            }
            replicas += 1;
            if self
                .engine
                .group(id)
                .is_ok_and(|g| g.status().role == Role::Leader)
            {
                leading_groups.push(id.0);
            }
        }
        let voter = self
            .controller()
            .map(|g| g.status().voters.contains(&NodeId(self.node_id())))
            .unwrap_or(false);
        let draining = self
            .nodes()
            .ok()
            .and_then(|nodes| nodes.into_iter().find(|n| n.id == self.node_id()))
            .is_some_and(|n| n.draining);
        v1::NodeStatus {
            node_id: self.node_id(),
            address: self.config.advertised().to_string(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
            up: true,
            shard_leaders: leading_groups.len() as u32,
            shard_replicas: replicas,
            controller_voter: voter,
            draining,
            since_last_answer_ms: None,
            leading_groups,
        }
    }

    pub async fn cluster_status(
        &self,
        local_only: bool,
    ) -> Result<v1::ClusterStatusResponse, ServiceError> {
        let controller = self.controller()?;
        let streams = self.streams()?;
        let mut out = v1::ClusterStatusResponse {
            nodes: vec![self.local_status()],
            controller_leader: controller.leader().map(|l| l.0).unwrap_or(0),
            streams: streams.len() as u32,
            shards: streams.iter().map(|s| s.shards.len() as u32).sum(),
        };
        if local_only {
            return Ok(out);
        }
        let nodes = self.nodes()?;
        let draining: HashMap<u64, bool> = nodes.iter().map(|n| (n.id, n.draining)).collect();
        let probes = nodes
            .into_iter()
            .filter(|n| n.id != self.node_id())
            .map(|n| async move {
                match self
                    .probe_node(n.id, &n.address, Duration::from_secs(1))
                    .await
                {
                    Some(s) => s,
                    None => v1::NodeStatus {
                        node_id: n.id,
                        address: n.address,
                        region: n.region,
                        zone: n.zone,
                        up: false,
                        draining: n.draining,
                        ..Default::default()
                    },
                }
            });
        out.nodes.extend(futures::future::join_all(probes).await);
        out.nodes.sort_by_key(|n| n.node_id);
        // The controller's view of draining wins over a lagging node's own; liveness is known
        // only to the controller's leader.
        let now = Instant::now();
        let liveness = self.liveness();
        for n in &mut out.nodes {
            if let Some(d) = draining.get(&n.node_id) {
                n.draining = *d;
            }
            n.since_last_answer_ms = if n.node_id == self.node_id() && liveness.leading() {
                Some(0)
            } else {
                liveness
                    .since_last_answer(n.node_id, now)
                    .map(|d| d.as_millis() as u64)
            };
        }
        drop(liveness);
        Ok(out)
    }

    pub async fn transfer_shard_leader(
        &self,
        req: v1::TransferShardLeaderRequest,
        hops: u32,
    ) -> Result<(), ServiceError> {
        let info = self.stream(&req.stream_name)?;
        let shard = self.shard(&info, &req.shard_id)?;
        if !shard.replicas.contains(&req.to_node) {
            return Err(ServiceError::invalid(format!(
                "to_node: node {} holds no replica of {} (replicas: {:?})",
                req.to_node,
                ShardId(shard.index),
                shard.replicas
            )));
        }
        match self.route(shard, hops).await? {
            Route::Local(g) => Ok(g
                .transfer_leader(NodeId(req.to_node), Duration::from_secs(10))
                .await?),
            Route::Remote(addrs) => self
                .forward(&addrs, |addr| {
                    let req = req.clone();
                    async move {
                        let mut c = self.peers.admin(&addr).map_err(tonic::Status::from)?;
                        c.transfer_shard_leader(forwarded(req, hops + 1)).await
                    }
                })
                .await
                .map(|_| ()),
        }
    }

    /// Moves every leadership this node holds (shards and the controller) to other voters.
    pub async fn drain_local(&self) -> v1::DrainNodeResponse {
        let me = NodeId(self.node_id());
        let mut out = v1::DrainNodeResponse::default();
        for id in self.engine.group_ids() {
            let Ok(g) = self.engine.group(id) else {
                continue;
            };
            let status = g.status();
            if status.role != Role::Leader {
                continue;
            }
            let mut moved = false;
            for to in status.voters.iter().filter(|v| **v != me) {
                if g.transfer_leader(*to, Duration::from_secs(5)).await.is_ok() {
                    moved = true;
                    break;
                }
            }
            if id == CONTROLLER_GROUP {
                continue;
            }
            if moved {
                out.leaders_moved += 1;
            } else {
                out.leaders_remaining += 1;
            }
        }
        out
    }

    /// Drains `node`: moves its leaderships to other voters (on the node itself, where the
    /// request is forwarded), marks it draining in the controller (it takes no new replicas and
    /// the controller's leader moves its replicas to other nodes), then waits a little for the
    /// controller to place its replicas elsewhere. The moved replicas copy their data in the
    /// background; the node deletes its copies once their groups have let it go. Leaders move
    /// first so that the count of moved leaders is the drain's own (a leader whose replica is
    /// moved hands its leadership over by itself).
    pub async fn drain_node(
        &self,
        node: u64,
        hops: u32,
    ) -> Result<v1::DrainNodeResponse, ServiceError> {
        if hops > 0 && node == self.node_id() {
            // Forwarded by the node that handles the drain: only the leaderships move here.
            return Ok(self.drain_local().await);
        }
        let addr = self
            .nodes()?
            .into_iter()
            .find(|n| n.id == node)
            .map(|n| n.address)
            .ok_or_else(|| {
                ServiceError::not_found(format!(
                    "node_id: node {node} is not a member of the cluster"
                ))
            })?;
        let (before, _) = self.replicas_placed_on(node)?;
        let mut out = if node == self.node_id() {
            self.drain_local().await
        } else if hops >= MAX_HOPS {
            return Err(ServiceError::unavailable(
                "drain request forwarded too often",
            ));
        } else {
            match self
                .peers
                .admin(&addr)?
                .drain_node(forwarded(v1::DrainNodeRequest { node_id: node }, hops + 1))
                .await
            {
                Ok(r) => r.into_inner(),
                // A node that is down leads nothing: its groups have elected other leaders.
                Err(s) if riptide_proto::status_code(&s) == ErrorCode::Unavailable => {
                    tracing::info!(
                        node_id = node,
                        "drained node is unreachable; its replicas move without it"
                    );
                    v1::DrainNodeResponse::default()
                }
                Err(s) => return Err(s.into()),
            }
        };
        self.propose(
            &ControllerCommand::SetNodeDraining {
                id: node,
                draining: true,
            },
            hops,
        )
        .await?;
        let deadline = Instant::now() + DRAIN_PLACEMENT_WAIT;
        let mut changed = self.controller_applied.clone();
        let remaining = loop {
            let (remaining, movable) = self.replicas_placed_on(node)?;
            let left = deadline.saturating_duration_since(Instant::now());
            if movable == 0 || left.is_zero() {
                break remaining;
            }
            let _ = tokio::time::timeout(left, changed.changed()).await;
        };
        out.replicas_remaining = remaining;
        out.replicas_moved = before.saturating_sub(remaining);
        Ok(out)
    }

    /// Clears `node`'s draining mark: it may take replicas and leaderships again. Replicas the
    /// drain moved away stay where they are; the leader balancer gives the node its share of
    /// leaderships back.
    pub async fn undrain_node(&self, node: u64) -> Result<(), ServiceError> {
        self.propose(
            &ControllerCommand::SetNodeDraining {
                id: node,
                draining: false,
            },
            0,
        )
        .await
        .map(|_| ())
    }

    /// Shard replicas the controller places on `node`, and how many of them some other node
    /// could take (a registered node that is not draining and holds no replica of the shard).
    fn replicas_placed_on(&self, node: u64) -> Result<(u32, u32), ServiceError> {
        let takers: Vec<u64> = self
            .nodes()?
            .into_iter()
            .filter(|n| !n.draining && n.id != node)
            .map(|n| n.id)
            .collect();
        let (mut placed, mut movable) = (0, 0);
        for sh in self.streams()?.iter().flat_map(|s| &s.shards) {
            if sh.replicas.contains(&node) {
                placed += 1;
                if takers.iter().any(|t| !sh.replicas.contains(t)) {
                    movable += 1;
                }
            }
        }
        Ok((placed, movable))
    }

    /// This node's view of a group's membership (for a node that wants to know whether a group
    /// it no longer is placed in has let it go).
    pub fn group_membership(
        &self,
        group: u64,
    ) -> Result<v1::GroupMembershipResponse, ServiceError> {
        let g = self.engine.group(GroupId(group)).map_err(|_| {
            ServiceError::not_found(format!(
                "group_id: group {group} is not hosted on node {}",
                self.node_id()
            ))
        })?;
        let status = g.status();
        Ok(v1::GroupMembershipResponse {
            leader: status.role == Role::Leader,
            voters: status.voters.iter().map(|v| v.0).collect(),
            learners: status.learners.iter().map(|v| v.0).collect(),
        })
    }
}

fn reply(raw: &[u8]) -> Result<ControllerReply, ServiceError> {
    match decode_reply(raw) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(refusal)) => Err(ServiceError::new(refusal.code(), refusal.message)),
        Err(e) => Err(ServiceError::internal(format!(
            "controller reply not understood: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_of(n: u32) -> StreamInfo {
        StreamInfo {
            name: "s".into(),
            status: StreamStatus::Active,
            retention_hours: 24,
            created_ms: 1,
            shards: (0..n)
                .map(|i| ShardInfo {
                    index: i,
                    group: u64::from(i) + 1,
                    hash_start: 0,
                    hash_end: 0,
                    replicas: vec![1],
                    ready: true,
                })
                .collect(),
            mode: StreamMode::Provisioned,
            tags: BTreeMap::new(),
            preferred_leader_region: None,
        }
    }

    #[test]
    fn shard_pages_follow_the_exclusive_start() {
        let s = stream_of(5);
        let ids = |(page, more): (&[ShardInfo], bool)| {
            (page.iter().map(|sh| sh.index).collect::<Vec<_>>(), more)
        };
        assert_eq!(ids(Core::shards_page(&s, None, 2)), (vec![0, 1], true));
        assert_eq!(
            ids(Core::shards_page(&s, Some(ShardId(1)), 2)),
            (vec![2, 3], true)
        );
        assert_eq!(
            ids(Core::shards_page(&s, Some(ShardId(3)), 2)),
            (vec![4], false)
        );
        assert_eq!(
            ids(Core::shards_page(&s, Some(ShardId(4)), 2)),
            (vec![], false)
        );
        assert_eq!(
            ids(Core::shards_page(&s, Some(ShardId(u32::MAX)), 2)),
            (vec![], false)
        );
        assert_eq!(ids(Core::shards_page(&s, None, 100)).0.len(), 5);
    }
}
