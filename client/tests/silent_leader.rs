//! The client against a fake three-node cluster whose shard leader takes calls in and never
//! answers them (`Faults::hold`), as a leader that froze or was cut off: once the cluster
//! names another leader, the call goes there too and its copies are counted; while it names
//! the same one, the call keeps waiting and no copy is sent.
//!
//! The client's request timeout here is an hour and the held node keeps its connection, so a
//! call that the held node leaves unanswered can only end through another leader.

mod fake;

use std::time::Duration;

use fake::FakeCluster;
use fake::waits::{key_for, wait_until};
use riptide_client::{Client, ClientConfig, ShardId, StartingPosition, v1};

const STREAM: &str = "orders";
const HELD: u64 = 2;
const NEXT_LEADER: u64 = 3;

/// A cluster with one active stream of `shards` shards (leaders 1, 2, 3, ...), so that shard 1
/// is led by [`HELD`], and a client of `config` connected to node 1 that has its shard map.
async fn setup(
    shards: u32,
    config: impl FnOnce(ClientConfig) -> ClientConfig,
) -> (FakeCluster, Client) {
    let cluster = FakeCluster::start(3).await;
    let config = config(ClientConfig {
        request_timeout: Duration::from_secs(3_600),
        retry_deadline: Duration::from_secs(3_600),
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ClientConfig::new(cluster.endpoint(1))
    });
    let client = Client::connect_with(config).await.expect("connect");
    client
        .create_stream(STREAM, shards, None)
        .await
        .expect("create");
    client
        .wait_for_active(STREAM, Duration::from_secs(5))
        .await
        .expect("active");
    assert_eq!(cluster.leader(STREAM, 1), HELD);
    cluster.clear_calls();
    (cluster, client)
}

/// `future`'s output, failing the test when it has none after 30 s.
async fn within_deadline<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer"))
}

/// Nodes that answered DescribeStream since the calls were last cleared.
fn described_by(cluster: &FakeCluster) -> Vec<u64> {
    cluster
        .calls("DescribeStream")
        .iter()
        .map(|c| c.node)
        .collect()
}

#[tokio::test]
async fn a_put_its_leader_leaves_unanswered_goes_to_the_next_leader_and_counts_both_copies() {
    let (cluster, client) = setup(2, |c| c).await;
    let key = key_for(1, 2, 0);
    cluster.hold("PutRecord", HELD);
    cluster.set_leader(STREAM, 1, NEXT_LEADER);

    let put = within_deadline("put", client.put_record(STREAM, &key, "moved")).await;
    let put = put.expect("answered by the next leader");
    assert_eq!(put.shard_id, ShardId(1));
    assert_eq!(put.attempts, 2, "the held copy may be stored as well");
    let puts = cluster.calls("PutRecord");
    assert_eq!(puts.len(), 2, "{puts:?}");
    assert!(puts[0].node == HELD && puts[0].held, "{puts:?}");
    assert_eq!((puts[1].node, puts[1].at_leader), (NEXT_LEADER, true));
    let stored = cluster.records(STREAM, 1);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].sequence_number, put.sequence_number.to_string());
    let described = described_by(&cluster);
    assert!(
        !described.is_empty() && !described.contains(&HELD),
        "the map must be asked of another node than the silent one: {described:?}"
    );
}

#[tokio::test]
async fn a_slow_leader_keeps_its_call_and_gets_no_second_copy() {
    let (cluster, client) = setup(2, |c| c).await;
    let key = key_for(1, 2, 0);
    cluster.hold("PutRecord", HELD);
    let put = tokio::spawn({
        let client = client.clone();
        async move { client.put_record(STREAM, &key, "slow").await }
    });
    // The map is checked again and again while the call waits, and still names node 2.
    wait_until("the map was checked three times", || {
        described_by(&cluster).len() >= 3
    })
    .await;
    assert!(!described_by(&cluster).contains(&HELD));
    assert_eq!(cluster.held_open(), 1, "the client still waits on its call");
    let puts = cluster.calls("PutRecord");
    assert_eq!(puts.len(), 1, "no second copy while node 2 leads: {puts:?}");

    cluster.release_held();
    let put = within_deadline("put", put).await.expect("task");
    let put = put.expect("answered by the slow leader");
    assert_eq!(put.attempts, 1);
    assert_eq!(cluster.records(STREAM, 1).len(), 1);
    assert_eq!(
        cluster.calls("PutRecord").len(),
        2,
        "the held call, then served"
    );
}

#[tokio::test]
async fn put_records_sends_only_the_silent_shards_batch_to_its_next_leader() {
    let (cluster, client) = setup(3, |c| c).await;
    cluster.hold("PutRecords", HELD);
    cluster.set_leader(STREAM, 1, NEXT_LEADER);
    let records: Vec<v1::PutRecordsEntry> = (0..30)
        .map(|i| v1::PutRecordsEntry {
            data: format!("r{i}").into_bytes().into(),
            partition_key: key_for(i % 3, 3, i as usize),
            explicit_hash_key: None,
        })
        .collect();

    let results = within_deadline("put_records", client.put_records(STREAM, records)).await;
    let results = results.expect("put_records");
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().expect("written");
        assert_eq!(r.shard_id, ShardId(i as u32 % 3));
        let expected = if r.shard_id == ShardId(1) { 2 } else { 1 };
        assert_eq!(r.attempts, expected, "record {i}: {r:?}");
    }
    let calls = cluster.calls("PutRecords");
    let held: Vec<_> = calls.iter().filter(|c| c.held).collect();
    assert_eq!(held.len(), 1, "{calls:?}");
    assert_eq!(held[0].node, HELD);
    let served: Vec<(u64, Option<u32>)> = calls
        .iter()
        .filter(|c| !c.held)
        .map(|c| (c.node, c.shard))
        .collect();
    assert_eq!(served.len(), 3, "one call per shard: {served:?}");
    assert!(served.contains(&(NEXT_LEADER, Some(1))), "{served:?}");
    assert!(calls.iter().filter(|c| !c.held).all(|c| c.at_leader));
    assert_eq!(cluster.records(STREAM, 1).len(), 10);
}

#[tokio::test]
async fn a_read_its_leader_leaves_unanswered_is_served_by_the_next_leader() {
    let (cluster, client) = setup(2, |c| c).await;
    let key = key_for(1, 2, 0);
    for i in 0..3 {
        client
            .put_record(STREAM, &key, format!("r{i}"))
            .await
            .expect("put");
    }
    let mut consumer = client
        .consumer(STREAM, ShardId(1), StartingPosition::TrimHorizon)
        .with_limit(2)
        .with_poll_interval(Duration::from_millis(1));
    let first = consumer.next_batch().await.expect("read from node 2");
    assert_eq!(first.len(), 2);
    cluster.clear_calls();
    cluster.hold("GetRecords", HELD);
    cluster.set_leader(STREAM, 1, NEXT_LEADER);

    let rest = within_deadline("read", consumer.next_batch()).await;
    let rest = rest.expect("read from the next leader");
    assert_eq!(rest.len(), 1);
    assert_eq!(&rest[0].data[..], b"r2");
    let reads = cluster.calls("GetRecords");
    assert_eq!(reads.len(), 2, "{reads:?}");
    assert!(reads[0].held && reads[0].node == HELD, "{reads:?}");
    assert_eq!((reads[1].node, reads[1].at_leader), (NEXT_LEADER, true));
}
