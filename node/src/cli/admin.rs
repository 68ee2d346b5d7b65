//! `riptide cluster status|drain` and `riptide shard transfer-leader`.

use riptide_client::Client;
use serde_json::json;

use super::format::{cluster_json, cluster_text};
use super::{ClusterCommand, Printer, ShardCommand};

pub(super) async fn cluster(
    client: &Client,
    out: Printer,
    cmd: ClusterCommand,
) -> anyhow::Result<()> {
    match cmd {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            out.show(|| cluster_text(&status), || cluster_json(&status));
        }
        ClusterCommand::Drain { node } => {
            let r = client.drain_node(node).await?;
            out.show(
                || {
                    format!(
                        "node {node} is draining\n\
                         moved {} shard leaders off node {node}; {} remain on it\n\
                         placed {} shard replicas on other nodes (they copy their data in the background); {} remain on it\n",
                        r.leaders_moved, r.leaders_remaining, r.replicas_moved, r.replicas_remaining
                    )
                },
                || {
                    json!({
                        "node_id": node,
                        "leaders_moved": r.leaders_moved,
                        "leaders_remaining": r.leaders_remaining,
                        "replicas_moved": r.replicas_moved,
                        "replicas_remaining": r.replicas_remaining,
                    })
                },
            );
        }
    }
    Ok(())
}

pub(super) async fn shard(client: &Client, out: Printer, cmd: ShardCommand) -> anyhow::Result<()> {
    match cmd {
        ShardCommand::TransferLeader { stream, shard, to } => {
            client.transfer_shard_leader(&stream, shard, to).await?;
            out.show(
                || format!("{shard} of {stream} is now led by node {to}\n"),
                || json!({ "stream_name": stream, "shard_id": shard.to_string(), "leader": to }),
            );
        }
    }
    Ok(())
}
