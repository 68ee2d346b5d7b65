//! The `riptide` binary's cluster commands against six `riptide node` processes in three
//! regions: `stream create` waits for ACTIVE, `cluster drain` moves a whole region's leaders and
//! replicas away with progress and a summary, `cluster undrain` lets it take replicas again,
//! an unknown region is refused with the regions there are, and `shard transfer-leader` says
//! where the leadership went.

mod common;

use common::{NodeProcesses, riptide};
use riptide_client::Client;
use serde_json::Value;

/// Seconds any one command may take.
const COMMAND_SECS: u64 = 120;

/// `riptide stream create NAME --shards N --output json`; the description it prints.
async fn create_active(endpoint: &str, name: &str, shards: u32) -> Value {
    let (ok, stdout, stderr) = riptide(
        endpoint,
        &[
            "stream",
            "create",
            name,
            "--shards",
            &shards.to_string(),
            "--output",
            "json",
        ],
        COMMAND_SECS,
    )
    .await;
    assert!(ok, "stream create failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("is ACTIVE"), "no progress: {stderr}");
    let desc: Value = serde_json::from_str(&stdout).expect("json description");
    assert_eq!(desc["status"], "ACTIVE", "{desc}");
    desc
}

fn replicas(shard: &Value) -> Vec<u64> {
    shard["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| r.as_u64().expect("node id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drains_a_region_and_undrains_it() {
    // Six nodes, two per region: nodes 5 and 6 are region-2. The leader balancer runs every
    // second, so that drained nodes hand their leaderships over promptly.
    let nodes = NodeProcesses::start(
        6,
        |i| Some(format!("region-{}", i / 2)),
        &[("RIPTIDE_LEADER_BALANCE_INTERVAL_MS", "1000")],
    );
    nodes.wait_formed().await;
    let endpoint = nodes.endpoints[0].as_str();
    create_active(endpoint, "orders", 6).await;

    let (ok, stdout, stderr) = riptide(
        endpoint,
        &[
            "cluster",
            "drain",
            "--region",
            "region-2",
            "--timeout-secs",
            "90",
            "--output",
            "json",
        ],
        COMMAND_SECS,
    )
    .await;
    assert!(ok, "drain failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("draining node 5"), "no progress: {stderr}");
    assert!(stderr.contains("draining node 6"), "no progress: {stderr}");
    let summary: Value = serde_json::from_str(&stdout).expect("json summary");
    assert_eq!(summary["complete"], true, "{summary}");
    let drained = summary["nodes"].as_array().expect("nodes");
    assert_eq!(drained.len(), 2, "{summary}");
    for n in drained {
        assert_eq!(n["leaders"], 0, "{summary}");
        assert_eq!(n["replicas_placed"], 0, "{summary}");
        assert_eq!(n["copies_on_disk"], 0, "{summary}");
    }

    // The cluster agrees: no replica placed in region-2, every shard names its leader, and
    // writes go on.
    let client = Client::connect(endpoint).await.expect("connect");
    let desc = client.describe_stream("orders").await.expect("describe");
    for sh in &desc.shards {
        assert!(
            !sh.replicas.contains(&5) && !sh.replicas.contains(&6),
            "{sh:?}"
        );
        assert_eq!(sh.replicas.len(), 3, "{sh:?}");
        assert!(sh.replicas.contains(&sh.leader), "no leader named: {sh:?}");
    }
    client
        .put_record("orders", "k", &b"after the drain"[..])
        .await
        .expect("put after the drain");

    // Table output of the summary for people, for a drain that has nothing left to do.
    let (ok, stdout, stderr) = riptide(endpoint, &["cluster", "drain", "5"], COMMAND_SECS).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("LEADERS MOVED"), "{stdout}");
    assert!(stdout.contains("drained 1 node"), "{stdout}");

    // Undrain: the nodes may take replicas again; a new stream uses region-2.
    let (ok, stdout, stderr) = riptide(
        endpoint,
        &["cluster", "undrain", "--region", "region-2"],
        COMMAND_SECS,
    )
    .await;
    assert!(ok, "undrain failed:\n{stdout}\n{stderr}");
    let status = client.cluster_status().await.expect("status");
    assert!(status.nodes.iter().all(|n| !n.draining), "{status:?}");
    let fresh = create_active(endpoint, "after", 6).await;
    let shards = fresh["shards"].as_array().expect("shards");
    assert!(
        shards
            .iter()
            .all(|sh| replicas(sh).iter().any(|r| *r == 5 || *r == 6)),
        "region-2 takes no replicas: {fresh}"
    );

    // A region nobody is in is refused with the regions there are.
    let (ok, _, stderr) = riptide(
        endpoint,
        &["cluster", "drain", "--region", "region-7"],
        COMMAND_SECS,
    )
    .await;
    assert!(!ok);
    assert!(
        stderr.contains("region-7") && stderr.contains("region-0"),
        "{stderr}"
    );

    // transfer-leader reports where the leadership went and how long it took.
    let moved = create_active(endpoint, "moved", 1).await;
    let shard = &moved["shards"][0];
    let leader = shard["leader"].as_u64().expect("leader");
    let to = replicas(shard)
        .into_iter()
        .find(|r| *r != leader)
        .expect("another replica");
    let (ok, stdout, stderr) = riptide(
        endpoint,
        &[
            "shard",
            "transfer-leader",
            "moved",
            "0",
            "--to",
            &to.to_string(),
        ],
        COMMAND_SECS,
    )
    .await;
    assert!(ok, "transfer failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("moving the leadership"), "{stderr}");
    assert!(
        stdout.contains(&format!("is now led by node {to}")),
        "{stdout}"
    );
}
