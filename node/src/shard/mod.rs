//! Shards: the state machine that stores a shard's records, the commands its Raft log carries,
//! and shard iterators.

pub mod iterator;
pub mod machine;

pub use machine::{NewRecord, ShardCommand, ShardMachine, ShardReader, ShardWakers, StoredRecord};
