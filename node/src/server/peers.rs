//! gRPC clients to other nodes, for forwarding requests to a shard's or the controller's
//! leader. Channels are cached per address and connect lazily. (Hop counts and the forwarding
//! itself are the routing layer's: [`crate::server::core::routing`].)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::node_internal_client::NodeInternalClient;
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use tonic::transport::{Channel, Endpoint};

use crate::error::ServiceError;

/// Largest message between nodes: a full PutRecords call or GetRecords answer, plus framing.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
}

impl Peers {
    fn channel(&self, addr: &str) -> Result<Channel, ServiceError> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| ServiceError::internal(format!("bad peer address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .max_frame_size(riptide_raft::HTTP2_MAX_FRAME_BYTES)
            // A forwarded call to a peer that froze or was cut off fails within about 4 s
            // instead of hanging until the caller's own timeout.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn stream(&self, addr: &str) -> Result<StreamServiceClient<Channel>, ServiceError> {
        Ok(StreamServiceClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub fn admin(&self, addr: &str) -> Result<AdminServiceClient<Channel>, ServiceError> {
        Ok(AdminServiceClient::new(self.channel(addr)?))
    }

    pub fn internal(&self, addr: &str) -> Result<NodeInternalClient<Channel>, ServiceError> {
        Ok(NodeInternalClient::new(self.channel(addr)?))
    }
}
