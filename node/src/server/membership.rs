//! Shard leaders bring their group's Raft membership to the controller's placement, one change
//! at a time: each placed node missing from the voters is added as a learner and waited for
//! until it has caught up (through the log or a snapshot), then one joint change makes the
//! placement the voter set (which drops the replaced node), then stray learners are removed. A
//! leader that is no longer placed first hands its leadership to a placed voter.
//!
//! The next change is a pure function ([`next_step`]); [`run`] scans the groups this node leads
//! and drives one task per group whose membership differs from its placement.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use riptide_raft::{Group, GroupId, NodeId, Role};
use tokio::task::JoinHandle;

use super::core::Core;

/// How long a leader waits for a new learner to catch up before it tries again later.
pub const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a leader waits for a leadership transfer to one voter.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// The next membership change of a group toward its placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Voters and learners match the placement.
    Done,
    /// This leader is not placed: hand the leadership to one of these placed voters.
    TransferLeader(Vec<NodeId>),
    /// Add this placed node as a learner (or, when it is one, wait until it has caught up).
    AddLearner(NodeId),
    /// Make these the voters, in one joint change.
    SetVoters(BTreeSet<NodeId>),
    /// Remove learners that are not placed.
    RemoveLearners(BTreeSet<NodeId>),
}

/// The next change for a group led by `me` with `voters` and `learners` toward `placement`.
/// `caught_up` holds the learners known to have caught up; `may_transfer` is false once a
/// transfer to every placed voter failed, so that the leader goes on without one.
pub fn next_step(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    placement: &BTreeSet<NodeId>,
    caught_up: &BTreeSet<NodeId>,
    may_transfer: bool,
) -> Step {
    if placement.is_empty() {
        return Step::Done;
    }
    if may_transfer && !placement.contains(&me) {
        let to: Vec<NodeId> = voters
            .iter()
            .filter(|v| **v != me && placement.contains(v))
            .copied()
            .collect();
        if !to.is_empty() {
            return Step::TransferLeader(to);
        }
    }
    if let Some(n) = placement
        .iter()
        .find(|n| !voters.contains(n) && !caught_up.contains(n))
    {
        return Step::AddLearner(*n);
    }
    if voters != placement {
        return Step::SetVoters(placement.clone());
    }
    let stray: BTreeSet<NodeId> = learners.difference(placement).copied().collect();
    if !stray.is_empty() {
        return Step::RemoveLearners(stray);
    }
    Step::Done
}

/// Scans the groups this node leads every 500 ms and on every controller change, and starts a
/// convergence task for each group whose membership differs from its placement.
pub(crate) async fn run(core: Arc<Core>) {
    let mut changed = core.controller_applied.clone();
    let mut stop = core.shutdown.clone();
    let mut running: HashMap<GroupId, JoinHandle<()>> = HashMap::new();
    loop {
        running.retain(|_, task| !task.is_finished());
        if let Err(e) = scan(&core, &mut running) {
            core.background_failure("membership", "membership scan", &e);
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    // The tasks hold the core: end them so that the node's storage can close.
    for (_, task) in running.drain() {
        task.abort();
        let _ = task.await;
    }
}

fn scan(
    core: &Arc<Core>,
    running: &mut HashMap<GroupId, JoinHandle<()>>,
) -> Result<(), crate::error::ServiceError> {
    let me = NodeId(core.node_id());
    for s in core.streams()? {
        for sh in &s.shards {
            // A shard that is not ready still has the membership it was formed with.
            let gid = GroupId(sh.group);
            if !sh.ready || running.contains_key(&gid) {
                continue;
            }
            let Ok(group) = core.engine.group(gid) else {
                continue;
            };
            let status = group.status();
            if status.role != Role::Leader {
                continue;
            }
            let placement: BTreeSet<NodeId> = sh.replicas.iter().copied().map(NodeId).collect();
            let step = next_step(
                me,
                &status.voters,
                &status.learners,
                &placement,
                &BTreeSet::new(),
                true,
            );
            if step == Step::Done {
                continue;
            }
            let task = tokio::spawn(converge(core.clone(), group, s.name.clone(), sh.index));
            running.insert(gid, task);
        }
    }
    Ok(())
}

/// Changes the group's membership step by step until it matches the placement, this node
/// stops leading it, or a step fails (the next scan tries again).
#[tracing::instrument(skip_all, fields(stream = %stream, shard = shard, group_id = %group.id()))]
async fn converge(core: Arc<Core>, group: Group, stream: String, shard: u32) {
    let me = NodeId(core.node_id());
    let gid = group.id();
    let mut caught_up: BTreeSet<NodeId> = BTreeSet::new();
    let mut may_transfer = true;
    loop {
        // Read the placement again at every step: it may have changed meanwhile.
        let Ok(info) = core.stream(&stream) else {
            return;
        };
        let Some(sh) = info
            .shards
            .get(shard as usize)
            .filter(|sh| sh.group == gid.0)
        else {
            return;
        };
        let placement: BTreeSet<NodeId> = sh.replicas.iter().copied().map(NodeId).collect();
        let status = group.status();
        if status.role != Role::Leader {
            return;
        }
        let step = next_step(
            me,
            &status.voters,
            &status.learners,
            &placement,
            &caught_up,
            may_transfer,
        );
        match step {
            Step::Done => return,
            Step::TransferLeader(to) => {
                for n in &to {
                    match group.transfer_leader(*n, TRANSFER_TIMEOUT).await {
                        Ok(()) => {
                            tracing::info!(to = %n, "handed the leadership of an unplaced replica to a placed one");
                            return;
                        }
                        Err(e) => {
                            let _span = tracing::info_span!("transfer", to = %n).entered();
                            core.background_failure(
                                "membership",
                                "leadership transfer to a placed replica",
                                &e.into(),
                            );
                        }
                    }
                }
                may_transfer = false;
            }
            Step::AddLearner(n) => {
                let addr = match core.nodes() {
                    Ok(nodes) => nodes.into_iter().find(|x| x.id == n.0).map(|x| x.address),
                    Err(_) => None,
                };
                let Some(addr) = addr else {
                    tracing::debug!(node_id = %n, "placed node has no known address yet");
                    return;
                };
                match tokio::time::timeout(CATCH_UP_TIMEOUT, group.add_learner(n, addr)).await {
                    Ok(Ok(())) => {
                        tracing::info!(node_id = %n, "new replica caught up");
                        caught_up.insert(n);
                    }
                    Ok(Err(e)) => {
                        let _span = tracing::info_span!("learner", node_id = %n).entered();
                        core.background_failure("membership", "adding a learner", &e.into());
                        return;
                    }
                    Err(_) => {
                        tracing::info!(node_id = %n, "new replica still catching up after {CATCH_UP_TIMEOUT:?}");
                        return;
                    }
                }
            }
            Step::SetVoters(voters) => match group.set_voters(voters.clone()).await {
                Ok(()) => {
                    let ids: Vec<u64> = voters.iter().map(|v| v.0).collect();
                    tracing::info!(voters = ?ids, "group voters now match the placement");
                }
                Err(e) => {
                    core.background_failure("membership", "changing voters", &e.into());
                    return;
                }
            },
            Step::RemoveLearners(stray) => {
                if let Err(e) = group.remove(stray).await {
                    core.background_failure("membership", "removing stray learners", &e.into());
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<NodeId> {
        v.iter().copied().map(NodeId).collect()
    }

    /// Plays the steps against a simulated group until done; returns them.
    fn walk(me: u64, voters: &[u64], learners: &[u64], placement: &[u64]) -> Vec<Step> {
        let (mut v, mut l, p) = (ids(voters), ids(learners), ids(placement));
        let mut caught_up = BTreeSet::new();
        let mut steps = Vec::new();
        loop {
            let step = next_step(NodeId(me), &v, &l, &p, &caught_up, true);
            steps.push(step.clone());
            match step {
                Step::Done | Step::TransferLeader(_) => return steps,
                Step::AddLearner(n) => {
                    l.insert(n);
                    caught_up.insert(n);
                }
                Step::SetVoters(new) => {
                    if !new.contains(&NodeId(me)) {
                        // The leader left the group: it steps down.
                        return steps;
                    }
                    l.retain(|n| !new.contains(n));
                    v = new;
                }
                Step::RemoveLearners(s) => l.retain(|n| !s.contains(n)),
            }
            assert!(steps.len() < 10, "no convergence: {steps:?}");
        }
    }

    #[test]
    fn a_replaced_voter_is_swapped_after_its_replacement_caught_up() {
        assert_eq!(
            walk(1, &[1, 2, 3], &[], &[1, 2, 4]),
            [
                Step::AddLearner(NodeId(4)),
                Step::SetVoters(ids(&[1, 2, 4])),
                Step::Done
            ]
        );
        // Two replaced voters: both learners first, then one joint change.
        assert_eq!(
            walk(1, &[1, 2, 3], &[], &[1, 5, 4]),
            [
                Step::AddLearner(NodeId(4)),
                Step::AddLearner(NodeId(5)),
                Step::SetVoters(ids(&[1, 4, 5])),
                Step::Done
            ]
        );
    }

    #[test]
    fn an_existing_learner_is_waited_for_and_strays_are_removed() {
        // 4 is a learner already (an earlier task timed out): wait for it again, then promote.
        assert_eq!(
            walk(1, &[1, 2, 3], &[4, 6], &[1, 2, 4]),
            [
                Step::AddLearner(NodeId(4)),
                Step::SetVoters(ids(&[1, 2, 4])),
                Step::RemoveLearners(ids(&[6])),
                Step::Done
            ]
        );
        assert_eq!(walk(1, &[1, 2, 3], &[], &[3, 2, 1]), [Step::Done]);
    }

    #[test]
    fn an_unplaced_leader_hands_over_first_and_goes_on_alone_when_it_cannot() {
        assert_eq!(
            walk(3, &[1, 2, 3], &[], &[1, 2, 4]),
            [Step::TransferLeader(vec![NodeId(1), NodeId(2)])]
        );
        let step = next_step(
            NodeId(3),
            &ids(&[1, 2, 3]),
            &BTreeSet::new(),
            &ids(&[1, 2, 4]),
            &BTreeSet::new(),
            false,
        );
        assert_eq!(step, Step::AddLearner(NodeId(4)));
        // No placed voter to hand over to: the leader changes the membership itself.
        assert_eq!(
            walk(3, &[3, 5, 6], &[], &[1, 2, 4]),
            [
                Step::AddLearner(NodeId(1)),
                Step::AddLearner(NodeId(2)),
                Step::AddLearner(NodeId(4)),
                Step::SetVoters(ids(&[1, 2, 4])),
            ]
        );
    }
}
