//! Readiness: whether a starting node can serve client calls yet.
//!
//! A node opens its ports before the cluster has formed: its peers need its gRPC port to elect
//! the controller and to register, so the port cannot wait. A client call that arrives then
//! (a CreateStream sent the moment `riptide dev` or a new cluster opens its Kinesis port) would
//! be refused because too few nodes have registered to place shards. So client calls that reach
//! a node during its first `start_hold_ms` are held until the node is ready, and go on as usual
//! once it is or once that time is over (they then get the error they would have got, e.g. that
//! too few nodes have registered). Node-to-node calls (Raft, forwarded requests, controller
//! proposals, liveness probes) are never held: the cluster forms through them.
//!
//! A node is ready once it has applied its own registration in the controller and as many nodes
//! have registered as a new shard needs replicas. Readiness is latched: a ready node never holds
//! a call again, and a restarted node whose data already shows the cluster formed is ready at
//! once.

use std::time::Duration;

use crate::controller::NodeInfo;
use crate::controller::placement::{self, TooFewNodes};

/// Why a node cannot serve client calls yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotReady {
    /// The node has not applied its own registration in the controller yet.
    Unregistered,
    /// Too few nodes have registered for new shards to get their replicas.
    TooFewNodes(TooFewNodes),
}

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotReady::Unregistered => {
                write!(f, "this node has not registered with the controller yet")
            }
            NotReady::TooFewNodes(short) => write!(
                f,
                "only {} of the cluster's nodes have registered with the controller, and a shard \
                 needs {} replicas",
                short.registered, short.wanted
            ),
        }
    }
}

/// Whether node `me`, which sees `nodes` registered in the controller with `controller_voters`
/// voters, can serve client calls.
pub fn readiness(me: u64, nodes: &[NodeInfo], controller_voters: usize) -> Result<(), NotReady> {
    if !nodes.iter().any(|n| n.id == me) {
        return Err(NotReady::Unregistered);
    }
    placement::replicas_for_new_shards(nodes.len(), controller_voters)
        .map(|_| ())
        .map_err(NotReady::TooFewNodes)
}

/// How much longer a call may be held, `since_start` after the node started with a hold of
/// `hold`: `None` once the hold is over.
pub fn hold_left(since_start: Duration, hold: Duration) -> Option<Duration> {
    hold.checked_sub(since_start).filter(|d| !d.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeInfo {
        NodeInfo {
            id,
            address: format!("127.0.0.1:{}", 7100 + id),
            region: "local".into(),
            zone: format!("zone-{id}"),
            draining: false,
        }
    }

    #[test]
    fn a_node_is_ready_once_it_and_enough_others_registered() {
        // Nothing applied yet: the controller's membership is not even known.
        assert_eq!(readiness(1, &[], 0), Err(NotReady::Unregistered));
        // Others registered, this node not yet.
        assert_eq!(
            readiness(3, &[node(1), node(2)], 3),
            Err(NotReady::Unregistered)
        );
        assert_eq!(
            readiness(1, &[node(1), node(2)], 3),
            Err(NotReady::TooFewNodes(TooFewNodes {
                registered: 2,
                wanted: 3
            }))
        );
        assert_eq!(readiness(1, &[node(1), node(2), node(3)], 3), Ok(()));
        // A single-node cluster needs only itself; a larger one only as many as a shard needs.
        assert_eq!(readiness(1, &[node(1)], 1), Ok(()));
        assert_eq!(
            readiness(5, &[node(1), node(2), node(5)], 3),
            Ok(()),
            "nodes beyond the controller's voters need not all be there"
        );
    }

    #[test]
    fn the_refusal_says_what_is_missing() {
        let short = NotReady::TooFewNodes(TooFewNodes {
            registered: 1,
            wanted: 3,
        });
        assert!(
            short
                .to_string()
                .starts_with("only 1 of the cluster's nodes")
        );
        assert!(NotReady::Unregistered.to_string().contains("registered"));
    }

    #[test]
    fn calls_are_held_only_within_the_start_hold() {
        let hold = Duration::from_secs(15);
        assert_eq!(hold_left(Duration::ZERO, hold), Some(hold));
        assert_eq!(
            hold_left(Duration::from_secs(10), hold),
            Some(Duration::from_secs(5))
        );
        assert_eq!(hold_left(hold, hold), None);
        assert_eq!(hold_left(Duration::from_secs(20), hold), None);
        assert_eq!(
            hold_left(Duration::ZERO, Duration::ZERO),
            None,
            "0 holds nothing"
        );
    }
}
