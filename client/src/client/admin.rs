//! Cluster administration: the cluster status, leader transfers, draining and undraining.

use riptide_proto::ShardId;
use riptide_proto::v1;
use std::sync::Arc;
use std::time::Instant;

use super::{Client, Retry, Route};
use crate::ClientError;

impl Client {
    /// Every node's id, address, placement, liveness and shard counts, and the controller's
    /// leader. Also refreshes the client's list of nodes.
    pub async fn cluster_status(&self) -> Result<v1::ClusterStatusResponse, ClientError> {
        let reply = self
            .call(Route::Any, Retry::Retryable, |ch| async move {
                ch.admin()
                    .cluster_status(v1::ClusterStatusRequest { local_only: false })
                    .await
            })
            .await?;
        self.inner.nodes.update(&reply.value);
        *self.inner.node_refresh.lock().await = Some(Instant::now());
        Ok(reply.value)
    }

    /// Moves the leadership of `shard` to the replica on node `to_node`.
    pub async fn transfer_shard_leader(
        &self,
        stream: &str,
        shard: ShardId,
        to_node: u64,
    ) -> Result<(), ClientError> {
        let request = v1::TransferShardLeaderRequest {
            stream_name: stream.to_string(),
            shard_id: shard.to_string(),
            to_node,
        };
        self.call(Route::Any, Retry::Retryable, |ch| {
            let request = request.clone();
            async move { ch.admin().transfer_shard_leader(request).await }
        })
        .await?;
        if let Some(cached) = self.lock_maps().get_mut(stream) {
            let mut map = (*cached.map).clone();
            if map.set_leader(shard, to_node) {
                cached.map = Arc::new(map);
            }
        }
        Ok(())
    }

    /// Drains `node`: it takes no new replicas, its shard leaderships move to other replicas,
    /// and the controller places its replicas on other nodes (the data follows in the
    /// background).
    pub async fn drain_node(&self, node: u64) -> Result<v1::DrainNodeResponse, ClientError> {
        let request = v1::DrainNodeRequest { node_id: node };
        let reply = self
            .call(Route::Any, Retry::Retryable, |ch| async move {
                ch.admin().drain_node(request).await
            })
            .await?;
        self.lock_maps().values_mut().for_each(|m| m.stale = true);
        Ok(reply.value)
    }

    /// Clears a drain's mark on `node`: it may take replicas and leaderships again. Replicas
    /// the drain moved stay where they are; leaders come back through the leader balancer.
    pub async fn undrain_node(&self, node: u64) -> Result<(), ClientError> {
        let request = v1::UndrainNodeRequest { node_id: node };
        self.call(Route::Any, Retry::Retryable, |ch| async move {
            ch.admin().undrain_node(request).await
        })
        .await?;
        Ok(())
    }
}
