//! Where shard leaders live: a stream's preferred leader region pulls its leaders there (and
//! back after a failover), and the leader balancer spreads leaders piled on one node. (The CLI's
//! drain, undrain and transfer-leader commands are tested with the `riptide` binary, in
//! cmd/riptide/tests/cluster_commands.rs.)

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{TestCluster, eventually, shard_groups};
use futures::StreamExt;
use riptide_node::config::NodeConfig;
use riptide_proto::ShardId;
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::{self};

const WAIT: Duration = Duration::from_secs(60);

fn balanced(c: &mut NodeConfig) {
    c.leader_balance_interval_ms = 1_000;
}

/// One node per region: node 1 in region-0, node 2 in region-1, node 3 in region-2.
fn region_per_node(c: &mut NodeConfig) {
    balanced(c);
    c.region = format!("region-{}", c.node_id - 1);
}

/// Leaders per node index, over `groups`; `None` while some group has no leader.
fn leaders(cluster: &TestCluster, groups: &[u64]) -> Option<BTreeMap<usize, usize>> {
    let mut out = BTreeMap::new();
    for g in groups {
        *out.entry(cluster.leader_of(*g)?).or_insert(0) += 1;
    }
    Some(out)
}

fn all_led_by(cluster: &TestCluster, groups: &[u64], index: usize) -> bool {
    groups.iter().all(|g| cluster.leader_of(*g) == Some(index))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_leaders_follow_the_preferred_region_and_return_after_a_failover() {
    let mut cluster = TestCluster::start(3, region_per_node).await;
    let mut api = cluster.api(0).await;
    api.create_stream(v1::CreateStreamRequest {
        stream_name: "pref".into(),
        shard_count: 4,
        preferred_leader_region: "region-1".into(),
        ..Default::default()
    })
    .await
    .expect("create");
    let desc = common::wait_active(&mut api, "pref").await;
    assert_eq!(desc.preferred_leader_region, "region-1");
    let groups = shard_groups(cluster.node(0).expect("up"), "pref");

    eventually(WAIT, "every leader in region-1 (node 2)", || async {
        all_led_by(&cluster, &groups, 1)
    })
    .await;

    // A new preference moves them.
    api.update_preferred_leader_region(v1::UpdatePreferredLeaderRegionRequest {
        stream_name: "pref".into(),
        preferred_leader_region: "region-2".into(),
    })
    .await
    .expect("update");
    eventually(WAIT, "every leader in region-2 (node 3)", || async {
        all_led_by(&cluster, &groups, 2)
    })
    .await;

    // The region fails: its shards elect leaders elsewhere; when it is back, they return.
    cluster.stop(2).await;
    eventually(WAIT, "leaders elected outside region-2", || async {
        groups
            .iter()
            .all(|g| matches!(cluster.leader_of(*g), Some(0 | 1)))
    })
    .await;
    cluster.restart(2).await;
    eventually(WAIT, "leaders back in region-2", || async {
        all_led_by(&cluster, &groups, 2)
    })
    .await;

    // Without a preference they spread: 4 shards over 3 nodes.
    api.update_preferred_leader_region(v1::UpdatePreferredLeaderRegionRequest {
        stream_name: "pref".into(),
        preferred_leader_region: String::new(),
    })
    .await
    .expect("clear");
    eventually(WAIT, "leaders spread over every node", || async {
        leaders(&cluster, &groups)
            .is_some_and(|l| l.len() == 3 && l.values().all(|n| (1..=2).contains(n)))
    })
    .await;

    // A region no node is in is refused, naming the field and the regions there are.
    let err = api
        .update_preferred_leader_region(v1::UpdatePreferredLeaderRegionRequest {
            stream_name: "pref".into(),
            preferred_leader_region: "region-9".into(),
        })
        .await
        .expect_err("unknown region");
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    for word in ["preferred_leader_region", "region-9", "region-0"] {
        assert!(err.message().contains(word), "{word} missing: {err:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaders_piled_on_one_node_are_spread_evenly() {
    // The balancer starts off, so that the pile is there to be seen before it acts.
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, "pile", 6).await;
    let groups = shard_groups(cluster.node(0).expect("up"), "pile");
    let mut admin = AdminServiceClient::connect(cluster.endpoint(0))
        .await
        .expect("connect");
    for i in 0..6 {
        admin
            .transfer_shard_leader(v1::TransferShardLeaderRequest {
                stream_name: "pile".into(),
                shard_id: ShardId(i).to_string(),
                to_node: 1,
            })
            .await
            .expect("transfer");
    }
    eventually(WAIT, "every leader on node 1", || async {
        all_led_by(&cluster, &groups, 0)
    })
    .await;
    // Without the balancer they stay there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        all_led_by(&cluster, &groups, 0),
        "leaders moved by themselves"
    );

    // Restart every node with the balancer on.
    cluster.stop_all().await;
    for c in &mut cluster.configs {
        balanced(c);
    }
    cluster.restart_all().await;
    for i in 0..6 {
        // After the restart the leaders were elected anew; pile them up again.
        let mut admin = AdminServiceClient::connect(cluster.endpoint(0))
            .await
            .expect("connect");
        let _ = admin
            .transfer_shard_leader(v1::TransferShardLeaderRequest {
                stream_name: "pile".into(),
                shard_id: ShardId(i).to_string(),
                to_node: 1,
            })
            .await;
    }
    eventually(WAIT, "two leaders on each node", || async {
        leaders(&cluster, &groups).is_some_and(|l| l.len() == 3 && l.values().all(|n| *n == 2))
    })
    .await;
    cluster.shutdown().await;
}

fn put(data: &'static [u8]) -> v1::PutRecordRequest {
    v1::PutRecordRequest {
        stream_name: "follow".into(),
        data: bytes::Bytes::from_static(data),
        partition_key: "k".into(),
        ..Default::default()
    }
}

async fn subscribe_raw(
    cluster: &TestCluster,
    node: usize,
) -> tonic::Response<tonic::Streaming<v1::SubscribeToShardEvent>> {
    cluster
        .api(node)
        .await
        .subscribe_to_shard(v1::SubscribeToShardRequest {
            stream_name: "follow".into(),
            shard_id: ShardId(0).to_string(),
            starting_position: v1::ShardIteratorType::TrimHorizon as i32,
            ..Default::default()
        })
        .await
        .expect("subscribe")
}

/// The data of an event's records, as text.
fn texts(event: &v1::SubscribeToShardEvent) -> Vec<String> {
    event
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect()
}

/// The data of the records of the next event of `events`; `None` once the stream has ended.
async fn next_data(
    events: &mut tonic::Streaming<v1::SubscribeToShardEvent>,
) -> Option<Vec<String>> {
    let event = tokio::time::timeout(WAIT, events.message())
        .await
        .expect("an event or the end in time")
        .expect("no error")?;
    Some(texts(&event))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_follows_its_shards_leader() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.create_active(0, "follow", 1).await;
    let group = shard_groups(cluster.node(0).expect("up"), "follow")[0];
    eventually(WAIT, "the shard has a leader", || async {
        cluster.leader_of(group).is_some()
    })
    .await;
    let leader = cluster.leader_of(group).expect("leader");
    let (other, third) = ((leader + 1) % 3, (leader + 2) % 3);

    // One subscription opened at the leader, one at another node (as a client that does not
    // route to leaders would). The second one's answer names the leader.
    let at_leader = subscribe_raw(&cluster, leader).await;
    assert!(at_leader.metadata().get("x-riptide-forwarded-to").is_none());
    let mut at_leader = at_leader.into_inner();
    let elsewhere = subscribe_raw(&cluster, other).await;
    assert!(
        elsewhere.metadata().get("x-riptide-forwarded-to").is_some(),
        "a subscription opened away from the leader names it"
    );
    let mut elsewhere = elsewhere.into_inner();
    // And one through the client crate, which routes to the leader.
    let client = riptide_client::Client::connect(&cluster.endpoint(other))
        .await
        .expect("client");
    let mut through_client = client
        .subscribe(
            "follow",
            ShardId(0),
            riptide_client::StartingPosition::TrimHorizon,
        )
        .await
        .expect("client subscribe");

    let mut api = cluster.api(leader).await;
    api.put_record(put(b"before")).await.expect("put");
    assert_eq!(next_data(&mut at_leader).await, Some(vec!["before".into()]));
    assert_eq!(next_data(&mut elsewhere).await, Some(vec!["before".into()]));

    // The leadership moves to the third node.
    let mut admin = AdminServiceClient::connect(cluster.endpoint(leader))
        .await
        .expect("connect");
    admin
        .transfer_shard_leader(v1::TransferShardLeaderRequest {
            stream_name: "follow".into(),
            shard_id: ShardId(0).to_string(),
            to_node: third as u64 + 1,
        })
        .await
        .expect("transfer");
    eventually(WAIT, "the third node leads", || async {
        cluster.leader_of(group) == Some(third)
    })
    .await;
    let mut api = cluster.api(third).await;
    api.put_record(put(b"after")).await.expect("put");

    // The subscription opened at the old leader delivers what it reads through the new one,
    // then ends, for its client to open it again at the new leader.
    let mut after_move = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, at_leader.message()).await {
            Ok(Ok(Some(event))) => after_move.extend(texts(&event)),
            Ok(Ok(None)) => break,
            // A read made while the leadership was moving may fail instead; the client opens
            // the subscription again after an error as after an end.
            Ok(Err(status)) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status}");
                break;
            }
            Err(_) => panic!("the subscription at the old leader did not end"),
        }
    }
    assert!(
        after_move.is_empty() || after_move == ["after"],
        "{after_move:?}"
    );
    // The one opened elsewhere goes on reading through its node.
    assert_eq!(next_data(&mut elsewhere).await, Some(vec!["after".into()]));
    api.put_record(put(b"later")).await.expect("put");
    assert_eq!(next_data(&mut elsewhere).await, Some(vec!["later".into()]));

    // The client's subscription delivers every record once, in order, across the move.
    let mut got = Vec::new();
    while got.len() < 3 {
        let event = tokio::time::timeout(WAIT, through_client.next())
            .await
            .expect("an event in time")
            .expect("the subscription goes on")
            .expect("no error");
        got.extend(texts(&event));
    }
    assert_eq!(got, ["before", "after", "later"]);
    cluster.shutdown().await;
}
