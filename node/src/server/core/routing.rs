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
//!
//! A call forwarded to a shard's leader that has no answer within [`FORWARD_ANSWER_DEADLINE`]
//! does not wait on a leader that froze or was cut off: `Core::forward_to_leader` checks
//! every [`LEADER_RECHECK_EVERY`] whether this node's replica of the shard sees another leader
//! now (or leads itself), and if so gives the call up for the caller to route it again. A
//! write sent again so is noted (`note_resent`) and its answer says so (`x-riptide-resent`),
//! since the first copy may have been stored too.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
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
/// How long a call forwarded to a shard's leader waits for its answer before this node checks
/// whether another node leads the shard now.
pub const FORWARD_ANSWER_DEADLINE: Duration = Duration::from_millis(250);
/// While a forwarded call stays unanswered past [`FORWARD_ANSWER_DEADLINE`], how often this
/// node checks who leads the shard (its own replica's view: no call to another node).
pub const LEADER_RECHECK_EVERY: Duration = Duration::from_millis(200);

/// The forwarding state of the request a task serves.
struct Forwarding {
    /// How many times the request was forwarded before it reached this node.
    hops: u32,
    /// The address of the node a part of the request was forwarded to, once one was.
    forwarded_to: RefCell<Option<String>>,
    /// Whether a part of the request was sent to a second leader after the first one left it
    /// unanswered.
    resent: Cell<bool>,
}

/// What serving a request did besides answering it, for the answer's headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// The address of the node a part of the request was forwarded to and answered by, if one
    /// was (`x-riptide-forwarded-to`).
    pub forwarded_to: Option<String>,
    /// Whether a part of the request was sent to a second leader after the first one left it
    /// unanswered, so that it may have been applied twice (`x-riptide-resent`).
    pub resent: bool,
}

tokio::task_local! {
    static FORWARDING: Forwarding;
}

/// Runs `f`, the serving of a request that was forwarded `hops` times before it reached this
/// node (0 from a client); returns its output and what else serving it did: where a part of it
/// was forwarded to, whether a part was sent to two leaders.
pub async fn serve<F: Future>(hops: u32, f: F) -> (F::Output, Served) {
    let state = Forwarding {
        hops,
        forwarded_to: RefCell::new(None),
        resent: Cell::new(false),
    };
    FORWARDING
        .scope(state, async {
            let out = f.await;
            let served = FORWARDING.with(|s| Served {
                forwarded_to: s.forwarded_to.borrow().clone(),
                resent: s.resent.get(),
            });
            (out, served)
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

/// Notes that a part of the request being served was sent to a second leader after the first
/// one left it unanswered: it may have been applied twice.
pub(super) fn note_resent() {
    let _ = FORWARDING.try_with(|s| s.resent.set(true));
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

/// Who leads a shard, as this node's replica of it sees it.
enum ReplicaView {
    /// This node.
    Local(Group),
    /// Another node, at this address.
    Remote { leader: u64, addr: String },
    /// No leader whose address is known.
    Unknown(String),
}

impl Core {
    /// Finds the shard's leader: this node, or the addresses to forward to. Refuses (as
    /// NotLeader or NoLeader) once the request may not be forwarded any further.
    pub async fn route(&self, shard: &ShardInfo) -> Result<Route, ServiceError> {
        let hops = hops();
        let what = || format!("shard {}", ShardId(shard.index));
        let mut why = "no node on the forwarding path hosts it".to_string();
        if let Ok(group) = self.engine.group(GroupId(shard.group)) {
            if group.leader().is_none() {
                let _ = group.wait_for_leader(LEADER_WAIT).await;
            }
            match self.replica_view(group)? {
                ReplicaView::Local(group) => return Ok(Route::Local(group)),
                ReplicaView::Remote { leader, .. } if hops >= MAX_HOPS => {
                    return Err(ServiceError::NotLeader {
                        what: what(),
                        leader_hint: Some(leader),
                    });
                }
                ReplicaView::Remote { addr, .. } => return Ok(Route::Remote(vec![addr])),
                ReplicaView::Unknown(no_leader) => why = no_leader,
            }
        }
        if hops >= MAX_HOPS {
            return Err(ServiceError::NoLeader {
                what: what(),
                why: format!("{why}; retry"),
            });
        }
        // Ask the other replicas, which may know the leader.
        let nodes = self.addresses()?;
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

    /// Who leads `group` as this replica sees it now, without waiting.
    fn replica_view(&self, group: Group) -> Result<ReplicaView, ServiceError> {
        if group.role() == Role::Leader {
            return Ok(ReplicaView::Local(group));
        }
        let status = group.status();
        let Some(leader) = status.leader else {
            return Ok(ReplicaView::Unknown(self.no_leader_yet(&status)));
        };
        // A replica that has not yet received the group's membership knows the leader's id
        // but not its address: the controller knows every node's address.
        let addr = match status.addresses.get(&leader) {
            Some(addr) => Some(addr.clone()),
            None => self.addresses()?.remove(&leader.0),
        };
        Ok(match addr {
            Some(addr) => ReplicaView::Remote {
                leader: leader.0,
                addr,
            },
            None => ReplicaView::Unknown(self.no_leader_yet(&status)),
        })
    }

    fn no_leader_yet(&self, status: &riptide_raft::GroupStatus) -> String {
        format!(
            "no leader yet (an election is under way or too few replicas are up; node {} sees role {:?} in term {})",
            self.node_id(),
            status.role,
            status.term
        )
    }

    /// Every node's address, from the controller.
    fn addresses(&self) -> Result<HashMap<u64, String>, ServiceError> {
        Ok(self
            .nodes()?
            .into_iter()
            .map(|n| (n.id, n.address))
            .collect())
    }

    /// Whether this node's replica of `shard` sees a leader now other than the node at
    /// `waiting_on`: this node, or another one whose address it knows.
    fn leader_moved_from(&self, shard: &ShardInfo, waiting_on: &str) -> bool {
        let Ok(group) = self.engine.group(GroupId(shard.group)) else {
            return false;
        };
        match self.replica_view(group) {
            Ok(ReplicaView::Local(_)) => true,
            Ok(ReplicaView::Remote { addr, .. }) => addr != waiting_on,
            Ok(ReplicaView::Unknown(_)) | Err(_) => false,
        }
    }

    /// [`Core::forward_or_refused`] of a call for `shard` to the addresses [`Core::route`]
    /// gave, without waiting on a leader that stays silent: when the call has no answer
    /// within [`FORWARD_ANSWER_DEADLINE`], this node checks every [`LEADER_RECHECK_EVERY`],
    /// until `recheck_until`, whether its replica sees another leader than the node the call
    /// waits on. Then the call is given up (`None`): the caller routes the request again, to
    /// the new leader or to this node, with the same hop count. A call to a leader that is only
    /// slow keeps waiting, as does a call from a node without a replica of the shard.
    pub(super) async fn forward_to_leader<T, F, Fut>(
        &self,
        shard: &ShardInfo,
        addrs: &[String],
        recheck_until: tokio::time::Instant,
        mut call: F,
    ) -> Option<Result<T, (ServiceError, bool)>>
    where
        F: FnMut(String) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        // How many addresses the call has gone to: it waits on the last of them.
        let tried = AtomicUsize::new(0);
        let forward = self.forward_or_refused(addrs, |addr| {
            tried.fetch_add(1, Ordering::Relaxed);
            call(addr)
        });
        let timer = tokio::time::sleep(FORWARD_ANSWER_DEADLINE);
        tokio::pin!(forward, timer);
        loop {
            tokio::select! {
                biased;
                answer = &mut forward => return Some(answer),
                () = &mut timer => {}
            }
            let now = tokio::time::Instant::now();
            if now >= recheck_until {
                return Some(forward.await);
            }
            let at = tried.load(Ordering::Relaxed).clamp(1, addrs.len().max(1)) - 1;
            if let Some(waiting_on) = addrs.get(at)
                && self.leader_moved_from(shard, waiting_on)
            {
                tracing::debug!(
                    shard = %ShardId(shard.index),
                    waiting_on,
                    "no answer from the shard's leader and another leads it now; routing the call again"
                );
                return None;
            }
            timer
                .as_mut()
                .reset((now + LEADER_RECHECK_EVERY).min(recheck_until));
        }
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
        let (inner, served) = serve(1, async {
            let req = onward(());
            note_forwarded_to("10.0.0.2:7101");
            note_resent();
            (hops(), is_forwarded(), hops_of(&req))
        })
        .await;
        assert_eq!(inner, (1, true, 2));
        assert_eq!(
            served,
            Served {
                forwarded_to: Some("10.0.0.2:7101".into()),
                resent: true
            }
        );
        let ((), served) = serve(0, async {}).await;
        assert_eq!(served, Served::default());
        assert_eq!(hops_of(&tonic::Request::new(())), 0);
    }
}
