//! Replica repair decisions. Pure functions, no I/O: the controller's leader feeds them what it
//! knows of each node and commits the moves they return as
//! [`super::ControllerCommand::ReplaceReplica`]; the controller's state machine checks each
//! move again when it applies it ([`replace_replica`]), so a stale move changes nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::placement::{self, Candidate};
use super::{NodeInfo, StreamInfo};

/// A registered node as repair sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeHealth {
    pub info: NodeInfo,
    /// May take a new replica: it answered the liveness probe recently and is not draining.
    pub usable: bool,
    /// Its replicas are to move elsewhere: it has not answered for longer than
    /// `replica_repair_after_ms`, or it is draining.
    pub evacuate: bool,
}

/// One replica to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub stream: String,
    pub created_ms: u64,
    pub shard: u32,
    pub group: u64,
    pub from: u64,
    pub to: u64,
}

/// A replica that should move but cannot now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub stream: String,
    pub shard: u32,
    pub group: u64,
    pub from: u64,
    pub why: &'static str,
}

/// What one repair pass should do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub stuck: Vec<Stuck>,
}

/// Moves every replica held by a node to evacuate (or by a node no longer registered) to a
/// usable node that holds no replica of the shard, chosen by [`placement::replacement`]. Each
/// move counts toward the load of later choices, so that one pass spreads its moves.
pub fn plan(nodes: &[NodeHealth], streams: &[StreamInfo]) -> Plan {
    let by_id: HashMap<u64, &NodeHealth> = nodes.iter().map(|n| (n.info.id, n)).collect();
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (n.info.id, 0)).collect();
    for s in streams {
        for sh in &s.shards {
            for r in &sh.replicas {
                *load.entry(*r).or_default() += 1;
            }
        }
    }
    let leaves = |id: u64| by_id.get(&id).is_none_or(|n| n.evacuate);
    let candidate = |id: u64, load: &BTreeMap<u64, usize>| {
        by_id.get(&id).map(|n| Candidate {
            id,
            region: n.info.region.clone(),
            zone: n.info.zone.clone(),
            load: load.get(&id).copied().unwrap_or(0),
        })
    };
    let mut streams: Vec<&StreamInfo> = streams.iter().collect();
    streams.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = Plan::default();
    for s in streams {
        for sh in &s.shards {
            let mut replicas = sh.replicas.clone();
            for i in 0..replicas.len() {
                let from = replicas[i];
                if !leaves(from) {
                    continue;
                }
                let stuck = |why| Stuck {
                    stream: s.name.clone(),
                    shard: sh.index,
                    group: sh.group,
                    from,
                    why,
                };
                if !sh.ready {
                    out.stuck.push(stuck("the shard's group is not formed yet"));
                    continue;
                }
                let keep: Vec<Candidate> = replicas
                    .iter()
                    .filter(|r| **r != from && !leaves(**r))
                    .filter_map(|r| candidate(*r, &load))
                    .collect();
                let keep: Vec<&Candidate> = keep.iter().collect();
                let candidates: Vec<Candidate> = nodes
                    .iter()
                    .filter(|n| n.usable && !n.info.draining && !replicas.contains(&n.info.id))
                    .filter_map(|n| candidate(n.info.id, &load))
                    .collect();
                match placement::replacement(&candidates, &keep) {
                    Some(to) => {
                        let to = to.id;
                        replicas[i] = to;
                        *load.entry(to).or_default() += 1;
                        if let Some(l) = load.get_mut(&from) {
                            *l = l.saturating_sub(1);
                        }
                        out.moves.push(Move {
                            stream: s.name.clone(),
                            created_ms: s.created_ms,
                            shard: sh.index,
                            group: sh.group,
                            from,
                            to,
                        });
                    }
                    None => out.stuck.push(stuck(
                        "no usable node outside the shard's replicas (all are down, draining or hold it already)",
                    )),
                }
            }
        }
    }
    out
}

/// The controller group's voters after replacing each voter that is to be evacuated (silent
/// past the repair time, draining) or no longer registered, by a usable node that follows the
/// controller as a learner: a region the staying voters are not in first, then a zone, then
/// the lowest id. A voter nobody can replace stays. `None` when nothing changes.
pub fn controller_voters(
    nodes: &[NodeHealth],
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
) -> Option<BTreeSet<u64>> {
    let by_id: HashMap<u64, &NodeHealth> = nodes.iter().map(|n| (n.info.id, n)).collect();
    let leaves = |id: u64| by_id.get(&id).is_none_or(|n| n.evacuate);
    let candidate = |n: &NodeHealth| Candidate {
        id: n.info.id,
        region: n.info.region.clone(),
        zone: n.info.zone.clone(),
        load: 0,
    };
    let mut out: BTreeSet<u64> = voters.clone();
    for from in voters.iter().copied().filter(|v| leaves(*v)) {
        let keep: Vec<Candidate> = out
            .iter()
            .filter(|v| !leaves(**v))
            .filter_map(|v| by_id.get(v).map(|n| candidate(n)))
            .collect();
        let keep: Vec<&Candidate> = keep.iter().collect();
        let candidates: Vec<Candidate> = nodes
            .iter()
            .filter(|n| n.usable && learners.contains(&n.info.id) && !out.contains(&n.info.id))
            .map(candidate)
            .collect();
        if let Some(to) = placement::replacement(&candidates, &keep) {
            out.remove(&from);
            out.insert(to.id);
        }
    }
    (out != *voters).then_some(out)
}

/// Applies a move to `stream` when it still makes sense, in place in the replica list (so the
/// shard's other replicas keep their positions); says why not otherwise. `target` is the
/// controller's record of node `to`.
pub fn replace_replica(
    stream: &mut StreamInfo,
    created_ms: u64,
    shard: u32,
    from: u64,
    to: u64,
    target: Option<&NodeInfo>,
) -> Result<(), String> {
    if stream.created_ms != created_ms {
        return Err("the stream was deleted and created again".into());
    }
    match target {
        None => return Err(format!("node {to} is not a member of the cluster")),
        Some(t) if t.draining => return Err(format!("node {to} is draining")),
        Some(_) => {}
    }
    let Some(sh) = stream.shards.get_mut(shard as usize) else {
        return Err(format!("the stream has no shard {shard}"));
    };
    // Until the shard is ready its first replica may still form the group with the placement
    // it reads; a new first replica would form a second group.
    if !sh.ready {
        return Err("the shard's group is not formed yet".into());
    }
    if sh.replicas.contains(&to) {
        return Err(format!("node {to} holds a replica already"));
    }
    let Some(slot) = sh.replicas.iter_mut().find(|r| **r == from) else {
        return Err(format!("node {from} holds no replica"));
    };
    *slot = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{ShardInfo, StreamMode, StreamStatus};

    fn info(id: u64, region: &str) -> NodeInfo {
        NodeInfo {
            id,
            address: format!("n{id}:1"),
            region: region.into(),
            zone: format!("{region}-{id}"),
            draining: false,
        }
    }

    fn healthy(id: u64, region: &str) -> NodeHealth {
        NodeHealth {
            info: info(id, region),
            usable: true,
            evacuate: false,
        }
    }

    fn stream(placements: &[&[u64]]) -> StreamInfo {
        StreamInfo {
            name: "s".into(),
            status: StreamStatus::Active,
            retention_hours: 24,
            created_ms: 7,
            shards: placements
                .iter()
                .enumerate()
                .map(|(i, r)| ShardInfo {
                    index: i as u32,
                    group: i as u64 + 1,
                    hash_start: 0,
                    hash_end: 0,
                    replicas: r.to_vec(),
                    ready: true,
                })
                .collect(),
            mode: StreamMode::Provisioned,
            tags: BTreeMap::new(),
            preferred_leader_region: None,
        }
    }

    /// Two nodes in each of three regions: 1, 2 in eu; 3, 4 in us; 5, 6 in ap.
    fn six() -> Vec<NodeHealth> {
        ["eu", "eu", "us", "us", "ap", "ap"]
            .iter()
            .enumerate()
            .map(|(i, r)| healthy(i as u64 + 1, r))
            .collect()
    }

    fn apply(s: &mut StreamInfo, plan: &Plan, nodes: &[NodeHealth]) {
        for m in &plan.moves {
            let target = nodes.iter().find(|n| n.info.id == m.to).map(|n| &n.info);
            replace_replica(s, m.created_ms, m.shard, m.from, m.to, target).expect("applies");
        }
    }

    #[test]
    fn a_lost_controller_voter_is_replaced_by_a_learner_from_its_region() {
        let set = |ids: &[u64]| ids.iter().copied().collect::<BTreeSet<u64>>();
        let mut nodes = six();
        let voters = set(&[1, 3, 5]);
        let learners = set(&[2, 4, 6]);
        assert_eq!(controller_voters(&nodes, &voters, &learners), None);
        // Node 3 (us) is lost: node 4, the other us node, takes its place.
        nodes[2].usable = false;
        nodes[2].evacuate = true;
        assert_eq!(
            controller_voters(&nodes, &voters, &learners),
            Some(set(&[1, 4, 5]))
        );
        // Node 4 cannot take it either: a learner elsewhere does, the lowest id first.
        nodes[3].usable = false;
        assert_eq!(
            controller_voters(&nodes, &voters, &learners),
            Some(set(&[1, 2, 5]))
        );
        // Only learners are promoted; with none usable, the voter stays.
        assert_eq!(controller_voters(&nodes, &voters, &set(&[4])), None);
        // A voter that is no longer registered leaves too.
        let nodes = six();
        assert_eq!(
            controller_voters(&nodes, &set(&[1, 3, 9]), &learners),
            Some(set(&[1, 3, 6]))
        );
    }

    #[test]
    fn a_dead_nodes_replicas_move_to_the_region_they_left() {
        let mut nodes = six();
        nodes[0].usable = false;
        nodes[0].evacuate = true;
        let mut s = stream(&[&[1, 3, 5], &[3, 1, 6], &[4, 6, 2]]);
        let plan = plan(&nodes, std::slice::from_ref(&s));
        assert!(plan.stuck.is_empty(), "{plan:?}");
        assert_eq!(
            plan.moves
                .iter()
                .map(|m| (m.shard, m.from, m.to))
                .collect::<Vec<_>>(),
            [(0, 1, 2), (1, 1, 2)]
        );
        apply(&mut s, &plan, &nodes);
        assert_eq!(s.shards[0].replicas, [2, 3, 5], "moved in place");
        assert_eq!(s.shards[1].replicas, [3, 2, 6]);
        assert_eq!(s.shards[2].replicas, [4, 6, 2], "untouched");
        for sh in &s.shards {
            let regions: BTreeSet<_> = sh
                .replicas
                .iter()
                .map(|r| nodes[*r as usize - 1].info.region.clone())
                .collect();
            assert_eq!(regions.len(), 3, "{:?}", sh.replicas);
        }
    }

    #[test]
    fn replacements_avoid_down_draining_and_holding_nodes() {
        let mut nodes = six();
        nodes[0].evacuate = true; // 1 (eu) drains
        nodes[0].info.draining = true;
        nodes[0].usable = false;
        nodes[1].usable = false; // 2 (eu) is down but not for long yet
        let s = stream(&[&[1, 3, 5]]);
        let plan = plan(&nodes, &[s]);
        // eu has no usable node: the move goes to a free zone in another region.
        assert_eq!(plan.moves.len(), 1, "{plan:?}");
        let to = plan.moves[0].to;
        assert!([4, 6].contains(&to), "moved to {to}");

        // With only the shard's own replicas left, the replica stays and is reported.
        let mut nodes = six();
        nodes.truncate(3);
        nodes[0].evacuate = true;
        nodes[0].usable = false;
        let plan = super::plan(&nodes, &[stream(&[&[1, 2, 3]])]);
        assert!(plan.moves.is_empty(), "{plan:?}");
        assert_eq!(plan.stuck.len(), 1);
        assert_eq!((plan.stuck[0].group, plan.stuck[0].from), (1, 1));
    }

    #[test]
    fn moves_spread_by_load_and_skip_shards_not_yet_formed() {
        let mut nodes: Vec<NodeHealth> = (1..=5).map(|i| healthy(i, "r")).collect();
        nodes[0].evacuate = true;
        nodes[0].usable = false;
        let mut s = stream(&[&[1, 2, 3], &[1, 2, 3], &[1, 4, 5], &[2, 1, 3]]);
        s.shards[3].ready = false;
        let plan = plan(&nodes, &[s]);
        let targets: Vec<u64> = plan.moves.iter().map(|m| m.to).collect();
        // 4 and 5 hold one replica each; the two moves of shards 0 and 1 take one each.
        assert_eq!(targets, [4, 5, 2]);
        assert_eq!(plan.stuck.len(), 1);
        assert_eq!(plan.stuck[0].shard, 3);
    }

    #[test]
    fn replicas_on_unregistered_nodes_move_too() {
        let nodes = six();
        let plan = plan(&nodes, &[stream(&[&[9, 3, 5]])]);
        assert_eq!(plan.moves.len(), 1);
        assert_eq!(plan.moves[0].from, 9);
        assert!([1, 2].contains(&plan.moves[0].to));
    }

    #[test]
    fn stale_moves_are_refused() {
        let nodes = six();
        let target = Some(&nodes[1].info);
        let mut s = stream(&[&[1, 3, 5]]);
        let refused = |s: &mut StreamInfo, created, shard, from, to, t| {
            replace_replica(s, created, shard, from, to, t).expect_err("stale")
        };
        assert!(refused(&mut s, 8, 0, 1, 2, target).contains("created again"));
        assert!(refused(&mut s, 7, 4, 1, 2, target).contains("no shard"));
        assert!(refused(&mut s, 7, 0, 4, 2, target).contains("node 4 holds no replica"));
        assert!(refused(&mut s, 7, 0, 1, 3, Some(&nodes[2].info)).contains("already"));
        assert!(refused(&mut s, 7, 0, 1, 2, None).contains("not a member"));
        let mut draining = nodes[1].info.clone();
        draining.draining = true;
        assert!(refused(&mut s, 7, 0, 1, 2, Some(&draining)).contains("draining"));
        s.shards[0].ready = false;
        assert!(refused(&mut s, 7, 0, 1, 2, target).contains("not formed"));
        assert_eq!(s.shards[0].replicas, [1, 3, 5], "nothing changed");
        s.shards[0].ready = true;
        replace_replica(&mut s, 7, 0, 1, 2, target).expect("applies");
        assert_eq!(s.shards[0].replicas, [2, 3, 5]);
        // The same move again is stale, and so is a move from a node that left.
        assert!(refused(&mut s, 7, 0, 1, 2, target).contains("already"));
        assert!(
            refused(&mut s, 7, 0, 1, 4, Some(&nodes[3].info)).contains("node 1 holds no replica")
        );
    }
}
