//! riptide-node: the node server (`riptide node`, `riptide dev`), the controller group, the
//! shard state machine, placement, and the gRPC and Kinesis services. The `riptide` binary
//! (cmd/riptide) runs it; the client commands and `riptide bench` live in riptide-cli, which
//! does not depend on this crate.
//!
//! Depends on riptide-raft for replication and storage and on riptide-proto for the API; never
//! on RocksDB or openraft directly, and never on riptide-client or riptide-cli.

pub mod clock;
pub mod config;
pub mod controller;
pub mod dev;
pub mod error;
pub mod kinesis_api;
pub mod server;
pub mod shard;
pub mod validate;
pub mod warn_limit;
