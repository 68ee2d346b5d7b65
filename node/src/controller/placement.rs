//! Replica placement: which nodes hold each shard. Pure functions, no I/O.
//!
//! Replicas of a shard go to distinct regions first, then distinct zones, then distinct nodes;
//! among equally good nodes the one holding the fewest replicas wins, so that shards spread
//! evenly. The first replica of each shard rotates, so that initial leaders spread too. A
//! replica that must move (its node is gone or draining) goes by the same rules
//! ([`replacement`]).

use std::collections::{BTreeMap, BTreeSet};

/// Replicas each shard gets in a cluster of at least this many nodes.
pub const REPLICATION: usize = 3;

/// How many replicas each new shard gets: [`REPLICATION`], or as many as the controller has
/// voters when it has fewer (a cluster started with one or two nodes).
pub fn replicas_per_shard(controller_voters: usize) -> usize {
    REPLICATION.min(controller_voters)
}

/// Too few nodes have registered to place new shards with the replicas they should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFewNodes {
    pub registered: usize,
    pub wanted: usize,
}

/// Whether `registered` nodes are enough to place new shards in a cluster whose controller has
/// `controller_voters` voters; the replicas per shard when they are. A cluster that is starting
/// has nodes that have not registered yet: placing then would give every shard fewer replicas
/// than the cluster will have, for good (repair moves replicas, it does not add them). The
/// controller's voters are nodes the cluster was started with.
pub fn replicas_for_new_shards(
    registered: usize,
    controller_voters: usize,
) -> Result<usize, TooFewNodes> {
    let wanted = replicas_per_shard(controller_voters);
    if registered < wanted {
        return Err(TooFewNodes { registered, wanted });
    }
    Ok(wanted)
}

/// A node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: u64,
    pub region: String,
    pub zone: String,
    /// Replicas the node already holds.
    pub load: usize,
}

/// Places `shards` shards with `replication` replicas each (fewer when there are fewer
/// nodes) on `nodes`. Returns one list of node ids per shard, its first entry the node that
/// forms the group (and so usually its first leader): never a node of `down` while another
/// is up (a group whose first replica is down never forms), and a node of
/// `preferred_leader_region` when the region has one. Other replicas take nodes of `down` only
/// when the region and zone rules leave nothing better.
pub fn place(
    nodes: &[Candidate],
    shards: u32,
    replication: usize,
    preferred_leader_region: Option<&str>,
    down: &BTreeSet<u64>,
) -> Vec<Vec<u64>> {
    let rf = replication.min(nodes.len());
    let mut load: BTreeMap<u64, usize> = nodes.iter().map(|n| (n.id, n.load)).collect();
    let mut out = Vec::with_capacity(shards as usize);
    for s in 0..shards as usize {
        let mut chosen: Vec<&Candidate> = Vec::with_capacity(rf);
        while chosen.len() < rf {
            let regions: BTreeSet<&str> = chosen.iter().map(|c| c.region.as_str()).collect();
            let zones: BTreeSet<(&str, &str)> = chosen
                .iter()
                .map(|c| (c.region.as_str(), c.zone.as_str()))
                .collect();
            let best = nodes
                .iter()
                .filter(|n| !chosen.iter().any(|c| c.id == n.id))
                .min_by_key(|n| {
                    (
                        chosen.is_empty() && down.contains(&n.id),
                        chosen.is_empty() && preferred_leader_region.is_some_and(|r| r != n.region),
                        regions.contains(n.region.as_str()),
                        zones.contains(&(n.region.as_str(), n.zone.as_str())),
                        down.contains(&n.id),
                        load[&n.id],
                        // Rotate ties so that equal nodes take turns.
                        (n.id as usize + nodes.len() - s % nodes.len()) % nodes.len(),
                    )
                })
                .expect("fewer chosen than nodes");
            chosen.push(best);
        }
        for c in &chosen {
            *load.get_mut(&c.id).expect("known node") += 1;
        }
        out.push(chosen.iter().map(|c| c.id).collect());
    }
    out
}

/// Chooses the node to take over one replica of a shard whose staying replicas are `keep`:
/// among `candidates` (which must exclude every node holding the shard, and every node that
/// may not take replicas), a region none of `keep` is in first, then a zone, then the least
/// load; the lowest id breaks ties. `None` when there is no candidate.
pub fn replacement<'a>(candidates: &'a [Candidate], keep: &[&Candidate]) -> Option<&'a Candidate> {
    let regions: BTreeSet<&str> = keep.iter().map(|c| c.region.as_str()).collect();
    let zones: BTreeSet<(&str, &str)> = keep
        .iter()
        .map(|c| (c.region.as_str(), c.zone.as_str()))
        .collect();
    candidates.iter().min_by_key(|n| {
        (
            regions.contains(n.region.as_str()),
            zones.contains(&(n.region.as_str(), n.zone.as_str())),
            n.load,
            n.id,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_get_three_replicas_or_one_per_controller_voter() {
        assert_eq!(replicas_per_shard(5), 3);
        assert_eq!(replicas_per_shard(3), 3);
        assert_eq!(replicas_per_shard(1), 1);
        assert_eq!(replicas_for_new_shards(6, 3), Ok(3));
        assert_eq!(replicas_for_new_shards(1, 1), Ok(1));
        assert_eq!(
            replicas_for_new_shards(2, 3),
            Err(TooFewNodes {
                registered: 2,
                wanted: 3
            })
        );
        assert_eq!(
            replicas_for_new_shards(0, 1),
            Err(TooFewNodes {
                registered: 0,
                wanted: 1
            })
        );
    }

    fn node(id: u64, region: &str, zone: &str) -> Candidate {
        Candidate {
            id,
            region: region.into(),
            zone: zone.into(),
            load: 0,
        }
    }

    #[test]
    fn replicas_spread_over_regions_before_zones() {
        let nodes = vec![
            node(1, "eu", "a"),
            node(2, "eu", "b"),
            node(3, "us", "a"),
            node(4, "us", "b"),
            node(5, "ap", "a"),
        ];
        for replicas in place(&nodes, 10, 3, None, &BTreeSet::new()) {
            let regions: BTreeSet<_> = replicas
                .iter()
                .map(|id| nodes[*id as usize - 1].region.clone())
                .collect();
            assert_eq!(regions.len(), 3, "{replicas:?} shares a region");
        }
    }

    #[test]
    fn the_first_replica_is_in_the_preferred_leader_region() {
        let nodes = vec![
            node(1, "eu", "a"),
            node(2, "eu", "b"),
            node(3, "us", "a"),
            node(4, "us", "b"),
            node(5, "ap", "a"),
        ];
        let p = place(&nodes, 6, 3, Some("us"), &BTreeSet::new());
        for replicas in &p {
            assert!(
                [3, 4].contains(&replicas[0]),
                "{replicas:?} starts outside us"
            );
            let regions: BTreeSet<_> = replicas
                .iter()
                .map(|id| nodes[*id as usize - 1].region.clone())
                .collect();
            assert_eq!(regions.len(), 3, "{replicas:?} shares a region");
        }
        let firsts: BTreeSet<_> = p.iter().map(|r| r[0]).collect();
        assert_eq!(firsts.len(), 2, "both us nodes lead some shards: {p:?}");
        // A region without nodes changes nothing.
        assert_eq!(
            place(&nodes, 6, 3, Some("sa"), &BTreeSet::new()),
            place(&nodes, 6, 3, None, &BTreeSet::new())
        );
    }

    #[test]
    fn a_node_that_is_down_never_forms_a_group() {
        let nodes = vec![node(1, "eu", "a"), node(2, "us", "a"), node(3, "ap", "a")];
        let down = BTreeSet::from([2]);
        let p = place(&nodes, 6, 3, Some("us"), &down);
        for replicas in &p {
            assert_ne!(replicas[0], 2, "{p:?}");
            assert_eq!(
                replicas.len(),
                3,
                "the down node still holds a replica: {p:?}"
            );
        }
        // With a fourth node in its region, the down node is left out entirely.
        let mut nodes = nodes;
        nodes.push(node(4, "us", "b"));
        let p = place(&nodes, 6, 3, None, &down);
        assert!(p.iter().all(|r| !r.contains(&2)), "{p:?}");
    }

    #[test]
    fn small_clusters_get_fewer_replicas_and_even_load() {
        let nodes = vec![node(1, "r", "a"), node(2, "r", "a")];
        let p = place(&nodes, 4, 3, None, &BTreeSet::new());
        assert!(p.iter().all(|r| r.len() == 2));
        let nodes: Vec<_> = (1..=6)
            .map(|i| node(i, "r", &format!("z{}", i % 3)))
            .collect();
        let p = place(&nodes, 6, 3, None, &BTreeSet::new());
        let mut count = BTreeMap::new();
        for r in &p {
            for id in r {
                *count.entry(*id).or_insert(0) += 1;
            }
            let zones: BTreeSet<_> = r.iter().map(|id| id % 3).collect();
            assert_eq!(zones.len(), 3, "{r:?} shares a zone");
        }
        assert!(count.values().all(|c| *c == 3), "uneven load {count:?}");
        let firsts: BTreeSet<_> = p.iter().map(|r| r[0]).collect();
        assert!(firsts.len() >= 3, "first replicas do not rotate: {p:?}");
    }

    #[test]
    fn a_replacement_takes_a_missing_region_then_zone_then_the_least_load() {
        let keep = [node(3, "us", "a"), node(5, "ap", "a")];
        let keep: Vec<&Candidate> = keep.iter().collect();
        let loaded = |mut c: Candidate, load| {
            c.load = load;
            c
        };
        // The only node in the region the shard lost wins over lighter nodes elsewhere.
        let candidates = vec![
            loaded(node(2, "eu", "b"), 9),
            loaded(node(4, "us", "b"), 0),
            loaded(node(6, "ap", "b"), 0),
        ];
        assert_eq!(replacement(&candidates, &keep).map(|c| c.id), Some(2));
        // Without a free region, a free zone wins over load.
        let candidates = vec![loaded(node(7, "us", "a"), 0), loaded(node(4, "us", "b"), 5)];
        assert_eq!(replacement(&candidates, &keep).map(|c| c.id), Some(4));
        // Among equal nodes the least loaded, then the lowest id.
        let candidates = vec![
            loaded(node(8, "eu", "a"), 2),
            loaded(node(2, "eu", "b"), 1),
            loaded(node(9, "eu", "c"), 1),
        ];
        assert_eq!(replacement(&candidates, &keep).map(|c| c.id), Some(2));
        assert_eq!(replacement(&[], &keep), None);
    }
}
