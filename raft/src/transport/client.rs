//! The sending side of the transport: a channel cache per peer and openraft's network traits.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use openraft::OptionalSend;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use tonic::transport::{Channel, Endpoint};

use super::pb::raft_transport_client::RaftTransportClient;
use super::pb::{RaftRequest, SnapshotChunk};
use super::stats::TransportStats;
use super::{decode, encode, split_append};
use crate::settings::TransportSettings;
use crate::store::snapshot::SnapshotData;
use crate::types::{GroupId, NodeId, PeerNode, TypeConfig, Vote};

type RpcErr = RPCError<TypeConfig>;
type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Channels to peer nodes, shared by every group of this node. One HTTP/2 connection per peer.
pub(crate) struct PeerPool {
    settings: TransportSettings,
    channels: Mutex<HashMap<(u64, String), Channel>>,
    stats: Arc<TransportStats>,
}

impl PeerPool {
    pub(crate) fn new(settings: TransportSettings, stats: Arc<TransportStats>) -> Self {
        Self {
            settings,
            channels: Mutex::new(HashMap::new()),
            stats,
        }
    }

    pub(crate) fn keepalive_interval(&self) -> Duration {
        Duration::from_millis(self.settings.http2_keepalive_interval_ms)
    }

    pub(crate) fn keepalive_timeout(&self) -> Duration {
        Duration::from_millis(self.settings.http2_keepalive_timeout_ms)
    }

    /// A client of `node` over the cached channel to it.
    pub(crate) fn client(
        &self,
        node: u64,
        addr: &str,
    ) -> Result<RaftTransportClient<Channel>, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let key = (node, addr.to_string());
        let channel = match channels.get(&key) {
            Some(c) => c.clone(),
            None => {
                let s = &self.settings;
                let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("bad address {addr:?} of node {node}: {e}"))?
                    .connect_timeout(s.connect_timeout())
                    .tcp_nodelay(true)
                    .initial_stream_window_size(s.http2_stream_window_bytes)
                    .initial_connection_window_size(s.http2_connection_window_bytes)
                    .max_frame_size(s.http2_max_frame_bytes)
                    .http2_keep_alive_interval(Duration::from_millis(s.http2_keepalive_interval_ms))
                    .keep_alive_timeout(Duration::from_millis(s.http2_keepalive_timeout_ms))
                    .keep_alive_while_idle(true);
                let c = endpoint.connect_lazy();
                channels.insert(key, c.clone());
                c
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(self.settings.max_message_bytes)
            .max_encoding_message_size(self.settings.max_message_bytes))
    }

    /// Forgets the channel to `node`, e.g. after its address changed.
    pub(crate) fn forget(&self, node: NodeId) {
        self.channels
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(n, _), _| *n != node.0);
    }
}

/// Creates the network clients of one group.
pub(crate) struct GroupNetworkFactory {
    pool: Arc<PeerPool>,
    group: GroupId,
    from: NodeId,
}

impl GroupNetworkFactory {
    pub(crate) fn new(pool: Arc<PeerPool>, group: GroupId, from: NodeId) -> Self {
        Self { pool, group, from }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> PeerClient {
        PeerClient {
            pool: self.pool.clone(),
            client: self.pool.client(target, &node.addr),
            group: self.group,
            target,
            from: self.from,
            rpc_timeout: self.pool.settings.rpc_timeout(),
            chunk_bytes: self.pool.settings.snapshot_chunk_bytes,
            failed_streams: 0,
        }
    }
}

/// Sends one group's messages to one peer.
pub(crate) struct PeerClient {
    pool: Arc<PeerPool>,
    client: Result<RaftTransportClient<Channel>, String>,
    group: GroupId,
    target: u64,
    from: NodeId,
    rpc_timeout: Duration,
    chunk_bytes: usize,
    /// Stream openings that failed in a row. openraft's replication backoff sleeps only while
    /// it is asked for the next entry of an open stream, so a peer that refuses connections
    /// would be retried in a tight loop; opening waits [`opening_wait`] first instead.
    failed_streams: u32,
}

/// How long to wait before opening a stream after `failures` failed openings in a row: nothing
/// at first, then 50 ms doubling up to 800 ms.
fn stream_backoff(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(50u64 << (failures.min(5) - 1))
}

/// How long `stream_append` waits before opening: [`stream_backoff`], but at most half the
/// call's soft TTL. openraft's heartbeat worker gives each heartbeat, opening included, one
/// heartbeat interval; a wait that long would end every heartbeat before it was sent, the
/// failure count would never go back to zero, and a follower that was unreachable once would
/// never hear a heartbeat from this leader again (it would keep campaigning).
fn opening_wait(failures: u32, option: &RPCOption) -> Duration {
    stream_backoff(failures).min(option.soft_ttl() / 2)
}

fn unreachable(msg: impl ToString) -> RpcErr {
    RPCError::Unreachable(Unreachable::from_string(msg))
}

fn status_error(status: tonic::Status) -> RpcErr {
    use tonic::Code;
    match status.code() {
        // The peer is there but cannot take this message now: back off before retrying.
        Code::Unavailable
        | Code::NotFound
        | Code::FailedPrecondition
        | Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Unknown => unreachable(format!("{status}")),
        _ => RPCError::Network(NetworkError::from_string(format!("{status}"))),
    }
}

/// A message of `group` from node `from` to node `target`.
fn raft_request(
    group: u64,
    target: u64,
    from: u64,
    payload: Vec<u8>,
    entry_data: Vec<Bytes>,
) -> RaftRequest {
    RaftRequest {
        group_id: group,
        target_node: target,
        from_node: from,
        payload: payload.into(),
        entry_data,
    }
}

impl PeerClient {
    fn request(&self, payload: Vec<u8>, entry_data: Vec<Bytes>) -> RaftRequest {
        raft_request(self.group.0, self.target, self.from.0, payload, entry_data)
    }

    fn client(&self) -> Result<RaftTransportClient<Channel>, RpcErr> {
        self.client.clone().map_err(unreachable)
    }

    async fn unary<Req, Resp, F, Fut>(
        &self,
        req: &Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<super::pb::RaftReply>, tonic::Status>>,
    {
        self.call(self.request(encode(req), Vec::new()), option, call)
            .await
    }

    /// Sends one request and decodes the answer, within the call's deadline.
    async fn call<Resp, F, Fut>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RpcErr>
    where
        Resp: serde::de::DeserializeOwned,
        F: FnOnce(RaftTransportClient<Channel>, RaftRequest) -> Fut,
        Fut: Future<Output = Result<tonic::Response<super::pb::RaftReply>, tonic::Status>>,
    {
        let deadline = option.hard_ttl().min(self.rpc_timeout);
        let reply = tokio::time::timeout(deadline, call(self.client()?, request))
            .await
            .map_err(|_| {
                unreachable(format!(
                    "no answer from node {} within {deadline:?}",
                    self.target
                ))
            })?
            .map_err(status_error)?
            .into_inner();
        let result: Result<Resp, String> = decode(&reply.payload).map_err(|e| {
            RPCError::Network(NetworkError::from_string(format!("malformed reply: {e}")))
        })?;
        result.map_err(|remote| unreachable(format!("node {} refused: {remote}", self.target)))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcErr> {
        let (payload, entry_data) = split_append(rpc);
        let request = self.request(payload, entry_data);
        self.call(
            request,
            &option,
            |mut c, r| async move { c.append(r).await },
        )
        .await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcErr>>, RpcErr>>
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>>
            + OptionalSend
            + Unpin
            + 'static,
    {
        let (group, target, from) = (self.group.0, self.target, self.from.0);
        let client = self.client();
        let wait = opening_wait(self.failed_streams, &option);
        let failed_streams = &mut self.failed_streams;
        async move {
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let mut client = client.inspect_err(|_| *failed_streams += 1)?;
            let outbound = input.map(move |req| {
                let (payload, entry_data) = split_append(req);
                raft_request(group, target, from, payload, entry_data)
            });
            let inbound = match client.append_stream(tonic::Request::new(outbound)).await {
                Ok(resp) => {
                    *failed_streams = 0;
                    resp.into_inner()
                }
                Err(status) => {
                    *failed_streams = failed_streams.saturating_add(1);
                    return Err(status_error(status));
                }
            };
            let replies = inbound.map(|item| match item {
                Ok(reply) => {
                    decode::<StreamAppendResult<TypeConfig>>(&reply.payload).map_err(|e| {
                        RPCError::Network(NetworkError::from_string(format!(
                            "malformed reply: {e}"
                        )))
                    })
                }
                Err(status) => Err(status_error(status)),
            });
            let replies: BoxStream<'s, _> = Box::pin(replies);
            Ok(replies)
        }
        .boxed()
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        use openraft::vote::RaftLeaderId;
        self.pool.stats.vote_sent(
            self.group,
            rpc.vote.leader_id().term(),
            rpc.leadership_transfer,
        );
        self.unary(&rpc, &option, |mut c, r| async move { c.vote(r).await })
            .await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcErr> {
        self.unary(&rpc, &option, |mut c, r| async move { c.pre_vote(r).await })
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let mut client = self.client().map_err(|e| match e {
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            other => StreamingError::Network(NetworkError::from_string(other.to_string())),
        })?;
        let (group, target, from) = (self.group.0, self.target, self.from.0);
        let header = encode(&(vote, snapshot.meta.clone()));
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(2);
        let chunk = move |header: Vec<u8>, data: Vec<u8>, done: bool| SnapshotChunk {
            group_id: group,
            target_node: target,
            from_node: from,
            header,
            data,
            done,
        };
        let chunk_bytes = self.chunk_bytes;
        let producer = async move {
            tx.send(chunk(header, Vec::new(), false))
                .await
                .map_err(|_| std::io::Error::other("receiver closed the snapshot stream"))?;
            snapshot
                .snapshot
                .for_each_chunk(chunk_bytes, |data| {
                    let tx = tx.clone();
                    async move {
                        tx.send(chunk(Vec::new(), data.to_vec(), false))
                            .await
                            .map_err(|_| {
                                std::io::Error::other("receiver closed the snapshot stream")
                            })
                    }
                })
                .await?;
            tx.send(chunk(Vec::new(), Vec::new(), true))
                .await
                .map_err(|_| std::io::Error::other("receiver closed the snapshot stream"))
        };
        let call = client.install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx));
        let transfer = futures::future::join(call, producer);
        let (reply, produced) = tokio::select! {
            r = transfer => r,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        let reply = reply
            .map_err(|s| StreamingError::Unreachable(Unreachable::from_string(s.to_string())))?
            .into_inner();
        produced.map_err(|e| StreamingError::Network(NetworkError::from_string(e.to_string())))?;
        let result: Result<SnapshotResponse<TypeConfig>, String> = decode(&reply.payload)
            .map_err(|e| StreamingError::Network(NetworkError::from_string(e)))?;
        result.map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e)))
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcErr> {
        self.unary(&req, &option, |mut c, r| async move {
            c.transfer_leader(r).await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_backoff_grows_to_800_ms() {
        assert_eq!(stream_backoff(0), Duration::ZERO);
        assert_eq!(stream_backoff(1), Duration::from_millis(50));
        assert_eq!(stream_backoff(2), Duration::from_millis(100));
        assert_eq!(stream_backoff(5), Duration::from_millis(800));
        assert_eq!(stream_backoff(6), Duration::from_millis(800));
        assert_eq!(stream_backoff(100), Duration::from_millis(800));
    }

    #[test]
    fn the_wait_before_opening_leaves_time_to_open() {
        // Heartbeats of a data shard: one 100 ms interval for the whole call.
        let heartbeat = RPCOption::new(Duration::from_millis(100));
        assert_eq!(opening_wait(0, &heartbeat), Duration::ZERO);
        assert_eq!(opening_wait(1, &heartbeat), Duration::from_micros(37_500));
        assert_eq!(opening_wait(9, &heartbeat), Duration::from_micros(37_500));
        let long = RPCOption::new(Duration::from_secs(10));
        assert_eq!(opening_wait(2, &long), Duration::from_millis(100));
        assert_eq!(opening_wait(9, &long), Duration::from_millis(800));
    }
}
