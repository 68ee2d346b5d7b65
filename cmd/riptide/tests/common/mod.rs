//! Clusters of `riptide node` processes started from the built binary, and running the binary
//! with a deadline, for the tests of the `riptide` command.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use riptide_client::Client;

/// The `riptide` binary this package builds.
pub fn riptide_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_riptide"))
}

/// `riptide node` processes, one per node, each with its own data directory and log file;
/// killed when dropped.
pub struct NodeProcesses {
    children: Vec<Child>,
    pub endpoints: Vec<String>,
    /// Each node's Kinesis API address (host:port), when the nodes serve it.
    pub kinesis: Vec<String>,
    dir: tempfile::TempDir,
}

impl NodeProcesses {
    /// Starts `n` nodes forming a new cluster on ports from the test port allocator. Node `i`
    /// (from 0) is in zone `zone-i` and in the region `region(i)` names (the default region
    /// when it names none); `env` is set for every node (for settings without a flag, e.g.
    /// RIPTIDE_LEADER_BALANCE_INTERVAL_MS).
    pub fn start(n: usize, region: impl Fn(usize) -> Option<String>, env: &[(&str, &str)]) -> Self {
        Self::spawn(n, region, env, false)
    }

    /// Starts `n` nodes forming a new cluster, as [`NodeProcesses::start`] with no regions,
    /// each also serving the Kinesis API on a port of its own ([`NodeProcesses::kinesis`]).
    pub fn start_with_kinesis(n: usize) -> Self {
        Self::spawn(n, |_| None, &[], true)
    }

    fn spawn(
        n: usize,
        region: impl Fn(usize) -> Option<String>,
        env: &[(&str, &str)],
        kinesis: bool,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ports: Vec<u16> = (0..n).map(|_| riptide_test_ports::free_port()).collect();
        let kinesis: Vec<String> = if kinesis {
            (0..n)
                .map(|_| format!("127.0.0.1:{}", riptide_test_ports::free_port()))
                .collect()
        } else {
            Vec::new()
        };
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{p}", i + 1))
            .collect();
        let mut children = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("node-{}.log", i + 1)))
                .expect("log file");
            let mut command = Command::new(riptide_bin());
            command.args(["node", "--node-id", &(i + 1).to_string()]);
            if let Some(region) = region(i) {
                command.args(["--region", &region]);
            }
            if let Some(addr) = kinesis.get(i) {
                command.args(["--kinesis-listen", addr]);
            }
            let child = command
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("node-{}", i + 1)))
                .args(["--zone", &format!("zone-{i}")])
                .args(["--initial-cluster", &initial.join(",")])
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start riptide node");
            children.push(child);
        }
        let endpoints = ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        Self {
            children,
            endpoints,
            kinesis,
            dir,
        }
    }

    /// Where the nodes' logs are, for a failing test to point at.
    pub fn log_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the controller has a leader and every node is registered and up.
    pub async fn wait_formed(&self) {
        let n = self.children.len();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            assert!(
                Instant::now() < deadline,
                "the cluster did not form; node logs in {}",
                self.dir.path().display()
            );
            if let Ok(client) = Client::connect(&self.endpoints[0]).await
                && let Ok(status) = client.cluster_status().await
                && status.controller_leader != 0
                && status.nodes.len() == n
                && status.nodes.iter().all(|node| node.up)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for NodeProcesses {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `command` to its end with its output captured, killing it after `secs` seconds.
pub fn run_with_deadline(mut command: Command, secs: u64) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start riptide");
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut buf).map(|_| buf)
    });
    let err = std::thread::spawn(move || {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut buf).map(|_| buf)
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for riptide") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} did not finish in {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader").expect("stdout"),
        stderr: err.join().expect("stderr reader").expect("stderr"),
    }
}

/// Runs the `riptide` binary with `args` against `endpoint` (RUST_LOG=error), on a blocking
/// thread, with a deadline of `secs` seconds; returns (success, stdout, stderr).
pub async fn riptide(endpoint: &str, args: &[&str], secs: u64) -> (bool, String, String) {
    let mut command = Command::new(riptide_bin());
    command
        .args(args)
        .args(["--endpoint", endpoint])
        .env("RUST_LOG", "error");
    let out = tokio::task::spawn_blocking(move || run_with_deadline(command, secs))
        .await
        .expect("riptide task");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
