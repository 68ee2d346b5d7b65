//! `riptide cluster status|drain|undrain` and `riptide shard transfer-leader`.
//!
//! Long operations print their progress to standard error (so that `--output json` keeps
//! standard output for the final document) and end with a summary.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use riptide_client::{Client, ShardId, v1};
use serde_json::json;

use super::format::{Table, cluster_json, cluster_text};
use super::{ClusterCommand, Printer, ShardCommand};

/// How often drain progress is polled.
const POLL_EVERY: Duration = Duration::from_millis(500);

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
        ClusterCommand::Drain {
            node,
            region,
            no_wait,
            timeout_secs,
        } => {
            let status = client.cluster_status().await?;
            let targets = targets(&status, node, region.as_deref())?;
            if targets.len() == status.nodes.len() {
                bail!(
                    "draining {} would drain every node of the cluster; nothing could take their replicas",
                    what(node, region.as_deref())
                );
            }
            drain(
                client,
                out,
                &targets,
                no_wait,
                Duration::from_secs(timeout_secs),
            )
            .await?;
        }
        ClusterCommand::Undrain { node, region } => {
            let status = client.cluster_status().await?;
            let targets = targets(&status, node, region.as_deref())?;
            for id in &targets {
                client
                    .undrain_node(*id)
                    .await
                    .with_context(|| format!("undraining node {id}"))?;
            }
            out.show(
                || {
                    targets
                        .iter()
                        .map(|id| {
                            format!(
                                "node {id} may take replicas and leaders again (the leader balancer gives it its share of leaders within seconds)\n"
                            )
                        })
                        .collect()
                },
                || json!({ "undrained": targets }),
            );
        }
    }
    Ok(())
}

/// The nodes a drain or undrain names: one node, or every node of a region.
fn targets(
    status: &v1::ClusterStatusResponse,
    node: Option<u64>,
    region: Option<&str>,
) -> anyhow::Result<Vec<u64>> {
    match (node, region) {
        (Some(id), _) => {
            if !status.nodes.iter().any(|n| n.node_id == id) {
                bail!(
                    "node: node {id} is not a member of the cluster (members: {})",
                    status
                        .nodes
                        .iter()
                        .map(|n| n.node_id.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(vec![id])
        }
        (None, Some(region)) => {
            let ids: Vec<u64> = status
                .nodes
                .iter()
                .filter(|n| n.region == region)
                .map(|n| n.node_id)
                .collect();
            if ids.is_empty() {
                let mut regions: Vec<&str> =
                    status.nodes.iter().map(|n| n.region.as_str()).collect();
                regions.sort_unstable();
                regions.dedup();
                bail!(
                    "region: no node of the cluster is in region {region:?} (regions: {})",
                    regions.join(", ")
                );
            }
            Ok(ids)
        }
        (None, None) => bail!("give a node id or --region"),
    }
}

fn what(node: Option<u64>, region: Option<&str>) -> String {
    match (node, region) {
        (Some(id), _) => format!("node {id}"),
        (None, Some(r)) => format!("region {r}"),
        (None, None) => "nothing".into(),
    }
}

/// What a drained node still holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Holding {
    up: bool,
    /// Shard leaderships (known only while the node is up).
    leaders: u32,
    /// Shard replicas the controller places on the node.
    placed: u32,
    /// Of those, replicas that no other usable node could take now.
    stuck: u32,
    /// Shard copies on the node's disk (known only while it is up).
    copies: u32,
}

impl Holding {
    fn done(&self) -> bool {
        self.placed == 0 && (!self.up || (self.leaders == 0 && self.copies == 0))
    }

    fn line(&self, id: u64) -> String {
        if self.up {
            format!(
                "node {id}: {} leaders, {} replicas placed, {} copies on disk",
                self.leaders, self.placed, self.copies
            )
        } else {
            format!("node {id} (down): {} replicas placed", self.placed)
        }
    }
}

/// What each of `targets` holds, from the cluster status and the streams' placements.
async fn holdings(client: &Client, targets: &[u64]) -> anyhow::Result<BTreeMap<u64, Holding>> {
    let status = client.cluster_status().await?;
    let streams = client.list_streams().await?;
    let takers: Vec<u64> = status
        .nodes
        .iter()
        .filter(|n| n.up && !n.draining && !targets.contains(&n.node_id))
        .map(|n| n.node_id)
        .collect();
    let mut out = BTreeMap::new();
    for id in targets {
        let mut h = Holding::default();
        if let Some(n) = status.nodes.iter().find(|n| n.node_id == *id) {
            h.up = n.up;
            h.leaders = n.shard_leaders;
            h.copies = n.shard_replicas;
        }
        for shard in streams.iter().flat_map(|s| &s.shards) {
            if shard.replicas.contains(id) {
                h.placed += 1;
                if takers.iter().all(|t| shard.replicas.contains(t)) {
                    h.stuck += 1;
                }
            }
        }
        out.insert(*id, h);
    }
    Ok(out)
}

async fn drain(
    client: &Client,
    out: Printer,
    targets: &[u64],
    no_wait: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let before = holdings(client, targets).await?;
    let mut moved = BTreeMap::new();
    for id in targets {
        eprintln!("draining node {id}: moving its leaderships and marking it draining ...");
        let r = client
            .drain_node(*id)
            .await
            .with_context(|| format!("draining node {id}"))?;
        eprintln!(
            "  node {id}: {} leaderships moved ({} left), {} replicas placed on other nodes so far",
            r.leaders_moved, r.leaders_remaining, r.replicas_moved
        );
        moved.insert(*id, r.leaders_moved);
    }
    let mut now = holdings(client, targets).await?;
    let mut complete = now.values().all(Holding::done);
    let mut stuck = false;
    if !no_wait && !complete {
        eprintln!("waiting for the replicas to move (their data is copied to the new nodes) ...");
        let deadline = started + timeout;
        let mut last = String::new();
        loop {
            let line = now
                .iter()
                .filter(|(_, h)| !h.done())
                .map(|(id, h)| h.line(*id))
                .collect::<Vec<_>>()
                .join("; ");
            if line != last {
                eprintln!("  [{:>5.1}s] {line}", started.elapsed().as_secs_f64());
                last = line;
            }
            // Replicas no other node can take stay until a node joins or comes back.
            if now
                .values()
                .all(|h| (h.stuck > 0 && h.placed == h.stuck) || h.done())
            {
                stuck = true;
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(POLL_EVERY).await;
            now = holdings(client, targets).await?;
            complete = now.values().all(Holding::done);
            if complete {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    let rows: Vec<serde_json::Value> = targets
        .iter()
        .map(|id| {
            let b = before.get(id).copied().unwrap_or_default();
            let n = now.get(id).copied().unwrap_or_default();
            json!({
                "node_id": id,
                "up": n.up,
                "leaders_moved": moved.get(id).copied().unwrap_or(0),
                "replicas_moved": b.placed.saturating_sub(n.placed),
                "leaders": n.leaders,
                "replicas_placed": n.placed,
                "replicas_stuck": n.stuck,
                "copies_on_disk": n.copies,
            })
        })
        .collect();
    out.show(
        || {
            let mut t = Table::new(&[
                "NODE",
                "LEADERS MOVED",
                "REPLICAS MOVED",
                "LEADERS LEFT",
                "REPLICAS LEFT",
                "COPIES LEFT",
            ]);
            for id in targets {
                let b = before.get(id).copied().unwrap_or_default();
                let n = now.get(id).copied().unwrap_or_default();
                t.row(vec![
                    id.to_string(),
                    moved.get(id).copied().unwrap_or(0).to_string(),
                    b.placed.saturating_sub(n.placed).to_string(),
                    if n.up { n.leaders.to_string() } else { "-".into() },
                    n.placed.to_string(),
                    if n.up { n.copies.to_string() } else { "-".into() },
                ]);
            }
            let mut text = t.render();
            let nodes = if targets.len() == 1 { "node" } else { "nodes" };
            text.push_str(&if complete {
                format!(
                    "\ndrained {} {nodes} in {:.1}s: no leader and no replica left on them\n",
                    targets.len(),
                    elapsed.as_secs_f64()
                )
            } else if stuck {
                format!(
                    "\nafter {:.1}s the remaining replicas cannot move: every other usable node already holds a replica of their shards. Add a node (or undrain one) and the controller moves them.\n",
                    elapsed.as_secs_f64()
                )
            } else if no_wait {
                "\nmarked draining; the controller moves the replicas in the background (`riptide cluster status` shows them)\n".to_string()
            } else {
                format!(
                    "\nnot drained after {:.1}s (--timeout-secs); the controller keeps moving the replicas, `riptide cluster status` shows them\n",
                    elapsed.as_secs_f64()
                )
            });
            text
        },
        || {
            json!({
                "nodes": rows,
                "complete": complete,
                "elapsed_ms": elapsed.as_millis() as u64,
            })
        },
    );
    if !complete && !no_wait {
        bail!("the drain did not complete");
    }
    Ok(())
}

pub(super) async fn shard(client: &Client, out: Printer, cmd: ShardCommand) -> anyhow::Result<()> {
    match cmd {
        ShardCommand::TransferLeader {
            stream,
            shard,
            to,
            timeout_secs,
        } => {
            let from = leader_of(client, &stream, shard).await?;
            if from == Some(to) {
                out.show(
                    || format!("{shard} of {stream} is already led by node {to}\n"),
                    || json!({ "stream_name": stream, "shard_id": shard.to_string(), "leader": to, "from": to, "elapsed_ms": 0 }),
                );
                return Ok(());
            }
            let from_text = from.map_or("its current leader".to_string(), |f| format!("node {f}"));
            eprintln!(
                "moving the leadership of {shard} of {stream} from {from_text} to node {to} ..."
            );
            let started = Instant::now();
            client.transfer_shard_leader(&stream, shard, to).await?;
            // The shard's leader answered once node `to` led. Wait until the node this client
            // asks no longer names the old leader, so that the next command finds the new one.
            let deadline = started + Duration::from_secs(timeout_secs);
            loop {
                match leader_of(client, &stream, shard).await? {
                    Some(l) if Some(l) == from && Instant::now() >= deadline => bail!(
                        "node {to} took the leadership of {shard} of {stream}, but the cluster still names node {l} after {timeout_secs}s"
                    ),
                    Some(l) if Some(l) == from => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    _ => break,
                }
            }
            let elapsed = started.elapsed();
            out.show(
                || {
                    format!(
                        "{shard} of {stream} is now led by node {to} (was {from_text}; took {} ms)\n",
                        elapsed.as_millis()
                    )
                },
                || {
                    json!({
                        "stream_name": stream,
                        "shard_id": shard.to_string(),
                        "leader": to,
                        "from": from,
                        "elapsed_ms": elapsed.as_millis() as u64,
                    })
                },
            );
        }
    }
    Ok(())
}

/// The node leading `shard`, as the answering node knows it; `None` when it does not know.
async fn leader_of(client: &Client, stream: &str, shard: ShardId) -> anyhow::Result<Option<u64>> {
    let desc = client.describe_stream(stream).await?;
    let id = shard.to_string();
    let s = desc
        .shards
        .iter()
        .find(|s| s.shard_id == id)
        .with_context(|| {
            format!(
                "shard: stream {stream} has no shard {id} (it has {})",
                desc.shards.len()
            )
        })?;
    Ok((s.leader != 0).then_some(s.leader))
}
