//! riptide-proto: the native gRPC API of Riptide (the stream and admin services), its id
//! newtypes, its error codes, and the hash-key routing every client and node agree on.
//!
//! This crate holds only message and service definitions and pure functions over them; it runs
//! no tasks and depends on no other Riptide crate, so that the client can use it without the
//! engine, the node or RocksDB.

pub mod codec;
pub mod error;
pub mod headers;
pub mod ids;
pub mod routing;

/// Messages and services generated from `proto/riptide.proto`.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("riptide.v1");
}

pub use error::{ErrorCode, connection_refused, status_code};
pub use headers::{ERROR_CODE_HEADER, FORWARDED_TO_HEADER, HOPS_HEADER, RESENT_HEADER};
pub use ids::{IdError, SequenceNumber, ShardId, StreamName};
pub use routing::{HashKeyRange, hash_key_of, parse_hash_key, shard_for, split_hash_space};
