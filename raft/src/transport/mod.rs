//! Node-to-node Raft transport: one tonic service per node for all its groups.
//!
//! Every request carries the group id and the target node id. The server refuses a message
//! for another node (`FAILED_PRECONDITION`), for a group it does not host (`NOT_FOUND`), one it
//! cannot decode (`INVALID_ARGUMENT`) or one larger than the configured limit
//! (`RESOURCE_EXHAUSTED`, from tonic), and goes on serving every other group.
//!
//! Replication is pipelined: each (group, follower) pair keeps one bidirectional
//! `StreamAppend` call open, the leader sends append requests without waiting, and the
//! follower answers in order on the response stream. Snapshots travel as a client stream of
//! chunks. Channels are cached per peer node and shared by all groups, so every group's traffic
//! to a peer is multiplexed over one HTTP/2 connection.

mod client;
mod server;

pub(crate) use client::{GroupNetworkFactory, PeerPool};
pub(crate) use server::TransportHandler;

/// Generated protobuf and tonic code of the transport.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("riptide.raft.v1");
}

/// The tonic service a node serves for its peers; add it to the node's gRPC server.
pub type TransportService =
    pb::raft_transport_server::RaftTransportServer<server::TransportHandler>;

pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("transport messages always serialize")
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> Result<T, String> {
    // Bound the allocation a malformed length prefix can cause.
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(raw.len() as u64 * 2 + 1024)
        .deserialize(raw)
        .map_err(|e| e.to_string())
}

/// A tonic server builder with the transport's HTTP/2 windows, keepalives and TCP settings.
/// A node adds [`crate::RaftEngine::service`] (and its own services) to it.
pub fn server_builder(settings: &crate::TransportSettings) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(settings.http2_stream_window_bytes)
        .initial_connection_window_size(settings.http2_connection_window_bytes)
        .http2_keepalive_interval(Some(std::time::Duration::from_millis(
            settings.http2_keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(std::time::Duration::from_millis(
            settings.http2_keepalive_timeout_ms,
        )))
}
