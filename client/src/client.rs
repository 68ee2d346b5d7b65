//! [`Client`]: discovery, routing, retries and every call of the native API.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::v1::{self, PutRecordsEntry};
use riptide_proto::{ErrorCode, SequenceNumber, ShardId};
use tonic::transport::Channel;

use crate::batching::{BatchLimits, record_size, split_batches};
use crate::consumer::Consumer;
use crate::error::never_sent;
use crate::nodes::{ChannelSettings, NodeHandle, NodePool};
use crate::position::StartingPosition;
use crate::producer::{Acks, Producer, ProducerConfig};
use crate::put_call::SharedPutRecords;
use crate::retry::RetryPolicy;
use crate::routing::ShardMap;
use crate::subscription;
use crate::{ClientError, FORWARDED_TO_HEADER};

/// How often at most the client asks for a stream's shard map again after it went stale.
const MIN_MAP_REFRESH: Duration = Duration::from_millis(250);
/// Age after which a shard map is asked for again even without a sign that it is stale, so
/// that leader moves are noticed when the old leader forwards silently.
const MAX_MAP_AGE: Duration = Duration::from_secs(10);
/// How often at most the client asks for the cluster's members again.
const MIN_NODE_REFRESH: Duration = Duration::from_secs(1);
/// How many shards one `put_records` writes to at a time.
const PUT_RECORDS_CONCURRENCY: usize = 16;

/// How a [`Client`] connects, times out and retries.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Nodes to start from, `http://host:port` or `host:port`; the client learns the others
    /// from `ClusterStatus`. At least one.
    pub endpoints: Vec<String>,
    /// Longest wait for a TCP connection to a node (default 3 s).
    pub connect_timeout: Duration,
    /// Longest wait for one attempt of a call (default 10 s).
    pub request_timeout: Duration,
    /// Time after a call's first attempt after which no retry starts (default 30 s).
    pub retry_deadline: Duration,
    /// How long [`Client::connect_with`] keeps trying to reach a first node (default 10 s).
    pub connect_deadline: Duration,
    /// Wait before the first retry; doubles with each retry, with jitter (default 50 ms).
    pub initial_backoff: Duration,
    /// Longest wait between two retries (default 2 s).
    pub max_backoff: Duration,
    /// Largest response the client decodes (default 64 MiB).
    pub max_message_bytes: usize,
    /// While calls are in flight on a connection, the client pings the node this often
    /// (HTTP/2 PING, default 1 s)...
    pub keepalive_interval: Duration,
    /// ...and a node that does not answer a ping within this time (default 3 s) counts as
    /// gone: its connection closes, the calls in flight on it fail as Unavailable and are
    /// retried on other nodes. This is how a client notices a node that froze or was cut off
    /// long before `request_timeout`.
    pub keepalive_timeout: Duration,
    /// Whether to learn the cluster's members at connect time and send each shard's calls
    /// straight to its leader (default true). Without it every call goes to the configured
    /// endpoints, which forward.
    pub discover_nodes: bool,
    /// Whether records read with [`Client::get_records`], a [`Consumer`] or
    /// [`Client::subscribe`] carry their sequence number as a number (`Record.sequence`) with
    /// `sequence_number` left empty (default false). Less work per record for the nodes and
    /// the client; read the position with `Record::sequence()`, which takes either form.
    pub numeric_sequence_numbers: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:7101".to_string()],
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            retry_deadline: Duration::from_secs(30),
            connect_deadline: Duration::from_secs(10),
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_message_bytes: 64 * 1024 * 1024,
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(3),
            discover_nodes: true,
            numeric_sequence_numbers: false,
        }
    }
}

impl ClientConfig {
    /// The defaults with one endpoint.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoints: vec![endpoint.into()],
            ..Self::default()
        }
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
            deadline: self.retry_deadline,
        }
    }
}

/// What [`Client::create_stream_when_ready`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// This call created the stream.
    Now(v1::StreamDescription),
    /// The stream existed after the cluster had refused an earlier attempt of this call.
    AfterRefusal,
}

/// Settings of a new stream beyond its shard count, for [`Client::create_stream_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Hours the stream keeps its records; the node's default (24) when `None`.
    pub retention_hours: Option<u32>,
    /// A region whose replicas should lead the shards while it is healthy; the leaders spread
    /// over every healthy node when `None`.
    pub preferred_leader_region: Option<String>,
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PutResult {
    /// The shard that holds the record.
    pub shard_id: ShardId,
    /// The record's sequence number within the shard.
    pub sequence_number: SequenceNumber,
    /// How many times the record was sent. Above 1, an earlier attempt may have been written
    /// as well (its answer was lost), so the record may appear twice in the shard.
    pub attempts: u32,
}

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
struct CachedMap {
    map: Arc<ShardMap>,
    fetched: Instant,
    stale: bool,
}

struct Inner {
    config: ClientConfig,
    retry: RetryPolicy,
    nodes: NodePool,
    maps: Mutex<HashMap<String, CachedMap>>,
    map_refresh: tokio::sync::Mutex<()>,
    node_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// A connection to a Riptide cluster. Cheap to clone; clones share connections and caches.
///
/// Every node accepts every call and forwards it where it must go, so the client only
/// optimises: it keeps each stream's shard map and sends a shard's calls straight to the
/// shard's leader, refreshing the map when a node reports that it had to forward or when a
/// leader stops answering.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.inner.config.endpoints)
            .finish_non_exhaustive()
    }
}

fn parse_shard_id(s: &str) -> Result<ShardId, ClientError> {
    s.parse().map_err(ClientError::malformed)
}

fn parse_sequence(s: &str) -> Result<SequenceNumber, ClientError> {
    SequenceNumber::parse(s, "sequence_number").map_err(ClientError::malformed)
}

fn description_of(
    desc: Option<v1::StreamDescription>,
) -> Result<v1::StreamDescription, ClientError> {
    desc.ok_or_else(|| ClientError::malformed("the stream description is missing"))
}

impl Client {
    /// Connects to any node (`http://127.0.0.1:7101` or `127.0.0.1:7101`) and learns the
    /// others from `ClusterStatus`.
    pub async fn connect(endpoint: &str) -> Result<Client, ClientError> {
        Self::connect_with(ClientConfig::new(endpoint)).await
    }

    /// Connects with explicit settings. Fails when no endpoint answers within
    /// [`ClientConfig::connect_deadline`]; a node that answers but cannot report the cluster's members still lets the
    /// client work, through the configured endpoints.
    pub async fn connect_with(config: ClientConfig) -> Result<Client, ClientError> {
        let nodes = NodePool::new(
            &config.endpoints,
            ChannelSettings {
                connect_timeout: config.connect_timeout,
                keepalive_interval: config.keepalive_interval,
                keepalive_timeout: config.keepalive_timeout,
            },
        )?;
        let client = Client {
            inner: Arc::new(Inner {
                retry: config.retry_policy(),
                config,
                nodes,
                maps: Mutex::new(HashMap::new()),
                map_refresh: tokio::sync::Mutex::new(()),
                node_refresh: tokio::sync::Mutex::new(None),
            }),
        };
        // One node answering is enough; learning the members is best effort.
        let discover = client.inner.config.discover_nodes;
        let policy = RetryPolicy {
            deadline: client.inner.config.connect_deadline,
            ..client.inner.retry
        };
        let status = client
            .call_with(policy, Route::Any, Retry::Retryable, |ch| async move {
                ch.admin()
                    .cluster_status(v1::ClusterStatusRequest {
                        local_only: !discover,
                    })
                    .await
            })
            .await;
        match status {
            Ok(reply) if discover => {
                client.inner.nodes.update(&reply.value);
                *client.inner.node_refresh.lock().await = Some(Instant::now());
            }
            Ok(_) => {}
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => tracing::debug!("cluster members unknown, using the endpoints: {e}"),
        }
        Ok(client)
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    // -----------------------------------------------------------------------------------------
    // Streams
    // -----------------------------------------------------------------------------------------

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
                    return Err(ClientError::new(
                        ErrorCode::ResourceInUse,
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
                return Err(ClientError::new(
                    ErrorCode::ResourceInUse,
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
        let answer = self
            .attempt(Route::Node(node), |ch| async move {
                ch.stream().describe_stream(request).await
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

    // -----------------------------------------------------------------------------------------
    // Records
    // -----------------------------------------------------------------------------------------

    /// Writes one record, sent to its shard's leader. Returns once the record is committed.
    /// Unavailable and Throttled answers are retried until the retry deadline;
    /// [`PutResult::attempts`] says how many sends it took.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
    ) -> Result<PutResult, ClientError> {
        let request = v1::PutRecordRequest {
            stream_name: stream.to_string(),
            data: data.into(),
            partition_key: partition_key.to_string(),
            explicit_hash_key: None,
            sequence_number_for_ordering: None,
        };
        let shard = self.routing_map(stream).await.and_then(|m| {
            m.route(partition_key, None)
                .ok()
                .flatten()
                .map(|s| s.shard_id)
        });
        let route = shard.map_or(Route::Any, |s| Route::Shard(stream, s));
        let reply = self
            .call(route, Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().put_record(request).await }
            })
            .await?;
        Ok(PutResult {
            shard_id: parse_shard_id(&reply.value.shard_id)?,
            sequence_number: parse_sequence(&reply.value.sequence_number)?,
            attempts: reply.attempts,
        })
    }

    /// Writes many records: one result per record, in order. Records are split by shard (and
    /// into calls of at most 500 records and 5 MiB) and sent to each shard's leader, shards
    /// concurrently and each shard's calls in order, so records of one partition key are
    /// stored in the order given (except that a record sent again after a retryable failure
    /// lands after those of its call that succeeded at once). Records that fail with a
    /// retryable code are sent again until the retry deadline. The outer error is only for an empty stream name; everything else is reported
    /// per record.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
    ) -> Result<Vec<Result<PutResult, ClientError>>, ClientError> {
        if stream.is_empty() {
            return Err(ClientError::invalid("stream_name: must not be empty"));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.routing_map(stream).await;
        let mut results: Vec<Option<Result<PutResult, ClientError>>> =
            (0..records.len()).map(|_| None).collect();
        let mut groups: HashMap<Option<ShardId>, Vec<usize>> = HashMap::new();
        for (i, entry) in records.iter().enumerate() {
            let shard = match &map {
                Some(map) => {
                    match map.route(&entry.partition_key, entry.explicit_hash_key.as_deref()) {
                        Ok(route) => route.map(|r| r.shard_id),
                        Err(e) => {
                            results[i] = Some(Err(ClientError::new(
                                e.code,
                                format!("records[{i}].{}", e.message),
                            )));
                            continue;
                        }
                    }
                }
                None => None,
            };
            groups.entry(shard).or_default().push(i);
        }
        // Calls of one shard go one after another, so that records of one key keep their
        // order; shards go concurrently.
        let limits = BatchLimits::new(usize::MAX, usize::MAX);
        let mut shard_calls = Vec::new();
        for (shard, indices) in groups {
            let sizes: Vec<usize> = indices.iter().map(|&i| record_size(&records[i])).collect();
            let calls: Vec<(Vec<usize>, Arc<Vec<PutRecordsEntry>>)> = split_batches(&sizes, limits)
                .into_iter()
                .map(|range| {
                    let batch: Vec<usize> = indices[range].to_vec();
                    let entries = Arc::new(batch.iter().map(|&i| records[i].clone()).collect());
                    (batch, entries)
                })
                .collect();
            shard_calls.push((shard, calls));
        }
        let mut done = futures::stream::iter(shard_calls)
            .map(|(shard, calls)| async move {
                let mut outcomes = Vec::new();
                for (batch, entries) in calls {
                    let (outcome, _) = self.put_batch(stream, shard, entries, u32::MAX).await;
                    outcomes.push((batch, outcome));
                }
                outcomes
            })
            .buffer_unordered(PUT_RECORDS_CONCURRENCY);
        while let Some(outcomes) = done.next().await {
            for (batch, outcome) in outcomes {
                for (i, result) in batch.into_iter().zip(outcome) {
                    results[i] = Some(result);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every record was routed or refused"))
            .collect())
    }

    /// Sends one batch for one shard (or for any node when the shard is unknown) with
    /// `PutRecords`, sending failed records again while their code is retryable, up to
    /// `max_attempts` sends per record and the retry deadline. Returns a result per entry, in
    /// order, and how many calls it made.
    pub(crate) async fn put_batch(
        &self,
        stream: &str,
        shard: Option<ShardId>,
        entries: Arc<Vec<PutRecordsEntry>>,
        max_attempts: u32,
    ) -> (Vec<Result<PutResult, ClientError>>, u32) {
        let started = Instant::now();
        let route = shard.map_or(Route::Any, |s| Route::Shard(stream, s));
        let mut attempts = vec![0u32; entries.len()];
        let mut results: Vec<Option<Result<PutResult, ClientError>>> =
            (0..entries.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..entries.len()).collect();
        let mut last_errors: Vec<Option<ClientError>> = vec![None; entries.len()];
        let mut calls = 0;
        while !pending.is_empty() {
            calls += 1;
            // Encoded from the shared entries: a retry copies no record.
            let request = SharedPutRecords {
                stream_name: stream.to_string(),
                entries: Arc::clone(&entries),
                pending: pending.clone(),
                numeric_positions: true,
            };
            for &i in &pending {
                attempts[i] += 1;
            }
            let outcome = self
                .attempt(route, |ch| async move { ch.put_records(request).await })
                .await;
            let mut retry = Vec::new();
            match outcome {
                Ok(reply) if reply.records.len() != pending.len() => {
                    let e = ClientError::malformed(format_args!(
                        "PutRecords answered {} results for {} records",
                        reply.records.len(),
                        pending.len()
                    ));
                    for &i in &pending {
                        results[i] = Some(Err(e.clone()));
                    }
                }
                Ok(reply) => {
                    for (&i, entry) in pending.iter().zip(reply.records) {
                        match record_outcome(entry, attempts[i]) {
                            Err(e) if e.is_retryable() => {
                                last_errors[i] = Some(e);
                                retry.push(i);
                            }
                            result => results[i] = Some(result),
                        }
                    }
                }
                Err(e) if e.is_retryable() => {
                    for &i in &pending {
                        last_errors[i] = Some(e.clone());
                    }
                    retry = pending.clone();
                }
                Err(e) => {
                    for &i in &pending {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
            pending = retry;
            if pending.is_empty() {
                break;
            }
            let delay = self
                .inner
                .retry
                .next_delay(started, Instant::now(), calls)
                .filter(|_| pending.iter().all(|&i| attempts[i] < max_attempts));
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => break,
            }
        }
        for i in pending {
            let e = last_errors[i]
                .take()
                .unwrap_or_else(|| ClientError::new(ErrorCode::Unavailable, "not sent"));
            results[i] = Some(Err(e));
        }
        let results = results
            .into_iter()
            .map(|r| r.expect("every entry has an outcome"))
            .collect();
        (results, calls)
    }

    /// An iterator over `shard` from `from`; valid on any node for 5 minutes.
    pub async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<String, ClientError> {
        let wire = from.to_wire();
        let request = v1::GetShardIteratorRequest {
            stream_name: stream.to_string(),
            shard_id: shard.to_string(),
            shard_iterator_type: wire.kind as i32,
            starting_sequence_number: wire.sequence_number,
            timestamp_ms: wire.timestamp_ms,
        };
        self.ensure_map(stream).await;
        let reply = self
            .call(Route::Shard(stream, shard), Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().get_shard_iterator(request).await }
            })
            .await?;
        Ok(reply.value.shard_iterator)
    }

    /// Up to `limit` records (0: the node's maximum of 10,000) from `iterator`, with the
    /// iterator to continue from. An iterator older than 5 minutes fails with
    /// [`ErrorCode::ExpiredIterator`].
    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<v1::GetRecordsResponse, ClientError> {
        self.get_records_via(Route::Any, iterator, limit).await
    }

    pub(crate) async fn get_records_via(
        &self,
        route: Route<'_>,
        iterator: &str,
        limit: u32,
    ) -> Result<v1::GetRecordsResponse, ClientError> {
        let request = v1::GetRecordsRequest {
            shard_iterator: iterator.to_string(),
            limit,
            numeric_positions: self.inner.config.numeric_sequence_numbers,
        };
        let reply = self
            .call(route, Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().get_records(request).await }
            })
            .await?;
        Ok(reply.value)
    }

    /// Records of `shard` pushed as they commit, from `from`, until the stream is dropped.
    ///
    /// When the connection breaks or the shard's leader changes, the subscription resumes by
    /// itself after the last record it delivered (no record is delivered twice); it ends with
    /// an error only when resuming fails for longer than the retry deadline or for a reason
    /// retrying cannot fix.
    pub async fn subscribe(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<
        impl Stream<Item = Result<v1::SubscribeToShardEvent, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        subscription::subscribe(self.clone(), stream.to_string(), shard, from).await
    }

    pub(crate) async fn open_subscription(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<tonic::Streaming<v1::SubscribeToShardEvent>, ClientError> {
        let wire = from.to_wire();
        let request = v1::SubscribeToShardRequest {
            stream_name: stream.to_string(),
            shard_id: shard.to_string(),
            starting_position: wire.kind as i32,
            starting_sequence_number: wire.sequence_number,
            timestamp_ms: wire.timestamp_ms,
            numeric_positions: self.inner.config.numeric_sequence_numbers,
        };
        self.ensure_map(stream).await;
        let reply = self
            .call(Route::Shard(stream, shard), Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().subscribe_to_shard(request).await }
            })
            .await?;
        Ok(reply.value)
    }

    // -----------------------------------------------------------------------------------------
    // Administration
    // -----------------------------------------------------------------------------------------

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

    // -----------------------------------------------------------------------------------------
    // Producers and consumers
    // -----------------------------------------------------------------------------------------

    /// A batching producer for `stream`. Must be called inside a Tokio runtime: it starts the
    /// producer's task, which [`Producer::close`] (or dropping the producer) ends.
    pub fn producer(&self, stream: &str, config: ProducerConfig) -> Producer {
        Producer::start(self.clone(), stream.to_string(), config)
    }

    /// A producer that also takes records with [`Producer::send_tagged`], and the [`Acks`]
    /// their answers come through, a call's records at a time: for writers of many records
    /// that would rather not hold a future per record.
    pub fn producer_with_acks(&self, stream: &str, config: ProducerConfig) -> (Producer, Acks) {
        Producer::start_with_acks(self.clone(), stream.to_string(), config)
    }

    /// A polling consumer of one shard, starting at `from`.
    pub fn consumer(&self, stream: &str, shard: ShardId, from: StartingPosition) -> Consumer {
        Consumer::new(self.clone(), stream.to_string(), shard, from)
    }

    // -----------------------------------------------------------------------------------------
    // Calls, routing and retries
    // -----------------------------------------------------------------------------------------

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
    async fn call_with<T, F, Fut>(
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
    async fn attempt_inner<T, F, Fut>(
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
                let e = ClientError::new(
                    ErrorCode::Unavailable,
                    format!("{}: no answer within {timeout:?}", node.address),
                );
                (Err(e), true)
            }
        }
    }

    /// Learns from a successful answer: a node that had to forward a shard's call names the
    /// node that served it, which is the shard's leader now.
    async fn after_success(
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

    fn mark_stale(&self, route: Route<'_>) {
        if let Route::Shard(stream, _) = route
            && let Some(cached) = self.lock_maps().get_mut(stream)
        {
            cached.stale = true;
        }
    }

    fn lock_maps(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedMap>> {
        self.inner
            .maps
            .lock()
            .expect("shard map lock is never poisoned")
    }

    pub(crate) fn cached_map(&self, stream: &str) -> Option<Arc<ShardMap>> {
        self.lock_maps().get(stream).map(|c| Arc::clone(&c.map))
    }

    fn remember_map(&self, stream: &str, desc: &v1::StreamDescription) {
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

    async fn describe_once_or_retry(
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
    async fn refresh_nodes(&self) {
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

/// The result of one record of a `PutRecords` answer.
fn record_outcome(
    entry: v1::PutRecordsResultEntry,
    attempts: u32,
) -> Result<PutResult, ClientError> {
    if !entry.error_code.is_empty() {
        let code = entry.error_code.parse().unwrap_or(ErrorCode::Internal);
        return Err(ClientError::new(code, entry.error_message));
    }
    let (shard_id, sequence_number) = entry.position().map_err(ClientError::malformed)?;
    Ok(PutResult {
        shard_id,
        sequence_number,
        attempts,
    })
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
