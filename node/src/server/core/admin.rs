//! Cluster administration: the cluster status (this node's own line, probes of the others),
//! shard leader transfers, draining and undraining nodes, and a group's membership as this node
//! sees it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_proto::{ErrorCode, ShardId};
use riptide_raft::{GroupId, NodeId, Role};

use super::Core;
use super::routing::{self, MAX_HOPS, Route};
use crate::controller::{CONTROLLER_GROUP, ControllerCommand};
use crate::error::ServiceError;

/// How long a drain waits for the controller to place the node's replicas elsewhere.
const DRAIN_PLACEMENT_WAIT: Duration = Duration::from_secs(5);

impl Core {
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

    /// Elections of this node's replicas and the heartbeat gaps they saw.
    fn election_counters(&self) -> v1::ElectionCounters {
        let s = self.engine.election_stats();
        v1::ElectionCounters {
            timeout_elections: s.timeout_elections,
            transfer_elections: s.transfer_elections,
            dead_leaders_noticed: s.dead_leaders_noticed,
            heartbeat_gap_bounds_ms: riptide_raft::HEARTBEAT_GAP_BOUNDS_MS.to_vec(),
            heartbeat_gaps: s.heartbeat_gaps,
            longest_heartbeat_gap_ms: s.longest_heartbeat_gap_ms,
        }
    }

    /// This node's own line of the cluster status. A node whose storage failed reports itself
    /// down, with the reason.
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
        let storage_failure = self.storage_failure();
        if storage_failure.is_some() {
            // Its groups stopped with the storage: it leads nothing it could serve.
            leading_groups.clear();
        }
        v1::NodeStatus {
            node_id: self.node_id(),
            address: self.config.advertised().to_string(),
            region: self.config.region.clone(),
            zone: self.config.zone.clone(),
            up: storage_failure.is_none(),
            shard_leaders: leading_groups.len() as u32,
            shard_replicas: replicas,
            controller_voter: voter,
            draining,
            since_last_answer_ms: None,
            leading_groups,
            storage_failure: storage_failure.unwrap_or_default(),
            elections: Some(self.election_counters()),
        }
    }

    /// Every node's line (`local_only`: this node's alone), the controller's leader and the
    /// stream and shard counts.
    pub async fn cluster_status(
        &self,
        local_only: bool,
    ) -> Result<v1::ClusterStatusResponse, ServiceError> {
        if local_only && self.storage_failure().is_some() {
            // The liveness probe of a node whose storage failed: its own line says so, and the
            // rest is what can still be read.
            let (streams, shards) = self
                .streams()
                .map(|s| {
                    (
                        s.len() as u32,
                        s.iter().map(|s| s.shards.len() as u32).sum(),
                    )
                })
                .unwrap_or_default();
            return Ok(v1::ClusterStatusResponse {
                nodes: vec![self.local_status()],
                controller_leader: self
                    .controller()
                    .ok()
                    .and_then(|c| c.leader())
                    .map_or(0, |l| l.0),
                streams,
                shards,
            });
        }
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

    /// Moves the leadership of a shard to its replica on `to_node` (on the shard's leader,
    /// where the request is forwarded).
    pub async fn transfer_shard_leader(
        &self,
        req: v1::TransferShardLeaderRequest,
    ) -> Result<(), ServiceError> {
        let info = self.stream(&req.stream_name)?;
        let shard = self.shard(&info, &req.shard_id)?;
        if !shard.replicas.contains(&req.to_node) {
            return Err(ServiceError::invalid(
                "to_node",
                format!(
                    "node {} holds no replica of {} (replicas: {:?})",
                    req.to_node,
                    ShardId(shard.index),
                    shard.replicas
                ),
            ));
        }
        match self.route(shard).await? {
            Route::Local(g) => Ok(g
                .transfer_leader(NodeId(req.to_node), Duration::from_secs(10))
                .await?),
            Route::Remote(addrs) => self
                .forward(&addrs, |addr| {
                    let req = req.clone();
                    async move {
                        let mut c = self.peers.admin(&addr).map_err(tonic::Status::from)?;
                        c.transfer_shard_leader(routing::onward(req)).await
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
    pub async fn drain_node(&self, node: u64) -> Result<v1::DrainNodeResponse, ServiceError> {
        if routing::is_forwarded() && node == self.node_id() {
            // Forwarded by the node that handles the drain: only the leaderships move here.
            return Ok(self.drain_local().await);
        }
        let addr = self
            .nodes()?
            .into_iter()
            .find(|n| n.id == node)
            .map(|n| n.address)
            .ok_or_else(|| {
                ServiceError::not_found(
                    "node_id",
                    format!("node {node} is not a member of the cluster"),
                )
            })?;
        let (before, _) = self.replicas_placed_on(node)?;
        let mut out = if node == self.node_id() {
            self.drain_local().await
        } else if routing::hops() >= MAX_HOPS {
            return Err(ServiceError::unavailable(
                "drain request forwarded too often",
            ));
        } else {
            match self
                .peers
                .admin(&addr)?
                .drain_node(routing::onward(v1::DrainNodeRequest { node_id: node }))
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
        self.propose(&ControllerCommand::SetNodeDraining {
            id: node,
            draining: true,
        })
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
        self.propose(&ControllerCommand::SetNodeDraining {
            id: node,
            draining: false,
        })
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
            ServiceError::not_found(
                "group_id",
                format!("group {group} is not hosted on node {}", self.node_id()),
            )
        })?;
        let status = g.status();
        Ok(v1::GroupMembershipResponse {
            leader: status.role == Role::Leader,
            voters: status.voters.iter().map(|v| v.0).collect(),
            learners: status.learners.iter().map(|v| v.0).collect(),
        })
    }
}
