//! Controller proposals: a command is committed by the controller's leader (here, or on the
//! node this node takes for the leader, forwarded through `NodeInternal`), and its reply is
//! returned once this node has applied it too, so that its own reads see the change.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_raft::{RaftError, Role};

use super::Core;
use super::routing::{self, MAX_HOPS};
use crate::controller::{ControllerCommand, ControllerReply, decode_reply};
use crate::error::ServiceError;

/// How long a proposal looks for a controller leader that takes it.
const PROPOSE_WAIT: Duration = Duration::from_secs(10);

/// The error of a command whose leader changed after it was appended.
fn may_have_been_applied() -> ServiceError {
    ServiceError::MayHaveBeenApplied {
        what: "the controller".into(),
        effect: "the change",
        done: "applied",
    }
}

impl Core {
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
    pub async fn propose(&self, cmd: &ControllerCommand) -> Result<ControllerReply, ServiceError> {
        let deadline = Instant::now() + PROPOSE_WAIT;
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
                    Err(RaftError::Discarded { .. }) => return Err(may_have_been_applied()),
                    Err(e) => return Err(e.into()),
                }
            }
            let mut targets: Vec<String> = status
                .leader
                .and_then(|l| status.addresses.get(&l).cloned())
                .into_iter()
                .collect();
            if targets.is_empty() && !routing::is_forwarded() {
                targets = self.controller_fallbacks();
            }
            if routing::hops() < MAX_HOPS {
                for addr in &targets {
                    let msg = v1::ControllerProposal {
                        command: cmd.encode().to_vec(),
                        hops: routing::hops() + 1,
                    };
                    let mut client = self.peers.internal(addr)?;
                    match client.propose_to_controller(routing::onward(msg)).await {
                        Ok(out) => {
                            let out = out.into_inner();
                            // Let local reads see the change; a lagging learner is no error.
                            let _ = group.wait_applied(out.index, Duration::from_secs(5)).await;
                            return reply(&out.reply);
                        }
                        Err(s) if riptide_proto::status_code(&s).is_retryable() => {
                            tracing::debug!(peer = %addr, "controller proposal not taken: {}", s.message());
                        }
                        Err(s) => return Err(s.into()),
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ServiceError::NoLeader {
                    what: "the controller".into(),
                    why: "no reachable leader (are a majority of its voters up?)".into(),
                });
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
    ) -> Result<v1::ControllerOutcome, ServiceError> {
        let cmd = ControllerCommand::decode(raw).map_err(|e| {
            ServiceError::invalid("command", format!("not a controller command: {e}"))
        })?;
        let group = self.controller()?;
        if group.status().role == Role::Leader {
            let out = group
                .write(self.at_leader(cmd).encode())
                .await
                .map_err(|e| match e {
                    // The forwarding node looks for the leader again.
                    RaftError::NotLeader { leader_hint, .. } => ServiceError::NotLeader {
                        what: "the controller".into(),
                        leader_hint: leader_hint.map(|n| n.0),
                    },
                    RaftError::Discarded { .. } => may_have_been_applied(),
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
            return Err(ServiceError::NoLeader {
                what: "the controller".into(),
                why: "no leader yet".into(),
            });
        };
        if routing::hops() >= MAX_HOPS {
            return Err(ServiceError::NotLeader {
                what: "the controller".into(),
                leader_hint: status.leader.map(|l| l.0),
            });
        }
        let msg = v1::ControllerProposal {
            command: raw.to_vec(),
            hops: routing::hops() + 1,
        };
        Ok(self
            .peers
            .internal(&addr)?
            .propose_to_controller(routing::onward(msg))
            .await?
            .into_inner())
    }

    /// What the controller's leader changes in a command before it commits it: a new stream's
    /// placements are made again with what only the leader knows, which nodes are down, so
    /// that no shard waits for a down node to form its group.
    fn at_leader(&self, mut cmd: ControllerCommand) -> ControllerCommand {
        if let ControllerCommand::CreateStream {
            placements,
            preferred_leader_region,
            ..
        } = &mut cmd
            && let Some(down) = self.down_nodes().filter(|down| !down.is_empty())
            && let Ok(again) = self.place_shards(
                placements.len() as u32,
                preferred_leader_region.as_deref(),
                &down,
            )
        {
            *placements = again;
        }
        cmd
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
}

/// The controller's reply to a command: its outcome, or its refusal as an error.
fn reply(raw: &[u8]) -> Result<ControllerReply, ServiceError> {
    match decode_reply(raw) {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(refusal)) => Err(ServiceError::Remote {
            code: refusal.code(),
            message: refusal.message,
        }),
        Err(e) => Err(ServiceError::internal(format!(
            "controller reply not understood: {e}"
        ))),
    }
}
