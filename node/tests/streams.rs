//! Streams on a real three-node cluster: routing by MD5, per-key order, sequence numbers,
//! every iterator type, restart, retention and bad input.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestCluster, eventually, iterator, read_from, shard_groups};
use riptide_client::{Client, Created, StreamOptions};
use riptide_proto::v1::{self, ShardIteratorType};
use riptide_proto::{ErrorCode, HashKeyRange, SequenceNumber, hash_key_of, shard_for, status_code};

fn ranges(d: &v1::StreamDescription) -> Vec<HashKeyRange> {
    d.shards
        .iter()
        .map(|s| {
            let r = s.hash_key_range.as_ref().expect("range");
            HashKeyRange {
                start: r.starting_hash_key.parse().expect("start"),
                end: r.ending_hash_key.parse().expect("end"),
            }
        })
        .collect()
}

/// Puts `records` as (partition key, data) through node `via`, 500 per call; returns the
/// shard index and sequence number of each, in order. Every other call asks for numeric
/// positions, so both answer forms are checked against the records read back.
async fn put_all(
    api: &mut common::Api,
    stream: &str,
    records: &[(String, String)],
) -> Vec<(u32, SequenceNumber)> {
    let mut out = Vec::new();
    for (call, chunk) in records.chunks(500).enumerate() {
        let numeric = call % 2 == 1;
        let resp = api
            .put_records(v1::PutRecordsRequest {
                stream_name: stream.into(),
                records: chunk
                    .iter()
                    .map(|(k, d)| v1::PutRecordsEntry {
                        data: d.as_bytes().to_vec().into(),
                        partition_key: k.clone(),
                        explicit_hash_key: None,
                    })
                    .collect(),
                numeric_positions: numeric,
            })
            .await
            .expect("put records")
            .into_inner();
        assert_eq!(
            resp.failed_record_count,
            0,
            "{:?}",
            resp.records.iter().find(|r| !r.error_code.is_empty())
        );
        for r in resp.records {
            // Only the asked-for form is filled in.
            assert_eq!(r.sequence_number.is_empty(), numeric, "{r:?}");
            assert_eq!(r.shard_id.is_empty(), numeric, "{r:?}");
            if !numeric {
                assert_eq!((r.shard_index, r.sequence), (0, 0), "{r:?}");
            }
            let (shard, seq) = r.position().expect("position");
            out.push((shard.0, seq));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_route_by_md5_and_read_back_in_order() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let desc = cluster.create_active(0, "orders", 4).await;
    let ranges = ranges(&desc);
    assert_eq!(ranges.len(), 4);

    let records: Vec<(String, String)> = (0..10_000)
        .map(|i| (format!("key-{}", i % 200), format!("record-{i}")))
        .collect();
    // Writes go through every node in turn; each forwards to the shard leaders.
    let mut acks = Vec::new();
    for (i, chunk) in records.chunks(2_000).enumerate() {
        let mut api = cluster.api(i % 3).await;
        acks.extend(put_all(&mut api, "orders", chunk).await);
    }
    assert_eq!(acks.len(), records.len());
    for ((key, _), (shard, _)) in records.iter().zip(&acks) {
        let want = shard_for(&ranges, hash_key_of(key)).expect("a shard holds every key");
        assert_eq!(*shard as usize, want, "{key} went to the wrong shard");
    }

    let mut api = cluster.api(1).await;
    let mut read: BTreeMap<u32, Vec<v1::Record>> = BTreeMap::new();
    for shard in 0..4 {
        let it = iterator(
            &mut api,
            "orders",
            shard,
            ShardIteratorType::TrimHorizon,
            "",
            0,
        )
        .await
        .expect("iterator");
        let recs = read_from(&mut api, it).await;
        let seqs: Vec<u64> = recs
            .iter()
            .map(|r| {
                SequenceNumber::parse(&r.sequence_number, "seq")
                    .expect("seq")
                    .0
            })
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "shard {shard}: sequence numbers not increasing"
        );
        read.insert(shard, recs);
    }
    assert_eq!(read.values().map(Vec::len).sum::<usize>(), records.len());
    // Each record is where its acknowledgement said, and each key's records are in put order.
    let by_seq: BTreeMap<(u32, String), &v1::Record> = read
        .iter()
        .flat_map(|(s, recs)| {
            recs.iter()
                .map(move |r| ((*s, r.sequence_number.clone()), r))
        })
        .collect();
    let mut per_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for ((key, data), (shard, seq)) in records.iter().zip(&acks) {
        let r = by_seq
            .get(&(*shard, seq.to_string()))
            .expect("acknowledged record is readable");
        assert_eq!(String::from_utf8_lossy(&r.data), *data);
        assert_eq!(&r.partition_key, key);
        per_key.entry(key).or_default().push(data.clone());
    }
    for (shard, recs) in &read {
        let mut seen: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for r in recs {
            seen.entry(&r.partition_key)
                .or_default()
                .push(String::from_utf8_lossy(&r.data).into());
        }
        for (key, datas) in seen {
            assert_eq!(
                &datas, &per_key[key],
                "shard {shard}: records of {key} out of order"
            );
        }
    }

    // Every iterator type returns exactly the records it should, on shard 0.
    let all = &read[&0];
    assert!(all.len() > 10);
    let mid = &all[all.len() / 2];
    let at = iterator(
        &mut api,
        "orders",
        0,
        ShardIteratorType::AtSequenceNumber,
        &mid.sequence_number,
        0,
    )
    .await
    .expect("at");
    assert_eq!(read_from(&mut api, at).await, all[all.len() / 2..].to_vec());
    let after = iterator(
        &mut api,
        "orders",
        0,
        ShardIteratorType::AfterSequenceNumber,
        &mid.sequence_number,
        0,
    )
    .await
    .expect("after");
    assert_eq!(
        read_from(&mut api, after).await,
        all[all.len() / 2 + 1..].to_vec()
    );
    let ts = all[all.len() / 2].approximate_arrival_timestamp_ms;
    let at_ts = iterator(
        &mut api,
        "orders",
        0,
        ShardIteratorType::AtTimestamp,
        "",
        ts,
    )
    .await
    .expect("at timestamp");
    let from_ts = read_from(&mut api, at_ts).await;
    let want: Vec<_> = all
        .iter()
        .filter(|r| r.approximate_arrival_timestamp_ms >= ts)
        .cloned()
        .collect();
    assert_eq!(from_ts, want);
    let latest = iterator(&mut api, "orders", 0, ShardIteratorType::Latest, "", 0)
        .await
        .expect("latest");
    let empty = api
        .get_records(v1::GetRecordsRequest {
            shard_iterator: latest.clone(),
            limit: 0,
            numeric_positions: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert!(empty.records.is_empty());
    assert_eq!(empty.millis_behind_latest, 0);
    // A key that routes to shard 0 for the records after LATEST.
    let key0 = (0..)
        .map(|i| format!("late-{i}"))
        .find(|k| shard_for(&ranges, hash_key_of(k)) == Some(0))
        .expect("key");
    let late: Vec<(String, String)> = (0..3)
        .map(|i| (key0.clone(), format!("late-{i}")))
        .collect();
    put_all(&mut api, "orders", &late).await;
    let got = read_from(&mut api, latest).await;
    let datas: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into())
        .collect();
    assert_eq!(datas, ["late-0", "late-1", "late-2"]);
    // A partial read reports how far behind the newest record it is.
    let th = iterator(&mut api, "orders", 0, ShardIteratorType::TrimHorizon, "", 0)
        .await
        .expect("th");
    let first = api
        .get_records(v1::GetRecordsRequest {
            shard_iterator: th,
            limit: 1,
            numeric_positions: false,
        })
        .await
        .expect("get")
        .into_inner();
    assert_eq!(first.records.len(), 1);
    assert_eq!(
        first.millis_behind_latest,
        got[2].approximate_arrival_timestamp_ms - first.records[0].approximate_arrival_timestamp_ms
    );
    // Asked for numbers, every node (the leader, and the others through it) answers the same
    // records with `sequence` set and no text; a subscription too.
    let th = iterator(&mut api, "orders", 0, ShardIteratorType::TrimHorizon, "", 0)
        .await
        .expect("th");
    let text = read_from(&mut api, th.clone()).await;
    assert!(text.iter().all(|r| r.sequence == 0));
    let as_numbers = |records: &[v1::Record]| -> Vec<v1::Record> {
        records
            .iter()
            .map(|r| v1::Record {
                sequence_number: String::new(),
                sequence: SequenceNumber::parse(&r.sequence_number, "sequence_number")
                    .expect("text")
                    .0,
                ..r.clone()
            })
            .collect()
    };
    for node in 0..3 {
        let mut api = cluster.api(node).await;
        let numeric = api
            .get_records(v1::GetRecordsRequest {
                shard_iterator: th.clone(),
                limit: 0,
                numeric_positions: true,
            })
            .await
            .expect("get")
            .into_inner();
        assert_eq!(numeric.records, as_numbers(&text[..numeric.records.len()]));
        let mut events = api
            .subscribe_to_shard(v1::SubscribeToShardRequest {
                stream_name: "orders".into(),
                shard_id: "shardId-000000000000".into(),
                starting_position: ShardIteratorType::TrimHorizon as i32,
                numeric_positions: true,
                ..Default::default()
            })
            .await
            .expect("subscribe")
            .into_inner();
        let mut pushed = Vec::new();
        while pushed.len() < text.len() {
            let event = tokio::time::timeout(Duration::from_secs(10), events.message())
                .await
                .expect("an event within 10 s")
                .expect("event")
                .expect("open");
            let last = event.records.last().expect("records").sequence;
            assert_eq!(
                event.continuation_sequence_number,
                SequenceNumber(last).to_string()
            );
            pushed.extend(event.records);
        }
        assert_eq!(pushed, as_numbers(&text));
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_restart_keeps_records_and_retention_trims_old_ones() {
    let mut cluster = TestCluster::start(3, |c| c.retention_check_interval_ms = 200).await;
    cluster.create_active(0, "keep", 2).await;
    let mut api = cluster.api(0).await;
    let old: Vec<(String, String)> = (0..300)
        .map(|i| (format!("k{}", i % 7), format!("old-{i}")))
        .collect();
    let acks = put_all(&mut api, "keep", &old).await;
    drop(api);

    cluster.stop_all().await;
    cluster.restart_all().await;
    let mut api = cluster.api(2).await;
    let mut count = 0;
    for shard in 0..2 {
        // Right after a restart the shards elect leaders again; reads wait for them.
        let it = iterator(
            &mut api,
            "keep",
            shard,
            ShardIteratorType::TrimHorizon,
            "",
            0,
        )
        .await
        .expect("iterator after restart");
        let recs = read_from(&mut api, it).await;
        for r in &recs {
            let seq = SequenceNumber::parse(&r.sequence_number, "seq").expect("seq");
            assert!(
                acks.contains(&(shard, seq)),
                "record {seq} was never acknowledged"
            );
        }
        count += recs.len();
    }
    assert_eq!(count, old.len(), "records lost across a full restart");

    // 25 hours later the records are past the default retention of 24 hours.
    cluster.clock.advance(25 * 3_600_000);
    let fresh: Vec<(String, String)> = (0..20)
        .map(|i| (format!("k{}", i % 7), format!("new-{i}")))
        .collect();
    put_all(&mut api, "keep", &fresh).await;
    let want = fresh.len();
    eventually(
        Duration::from_secs(30),
        "old records trimmed on every shard",
        || {
            let mut api = api.clone();
            async move {
                let mut datas = Vec::new();
                for shard in 0..2 {
                    let it = iterator(
                        &mut api,
                        "keep",
                        shard,
                        ShardIteratorType::TrimHorizon,
                        "",
                        0,
                    )
                    .await
                    .expect("iterator");
                    datas.extend(
                        read_from(&mut api, it)
                            .await
                            .into_iter()
                            .map(|r| String::from_utf8_lossy(&r.data).into_owned()),
                    );
                }
                datas.len() == want && datas.iter().all(|d| d.starts_with("new-"))
            }
        },
    )
    .await;
    // Every replica trimmed, not only the leaders: each node's copy holds only the new records.
    let groups = shard_groups(cluster.node(0).expect("node 0"), "keep");
    eventually(Duration::from_secs(30), "every replica trimmed", || async {
        (0..3).all(|i| {
            groups.iter().all(|g| {
                let node = cluster.node(i).expect("up");
                let Ok(group) = node.engine().group(riptide_raft::GroupId(*g)) else {
                    return false;
                };
                riptide_node::shard::ShardReader::read(group.view(), 0, usize::MAX, usize::MAX)
                    .map(|recs| recs.iter().all(|r| r.data.starts_with(b"new-")))
                    .unwrap_or(false)
            })
        })
    })
    .await;
    // The shard's log is its record store: the trimmed entries leave the log on every replica.
    eventually(
        Duration::from_secs(30),
        "trimmed log entries deleted on every replica",
        || async {
            (0..3).all(|i| {
                groups.iter().all(|g| {
                    let node = cluster.node(i).expect("up");
                    let Ok(group) = node.engine().group(riptide_raft::GroupId(*g)) else {
                        return false;
                    };
                    let Ok(mark) = riptide_node::shard::ShardReader::trimmed_before(group.view())
                    else {
                        return false;
                    };
                    let mut first = None;
                    let scanned = group.view().scan_log(0, u64::MAX, |index, _| {
                        first = Some(index);
                        Ok(false)
                    });
                    scanned.is_ok()
                        && mark.log_index() > 0
                        && first.is_none_or(|f| f >= mark.log_index())
                })
            })
        },
    )
    .await;
    cluster.shutdown().await;
}

/// A stream created while the cluster is starting would get fewer replicas per shard than the
/// cluster will have, for good: the cluster refuses it as unavailable until enough of its
/// nodes have registered. (A node holds such calls for `start_hold_ms` after it started before
/// it refuses them; the hold is off here, so that the refusal comes at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_waits_for_the_starting_nodes_to_register() {
    let mut cluster = TestCluster::start_first(3, 2, |c| c.start_hold_ms = 0).await;
    let mut api = cluster.api(0).await;
    let request = v1::CreateStreamRequest {
        stream_name: "early".into(),
        shard_count: 2,
        ..Default::default()
    };
    let err = api
        .create_stream(request.clone())
        .await
        .expect_err("two of three nodes registered");
    assert_eq!(status_code(&err), ErrorCode::Unavailable, "{err:?}");
    assert!(
        err.message().contains("only 2 of the cluster's nodes"),
        "{err:?}"
    );

    // The client retries the refusal until the third node has started and registered.
    let client = Client::connect(&cluster.endpoint(0)).await.expect("client");
    let refusals = AtomicUsize::new(0);
    let (created, ()) = tokio::join!(
        client.create_stream_when_ready(
            &request.stream_name,
            request.shard_count,
            StreamOptions::default(),
            Duration::from_secs(60),
            |e| {
                assert_eq!(e.code, ErrorCode::Unavailable, "{e}");
                refusals.fetch_add(1, Ordering::SeqCst);
            },
        ),
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.restart(2).await;
        }
    );
    assert!(
        matches!(created, Ok(Created::Now(_))),
        "created once every node registered: {created:?}"
    );
    assert_eq!(
        refusals.load(Ordering::SeqCst),
        1,
        "the first refusal is reported once"
    );
    let desc = common::wait_active(&mut api, "early").await;
    for shard in &desc.shards {
        assert_eq!(shard.replicas.len(), 3, "{shard:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_field_and_the_limit() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, "t", 1).await;
    let mut api = cluster.api(1).await;
    let put = |key: &str, data: Vec<u8>| v1::PutRecordRequest {
        stream_name: "t".into(),
        data: data.into(),
        partition_key: key.into(),
        ..Default::default()
    };
    let many = |n: usize, size: usize| v1::PutRecordsRequest {
        stream_name: "t".into(),
        records: (0..n)
            .map(|i| v1::PutRecordsEntry {
                data: vec![b'x'; size].into(),
                partition_key: format!("k{i}"),
                explicit_hash_key: None,
            })
            .collect(),
        numeric_positions: false,
    };
    let create =
        |name: &str, shard_count: u32, retention_period_hours: u32| v1::CreateStreamRequest {
            stream_name: name.into(),
            shard_count,
            retention_period_hours,
            ..Default::default()
        };
    let get = |shard_iterator: String, limit: u32| v1::GetRecordsRequest {
        shard_iterator,
        limit,
        numeric_positions: false,
    };
    let good_it = iterator(&mut api, "t", 0, ShardIteratorType::TrimHorizon, "", 0)
        .await
        .expect("it");
    let mut forged = good_it.clone().into_bytes();
    forged[4] = if forged[4] == b'a' { b'b' } else { b'a' };
    let forged = String::from_utf8(forged).expect("ascii");

    type Case = (
        &'static str,
        Result<(), tonic::Status>,
        ErrorCode,
        &'static [&'static str],
    );
    let mut a = api.clone();
    let cases: Vec<Case> = vec![
        (
            "empty partition key",
            a.put_record(put("", b"x".to_vec())).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["partition_key", "256"],
        ),
        (
            "long partition key",
            a.put_record(put(&"k".repeat(257), b"x".to_vec()))
                .await
                .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["partition_key", "256"],
        ),
        (
            "oversized record",
            a.put_record(put("k", vec![0; 1024 * 1024]))
                .await
                .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["data", "1048576"],
        ),
        (
            "too many records",
            a.put_records(many(501, 1)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["records", "500"],
        ),
        (
            "too many bytes",
            a.put_records(many(6, 1000 * 1000)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["records", "5 MiB"],
        ),
        (
            "no records",
            a.put_records(many(0, 1)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["records", "500"],
        ),
        (
            "bad explicit hash key",
            a.put_record(v1::PutRecordRequest {
                explicit_hash_key: Some("2e40".into()),
                ..put("k", b"x".to_vec())
            })
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["explicit_hash_key"],
        ),
        (
            "bad sequence number",
            iterator(
                &mut a,
                "t",
                0,
                ShardIteratorType::AtSequenceNumber,
                "12ab",
                0,
            )
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["starting_sequence_number"],
        ),
        (
            "sequence number past the end",
            iterator(
                &mut a,
                "t",
                0,
                ShardIteratorType::AfterSequenceNumber,
                "99999999999999999",
                0,
            )
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["starting_sequence_number"],
        ),
        (
            "missing iterator type",
            iterator(&mut a, "t", 0, ShardIteratorType::Unspecified, "", 0)
                .await
                .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["shard_iterator_type"],
        ),
        (
            "unknown stream",
            a.put_record(v1::PutRecordRequest {
                stream_name: "nope".into(),
                ..put("k", b"x".to_vec())
            })
            .await
            .map(|_| ()),
            ErrorCode::NotFound,
            &["stream_name", "nope"],
        ),
        (
            "bad stream name",
            a.describe_stream(v1::DescribeStreamRequest {
                stream_name: "a/b".into(),
            })
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["stream_name"],
        ),
        (
            "unknown shard",
            iterator(&mut a, "t", 7, ShardIteratorType::TrimHorizon, "", 0)
                .await
                .map(|_| ()),
            ErrorCode::NotFound,
            &["shard_id", "1 shards"],
        ),
        (
            "malformed shard id",
            a.get_shard_iterator(v1::GetShardIteratorRequest {
                stream_name: "t".into(),
                shard_id: "shard-x".into(),
                shard_iterator_type: 1,
                ..Default::default()
            })
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["shard_id"],
        ),
        (
            "duplicate stream",
            a.create_stream(create("t", 1, 0)).await.map(|_| ()),
            ErrorCode::AlreadyExists,
            &["stream_name", "already exists"],
        ),
        (
            "zero shards",
            a.create_stream(create("z", 0, 0)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["shard_count", "256"],
        ),
        (
            "retention too long",
            a.create_stream(create("z", 1, 9000)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["retention_period_hours", "8760"],
        ),
        (
            "unknown preferred leader region",
            a.create_stream(v1::CreateStreamRequest {
                preferred_leader_region: "mars".into(),
                ..create("z", 1, 0)
            })
            .await
            .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["preferred_leader_region", "mars"],
        ),
        (
            "garbage iterator",
            a.get_records(get("garbage".into(), 0)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["shard_iterator"],
        ),
        (
            "forged iterator",
            a.get_records(get(forged, 0)).await.map(|_| ()),
            ErrorCode::InvalidArgument,
            &["shard_iterator"],
        ),
        (
            "limit too high",
            a.get_records(get(good_it.clone(), 10_001))
                .await
                .map(|_| ()),
            ErrorCode::InvalidArgument,
            &["limit", "10000"],
        ),
    ];
    for (name, result, code, words) in cases {
        let status = result.expect_err(name);
        assert_eq!(status_code(&status), code, "{name}: {status:?}");
        for w in words {
            assert!(
                status.message().contains(w),
                "{name}: message {:?} does not mention {w:?}",
                status.message()
            );
        }
    }
    // An iterator older than 5 minutes has expired.
    cluster.clock.advance(5 * 60 * 1000 + 1000);
    let status = api
        .get_records(v1::GetRecordsRequest {
            shard_iterator: good_it,
            limit: 0,
            numeric_positions: false,
        })
        .await
        .expect_err("expired");
    assert_eq!(status_code(&status), ErrorCode::ExpiredIterator);
    // Answers served by another node say which one, so that clients can go there directly.
    let leader = cluster
        .leader_of(shard_groups(cluster.node(0).expect("up"), "t")[0])
        .expect("leader");
    for i in 0..3 {
        let mut api = cluster.api(i).await;
        let resp = api.put_record(put("k", b"x".to_vec())).await.expect("put");
        let to = resp
            .metadata()
            .get("x-riptide-forwarded-to")
            .map(|v| v.to_str().expect("ascii").to_string());
        let want = (i != leader).then(|| cluster.configs[leader].listen.clone());
        assert_eq!(to, want, "node {i}, leader {leader}");
    }
    // The node keeps serving.
    api.put_record(put("k", b"still here".to_vec()))
        .await
        .expect("node still serves");
    cluster.shutdown().await;
}
