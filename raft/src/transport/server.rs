//! The receiving side of the transport.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::AppendEntriesRequest;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use super::pb::raft_transport_server::RaftTransport;
use super::pb::{RaftReply, RaftRequest, SnapshotChunk};
use super::stats::TransportStats;
use super::{decode, encode, join_append};
use crate::store::snapshot::SnapshotData;
use crate::types::{GroupId, NodeId, Raft, SnapshotMeta, TypeConfig, Vote};

/// The one message of a `Watch` call: the node is shutting down.
pub(crate) const WATCH_CLOSING: &str = "closing";

/// The groups a node hosts, as the transport sees them.
pub(crate) type GroupTable = Arc<RwLock<HashMap<GroupId, Raft>>>;

/// Serves the transport for every group of one node.
#[derive(Clone)]
pub struct TransportHandler {
    node_id: NodeId,
    groups: GroupTable,
    spool_dir: PathBuf,
    stats: Arc<TransportStats>,
    /// Turns true when the engine shuts down; ends the `Watch` calls.
    closing: watch::Receiver<bool>,
}

impl TransportHandler {
    pub(crate) fn new(
        node_id: NodeId,
        groups: GroupTable,
        spool_dir: PathBuf,
        stats: Arc<TransportStats>,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            node_id,
            groups,
            spool_dir,
            stats,
            closing,
        }
    }

    fn route(&self, group_id: u64, target_node: u64) -> Result<Raft, Status> {
        if target_node != self.node_id.0 {
            return Err(Status::failed_precondition(format!(
                "message for node {target_node} reached node {}",
                self.node_id
            )));
        }
        let groups = self.groups.read().unwrap_or_else(|e| e.into_inner());
        groups.get(&GroupId(group_id)).cloned().ok_or_else(|| {
            Status::not_found(format!(
                "group {group_id} is not hosted on node {}",
                self.node_id
            ))
        })
    }
}

fn payload<T: serde::de::DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, Status> {
    decode(raw).map_err(|e| Status::invalid_argument(format!("malformed {what}: {e}")))
}

fn append_payload(req: RaftRequest) -> Result<AppendEntriesRequest<TypeConfig>, Status> {
    join_append(&req.payload, req.entry_data)
        .map_err(|e| Status::invalid_argument(format!("malformed append request: {e}")))
}

fn reply<T: serde::Serialize, E: std::fmt::Display>(
    result: Result<T, E>,
) -> Result<Response<RaftReply>, Status> {
    let result: Result<T, String> = result.map_err(|e| e.to_string());
    Ok(Response::new(RaftReply {
        payload: encode(&result),
    }))
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl RaftTransport for TransportHandler {
    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group_id, req.target_node)?;
        let rpc = payload(&req.payload, "vote request")?;
        reply(raft.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group_id, req.target_node)?;
        let rpc = payload(&req.payload, "pre-vote request")?;
        reply(raft.pre_vote(rpc).await)
    }

    async fn append(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group_id, req.target_node)?;
        let rpc = append_payload(req)?;
        reply(raft.append_entries(rpc).await)
    }

    type AppendStreamStream = ReplyStream;

    async fn append_stream(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty append stream"))?;
        let raft = self.route(first.group_id, first.target_node)?;
        let (group, target) = (first.group_id, first.target_node);
        // Every heartbeat opens a stream of its own.
        self.stats
            .heartbeat_received(GroupId(group), first.from_node, std::time::Instant::now());
        let first_rpc = append_payload(first)?;

        // Every later message must be for the same group and node and must decode; the input
        // ends at the first one that is not, which ends the replication stream.
        let rest = inbound
            .take_while(move |m| {
                let ok = matches!(m, Ok(m) if m.group_id == group && m.target_node == target);
                std::future::ready(ok)
            })
            .map(|m| {
                m.ok()
                    .and_then(|m| join_append(&m.payload, m.entry_data).ok())
            })
            .take_while(|m| std::future::ready(m.is_some()))
            .filter_map(std::future::ready);
        let input = futures::stream::once(std::future::ready(first_rpc)).chain(rest);
        let output = raft.stream_append(input).map(|item| match item {
            Ok(result) => Ok(RaftReply {
                payload: encode(&result),
            }),
            Err(fatal) => Err(Status::unavailable(format!("group stopped: {fatal}"))),
        });
        Ok(Response::new(Box::pin(output)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let raft = self.route(first.group_id, first.target_node)?;
        let (vote, meta): (Vote, SnapshotMeta) = payload(&first.header, "snapshot header")?;

        tokio::fs::create_dir_all(&self.spool_dir)
            .await
            .map_err(|e| Status::internal(format!("snapshot spool dir: {e}")))?;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let part = self
            .spool_dir
            .join(format!("group-{}-{stamp}.part", first.group_id));
        let done_path = part.with_extension("snap");
        let result = spool(&part, first, &mut inbound).await;
        if let Err(status) = result {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(status);
        }
        tokio::fs::rename(&part, &done_path)
            .await
            .map_err(|e| Status::internal(format!("snapshot spool: {e}")))?;
        let snapshot = openraft::type_config::alias::SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::Spooled(done_path.clone()),
        };
        let result = raft.install_full_snapshot(vote, snapshot).await;
        // Installed snapshots remove their file; a refused one is removed here.
        let _ = tokio::fs::remove_file(&done_path).await;
        reply(result)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group_id, req.target_node)?;
        let rpc = payload(&req.payload, "transfer-leader request")?;
        reply(raft.handle_transfer_leader(rpc).await)
    }

    type WatchStream = ReplyStream;

    async fn watch(
        &self,
        _request: Request<RaftRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let mut closing = self.closing.clone();
        // Sends nothing until the engine shuts down; then one message, so that the peer elects
        // successors to this node's groups at once, and the call ends (the server's graceful
        // shutdown does not wait for it).
        let end = async move {
            let _ = closing.wait_for(|c| *c).await;
            Ok(RaftReply {
                payload: encode(&WATCH_CLOSING),
            })
        };
        Ok(Response::new(Box::pin(futures::stream::once(end))))
    }

    async fn log_state(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = request.into_inner();
        let raft = self.route(req.group_id, req.target_node)?;
        let vote = raft.metrics().borrow_watched().vote;
        let last = raft.data_metrics().borrow_watched().last_log;
        reply(Ok::<_, String>((vote, last)))
    }
}

/// Writes the chunks of a snapshot stream to `path`; fails unless the stream ends with `done`.
async fn spool(
    path: &std::path::Path,
    first: SnapshotChunk,
    inbound: &mut Streaming<SnapshotChunk>,
) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("snapshot spool: {e}"));
    let mut file = tokio::fs::File::create(path).await.map_err(io)?;
    let (group, target) = (first.group_id, first.target_node);
    let mut chunk = first;
    loop {
        if chunk.group_id != group || chunk.target_node != target {
            return Err(Status::invalid_argument(
                "snapshot chunk for another group or node in the same stream",
            ));
        }
        file.write_all(&chunk.data).await.map_err(io)?;
        if chunk.done {
            break;
        }
        chunk = inbound
            .message()
            .await?
            .ok_or_else(|| Status::aborted("snapshot stream ended before its last chunk"))?;
    }
    file.flush().await.map_err(io)?;
    Ok(())
}
