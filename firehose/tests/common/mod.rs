//! The test fixtures of the delivery daemon: a Riptide cluster (`riptide dev`), a PostgreSQL
//! server, moto's S3-compatible server behind a proxy that can be taken down, an HTTP
//! endpoint and a transform endpoint, and the daemon itself. Everything listens on
//! 127.0.0.1 and is stopped and removed when dropped.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use riptide_client::{Client, ProducerConfig};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("firehose/ has a parent")
        .to_path_buf()
}

/// Heavy tests run one at a time: they share two cores.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

pub use riptide_test_ports::free_port;

/// Waits for `cond` until `deadline`, panicking with `what` when it does not come.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command, log: &Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { child, name }
    }

    fn terminate(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(10));
    }
}

/// A three-node cluster in one `riptide dev` process.
pub struct Cluster {
    proc: Proc,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let bin = std::env::var_os("RIPTIDE_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/debug/riptide"));
        assert!(
            bin.exists(),
            "{} is missing: build it with `cargo build -p riptide` or set RIPTIDE_BIN",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let port = riptide_test_ports::consecutive(3);
        let proc = Proc::spawn(
            "riptide dev",
            Command::new(&bin)
                .arg("dev")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .arg("--base-port")
                .arg(port.to_string())
                .arg("--kinesis-port")
                .arg("0"),
            &dir.path().join("riptide.log"),
        );
        let endpoint = format!("http://127.0.0.1:{port}");
        let cluster = Cluster {
            proc,
            endpoint,
            _dir: dir,
        };
        let ep = cluster.endpoint.clone();
        wait_for("the cluster to answer", Duration::from_secs(60), || {
            let ep = ep.clone();
            async move {
                match Client::connect(&ep).await {
                    Ok(c) => c.list_streams().await.is_ok(),
                    Err(_) => false,
                }
            }
        })
        .await;
        cluster
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.endpoint).await.expect("connect")
    }

    /// Creates a stream and waits until it takes records.
    pub async fn stream(&self, name: &str, shards: u32) -> Client {
        let client = self.client().await;
        // A new cluster takes streams once its nodes have registered with the controller.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match client.create_stream(name, shards, None).await {
                Ok(_) => break,
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                Err(e) => panic!("create stream {name}: {e}"),
            }
        }
        client
            .wait_for_active(name, Duration::from_secs(60))
            .await
            .expect("stream active");
        client
    }
}

/// Writes records `ids` as `{"id": N, "customer_id": "c<N % 5>", "pad": "..."}`.
pub async fn write_records(client: &Client, stream: &str, ids: std::ops::Range<u64>) {
    let producer = client.producer(stream, ProducerConfig::default());
    let mut acks = Vec::new();
    for id in ids {
        let data = format!(
            r#"{{"id":{id},"customer_id":"c{}","pad":"{}"}}"#,
            id % 5,
            "x".repeat(40)
        );
        acks.push(producer.send(format!("key-{id}"), data));
        if acks.len() >= 5_000 {
            for ack in futures::future::join_all(acks.drain(..)).await {
                ack.expect("record written");
            }
        }
    }
    for ack in futures::future::join_all(acks).await {
        ack.expect("record written");
    }
    producer.close().await;
}

/// The `id` field of a JSON record.
pub fn record_id(data: &[u8]) -> u64 {
    let v: serde_json::Value = serde_json::from_slice(data).expect("record is JSON");
    v["id"].as_u64().expect("record has an id")
}

/// Counts each id in a list of records.
pub fn count_ids<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> HashMap<u64, u32> {
    let mut counts = HashMap::new();
    for r in records {
        *counts.entry(record_id(r)).or_default() += 1;
    }
    counts
}

/// Asserts that every id of `0..n` appears exactly once (`at_least_once`: at least once).
pub fn assert_ids(what: &str, counts: &HashMap<u64, u32>, n: u64, at_least_once: bool) {
    let missing: Vec<u64> = (0..n)
        .filter(|i| !counts.contains_key(i))
        .take(10)
        .collect();
    assert!(
        missing.is_empty(),
        "{what}: records missing, e.g. {missing:?}"
    );
    let extra: Vec<u64> = counts
        .keys()
        .filter(|i| **i >= n)
        .copied()
        .take(10)
        .collect();
    assert!(extra.is_empty(), "{what}: unknown records {extra:?}");
    if !at_least_once {
        let doubled: Vec<(u64, u32)> = counts
            .iter()
            .filter(|(_, c)| **c > 1)
            .map(|(i, c)| (*i, *c))
            .take(10)
            .collect();
        assert!(
            doubled.is_empty(),
            "{what}: records delivered more than once: {doubled:?}"
        );
    }
}

/// Every file under `dir` (recursively), as (relative path, bytes).
pub fn read_tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                let rel = p
                    .strip_prefix(dir)
                    .expect("under dir")
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, bytes));
            }
        }
    }
    out.sort();
    out
}

/// Splits newline-delimited records.
pub fn lines(bytes: &[u8]) -> Vec<&[u8]> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect()
}

/// A PostgreSQL server in a temporary folder, run as the `postgres` user when the tests run as
/// root (PostgreSQL refuses to run as root).
pub struct Postgres {
    proc: Proc,
    pub port: u16,
    dir: PathBuf,
}

fn pg_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return PathBuf::from(dir).join(name);
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|r| r.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    versions.sort();
    versions
        .into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `cmd` as the postgres user when running as root.
fn as_pg_user(cmd: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    }
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!(
            "riptide-firehose-pg-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(&dir)
                .status()
                .expect("chown");
            assert!(ok.success(), "chown of {} failed", dir.display());
        }
        let data = dir.join("data");
        let out = as_pg_user(&pg_bin("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "riptide", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .expect("run initdb (install PostgreSQL: scripts/firehose-deps)");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let proc = Proc::spawn(
            "postgres",
            as_pg_user(&pg_bin("postgres"))
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
            &std::env::temp_dir().join(format!("riptide-firehose-pg-{port}.log")),
        );
        let pg = Postgres { proc, port, dir };
        let url = pg.url();
        wait_for(
            "postgres to accept connections",
            Duration::from_secs(60),
            || {
                let url = url.clone();
                async move {
                    tokio_postgres::connect(&url, tokio_postgres::NoTls)
                        .await
                        .is_ok()
                }
            },
        )
        .await;
        pg
    }

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=riptide dbname=postgres",
            self.port
        )
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.proc.terminate(Duration::from_secs(20));
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_file(
            std::env::temp_dir().join(format!("riptide-firehose-pg-{}.log", self.port)),
        );
    }
}

/// A TCP proxy that can be taken down (its port refuses connections and open ones are cut)
/// and brought back on the same port.
pub struct Proxy {
    pub port: u16,
    upstream: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let mut p = Proxy {
            port: free_port(),
            upstream,
            task: None,
        };
        p.up().await;
        p
    }

    pub async fn up(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("proxy port");
        let upstream = self.upstream;
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                conns.spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                while conns.try_join_next().is_some() {}
            }
        }));
    }

    /// Refuses connections and cuts the open ones (the JoinSet of connections is dropped with
    /// the task).
    pub async fn down(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// moto's S3-compatible server, with a bucket, behind a [`Proxy`].
pub struct S3 {
    proc: Proc,
    pub moto_port: u16,
    pub proxy: Proxy,
    pub bucket: String,
    _log: tempfile::TempDir,
}

impl S3 {
    pub async fn start(bucket: &str) -> S3 {
        let bin = std::env::var_os("MOTO_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/firehose-venv/bin/moto_server"));
        assert!(
            bin.exists(),
            "{} is missing: run scripts/firehose-deps",
            bin.display()
        );
        let log = tempfile::tempdir().expect("tempdir");
        let moto_port = free_port();
        let proc = Proc::spawn(
            "moto_server",
            Command::new(&bin).args(["-H", "127.0.0.1", "-p", &moto_port.to_string()]),
            &log.path().join("moto.log"),
        );
        let http = reqwest::Client::new();
        let url = format!("http://127.0.0.1:{moto_port}/{bucket}");
        wait_for("moto to create the bucket", Duration::from_secs(60), || {
            let req = http.put(&url);
            async move { req.send().await.is_ok_and(|r| r.status().is_success()) }
        })
        .await;
        let proxy = Proxy::start(([127, 0, 0, 1], moto_port).into()).await;
        S3 {
            proc,
            moto_port,
            proxy,
            bucket: bucket.to_string(),
            _log: log,
        }
    }

    /// The endpoint the daemon uses (through the proxy).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy.port)
    }

    /// Every object of the bucket, read straight from moto.
    pub async fn objects(&self) -> Vec<(String, Vec<u8>)> {
        use futures::TryStreamExt;
        use object_store::ObjectStore;
        let store = object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(&self.bucket)
            .with_region("us-east-1")
            .with_endpoint(format!("http://127.0.0.1:{}", self.moto_port))
            .with_allow_http(true)
            .with_access_key_id("test")
            .with_secret_access_key("test")
            .build()
            .expect("s3 client");
        let metas: Vec<object_store::ObjectMeta> =
            store.list(None).try_collect().await.expect("list bucket");
        let mut out = Vec::new();
        for m in metas {
            let bytes = store
                .get(&m.location)
                .await
                .expect("get")
                .bytes()
                .await
                .expect("body");
            out.push((m.location.to_string(), bytes.to_vec()));
        }
        out.sort();
        out
    }
}

/// What the test HTTP endpoint received.
#[derive(Debug, Default)]
pub struct Received {
    pub records: Vec<Vec<u8>>,
    /// The request id each record came with (parallel to `records`).
    pub record_requests: Vec<String>,
    pub requests: u64,
}

/// An HTTP endpoint speaking Firehose's HTTP endpoint delivery format; it refuses every
/// request while `failing` is set.
pub struct Endpoint {
    pub url: String,
    pub received: Arc<Mutex<Received>>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
    /// When set, the next request is taken in and then answered only 10 s later; `held` is
    /// set once it was taken in.
    pub hold_next: Arc<std::sync::atomic::AtomicBool>,
    pub held: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    pub async fn start() -> Endpoint {
        use axum::routing::post;
        let received = Arc::new(Mutex::new(Received::default()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hold_next = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (r, f, hn, hd) = (
            received.clone(),
            failing.clone(),
            hold_next.clone(),
            held.clone(),
        );
        let app = axum::Router::new().route(
            "/",
            post(move |body: axum::body::Bytes| {
                let (r, f, hn, hd) = (r.clone(), f.clone(), hn.clone(), hd.clone());
                async move {
                    let v: serde_json::Value = match serde_json::from_slice(&body) {
                        Ok(v) => v,
                        Err(_) => return (axum::http::StatusCode::BAD_REQUEST, String::new()),
                    };
                    let id = v["requestId"].as_str().unwrap_or_default().to_string();
                    if f.load(std::sync::atomic::Ordering::SeqCst) {
                        let body = serde_json::json!({"requestId": id, "timestamp": 0, "errorMessage": "endpoint is down for the test"});
                        return (axum::http::StatusCode::SERVICE_UNAVAILABLE, body.to_string());
                    }
                    let b64 = base64::engine::general_purpose::STANDARD;
                    {
                        let mut got = r.lock().unwrap_or_else(|p| p.into_inner());
                        got.requests += 1;
                        for rec in v["records"].as_array().into_iter().flatten() {
                            if let Some(d) =
                                rec["data"].as_str().and_then(|d| b64.decode(d).ok())
                            {
                                got.records.push(d);
                                got.record_requests.push(id.clone());
                            }
                        }
                    }
                    if hn.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        hd.store(true, std::sync::atomic::Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    let body = serde_json::json!({"requestId": id, "timestamp": 1});
                    (axum::http::StatusCode::OK, body.to_string())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint {
            url,
            received,
            failing,
            hold_next,
            held,
            task,
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A transform endpoint: records whose `id` is divisible by 10 are Dropped, by 10 plus 1
/// ProcessingFailed, the others Ok with a field `"transformed": true` added.
pub struct TransformEndpoint {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl TransformEndpoint {
    pub async fn start() -> TransformEndpoint {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/",
            post(|body: axum::body::Bytes| async move {
                let b64 = base64::engine::general_purpose::STANDARD;
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let mut out = Vec::new();
                for rec in v["records"].as_array().into_iter().flatten() {
                    let rid = rec["recordId"].clone();
                    let data = rec["data"]
                        .as_str()
                        .and_then(|d| b64.decode(d).ok())
                        .unwrap_or_default();
                    let mut json: serde_json::Value =
                        serde_json::from_slice(&data).unwrap_or_default();
                    let id = json["id"].as_u64().unwrap_or(0);
                    out.push(match id % 10 {
                        0 => serde_json::json!({"recordId": rid, "result": "Dropped"}),
                        1 => serde_json::json!({"recordId": rid, "result": "ProcessingFailed", "errorMessage": format!("id {id} ends in 1")}),
                        _ => {
                            json["transformed"] = serde_json::Value::Bool(true);
                            serde_json::json!({"recordId": rid, "result": "Ok", "data": b64.encode(json.to_string())})
                        }
                    });
                }
                serde_json::json!({ "records": out }).to_string()
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        TransformEndpoint { url, task }
    }
}

impl Drop for TransformEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The daemon, run from its binary with a configuration file.
pub struct Daemon {
    proc: Option<Proc>,
    pub config: PathBuf,
    log: PathBuf,
    starts: u32,
}

impl Daemon {
    pub fn start(dir: &Path, config: &str) -> Daemon {
        let path = dir.join("firehose.toml");
        std::fs::write(&path, config).expect("write config");
        let mut d = Daemon {
            proc: None,
            config: path,
            log: dir.join("firehose.log"),
            starts: 0,
        };
        d.restart();
        d
    }

    pub fn restart(&mut self) {
        assert!(self.proc.is_none(), "the daemon is running");
        self.starts += 1;
        let log = self.log.with_extension(format!("{}.log", self.starts));
        self.proc = Some(Proc::spawn(
            "riptide-firehose",
            Command::new(env!("CARGO_BIN_EXE_riptide-firehose"))
                .arg("run")
                .arg(&self.config)
                .env("RUST_LOG", "info,riptide_firehose=debug"),
            &log,
        ));
    }

    /// SIGKILL: no flush, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit; returns whether it exited successfully.
    pub fn stop(&mut self) -> bool {
        let Some(mut p) = self.proc.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = p.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// The daemon's logs so far, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            let p = self.log.with_extension(format!("{i}.log"));
            out.push_str(&std::fs::read_to_string(p).unwrap_or_default());
        }
        out
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
