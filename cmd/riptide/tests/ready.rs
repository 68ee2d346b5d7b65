//! A cluster answers from the moment its Kinesis port opens: a CreateStream sent as soon as the
//! port accepts a connection succeeds, as a new user's `riptide dev &` followed at once by
//! `aws kinesis create-stream` expects. The node holds the call until the cluster has formed
//! instead of refusing it.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{NodeProcesses, riptide_bin};

/// How long a cluster may take to open its Kinesis port, and a stream to turn ACTIVE.
const WAIT: Duration = Duration::from_secs(90);

/// A connection to the first of `addrs` that accepts one, tried in a loop until `WAIT` is over.
fn connect_once_open(addrs: &[String], logs: &Path) -> (String, TcpStream) {
    let deadline = Instant::now() + WAIT;
    let parsed: Vec<SocketAddr> = addrs
        .iter()
        .map(|a| a.parse().expect("host:port"))
        .collect();
    loop {
        for (addr, sock) in addrs.iter().zip(&parsed) {
            if let Ok(conn) = TcpStream::connect_timeout(sock, Duration::from_millis(200)) {
                return (addr.clone(), conn);
            }
        }
        assert!(
            Instant::now() < deadline,
            "no Kinesis port of {addrs:?} opened; logs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Sends one Kinesis call on `conn` and returns the HTTP status and the body.
fn call(mut conn: TcpStream, host: &str, action: &str, body: &str) -> (u16, String) {
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {host}\r\nX-Amz-Target: Kinesis_20131202.{action}\r\n\
         Content-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes())
        .expect("send the request");
    // The node holds a call for at most its start hold (15 s by default).
    conn.set_read_timeout(Some(WAIT)).expect("read timeout");
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).expect("read the answer");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Calls `action` at `addr` on a new connection.
fn call_at(addr: &str, action: &str, body: &str) -> (u16, String) {
    let conn = TcpStream::connect(addr).expect("connect to the Kinesis API");
    call(conn, addr, action, body)
}

/// Creates a stream through the first Kinesis port of `addrs` to open, on the connection that
/// first got through; then sees the stream turn ACTIVE and take a record.
fn create_at_once(addrs: &[String], logs: &Path) {
    let (addr, conn) = connect_once_open(addrs, logs);
    let (status, body) = call(
        conn,
        &addr,
        "CreateStream",
        r#"{"StreamName":"early","ShardCount":2}"#,
    );
    assert_eq!(
        status,
        200,
        "CreateStream sent as the port opened: {body}; logs in {}",
        logs.display()
    );

    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) = call_at(&addr, "DescribeStreamSummary", r#"{"StreamName":"early"}"#);
        assert_eq!(status, 200, "DescribeStreamSummary: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
        if doc["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stream did not turn ACTIVE: {body}; logs in {}",
            logs.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = call_at(
        &addr,
        "PutRecord",
        r#"{"StreamName":"early","Data":"aGVsbG8=","PartitionKey":"k"}"#,
    );
    assert_eq!(status, 200, "PutRecord: {body}");
}

/// `riptide dev`, killed when dropped.
struct Dev {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn riptide_dev_takes_a_create_stream_the_moment_its_kinesis_port_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base_port = riptide_test_ports::consecutive(3);
    let kinesis_port = riptide_test_ports::free_port();
    let log = std::fs::File::create(dir.path().join("dev.log")).expect("log file");
    let child = Command::new(riptide_bin())
        .arg("dev")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--base-port", &base_port.to_string()])
        .args(["--kinesis-port", &kinesis_port.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start riptide dev");
    let dev = Dev { child, dir };
    create_at_once(&[format!("127.0.0.1:{kinesis_port}")], dev.dir.path());
}

#[test]
fn a_new_three_node_cluster_takes_a_create_stream_the_moment_a_kinesis_port_opens() {
    let cluster = NodeProcesses::start_with_kinesis(3);
    create_at_once(&cluster.kinesis, cluster.log_dir());
}
