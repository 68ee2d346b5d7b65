//! riptide-node: the `riptide` binary's library: the node server (`riptide node`, `riptide
//! dev`), the controller group, the shard state machine, placement, and the gRPC services.
//!
//! Depends on riptide-raft for replication and storage and on riptide-proto for the API; never
//! on RocksDB or openraft directly.

pub mod bench;
pub mod cli;
pub mod clock;
pub mod config;
pub mod controller;
pub mod dev;
pub mod error;
pub mod kinesis_api;
pub mod server;
pub mod shard;
pub mod validate;
