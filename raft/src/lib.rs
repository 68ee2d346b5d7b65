//! riptide-raft: the multi-raft engine every Riptide node runs.
//!
//! One node hosts many Raft groups (one per shard, plus the controller group). They share one
//! RocksDB ([`store::NodeStore`]) whose few column families hold every group's log, vote and
//! state-machine data under keys prefixed by the group id, and one group-commit log writer that
//! turns the appends and votes of all groups into one write batch and one WAL sync. Groups talk
//! to their peers over one tonic service per node ([`transport`]); every message names its
//! group and its target node.
//!
//! The engine is built on openraft, which stays private to this crate: no openraft type appears
//! in the public API, so the node crate and the wire protocol of other crates do not change when
//! openraft does. Applications plug in through [`StateMachine`], which applies committed
//! entries into a group-scoped write batch; snapshots of a group are streamed in chunks straight
//! from a RocksDB snapshot of the group's key range, so no snapshot is ever held in memory.
//!
//! This crate must not depend on the node, client or firehose crates.

mod engine;
mod error;
mod group;
mod settings;
pub mod store;
pub mod transport;
mod types;

pub use engine::{EngineConfig, RaftEngine, StateMachineFactory};
pub use error::{RaftError, RaftErrorKind, StorageError};
pub use group::{AckedAt, Group, GroupStatus, Role, WriteOutcome};
pub use settings::{GroupSettings, HTTP2_MAX_FRAME_BYTES, TransportSettings};
pub use store::{
    DataFamily, GroupBatch, GroupCommit, GroupView, NodeStore, RecordReads, StoreClosed,
    WriterStats,
};
pub use transport::{ElectionStats, HEARTBEAT_GAP_BOUNDS_MS};
pub use types::{AppliedEntry, GroupId, NodeId, StateMachine};
