//! The Rust AWS SDK (`aws-sdk-kinesis`) against Riptide's Kinesis API: every supported action,
//! StreamARN in place of StreamName, every shard iterator type, paging through GetRecords to the
//! end, and every error type, each as the SDK's own typed error where its model has one.
//!
//! Run by node/tests/kinesis_clients.rs against a test cluster, with AWS_ENDPOINT_URL and
//! RIPTIDE_KINESIS_ENDPOINTS (every node's Kinesis address) in the environment. It asks the
//! test to move the cluster's clock forward by printing `RIPTIDE-CLOCK advance-ms <ms>` (or to
//! stop it, `RIPTIDE-CLOCK stop`, or let it run again, `RIPTIDE-CLOCK run`) and reading `ok`. Any failed check panics, which fails the test.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::BufRead;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::config::retry::RetryConfig;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardFilter, ShardFilterType, ShardIteratorType, StreamMode,
    StreamModeDetails, StreamStatus,
};

const HASH_SPACE_END: u128 = u128::MAX;

fn client(endpoint: &str) -> Client {
    // Plain HTTP to the test cluster: no TLS stack to build.
    let http = aws_smithy_http_client::Builder::new().build_http();
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            "riptide-test",
            "riptide-test-secret",
            None,
            None,
            "static",
        ))
        .endpoint_url(endpoint)
        .http_client(http)
        // Every error must reach the checks, none may be retried away.
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

fn section(name: &str) {
    println!("--- {name}");
}

fn clock_request(request: &str) {
    println!("RIPTIDE-CLOCK {request}");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .expect("read the test's answer");
    assert_eq!(line.trim(), "ok", "clock request {request:?} refused");
}

/// Moves every node's clock forward by `ms` milliseconds.
fn advance_clock(ms: u64) {
    clock_request(&format!("advance-ms {ms}"));
}

/// The error's Kinesis code and message, checking the code is `code`.
fn expect_code<T: Debug, E: ProvideErrorMetadata + Debug, R: Debug>(
    result: Result<T, SdkError<E, R>>,
    code: &str,
) -> (E, String) {
    let err = match result {
        Ok(v) => panic!("expected {code}, got {v:?}"),
        Err(e) => e,
    };
    let service = match err {
        SdkError::ServiceError(s) => s.into_err(),
        other => panic!("expected {code} from the service, got {other:?}"),
    };
    assert_eq!(service.code(), Some(code), "{service:?}");
    let message = service.message().unwrap_or_default().to_string();
    (service, message)
}

async fn wait_active(k: &Client, name: &str) -> Vec<StreamStatus> {
    let mut seen: Vec<StreamStatus> = Vec::new();
    for _ in 0..1200 {
        let s = k
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .expect("describe stream summary");
        let status = s
            .stream_description_summary()
            .expect("summary")
            .stream_status()
            .clone();
        if seen.last() != Some(&status) {
            seen.push(status.clone());
        }
        if status == StreamStatus::Active {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("stream {name} not ACTIVE after 60 s: {seen:?}");
}

fn entry(data: &[u8], key: &str) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .data(Blob::new(data))
        .partition_key(key)
        .build()
        .expect("entry")
}

#[tokio::main]
async fn main() {
    let endpoints: Vec<String> = std::env::var("RIPTIDE_KINESIS_ENDPOINTS")
        .expect("RIPTIDE_KINESIS_ENDPOINTS")
        .split(',')
        .map(str::to_string)
        .collect();
    let k = client(&endpoints[0]);
    let other = client(&endpoints[endpoints.len() - 1]);

    section("CreateStream, CREATING then ACTIVE, DescribeStream, DescribeStreamSummary");
    k.create_stream()
        .stream_name("sdk")
        .shard_count(2)
        .tags("team", "rust")
        .send()
        .await
        .expect("create stream");
    let seen = wait_active(&k, "sdk").await;
    assert_eq!(seen, [StreamStatus::Creating, StreamStatus::Active]);
    k.create_stream()
        .stream_name("sdk-on-demand")
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()
                .expect("mode"),
        )
        .send()
        .await
        .expect("create on-demand stream");
    wait_active(&k, "sdk-on-demand").await;
    let d = k
        .describe_stream()
        .stream_name("sdk")
        .send()
        .await
        .expect("describe");
    let d = d.stream_description().expect("description");
    let arn = d.stream_arn().to_string();
    assert_eq!(arn, "arn:aws:kinesis:us-east-1:000000000000:stream/sdk");
    assert_eq!(d.shards().len(), 2);
    assert!(!d.has_more_shards());
    assert_eq!(d.retention_period_hours(), 24);
    assert!(d.stream_creation_timestamp().secs() > 1_600_000_000);
    let last_end: u128 = d.shards()[1]
        .hash_key_range()
        .expect("range")
        .ending_hash_key()
        .parse()
        .expect("hash key");
    assert_eq!(last_end, HASH_SPACE_END);
    let page = k
        .describe_stream()
        .stream_arn(&arn)
        .limit(1)
        .send()
        .await
        .expect("describe page");
    let page = page.stream_description().expect("description");
    assert_eq!(page.shards().len(), 1);
    assert!(page.has_more_shards());
    let s = k
        .describe_stream_summary()
        .stream_arn(&arn)
        .send()
        .await
        .expect("summary");
    let s = s.stream_description_summary().expect("summary");
    assert_eq!(s.open_shard_count(), 2);
    assert_eq!(
        s.stream_mode_details().map(|m| m.stream_mode().clone()),
        Some(StreamMode::Provisioned)
    );

    section("ListStreams, ListShards");
    let l = k
        .list_streams()
        .limit(1)
        .send()
        .await
        .expect("list streams");
    assert_eq!(l.stream_names(), ["sdk"]);
    assert!(l.has_more_streams());
    let rest = k
        .list_streams()
        .next_token(l.next_token().expect("token"))
        .send()
        .await
        .expect("list streams page 2");
    assert_eq!(rest.stream_names(), ["sdk-on-demand"]);
    assert!(!rest.has_more_streams());
    assert_eq!(
        rest.stream_summaries()[0].stream_arn(),
        "arn:aws:kinesis:us-east-1:000000000000:stream/sdk-on-demand"
    );
    let shards = k
        .list_shards()
        .stream_name("sdk-on-demand")
        .max_results(3)
        .send()
        .await
        .expect("list shards");
    assert_eq!(shards.shards().len(), 3);
    let more = k
        .list_shards()
        .next_token(shards.next_token().expect("token"))
        .send()
        .await
        .expect("list shards page 2");
    assert_eq!(more.shards().len(), 1);
    assert_eq!(more.shards()[0].shard_id(), "shardId-000000000003");
    assert!(more.next_token().is_none());
    let filtered = k
        .list_shards()
        .stream_arn(&arn)
        .shard_filter(
            ShardFilter::builder()
                .r#type(ShardFilterType::AfterShardId)
                .shard_id("shardId-000000000000")
                .build()
                .expect("filter"),
        )
        .send()
        .await
        .expect("list shards filtered");
    assert_eq!(filtered.shards().len(), 1);
    let after = k
        .list_shards()
        .stream_name("sdk")
        .exclusive_start_shard_id("shardId-000000000000")
        .send()
        .await
        .expect("list shards after");
    assert_eq!(after.shards()[0].shard_id(), "shardId-000000000001");

    section("PutRecord, PutRecords");
    let r1 = k
        .put_record()
        .stream_name("sdk")
        .partition_key("user-1")
        .data(Blob::new(b"first".as_slice()))
        .send()
        .await
        .expect("put record");
    let shard = r1.shard_id().to_string();
    let r2 = k
        .put_record()
        .stream_arn(&arn)
        .partition_key("user-1")
        .data(Blob::new(b"second".as_slice()))
        .sequence_number_for_ordering(r1.sequence_number())
        .send()
        .await
        .expect("put record with ordering");
    assert_eq!(r2.shard_id(), shard);
    assert!(r2.sequence_number() > r1.sequence_number());
    let high = k
        .put_record()
        .stream_name("sdk")
        .partition_key("x")
        .explicit_hash_key(HASH_SPACE_END.to_string())
        .data(Blob::new(b"high".as_slice()))
        .send()
        .await
        .expect("put record by hash key");
    assert_eq!(high.shard_id(), "shardId-000000000001");
    let batch = k
        .put_records()
        .stream_name("sdk")
        .set_records(Some(
            (0..300)
                .map(|i| entry(format!("batch-{i}").as_bytes(), &format!("key-{i}")))
                .collect(),
        ))
        .send()
        .await
        .expect("put records");
    assert_eq!(batch.failed_record_count(), Some(0));
    assert_eq!(batch.records().len(), 300);

    section("GetShardIterator: every type; GetRecords paged to the end on another node");
    let iterator = |kind: ShardIteratorType| {
        k.get_shard_iterator()
            .stream_name("sdk")
            .shard_id(&shard)
            .shard_iterator_type(kind)
    };
    let it = iterator(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .expect("trim horizon")
        .shard_iterator()
        .expect("iterator")
        .to_string();
    let mut next = it.clone();
    let mut all = Vec::new();
    let mut calls = 0;
    loop {
        let page = other
            .get_records()
            .shard_iterator(&next)
            .limit(50)
            .send()
            .await
            .expect("get records");
        calls += 1;
        if page.records().is_empty() {
            assert_eq!(page.millis_behind_latest(), Some(0));
            break;
        }
        all.extend(page.records().iter().cloned());
        next = page.next_shard_iterator().expect("next").to_string();
    }
    assert_eq!(all[0].data().as_ref(), b"first");
    assert_eq!(all[1].data().as_ref(), b"second");
    assert_eq!(all[0].sequence_number(), r1.sequence_number());
    assert!(
        all.windows(2)
            .all(|w| w[0].sequence_number() < w[1].sequence_number())
    );
    assert!(calls > 2, "paged in {calls} calls");
    let at = iterator(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(r2.sequence_number())
        .send()
        .await
        .expect("at sequence number");
    let got = k
        .get_records()
        .shard_iterator(at.shard_iterator().expect("iterator"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.records()[0].sequence_number(), r2.sequence_number());
    let after = iterator(ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(r1.sequence_number())
        .send()
        .await
        .expect("after sequence number");
    let got = k
        .get_records()
        .shard_iterator(after.shard_iterator().expect("iterator"))
        .send()
        .await
        .expect("get");
    assert_eq!(got.records()[0].sequence_number(), r2.sequence_number());
    let latest = iterator(ShardIteratorType::Latest)
        .send()
        .await
        .expect("latest");
    let empty = k
        .get_records()
        .shard_iterator(latest.shard_iterator().expect("iterator"))
        .send()
        .await
        .expect("get");
    assert!(empty.records().is_empty());
    advance_clock(2000);
    let newest = k
        .put_record()
        .stream_name("sdk")
        .partition_key("user-1")
        .data(Blob::new(b"newest".as_slice()))
        .send()
        .await
        .expect("put newest");
    let got = k
        .get_records()
        .shard_iterator(empty.next_shard_iterator().expect("next"))
        .send()
        .await
        .expect("get after latest");
    assert_eq!(got.records().len(), 1);
    assert_eq!(got.records()[0].sequence_number(), newest.sequence_number());
    let arrival = *got.records()[0]
        .approximate_arrival_timestamp()
        .expect("arrival time");
    let at_ts = iterator(ShardIteratorType::AtTimestamp)
        .timestamp(arrival)
        .send()
        .await
        .expect("at timestamp");
    let got = k
        .get_records()
        .shard_iterator(at_ts.shard_iterator().expect("iterator"))
        .send()
        .await
        .expect("get at timestamp");
    assert_eq!(got.records().len(), 1, "only the record written 2 s later");
    assert_eq!(got.records()[0].data().as_ref(), b"newest");

    section("retention, tags, limits, stream mode");
    k.increase_stream_retention_period()
        .stream_name("sdk")
        .retention_period_hours(36)
        .send()
        .await
        .expect("increase");
    k.decrease_stream_retention_period()
        .stream_arn(&arn)
        .retention_period_hours(30)
        .send()
        .await
        .expect("decrease");
    let s = k
        .describe_stream_summary()
        .stream_name("sdk")
        .send()
        .await
        .expect("summary");
    assert_eq!(
        s.stream_description_summary()
            .expect("summary")
            .retention_period_hours(),
        30
    );
    k.add_tags_to_stream()
        .stream_name("sdk")
        .tags("env", "test")
        .send()
        .await
        .expect("add tags");
    k.tag_resource()
        .resource_arn(&arn)
        .tags("cost", "7")
        .send()
        .await
        .expect("tag resource");
    let tags = k
        .list_tags_for_stream()
        .stream_name("sdk")
        .limit(2)
        .send()
        .await
        .expect("list tags");
    let keys: Vec<&str> = tags.tags().iter().map(|t| t.key()).collect();
    assert_eq!(keys, ["cost", "env"]);
    assert!(tags.has_more_tags());
    k.remove_tags_from_stream()
        .stream_name("sdk")
        .tag_keys("env")
        .send()
        .await
        .expect("remove tags");
    k.untag_resource()
        .resource_arn(&arn)
        .tag_keys("cost")
        .send()
        .await
        .expect("untag");
    let tags: BTreeMap<String, String> = k
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .expect("list tags for resource")
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert_eq!(
        tags,
        BTreeMap::from([("team".to_string(), "rust".to_string())])
    );
    let limits = k.describe_limits().send().await.expect("limits");
    assert_eq!(limits.open_shard_count(), 2 + 4);
    assert_eq!(limits.on_demand_stream_count(), 1);
    assert_eq!(limits.shard_limit(), 1024);
    k.update_stream_mode()
        .stream_arn(&arn)
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()
                .expect("mode"),
        )
        .send()
        .await
        .expect("update stream mode");
    let limits = k.describe_limits().send().await.expect("limits");
    assert_eq!(limits.on_demand_stream_count(), 2);

    section("every error type, typed where the SDK's model has the type");
    let (e, msg) = expect_code(
        k.describe_stream().stream_name("nope").send().await,
        "ResourceNotFoundException",
    );
    assert!(
        e.is_resource_not_found_exception() && msg.contains("nope"),
        "{msg}"
    );
    let (e, _) = expect_code(
        k.create_stream()
            .stream_name("sdk")
            .shard_count(1)
            .send()
            .await,
        "ResourceInUseException",
    );
    assert!(e.is_resource_in_use_exception());
    let (e, msg) = expect_code(
        iterator(ShardIteratorType::AtSequenceNumber)
            .starting_sequence_number("99999999999999999")
            .send()
            .await,
        "InvalidArgumentException",
    );
    assert!(e.is_invalid_argument_exception() && msg.contains("starting_sequence_number"));
    let (_, msg) = expect_code(
        iterator(ShardIteratorType::from("SIDEWAYS")).send().await,
        "ValidationException",
    );
    assert!(msg.contains("ShardIteratorType"), "{msg}");
    let (e, _) = expect_code(
        k.update_stream_mode()
            .stream_arn(&arn)
            .stream_mode_details(
                StreamModeDetails::builder()
                    .stream_mode(StreamMode::from("FAST"))
                    .build()
                    .expect("mode"),
            )
            .send()
            .await,
        "ValidationException",
    );
    assert!(e.is_validation_exception());
    let mut many = k.add_tags_to_stream().stream_name("sdk");
    for i in 0..50 {
        many = many.tags(format!("t{i}"), "v");
    }
    let (e, msg) = expect_code(many.send().await, "LimitExceededException");
    assert!(
        e.is_limit_exceeded_exception() && msg.contains("50"),
        "{msg}"
    );
    k.create_stream()
        .stream_name("sdk-hot")
        .shard_count(1)
        .send()
        .await
        .expect("create hot");
    wait_active(&k, "sdk-hot").await;
    // The clock stands still, so that the byte quota refills only when this program moves it.
    clock_request("stop");
    let big = vec![b'x'; 1_000_000];
    k.put_record()
        .stream_name("sdk-hot")
        .partition_key("big")
        .data(Blob::new(big.clone()))
        .send()
        .await
        .expect("first big record fits the quota");
    let (e, msg) = expect_code(
        k.put_record()
            .stream_name("sdk-hot")
            .partition_key("big")
            .data(Blob::new(big))
            .send()
            .await,
        "ProvisionedThroughputExceededException",
    );
    assert!(e.is_provisioned_throughput_exceeded_exception() && msg.contains("bytes/s"));
    advance_clock(5 * 60 * 1000 + 1000);
    let (e, _) = expect_code(
        k.get_records().shard_iterator(&it).send().await,
        "ExpiredIteratorException",
    );
    assert!(e.is_expired_iterator_exception());
    clock_request("run");
    for (result, action) in [
        (
            k.split_shard()
                .stream_name("sdk")
                .shard_to_split(&shard)
                .new_starting_hash_key("1")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().clone()),
            "SplitShard",
        ),
        (
            k.register_stream_consumer()
                .stream_arn(&arn)
                .consumer_name("c")
                .send()
                .await
                .map(|_| ())
                .map_err(|e| e.into_service_error().meta().clone()),
            "RegisterStreamConsumer",
        ),
    ] {
        let meta = result.expect_err("not supported yet");
        assert_eq!(meta.code(), Some("UnsupportedOperationException"));
        assert!(
            meta.message().unwrap_or_default().contains(action),
            "{meta:?}"
        );
    }

    section("DeleteStream");
    k.delete_stream()
        .stream_name("sdk-on-demand")
        .send()
        .await
        .expect("delete");
    expect_code(
        k.describe_stream_summary()
            .stream_name("sdk-on-demand")
            .send()
            .await,
        "ResourceNotFoundException",
    );
    println!("aws-sdk-kinesis: all checks passed");
}
