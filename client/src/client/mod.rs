//! [`Client`]: a connection to a Riptide cluster, and every call of the native API, by role:
//! [`streams`] (stream administration), [`records`] (writes and reads), [`admin`] (cluster
//! administration); [`calls`] routes each call to a node and retries it as its kind allows.

mod admin;
mod calls;
mod records;
mod streams;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_proto::{SequenceNumber, ShardId};

use crate::ClientError;
use crate::consumer::Consumer;
use crate::nodes::{ChannelSettings, NodePool};
use crate::position::StartingPosition;
use crate::producer::{Acks, Producer, ProducerConfig};
use crate::retry::RetryPolicy;

use calls::CachedMap;
pub(crate) use calls::{Retry, Route};

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
    /// How long a call sent to a shard's leader (a put, a read, an iterator) waits for its
    /// answer before the client checks whether the shard has another leader now (default
    /// 250 ms; `None` or zero never checks). While the call stays unanswered, the client asks a
    /// node other than the one it waits on for the stream's shard map, about every 200 ms
    /// until `request_timeout`; once the map names another leader, the same call goes there
    /// too, and the first success is the answer. A leader that froze or was cut off thus
    /// costs about an election, not `keepalive_timeout`. A leader that is only slow keeps its
    /// call and costs a `DescribeStream` now and then (one for all the calls of a client
    /// that wait), never a second copy. The extra copy of a put counts in
    /// [`PutResult::attempts`]: the first may have been stored as well.
    pub leader_answer_deadline: Option<Duration>,
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
            leader_answer_deadline: Some(Duration::from_millis(250)),
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
    /// How many times the record was sent: by the client (each retry, and each copy sent to a
    /// shard's new leader while the old one did not answer), and by a node that forwarded it
    /// and sent it on to a new leader in the same way. Above 1, an earlier attempt may have
    /// been written as well (its answer was lost), so the record may appear twice in the
    /// shard.
    pub attempts: u32,
}

struct Inner {
    config: ClientConfig,
    retry: RetryPolicy,
    nodes: NodePool,
    maps: Mutex<HashMap<String, CachedMap>>,
    map_refresh: tokio::sync::Mutex<()>,
    /// Held while asking for a shard map on behalf of calls that wait on a silent leader.
    map_recheck: tokio::sync::Mutex<()>,
    node_refresh: tokio::sync::Mutex<Option<Instant>>,
}

/// A connection to a Riptide cluster. Cheap to clone; clones share connections and caches.
///
/// Every node accepts every call and forwards it where it must go, so the client only
/// optimises: it keeps each stream's shard map and sends a shard's calls straight to the
/// shard's leader, refreshing the map when a node reports that it had to forward or when a
/// leader stops answering, and sending a call that its leader leaves unanswered to the
/// shard's next leader once the cluster has one.
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
                map_recheck: tokio::sync::Mutex::new(()),
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
}
