//! The gRPC services: thin handlers that decode a request, call [`Core`], and encode the
//! answer. No logic of their own. Each request that may be forwarded runs inside
//! [`routing::serve`] with its hop count, and its answer names the node that served it when
//! that was another one.
//!
//! Every handler runs in a span named after it, with the stream, shard or node it is about, so
//! that what is logged while serving it says which call it came from. The client calls of
//! [`StreamService`] and [`AdminService`] (not the cluster status, not [`NodeInternal`]) are
//! held while the node is starting and not ready yet ([`crate::server::core::readiness`]).

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::Stream;
use riptide_proto::v1;
use riptide_proto::v1::admin_service_server::AdminService;
use riptide_proto::v1::node_internal_server::NodeInternal;
use riptide_proto::v1::stream_service_server::StreamService;
use riptide_proto::{FORWARDED_TO_HEADER, RESENT_HEADER, SequenceNumber, ShardId, StreamName};
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::controller::{ControllerCommand, NodeInfo};
use crate::error::ServiceError;
use crate::server::core::Core;
use crate::server::core::routing::{self, Served, hops_of};
use crate::validate;

/// Serves [`StreamService`], [`AdminService`] and [`NodeInternal`] over one [`Core`].
///
/// Holds the core weakly: connections that peers keep open after this node shut down must not
/// keep its storage open (a restarted node could not open it again).
#[derive(Clone)]
pub struct Api {
    core: Weak<Core>,
}

impl Api {
    pub fn new(core: &Arc<Core>) -> Self {
        Self {
            core: Arc::downgrade(core),
        }
    }

    /// The core, for a request it may serve: none once the node shuts down or its storage
    /// failed.
    fn core(&self) -> Result<Arc<Core>, Status> {
        let core = self.running_core()?;
        core.check_serving()?;
        Ok(core)
    }

    /// The core, for a client call: held while the node is starting and cannot serve it yet
    /// ([`crate::server::core::readiness`]). A call forwarded by another node is never held:
    /// the node that forwarded it already served it as far as it could, and holding it would
    /// hold that node's caller twice.
    async fn ready_core<T>(&self, req: &Request<T>) -> Result<Arc<Core>, Status> {
        let core = self.core()?;
        if hops_of(req) == 0 && !core.is_ready() {
            core.await_ready().await;
            core.check_serving()?;
        }
        Ok(core)
    }

    /// The core while the node runs, whether or not it can serve (for the cluster status,
    /// which reports a failed node's state).
    fn running_core(&self) -> Result<Arc<Core>, Status> {
        self.core
            .upgrade()
            .ok_or_else(|| ServiceError::unavailable("this node is shutting down").into())
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// An answer that tells the client which node served it, when that was another node, so that
/// the client can refresh its view of the shard leaders, and whether a part of the request was
/// sent to two leaders (so that the client counts the copy as an attempt).
fn forwarded_reply<T>(v: T, served: Served) -> Reply<T> {
    let mut resp = Response::new(v);
    if let Some(value) = served.forwarded_to.and_then(|a| a.parse().ok()) {
        resp.metadata_mut().insert(FORWARDED_TO_HEADER, value);
    }
    if served.resent {
        resp.metadata_mut().insert(
            RESENT_HEADER,
            tonic::metadata::MetadataValue::from_static("1"),
        );
    }
    Ok(resp)
}

fn ok<T>(v: T) -> Reply<T> {
    Ok(Response::new(v))
}

#[tonic::async_trait]
impl StreamService for Api {
    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn create_stream(
        &self,
        req: Request<v1::CreateStreamRequest>,
    ) -> Reply<v1::CreateStreamResponse> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        let s = core
            .create_stream(
                &r.stream_name,
                r.shard_count,
                r.retention_period_hours,
                Some(r.preferred_leader_region),
            )
            .await?;
        ok(v1::CreateStreamResponse {
            stream: Some(core.describe(&s)),
        })
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn delete_stream(
        &self,
        req: Request<v1::DeleteStreamRequest>,
    ) -> Reply<v1::DeleteStreamResponse> {
        let core = self.ready_core(&req).await?;
        core.delete_stream(&req.into_inner().stream_name).await?;
        ok(v1::DeleteStreamResponse {})
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn describe_stream(
        &self,
        req: Request<v1::DescribeStreamRequest>,
    ) -> Reply<v1::DescribeStreamResponse> {
        let core = self.ready_core(&req).await?;
        let s = core.stream(&req.into_inner().stream_name)?;
        ok(v1::DescribeStreamResponse {
            stream: Some(core.describe_with_leaders(&s).await),
        })
    }

    #[tracing::instrument(skip_all)]
    async fn list_streams(
        &self,
        req: Request<v1::ListStreamsRequest>,
    ) -> Reply<v1::ListStreamsResponse> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        let (streams, has_more_streams) =
            core.list_streams(&r.exclusive_start_stream_name, r.limit)?;
        ok(v1::ListStreamsResponse {
            streams: streams.iter().map(|s| core.describe(s)).collect(),
            has_more_streams,
        })
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn list_shards(
        &self,
        req: Request<v1::ListShardsRequest>,
    ) -> Reply<v1::ListShardsResponse> {
        let core = self.ready_core(&req).await?;
        let s = core.stream(&req.into_inner().stream_name)?;
        ok(v1::ListShardsResponse {
            shards: core.describe_with_leaders(&s).await.shards,
        })
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn update_retention(
        &self,
        req: Request<v1::UpdateRetentionRequest>,
    ) -> Reply<v1::UpdateRetentionResponse> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        core.set_retention(&r.stream_name, r.retention_period_hours)
            .await?;
        ok(v1::UpdateRetentionResponse {})
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn update_preferred_leader_region(
        &self,
        req: Request<v1::UpdatePreferredLeaderRegionRequest>,
    ) -> Reply<v1::UpdatePreferredLeaderRegionResponse> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        core.set_preferred_leader_region(&r.stream_name, Some(r.preferred_leader_region))
            .await?;
        ok(v1::UpdatePreferredLeaderRegionResponse {})
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn put_record(&self, req: Request<v1::PutRecordRequest>) -> Reply<v1::PutRecordResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        let r = req.into_inner();
        let entry = v1::PutRecordsEntry {
            data: r.data,
            partition_key: r.partition_key,
            explicit_hash_key: r.explicit_hash_key,
        };
        let (result, to) = routing::serve(
            hops,
            core.put_record(
                &r.stream_name,
                entry,
                r.sequence_number_for_ordering.as_deref(),
            ),
        )
        .await;
        let (shard, seq) = result?;
        forwarded_reply(
            v1::PutRecordResponse {
                shard_id: shard.to_string(),
                sequence_number: seq.to_string(),
            },
            to,
        )
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name))]
    async fn put_records(
        &self,
        req: Request<v1::PutRecordsRequest>,
    ) -> Reply<v1::PutRecordsResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        let r = req.into_inner();
        let numeric = r.numeric_positions;
        let (results, to) = routing::serve(hops, core.put_records(&r.stream_name, r.records)).await;
        let results = results?;
        let mut failed = 0;
        let records = results
            .into_iter()
            .map(|r| match r {
                Ok((shard, seq)) if numeric => v1::PutRecordsResultEntry {
                    shard_index: shard.0,
                    sequence: seq.0,
                    ..Default::default()
                },
                Ok((shard, seq)) => v1::PutRecordsResultEntry {
                    shard_id: shard.to_string(),
                    sequence_number: seq.to_string(),
                    ..Default::default()
                },
                Err(e) => {
                    failed += 1;
                    v1::PutRecordsResultEntry {
                        error_code: e.code().name().to_string(),
                        error_message: e.to_string(),
                        ..Default::default()
                    }
                }
            })
            .collect();
        forwarded_reply(
            v1::PutRecordsResponse {
                records,
                failed_record_count: failed,
            },
            to,
        )
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name, shard = %req.get_ref().shard_id))]
    async fn get_shard_iterator(
        &self,
        req: Request<v1::GetShardIteratorRequest>,
    ) -> Reply<v1::GetShardIteratorResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        let (it, to) = routing::serve(hops, core.get_shard_iterator(req.into_inner())).await;
        forwarded_reply(
            v1::GetShardIteratorResponse {
                shard_iterator: it?,
            },
            to,
        )
    }

    #[tracing::instrument(skip_all)]
    async fn get_records(
        &self,
        req: Request<v1::GetRecordsRequest>,
    ) -> Reply<v1::GetRecordsResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        let r = req.into_inner();
        let (resp, to) = routing::serve(
            hops,
            core.get_records(&r.shard_iterator, r.limit, r.numeric_positions),
        )
        .await;
        forwarded_reply(resp?, to)
    }

    type SubscribeToShardStream =
        Pin<Box<dyn Stream<Item = Result<v1::SubscribeToShardEvent, Status>> + Send + 'static>>;

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name, shard = %req.get_ref().shard_id))]
    async fn subscribe_to_shard(
        &self,
        req: Request<v1::SubscribeToShardRequest>,
    ) -> Reply<Self::SubscribeToShardStream> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        StreamName::new(r.stream_name.as_str()).map_err(ServiceError::from)?;
        r.shard_id.parse::<ShardId>().map_err(ServiceError::from)?;
        // Forwarded when this node does not lead the shard: the answer then names the leader,
        // so that the client opens its next subscription there.
        let (first, opened) = routing::serve(
            0,
            core.get_shard_iterator(v1::GetShardIteratorRequest {
                stream_name: r.stream_name.clone(),
                shard_id: r.shard_id.clone(),
                shard_iterator_type: r.starting_position,
                starting_sequence_number: r.starting_sequence_number.clone(),
                timestamp_ms: r.timestamp_ms,
            }),
        )
        .await;
        let first = first?;
        let group = core
            .stream(&r.stream_name)
            .and_then(|info| core.shard(&info, &r.shard_id).map(|sh| sh.group))?;
        let numeric = r.numeric_positions;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(
            async move {
                let mut iterator = first;
                // Whether this node served the first read itself, leading the shard then.
                let mut opened_at_leader = None;
                let mut applied = core.shard_applied.subscribe(group);
                let mut shutdown = core.shutdown.clone();
                loop {
                    if *shutdown.borrow() {
                        return;
                    }
                    // A batch this replica applies from here on changes `applied` again, after its
                    // records are readable: a read that comes back short has seen everything
                    // applied before this line.
                    applied.borrow_and_update();
                    let (batch, served) =
                        routing::serve(0, core.get_records(&iterator, 0, numeric)).await;
                    let batch = match batch {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let served_here = served.forwarded_to.is_none();
                    // A subscription opened at the shard's leader follows the leadership: once it
                    // has moved, the stream ends after this batch and the client opens it again at
                    // the new leader, after the last record it received, instead of every later
                    // read passing through this node. One opened elsewhere (a client that does not
                    // route to leaders) keeps reading through this node.
                    let opened_here = *opened_at_leader.get_or_insert(served_here);
                    let leader_moved = opened_here && !served_here;
                    iterator = batch.next_shard_iterator.clone();
                    if !batch.records.is_empty() {
                        let more = may_have_more(&batch.records);
                        // Text, whichever form the records carry their positions in.
                        let continuation = batch
                            .records
                            .last()
                            .map(|r| match r.sequence_number.as_str() {
                                "" => SequenceNumber(r.sequence).to_string(),
                                text => text.to_string(),
                            })
                            .unwrap_or_default();
                        let event = v1::SubscribeToShardEvent {
                            records: batch.records,
                            continuation_sequence_number: continuation,
                            millis_behind_latest: batch.millis_behind_latest,
                        };
                        if tx.send(Ok(event)).await.is_err() {
                            return;
                        }
                        if more && !leader_moved {
                            continue;
                        }
                    }
                    if leader_moved {
                        return;
                    }
                    if applied.has_changed().unwrap_or(false) {
                        continue;
                    }
                    // Caught up: wait for a local apply, or poll again soon when the leader is
                    // elsewhere. The client going away ends the task.
                    tokio::select! {
                        _ = applied.changed() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        _ = shutdown.changed() => return,
                        _ = tx.closed() => return,
                    }
                }
            }
            .in_current_span(),
        );
        forwarded_reply(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)),
            opened,
        )
    }
}

/// Whether a GetRecords answer may have stopped at its count or byte limit rather than at the
/// newest applied record.
fn may_have_more(records: &[v1::Record]) -> bool {
    let bytes: usize = records
        .iter()
        .map(|r| r.data.len() + r.partition_key.len())
        .sum();
    records.len() >= validate::MAX_GET_RECORDS as usize
        || bytes > validate::MAX_GET_RECORDS_BYTES - validate::MAX_RECORD_BYTES
}

#[tonic::async_trait]
impl AdminService for Api {
    #[tracing::instrument(skip_all, fields(local_only = req.get_ref().local_only))]
    async fn cluster_status(
        &self,
        req: Request<v1::ClusterStatusRequest>,
    ) -> Reply<v1::ClusterStatusResponse> {
        let core = self.running_core()?;
        ok(core.cluster_status(req.into_inner().local_only).await?)
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn add_node(&self, req: Request<v1::AddNodeRequest>) -> Reply<v1::AddNodeResponse> {
        let core = self.ready_core(&req).await?;
        let r = req.into_inner();
        if r.node_id == 0 {
            return Err(ServiceError::invalid("node_id", "must be at least 1").into());
        }
        if r.address.is_empty() {
            return Err(ServiceError::invalid("address", "must be host:port").into());
        }
        let info = NodeInfo {
            draining: false,
            id: r.node_id,
            address: r.address,
            region: if r.region.is_empty() {
                "local".into()
            } else {
                r.region
            },
            zone: if r.zone.is_empty() {
                "local-a".into()
            } else {
                r.zone
            },
        };
        core.propose(&ControllerCommand::RegisterNode(info)).await?;
        ok(v1::AddNodeResponse {})
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn remove_node(
        &self,
        req: Request<v1::RemoveNodeRequest>,
    ) -> Reply<v1::RemoveNodeResponse> {
        let core = self.ready_core(&req).await?;
        let id = req.into_inner().node_id;
        core.propose(&ControllerCommand::RemoveNode { id }).await?;
        ok(v1::RemoveNodeResponse {})
    }

    #[tracing::instrument(skip_all, fields(stream = %req.get_ref().stream_name, shard = %req.get_ref().shard_id, to_node = req.get_ref().to_node))]
    async fn transfer_shard_leader(
        &self,
        req: Request<v1::TransferShardLeaderRequest>,
    ) -> Reply<v1::TransferShardLeaderResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        routing::serve(hops, core.transfer_shard_leader(req.into_inner()))
            .await
            .0?;
        ok(v1::TransferShardLeaderResponse {})
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn drain_node(&self, req: Request<v1::DrainNodeRequest>) -> Reply<v1::DrainNodeResponse> {
        let core = self.ready_core(&req).await?;
        let hops = hops_of(&req);
        ok(
            routing::serve(hops, core.drain_node(req.into_inner().node_id))
                .await
                .0?,
        )
    }

    #[tracing::instrument(skip_all, fields(node_id = req.get_ref().node_id))]
    async fn undrain_node(
        &self,
        req: Request<v1::UndrainNodeRequest>,
    ) -> Reply<v1::UndrainNodeResponse> {
        let core = self.ready_core(&req).await?;
        core.undrain_node(req.into_inner().node_id).await?;
        ok(v1::UndrainNodeResponse {})
    }
}

#[tonic::async_trait]
impl NodeInternal for Api {
    #[tracing::instrument(skip_all)]
    async fn propose_to_controller(
        &self,
        req: Request<v1::ControllerProposal>,
    ) -> Reply<v1::ControllerOutcome> {
        let core = self.core()?;
        let hops = hops_of(&req);
        let r = req.into_inner();
        ok(
            routing::serve(hops.max(r.hops), core.propose_forwarded(&r.command))
                .await
                .0?,
        )
    }

    #[tracing::instrument(skip_all, fields(group_id = req.get_ref().group_id))]
    async fn group_membership(
        &self,
        req: Request<v1::GroupMembershipRequest>,
    ) -> Reply<v1::GroupMembershipResponse> {
        let core = self.core()?;
        ok(core.group_membership(req.into_inner().group_id)?)
    }
}
