//! Ids, the application-facing state-machine trait and the engine's private openraft types.

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::error::StorageError;
use crate::store::{GroupBatch, GroupView};

/// Identifies a Raft group. Unique in a cluster; shards and the controller each have one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Identifies a node of the cluster. Never reused for another node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A committed application entry handed to [`StateMachine::apply`].
#[derive(Debug, Clone)]
pub struct AppliedEntry {
    /// The entry's Raft log index: the same on every replica, never reused within a group.
    pub index: u64,
    /// The term of the leader that proposed it.
    pub term: u64,
    /// What the application proposed.
    pub data: Bytes,
}

/// The application side of a Raft group.
///
/// The engine calls `apply` with committed entries in log order, exactly once per entry and
/// replica in the absence of crashes (after a crash, entries after the last durable apply are
/// applied again, so `apply` must be a deterministic function of the group's stored state and the
/// entries). Everything `apply` writes goes into `batch`, which the engine commits together with
/// the group's applied index, so the stored state and the applied index never disagree.
///
/// Snapshots are the engine's job: a snapshot of a group is every key the group's state machine
/// wrote, streamed in chunks from a point-in-time view. After a snapshot was installed, or when a
/// group is opened, the engine calls `restore` so that in-memory state can be rebuilt from the
/// stored data.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies `entries` (in log order) and returns one response per entry.
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError>;

    /// Rebuilds in-memory state from the stored state. Called when the group is opened and after
    /// a snapshot has replaced the stored state.
    fn restore(&mut self, view: &GroupView) -> Result<(), StorageError>;

    /// Called after the writes of an `apply` are stored and readable through the group's view
    /// (and after `restore`), so that readers woken from here see them. Does nothing by default.
    fn applied(&mut self) {}
}

/// Bytes proposed by the application, carried in a Raft entry.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppData(pub Bytes);

impl fmt::Debug for AppData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AppData({} bytes)", self.0.len())
    }
}

impl fmt::Display for AppData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0.len())
    }
}

/// The state machine's answer to one entry.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AppResponse(pub Bytes);

/// Where a member of a group can be reached.
#[derive(Clone, Default, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PeerNode {
    pub addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.addr)
    }
}

openraft::declare_raft_types!(
    /// The engine's openraft type configuration. Private to this crate.
    pub(crate) TypeConfig:
        D = AppData,
        R = AppResponse,
        NodeId = u64,
        Node = PeerNode,
);

pub(crate) type Raft = openraft::Raft<TypeConfig, crate::store::state_machine::GroupStateMachine>;
pub(crate) type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub(crate) type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub(crate) type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
pub(crate) type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub(crate) type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
