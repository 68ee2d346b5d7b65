//! The client against a fake three-node cluster (see `fake/mod.rs`): routing to shard
//! leaders, learning from forwarded answers, retries and their limits, the batching
//! producer, the polling consumer and the push subscription.

mod fake;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use fake::FakeCluster;
use fake::waits::{key_for, wait_until};
use futures::StreamExt;
use riptide_client::{
    Client, ClientConfig, ErrorCode, ProducerConfig, SequenceNumber, ShardId, StartingPosition, v1,
};

const STREAM: &str = "orders";

fn config(cluster: &FakeCluster) -> ClientConfig {
    ClientConfig {
        retry_deadline: Duration::from_secs(5),
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        ..ClientConfig::new(cluster.endpoint(1))
    }
}

/// A cluster with one active stream of `shards` shards (leaders 1, 2, 3, 1, ...) and a client
/// connected to node 1 only.
async fn setup(shards: u32) -> (FakeCluster, Client) {
    let cluster = FakeCluster::start(3).await;
    let client = Client::connect_with(config(&cluster))
        .await
        .expect("connect");
    client
        .create_stream(STREAM, shards, None)
        .await
        .expect("create");
    client
        .wait_for_active(STREAM, Duration::from_secs(5))
        .await
        .expect("active");
    cluster.clear_calls();
    (cluster, client)
}

#[tokio::test]
async fn puts_go_straight_to_each_shards_leader() {
    let (cluster, client) = setup(4).await;
    for shard in 0..4 {
        let r = client
            .put_record(STREAM, &key_for(shard, 4, 0), "x")
            .await
            .expect("put");
        assert_eq!(r.shard_id, ShardId(shard));
        assert_eq!(r.attempts, 1);
    }
    let puts = cluster.calls("PutRecord");
    assert_eq!(puts.len(), 4);
    assert!(
        puts.iter().all(|c| c.at_leader),
        "a put was forwarded: {puts:?}"
    );
    let nodes: BTreeSet<u64> = puts.iter().map(|c| c.node).collect();
    assert_eq!(
        nodes,
        [1, 2, 3].into(),
        "the client only knew node 1 at first"
    );
}

#[tokio::test]
async fn a_forwarded_answer_moves_the_leader_hint() {
    forwarded_answer_moves_the_leader_hint(false).await;
}

#[tokio::test]
async fn a_forwarded_answer_naming_an_address_moves_the_leader_hint() {
    forwarded_answer_moves_the_leader_hint(true).await;
}

async fn forwarded_answer_moves_the_leader_hint(by_address: bool) {
    let (cluster, client) = setup(2).await;
    cluster.lock().faults.forward_by_address = by_address;
    let key = key_for(1, 2, 0);
    client.put_record(STREAM, &key, "a").await.expect("put");
    assert_eq!(cluster.calls("PutRecord")[0].node, 2);

    cluster.set_leader(STREAM, 1, 3);
    client.put_record(STREAM, &key, "b").await.expect("put");
    client.put_record(STREAM, &key, "c").await.expect("put");
    let puts = cluster.calls("PutRecord");
    assert!(
        !puts[1].at_leader,
        "the stale hint sends the second put to node 2"
    );
    assert_eq!((puts[2].node, puts[2].at_leader), (3, true), "{puts:?}");
}

#[tokio::test]
async fn a_dead_leader_is_routed_around_and_the_retry_is_counted() {
    let (mut cluster, client) = setup(2).await;
    let key = key_for(1, 2, 0);
    client
        .put_record(STREAM, &key, "warm-up")
        .await
        .expect("put");
    cluster.stop(2).await;
    cluster.set_leader(STREAM, 1, 3);

    let r = client.put_record(STREAM, &key, "after").await.expect("put");
    assert_eq!(r.shard_id, ShardId(1));
    assert!(
        r.attempts >= 2,
        "the first attempt went to the dead node: {r:?}"
    );
    let last = cluster.calls("PutRecord").last().cloned().expect("a put");
    assert_eq!((last.node, last.at_leader), (3, true));
}

#[tokio::test]
async fn put_records_resends_only_retryable_failures_and_keeps_order() {
    let (cluster, client) = setup(3).await;
    cluster.lock().faults.throttle_prefix = Some(("slow".into(), 2));
    cluster.lock().faults.invalid_prefix = Some("bad".into());
    let records: Vec<v1::PutRecordsEntry> = (0..30)
        .map(|i| v1::PutRecordsEntry {
            data: match i {
                5 | 17 => format!("slow {i}"),
                9 => format!("bad {i}"),
                _ => format!("ok {i}"),
            }
            .into_bytes()
            .into(),
            partition_key: format!("pk-{i}"),
            explicit_hash_key: None,
        })
        .collect();
    let results = client
        .put_records(STREAM, records)
        .await
        .expect("put_records");
    assert_eq!(results.len(), 30);
    for (i, r) in results.iter().enumerate() {
        match i {
            9 => {
                let e = r.as_ref().expect_err("refused");
                assert_eq!(e.code, ErrorCode::InvalidArgument);
                assert!(e.message.contains("data"), "{e}");
            }
            5 | 17 => assert_eq!(r.as_ref().expect("retried").attempts, 2),
            _ => assert_eq!(r.as_ref().expect("written").attempts, 1),
        }
    }
    // Each result names the shard that really holds the record, at that sequence number.
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 9) {
        let r = r.as_ref().expect("written");
        let stored = cluster.records(STREAM, r.shard_id.0);
        let rec = stored
            .iter()
            .find(|x| x.sequence_number == r.sequence_number.to_string())
            .expect("stored at its sequence number");
        assert_eq!(rec.partition_key, format!("pk-{i}"));
    }
    let calls = cluster.calls("PutRecords");
    assert!(calls.iter().all(|c| c.at_leader), "{calls:?}");
}

#[tokio::test]
async fn put_records_splits_calls_at_500_records() {
    let (cluster, client) = setup(1).await;
    let records = (0..1_201)
        .map(|i| v1::PutRecordsEntry {
            data: vec![b'x'; 10].into(),
            partition_key: format!("k{i}"),
            explicit_hash_key: None,
        })
        .collect();
    let results = client.put_records(STREAM, records).await.expect("put");
    assert!(results.iter().all(|r| r.is_ok()));
    let mut sizes: Vec<usize> = cluster
        .calls("PutRecords")
        .iter()
        .map(|c| c.records)
        .collect();
    sizes.sort();
    assert_eq!(sizes, vec![201, 500, 500]);
}

#[tokio::test]
async fn idempotent_calls_retry_through_unavailable_until_the_deadline() {
    let (cluster, client) = setup(1).await;
    cluster
        .lock()
        .faults
        .fail_next
        .insert("DescribeStream", (3, ErrorCode::Unavailable));
    let desc = client.describe_stream(STREAM).await.expect("retried");
    assert_eq!(desc.stream_name, STREAM);
    assert_eq!(cluster.calls("DescribeStream").len(), 4);

    // With a 300 ms deadline and waits of at least half of 5, 10, 20, 40, then 50 ms (the
    // backoff's lower bound), no more than 15 attempts fit before the deadline, however fast
    // or slow the machine: a slow one only makes fewer. A client that ignored the deadline
    // would keep trying through all 1,000 failures and then succeed.
    let short = Client::connect_with(ClientConfig {
        retry_deadline: Duration::from_millis(300),
        ..config(&cluster)
    })
    .await
    .expect("connect");
    cluster.clear_calls();
    cluster
        .lock()
        .faults
        .fail_next
        .insert("DescribeStream", (1_000, ErrorCode::Throttled));
    let e = short.describe_stream(STREAM).await.expect_err("gives up");
    assert_eq!(e.code, ErrorCode::Throttled);
    let attempts = cluster.calls("DescribeStream").len();
    assert!(
        (1..=15).contains(&attempts),
        "{attempts} attempts within a 300 ms deadline"
    );
}

#[tokio::test]
async fn stream_creation_is_not_sent_twice_after_an_ambiguous_failure() {
    let cluster = FakeCluster::start(3).await;
    let client = Client::connect_with(config(&cluster))
        .await
        .expect("connect");
    cluster
        .lock()
        .faults
        .fail_next
        .insert("CreateStream", (1, ErrorCode::Unavailable));
    let e = client
        .create_stream("s", 1, None)
        .await
        .expect_err("not retried");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert_eq!(cluster.calls("CreateStream").len(), 1);
}

#[tokio::test]
async fn node_errors_keep_the_nodes_message() {
    let (_cluster, client) = setup(1).await;
    let e = client.describe_stream("nope").await.expect_err("missing");
    assert_eq!(e.code, ErrorCode::NotFound);
    assert!(e.message.contains("\"nope\""), "{e}");
    let e = client
        .create_stream("zero", 0, None)
        .await
        .expect_err("invalid");
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.starts_with("shard_count"), "{e}");
    let e = client
        .put_record("nope", "k", "d")
        .await
        .expect_err("missing");
    assert_eq!(e.code, ErrorCode::NotFound);
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    // The connect deadline ends the attempts; a client that ignored it would retry until the
    // test's own wait ran out.
    let connect = Client::connect_with(ClientConfig {
        connect_deadline: Duration::from_millis(300),
        initial_backoff: Duration::from_millis(10),
        ..ClientConfig::new(addr.to_string())
    });
    let e = tokio::time::timeout(Duration::from_secs(60), connect)
        .await
        .expect("connecting gives up at its deadline")
        .expect_err("nothing listens");
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(e.message.contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn list_streams_follows_every_page() {
    let cluster = FakeCluster::start(1).await;
    cluster.set_page_size(2);
    let client = Client::connect(&cluster.endpoint(1))
        .await
        .expect("connect");
    for name in ["e", "a", "d", "b", "c"] {
        client
            .create_stream(name, 1, Some(48))
            .await
            .expect("create");
    }
    let names: Vec<String> = client
        .list_streams()
        .await
        .expect("list")
        .into_iter()
        .map(|s| s.stream_name)
        .collect();
    assert_eq!(names, ["a", "b", "c", "d", "e"]);
    assert_eq!(cluster.calls("ListStreams").len(), 3);
}

#[tokio::test]
async fn wait_for_active_polls_until_active_and_times_out_otherwise() {
    let cluster = FakeCluster::start(1).await;
    let client = Client::connect(&cluster.endpoint(1))
        .await
        .expect("connect");
    cluster.lock().faults.creating_describes = 3;
    client.create_stream("slow", 1, None).await.expect("create");
    let desc = client
        .wait_for_active("slow", Duration::from_secs(5))
        .await
        .expect("active");
    assert_eq!(desc.status(), v1::StreamStatus::Active);
    // Three answers CREATING, one ACTIVE, then the one node confirms.
    assert_eq!(cluster.calls("DescribeStream").len(), 5);

    cluster.lock().faults.creating_describes = 1_000;
    client
        .create_stream("stuck", 1, None)
        .await
        .expect("create");
    let e = client
        .wait_for_active("stuck", Duration::from_millis(300))
        .await
        .expect_err("still creating");
    assert_eq!(e.code, ErrorCode::ResourceInUse);
    assert!(e.message.contains("CREATING"), "{e}");
}

#[tokio::test]
async fn wait_for_active_waits_until_every_node_sees_the_stream_active() {
    let cluster = FakeCluster::start(3).await;
    let client = Client::connect_with(config(&cluster))
        .await
        .expect("connect");
    client
        .create_stream("lagging", 1, None)
        .await
        .expect("create");
    // Node 3's view lags: it answers CREATING to its next two describes.
    cluster.lock().faults.lagging_nodes.insert(3, 2);
    let desc = client
        .wait_for_active("lagging", Duration::from_secs(5))
        .await
        .expect("active");
    assert_eq!(desc.status(), v1::StreamStatus::Active);
    assert_eq!(
        cluster.lock().faults.lagging_nodes[&3],
        0,
        "returned before node 3 saw the stream ACTIVE"
    );
}

#[tokio::test]
async fn the_producer_batches_per_shard_and_acknowledges_every_record() {
    let (cluster, client) = setup(3).await;
    let producer = client.producer(
        STREAM,
        ProducerConfig {
            linger: Duration::from_millis(20),
            max_batch_records: 100,
            ..ProducerConfig::default()
        },
    );
    let acks: Vec<_> = (0..1_000)
        .map(|i| producer.send(format!("user-{i}"), format!("event {i}")))
        .collect();
    let results = futures::future::join_all(acks).await;
    let mut seen = HashSet::new();
    for r in &results {
        let r = r.as_ref().expect("acknowledged");
        assert!(
            seen.insert((r.shard_id, r.sequence_number)),
            "duplicate position {r:?}"
        );
    }
    let calls = cluster.calls("PutRecords");
    assert!(calls.iter().all(|c| c.records <= 100), "{calls:?}");
    assert!(calls.iter().all(|c| c.at_leader), "{calls:?}");
    assert!(
        calls.len() >= 10 && calls.len() <= 60,
        "{} calls",
        calls.len()
    );
    let stored: usize = (0..3).map(|s| cluster.records(STREAM, s).len()).sum();
    assert_eq!(stored, 1_000);
    let stats = producer.stats();
    assert_eq!((stats.records_acked, stats.pending), (1_000, 0));
    producer.close().await;
}

#[tokio::test]
async fn tagged_records_are_answered_through_acks_a_batch_at_a_time() {
    let (cluster, client) = setup(3).await;
    let config = ProducerConfig {
        linger: Duration::from_millis(20),
        max_batch_records: 100,
        ..ProducerConfig::default()
    };
    let (producer, mut acks) = client.producer_with_acks(STREAM, config.clone());
    for i in 0..1_000u64 {
        producer
            .send_tagged(format!("user-{i}"), format!("event {i}"), 10_000 + i)
            .expect("queued");
    }
    // Futures and tags mix on one producer.
    let plain = producer.send("user-x", "plain");
    let mut tags = HashSet::new();
    let mut positions = HashSet::new();
    let mut batches = 0;
    while tags.len() < 1_000 {
        let batch = tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("answers within 10 s")
            .expect("the producer is running");
        assert!(!batch.is_empty() && batch.len() <= 100, "{}", batch.len());
        batches += 1;
        for ack in batch {
            assert!(tags.insert(ack.tag), "tag {} answered twice", ack.tag);
            let put = ack.result.expect("acknowledged");
            assert!(positions.insert((put.shard_id, put.sequence_number)));
        }
    }
    assert_eq!(tags, (10_000..11_000).collect::<HashSet<u64>>());
    assert!(batches < 1_000 / 2, "{batches} batches for 1,000 records");
    plain.await.expect("the plain send is acknowledged too");
    let stored: usize = (0..3).map(|s| cluster.records(STREAM, s).len()).sum();
    assert_eq!(stored, 1_001);
    assert_eq!(producer.stats().pending, 0);
    producer.close().await;
    assert!(acks.recv().await.is_none(), "closed: no more answers");

    // A producer made without Acks refuses tagged records rather than losing their answers.
    let without = client.producer(STREAM, config);
    let e = without.send_tagged("k", "v", 1).expect_err("no Acks");
    assert_eq!(e.code, ErrorCode::InvalidArgument);
    assert!(e.message.contains("producer_with_acks"), "{e}");
    without.close().await;
}

/// Sends 200 records of one key in batches of 10 to a one-shard fake whose answers take 20 ms,
/// and returns the most PutRecords calls the shard had open at once.
async fn most_calls_open_for_one_key(max_in_flight: Option<usize>) -> usize {
    let (cluster, client) = setup(1).await;
    cluster.lock().faults.put_answer_delay = Some(Duration::from_millis(20));
    let mut config = ProducerConfig {
        linger: Duration::from_millis(1),
        max_batch_records: 10,
        ..ProducerConfig::default()
    };
    if let Some(n) = max_in_flight {
        config.max_in_flight = n;
    }
    let producer = client.producer(STREAM, config);
    let acks: Vec<_> = (0..200)
        .map(|i| producer.send("one key", format!("event {i:03}")))
        .collect();
    for r in futures::future::join_all(acks).await {
        r.expect("acknowledged");
    }
    producer.close().await;
    if max_in_flight.is_none() {
        let stored: Vec<String> = cluster
            .records(STREAM, 0)
            .iter()
            .map(|r| String::from_utf8_lossy(&r.data).into_owned())
            .collect();
        let sent: Vec<String> = (0..200).map(|i| format!("event {i:03}")).collect();
        assert_eq!(stored, sent, "one key's records out of order");
    }
    cluster.lock().most_puts_open
}

#[tokio::test]
async fn by_default_the_producer_keeps_one_call_per_shard_and_one_keys_order() {
    assert_eq!(most_calls_open_for_one_key(None).await, 1);
    // The same workload with more calls allowed does overlap them, so the count above is
    // a real measurement.
    assert!(most_calls_open_for_one_key(Some(4)).await > 1);
}

#[tokio::test]
async fn the_producer_resends_throttled_records_and_counts_them() {
    let (cluster, client) = setup(2).await;
    cluster.lock().faults.throttle_prefix = Some(("hot".into(), 3));
    let producer = client.producer(STREAM, ProducerConfig::default());
    let acks: Vec<_> = (0..20)
        .map(|i| {
            producer.send(
                format!("k{i}"),
                if i % 5 == 0 {
                    format!("hot {i}")
                } else {
                    format!("cold {i}")
                },
            )
        })
        .collect();
    let results = futures::future::join_all(acks).await;
    let retried = results
        .iter()
        .filter(|r| r.as_ref().expect("acknowledged").attempts > 1)
        .count();
    assert_eq!(retried, 3);
    assert_eq!(producer.stats().records_retried, 3);
    producer.close().await;
}

#[tokio::test]
async fn flush_sends_lingering_records_at_once() {
    let (cluster, client) = setup(1).await;
    let producer = client.producer(
        STREAM,
        ProducerConfig {
            linger: Duration::from_secs(3_600),
            ..ProducerConfig::default()
        },
    );
    let ack = producer.send("k", "lingering");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        cluster.calls("PutRecords").is_empty(),
        "linger holds the record"
    );
    // An hour's linger: flush returning at all, within the test's wait, means it sent the
    // record without waiting for the linger.
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("flush does not wait for the linger");
    assert_eq!(cluster.records(STREAM, 0).len(), 1);
    assert!(
        futures::FutureExt::now_or_never(ack).is_some_and(|r| r.is_ok()),
        "the record is acknowledged when flush returns"
    );

    let late = producer.send("k", "at close");
    producer.close().await;
    late.await.expect("close flushes");
    assert_eq!(cluster.records(STREAM, 0).len(), 2);
}

#[tokio::test]
async fn dropping_a_producer_fails_its_unsent_records() {
    let (cluster, client) = setup(1).await;
    let producer = client.producer(
        STREAM,
        ProducerConfig {
            linger: Duration::from_secs(60),
            ..ProducerConfig::default()
        },
    );
    let ack = producer.send("k", "never sent");
    drop(producer);
    let e = tokio::time::timeout(Duration::from_secs(5), ack)
        .await
        .expect("answered at once")
        .expect_err("not sent");
    assert!(e.message.contains("closed"), "{e}");
    assert!(cluster.records(STREAM, 0).is_empty());
}

#[tokio::test]
async fn the_consumer_reads_in_pages_and_resumes_after_its_position() {
    let (cluster, client) = setup(1).await;
    for i in 0..25 {
        client
            .put_record(STREAM, "k", format!("r{i}"))
            .await
            .expect("put");
    }
    let mut consumer = client
        .consumer(STREAM, ShardId(0), StartingPosition::TrimHorizon)
        .with_limit(10)
        .with_poll_interval(Duration::from_millis(1));
    let mut got = Vec::new();
    for expected in [10, 10, 5, 0] {
        let batch = consumer.next_batch().await.expect("read");
        assert_eq!(batch.len(), expected);
        got.extend(batch);
    }
    assert!(consumer.caught_up());
    let data: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.data.to_vec()).expect("utf-8"))
        .collect();
    assert_eq!(data, (0..25).map(|i| format!("r{i}")).collect::<Vec<_>>());
    let position = consumer.position().expect("read something");
    assert_eq!(position.to_string(), got[24].sequence_number);

    client.put_record(STREAM, "k", "r25").await.expect("put");
    let mut resumed = client.consumer(
        STREAM,
        ShardId(0),
        StartingPosition::AfterSequence(position),
    );
    let batch = resumed.next_batch().await.expect("read");
    assert_eq!(batch.len(), 1);
    assert_eq!(batch[0].data, &b"r25"[..]);
    let calls = cluster.calls("GetRecords");
    assert!(calls.iter().all(|c| c.at_leader));
}

#[tokio::test]
async fn the_consumer_renews_an_expired_iterator_without_losing_or_repeating() {
    let (cluster, client) = setup(1).await;
    for i in 0..6 {
        client
            .put_record(STREAM, "k", format!("r{i}"))
            .await
            .expect("put");
    }
    let mut consumer = client
        .consumer(STREAM, ShardId(0), StartingPosition::TrimHorizon)
        .with_limit(3);
    let first = consumer.next_batch().await.expect("read");
    cluster.lock().faults.expire_next_get_records = 1;
    let second = consumer.next_batch().await.expect("renewed");
    let all: Vec<Vec<u8>> = first
        .into_iter()
        .chain(second)
        .map(|r| r.data.to_vec())
        .collect();
    assert_eq!(
        all,
        (0..6)
            .map(|i| format!("r{i}").into_bytes())
            .collect::<Vec<_>>()
    );
    assert_eq!(cluster.calls("GetShardIterator").len(), 2);

    cluster.lock().faults.expire_next_get_records = 2;
    let e = consumer
        .next_batch()
        .await
        .expect_err("expired twice in a row");
    assert_eq!(e.code, ErrorCode::ExpiredIterator);
}

#[tokio::test]
async fn a_subscription_delivers_each_record_once_across_broken_connections() {
    let (cluster, client) = setup(2).await;
    let key = key_for(1, 2, 0);
    client
        .put_record(STREAM, &key, "before")
        .await
        .expect("put");
    let mut events = client
        .subscribe(STREAM, ShardId(1), StartingPosition::TrimHorizon)
        .await
        .expect("subscribe");
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut last = SequenceNumber(0);
    let mut next = async |got: &mut Vec<Vec<u8>>, last: &mut SequenceNumber| {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("no error");
        for r in event.records {
            let seq = SequenceNumber::parse(&r.sequence_number, "seq").expect("valid");
            assert!(seq > *last, "out of order or repeated");
            *last = seq;
            got.push(r.data.to_vec());
        }
    };
    next(&mut got, &mut last).await;
    client.put_record(STREAM, &key, "one").await.expect("put");
    while got.len() < 2 {
        next(&mut got, &mut last).await;
    }
    cluster.break_subscriptions();
    client.put_record(STREAM, &key, "two").await.expect("put");
    while got.len() < 3 {
        next(&mut got, &mut last).await;
    }
    assert_eq!(got, [b"before".to_vec(), b"one".to_vec(), b"two".to_vec()]);
    wait_until("the subscription was opened again", || {
        cluster.calls("SubscribeToShard").len() >= 2
    })
    .await;
}

#[tokio::test]
async fn admin_calls_reach_the_cluster() {
    let (cluster, client) = setup(3).await;
    let status = client.cluster_status().await.expect("status");
    assert_eq!(
        status.nodes.iter().map(|n| n.node_id).collect::<Vec<_>>(),
        cluster.node_ids()
    );
    client
        .transfer_shard_leader(STREAM, ShardId(0), 2)
        .await
        .expect("transfer");
    assert_eq!(cluster.leader(STREAM, 0), 2);
    let drained = client.drain_node(2).await.expect("drain");
    assert!(drained.leaders_moved >= 1);
    client
        .update_retention(STREAM, 48)
        .await
        .expect("retention");
    assert_eq!(
        client
            .describe_stream(STREAM)
            .await
            .expect("describe")
            .retention_period_hours,
        48
    );
    assert_eq!(client.list_shards(STREAM).await.expect("shards").len(), 3);
    client.delete_stream(STREAM).await.expect("delete");
    assert_eq!(
        client.describe_stream(STREAM).await.expect_err("gone").code,
        ErrorCode::NotFound
    );
}
