//! What the Kinesis HTTP API adds to a PutRecords call: 500 records of 100 bytes, sent to the
//! shard's leader through the native gRPC API and through the Kinesis API (JSON over HTTP/1.1,
//! with a SigV4 Authorization header), on a three-node in-process cluster. Before the cluster
//! starts, the CBOR codec alone (`cbor_500x100B`): decoding the same PutRecords request as the
//! Java SDKs write it, encoding it, and encoding the answer of 500 records.
//!
//! Run: `cargo bench -p riptide-node --bench kinesis_put_records --profile dev` (a release
//! build would rebuild RocksDB; `-- cbor` runs the codec group alone). Criterion's medians are
//! in `target/criterion/{put_records_500x100B,cbor_500x100B}/*/new/estimates.json`; the
//! figures are written down in docs/benchmarks.md.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use criterion::{Criterion, Throughput};
use http_body_util::{BodyExt, Full};
use riptide_node::clock::SystemClock;
use riptide_node::config::NodeConfig;
use riptide_node::kinesis_api::cbor;
use riptide_node::kinesis_api::value::Value;
use riptide_node::server::Node;
use riptide_proto::v1;
use riptide_proto::v1::stream_service_client::StreamServiceClient;

const RECORDS: usize = 500;
const RECORD_BYTES: usize = 100;
const STREAM: &str = "bench";

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Cluster {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

async fn start() -> Cluster {
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let initial: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
        .collect();
    let mut nodes = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let config = NodeConfig {
            node_id: i as u64 + 1,
            listen: format!("127.0.0.1:{p}"),
            kinesis_listen: format!("127.0.0.1:{}", free_port()),
            data_dir: dir.path().join(format!("node-{}", i + 1)),
            zone: format!("zone-{i}"),
            initial_cluster: initial.clone(),
            ..NodeConfig::default()
        };
        nodes.push(
            Node::start(config, Arc::new(SystemClock))
                .await
                .expect("node starts"),
        );
    }
    Cluster { _dir: dir, nodes }
}

/// Creates the one-shard stream and returns the index of the node that leads its shard, once
/// every node sees the stream ACTIVE.
async fn create_stream(cluster: &Cluster) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut api = loop {
        let ready = cluster
            .nodes
            .iter()
            .all(|n| n.core_nodes().map(|v| v.len() == 3).unwrap_or(false));
        if ready {
            break StreamServiceClient::connect(format!("http://{}", cluster.nodes[0].addr()))
                .await
                .expect("connect");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes never registered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    api.create_stream(v1::CreateStreamRequest {
        stream_name: STREAM.into(),
        shard_count: 1,
        retention_period_hours: 0,
        ..Default::default()
    })
    .await
    .expect("create stream");
    loop {
        let mut active = 0;
        let mut leader = None;
        for (i, n) in cluster.nodes.iter().enumerate() {
            let mut c = StreamServiceClient::connect(format!("http://{}", n.addr()))
                .await
                .expect("connect");
            let d = c
                .describe_stream(v1::DescribeStreamRequest {
                    stream_name: STREAM.into(),
                })
                .await
                .expect("describe")
                .into_inner()
                .stream
                .expect("stream");
            if d.status == v1::StreamStatus::Active as i32 {
                active += 1;
            }
            if d.shards[0].leader == i as u64 + 1 {
                leader = Some(i);
            }
        }
        if let (3, Some(l)) = (active, leader) {
            return l;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream never ACTIVE"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn records() -> Vec<(String, Vec<u8>)> {
    (0..RECORDS)
        .map(|i| {
            (
                format!("key-{i}"),
                vec![b'a' + (i % 26) as u8; RECORD_BYTES],
            )
        })
        .collect()
}

/// A CBOR head: major type and argument, in the shortest form.
fn cbor_head(out: &mut Vec<u8>, major: u8, n: usize) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        _ => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
}

fn cbor_text(out: &mut Vec<u8>, s: &str) {
    cbor_head(out, 3, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// The PutRecords request as the Java SDKs write it: indefinite-length maps and array.
fn java_cbor_put_records(recs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = vec![0xbf];
    cbor_text(&mut b, "StreamName");
    cbor_text(&mut b, STREAM);
    cbor_text(&mut b, "Records");
    b.push(0x9f);
    for (k, d) in recs {
        b.push(0xbf);
        cbor_text(&mut b, "Data");
        cbor_head(&mut b, 2, d.len());
        b.extend_from_slice(d);
        cbor_text(&mut b, "PartitionKey");
        cbor_text(&mut b, k);
        b.push(0xff);
    }
    b.extend_from_slice(&[0xff, 0xff]);
    b
}

/// The answer to a PutRecords of `n` records that all succeeded, as the gateway builds it.
fn put_records_answer(n: usize) -> Value {
    let records = (0..n)
        .map(|i| {
            Value::map([
                (
                    "SequenceNumber",
                    Value::text(format!("{:056}", 49_000_000_000_000_000u64 + i as u64)),
                ),
                ("ShardId", Value::text("shardId-000000000000")),
            ])
        })
        .collect();
    Value::map([
        ("FailedRecordCount", Value::Int(0)),
        ("Records", Value::Array(records)),
        ("EncryptionType", Value::text("NONE")),
    ])
}

/// The CBOR codec alone, on one thread, before any node runs.
fn bench_cbor(c: &mut Criterion, recs: &[(String, Vec<u8>)]) {
    let body = java_cbor_put_records(recs);
    let request = cbor::decode(&body).expect("the request decodes");
    let answer = put_records_answer(recs.len());
    let mut group = c.benchmark_group("cbor_500x100B");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("decode_request", |b| {
        b.iter(|| cbor::decode(std::hint::black_box(&body)).expect("decodes"))
    });
    group.bench_function("encode_request", |b| {
        b.iter(|| cbor::encode(std::hint::black_box(&request)))
    });
    group.bench_function("encode_answer", |b| {
        b.iter(|| cbor::encode(std::hint::black_box(&answer)))
    });
    group.finish();
}

fn main() {
    let recs = records();
    let mut c = Criterion::default()
        .sample_size(40)
        .measurement_time(Duration::from_secs(15))
        .configure_from_args();
    bench_cbor(&mut c, &recs);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let cluster = rt.block_on(start());
    let leader = rt.block_on(create_stream(&cluster));
    let node = &cluster.nodes[leader];
    let grpc_endpoint = format!("http://{}", node.addr());
    let kinesis_url = format!(
        "http://{}/",
        node.kinesis_addr().expect("kinesis api is on")
    );

    let grpc = rt.block_on(async {
        StreamServiceClient::connect(grpc_endpoint)
            .await
            .expect("connect")
    });
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature={}",
        "0".repeat(64)
    );

    let grpc_call = || {
        let req = v1::PutRecordsRequest {
            stream_name: STREAM.into(),
            records: recs
                .iter()
                .map(|(k, d)| v1::PutRecordsEntry {
                    data: d.clone().into(),
                    partition_key: k.clone(),
                    explicit_hash_key: None,
                })
                .collect(),
            numeric_positions: false,
        };
        let mut grpc = grpc.clone();
        async move {
            let resp = grpc
                .put_records(req)
                .await
                .expect("put records")
                .into_inner();
            assert_eq!(resp.failed_record_count, 0);
        }
    };
    // The request and answer as an SDK models them: typed structures, serialized directly.
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct Entry<'a> {
        data: String,
        partition_key: &'a str,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "PascalCase")]
    struct PutRecords<'a> {
        stream_name: &'a str,
        records: Vec<Entry<'a>>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ResultEntry {
        sequence_number: Option<String>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        failed_record_count: u32,
        records: Vec<ResultEntry>,
    }
    let http_call = || {
        let body = PutRecords {
            stream_name: STREAM,
            records: recs
                .iter()
                .map(|(k, d)| Entry {
                    data: BASE64.encode(d),
                    partition_key: k,
                })
                .collect(),
        };
        let req = hyper::Request::post(&kinesis_url)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "Kinesis_20131202.PutRecords")
            .header("x-amz-date", "20260101T000000Z")
            .header("authorization", &auth)
            .body(Full::new(Bytes::from(
                serde_json::to_vec(&body).expect("json"),
            )))
            .expect("request");
        let http = http.clone();
        async move {
            let resp = http.request(req).await.expect("http call");
            assert_eq!(resp.status(), 200);
            let body = resp.into_body().collect().await.expect("body").to_bytes();
            let answer: Answer = serde_json::from_slice(&body).expect("json answer");
            assert_eq!(answer.failed_record_count, 0);
            assert!(answer.records.iter().all(|r| r.sequence_number.is_some()));
        }
    };
    // Both paths must work before they are timed.
    rt.block_on(grpc_call());
    rt.block_on(http_call());

    let mut group = c.benchmark_group("put_records_500x100B");
    group.throughput(Throughput::Elements(RECORDS as u64));
    group.bench_function("grpc", |b| b.iter(|| rt.block_on(grpc_call())));
    group.bench_function("kinesis_http", |b| b.iter(|| rt.block_on(http_call())));
    group.finish();
    c.final_summary();
    drop(grpc);
    rt.block_on(async {
        for n in cluster.nodes {
            n.shutdown().await;
        }
    });
}
