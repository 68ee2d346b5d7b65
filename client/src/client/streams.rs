//! Stream administration: create (also while a starting cluster refuses it), wait until
//! ACTIVE, delete, describe, list, retention and the preferred leader region.

use std::time::{Duration, Instant};

use riptide_proto::ErrorCode;
use riptide_proto::v1;

use super::{Client, Created, Retry, Route, StreamOptions, description_of};
use crate::ClientError;

impl Client {
    /// Creates a stream with `shards` shards and `retention_hours` of retention (the node's
    /// default, 24 hours, when `None`). Returns the description, usually still `CREATING`; see
    /// [`Client::wait_for_active`].
    pub async fn create_stream(
        &self,
        name: &str,
        shards: u32,
        retention_hours: Option<u32>,
    ) -> Result<v1::StreamDescription, ClientError> {
        let options = StreamOptions {
            retention_hours,
            ..StreamOptions::default()
        };
        self.create_stream_with(name, shards, options).await
    }

    /// Creates a stream with `shards` shards and the settings in `options`.
    pub async fn create_stream_with(
        &self,
        name: &str,
        shards: u32,
        options: StreamOptions,
    ) -> Result<v1::StreamDescription, ClientError> {
        let request = v1::CreateStreamRequest {
            stream_name: name.to_string(),
            shard_count: shards,
            retention_period_hours: options.retention_hours.unwrap_or(0),
            preferred_leader_region: options.preferred_leader_region.unwrap_or_default(),
        };
        let reply = self
            .call(Route::Any, Retry::IfNeverSent, |ch| {
                let request = request.clone();
                async move { ch.stream().create_stream(request).await }
            })
            .await?;
        description_of(reply.value.stream)
    }

    /// [`Client::create_stream_with`], retried for up to `wait` while the cluster refuses it
    /// as [`ErrorCode::Unavailable`] (a cluster that has just started, whose nodes are still
    /// registering; `on_refusal` sees the first refusal). A stream of that name that exists
    /// after such a refusal is [`Created::AfterRefusal`]: an earlier attempt may have been
    /// committed although its answer was lost. Without a refusal first, an existing stream is
    /// an error, as for `create_stream_with`.
    pub async fn create_stream_when_ready(
        &self,
        name: &str,
        shards: u32,
        options: StreamOptions,
        wait: Duration,
        on_refusal: impl FnOnce(&ClientError),
    ) -> Result<Created, ClientError> {
        let deadline = Instant::now() + wait;
        let mut on_refusal = Some(on_refusal);
        loop {
            match self.create_stream_with(name, shards, options.clone()).await {
                Ok(desc) => return Ok(Created::Now(desc)),
                Err(e)
                    if on_refusal.is_none()
                        && matches!(
                            e.code,
                            ErrorCode::AlreadyExists | ErrorCode::ResourceInUse
                        ) =>
                {
                    return Ok(Created::AfterRefusal);
                }
                Err(e) if e.code == ErrorCode::Unavailable && Instant::now() < deadline => {
                    if let Some(report) = on_refusal.take() {
                        report(&e);
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Polls `DescribeStream` until the stream is `ACTIVE` and returns that description.
    /// Once one node reports it ACTIVE, every other known node is asked as well, since each
    /// node's view of the controller may lag a moment and a node that still sees the stream
    /// CREATING refuses writes to it. A node that does not know the stream yet (it has not
    /// applied the creation) is waited for too. Fails with [`ErrorCode::ResourceInUse`] when
    /// `timeout` passes first or the stream is being deleted, and with
    /// [`ErrorCode::NotFound`] when the stream still does not exist by then.
    pub async fn wait_for_active(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<v1::StreamDescription, ClientError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(50);
        let mut unconfirmed: Option<Vec<u64>> = None;
        loop {
            let desc = match self.describe_stream(name).await {
                Ok(desc) => desc,
                // Right after a create, the node that answers may not have applied it yet.
                Err(e) if e.code == ErrorCode::NotFound && started.elapsed() + wait <= timeout => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_millis(500));
                    continue;
                }
                Err(e) => return Err(e),
            };
            match desc.status() {
                v1::StreamStatus::Active => {
                    let nodes = unconfirmed.get_or_insert_with(|| self.inner.nodes.member_ids());
                    let mut lagging = Vec::new();
                    for &node in nodes.iter() {
                        if self.node_sees_creating(name, node).await {
                            lagging.push(node);
                        }
                    }
                    *nodes = lagging;
                    if nodes.is_empty() {
                        return Ok(desc);
                    }
                }
                v1::StreamStatus::Deleting => {
                    return Err(ClientError::not_active(
                        name,
                        format!("stream {name:?} is being deleted"),
                    ));
                }
                _ => {}
            }
            if started.elapsed() + wait > timeout {
                let status = match &unconfirmed {
                    Some(nodes) => format!("CREATING on nodes {nodes:?}"),
                    None => desc.status().as_str_name().to_string(),
                };
                return Err(ClientError::not_active(
                    name,
                    format!("stream {name:?} is still {status} after {timeout:?}"),
                ));
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_millis(500));
        }
    }

    /// Whether `node` itself answers that the stream is not ACTIVE yet. A node that cannot be
    /// asked counts as done: it serves nothing anyway.
    async fn node_sees_creating(&self, name: &str, node: u64) -> bool {
        let request = v1::DescribeStreamRequest {
            stream_name: name.to_string(),
        };
        let (answer, _) = self
            .attempt(Route::Node(node), |ch| {
                let request = request.clone();
                async move { ch.stream().describe_stream(request).await }
            })
            .await;
        match answer {
            Ok(reply) => reply
                .stream
                .is_none_or(|d| d.status() == v1::StreamStatus::Creating),
            Err(e) => e.code == ErrorCode::NotFound,
        }
    }

    /// Deletes a stream and its records.
    pub async fn delete_stream(&self, name: &str) -> Result<(), ClientError> {
        let request = v1::DeleteStreamRequest {
            stream_name: name.to_string(),
        };
        self.call(Route::Any, Retry::IfNeverSent, |ch| {
            let request = request.clone();
            async move { ch.stream().delete_stream(request).await }
        })
        .await?;
        self.lock_maps().remove(name);
        Ok(())
    }

    /// A stream's status, shards (with their replicas and leaders) and retention.
    pub async fn describe_stream(&self, name: &str) -> Result<v1::StreamDescription, ClientError> {
        let desc = self.describe_once_or_retry(name, Retry::Retryable).await?;
        self.remember_map(name, &desc);
        Ok(desc)
    }

    /// Every stream, following `ListStreams` pages to the end.
    pub async fn list_streams(&self) -> Result<Vec<v1::StreamDescription>, ClientError> {
        let mut streams: Vec<v1::StreamDescription> = Vec::new();
        loop {
            let request = v1::ListStreamsRequest {
                exclusive_start_stream_name: streams
                    .last()
                    .map(|s| s.stream_name.clone())
                    .unwrap_or_default(),
                limit: 0,
            };
            let reply = self
                .call(Route::Any, Retry::Retryable, |ch| {
                    let request = request.clone();
                    async move { ch.stream().list_streams(request).await }
                })
                .await?
                .value;
            let progressed = !reply.streams.is_empty();
            streams.extend(reply.streams);
            if !reply.has_more_streams || !progressed {
                return Ok(streams);
            }
        }
    }

    /// A stream's shards.
    pub async fn list_shards(&self, name: &str) -> Result<Vec<v1::Shard>, ClientError> {
        let request = v1::ListShardsRequest {
            stream_name: name.to_string(),
        };
        let reply = self
            .call(Route::Any, Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().list_shards(request).await }
            })
            .await?;
        Ok(reply.value.shards)
    }

    /// Sets how many hours a stream keeps its records.
    pub async fn update_retention(&self, name: &str, hours: u32) -> Result<(), ClientError> {
        let request = v1::UpdateRetentionRequest {
            stream_name: name.to_string(),
            retention_period_hours: hours,
        };
        self.call(Route::Any, Retry::Retryable, |ch| {
            let request = request.clone();
            async move { ch.stream().update_retention(request).await }
        })
        .await?;
        Ok(())
    }

    /// Sets the region whose replicas should lead the stream's shards (`None` clears it). The
    /// controller's leader moves the leaders there within seconds, while that region has a
    /// replica of each shard on a healthy node.
    pub async fn update_preferred_leader_region(
        &self,
        name: &str,
        region: Option<&str>,
    ) -> Result<(), ClientError> {
        let request = v1::UpdatePreferredLeaderRegionRequest {
            stream_name: name.to_string(),
            preferred_leader_region: region.unwrap_or_default().to_string(),
        };
        self.call(Route::Any, Retry::Retryable, |ch| {
            let request = request.clone();
            async move { ch.stream().update_preferred_leader_region(request).await }
        })
        .await?;
        Ok(())
    }
}
