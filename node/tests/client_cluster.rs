//! The client crate against the development cluster (`riptide dev`: three in-process nodes,
//! started by each test): puts routed to each shard's leader land there in each key's order,
//! and the batching producer keeps every record across leader transfers. The client's other
//! behaviours (routing, retries, the producer, the consumer) are tested against a fake cluster
//! in `client/tests/against_fake_cluster.rs`, and its subscription across a leader transfer in
//! `leaders.rs`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::ports;
use riptide_client::{Client, ProducerConfig, PutResult, ShardId, StartingPosition, v1};
use riptide_node::dev::{DevCluster, DevOptions};

/// A development cluster in a temporary folder, and a client connected to its first node.
async fn start() -> (tempfile::TempDir, DevCluster, Client) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = DevOptions {
        data_dir: dir.path().to_path_buf(),
        base_port: ports::consecutive(3),
        kinesis_port: ports::free_port(),
    };
    let cluster = DevCluster::start(&opts).await.expect("start");
    let client = Client::connect(&cluster.endpoints()[0])
        .await
        .expect("connect");
    (dir, cluster, client)
}

async fn new_stream(client: &Client, name: &str, shards: u32) -> String {
    client
        .create_stream(name, shards, None)
        .await
        .expect("create");
    client
        .wait_for_active(name, Duration::from_secs(60))
        .await
        .expect("active");
    name.to_string()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_records_land_on_the_right_shards_in_key_order() {
    let (_dir, cluster, client) = start().await;
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
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_producer_keeps_every_record_across_leader_transfers() {
    let (_dir, cluster, client) = start().await;
    let stream = new_stream(&client, "transfers", 3).await;
    let producer = client.producer(&stream, ProducerConfig::default());
    let mut acks = Vec::new();
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
    let stored = read_all(&client, &stream, 3).await;
    check(&acked, &stored);
    let retried = acked.iter().filter(|(_, r)| r.attempts > 1).count();
    eprintln!("6000 records, {transferred} transfers, {retried} retried");
    client.delete_stream(&stream).await.expect("delete");
    cluster.shutdown().await;
}
