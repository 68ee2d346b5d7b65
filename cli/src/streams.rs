//! `riptide stream create|describe|list|delete`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use riptide_client::{Client, Created, ErrorCode, StreamOptions, v1};
use serde_json::json;

use super::format::{status_name, stream_json, stream_text, streams_text};
use super::{Printer, StreamCommand};

pub(super) async fn run(client: &Client, out: Printer, cmd: StreamCommand) -> anyhow::Result<()> {
    match cmd {
        StreamCommand::Create {
            name,
            shards,
            retention_hours,
            preferred_leader_region,
            no_wait,
            timeout_secs,
        } => {
            eprintln!("creating stream {name} with {shards} shards ...");
            let options = StreamOptions {
                retention_hours,
                preferred_leader_region,
            };
            let created = client
                .create_stream_when_ready(
                    &name,
                    shards,
                    options,
                    Duration::from_secs(timeout_secs),
                    |e| eprintln!("the cluster is not ready ({}); retrying ...", e.message),
                )
                .await?;
            let mut desc = match created {
                Created::Now(desc) => desc,
                Created::AfterRefusal => client.describe_stream(&name).await?,
            };
            if !no_wait {
                desc = wait_for_active(client, &name, Duration::from_secs(timeout_secs)).await?;
            }
            out.show(|| stream_text(&desc), || stream_json(&desc));
        }
        StreamCommand::Describe { name } => {
            let desc = client.describe_stream(&name).await?;
            out.show(|| stream_text(&desc), || stream_json(&desc));
        }
        StreamCommand::List => {
            let streams = client.list_streams().await?;
            out.show(
                || {
                    if streams.is_empty() {
                        "no streams\n".to_string()
                    } else {
                        streams_text(&streams)
                    }
                },
                || json!({ "streams": streams.iter().map(stream_json).collect::<Vec<_>>() }),
            );
        }
        StreamCommand::Update {
            name,
            retention_hours,
            preferred_leader_region,
            no_preferred_leader_region,
        } => {
            if let Some(hours) = retention_hours {
                client.update_retention(&name, hours).await?;
            }
            if preferred_leader_region.is_some() || no_preferred_leader_region {
                client
                    .update_preferred_leader_region(&name, preferred_leader_region.as_deref())
                    .await?;
            }
            let desc = client.describe_stream(&name).await?;
            out.show(|| stream_text(&desc), || stream_json(&desc));
        }
        StreamCommand::Delete { name } => {
            client.delete_stream(&name).await?;
            out.show(
                || format!("deleted stream {name}\n"),
                || json!({ "deleted": name }),
            );
        }
    }
    Ok(())
}

/// Polls the stream until it is ACTIVE, printing to stderr how many shards have a leader
/// whenever that changes.
async fn wait_for_active(
    client: &Client,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<v1::StreamDescription> {
    let started = Instant::now();
    let mut last_progress = None;
    loop {
        let desc = match client.describe_stream(name).await {
            Ok(desc) => desc,
            // Right after a create, the node that answers may not have applied it yet.
            Err(e) if e.code == ErrorCode::NotFound && started.elapsed() < timeout => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("waiting for stream {name} to become ACTIVE"));
            }
        };
        let led = desc.shards.iter().filter(|s| s.leader != 0).count();
        let progress = (status_name(&desc), led);
        if last_progress != Some(progress) {
            eprintln!(
                "  {}: {led} of {} shards have a leader",
                progress.0,
                desc.shards.len()
            );
            last_progress = Some(progress);
        }
        match desc.status() {
            v1::StreamStatus::Active => {
                // Also waits until every node's view has the stream ACTIVE.
                let rest = timeout.saturating_sub(started.elapsed());
                let desc = client.wait_for_active(name, rest).await?;
                eprintln!("stream {name} is ACTIVE after {:.1?}", started.elapsed());
                return Ok(desc);
            }
            v1::StreamStatus::Deleting => bail!("stream {name} is being deleted"),
            _ => {}
        }
        if started.elapsed() >= timeout {
            bail!(
                "stream {name} is still {} after {timeout:?}; `riptide stream describe {name}` \
                 shows its shards",
                status_name(&desc)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
