//! Helpers the tests against the fake cluster share.

use std::time::{Duration, Instant};

use riptide_proto::hash_key_of;

/// A partition key whose hash falls in `shard` of a stream with `shards` shards.
pub fn key_for(shard: u32, shards: u32, salt: usize) -> String {
    let ranges = riptide_proto::split_hash_space(shards);
    (0..)
        .map(|i| format!("key-{salt}-{i}"))
        .find(|k| ranges[shard as usize].contains(hash_key_of(k)))
        .expect("some key hashes into every shard")
}

/// Waits for `condition`, failing the test after 30 s.
pub async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
