//! One Raft group as the application sees it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::{ChangeMembers, Instant as _, ServerState};

use crate::error::RaftError;
use crate::store::GroupView;
use crate::types::{AppData, GroupId, NodeId, PeerNode, Raft, TypeConfig};

/// What a committed write produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// The log index of the entry: unique and increasing within the group, the same on every
    /// replica.
    pub index: u64,
    pub term: u64,
    /// The state machine's response.
    pub response: Bytes,
}

/// This replica's role in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Candidate,
    Learner,
    Shutdown,
}

/// A snapshot of a group's state on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    pub group: GroupId,
    pub node: NodeId,
    pub role: Role,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// Addresses of every member, voters and learners.
    pub addresses: BTreeMap<NodeId, String>,
}

/// Handle to one Raft group hosted on this node. Cheap to clone.
#[derive(Clone)]
pub struct Group {
    pub(crate) id: GroupId,
    pub(crate) node: NodeId,
    pub(crate) raft: Raft,
    pub(crate) view: GroupView,
    /// At most one membership change per group at a time.
    pub(crate) membership_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish()
    }
}

impl Group {
    pub fn id(&self) -> GroupId {
        self.id
    }

    /// Read access to the group's applied state on this node.
    pub fn view(&self) -> &GroupView {
        &self.view
    }

    /// Forms the group with `members` as its voters. Call on one member of a new group, after
    /// every member created the group. Does nothing on a group that is already initialized.
    pub async fn initialize(&self, members: BTreeMap<NodeId, String>) -> Result<(), RaftError> {
        if self
            .raft
            .is_initialized()
            .await
            .map_err(|e| self.stopped(e))?
        {
            return Ok(());
        }
        let nodes: BTreeMap<u64, PeerNode> = members
            .into_iter()
            .map(|(id, addr)| (id.0, PeerNode { addr }))
            .collect();
        match self.raft.initialize(nodes).await {
            Ok(()) => Ok(()),
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(RaftError::MembershipChange {
                group: self.id,
                reason: e.to_string(),
            }),
        }
    }

    /// Proposes `data` and waits until it is committed (durable on a majority) and applied on
    /// this node. Fails with [`RaftError::NotLeader`] when the entry was refused before it was
    /// appended (safe to send again), and with [`RaftError::Discarded`] when it was appended and
    /// then dropped (its fate is unknown).
    pub async fn write(&self, data: Bytes) -> Result<WriteOutcome, RaftError> {
        match self.raft.client_write(AppData(data)).await {
            Ok(resp) => Ok(WriteOutcome {
                index: resp.log_id.index,
                term: resp.log_id.leader_id.term,
                response: resp.data.0,
            }),
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(
        &self,
        e: openraft::errors::RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    ) -> RaftError {
        match e {
            // Refused before anything was appended (not the leader, a leadership transfer, or a
            // new leader whose lease is not established yet): safe to send again.
            openraft::errors::RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                RaftError::NotLeader {
                    group: self.id,
                    leader_hint: f.leader_id.map(NodeId),
                    leader_addr: f.leader_node.map(|n| n.addr),
                }
            }
            openraft::errors::RaftError::APIError(ClientWriteError::LogEntryDiscarded(_)) => {
                RaftError::Discarded { group: self.id }
            }
            openraft::errors::RaftError::APIError(other) => RaftError::MembershipChange {
                group: self.id,
                reason: other.to_string(),
            },
            openraft::errors::RaftError::Fatal(f) => self.stopped(f),
        }
    }

    fn stopped(&self, e: impl std::fmt::Display) -> RaftError {
        RaftError::Stopped {
            group: self.id,
            reason: e.to_string(),
        }
    }

    /// Waits until the entries committed so far by the leader are applied here, confirming
    /// with a quorum that this node still leads. After it returns, reads through
    /// [`Group::view`] see every write acknowledged before the call.
    pub async fn read_barrier(&self) -> Result<(), RaftError> {
        self.raft
            .ensure_linearizable(openraft::ReadPolicy::ReadIndex)
            .await
            .map(|_| ())
            .map_err(|e| match e.forward_to_leader() {
                Some(f) => RaftError::NotLeader {
                    group: self.id,
                    leader_hint: f.leader_id.map(NodeId),
                    leader_addr: f.leader_node.as_ref().map(|n| n.addr.clone()),
                },
                None => self.stopped(e),
            })
    }

    pub fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let role = role_of(m.state);
        let membership = m.membership_config.membership();
        GroupStatus {
            group: self.id,
            node: self.node,
            role,
            term: m.current_term,
            leader: m.current_leader.map(NodeId),
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|l| l.index),
            applied_index: m.last_applied.as_ref().map(|l| l.index),
            purged_index: m.purged.as_ref().map(|l| l.index),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index),
            voters: membership.voter_ids().map(NodeId).collect(),
            learners: membership.learner_ids().map(NodeId).collect(),
            addresses: membership
                .nodes()
                .map(|(id, n)| (NodeId(*id), n.addr.clone()))
                .collect(),
        }
    }

    /// This replica's role, without copying the rest of [`Group::status`] (for per-request
    /// routing).
    pub fn role(&self) -> Role {
        role_of(self.raft.metrics().borrow_watched().state)
    }

    /// On the leader, when each other member last acknowledged a heartbeat or an append
    /// (`None` for one that never did); `None` on any other replica. Two readings of a member
    /// are equal until it acknowledges again.
    pub fn follower_acks(&self) -> Option<BTreeMap<NodeId, Option<AckedAt>>> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.heartbeat.as_ref().map(|acks| {
            acks.iter()
                .filter(|(id, _)| **id != self.node.0)
                .map(|(id, at)| (NodeId(*id), at.as_ref().map(|t| AckedAt(**t))))
                .collect()
        })
    }

    /// The leader this replica knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.raft
            .metrics()
            .borrow_watched()
            .current_leader
            .map(NodeId)
    }

    /// Waits until this replica knows a leader, at most `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, RaftError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow_watched().current_leader {
                    return Ok(NodeId(l));
                }
                if rx.changed().await.is_err() {
                    return Err(self.stopped("metrics channel closed"));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RaftError::Timeout {
                group: self.id,
                what: format!("no leader within {timeout:?}"),
            })?
    }

    /// Waits until this replica has applied the entry at `index`, at most `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), RaftError> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if rx.borrow_watched().last_applied.as_ref().map(|l| l.index) >= Some(index) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(self.stopped("metrics channel closed"));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RaftError::Timeout {
                group: self.id,
                what: format!("entry {index} not applied within {timeout:?}"),
            })?
    }

    async fn change<F, Fut, T>(&self, f: F) -> Result<T, RaftError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, RaftError>>,
    {
        let _guard = self
            .membership_lock
            .try_lock()
            .map_err(|_| RaftError::MembershipChangeInProgress { group: self.id })?;
        f().await
    }

    /// Adds `node` as a learner and waits until it has caught up with the leader's log.
    /// Call on the leader. The node must already host the group (created, not initialized).
    pub async fn add_learner(&self, node: NodeId, addr: String) -> Result<(), RaftError> {
        self.change(|| async {
            self.raft
                .add_learner(node.0, PeerNode { addr }, true)
                .await
                .map(|_| ())
                .map_err(|e| self.write_error(e))
        })
        .await
    }

    /// Turns the learners `nodes` into voters. Call on the leader.
    pub async fn promote(&self, nodes: BTreeSet<NodeId>) -> Result<(), RaftError> {
        let ids: BTreeSet<u64> = nodes.iter().map(|n| n.0).collect();
        self.change(|| async {
            self.raft
                .change_membership(ChangeMembers::AddVoterIds(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| self.write_error(e))
        })
        .await
    }

    /// Makes `voters` the group's voters in one joint change: nodes of `voters` must already be
    /// members (learners are promoted), voters not in `voters` leave the group. Learners not in
    /// `voters` stay learners. Call on the leader.
    pub async fn set_voters(&self, voters: BTreeSet<NodeId>) -> Result<(), RaftError> {
        if voters.is_empty() {
            return Err(RaftError::MembershipChange {
                group: self.id,
                reason: "a group needs at least one voter".into(),
            });
        }
        let ids: BTreeSet<u64> = voters.iter().map(|n| n.0).collect();
        self.change(|| async {
            self.raft
                .change_membership(ChangeMembers::ReplaceAllVoters(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| self.write_error(e))
        })
        .await
    }

    /// Removes `nodes` from the group, voters or learners. Call on the leader.
    pub async fn remove(&self, nodes: BTreeSet<NodeId>) -> Result<(), RaftError> {
        let ids: BTreeSet<u64> = nodes.iter().map(|n| n.0).collect();
        let status = self.status();
        let voters: BTreeSet<u64> = ids
            .iter()
            .copied()
            .filter(|id| status.voters.contains(&NodeId(*id)))
            .collect();
        self.change(|| async {
            if !voters.is_empty() {
                self.raft
                    .change_membership(ChangeMembers::RemoveVoters(voters), false)
                    .await
                    .map_err(|e| self.write_error(e))?;
            }
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map(|_| ())
                .map_err(|e| self.write_error(e))
        })
        .await
    }

    /// Asks the leader to hand leadership to `to` and waits until `to` leads, at most
    /// `timeout`. Call on the leader.
    pub async fn transfer_leader(&self, to: NodeId, timeout: Duration) -> Result<(), RaftError> {
        if self.leader() == Some(to) {
            return Ok(());
        }
        if self.leader() != Some(self.node) {
            return Err(RaftError::NotLeader {
                group: self.id,
                leader_hint: self.leader(),
                leader_addr: None,
            });
        }
        let status = self.status();
        if !status.voters.contains(&to) {
            return Err(RaftError::MembershipChange {
                group: self.id,
                reason: format!("node {to} is not a voter of group {}", self.id),
            });
        }
        self.raft
            .trigger()
            .transfer_leader(to.0)
            .await
            .map_err(|e| self.stopped(e))?;
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if rx.borrow_watched().current_leader == Some(to.0) {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(self.stopped("metrics channel closed"));
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| RaftError::Timeout {
                group: self.id,
                what: format!("leadership did not move to node {to} within {timeout:?}"),
            })?
    }

    /// Builds a snapshot now (the log below it may then be purged).
    pub async fn trigger_snapshot(&self) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| self.stopped(e))
    }

    /// Purges the log up to `upto`, never past the last snapshot.
    pub async fn purge_log(&self, upto: u64) -> Result<(), RaftError> {
        self.raft
            .trigger()
            .purge_log(upto)
            .await
            .map_err(|e| self.stopped(e))
    }
}

/// When a follower's acknowledgement reached the leader (on the runtime's monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AckedAt(openraft::TokioInstant);

impl AckedAt {
    /// How long ago the acknowledgement arrived.
    pub fn elapsed(&self) -> Duration {
        openraft::TokioInstant::now().saturating_duration_since(self.0)
    }
}

fn role_of(state: ServerState) -> Role {
    match state {
        ServerState::Leader => Role::Leader,
        ServerState::Follower => Role::Follower,
        ServerState::Candidate => Role::Candidate,
        ServerState::Learner => Role::Learner,
        ServerState::Shutdown => Role::Shutdown,
    }
}
