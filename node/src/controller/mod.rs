//! The controller: a metadata Raft group (group 0) that every node hosts, as a voter on the
//! first three nodes and as a learner elsewhere, so every node can read the cluster's metadata
//! locally. It holds the nodes (address, region, zone, draining), the streams, their shards
//! with hash-key ranges, and where each shard's replicas live. Nodes act on it in
//! [`crate::server`]'s reconciler: each node creates the shard groups placed on it and removes
//! those no longer placed; shard leaders bring their group's membership to the placement; the
//! controller's leader replaces the replicas of nodes that stopped answering or are draining
//! ([`repair`]).

pub mod balance;
pub mod placement;
pub mod repair;

use std::collections::BTreeMap;

use bytes::Bytes;
use riptide_proto::{ErrorCode, HashKeyRange, split_hash_space};
use riptide_raft::{
    AppliedEntry, DataFamily, GroupBatch, GroupId, GroupView, StateMachine, StorageError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// The controller's Raft group.
pub const CONTROLLER_GROUP: GroupId = GroupId(0);

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: u64,
    /// The gRPC address clients and other nodes use.
    pub address: String,
    pub region: String,
    pub zone: String,
    /// Set by a drain: the node takes no new replicas and the controller's leader moves its
    /// replicas to other nodes. Registering again keeps it.
    #[serde(default)]
    pub draining: bool,
}

/// A stream's lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamStatus {
    Creating,
    Active,
}

/// How a stream's capacity is managed, as Kinesis names it. Riptide records the mode and reports
/// it; it does not scale an ON_DEMAND stream's shards by itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamMode {
    #[default]
    Provisioned,
    OnDemand,
}

/// A shard of a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub index: u32,
    /// The shard's Raft group.
    pub group: u64,
    pub hash_start: u128,
    pub hash_end: u128,
    /// Node ids, the first one forms the group.
    pub replicas: Vec<u64>,
    /// Whether the group has elected its first leader.
    pub ready: bool,
}

impl ShardInfo {
    pub fn range(&self) -> HashKeyRange {
        HashKeyRange {
            start: self.hash_start,
            end: self.hash_end,
        }
    }
}

/// A stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub name: String,
    pub status: StreamStatus,
    pub retention_hours: u32,
    pub created_ms: u64,
    pub shards: Vec<ShardInfo>,
    /// Streams stored before modes existed are PROVISIONED.
    #[serde(default)]
    pub mode: StreamMode,
    /// Tags by key; streams stored before tags existed have none.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// The region whose replicas lead the shards while that region has a usable replica
    /// (moved there by the leader balancer); `None` spreads leaders over every usable node.
    #[serde(default)]
    pub preferred_leader_region: Option<String>,
}

/// Limits the controller enforces when it applies a command, so that every replica decides
/// alike whatever the configuration of the node that proposed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CountLimits {
    pub max_streams: u32,
    pub max_shards: u32,
}

/// What the controller's log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerCommand {
    RegisterNode(NodeInfo),
    RemoveNode {
        id: u64,
    },
    CreateStream {
        name: String,
        retention_hours: u32,
        created_ms: u64,
        /// Replica node ids per shard; the shard count is its length.
        placements: Vec<Vec<u64>>,
        limits: CountLimits,
        #[serde(default)]
        mode: StreamMode,
        #[serde(default)]
        tags: BTreeMap<String, String>,
        #[serde(default)]
        preferred_leader_region: Option<String>,
    },
    ShardReady {
        stream: String,
        created_ms: u64,
        shard: u32,
    },
    DeleteStream {
        name: String,
    },
    SetRetention {
        name: String,
        hours: u32,
    },
    /// Sets the tags in `set` (replacing values of keys the stream has) and removes the keys in
    /// `remove`; refused when the stream would hold more than `max_tags`.
    UpdateTags {
        name: String,
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        max_tags: u32,
    },
    SetStreamMode {
        name: String,
        mode: StreamMode,
    },
    /// Sets (or clears) the region whose replicas should lead the stream's shards.
    SetPreferredLeaderRegion {
        name: String,
        region: Option<String>,
    },
    /// Marks a node draining (or not).
    SetNodeDraining {
        id: u64,
        draining: bool,
    },
    /// Moves one replica of a shard from node `from` to node `to`, in place in the replica list.
    /// Refused when it is stale: the stream was recreated, the shard is not ready yet (its first
    /// replica may still have to form the group), `from` no longer holds it, `to` already does,
    /// or `to` is unknown or draining.
    ReplaceReplica {
        stream: String,
        created_ms: u64,
        shard: u32,
        from: u64,
        to: u64,
    },
}

impl ControllerCommand {
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("controller commands always serialize"))
    }

    pub fn decode(raw: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(raw)
    }
}

/// A refused command: an [`ErrorCode`] name and a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub code: String,
    pub message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: String) -> Self {
        Self {
            code: code.name().into(),
            message,
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code.parse().unwrap_or(ErrorCode::Internal)
    }
}

/// The controller's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerReply {
    Done,
    Stream(StreamInfo),
}

pub type ReplyResult = Result<ControllerReply, Refusal>;

const NODE_PREFIX: &[u8] = b"n/";
const STREAM_PREFIX: &[u8] = b"s/";
const NEXT_GROUP: &[u8] = b"g";

fn node_key(id: u64) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()].concat()
}

fn stream_key(name: &str) -> Vec<u8> {
    [STREAM_PREFIX, name.as_bytes()].concat()
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    *end.last_mut().expect("non-empty prefix") += 1;
    end
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// Reads of the controller's applied state on this node.
pub struct ControllerView;

impl ControllerView {
    pub fn nodes(view: &GroupView) -> Result<Vec<NodeInfo>, StorageError> {
        Self::scan_json(view, NODE_PREFIX, "node record")
    }

    pub fn streams(view: &GroupView) -> Result<Vec<StreamInfo>, StorageError> {
        Self::scan_json(view, STREAM_PREFIX, "stream record")
    }

    pub fn stream(view: &GroupView, name: &str) -> Result<Option<StreamInfo>, StorageError> {
        view.get(DataFamily::Controller, &stream_key(name))?
            .map(|raw| serde_json::from_slice(&raw).map_err(|e| corrupt("stream record", e)))
            .transpose()
    }

    fn scan_json<T: serde::de::DeserializeOwned>(
        view: &GroupView,
        prefix: &[u8],
        what: &str,
    ) -> Result<Vec<T>, StorageError> {
        let mut out = Vec::new();
        let mut failure = None;
        view.scan(
            DataFamily::Controller,
            prefix,
            Some(&prefix_end(prefix)),
            |_, v| match serde_json::from_slice(v) {
                Ok(x) => {
                    out.push(x);
                    true
                }
                Err(e) => {
                    failure = Some(corrupt(what, e));
                    false
                }
            },
        )?;
        match failure {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}

/// The controller's state machine.
pub struct ControllerMachine {
    /// Bumped after every applied batch, to wake this node's reconciler.
    applied: std::sync::Arc<watch::Sender<u64>>,
}

impl ControllerMachine {
    pub fn new(applied: std::sync::Arc<watch::Sender<u64>>) -> Self {
        Self { applied }
    }

    fn apply_one(
        batch: &mut GroupBatch,
        view: &GroupView,
        pending: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
        cmd: ControllerCommand,
    ) -> Result<ReplyResult, StorageError> {
        // Reads see the applied state plus the writes of earlier commands in this batch.
        let get = |pending: &Vec<(Vec<u8>, Option<Vec<u8>>)>, key: &[u8]| match pending
            .iter()
            .rev()
            .find(|(k, _)| k == key)
        {
            Some((_, v)) => Ok(v.clone()),
            None => view.get(DataFamily::Controller, key),
        };
        let stream_of = |pending: &Vec<(Vec<u8>, Option<Vec<u8>>)>, name: &str| {
            get(pending, &stream_key(name))?
                .map(|raw| {
                    serde_json::from_slice::<StreamInfo>(&raw)
                        .map_err(|e| corrupt("stream record", e))
                })
                .transpose()
        };
        let mut put = |pending: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
                       key: Vec<u8>,
                       value: Option<Vec<u8>>| {
            match &value {
                Some(v) => batch.put(DataFamily::Controller, &key, v),
                None => batch.delete(DataFamily::Controller, &key),
            }
            pending.push((key, value));
        };
        match cmd {
            ControllerCommand::RegisterNode(mut node) => {
                if let Some(raw) = get(pending, &node_key(node.id))? {
                    let known: NodeInfo =
                        serde_json::from_slice(&raw).map_err(|e| corrupt("node record", e))?;
                    node.draining = known.draining;
                }
                put(pending, node_key(node.id), Some(to_json(&node)));
                Ok(Ok(ControllerReply::Done))
            }
            ControllerCommand::SetNodeDraining { id, draining } => {
                let Some(raw) = get(pending, &node_key(id))? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("node_id: node {id} is not a member of the cluster"),
                    )));
                };
                let mut node: NodeInfo =
                    serde_json::from_slice(&raw).map_err(|e| corrupt("node record", e))?;
                node.draining = draining;
                put(pending, node_key(id), Some(to_json(&node)));
                Ok(Ok(ControllerReply::Done))
            }
            ControllerCommand::ReplaceReplica {
                stream,
                created_ms,
                shard,
                from,
                to,
            } => {
                let Some(mut s) = stream_of(pending, &stream)? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {stream:?} does not exist"),
                    )));
                };
                let target = get(pending, &node_key(to))?
                    .map(|raw| {
                        serde_json::from_slice::<NodeInfo>(&raw)
                            .map_err(|e| corrupt("node record", e))
                    })
                    .transpose()?;
                if let Err(why) =
                    repair::replace_replica(&mut s, created_ms, shard, from, to, target.as_ref())
                {
                    return Ok(Err(Refusal::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "moving shard {shard} of {stream:?} from node {from} to node {to} is stale: {why}"
                        ),
                    )));
                }
                put(pending, stream_key(&stream), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
            ControllerCommand::RemoveNode { id } => {
                if get(pending, &node_key(id))?.is_none() {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("node_id: node {id} is not a member of the cluster"),
                    )));
                }
                put(pending, node_key(id), None);
                Ok(Ok(ControllerReply::Done))
            }
            ControllerCommand::CreateStream {
                name,
                retention_hours,
                created_ms,
                placements,
                limits,
                mode,
                tags,
                preferred_leader_region,
            } => {
                if stream_of(pending, &name)?.is_some() {
                    return Ok(Err(Refusal::new(
                        ErrorCode::AlreadyExists,
                        format!("stream_name: stream {name:?} already exists"),
                    )));
                }
                // Stream name to shard count, as of this command.
                let mut counts: std::collections::BTreeMap<Vec<u8>, u32> =
                    ControllerView::streams(view)?
                        .into_iter()
                        .map(|s| (stream_key(&s.name), s.shards.len() as u32))
                        .collect();
                for (k, v) in pending.iter() {
                    if k.starts_with(STREAM_PREFIX) {
                        match v {
                            Some(raw) => {
                                let s: StreamInfo = serde_json::from_slice(raw)
                                    .map_err(|e| corrupt("stream record", e))?;
                                counts.insert(k.clone(), s.shards.len() as u32);
                            }
                            None => {
                                counts.remove(k);
                            }
                        }
                    }
                }
                let streams = counts.len() as u32;
                let shards: u32 = counts.values().sum();
                if streams >= limits.max_streams {
                    return Ok(Err(Refusal::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "stream_name: the cluster holds {streams} streams, the limit is {} (limits.max_streams)",
                            limits.max_streams
                        ),
                    )));
                }
                let n = placements.len() as u32;
                if shards + n > limits.max_shards {
                    return Ok(Err(Refusal::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "shard_count: the cluster holds {shards} shards, {n} more would pass the limit of {} (limits.max_shards)",
                            limits.max_shards
                        ),
                    )));
                }
                let next = match get(pending, NEXT_GROUP)? {
                    Some(v) => u64::from_be_bytes(
                        v.as_slice()
                            .try_into()
                            .map_err(|e| corrupt("next group id", e))?,
                    ),
                    None => 1,
                };
                let ranges = split_hash_space(n);
                let shards = placements
                    .into_iter()
                    .zip(ranges)
                    .enumerate()
                    .map(|(i, (replicas, r))| ShardInfo {
                        index: i as u32,
                        group: next + i as u64,
                        hash_start: r.start,
                        hash_end: r.end,
                        replicas,
                        ready: false,
                    })
                    .collect();
                let stream = StreamInfo {
                    name: name.clone(),
                    status: StreamStatus::Creating,
                    retention_hours,
                    created_ms,
                    shards,
                    mode,
                    tags,
                    preferred_leader_region,
                };
                put(
                    pending,
                    NEXT_GROUP.to_vec(),
                    Some((next + u64::from(n)).to_be_bytes().to_vec()),
                );
                put(pending, stream_key(&name), Some(to_json(&stream)));
                Ok(Ok(ControllerReply::Stream(stream)))
            }
            ControllerCommand::ShardReady {
                stream,
                created_ms,
                shard,
            } => {
                let Some(mut s) = stream_of(pending, &stream)? else {
                    return Ok(Ok(ControllerReply::Done));
                };
                if s.created_ms != created_ms {
                    return Ok(Ok(ControllerReply::Done));
                }
                if let Some(sh) = s.shards.get_mut(shard as usize) {
                    sh.ready = true;
                }
                if s.shards.iter().all(|sh| sh.ready) {
                    s.status = StreamStatus::Active;
                }
                put(pending, stream_key(&stream), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
            ControllerCommand::DeleteStream { name } => {
                if stream_of(pending, &name)?.is_none() {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {name:?} does not exist"),
                    )));
                }
                put(pending, stream_key(&name), None);
                Ok(Ok(ControllerReply::Done))
            }
            ControllerCommand::SetRetention { name, hours } => {
                let Some(mut s) = stream_of(pending, &name)? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {name:?} does not exist"),
                    )));
                };
                s.retention_hours = hours;
                put(pending, stream_key(&name), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
            ControllerCommand::UpdateTags {
                name,
                set,
                remove,
                max_tags,
            } => {
                let Some(mut s) = stream_of(pending, &name)? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {name:?} does not exist"),
                    )));
                };
                for k in &remove {
                    s.tags.remove(k);
                }
                s.tags.extend(set);
                if s.tags.len() > max_tags as usize {
                    return Ok(Err(Refusal::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "tags: stream {name:?} would hold {} tags, the limit is {max_tags} per stream",
                            s.tags.len()
                        ),
                    )));
                }
                put(pending, stream_key(&name), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
            ControllerCommand::SetStreamMode { name, mode } => {
                let Some(mut s) = stream_of(pending, &name)? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {name:?} does not exist"),
                    )));
                };
                s.mode = mode;
                put(pending, stream_key(&name), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
            ControllerCommand::SetPreferredLeaderRegion { name, region } => {
                let Some(mut s) = stream_of(pending, &name)? else {
                    return Ok(Err(Refusal::new(
                        ErrorCode::NotFound,
                        format!("stream_name: stream {name:?} does not exist"),
                    )));
                };
                s.preferred_leader_region = region;
                put(pending, stream_key(&name), Some(to_json(&s)));
                Ok(Ok(ControllerReply::Stream(s)))
            }
        }
    }
}

fn to_json<T: Serialize>(x: &T) -> Vec<u8> {
    serde_json::to_vec(x).expect("controller records always serialize")
}

impl StateMachine for ControllerMachine {
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        let mut pending = Vec::new();
        let mut responses = Vec::with_capacity(entries.len());
        for e in entries {
            if e.data.is_empty() {
                responses.push(Bytes::new());
                continue;
            }
            let reply = match ControllerCommand::decode(&e.data) {
                Ok(cmd) => Self::apply_one(batch, view, &mut pending, cmd)?,
                // A command this version cannot read is refused, not applied, on every replica.
                Err(e) => Err(Refusal::new(
                    ErrorCode::Internal,
                    format!("controller command not understood: {e}"),
                )),
            };
            responses.push(Bytes::from(
                serde_json::to_vec(&reply).expect("replies always serialize"),
            ));
        }
        Ok(responses)
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }

    fn applied(&mut self) {
        self.applied.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Decodes the reply the controller's state machine gave to a command.
pub fn decode_reply(raw: &[u8]) -> Result<ReplyResult, serde_json::Error> {
    serde_json::from_slice(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_and_commands_stored_before_modes_and_tags_still_load() {
        let old =
            r#"{"name":"s","status":"Active","retention_hours":24,"created_ms":5,"shards":[]}"#;
        let s: StreamInfo = serde_json::from_str(old).expect("old stream record loads");
        assert_eq!(s.mode, StreamMode::Provisioned);
        assert!(s.tags.is_empty());
        let old_cmd = r#"{"CreateStream":{"name":"s","retention_hours":24,"created_ms":5,"placements":[[1]],"limits":{"max_streams":1,"max_shards":1}}}"#;
        match ControllerCommand::decode(old_cmd.as_bytes()).expect("old command decodes") {
            ControllerCommand::CreateStream { mode, tags, .. } => {
                assert_eq!(mode, StreamMode::Provisioned);
                assert!(tags.is_empty());
            }
            other => panic!("decoded as {other:?}"),
        }
    }

    #[test]
    fn nodes_stored_before_draining_existed_are_not_draining() {
        let old = r#"{"id":4,"address":"a:1","region":"r","zone":"z"}"#;
        let n: NodeInfo = serde_json::from_str(old).expect("old node record loads");
        assert!(!n.draining);
        let old_cmd = format!(r#"{{"RegisterNode":{old}}}"#);
        match ControllerCommand::decode(old_cmd.as_bytes()).expect("old command decodes") {
            ControllerCommand::RegisterNode(n) => assert!(!n.draining),
            other => panic!("decoded as {other:?}"),
        }
    }
}
