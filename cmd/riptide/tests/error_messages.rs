//! A failed `riptide` command ends with one line on standard error that names the problem and
//! its causes, and a non-zero exit code; never with a stack backtrace, also when RUST_BACKTRACE
//! asks for one (as it often does on developers' machines).

mod common;

use std::net::TcpListener;
use std::process::Command;

use common::{riptide_bin, run_with_deadline};

/// Runs `riptide args` with backtraces asked for and nothing else from the environment; returns
/// (exit code, stderr).
async fn fails(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(riptide_bin());
    command
        .args(args)
        .current_dir(dir.path())
        .env_clear()
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LIB_BACKTRACE", "1")
        .env("RUST_LOG", "error");
    let out = tokio::task::spawn_blocking(move || run_with_deadline(command, 60))
        .await
        .expect("riptide task");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "riptide {args:?} succeeded:\n{stderr}"
    );
    assert!(
        !stderr.to_lowercase().contains("backtrace") && !stderr.contains("panicked"),
        "riptide {args:?} printed a backtrace or panicked:\n{stderr}"
    );
    (out.status.code(), stderr)
}

/// The one line of `stderr`, which starts with `error: ` and mentions every word of `names`.
fn one_error_line(stderr: &str, names: &[&str]) {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "not one line:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for name in names {
        assert!(lines[0].contains(name), "no {name:?} in: {stderr}");
    }
}

#[tokio::test]
async fn a_node_without_an_id_says_so_in_one_line() {
    let (code, stderr) = fails(&["node"]).await;
    assert_eq!(code, Some(1));
    one_error_line(&stderr, &["configuration", "node_id"]);
}

#[tokio::test]
async fn a_node_whose_port_is_taken_says_so_in_one_line() {
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("address").to_string();
    let data = tempfile::tempdir().expect("temp dir");
    let data_dir = data.path().to_str().expect("utf-8 path");
    let (code, stderr) = fails(&[
        "node",
        "--node-id",
        "1",
        "--listen",
        &addr,
        "--data-dir",
        data_dir,
        "--initial-cluster",
        &format!("1={addr}"),
    ])
    .await;
    assert_eq!(code, Some(1));
    one_error_line(&stderr, &["starting the node", &addr]);
}

#[tokio::test]
async fn a_client_command_without_a_cluster_says_so_in_one_line() {
    // A port that nothing listens on: claimed for this process, never bound.
    let port = riptide_test_ports::free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let (code, stderr) = fails(&[
        "stream",
        "create",
        "orders",
        "--shards",
        "1",
        "--endpoint",
        &endpoint,
    ])
    .await;
    assert_eq!(code, Some(1));
    one_error_line(&stderr, &["cannot reach the cluster"]);
}

#[tokio::test]
async fn bench_settings_out_of_range_are_named_in_one_line() {
    let (code, stderr) = fails(&["bench", "--duration", "0s"]).await;
    assert_eq!(code, Some(1));
    one_error_line(&stderr, &["--duration"]);
}

#[tokio::test]
async fn a_usage_error_names_the_argument_without_a_backtrace() {
    // clap's own usage errors: the problem on the first line, then the usage; exit code 2.
    let (code, stderr) = fails(&["get", "orders", "--from", "yesterday"]).await;
    assert_eq!(code, Some(2));
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.starts_with("error: ") && first.contains("yesterday"),
        "{stderr}"
    );
}
