//! The nodes the client talks to: the configured endpoints, the cluster members learned from
//! `ClusterStatus`, one lazily connected gRPC channel each, and which of them failed lately.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use riptide_proto::v1::ClusterStatusResponse;
use tonic::transport::{Channel, Endpoint};

use crate::ClientError;

/// How long a node is skipped after its first failed connection; each further failure in a
/// row doubles it, up to [`MAX_SUSPECT_FOR`].
const SUSPECT_FOR: Duration = Duration::from_secs(1);
const MAX_SUSPECT_FOR: Duration = Duration::from_secs(30);

/// How long to skip a node after `failures` failed connections in a row (at least one).
fn suspect_for(failures: u32) -> Duration {
    SUSPECT_FOR
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_SUSPECT_FOR)
}

/// Failed connections in a row and until when the node is skipped.
#[derive(Debug, Default)]
struct Health {
    failures: u32,
    skip_until: Option<Instant>,
}

/// Settings of every channel the pool opens.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChannelSettings {
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
}

/// One node the client can send to.
#[derive(Debug)]
pub(crate) struct NodeHandle {
    /// The node id, once learned from `ClusterStatus`; `None` for a configured endpoint.
    pub id: Option<u64>,
    /// `host:port`, for messages.
    pub address: String,
    pub channel: Channel,
    up: bool,
    health: Mutex<Health>,
}

impl NodeHandle {
    /// Whether `other` is the same node: the same handle, the same member id, or the same
    /// address (a configured endpoint and the member it turned out to be).
    pub fn is(&self, other: &NodeHandle) -> bool {
        std::ptr::eq(self, other)
            || (self.id.is_some() && self.id == other.id)
            || self.address == other.address
    }

    fn suspect(&self, now: Instant) -> bool {
        self.health
            .lock()
            .expect("health lock is never poisoned")
            .skip_until
            .is_some_and(|until| until > now)
    }
}

/// `http://host:port` for an endpoint given with or without a scheme.
pub(crate) fn endpoint_uri(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    }
}

/// `host:port` of an endpoint given with or without a scheme.
fn display_address(endpoint: &str) -> String {
    let endpoint = endpoint.trim().trim_end_matches('/');
    endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest)
        .to_string()
}

fn open_channel(
    endpoint: &str,
    settings: ChannelSettings,
    id: Option<u64>,
) -> Result<NodeHandle, ClientError> {
    let uri = endpoint_uri(endpoint);
    let channel = Endpoint::from_shared(uri.clone())
        .map_err(|e| ClientError::invalid("endpoints", format!("{endpoint:?} is not a URI: {e}")))?
        .connect_timeout(settings.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(settings.keepalive_interval)
        .keep_alive_timeout(settings.keepalive_timeout)
        .initial_stream_window_size(8 * 1024 * 1024)
        .initial_connection_window_size(32 * 1024 * 1024)
        // Subscriptions and GetRecords answers carry up to megabytes: in frames of HTTP/2's
        // default 16 KiB, the node makes a write system call per 16 KiB. The nodes use the
        // same size (riptide-raft's HTTP2_MAX_FRAME_BYTES).
        .max_frame_size(256 << 10)
        .connect_lazy();
    Ok(NodeHandle {
        id,
        address: display_address(endpoint),
        channel,
        up: true,
        health: Mutex::new(Health::default()),
    })
}

#[derive(Debug, Default)]
struct Members {
    seeds: Vec<Arc<NodeHandle>>,
    by_id: BTreeMap<u64, Arc<NodeHandle>>,
}

/// The client's nodes.
#[derive(Debug)]
pub(crate) struct NodePool {
    settings: ChannelSettings,
    members: RwLock<Members>,
    next: AtomicUsize,
}

impl NodePool {
    /// A pool over the configured endpoints. Opens no connection yet.
    pub fn new(endpoints: &[String], settings: ChannelSettings) -> Result<Self, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::invalid(
                "endpoints",
                "at least one node address is needed",
            ));
        }
        let seeds = endpoints
            .iter()
            .map(|e| open_channel(e, settings, None).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            settings,
            members: RwLock::new(Members {
                seeds,
                by_id: BTreeMap::new(),
            }),
            next: AtomicUsize::new(0),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Members> {
        self.members.read().expect("member lock is never poisoned")
    }

    /// Takes in the members `ClusterStatus` reported. Channels of nodes whose address did not
    /// change are kept.
    pub fn update(&self, status: &ClusterStatusResponse) {
        let mut by_id = BTreeMap::new();
        {
            let members = self.read();
            for node in &status.nodes {
                if node.node_id == 0 || node.address.is_empty() {
                    continue;
                }
                let handle = match members.by_id.get(&node.node_id) {
                    Some(h) if h.address == display_address(&node.address) && h.up == node.up => {
                        Arc::clone(h)
                    }
                    Some(h) if h.address == display_address(&node.address) => {
                        Arc::new(NodeHandle {
                            id: h.id,
                            address: h.address.clone(),
                            channel: h.channel.clone(),
                            up: node.up,
                            health: Mutex::new(Health::default()),
                        })
                    }
                    _ => match open_channel(&node.address, self.settings, Some(node.node_id)) {
                        Ok(mut h) => {
                            h.up = node.up;
                            Arc::new(h)
                        }
                        Err(e) => {
                            tracing::debug!(node_id = node.node_id, "skipping node: {e}");
                            continue;
                        }
                    },
                };
                by_id.insert(node.node_id, handle);
            }
        }
        self.members
            .write()
            .expect("member lock is never poisoned")
            .by_id = by_id;
    }

    /// The id of the member at `address` (`host:port`, with or without a scheme).
    pub fn id_of_address(&self, address: &str) -> Option<u64> {
        let address = display_address(address);
        self.read()
            .by_id
            .iter()
            .find(|(_, h)| h.address == address)
            .map(|(id, _)| *id)
    }

    /// Ids of the members reported up.
    pub fn member_ids(&self) -> Vec<u64> {
        self.read()
            .by_id
            .iter()
            .filter(|(_, h)| h.up)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Whether `node` is a known member.
    pub fn knows(&self, node: u64) -> bool {
        self.read().by_id.contains_key(&node)
    }

    /// The node to send to: `preferred` when it is known, up and did not just fail, otherwise the
    /// next healthy node in turn (members first, then the configured endpoints).
    pub fn pick(&self, preferred: Option<u64>) -> Arc<NodeHandle> {
        let now = Instant::now();
        let members = self.read();
        if let Some(h) = preferred.and_then(|id| members.by_id.get(&id))
            && h.up
            && !h.suspect(now)
        {
            return Arc::clone(h);
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let healthy: Vec<&Arc<NodeHandle>> = members
            .by_id
            .values()
            .filter(|h| h.up && !h.suspect(now))
            .collect();
        if !healthy.is_empty() {
            return Arc::clone(healthy[turn % healthy.len()]);
        }
        let seeds: Vec<&Arc<NodeHandle>> =
            members.seeds.iter().filter(|h| !h.suspect(now)).collect();
        if !seeds.is_empty() {
            return Arc::clone(seeds[turn % seeds.len()]);
        }
        // Everything failed lately: try each in turn anyway.
        let all: Vec<&Arc<NodeHandle>> =
            members.by_id.values().chain(members.seeds.iter()).collect();
        Arc::clone(all[turn % all.len()])
    }

    /// The member `id`, if known, whatever its health: for a node that the cluster just named
    /// a shard's leader.
    pub fn member(&self, id: u64) -> Option<Arc<NodeHandle>> {
        self.read().by_id.get(&id).map(Arc::clone)
    }

    /// A node other than those in `avoid`: the next healthy member in turn, else a healthy
    /// configured endpoint, else any other node. `None` when the client knows no other node.
    pub fn pick_other(&self, avoid: &[Arc<NodeHandle>]) -> Option<Arc<NodeHandle>> {
        let now = Instant::now();
        let members = self.read();
        let other = |h: &&Arc<NodeHandle>| !avoid.iter().any(|a| a.is(h));
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        let choose = |from: Vec<&Arc<NodeHandle>>| {
            (!from.is_empty()).then(|| Arc::clone(from[turn % from.len()]))
        };
        let healthy = members
            .by_id
            .values()
            .filter(other)
            .filter(|h| h.up && !h.suspect(now))
            .collect();
        let seeds = members
            .seeds
            .iter()
            .filter(other)
            .filter(|h| !h.suspect(now))
            .collect();
        let any = members.by_id.values().chain(&members.seeds).filter(other);
        choose(healthy)
            .or_else(|| choose(seeds))
            .or_else(|| choose(any.collect()))
    }

    /// Skips `node` for a while after its connection failed: 1 s, doubling with each failure
    /// in a row up to 30 s.
    pub fn mark_failed(&self, node: &NodeHandle) {
        let mut health = node.health.lock().expect("health lock is never poisoned");
        health.failures = health.failures.saturating_add(1);
        health.skip_until = Some(Instant::now() + suspect_for(health.failures));
    }

    /// Forgets earlier failures of `node` after it answered.
    pub fn mark_answered(&self, node: &NodeHandle) {
        let mut health = node.health.lock().expect("health lock is never poisoned");
        if health.failures > 0 {
            *health = Health::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use riptide_proto::v1::NodeStatus;

    use super::*;

    fn settings() -> ChannelSettings {
        ChannelSettings {
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(2),
        }
    }

    fn status(nodes: &[(u64, &str, bool)]) -> ClusterStatusResponse {
        ClusterStatusResponse {
            nodes: nodes
                .iter()
                .map(|&(id, address, up)| NodeStatus {
                    node_id: id,
                    address: address.into(),
                    up,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_failing_node_is_skipped_longer_after_each_failure_in_a_row() {
        assert_eq!(suspect_for(1), Duration::from_secs(1));
        assert_eq!(suspect_for(2), Duration::from_secs(2));
        assert_eq!(suspect_for(5), Duration::from_secs(16));
        assert_eq!(suspect_for(6), MAX_SUSPECT_FOR);
        assert_eq!(suspect_for(u32::MAX), MAX_SUSPECT_FOR);
        assert_eq!(suspect_for(0), Duration::from_secs(1));
    }

    #[test]
    fn endpoints_get_a_scheme_when_they_lack_one() {
        assert_eq!(endpoint_uri("127.0.0.1:7101"), "http://127.0.0.1:7101");
        assert_eq!(endpoint_uri("http://h:1/"), "http://h:1");
        assert_eq!(display_address("http://h:1"), "h:1");
        assert_eq!(display_address("h:1"), "h:1");
    }

    #[tokio::test]
    async fn picks_the_preferred_node_then_healthy_members_in_turn() {
        let pool = NodePool::new(&["127.0.0.1:1".to_string()], settings()).expect("valid");
        assert_eq!(
            pool.pick(Some(2)).address,
            "127.0.0.1:1",
            "only the seed is known"
        );
        pool.update(&status(&[
            (1, "127.0.0.1:7101", true),
            (2, "127.0.0.1:7102", true),
            (3, "127.0.0.1:7103", false),
        ]));
        assert!(pool.knows(3) && !pool.knows(4));
        assert_eq!(pool.member_ids(), vec![1, 2]);
        assert_eq!(pool.id_of_address("http://127.0.0.1:7102"), Some(2));
        assert_eq!(pool.id_of_address("127.0.0.1:9"), None);
        assert_eq!(pool.pick(Some(2)).id, Some(2));
        assert_ne!(
            pool.pick(Some(3)).id,
            Some(3),
            "a node reported down is not preferred"
        );
        let picked: std::collections::BTreeSet<_> =
            (0..6).filter_map(|_| pool.pick(None).id).collect();
        assert_eq!(
            picked,
            [1, 2].into(),
            "a node reported down is not picked at random"
        );

        let two = pool.pick(Some(2));
        pool.mark_failed(&two);
        assert_ne!(
            pool.pick(Some(2)).id,
            Some(2),
            "a node that just failed is skipped"
        );
        for _ in 0..4 {
            assert_eq!(pool.pick(None).id, Some(1));
        }
        pool.mark_answered(&two);
        assert_eq!(
            pool.pick(Some(2)).id,
            Some(2),
            "a node that answered is used again"
        );
    }

    #[tokio::test]
    async fn another_node_is_picked_around_the_ones_a_call_waits_on() {
        let pool = NodePool::new(&["127.0.0.1:7101".to_string()], settings()).expect("valid");
        let seed = pool.pick(None);
        assert!(
            pool.pick_other(std::slice::from_ref(&seed)).is_none(),
            "no other node is known"
        );
        pool.update(&status(&[
            (1, "127.0.0.1:7101", true),
            (2, "127.0.0.1:7102", true),
            (3, "127.0.0.1:7103", true),
        ]));
        let one = pool.member(1).expect("known");
        assert!(one.is(&seed), "the seed is member 1 by its address");
        let two = pool.member(2).expect("known");
        let avoid = [Arc::clone(&one), Arc::clone(&two)];
        for _ in 0..4 {
            let other = pool.pick_other(&avoid).expect("node 3");
            assert_eq!(other.id, Some(3));
        }
        let three = pool.member(3).expect("known");
        pool.mark_failed(&three);
        assert_eq!(
            pool.pick_other(&avoid).and_then(|n| n.id),
            Some(3),
            "a node that failed lately is still asked when it is the only other one"
        );
        let picked: std::collections::BTreeSet<_> = (0..6)
            .filter_map(|_| pool.pick_other(&avoid[..1]))
            .filter_map(|n| n.id)
            .collect();
        assert_eq!(picked, [2].into(), "healthy nodes first");
        assert!(pool.member(4).is_none());
    }

    #[tokio::test]
    async fn bad_endpoints_are_refused_by_name() {
        let err = NodePool::new(&["http://bad host:1".to_string()], settings())
            .expect_err("must be refused");
        assert!(err.message.contains("bad host"), "{err}");
        assert!(NodePool::new(&[], settings()).is_err());
    }
}
