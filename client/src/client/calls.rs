//! Calls, routing and retries: which node a call goes to (a shard's leader from the cached
//! shard map, or any node, which forwards), how often it is sent again after which failures,
//! and what the client learns from answers (a forwarded call names the shard's new leader).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::{FORWARDED_TO_HEADER, ShardId};
use tonic::transport::Channel;

use super::{Client, description_of};
use crate::ClientError;
use crate::error::never_sent;
use crate::nodes::NodeHandle;
use crate::put_call::SharedPutRecords;
use crate::retry::RetryPolicy;
use crate::routing::ShardMap;

/// How often at most the client asks for a stream's shard map again after it went stale.
const MIN_MAP_REFRESH: Duration = Duration::from_millis(250);
/// Age after which a shard map is asked for again even without a sign that it is stale, so
/// that leader moves are noticed when the old leader forwards silently.
const MAX_MAP_AGE: Duration = Duration::from_secs(10);
/// How often at most the client asks for the cluster's members again.
const MIN_NODE_REFRESH: Duration = Duration::from_secs(1);

/// Which node a call should go to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Any node: it forwards to whoever must answer.
    Any,
    /// The leader of a shard, when known.
    Shard(&'a str, ShardId),
    /// One node, when it did not just fail.
    Node(u64),
}

/// Which failures a call may be sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Retryable codes (Unavailable, Throttled): the call is idempotent, or a duplicate is
    /// acceptable and counted (puts).
    Retryable,
    /// Only when the request certainly never reached a node.
    IfNeverSent,
}

/// A successful call's answer and how many attempts it took.
#[derive(Debug)]
pub(crate) struct Reply<T> {
    pub value: T,
    pub attempts: u32,
}

#[derive(Debug)]
pub(super) struct CachedMap {
    pub(super) map: Arc<ShardMap>,
    pub(super) fetched: Instant,
    pub(super) stale: bool,
}

impl Client {
    /// Runs `call` against the node `route` picks, again after retryable failures as `retry`
    /// allows, until the retry deadline.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        route: Route<'_>,
        retry: Retry,
        call: F,
    ) -> Result<Reply<T>, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(self.inner.retry, route, retry, call).await
    }

    /// [`Client::call`] with its own backoff and deadline.
    pub(super) async fn call_with<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        route: Route<'_>,
        retry: Retry,
        mut call: F,
    ) -> Result<Reply<T>, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let (outcome, sent) = self.attempt_inner(route, &mut call).await;
            let e = match outcome {
                Ok(value) => return Ok(Reply { value, attempts }),
                Err(e) => e,
            };
            let again = match retry {
                Retry::Retryable => e.is_retryable(),
                Retry::IfNeverSent => !sent,
            };
            if !again {
                return Err(e);
            }
            match policy.next_delay(started, Instant::now(), attempts) {
                Some(delay) => {
                    tracing::debug!(attempts, "retrying after {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            }
        }
    }

    /// One attempt of `call` against the node `route` picks.
    pub(crate) async fn attempt<T, F, Fut>(
        &self,
        route: Route<'_>,
        call: F,
    ) -> Result<T, ClientError>
    where
        F: FnOnce(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut call = Some(call);
        self.attempt_inner(route, &mut |ch| (call.take().expect("called once"))(ch))
            .await
            .0
    }

    /// One attempt; also says whether the request may have reached a node.
    pub(super) async fn attempt_inner<T, F, Fut>(
        &self,
        route: Route<'_>,
        call: &mut F,
    ) -> (Result<T, ClientError>, bool)
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let preferred = match route {
            Route::Any => None,
            Route::Node(id) => Some(id),
            // Boxed: refreshing the map makes a call of its own (to any node).
            Route::Shard(stream, shard) => Box::pin(self.routing_map(stream))
                .await
                .and_then(|m| m.leader_of(shard)),
        };
        let node = self.inner.nodes.pick(preferred);
        let timeout = self.inner.config.request_timeout;
        let api = Api {
            channel: node.channel.clone(),
            max_decode: self.inner.config.max_message_bytes,
        };
        match tokio::time::timeout(timeout, call(api)).await {
            Ok(Ok(response)) => {
                self.inner.nodes.mark_answered(&node);
                self.after_success(route, &node, response.metadata()).await;
                (Ok(response.into_inner()), true)
            }
            Ok(Err(status)) => {
                let e = ClientError::from_status(&status, &node.address);
                let sent = !never_sent(&status);
                if crate::error::came_from_node(&status) {
                    self.inner.nodes.mark_answered(&node);
                } else if e.is_retryable() {
                    self.inner.nodes.mark_failed(&node);
                }
                if e.is_retryable() {
                    self.mark_stale(route);
                }
                (Err(e), sent)
            }
            Err(_) => {
                self.inner.nodes.mark_failed(&node);
                self.mark_stale(route);
                let e = ClientError::timed_out(&node.address, timeout);
                (Err(e), true)
            }
        }
    }

    /// Learns from a successful answer: a node that had to forward a shard's call names the
    /// node that served it, which is the shard's leader now.
    pub(super) async fn after_success(
        &self,
        route: Route<'_>,
        node: &NodeHandle,
        metadata: &tonic::metadata::MetadataMap,
    ) {
        // The header names the serving node by id; an address is understood as well.
        let Some(served_by) = metadata
            .get(FORWARDED_TO_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let v = v.trim();
                v.parse::<u64>()
                    .ok()
                    .or_else(|| self.inner.nodes.id_of_address(v))
            })
        else {
            return;
        };
        let Route::Shard(stream, shard) = route else {
            return;
        };
        if node.id == Some(served_by) {
            return;
        }
        tracing::debug!(%shard, served_by, "call was forwarded; updating the leader hint");
        if let Some(cached) = self.lock_maps().get_mut(stream) {
            let mut map = (*cached.map).clone();
            if map.set_leader(shard, served_by) {
                cached.map = Arc::new(map);
            }
            cached.stale = true;
        }
        if !self.inner.nodes.knows(served_by) {
            self.refresh_nodes().await;
        }
    }

    /// Makes the next routing decision for `stream` ask for its shard map again.
    pub(crate) fn mark_map_stale(&self, stream: &str) {
        self.mark_stale(Route::Shard(stream, ShardId(0)));
    }

    pub(super) fn mark_stale(&self, route: Route<'_>) {
        if let Route::Shard(stream, _) = route
            && let Some(cached) = self.lock_maps().get_mut(stream)
        {
            cached.stale = true;
        }
    }

    pub(super) fn lock_maps(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedMap>> {
        self.inner
            .maps
            .lock()
            .expect("shard map lock is never poisoned")
    }

    pub(crate) fn cached_map(&self, stream: &str) -> Option<Arc<ShardMap>> {
        self.lock_maps().get(stream).map(|c| Arc::clone(&c.map))
    }

    pub(super) fn remember_map(&self, stream: &str, desc: &v1::StreamDescription) {
        match ShardMap::from_description(desc) {
            Ok(map) => {
                self.lock_maps().insert(
                    stream.to_string(),
                    CachedMap {
                        map: Arc::new(map),
                        fetched: Instant::now(),
                        stale: false,
                    },
                );
            }
            Err(e) => tracing::debug!(stream, "not caching the shard map: {e}"),
        }
    }

    /// Makes sure a shard map is cached for `stream`, if one can be had with one call.
    pub(crate) async fn ensure_map(&self, stream: &str) {
        self.routing_map(stream).await;
    }

    /// The stream's shard map for routing: the cached one, refreshed with one
    /// `DescribeStream` when missing, stale (at most every 250 ms) or older than 10 s, by one
    /// caller at a time while the others use what is cached. `None` when no map could be had: then calls go to
    /// any node, which forwards.
    pub(crate) async fn routing_map(&self, stream: &str) -> Option<Arc<ShardMap>> {
        let due = |c: Option<&CachedMap>| match c {
            None => true,
            Some(c) => {
                let age = c.fetched.elapsed();
                (c.stale && age >= MIN_MAP_REFRESH) || age >= MAX_MAP_AGE
            }
        };
        {
            let maps = self.lock_maps();
            let cached = maps.get(stream);
            if !due(cached) {
                return cached.map(|c| Arc::clone(&c.map));
            }
        }
        let Ok(_guard) = self.inner.map_refresh.try_lock() else {
            return self.cached_map(stream);
        };
        if !due(self.lock_maps().get(stream)) {
            return self.cached_map(stream);
        }
        match self
            .describe_once_or_retry(stream, Retry::IfNeverSent)
            .await
        {
            Ok(desc) => {
                self.remember_map(stream, &desc);
                let unknown_leader = desc
                    .shards
                    .iter()
                    .any(|s| s.leader != 0 && !self.inner.nodes.knows(s.leader));
                if unknown_leader && self.inner.config.discover_nodes {
                    self.refresh_nodes().await;
                }
            }
            Err(e) => {
                tracing::debug!(stream, "could not refresh the shard map: {e}");
                if let Some(cached) = self.lock_maps().get_mut(stream) {
                    cached.fetched = Instant::now();
                }
            }
        }
        self.cached_map(stream)
    }

    pub(super) async fn describe_once_or_retry(
        &self,
        name: &str,
        retry: Retry,
    ) -> Result<v1::StreamDescription, ClientError> {
        let request = v1::DescribeStreamRequest {
            stream_name: name.to_string(),
        };
        let reply = self
            .call(Route::Any, retry, |ch| {
                let request = request.clone();
                async move { ch.stream().describe_stream(request).await }
            })
            .await?;
        description_of(reply.value.stream)
    }

    /// Asks for the cluster's members again, at most once a second, by one caller at a time.
    pub(super) async fn refresh_nodes(&self) {
        let Ok(mut last) = self.inner.node_refresh.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < MIN_NODE_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        // Straight to a node rather than through `attempt`, whose success path calls this.
        let node = self.inner.nodes.pick(None);
        let api = Api {
            channel: node.channel.clone(),
            max_decode: self.inner.config.max_message_bytes,
        };
        let mut admin = api.admin();
        let request = admin.cluster_status(v1::ClusterStatusRequest { local_only: false });
        match tokio::time::timeout(self.inner.config.request_timeout, request).await {
            Ok(Ok(status)) => self.inner.nodes.update(status.get_ref()),
            Ok(Err(status)) => tracing::debug!(
                "could not refresh the cluster's members: {}",
                ClientError::from_status(&status, &node.address)
            ),
            Err(_) => tracing::debug!("could not refresh the cluster's members: timed out"),
        }
    }
}

/// A node's channel with the client's message-size limit, ready to make stubs.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    channel: Channel,
    max_decode: usize,
}

impl Api {
    pub(crate) fn stream(self) -> StreamServiceClient<Channel> {
        StreamServiceClient::new(self.channel).max_decoding_message_size(self.max_decode)
    }

    /// `PutRecords` over entries shared with the caller (see [`SharedPutRecords`]).
    pub(crate) async fn put_records(
        self,
        call: SharedPutRecords,
    ) -> Result<tonic::Response<v1::PutRecordsResponse>, tonic::Status> {
        crate::put_call::put_records(self.channel, self.max_decode, call).await
    }

    pub(crate) fn admin(self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel).max_decoding_message_size(self.max_decode)
    }
}
