//! riptide-client: the thin async client applications embed: discovery, routing by hash key,
//! retries, a batching producer and consumers.
//!
//! Depends on riptide-proto and tonic only; never on the engine, the node or RocksDB. It is
//! filled in with the streams work; until then the crate is empty so that the workspace layout
//! is in place.
