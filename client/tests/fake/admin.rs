//! The fake node's AdminService: cluster status, node membership, leader transfers and drains,
//! over the shared state.

use super::*;

#[tonic::async_trait]
impl AdminService for FakeNode {
    async fn cluster_status(
        &self,
        _request: Request<v1::ClusterStatusRequest>,
    ) -> Result<Response<v1::ClusterStatusResponse>, Status> {
        let mut state = self.lock();
        if let Err(e) = state.fault("ClusterStatus") {
            self.log_failure(&mut state, "ClusterStatus");
            return Err(e);
        }
        let nodes = state
            .nodes
            .iter()
            .map(|(id, address)| v1::NodeStatus {
                node_id: *id,
                address: address.clone(),
                region: "local".into(),
                zone: format!("z{id}"),
                up: true,
                shard_leaders: 0,
                shard_replicas: 0,
                controller_voter: true,
                ..Default::default()
            })
            .collect();
        let reply = v1::ClusterStatusResponse {
            nodes,
            controller_leader: 1,
            streams: state.streams.len() as u32,
            shards: 0,
        };
        Ok(self.respond(&mut state, "ClusterStatus", None, 0, reply))
    }

    async fn add_node(
        &self,
        _r: Request<v1::AddNodeRequest>,
    ) -> Result<Response<v1::AddNodeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn remove_node(
        &self,
        _r: Request<v1::RemoveNodeRequest>,
    ) -> Result<Response<v1::RemoveNodeResponse>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    async fn transfer_shard_leader(
        &self,
        request: Request<v1::TransferShardLeaderRequest>,
    ) -> Result<Response<v1::TransferShardLeaderResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        let shard: ShardId = r.shard_id.parse().map_err(|e: riptide_proto::IdError| {
            ErrorCode::InvalidArgument.status(e.to_string())
        })?;
        state.stream(&r.stream_name)?.shards[shard.0 as usize].leader = r.to_node;
        Ok(self.respond(
            &mut state,
            "TransferShardLeader",
            None,
            0,
            v1::TransferShardLeaderResponse {},
        ))
    }

    async fn undrain_node(
        &self,
        request: Request<v1::UndrainNodeRequest>,
    ) -> Result<Response<v1::UndrainNodeResponse>, Status> {
        let node = request.into_inner().node_id;
        let mut state = self.lock();
        if !state.nodes.iter().any(|n| n.0 == node) {
            return Err(Status::not_found(format!(
                "node_id: node {node} is not a member"
            )));
        }
        Ok(self.respond(
            &mut state,
            "UndrainNode",
            None,
            0,
            v1::UndrainNodeResponse {},
        ))
    }

    async fn drain_node(
        &self,
        request: Request<v1::DrainNodeRequest>,
    ) -> Result<Response<v1::DrainNodeResponse>, Status> {
        let node = request.into_inner().node_id;
        let mut state = self.lock();
        let others: Vec<u64> = state
            .nodes
            .iter()
            .map(|n| n.0)
            .filter(|&n| n != node)
            .collect();
        let mut moved = 0;
        for stream in state.streams.values_mut() {
            for (i, shard) in stream.shards.iter_mut().enumerate() {
                if shard.leader == node {
                    shard.leader = others[i % others.len()];
                    moved += 1;
                }
            }
        }
        Ok(self.respond(
            &mut state,
            "DrainNode",
            None,
            0,
            v1::DrainNodeResponse {
                leaders_moved: moved,
                leaders_remaining: 0,
                ..Default::default()
            },
        ))
    }
}
