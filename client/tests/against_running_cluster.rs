//! The client against a real cluster, started separately. Ignored by default; run with
//!
//! ```sh
//! cargo run -p riptide -- dev --base-port 17101 --data-dir /tmp/riptide-client-test &
//! RIPTIDE_TEST_ENDPOINT=127.0.0.1:17101 cargo test -p riptide-client \
//!     --test against_running_cluster -- --ignored --test-threads 1
//! ```
//!
//! Each test makes its own stream (named after the test and the time) and deletes it.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use riptide_client::{
    Client, ClientConfig, ProducerConfig, PutResult, SequenceNumber, ShardId, StartingPosition, v1,
};

async fn connect() -> Client {
    let endpoint = std::env::var("RIPTIDE_TEST_ENDPOINT")
        .expect("set RIPTIDE_TEST_ENDPOINT to a node of a running cluster");
    Client::connect_with(ClientConfig::new(endpoint))
        .await
        .expect("connect")
}

async fn new_stream(client: &Client, test: &str, shards: u32) -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    let name = format!("{test}-{ms}");
    client
        .create_stream(&name, shards, None)
        .await
        .expect("create");
    client
        .wait_for_active(&name, Duration::from_secs(30))
        .await
        .expect("active");
    name
}

/// Every record of every shard, by shard, read with consumers from the trim horizon.
async fn read_all(
    client: &Client,
    stream: &str,
    shards: u32,
) -> BTreeMap<ShardId, Vec<v1::Record>> {
    let mut all = BTreeMap::new();
    for s in 0..shards {
        let mut consumer = client
            .consumer(stream, ShardId(s), StartingPosition::TrimHorizon)
            .with_limit(0);
        let mut records = Vec::new();
        loop {
            let batch = consumer.next_batch().await.expect("read");
            if batch.is_empty() && consumer.caught_up() {
                break;
            }
            records.extend(batch);
        }
        all.insert(ShardId(s), records);
    }
    all
}

/// Checks that every acknowledged record is stored exactly where its result says, that no
/// record is stored that was not sent, and that only records sent more than once appear twice.
fn check(acked: &[(String, PutResult)], stored: &BTreeMap<ShardId, Vec<v1::Record>>) {
    let mut by_position = HashMap::new();
    let mut copies: HashMap<&[u8], usize> = HashMap::new();
    for (shard, records) in stored {
        for r in records {
            by_position.insert((*shard, r.sequence_number.clone()), r);
            *copies.entry(&r.data).or_default() += 1;
        }
    }
    for (data, result) in acked {
        let r = by_position
            .get(&(result.shard_id, result.sequence_number.to_string()))
            .unwrap_or_else(|| panic!("acknowledged record {data} missing at {result:?}"));
        assert_eq!(r.data, data.as_bytes(), "another record at {result:?}");
        let n = copies.get(data.as_bytes()).copied().unwrap_or(0);
        assert!(
            n == 1 || (n > 1 && result.attempts > 1),
            "{data} stored {n} times after {} attempts",
            result.attempts
        );
    }
    let sent: std::collections::HashSet<&[u8]> = acked.iter().map(|(d, _)| d.as_bytes()).collect();
    for data in copies.keys() {
        assert!(
            sent.contains(data),
            "phantom record {:?}",
            String::from_utf8_lossy(data)
        );
    }
}

#[tokio::test]
#[ignore = "needs a running cluster: set RIPTIDE_TEST_ENDPOINT"]
async fn put_records_land_on_the_right_shards_in_key_order() {
    let client = connect().await;
    let stream = new_stream(&client, "routing", 4).await;
    let entries: Vec<v1::PutRecordsEntry> = (0..2_000)
        .map(|i| v1::PutRecordsEntry {
            data: format!("record {i}").into_bytes().into(),
            partition_key: format!("key-{}", i % 50),
            explicit_hash_key: None,
        })
        .collect();
    let results = client.put_records(&stream, entries).await.expect("put");
    let acked: Vec<(String, PutResult)> = results
        .into_iter()
        .enumerate()
        .map(|(i, r)| (format!("record {i}"), r.expect("written")))
        .collect();
    let stored = read_all(&client, &stream, 4).await;
    check(&acked, &stored);
    // Records of one key are in one shard, in the order sent.
    for records in stored.values() {
        let mut last: HashMap<&str, usize> = HashMap::new();
        for r in records {
            let i: usize = String::from_utf8_lossy(&r.data)
                .trim_start_matches("record ")
                .parse()
                .expect("number");
            if let Some(prev) = last.insert(&r.partition_key, i) {
                assert!(prev < i, "key {} out of order", r.partition_key);
            }
        }
    }
    client.delete_stream(&stream).await.expect("delete");
}

#[tokio::test]
#[ignore = "needs a running cluster: set RIPTIDE_TEST_ENDPOINT"]
async fn the_producer_keeps_every_record_across_leader_transfers() {
    let client = connect().await;
    let stream = new_stream(&client, "transfers", 3).await;
    let producer = client.producer(&stream, ProducerConfig::default());
    let mut acks = Vec::new();
    let started = Instant::now();
    let mut transferred = 0;
    for i in 0..6_000 {
        let data = format!("event {i}");
        acks.push((data.clone(), producer.send(format!("k{}", i % 97), data)));
        if i % 1_000 == 999 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let desc = client.describe_stream(&stream).await.expect("describe");
            let shard = &desc.shards[transferred % desc.shards.len()];
            let to = shard
                .replicas
                .iter()
                .copied()
                .find(|r| *r != shard.leader)
                .expect("another replica");
            let id: ShardId = shard.shard_id.parse().expect("shard id");
            client
                .transfer_shard_leader(&stream, id, to)
                .await
                .expect("transfer");
            transferred += 1;
        }
    }
    let mut acked = Vec::new();
    for (data, ack) in acks {
        acked.push((data, ack.await.expect("acknowledged")));
    }
    producer.close().await;
    let stats_elapsed = started.elapsed();
    let stored = read_all(&client, &stream, 3).await;
    check(&acked, &stored);
    let retried = acked.iter().filter(|(_, r)| r.attempts > 1).count();
    eprintln!("6000 records, {transferred} transfers, {retried} retried, {stats_elapsed:?}");
    client.delete_stream(&stream).await.expect("delete");
}

#[tokio::test]
#[ignore = "needs a running cluster: set RIPTIDE_TEST_ENDPOINT"]
async fn a_subscription_follows_its_shard_across_a_leader_transfer() {
    let client = connect().await;
    let stream = new_stream(&client, "subscribe", 1).await;
    let mut events = client
        .subscribe(&stream, ShardId(0), StartingPosition::TrimHorizon)
        .await
        .expect("subscribe");
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut last = SequenceNumber(0);
    for round in 0..3 {
        for i in 0..5 {
            client
                .put_record(&stream, "k", format!("r{round}-{i}"))
                .await
                .expect("put");
        }
        while got.len() < (round + 1) * 5 {
            let event = tokio::time::timeout(Duration::from_secs(20), events.next())
                .await
                .expect("an event in time")
                .expect("open")
                .expect("no error");
            for r in event.records {
                let seq = SequenceNumber::parse(&r.sequence_number, "seq").expect("valid");
                assert!(seq > last, "repeated or out of order");
                last = seq;
                got.push(r.data.to_vec());
            }
        }
        let desc = client.describe_stream(&stream).await.expect("describe");
        let shard = &desc.shards[0];
        let to = shard
            .replicas
            .iter()
            .copied()
            .find(|r| *r != shard.leader)
            .expect("another replica");
        client
            .transfer_shard_leader(&stream, ShardId(0), to)
            .await
            .expect("transfer");
    }
    let expected: Vec<Vec<u8>> = (0..3)
        .flat_map(|round| (0..5).map(move |i| format!("r{round}-{i}").into_bytes()))
        .collect();
    assert_eq!(got, expected);
    client.delete_stream(&stream).await.expect("delete");
}

#[tokio::test]
#[ignore = "needs a running cluster: set RIPTIDE_TEST_ENDPOINT"]
async fn cluster_status_lists_every_node() {
    let client = connect().await;
    let status = client.cluster_status().await.expect("status");
    assert!(status.nodes.len() >= 3, "{status:?}");
    assert!(status.nodes.iter().all(|n| n.up));
    assert!(status.controller_leader != 0);
}
