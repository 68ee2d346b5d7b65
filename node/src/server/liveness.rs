//! Liveness and replica repair, run by the controller's leader.
//!
//! About once a second the controller's leader probes every registered node (a `ClusterStatus`
//! call with `local_only`, through the cached peer channels) and keeps, in memory, when each
//! last answered. A node that becomes leader starts every timer afresh, so it never acts on
//! silence it did not observe. After each probe round and each controller change, the leader
//! plans repairs ([`crate::controller::repair::plan`]): every replica on a node silent for
//! longer than `replica_repair_after_ms`, or draining, moves to another node, one
//! `ReplaceReplica` command each. Shard leaders then bring their groups' membership to the new
//! placement ([`super::membership`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use riptide_raft::Role;

use super::core::Core;
use crate::controller::repair::{self, NodeHealth};
use crate::controller::{ControllerCommand, NodeInfo};
use crate::error::ServiceError;

/// How often the controller's leader probes every node.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before it counts as unanswered.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// A node that has not answered for longer than this (or than `replica_repair_after_ms`, when
/// shorter) takes no new replicas.
pub const USABLE_WITHIN: Duration = Duration::from_secs(3);

/// A node that answered within this long may take new replicas.
fn fresh_within(repair_after: Duration) -> Duration {
    USABLE_WITHIN.min(repair_after)
}

/// When each node last answered, as the controller's leader saw it during its current term.
#[derive(Debug)]
pub struct Liveness {
    /// The controller term this node leads in; `None` while it does not lead.
    term: Option<u64>,
    /// When this node started leading in `term`.
    since: Instant,
    answered: HashMap<u64, Instant>,
    /// The shard groups each node said it leads, in its last answer.
    leading: HashMap<u64, Vec<u64>>,
}

impl Liveness {
    pub fn new(now: Instant) -> Self {
        Self {
            term: None,
            since: now,
            answered: HashMap::new(),
            leading: HashMap::new(),
        }
    }

    /// Notes that this node leads the controller in `term`; a new term starts every timer
    /// afresh.
    pub fn lead(&mut self, term: u64, now: Instant) {
        if self.term != Some(term) {
            self.term = Some(term);
            self.since = now;
            self.answered.clear();
            self.leading.clear();
        }
    }

    /// Notes that this node does not lead the controller: it forgets what it saw.
    pub fn follow(&mut self) {
        self.term = None;
        self.answered.clear();
        self.leading.clear();
    }

    pub fn leading(&self) -> bool {
        self.term.is_some()
    }

    pub fn answered(&mut self, node: u64, at: Instant) {
        self.answered.insert(node, at);
    }

    /// Notes the shard groups `node` leads, from its answer to a probe.
    pub fn leads(&mut self, node: u64, groups: Vec<u64>) {
        self.leading.insert(node, groups);
    }

    /// The leader of each shard group, as the nodes that answered within `fresh` said. A group
    /// two nodes claim (one of them has not noticed it lost the leadership) goes to the node
    /// that answered last.
    pub fn leaders(&self, now: Instant, fresh: Duration) -> HashMap<u64, u64> {
        let mut by_answer: Vec<(Instant, u64)> = self
            .answered
            .iter()
            .filter(|(_, at)| now.saturating_duration_since(**at) <= fresh)
            .map(|(id, at)| (*at, *id))
            .collect();
        by_answer.sort();
        let mut out = HashMap::new();
        for (_, node) in by_answer {
            for g in self.leading.get(&node).into_iter().flatten() {
                out.insert(*g, node);
            }
        }
        out
    }

    /// How long `node` has not answered, counted at the earliest from when this node started
    /// leading; `None` while it does not lead.
    pub fn silent_for(&self, node: u64, now: Instant) -> Option<Duration> {
        self.term?;
        let from = self.answered.get(&node).copied().unwrap_or(self.since);
        Some(now.saturating_duration_since(from))
    }

    /// Time since `node`'s last answer; `None` while this node does not lead or when the node
    /// has not answered since it started leading.
    pub fn since_last_answer(&self, node: u64, now: Instant) -> Option<Duration> {
        self.term?;
        self.answered
            .get(&node)
            .map(|at| now.saturating_duration_since(*at))
    }

    /// Whether this node has led long enough to tell a node that is down from one it has not
    /// heard from yet: every other node answered since it started leading, or it has led for
    /// longer than a node may stay silent and still take replicas. Until then repair waits,
    /// so that a drain right after an election does not skip the nodes not probed yet.
    pub fn settled(
        &self,
        nodes: &[NodeInfo],
        me: u64,
        now: Instant,
        repair_after: Duration,
    ) -> bool {
        self.term.is_some()
            && (now.saturating_duration_since(self.since) > fresh_within(repair_after)
                || nodes
                    .iter()
                    .all(|n| n.id == me || self.answered.contains_key(&n.id)))
    }

    /// What repair needs to know of each node. `me` (the leader) is always alive.
    pub fn health(
        &self,
        nodes: &[NodeInfo],
        me: u64,
        now: Instant,
        repair_after: Duration,
    ) -> Vec<NodeHealth> {
        let fresh = fresh_within(repair_after);
        nodes
            .iter()
            .map(|n| {
                let (answering, silent_too_long) = if n.id == me {
                    (true, false)
                } else {
                    (
                        self.since_last_answer(n.id, now)
                            .is_some_and(|d| d <= fresh),
                        self.silent_for(n.id, now).is_some_and(|d| d > repair_after),
                    )
                };
                NodeHealth {
                    info: n.clone(),
                    usable: answering && !n.draining,
                    evacuate: n.draining || silent_too_long,
                }
            })
            .collect()
    }
}

/// The liveness and repair loop; every node runs it, only the controller's leader acts.
pub(crate) async fn run(core: Arc<Core>) {
    let mut changed = core.controller_applied.clone();
    let mut stop = core.shutdown.clone();
    // Stuck replicas already reported, by (group, node), so that each is logged once.
    let mut reported: HashSet<(u64, u64)> = HashSet::new();
    let mut next_probe = Instant::now();
    loop {
        let term = core.controller().ok().and_then(|g| {
            let st = g.status();
            (st.role == Role::Leader).then_some(st.term)
        });
        match term {
            Some(term) => {
                core.liveness().lead(term, Instant::now());
                if Instant::now() >= next_probe {
                    next_probe = Instant::now() + PROBE_EVERY;
                    probe(&core).await;
                }
                if let Err(e) = repair_pass(&core, &mut reported).await {
                    core.background_failure("liveness", "replica repair pass", &e);
                }
            }
            None => {
                core.liveness().follow();
                reported.clear();
                next_probe = Instant::now();
            }
        }
        let wait = next_probe
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Probes every other registered node once, concurrently, and records who answered and can
/// serve.
async fn probe(core: &Core) {
    let Ok(nodes) = core.nodes() else {
        return;
    };
    let me = core.node_id();
    let probes = nodes
        .into_iter()
        .filter(|n| n.id != me)
        .map(|n| async move {
            let status = core.probe_node(n.id, &n.address, PROBE_TIMEOUT).await;
            (n.id, status, Instant::now())
        });
    let answers = futures::future::join_all(probes).await;
    let own = core.local_status().leading_groups;
    let mut liveness = core.liveness();
    liveness.answered(me, Instant::now());
    liveness.leads(me, own);
    for (id, status, at) in answers {
        // A node that answers that it cannot serve (its storage failed) counts as silent, so
        // that its replicas and leaderships move away as for a node that is down.
        if let Some(status) = status.filter(|s| s.up) {
            liveness.answered(id, at);
            liveness.leads(id, status.leading_groups);
        }
    }
}

/// Plans repairs from what this node (the controller's leader) knows and commits the moves.
async fn repair_pass(core: &Core, reported: &mut HashSet<(u64, u64)>) -> Result<(), ServiceError> {
    let nodes = core.nodes()?;
    let streams = core.streams()?;
    let repair_after = Duration::from_millis(core.config.replica_repair_after_ms);
    let health = {
        let liveness = core.liveness();
        let now = Instant::now();
        if !liveness.settled(&nodes, core.node_id(), now, repair_after) {
            return Ok(());
        }
        liveness.health(&nodes, core.node_id(), now, repair_after)
    };
    let plan = repair::plan(&health, &streams);
    let stuck: HashSet<(u64, u64)> = plan.stuck.iter().map(|s| (s.group, s.from)).collect();
    for s in &plan.stuck {
        if reported.insert((s.group, s.from)) {
            tracing::warn!(
                stream = %s.stream,
                shard = s.shard,
                group_id = s.group,
                node_id = s.from,
                "replica cannot move for now: {}",
                s.why
            );
        }
    }
    reported.retain(|k| stuck.contains(k));
    for m in plan.moves {
        tracing::info!(
            stream = %m.stream,
            shard = m.shard,
            group_id = m.group,
            from = m.from,
            to = m.to,
            "moving a replica"
        );
        let cmd = ControllerCommand::ReplaceReplica {
            stream: m.stream,
            created_ms: m.created_ms,
            shard: m.shard,
            from: m.from,
            to: m.to,
        };
        core.propose(&cmd).await?;
    }
    repair_controller(core, &health).await
}

/// How long one change of the controller's voters may take.
const VOTER_CHANGE_TIMEOUT: Duration = Duration::from_secs(10);

/// Replaces the controller's voters on nodes that are lost or draining by nodes that follow it
/// as learners, so that the metadata survives the next loss too.
async fn repair_controller(core: &Core, health: &[NodeHealth]) -> Result<(), ServiceError> {
    let controller = core.controller()?;
    let status = controller.status();
    if status.role != Role::Leader {
        return Ok(());
    }
    let ids = |s: &std::collections::BTreeSet<riptide_raft::NodeId>| {
        s.iter()
            .map(|n| n.0)
            .collect::<std::collections::BTreeSet<u64>>()
    };
    let voters = ids(&status.voters);
    let Some(new) = repair::controller_voters(health, &voters, &ids(&status.learners)) else {
        return Ok(());
    };
    tracing::info!(
        ?voters,
        ?new,
        "replacing the controller's lost or draining voters"
    );
    let set = new.iter().map(|id| riptide_raft::NodeId(*id)).collect();
    match tokio::time::timeout(VOTER_CHANGE_TIMEOUT, controller.set_voters(set)).await {
        Ok(r) => r.map_err(ServiceError::from),
        Err(_) => Err(ServiceError::unavailable(
            "changing the controller's voters timed out; retried on the next pass",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, draining: bool) -> NodeInfo {
        NodeInfo {
            id,
            address: format!("n{id}:1"),
            region: "r".into(),
            zone: "z".into(),
            draining,
        }
    }

    #[test]
    fn silence_counts_from_the_last_answer_or_from_the_start_of_leadership() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Liveness::new(t0);
        assert_eq!(l.silent_for(2, t0 + s(9)), None, "only a leader counts");
        l.lead(3, t0 + s(10));
        assert_eq!(l.silent_for(2, t0 + s(15)), Some(s(5)));
        assert_eq!(l.since_last_answer(2, t0 + s(15)), None);
        l.answered(2, t0 + s(14));
        assert_eq!(l.silent_for(2, t0 + s(15)), Some(s(1)));
        assert_eq!(l.since_last_answer(2, t0 + s(15)), Some(s(1)));
        // The same term keeps the timers; a new term starts them afresh.
        l.lead(3, t0 + s(20));
        assert_eq!(l.silent_for(2, t0 + s(20)), Some(s(6)));
        l.follow();
        assert_eq!(l.silent_for(2, t0 + s(30)), None);
        l.lead(5, t0 + s(30));
        assert_eq!(l.silent_for(2, t0 + s(31)), Some(s(1)));
    }

    #[test]
    fn silent_and_draining_nodes_are_evacuated_and_take_nothing() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut l = Liveness::new(t0);
        l.lead(1, t0);
        let nodes = [
            node(1, false),
            node(2, false),
            node(3, false),
            node(4, true),
        ];
        l.answered(2, t0 + s(9));
        l.answered(4, t0 + s(9));
        let h = l.health(&nodes, 1, t0 + s(10), s(5));
        let flags: Vec<(u64, bool, bool)> = h
            .iter()
            .map(|n| (n.info.id, n.usable, n.evacuate))
            .collect();
        assert_eq!(
            flags,
            [
                (1, true, false), // the leader itself
                (2, true, false), // answered a second ago
                (3, false, true), // never answered in 10 s, more than 5 s
                (4, false, true), // draining
            ]
        );
        // Silent for 4 s of 5: not evacuated yet, but takes nothing new.
        let h = l.health(&nodes, 1, t0 + s(13), s(5));
        assert_eq!((h[1].usable, h[1].evacuate), (false, false));
    }

    #[test]
    fn a_new_leader_waits_until_it_heard_from_everyone_or_long_enough() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let nodes = [node(1, false), node(2, false), node(3, false)];
        let mut l = Liveness::new(t0);
        assert!(!l.settled(&nodes, 1, t0, ms(300_000)), "not leading");
        l.lead(7, t0);
        l.answered(2, t0 + ms(100));
        assert!(!l.settled(&nodes, 1, t0 + ms(200), ms(300_000)));
        l.answered(3, t0 + ms(150));
        assert!(l.settled(&nodes, 1, t0 + ms(200), ms(300_000)));
        // Node 3 never answers: after 3 s it counts as down.
        l.lead(8, t0 + ms(1000));
        l.answered(2, t0 + ms(1100));
        assert!(!l.settled(&nodes, 1, t0 + ms(3900), ms(300_000)));
        assert!(l.settled(&nodes, 1, t0 + ms(4100), ms(300_000)));
        // A shorter repair delay shortens the wait.
        assert!(l.settled(&nodes, 1, t0 + ms(2100), ms(1000)));
    }
}
