//! Leader balancing decisions. Pure functions, no I/O: the controller's leader feeds them what
//! it knows of each node and of who leads each shard (from its liveness probes), and asks each
//! shard's leader to hand over to the node they return.
//!
//! Two rules, in this order:
//! 1. A shard of a stream with a preferred leader region is led from that region whenever one
//!    of its replicas there is on a usable node.
//! 2. Leaderships spread evenly: a leadership moves from the node leading the most shards to a
//!    usable replica whose node leads at least two fewer, so that no move can be undone by the
//!    next pass. A shard led from its preferred region only moves within that region.
//!
//! A leader on a node that is not usable (draining) moves to a usable replica as under rule 1.

use std::collections::{BTreeMap, HashMap};

use super::repair::NodeHealth;
use super::{StreamInfo, StreamStatus};

/// One leadership to move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderMove {
    pub stream: String,
    pub shard: u32,
    pub group: u64,
    pub from: u64,
    pub to: u64,
    pub why: Why,
}

/// Why a leadership moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// To the stream's preferred leader region.
    PreferredRegion,
    /// Off a node that takes no leaderships (draining).
    Unusable,
    /// To spread leaderships evenly.
    Spread,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::PreferredRegion => "preferred leader region",
            Why::Unusable => "leader's node is draining",
            Why::Spread => "spreading leaders",
        }
    }
}

/// A shard the balancer may act on: ready, its leader known.
struct Led<'a> {
    stream: &'a StreamInfo,
    shard: u32,
    group: u64,
    replicas: &'a [u64],
    leader: u64,
}

/// Plans at most `max_moves` leadership moves. `leaders` maps a shard group to the node that
/// leads it; groups without a known leader, and those in `skip` (moved recently), stay put.
pub fn plan(
    nodes: &[NodeHealth],
    streams: &[StreamInfo],
    leaders: &HashMap<u64, u64>,
    skip: &dyn Fn(u64) -> bool,
    max_moves: usize,
) -> Vec<LeaderMove> {
    let region: HashMap<u64, &str> = nodes
        .iter()
        .map(|n| (n.info.id, n.info.region.as_str()))
        .collect();
    let usable = |id: u64| nodes.iter().any(|n| n.info.id == id && n.usable);
    // Leaderships per usable node, ordered by id so that ties break the same way every pass.
    let mut count: BTreeMap<u64, usize> = nodes
        .iter()
        .filter(|n| n.usable)
        .map(|n| (n.info.id, 0))
        .collect();
    let mut led: Vec<Led> = Vec::new();
    for s in streams.iter().filter(|s| s.status == StreamStatus::Active) {
        for sh in s.shards.iter().filter(|sh| sh.ready) {
            let Some(&leader) = leaders.get(&sh.group) else {
                continue;
            };
            if !sh.replicas.contains(&leader) {
                continue;
            }
            if let Some(c) = count.get_mut(&leader) {
                *c += 1;
            }
            led.push(Led {
                stream: s,
                shard: sh.index,
                group: sh.group,
                replicas: &sh.replicas,
                leader,
            });
        }
    }
    fn preferred<'a>(l: &Led<'a>) -> Option<&'a str> {
        l.stream.preferred_leader_region.as_deref()
    }
    let in_region = |id: u64, r: &str| region.get(&id).is_some_and(|x| *x == r);
    let mut moves = Vec::new();

    // Rule 1, and leaders on unusable nodes.
    for l in led.iter_mut() {
        if moves.len() >= max_moves {
            return moves;
        }
        if skip(l.group) {
            continue;
        }
        let want_region =
            preferred(l).filter(|r| l.replicas.iter().any(|id| usable(*id) && in_region(*id, r)));
        let why = match want_region {
            Some(r) if !in_region(l.leader, r) || !usable(l.leader) => Why::PreferredRegion,
            _ if !usable(l.leader) => Why::Unusable,
            _ => continue,
        };
        let to = l
            .replicas
            .iter()
            .copied()
            .filter(|id| *id != l.leader && usable(*id))
            .filter(|id| want_region.is_none_or(|r| in_region(*id, r)))
            .min_by_key(|id| (count[id], *id));
        let Some(to) = to else { continue };
        if let Some(c) = count.get_mut(&l.leader) {
            *c -= 1;
        }
        *count.get_mut(&to).expect("usable node is counted") += 1;
        moves.push(LeaderMove {
            stream: l.stream.name.clone(),
            shard: l.shard,
            group: l.group,
            from: l.leader,
            to,
            why,
        });
        l.leader = to;
    }

    // Rule 2: from the busiest node to a replica that leads at least two fewer.
    while moves.len() < max_moves {
        let mut busiest: Vec<(u64, usize)> = count.iter().map(|(id, c)| (*id, *c)).collect();
        busiest.sort_by_key(|(id, c)| (std::cmp::Reverse(*c), *id));
        let mut found = None;
        'nodes: for (from, from_count) in busiest {
            for (i, l) in led.iter().enumerate() {
                if l.leader != from || skip(l.group) || moves.iter().any(|m| m.group == l.group) {
                    continue;
                }
                let pinned = preferred(l).filter(|r| in_region(from, r));
                let to = l
                    .replicas
                    .iter()
                    .copied()
                    .filter(|id| *id != from && usable(*id))
                    .filter(|id| pinned.is_none_or(|r| in_region(*id, r)))
                    .filter(|id| count[id] + 2 <= from_count)
                    .min_by_key(|id| (count[id], *id));
                if let Some(to) = to {
                    found = Some((i, to));
                    break 'nodes;
                }
            }
        }
        let Some((i, to)) = found else { break };
        let l = &mut led[i];
        *count.get_mut(&l.leader).expect("busiest node is counted") -= 1;
        *count.get_mut(&to).expect("usable node is counted") += 1;
        moves.push(LeaderMove {
            stream: l.stream.name.clone(),
            shard: l.shard,
            group: l.group,
            from: l.leader,
            to,
            why: Why::Spread,
        });
        l.leader = to;
    }
    moves
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::{NodeInfo, ShardInfo, StreamMode};

    fn node(id: u64, region: &str, usable: bool) -> NodeHealth {
        NodeHealth {
            info: NodeInfo {
                id,
                address: format!("n{id}:1"),
                region: region.into(),
                zone: "z".into(),
                draining: !usable,
            },
            usable,
            evacuate: !usable,
        }
    }

    fn stream(
        name: &str,
        first_group: u64,
        placements: &[&[u64]],
        pref: Option<&str>,
    ) -> StreamInfo {
        StreamInfo {
            name: name.into(),
            status: StreamStatus::Active,
            retention_hours: 24,
            created_ms: 1,
            shards: placements
                .iter()
                .enumerate()
                .map(|(i, r)| ShardInfo {
                    index: i as u32,
                    group: first_group + i as u64,
                    hash_start: 0,
                    hash_end: 0,
                    replicas: r.to_vec(),
                    ready: true,
                })
                .collect(),
            mode: StreamMode::Provisioned,
            tags: Default::default(),
            preferred_leader_region: pref.map(str::to_string),
        }
    }

    fn never(_: u64) -> bool {
        false
    }

    /// Leaders per node after applying `moves`.
    fn after(leaders: &HashMap<u64, u64>, moves: &[LeaderMove]) -> BTreeMap<u64, usize> {
        let mut l = leaders.clone();
        for m in moves {
            assert_eq!(
                l.insert(m.group, m.to),
                Some(m.from),
                "{m:?} starts elsewhere"
            );
        }
        let mut out = BTreeMap::new();
        for n in l.values() {
            *out.entry(*n).or_insert(0) += 1;
        }
        out
    }

    #[test]
    fn leaders_piled_on_one_node_spread_evenly() {
        let nodes = [node(1, "a", true), node(2, "b", true), node(3, "c", true)];
        let s = stream("s", 1, &[&[1u64, 2, 3][..]; 6], None);
        let leaders: HashMap<u64, u64> = (1..=6).map(|g| (g, 1)).collect();
        let moves = plan(&nodes, &[s], &leaders, &never, 100);
        assert!(moves.iter().all(|m| m.why == Why::Spread));
        assert_eq!(
            after(&leaders, &moves),
            BTreeMap::from([(1, 2), (2, 2), (3, 2)])
        );
        // Balanced: nothing more to do.
        let mut l2 = leaders.clone();
        for m in &moves {
            l2.insert(m.group, m.to);
        }
        let s = stream("s", 1, &[&[1u64, 2, 3][..]; 6], None);
        assert!(plan(&nodes, &[s], &l2, &never, 100).is_empty());
    }

    #[test]
    fn an_imbalance_of_one_is_left_alone_and_moves_are_capped() {
        let nodes = [node(1, "a", true), node(2, "b", true), node(3, "c", true)];
        let s = stream("s", 1, &[&[1u64, 2, 3][..]; 4], None);
        let leaders = HashMap::from([(1, 1), (2, 1), (3, 2), (4, 3)]);
        assert!(plan(&nodes, std::slice::from_ref(&s), &leaders, &never, 100).is_empty());
        let leaders: HashMap<u64, u64> = (1..=4).map(|g| (g, 1)).collect();
        assert_eq!(plan(&nodes, &[s], &leaders, &never, 1).len(), 1);
    }

    #[test]
    fn leaders_go_to_the_preferred_region_and_stay_there() {
        let nodes = [
            node(1, "a", true),
            node(2, "b", true),
            node(3, "c", true),
            node(4, "b", true),
        ];
        let s = stream(
            "s",
            1,
            &[&[1, 2, 3], &[1, 4, 3], &[3, 2, 1], &[3, 4, 1]],
            Some("b"),
        );
        let leaders = HashMap::from([(1, 1), (2, 1), (3, 3), (4, 3)]);
        let moves = plan(&nodes, &[s], &leaders, &never, 100);
        assert!(
            moves.iter().all(|m| m.why == Why::PreferredRegion),
            "{moves:?}"
        );
        // Every shard is led from region b, and nothing spreads them out of it.
        assert_eq!(after(&leaders, &moves), BTreeMap::from([(2, 2), (4, 2)]));
    }

    #[test]
    fn without_a_usable_replica_in_the_preferred_region_leaders_spread_anywhere() {
        let nodes = [node(1, "a", true), node(2, "b", false), node(3, "c", true)];
        let s = stream("s", 1, &[&[1u64, 2, 3][..]; 4], Some("b"));
        // Node 2 drains: its leaders move to usable replicas, evenly.
        let leaders: HashMap<u64, u64> = (1..=4).map(|g| (g, 2)).collect();
        let moves = plan(&nodes, &[s], &leaders, &never, 100);
        assert!(moves.iter().all(|m| m.why == Why::Unusable), "{moves:?}");
        assert_eq!(after(&leaders, &moves), BTreeMap::from([(1, 2), (3, 2)]));
    }

    #[test]
    fn unknown_leaders_and_skipped_groups_stay() {
        let nodes = [node(1, "a", true), node(2, "b", true), node(3, "c", true)];
        let s = stream("s", 1, &[&[1u64, 2, 3][..]; 4], None);
        let leaders = HashMap::from([(1, 1), (2, 1), (3, 1)]);
        let skip = |g: u64| g == 1 || g == 2;
        let moves = plan(&nodes, &[s], &leaders, &skip, 100);
        assert_eq!(moves.iter().map(|m| m.group).collect::<Vec<_>>(), [3]);
    }
}
