//! riptide-node: the `riptide` binary's library. Today it holds the local development cluster
//! ([`dev`]); the stream service, the controller and the Kinesis gateway come next.
//!
//! Depends on riptide-raft for replication and storage; never on RocksDB or openraft directly.

pub mod dev;
