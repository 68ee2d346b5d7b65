//! riptide-client: the async client applications embed to use a Riptide cluster over its
//! native gRPC API. It finds the cluster's nodes, routes each record to its shard's leader by
//! hash key, sends a call that a silent leader leaves unanswered on to the shard's next leader
//! once the cluster has elected one ([`ClientConfig::leader_answer_deadline`]), retries what is
//! safe to retry with backoff under a deadline, batches writes in a
//! [`Producer`] and reads shards with a polling [`Consumer`] or a push subscription
//! ([`Client::subscribe`]).
//!
//! It depends on riptide-proto (messages, ids, error codes, hash-key routing) and tonic only;
//! never on riptide-raft, riptide-node or RocksDB, so that applications and the delivery
//! daemon build without the storage engine. Routing here is only an optimisation: every node
//! forwards a request it cannot serve, so a stale view costs a hop, never a misplaced record.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use riptide_client::{Client, ClientError, StartingPosition};
//!
//! # async fn example() -> Result<(), ClientError> {
//! let client = Client::connect("http://127.0.0.1:7101").await?;
//! client.create_stream("orders", 2, None).await?;
//! client.wait_for_active("orders", Duration::from_secs(30)).await?;
//!
//! let written = client.put_record("orders", "customer-17", "first order").await?;
//! println!("written to {} at {}", written.shard_id, written.sequence_number);
//!
//! let mut consumer = client.consumer("orders", written.shard_id, StartingPosition::TrimHorizon);
//! let records = consumer.next_batch().await?;
//! assert_eq!(records[0].data, &b"first order"[..]);
//!
//! // Many records: batched per shard, sent to each shard's leader.
//! let producer = client.producer("orders", Default::default());
//! let acks: Vec<_> = (0..100)
//!     .map(|i| producer.send(format!("customer-{i}"), format!("order {i}")))
//!     .collect();
//! for ack in futures::future::join_all(acks).await {
//!     ack?;
//! }
//! producer.close().await;
//! # Ok(())
//! # }
//! ```

mod batching;
mod client;
mod consumer;
mod error;
mod nodes;
mod position;
mod producer;
mod put_call;
mod retry;
mod routing;
mod subscription;

pub use batching::{MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL};
pub use client::{Client, ClientConfig, Created, PutResult, StreamOptions};
pub use consumer::Consumer;
pub use error::{ClientError, ClientErrorKind};
pub use position::StartingPosition;
pub use producer::{Acks, Producer, ProducerConfig, ProducerStats, TaggedAck};
/// Metadata header a node adds to a response it had to forward: the node that served the call
/// (for a shard's call, the shard's leader), by address or id.
pub use riptide_proto::FORWARDED_TO_HEADER;
pub use riptide_proto::v1;
pub use riptide_proto::{ErrorCode, SequenceNumber, ShardId};
