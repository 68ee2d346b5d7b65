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
mod failover;
mod server;
mod stats;

pub(crate) use client::{GroupNetworkFactory, PeerPool};
pub(crate) use failover::Failover;
pub(crate) use server::TransportHandler;
pub(crate) use stats::TransportStats;
pub use stats::{ElectionStats, HEARTBEAT_GAP_BOUNDS_MS};

use openraft::EntryPayload;
use openraft::raft::AppendEntriesRequest;

use crate::types::{AppData, TypeConfig};

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

/// An append request as it travels: the request encoded with its normal entries' data taken
/// out, and that data in log order (`RaftRequest::entry_data`). The data is neither copied into
/// the encoding here nor out of it by [`join_append`].
pub(crate) fn split_append(
    mut req: AppendEntriesRequest<TypeConfig>,
) -> (Vec<u8>, Vec<bytes::Bytes>) {
    let data = req
        .entries
        .iter_mut()
        .filter_map(|e| match &mut e.payload {
            EntryPayload::Normal(d) => Some(std::mem::take(&mut d.0)),
            _ => None,
        })
        .collect();
    (encode(&req), data)
}

/// The append request [`split_append`] took apart. Refuses data that does not match the
/// request's normal entries one for one.
pub(crate) fn join_append(
    payload: &[u8],
    data: Vec<bytes::Bytes>,
) -> Result<AppendEntriesRequest<TypeConfig>, String> {
    let mut req: AppendEntriesRequest<TypeConfig> = decode(payload)?;
    let mut slots: Vec<&mut AppData> = req
        .entries
        .iter_mut()
        .filter_map(|e| match &mut e.payload {
            EntryPayload::Normal(d) => Some(d),
            _ => None,
        })
        .collect();
    if slots.len() != data.len() {
        return Err(format!(
            "{} normal entries but {} entry data",
            slots.len(),
            data.len()
        ));
    }
    if slots.iter().any(|s| !s.0.is_empty()) {
        return Err("a normal entry carries its data in the payload".to_string());
    }
    for (slot, d) in slots.iter_mut().zip(data) {
        slot.0 = d;
    }
    Ok(req)
}

/// A tonic server builder with the transport's HTTP/2 windows, keepalives and TCP settings.
/// A node adds [`crate::RaftEngine::service`] (and its own services) to it.
pub fn server_builder(settings: &crate::TransportSettings) -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(settings.http2_stream_window_bytes)
        .initial_connection_window_size(settings.http2_connection_window_bytes)
        .max_frame_size(settings.http2_max_frame_bytes)
        .http2_keepalive_interval(Some(std::time::Duration::from_millis(
            settings.http2_keepalive_interval_ms,
        )))
        .http2_keepalive_timeout(Some(std::time::Duration::from_millis(
            settings.http2_keepalive_timeout_ms,
        )))
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;

    use super::*;
    use crate::types::{Entry, Vote};

    fn request(entries: Vec<Entry>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new(3, 1),
            prev_log_id: Some(log_id::<TypeConfig>(3, 1, 9)),
            entries,
            leader_commit: Some(log_id::<TypeConfig>(3, 1, 8)),
        }
    }

    fn normal(index: u64, data: &'static [u8]) -> Entry {
        Entry::new_normal(
            log_id::<TypeConfig>(3, 1, index),
            AppData(Bytes::from_static(data)),
        )
    }

    #[test]
    fn an_append_request_travels_with_its_entries_data_beside_it() {
        let entries = vec![
            normal(10, b"first"),
            Entry::new_blank(log_id::<TypeConfig>(3, 1, 11)),
            normal(12, b""),
            normal(13, b"third"),
        ];
        let (payload, data) = split_append(request(entries.clone()));
        assert_eq!(
            data,
            vec![
                Bytes::from_static(b"first"),
                Bytes::new(),
                Bytes::from_static(b"third")
            ]
        );
        assert!(
            !payload.windows(5).any(|w| w == b"first" || w == b"third"),
            "the payload carries no entry data"
        );
        let back = join_append(&payload, data).expect("joins");
        assert_eq!(back.entries, entries);
        assert_eq!(back.vote, Vote::new(3, 1));
        assert_eq!(back.leader_commit, Some(log_id::<TypeConfig>(3, 1, 8)));

        // A heartbeat: no entries, no data.
        let (payload, data) = split_append(request(vec![]));
        assert!(data.is_empty());
        assert!(
            join_append(&payload, data)
                .expect("joins")
                .entries
                .is_empty()
        );
    }

    #[test]
    fn entry_data_that_does_not_match_the_entries_is_refused() {
        let (payload, data) = split_append(request(vec![normal(10, b"a"), normal(11, b"b")]));
        let err = join_append(&payload, data[..1].to_vec()).expect_err("one short");
        assert_eq!(err, "2 normal entries but 1 entry data");
        let mut more = data.clone();
        more.push(Bytes::from_static(b"c"));
        assert!(join_append(&payload, more).is_err());

        // The request as an older build encoded it, data inside: refused, not stored empty or
        // twice.
        let whole = encode(&request(vec![normal(10, b"a")]));
        let err = join_append(&whole, vec![Bytes::from_static(b"a")]).expect_err("both");
        assert!(err.contains("in the payload"), "{err}");
        assert!(join_append(&whole, vec![]).is_err());
    }
}
