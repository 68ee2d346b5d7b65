//! Routing and forwarding: where a shard's request is served (here when this node leads the
//! shard, otherwise at the leader's node, or at a replica's that may know it), and how
//! requests travel between nodes.
//!
//! A request forwarded from node to node carries its hop count in `x-riptide-hops`; the API
//! layer runs each request inside [`serve`], which keeps that count for the request's task and
//! notes where a part of it was forwarded to (reported back in `x-riptide-forwarded-to`). So
//! the business methods of [`Core`] never carry a hop count: [`Core::route`] refuses to send a
//! request further once it has been forwarded [`MAX_HOPS`] times, and [`onward`] makes the
//! request to another node with the count one higher.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use riptide_proto::{HOPS_HEADER, ShardId};
use riptide_raft::{Group, GroupId, Role};

use super::Core;
use crate::controller::ShardInfo;
use crate::error::ServiceError;

/// A request is forwarded at most this many times, so that nodes with stale views of who
/// leads cannot bounce it between them forever.
pub const MAX_HOPS: u32 = 2;
/// How long a forwarded call may take.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request waits for a shard to elect a leader.
pub(super) const LEADER_WAIT: Duration = Duration::from_secs(3);

/// The forwarding state of the request a task serves.
struct Forwarding {
    /// How many times the request was forwarded before it reached this node.
    hops: u32,
    /// The address of the node a part of the request was forwarded to, once one was.
    forwarded_to: RefCell<Option<String>>,
}

tokio::task_local! {
    static FORWARDING: Forwarding;
}

/// Runs `f`, the serving of a request that was forwarded `hops` times before it reached this
/// node (0 from a client); returns its output and the address of the node a part of it was
/// forwarded to, if one was.
pub async fn serve<F: Future>(hops: u32, f: F) -> (F::Output, Option<String>) {
    let state = Forwarding {
        hops,
        forwarded_to: RefCell::new(None),
    };
    FORWARDING
        .scope(state, async {
            let out = f.await;
            let to = FORWARDING.with(|s| s.forwarded_to.borrow().clone());
            (out, to)
        })
        .await
}

/// How many times the request being served was forwarded before it reached this node: 0 for a
/// client's request, and for work of the node's own (background tasks).
pub fn hops() -> u32 {
    FORWARDING.try_with(|s| s.hops).unwrap_or(0)
}

/// Whether the request being served was forwarded here by another node.
pub fn is_forwarded() -> bool {
    hops() > 0
}

/// Notes that a part of the request being served was answered by the node at `addr`.
fn note_forwarded_to(addr: &str) {
    let _ = FORWARDING.try_with(|s| *s.forwarded_to.borrow_mut() = Some(addr.to_string()));
}

/// `msg` as a request to another node on behalf of the request being served: its hop count one
/// higher, with a deadline.
pub fn onward<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(HOPS_HEADER, (hops() + 1).into());
    req.set_timeout(FORWARD_TIMEOUT);
    req
}

/// The hop count of an incoming request (0 from a client).
pub fn hops_of<T>(req: &tonic::Request<T>) -> u32 {
    req.metadata()
        .get(HOPS_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Where a shard's leader is.
pub enum Route {
    /// This node leads it.
    Local(Group),
    /// Addresses to try, best first.
    Remote(Vec<String>),
}

impl Core {
    /// Finds the shard's leader: this node, or the addresses to forward to. Refuses (as
    /// NotLeader or NoLeader) once the request may not be forwarded any further.
    pub async fn route(&self, shard: &ShardInfo) -> Result<Route, ServiceError> {
        let hops = hops();
        let what = || format!("shard {}", ShardId(shard.index));
        // Only a request this node does not lead needs the other nodes' addresses.
        let addresses = || -> Result<HashMap<u64, String>, ServiceError> {
            Ok(self
                .nodes()?
                .into_iter()
                .map(|n| (n.id, n.address))
                .collect())
        };
        let mut why = "no node on the forwarding path hosts it".to_string();
        let mut known = None;
        if let Ok(group) = self.engine.group(GroupId(shard.group)) {
            if group.leader().is_none() {
                let _ = group.wait_for_leader(LEADER_WAIT).await;
            }
            if group.role() == Role::Leader {
                return Ok(Route::Local(group));
            }
            let status = group.status();
            let nodes = known.insert(addresses()?);
            // A replica that has not yet received the group's membership knows the leader's id
            // but not its address: the controller knows every node's address.
            let leader_addr = status.leader.and_then(|l| {
                status
                    .addresses
                    .get(&l)
                    .or_else(|| nodes.get(&l.0))
                    .cloned()
            });
            if let Some(addr) = leader_addr {
                if hops >= MAX_HOPS {
                    return Err(ServiceError::NotLeader {
                        what: what(),
                        leader_hint: status.leader.map(|l| l.0),
                    });
                }
                return Ok(Route::Remote(vec![addr]));
            }
            why = format!(
                "no leader yet (an election is under way or too few replicas are up; node {} sees role {:?} in term {})",
                self.node_id(),
                status.role,
                status.term
            );
        }
        if hops >= MAX_HOPS {
            return Err(ServiceError::NoLeader {
                what: what(),
                why: format!("{why}; retry"),
            });
        }
        // Ask the other replicas, which may know the leader.
        let nodes = match known {
            Some(nodes) => nodes,
            None => addresses()?,
        };
        let addrs: Vec<String> = shard
            .replicas
            .iter()
            .filter(|r| **r != self.node_id())
            .filter_map(|r| nodes.get(r).cloned())
            .collect();
        if addrs.is_empty() {
            return Err(ServiceError::NoLeader { what: what(), why });
        }
        Ok(Route::Remote(addrs))
    }

    /// Tries `call` on each address in turn, moving on only when a node cannot be reached.
    pub(super) async fn forward<T, F, Fut>(
        &self,
        addrs: &[String],
        call: F,
    ) -> Result<T, ServiceError>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.forward_or_refused(addrs, call)
            .await
            .map_err(|(e, _)| e)
    }

    /// [`Core::forward`], also saying, on failure, whether every node tried refused the
    /// connection: then the request certainly reached none of them.
    pub(super) async fn forward_or_refused<T, F, Fut>(
        &self,
        addrs: &[String],
        mut call: F,
    ) -> Result<T, (ServiceError, bool)>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = ServiceError::unavailable("no replica to forward to");
        let mut all_refused = true;
        for addr in addrs {
            match call(addr.clone()).await {
                Ok(v) => {
                    note_forwarded_to(addr);
                    return Ok(v);
                }
                Err(s) => {
                    all_refused &= riptide_proto::connection_refused(&s);
                    let e = ServiceError::from(s);
                    // A node that answered with anything else than "unreachable" has decided.
                    if e.code() != riptide_proto::ErrorCode::Unavailable {
                        return Err((e, false));
                    }
                    last = e;
                }
            }
        }
        Err((last, all_refused && !addrs.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_served_request_carries_its_hops_onward_and_notes_where_it_went() {
        assert_eq!(hops(), 0, "outside a request");
        let (inner, to) = serve(1, async {
            let req = onward(());
            note_forwarded_to("10.0.0.2:7101");
            (hops(), is_forwarded(), hops_of(&req))
        })
        .await;
        assert_eq!(inner, (1, true, 2));
        assert_eq!(to.as_deref(), Some("10.0.0.2:7101"));
        let ((), to) = serve(0, async {}).await;
        assert_eq!(to, None);
        assert_eq!(hops_of(&tonic::Request::new(())), 0);
    }
}
