//! The command line: `validate` names every mistake with its key, `status` says when no
//! daemon runs.

use std::process::Command;

fn firehose(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_riptide-firehose"))
        .args(args)
        .output()
        .expect("run riptide-firehose");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn validate_names_every_mistake_with_its_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[delivery]]
name = "to-disk"
stream = "orders"
start = "oldest"
buffer = { size_mib = 500 }
destination = { kind = "directory", path = "out", prefix = "{stream}/{hour}/" }
"#,
    )
    .expect("write");
    let (ok, text) = firehose(&["validate", bad.to_str().expect("utf-8 path")]);
    assert!(!ok, "a bad configuration must fail: {text}");
    for key in [
        "delivery[0].start:",
        "delivery[0].buffer.size_mib:",
        "delivery[0].destination.prefix:",
    ] {
        assert!(text.contains(key), "no {key} in {text}");
    }

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        r#"
[[delivery]]
name = "to-disk"
stream = "orders"
destination = { kind = "directory", path = "out" }
"#,
    )
    .expect("write");
    let (ok, text) = firehose(&["validate", good.to_str().expect("utf-8 path")]);
    assert!(ok, "{text}");
    assert!(text.contains("to-disk"), "{text}");
}

#[test]
fn status_without_a_running_daemon_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("f.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{}/state"
[[delivery]]
name = "to-disk"
stream = "orders"
destination = {{ kind = "directory", path = "out" }}
"#,
            dir.path().display()
        ),
    )
    .expect("write");
    let (ok, text) = firehose(&["status", config.to_str().expect("utf-8 path")]);
    assert!(!ok);
    assert!(text.contains("is the daemon running?"), "{text}");
}
