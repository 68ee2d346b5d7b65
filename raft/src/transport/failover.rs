//! Noticing a dead leader at once.
//!
//! Without help, the followers of a leader whose process died wait out the leader's lease
//! (the election timeout's maximum) and then a random election timeout before one campaigns:
//! 1 to 2 s with the data-centre settings. But a process that dies has its connections reset
//! by its kernel, which also refuses new ones, while a process that is only slow (or frozen,
//! or cut off) keeps them. So each node holds one `Watch` call open to every peer that is a
//! member of one of its groups, on a connection of its own. A peer that shuts down sends one
//! message on it first, and its groups' successors are elected at once. When the call breaks,
//! the node connects again at once:
//!
//! - the peer answers: it is alive (it restarted, or the connection was dropped on the way);
//!   nothing happens;
//! - no answer within the probe timeout: the peer may be frozen or cut off; nothing happens,
//!   and the usual election timeouts decide;
//! - the connection is refused or reset at once: the peer's process is gone. For every group
//!   whose leader it was, the replicas left ask each other for their last log ids ( `LogState`)
//!   and the one with the longest log (the lowest node id among equals) campaigns at once, as
//!   if the dead leader had handed it the leadership (openraft's leader transfer: its voters
//!   grant the vote although the dead leader's lease has not run out).
//!
//! Elections stay safe whatever this decides: a candidate still needs a quorum's votes, and a
//! voter still refuses one whose log is behind its own. Reads stay linearizable because every
//! read a leader serves first confirms its leadership with a quorum (openraft's read index),
//! never by trusting its lease; so an old leader that is in fact alive cannot serve a stale
//! read after its followers elected another.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use openraft::ServerState;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::raft::TransferLeaderRequest;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Endpoint;

use super::client::PeerPool;
use super::pb::RaftRequest;
use super::pb::raft_transport_client::RaftTransportClient;
use super::server::GroupTable;
use super::stats::TransportStats;
use super::{decode, encode};
use crate::types::{GroupId, LogId, NodeId, Raft, TypeConfig, Vote};

/// How often the set of peers to watch is brought up to date with the groups' members.
const PEERS_EVERY: Duration = Duration::from_secs(1);
/// The first wait before connecting to a peer again after it refused or did not answer;
/// doubled after each failure up to [`MAX_RETRY`].
const MIN_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(1);
/// The wait before watching a peer again that answered `Watch` with an error of its own (a
/// node of an older build, which does not serve it).
const NOT_WATCHABLE_RETRY: Duration = Duration::from_secs(30);

/// What connecting to a peer's `Watch` found.
enum Probe {
    /// The peer answered; the call stays open until it breaks.
    Open(Box<tonic::Streaming<super::pb::RaftReply>>),
    /// The connection was refused or reset before the peer answered: its process is gone.
    Gone(String),
    /// No answer within the probe timeout: slow, frozen or cut off; nothing is decided.
    Silent,
    /// The peer answered with an error (it does not serve `Watch`).
    NotWatchable(tonic::Status),
}

/// The watcher of one node's peers.
#[derive(Clone)]
pub(crate) struct Failover {
    pub(crate) node: NodeId,
    pub(crate) groups: GroupTable,
    pub(crate) pool: Arc<PeerPool>,
    pub(crate) stats: Arc<TransportStats>,
    pub(crate) probe_timeout: Duration,
    /// Peers last found gone (refused, reset or shutting down) and not answered since.
    pub(crate) gone: Arc<Mutex<HashSet<u64>>>,
}

impl Failover {
    /// Watches the members of this node's groups until `closing` turns true.
    pub(crate) async fn run(self, mut closing: watch::Receiver<bool>) {
        let mut watchers: HashMap<u64, (String, JoinHandle<()>)> = HashMap::new();
        loop {
            let peers = self.peers();
            watchers.retain(|id, (addr, task)| {
                let keep = peers.get(id) == Some(addr) && !task.is_finished();
                if !keep {
                    task.abort();
                }
                keep
            });
            for (id, addr) in peers {
                if watchers.contains_key(&id) {
                    continue;
                }
                let task = tokio::spawn(self.clone().watch_peer(id, addr.clone(), closing.clone()));
                watchers.insert(id, (addr, task));
            }
            tokio::select! {
                _ = tokio::time::sleep(PEERS_EVERY) => {}
                _ = closing.wait_for(|c| *c) => break,
            }
        }
        for (_, (_, task)) in watchers {
            task.abort();
        }
    }

    /// Every other member of this node's groups, with its address.
    fn peers(&self) -> HashMap<u64, String> {
        let rafts: Vec<Raft> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        let mut peers = HashMap::new();
        for raft in rafts {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            for (id, node) in m.membership_config.membership().nodes() {
                if *id != self.node.0 {
                    peers.insert(*id, node.addr.clone());
                }
            }
        }
        peers
    }

    /// Keeps a `Watch` call open to `peer`; each time it breaks, connects again and, when the
    /// peer's process turns out to be gone, has a successor campaign in each group it led.
    async fn watch_peer(self, peer: u64, addr: String, mut closing: watch::Receiver<bool>) {
        let mut retry = MIN_RETRY;
        loop {
            if *closing.borrow() {
                return;
            }
            let probe = self.probe(peer, &addr).await;
            self.note(peer, &probe);
            let wait = match probe {
                Probe::Open(mut stream) => {
                    let opened = tokio::time::Instant::now();
                    let message = tokio::select! {
                        m = stream.next() => m,
                        _ = closing.wait_for(|c| *c) => return,
                    };
                    match message {
                        // The one message the peer sends: it is shutting down.
                        Some(Ok(_)) => {
                            self.set_gone(peer, true);
                            self.take_over_from(NodeId(peer), "it is shutting down")
                                .await;
                            retry
                        }
                        // The call broke: connect again at once, unless it had only just
                        // opened (then wait, so that a peer that keeps ending calls is not
                        // asked again in a tight loop).
                        Some(Err(_)) | None => {
                            if opened.elapsed() >= MAX_RETRY {
                                retry = MIN_RETRY;
                                continue;
                            }
                            retry
                        }
                    }
                }
                Probe::Gone(why) => {
                    self.take_over_from(NodeId(peer), &why).await;
                    retry
                }
                Probe::Silent => retry,
                Probe::NotWatchable(status) => {
                    tracing::debug!(peer, "peer does not serve Watch: {status}");
                    NOT_WATCHABLE_RETRY
                }
            };
            retry = (retry * 2).min(MAX_RETRY);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = closing.wait_for(|c| *c) => return,
            }
        }
    }

    /// Remembers whether `peer` is gone, as far as `probe` tells.
    fn note(&self, peer: u64, probe: &Probe) {
        match probe {
            Probe::Open(_) | Probe::NotWatchable(_) => self.set_gone(peer, false),
            Probe::Gone(_) => self.set_gone(peer, true),
            Probe::Silent => {}
        }
    }

    fn set_gone(&self, peer: u64, gone: bool) {
        let mut set = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        if gone {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
    }

    /// Connects to `peer` on a connection of its own and opens a `Watch` call.
    async fn probe(&self, peer: u64, addr: &str) -> Probe {
        let endpoint = match Endpoint::from_shared(format!("http://{addr}")) {
            Ok(e) => e
                // Longer than the probe: a connection that takes that long is `Silent`, not
                // refused.
                .connect_timeout(self.probe_timeout * 2)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(self.pool.keepalive_interval())
                .keep_alive_timeout(self.pool.keepalive_timeout())
                .keep_alive_while_idle(true),
            Err(e) => return Probe::NotWatchable(tonic::Status::invalid_argument(e.to_string())),
        };
        let open = async {
            let channel = endpoint
                .connect()
                .await
                .map_err(|e| Probe::Gone(format!("connection failed: {e}")))?;
            let mut client = RaftTransportClient::new(channel);
            let request = RaftRequest {
                group_id: 0,
                target_node: peer,
                from_node: self.node.0,
                payload: Default::default(),
                entry_data: Vec::new(),
            };
            match client.watch(request).await {
                Ok(resp) => Ok(resp.into_inner()),
                // A status the transport made up (the connection broke) carries its cause; one
                // the peer sent does not.
                Err(status) if std::error::Error::source(&status).is_some() => {
                    Err(Probe::Gone(format!("call failed: {status}")))
                }
                Err(status) => Err(Probe::NotWatchable(status)),
            }
        };
        match tokio::time::timeout(self.probe_timeout, open).await {
            Ok(Ok(stream)) => Probe::Open(Box::new(stream)),
            Ok(Err(probe)) => probe,
            Err(_) => Probe::Silent,
        }
    }

    /// Has a successor campaign in every group of this node whose leader is `dead`.
    pub(crate) async fn take_over_from(&self, dead: NodeId, why: &str) {
        let led: Vec<(GroupId, Raft)> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, raft)| {
                let metrics = raft.metrics();
                let m = metrics.borrow_watched();
                m.current_leader == Some(dead.0) && m.state == ServerState::Follower
            })
            .map(|(g, r)| (*g, r.clone()))
            .collect();
        if led.is_empty() {
            return;
        }
        tracing::info!(
            node_id = %self.node,
            dead = %dead,
            groups = led.len(),
            "the leader's node is gone ({why}); electing successors at once"
        );
        let takeovers = led
            .into_iter()
            .map(|(g, raft)| self.take_over(g, raft, dead));
        futures::future::join_all(takeovers).await;
    }

    /// Picks the successor of `dead` in one group and has it campaign.
    async fn take_over(&self, group: GroupId, raft: Raft, dead: NodeId) {
        let (vote, others) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            if m.current_leader != Some(dead.0) || m.state != ServerState::Follower {
                return;
            }
            let membership = m.membership_config.membership();
            if !membership.voter_ids().any(|v| v == self.node.0) {
                return;
            }
            let others: Vec<(u64, String)> = membership
                .voter_ids()
                .filter(|v| *v != self.node.0 && *v != dead.0)
                .filter_map(|v| membership.get_node(&v).map(|n| (v, n.addr.clone())))
                .collect();
            (m.vote, others)
        };
        let mine = raft.data_metrics().borrow_watched().last_log;
        let states = futures::future::join_all(
            others
                .iter()
                .map(|(id, addr)| self.log_state(group, *id, addr)),
        )
        .await;
        let mut best = (mine, self.node.0);
        for ((id, _), state) in others.iter().zip(states) {
            let Some((their_vote, their_last)) = state else {
                continue;
            };
            if their_vote != vote {
                // That replica has moved on (it campaigns, or heard of a new leader): only let
                // it win without waiting for the dead leader's lease.
                self.local_transfer(&raft, group, vote, *id, their_last)
                    .await;
                return;
            }
            if their_last > best.0 || (their_last == best.0 && *id < best.1) {
                best = (their_last, *id);
            }
        }
        self.stats.dead_leader_noticed();
        let (last, successor) = best;
        tracing::info!(
            node_id = %self.node,
            group_id = %group,
            dead = %dead,
            successor,
            "the leader's node is gone; the replica with the longest log campaigns"
        );
        self.local_transfer(&raft, group, vote, successor, last)
            .await;
        if successor != self.node.0
            && let Some((_, addr)) = others.iter().find(|(id, _)| *id == successor)
        {
            let req = TransferLeaderRequest::<TypeConfig>::new(vote, successor, last);
            let request = RaftRequest {
                group_id: group.0,
                target_node: successor,
                from_node: self.node.0,
                payload: encode(&req).into(),
                entry_data: Vec::new(),
            };
            let call = async {
                let mut client = self.pool.client(successor, addr)?;
                client
                    .transfer_leader(request)
                    .await
                    .map_err(|s| s.to_string())
            };
            match tokio::time::timeout(self.probe_timeout, call).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::info!(group_id = %group, successor, "could not ask the successor to campaign: {e}")
                }
                Err(_) => {
                    tracing::info!(group_id = %group, successor, "the successor did not answer the request to campaign")
                }
            }
        }
    }

    /// Tells this replica that the leader of `vote` handed the leadership to `to`: the
    /// replica stops honouring the leader's lease, and campaigns if `to` is itself.
    async fn local_transfer(
        &self,
        raft: &Raft,
        group: GroupId,
        vote: Vote,
        to: u64,
        last: Option<LogId>,
    ) {
        let req = TransferLeaderRequest::new(vote, to, last);
        match raft.handle_transfer_leader(req).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(group_id = %group, "no election after the leader died: {e}")
            }
            Err(fatal) => tracing::debug!(group_id = %group, "group stopped: {fatal}"),
        }
    }

    /// Another replica's vote and last log id in `group`, if it answers in time.
    async fn log_state(
        &self,
        group: GroupId,
        node: u64,
        addr: &str,
    ) -> Option<(Vote, Option<LogId>)> {
        let request = RaftRequest {
            group_id: group.0,
            target_node: node,
            from_node: self.node.0,
            payload: Default::default(),
            entry_data: Vec::new(),
        };
        let call = async {
            let mut client = self.pool.client(node, addr).ok()?;
            let reply = client.log_state(request).await.ok()?.into_inner();
            let state: Result<(Vote, Option<LogId>), String> = decode(&reply.payload).ok()?;
            state.ok()
        };
        tokio::time::timeout(self.probe_timeout, call)
            .await
            .ok()
            .flatten()
    }
}
