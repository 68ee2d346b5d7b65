//! Failover: while a producer writes without pause, the leader of each shard is stopped in
//! turn (and started again before the next). Every acknowledged record must be readable at the
//! sequence number it was acknowledged with, exactly once unless the producer sent it twice,
//! and no record may appear that was never sent.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{TestCluster, iterator, read_from, shard_groups};
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::v1::{self, ShardIteratorType};
use riptide_proto::{SequenceNumber, ShardId};

/// What the producer saw of one record.
#[derive(Debug, Clone, Default)]
struct Sent {
    attempts: u32,
    ack: Option<(u32, SequenceNumber)>,
}

#[derive(Default)]
struct History {
    records: BTreeMap<u64, Sent>,
    /// (when, shard) of every acknowledgement.
    acks: Vec<(Instant, u32)>,
}

/// Writes records whose keys all route to one shard, so that a stall of one shard does not hold
/// up the others; record ids are `first_id`, `first_id + stride`, ...
async fn produce(
    endpoints: Vec<String>,
    keys: Vec<String>,
    first_id: u64,
    stride: u64,
    history: Arc<Mutex<History>>,
    stop: Arc<AtomicBool>,
) {
    let mut next_id = first_id;
    let mut node = first_id as usize % endpoints.len();
    let mut pending: Vec<u64> = Vec::new();
    let mut clients: HashMap<usize, StreamServiceClient<tonic::transport::Channel>> =
        HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        if stopping && pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "producer could not finish: {} records pending",
            pending.len()
        );
        if !stopping {
            while pending.len() < 20 {
                pending.push(next_id);
                next_id += stride;
            }
        }
        let batch: Vec<u64> = std::mem::take(&mut pending);
        {
            let mut h = history.lock().expect("history");
            for id in &batch {
                h.records.entry(*id).or_default().attempts += 1;
            }
        }
        let req = v1::PutRecordsRequest {
            stream_name: "fo".into(),
            records: batch
                .iter()
                .map(|id| v1::PutRecordsEntry {
                    data: format!("record-{id}").into_bytes().into(),
                    partition_key: keys[(*id / stride) as usize % keys.len()].clone(),
                    explicit_hash_key: None,
                })
                .collect(),
            numeric_positions: false,
        };
        let client = match clients.get(&node) {
            Some(c) => Some(c.clone()),
            None => match StreamServiceClient::connect(endpoints[node].clone()).await {
                Ok(c) => {
                    clients.insert(node, c.clone());
                    Some(c)
                }
                Err(_) => None,
            },
        };
        let result = match client {
            Some(mut c) => {
                let mut r = tonic::Request::new(req);
                r.set_timeout(Duration::from_secs(15));
                c.put_records(r).await.map(|r| r.into_inner())
            }
            None => Err(tonic::Status::unavailable("cannot connect")),
        };
        match result {
            Ok(resp) => {
                let mut h = history.lock().expect("history");
                let now = Instant::now();
                for (id, r) in batch.iter().zip(resp.records) {
                    if r.error_code.is_empty() {
                        let shard: ShardId = r.shard_id.parse().expect("shard id");
                        let seq = SequenceNumber::parse(&r.sequence_number, "seq").expect("seq");
                        h.records.get_mut(id).expect("sent").ack = Some((shard.0, seq));
                        h.acks.push((now, shard.0));
                    } else {
                        pending.push(*id);
                    }
                }
            }
            Err(_) => {
                // Ambiguous: the records may or may not have been stored. Send them again,
                // through the next node.
                clients.remove(&node);
                node = (node + 1) % endpoints.len();
                pending.extend(batch);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_leader_kills() {
    let shards = 3u32;
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let desc = cluster.create_active(0, "fo", shards).await;
    let ranges: Vec<riptide_proto::HashKeyRange> = desc
        .shards
        .iter()
        .map(|s| {
            let r = s.hash_key_range.as_ref().expect("range");
            riptide_proto::HashKeyRange {
                start: r.starting_hash_key.parse().expect("start"),
                end: r.ending_hash_key.parse().expect("end"),
            }
        })
        .collect();
    let groups = shard_groups(cluster.node(0).expect("node 0"), "fo");
    let endpoints: Vec<String> = (0..3).map(|i| cluster.endpoint(i)).collect();
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..shards)
        .map(|shard| {
            let keys: Vec<String> = (0..)
                .map(|i| format!("key-{i}"))
                .filter(|k| {
                    riptide_proto::shard_for(&ranges, riptide_proto::hash_key_of(k))
                        == Some(shard as usize)
                })
                .take(16)
                .collect();
            tokio::spawn(produce(
                endpoints.clone(),
                keys,
                u64::from(shard),
                u64::from(shards),
                history.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let acks_of = |shard: u32, after: Instant| {
        history
            .lock()
            .expect("history")
            .acks
            .iter()
            .filter(|(t, s)| *s == shard && *t > after)
            .count()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut outages = Vec::new();
    for shard in 0..shards {
        let group = groups[shard as usize];
        let mut leader = None;
        common::eventually(Duration::from_secs(30), "shard has a leader", || {
            leader = cluster.leader_of(group);
            let found = leader.is_some();
            async move { found }
        })
        .await;
        let leader = leader.expect("leader");
        let killed_at = Instant::now();
        cluster.stop(leader).await;
        // Writes to every shard resume with the node down.
        let h = history.clone();
        common::eventually(
            Duration::from_secs(60),
            "writes resume after the kill",
            || {
                let resumed = (0..shards).all(|s| {
                    h.lock()
                        .expect("history")
                        .acks
                        .iter()
                        .any(|(t, sh)| *sh == s && *t > killed_at + Duration::from_millis(1))
                });
                async move { resumed }
            },
        )
        .await;
        cluster.restart(leader).await;
        let restarted_at = Instant::now();
        common::eventually(
            Duration::from_secs(60),
            "writes continue after the restart",
            || {
                let n = acks_of(shard, restarted_at);
                async move { n > 20 }
            },
        )
        .await;
        // The longest gap between acknowledgements of each shard around this kill.
        let h = history.lock().expect("history");
        for s in 0..shards {
            let times: Vec<Instant> = h
                .acks
                .iter()
                .filter(|(t, sh)| *sh == s && *t + Duration::from_secs(1) > killed_at)
                .map(|(t, _)| *t)
                .collect();
            let gap = times
                .windows(2)
                .map(|w| w[1] - w[0])
                .max()
                .unwrap_or_default();
            outages.push((shard, leader + 1, s, gap));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for p in producers {
        p.await.expect("producer finished");
    }

    println!("stopped leader of | node | shard | longest write gap");
    for (killed, node, s, gap) in &outages {
        println!(
            "{:>17} | {node:>4} | {s:>5} | {:>6} ms",
            ShardId(*killed).to_string(),
            gap.as_millis()
        );
    }

    // Read every shard back from node 0.
    let mut api = cluster.api(0).await;
    let mut found: BTreeMap<u64, Vec<(u32, SequenceNumber)>> = BTreeMap::new();
    for shard in 0..shards {
        let it = iterator(&mut api, "fo", shard, ShardIteratorType::TrimHorizon, "", 0)
            .await
            .expect("iterator");
        for r in read_from(&mut api, it).await {
            let text = String::from_utf8(r.data.to_vec()).expect("utf-8");
            let id: u64 = text
                .strip_prefix("record-")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("phantom record {text:?}"));
            let seq = SequenceNumber::parse(&r.sequence_number, "seq").expect("seq");
            found.entry(id).or_default().push((shard, seq));
        }
    }
    let records = std::mem::take(&mut history.lock().expect("history").records);
    let (mut acked, mut retried_dupes) = (0, 0);
    for (id, sent) in &records {
        let ack = sent.ack.expect("every record was acknowledged in the end");
        acked += 1;
        let copies = found.get(id).cloned().unwrap_or_default();
        assert!(
            copies.contains(&ack),
            "record {id} lost: acknowledged at {ack:?}, found at {copies:?}"
        );
        if copies.len() > 1 {
            assert!(
                sent.attempts > 1,
                "record {id} appears {} times but was sent once",
                copies.len()
            );
            retried_dupes += 1;
        }
    }
    for id in found.keys() {
        assert!(records.contains_key(id), "phantom record {id}");
    }
    println!("acknowledged {acked}, duplicated after a retry {retried_dupes}, lost 0, phantom 0");
    assert!(
        acked > 500,
        "too few records written to mean anything: {acked}"
    );
    cluster.shutdown().await;
}
