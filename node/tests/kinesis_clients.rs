//! Real Kinesis clients against the Kinesis API of a three-node cluster: boto3, the AWS CLI, the
//! article's examples, CBOR from an independent encoder, several hundred concurrent PutRecords
//! calls, and the Rust `aws-sdk-kinesis` crate.
//!
//! The clients are installed by `./scripts/kinesis-clients` (which `./scripts/test` runs): a
//! virtualenv with boto3, the AWS CLI and cbor2 from PyPI under `target/kinesis-venv`, and the
//! aws-sdk-kinesis program built from `node/tests/aws-sdk-rust` under `target/aws-sdk-rust`.
//! Without them these tests fail and say so; they never skip.
//!
//! Each client runs as a child process with the endpoint and dummy credentials in its
//! environment. A line `RIPTIDE-CLOCK advance-ms <ms>` on its output moves the cluster's clock
//! forward (to expire iterators and space out arrival times), `RIPTIDE-CLOCK stop` stops it
//! (so that write quotas refill only when the client moves it) and `RIPTIDE-CLOCK run` lets it
//! run again; the test answers `ok`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::TestCluster;
use riptide_node::clock::OffsetClock;
use riptide_node::config::NodeConfig;

/// Longest a client may run.
const CLIENT_DEADLINE: Duration = Duration::from_secs(240);
const CLOCK_COMMAND: &str = "RIPTIDE-CLOCK ";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

fn scripts() -> PathBuf {
    workspace().join("node/tests/kinesis")
}

/// `target/<what>`, which must exist: installed by `./scripts/kinesis-clients`.
fn installed(what: &str) -> PathBuf {
    let p = workspace().join("target").join(what);
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/kinesis-clients (./scripts/test runs it) to install boto3, \
         the AWS CLI and cbor2 into target/kinesis-venv and build the aws-sdk-kinesis check into \
         target/aws-sdk-rust",
        p.display()
    );
    p
}

fn venv_bin() -> PathBuf {
    installed("kinesis-venv/bin/python");
    installed("kinesis-venv/bin/aws");
    workspace().join("target/kinesis-venv/bin")
}

/// A three-node cluster with the Kinesis API on every node.
async fn cluster(tweak: impl Fn(&mut NodeConfig)) -> TestCluster {
    TestCluster::start(3, |c| {
        c.kinesis_listen = format!("127.0.0.1:{}", common::ports::free_port());
        tweak(c);
    })
    .await
}

fn endpoints(cluster: &TestCluster) -> Vec<String> {
    (0..3)
        .map(|i| {
            let addr = cluster
                .node(i)
                .expect("node is up")
                .kinesis_addr()
                .expect("kinesis api is on");
            format!("http://{addr}")
        })
        .collect()
}

/// Runs `program args` against the cluster's Kinesis API until it exits, serving its clock
/// requests; panics with its output when it fails or outlives [`CLIENT_DEADLINE`].
async fn run_client(cluster: &TestCluster, program: &Path, args: &[&str]) {
    let eps = endpoints(cluster);
    let bin = venv_bin();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(scripts())
        .env("PATH", path)
        .env("AWS_ENDPOINT_URL", &eps[0])
        .env("RIPTIDE_KINESIS_ENDPOINTS", eps.join(","))
        .env("AWS_ACCESS_KEY_ID", "riptide-test")
        .env("AWS_SECRET_ACCESS_KEY", "riptide-test-secret")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let clock = cluster.clock.clone();
    let what = format!("{} {}", program.display(), args.join(" "));
    let outcome = tokio::task::spawn_blocking(move || supervise(cmd, clock))
        .await
        .expect("client supervisor");
    match outcome {
        Ok(out) => println!("{what}: passed\n{out}"),
        Err(out) => panic!("{what} failed:\n{out}"),
    }
}

/// Runs the child, answering its clock requests, until it exits or the deadline passes.
/// `Ok` carries its output when it exited successfully.
fn supervise(mut cmd: Command, clock: OffsetClock) -> Result<String, String> {
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start the client: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let child = Arc::new(Mutex::new(child));
    let err_text = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    // The watchdog kills a client that outlives its deadline; its output then ends.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (child, done) = (child.clone(), done.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + CLIENT_DEADLINE;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                if Instant::now() >= deadline {
                    let _ = child.lock().expect("child lock").kill();
                    return true;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            false
        })
    };
    let mut out = String::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(request) = line.strip_prefix(CLOCK_COMMAND) {
            let request = request.trim();
            if request == "stop" {
                clock.stop();
                out.push_str("(clock stopped)\n");
            } else if request == "run" {
                clock.run();
                out.push_str("(clock running)\n");
            } else {
                let ms: u64 = request
                    .strip_prefix("advance-ms ")
                    .and_then(|ms| ms.trim().parse().ok())
                    .ok_or_else(|| format!("bad clock request {line:?}"))?;
                clock.advance(ms);
                out.push_str(&format!("(clock advanced {ms} ms)\n"));
            }
            let _ = writeln!(stdin, "ok").and_then(|_| stdin.flush());
            continue;
        }
        out.push_str(&line);
        out.push('\n');
    }
    let status = loop {
        if let Some(s) = child
            .lock()
            .expect("child lock")
            .try_wait()
            .map_err(|e| e.to_string())?
        {
            break s;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    let killed = watchdog.join().unwrap_or(false);
    let err = err_text.join().unwrap_or_default();
    let all = format!("--- stdout\n{out}--- stderr\n{err}");
    if killed {
        return Err(format!(
            "killed after {CLIENT_DEADLINE:?} without finishing\n{all}"
        ));
    }
    if status.success() {
        Ok(all)
    } else {
        Err(format!("exited with {status}\n{all}"))
    }
}

async fn python(cluster: &TestCluster, script: &str) {
    let py = venv_bin().join("python");
    run_client(cluster, &py, &[script]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_drives_every_action_iterator_type_and_error_type() {
    // Kinesis's own per-shard write quotas, so that throttling can be seen.
    let cluster = cluster(|c| {
        c.limits.shard_write_records_per_sec = 1000;
        c.limits.shard_write_bytes_per_sec = 1024 * 1024;
    })
    .await;
    python(&cluster, "test_boto3.py").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_cli_drives_a_stream_from_create_to_delete() {
    let cluster = cluster(|_| {}).await;
    python(&cluster, "test_aws_cli.py").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn article_examples_run_with_only_endpoint_and_credentials_added() {
    let cluster = cluster(|_| {}).await;
    python(&cluster, "test_article.py").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cbor_put_record_and_get_records_round_trip() {
    let cluster = cluster(|_| {}).await;
    python(&cluster, "test_cbor.py").await;
    let addrs: Vec<_> = (0..3)
        .map(|i| {
            cluster
                .node(i)
                .and_then(|n| n.kinesis_addr())
                .expect("kinesis api is on")
        })
        .collect();
    cluster.shutdown().await;
    // The Kinesis servers stop with their nodes.
    for a in addrs {
        assert!(
            std::net::TcpStream::connect(a).is_err(),
            "the kinesis api on {a} still accepts connections after shutdown"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_hundred_concurrent_boto3_put_records_lose_and_duplicate_nothing() {
    let cluster = cluster(|_| {}).await;
    python(&cluster, "test_concurrency.py").await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sdk_rust_drives_every_action_iterator_type_and_error_type() {
    let program = installed("aws-sdk-rust/debug/riptide-aws-sdk-check");
    let cluster = cluster(|c| {
        c.limits.shard_write_records_per_sec = 1000;
        c.limits.shard_write_bytes_per_sec = 1024 * 1024;
    })
    .await;
    run_client(&cluster, &program, &[]).await;
    cluster.shutdown().await;
}
