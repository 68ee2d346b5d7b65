//! The leader balancer, run by the controller's leader every `leader_balance_interval_ms`.
//!
//! It learns who leads each shard from the liveness probes ([`super::liveness`]), plans moves
//! with [`crate::controller::balance::plan`] (to each stream's preferred leader region, off
//! draining nodes, then evenly), and asks each shard's leader to hand over. A shard it moved
//! is left alone for a few intervals, so that a move the probes have not seen yet is not planned
//! again, and a move that failed (the target was still catching up, say) is retried later.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use riptide_proto::{ShardId, v1};
use riptide_raft::Role;

use super::core::Core;
use crate::controller::balance::{self, LeaderMove};
use crate::error::ServiceError;

/// Most leaderships one pass moves, so that a pass never becomes a transfer storm.
const MAX_MOVES_PER_PASS: usize = 16;
/// How long one handover may take before it counts as failed.
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// Leaders are learnt from probe answers no older than this.
const LEADERS_FRESH_WITHIN: Duration = Duration::from_secs(3);

/// The balancing loop; every node runs it, only the controller's leader acts.
pub(crate) async fn run(core: Arc<Core>) {
    let interval = Duration::from_millis(core.config.leader_balance_interval_ms);
    if interval.is_zero() {
        return;
    }
    let mut stop = core.shutdown.clone();
    // Groups moved recently, with when.
    let mut recent: HashMap<u64, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leading = core
            .controller()
            .is_ok_and(|g| g.status().role == Role::Leader);
        if !leading {
            recent.clear();
            continue;
        }
        let cooldown = interval * 3;
        recent.retain(|_, at| at.elapsed() < cooldown);
        let moves = match plan(&core, &recent) {
            Ok(m) => m,
            Err(e) => {
                core.background_failure("balancer", "leader balance pass", &e);
                continue;
            }
        };
        if moves.is_empty() {
            continue;
        }
        let now = Instant::now();
        for m in &moves {
            recent.insert(m.group, now);
        }
        let handovers = moves.into_iter().map(|m| {
            let core = &core;
            async move {
                let req = v1::TransferShardLeaderRequest {
                    stream_name: m.stream.clone(),
                    shard_id: ShardId(m.shard).to_string(),
                    to_node: m.to,
                };
                let outcome =
                    tokio::time::timeout(HANDOVER_TIMEOUT, core.transfer_shard_leader(req))
                        .await
                        .unwrap_or_else(|_| {
                            Err(ServiceError::unavailable(format!(
                                "the handover did not finish within {HANDOVER_TIMEOUT:?}"
                            )))
                        });
                report(core, &m, outcome);
            }
        });
        tokio::select! {
            _ = futures::future::join_all(handovers) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Plans one pass from what this node (the controller's leader) knows; nothing while it has
/// not heard from every node yet.
fn plan(
    core: &Core,
    recent: &HashMap<u64, Instant>,
) -> Result<Vec<LeaderMove>, crate::error::ServiceError> {
    let nodes = core.nodes()?;
    let streams = core.streams()?;
    let repair_after = Duration::from_millis(core.config.replica_repair_after_ms);
    let liveness = core.liveness();
    let now = Instant::now();
    if !liveness.settled(&nodes, core.node_id(), now, repair_after) {
        return Ok(Vec::new());
    }
    let mut health = liveness.health(&nodes, core.node_id(), now, repair_after);
    let leaders = liveness.leaders(now, LEADERS_FRESH_WITHIN);
    drop(liveness);
    // A node whose process this node found gone answered a probe less than a few seconds
    // ago, but a leadership handed to it would stall the shard until the handover failed.
    let gone = core.engine.peers_gone();
    for h in &mut health {
        if gone.contains(&riptide_raft::NodeId(h.info.id)) {
            h.usable = false;
        }
    }
    let skip = |g: u64| recent.contains_key(&g);
    Ok(balance::plan(
        &health,
        &streams,
        &leaders,
        &skip,
        MAX_MOVES_PER_PASS,
    ))
}

/// Logs a handover's outcome; a failed one is retried by a later pass.
fn report(core: &Core, m: &LeaderMove, outcome: Result<(), ServiceError>) {
    let _span = tracing::info_span!(
        "leadership_move",
        stream = %m.stream,
        shard = m.shard,
        from = m.from,
        to = m.to
    )
    .entered();
    match outcome {
        Ok(()) => tracing::info!("moved a shard leadership: {}", m.why.as_str()),
        Err(e) => core.background_failure("balancer", "leadership move (retried later)", &e),
    }
}
