//! Calls, routing and retries: which node a call goes to (a shard's leader from the cached
//! shard map, or any node, which forwards), how often it is sent again after which failures,
//! what the client learns from answers (a forwarded call names the shard's new leader), and
//! where a shard's call goes when its leader leaves it unanswered (to the next leader too,
//! once the shard map names one).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_proto::v1::admin_service_client::AdminServiceClient;
use riptide_proto::v1::stream_service_client::StreamServiceClient;
use riptide_proto::{FORWARDED_TO_HEADER, RESENT_HEADER, ShardId};
use tonic::transport::Channel;

use super::{Client, description_of};
use crate::ClientError;
use crate::error::never_sent;
use crate::nodes::NodeHandle;
use crate::put_call::SharedPutRecords;
use crate::retry::RetryPolicy;
use crate::routing::ShardMap;

/// How often at most the client asks for a stream's shard map again after it went stale.
const MIN_MAP_REFRESH: Duration = Duration::from_millis(250);
/// Age after which a shard map is asked for again even without a sign that it is stale, so
/// that leader moves are noticed when the old leader forwards silently.
const MAX_MAP_AGE: Duration = Duration::from_secs(10);
/// While a call to a shard's leader stays unanswered past the leader-answer deadline, how
/// often the client checks the shard map for another leader.
const LEADER_RECHECK_EVERY: Duration = Duration::from_millis(200);
/// How long one such check may take; the next one goes to another node.
const LEADER_RECHECK_TIMEOUT: Duration = Duration::from_secs(1);
/// How often at most the client asks for the cluster's members again.
const MIN_NODE_REFRESH: Duration = Duration::from_secs(1);

/// Which node a call should go to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Route<'a> {
    /// Any node: it forwards to whoever must answer.
    Any,
    /// The leader of a shard, when known.
    Shard(&'a str, ShardId),
    /// One node, when it did not just fail.
    Node(u64),
}

/// Which failures a call may be sent again after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Retryable codes (Unavailable, Throttled): the call is idempotent, or a duplicate is
    /// acceptable and counted (puts).
    Retryable,
    /// Only when the request certainly never reached a node.
    IfNeverSent,
}

/// What one copy of a call came back with: the node's response, or the failure.
type CallAnswer<T> = Result<tonic::Response<T>, tonic::Status>;

/// A copy of a call: the node it went to, and the call while it is unanswered (the first
/// copy's call lives with the attempt that sent it).
type SentCopy<Fut> = (Arc<NodeHandle>, Option<Pin<Box<Fut>>>);

/// What an attempt that waits on several copies of a call wakes up for.
enum Event<T> {
    /// The copy at this index (0: the first) answered.
    Answer(usize, CallAnswer<T>),
    /// A check of the shard map ended, with the map if one could be had.
    Map(Option<Arc<ShardMap>>),
    /// The timer fired: a check is due, or the request timeout passed.
    Tick,
}

/// One attempt of a call.
pub(super) struct Attempt<T> {
    pub(super) result: Result<T, ClientError>,
    /// Whether the request may have reached a node.
    pub(super) sent: bool,
    /// Copies of the request sent: 1, one more for each further leader it went to while the
    /// first did not answer, and one more when the node that answered says it sent the
    /// request on to two leaders itself ([`RESENT_HEADER`]).
    pub(super) copies: u32,
}

/// A successful call's answer and how many copies of the request it took (each attempt's
/// [`Attempt::copies`]).
#[derive(Debug)]
pub(crate) struct Reply<T> {
    pub value: T,
    pub attempts: u32,
}

#[derive(Debug)]
pub(super) struct CachedMap {
    pub(super) map: Arc<ShardMap>,
    /// When the map was asked for last, successfully or not (for the refresh throttle).
    pub(super) fetched: Instant,
    /// When a node described the map.
    pub(super) described: Instant,
    pub(super) stale: bool,
}

impl Client {
    /// Runs `call` against the node `route` picks, again after retryable failures as `retry`
    /// allows, until the retry deadline.
    pub(crate) async fn call<T, F, Fut>(
        &self,
        route: Route<'_>,
        retry: Retry,
        call: F,
    ) -> Result<Reply<T>, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_with(self.inner.retry, route, retry, call).await
    }

    /// [`Client::call`] with its own backoff and deadline.
    pub(super) async fn call_with<T, F, Fut>(
        &self,
        policy: RetryPolicy,
        route: Route<'_>,
        retry: Retry,
        mut call: F,
    ) -> Result<Reply<T>, ClientError>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let started = Instant::now();
        // Attempts for the backoff; copies sent for the answer.
        let mut attempts = 0;
        let mut copies = 0;
        loop {
            attempts += 1;
            let attempt = self.attempt_inner(route, &mut call).await;
            copies += attempt.copies;
            let e = match attempt.result {
                Ok(value) => {
                    return Ok(Reply {
                        value,
                        attempts: copies,
                    });
                }
                Err(e) => e,
            };
            let again = match retry {
                Retry::Retryable => e.is_retryable(),
                Retry::IfNeverSent => !attempt.sent,
            };
            if !again {
                return Err(e);
            }
            match policy.next_delay(started, Instant::now(), attempts) {
                Some(delay) => {
                    tracing::debug!(attempts, "retrying after {delay:?}: {e}");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(e),
            }
        }
    }

    /// One attempt of `call` against the node `route` picks, and how many copies of the
    /// request it sent (see [`Attempt::copies`]).
    pub(crate) async fn attempt<T, F, Fut>(
        &self,
        route: Route<'_>,
        mut call: F,
    ) -> (Result<T, ClientError>, u32)
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let attempt = self.attempt_inner(route, &mut call).await;
        (attempt.result, attempt.copies)
    }

    /// One attempt: `call` sent to the node `route` picks and, for a shard's call that its
    /// node leaves unanswered past [`ClientConfig::leader_answer_deadline`], to the shard's
    /// next leader as well (see [`Client::answer_from_any_leader`]).
    ///
    /// [`ClientConfig::leader_answer_deadline`]: super::ClientConfig::leader_answer_deadline
    pub(super) async fn attempt_inner<T, F, Fut>(
        &self,
        route: Route<'_>,
        call: &mut F,
    ) -> Attempt<T>
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let preferred = match route {
            Route::Any => None,
            Route::Node(id) => Some(id),
            // Boxed: refreshing the map makes a call of its own (to any node).
            Route::Shard(stream, shard) => Box::pin(self.routing_map(stream))
                .await
                .and_then(|m| m.leader_of(shard)),
        };
        let node = self.inner.nodes.pick(preferred);
        let timeout = self.inner.config.request_timeout;
        let sent_at = tokio::time::Instant::now();
        let give_up_at = sent_at + timeout;
        let recheck_after = match route {
            Route::Shard(..) => self
                .inner
                .config
                .leader_answer_deadline
                .filter(|d| !d.is_zero() && *d < timeout),
            Route::Any | Route::Node(_) => None,
        };
        // One timer, as a plain timeout would take: the request timeout, or the deadline
        // after which a shard's call looks for another leader.
        let timer = tokio::time::sleep_until(sent_at + recheck_after.unwrap_or(timeout));
        let first = call(self.api(&node));
        tokio::pin!(first, timer);
        let answered = tokio::select! {
            biased;
            answer = &mut first => Some(answer),
            () = &mut timer => None,
        };
        let (node, answer, copies) = match (answered, route) {
            (Some(answer), _) => (node, Some(answer), 1),
            (None, Route::Shard(stream, shard)) if recheck_after.is_some() => {
                // Off the fast path: boxed, so that a call's future stays small.
                Box::pin(self.answer_from_any_leader(
                    (stream, shard),
                    node,
                    first.as_mut(),
                    call,
                    timer.as_mut(),
                    give_up_at,
                ))
                .await
            }
            (None, _) => (node, None, 1),
        };
        match answer {
            Some(Ok(response)) => {
                self.inner.nodes.mark_answered(&node);
                self.after_success(route, &node, response.metadata()).await;
                // A node that sent the call on to two leaders sent a copy of its own.
                let resent = response.metadata().contains_key(RESENT_HEADER);
                Attempt {
                    result: Ok(response.into_inner()),
                    sent: true,
                    copies: copies + u32::from(resent),
                }
            }
            Some(Err(status)) => {
                let e = ClientError::from_status(&status, &node.address);
                self.note_failure(&node, &status, &e);
                if e.is_retryable() {
                    self.mark_stale(route);
                }
                Attempt {
                    result: Err(e),
                    sent: copies > 1 || !never_sent(&status),
                    copies,
                }
            }
            None => {
                self.inner.nodes.mark_failed(&node);
                self.mark_stale(route);
                Attempt {
                    result: Err(ClientError::timed_out(&node.address, timeout)),
                    sent: true,
                    copies,
                }
            }
        }
    }

    /// What a failed answer says about the node's health: a failure of the connection (not
    /// an answer of the node) makes the client skip it for a while.
    fn note_failure(&self, node: &NodeHandle, status: &tonic::Status, e: &ClientError) {
        if crate::error::came_from_node(status) {
            self.inner.nodes.mark_answered(node);
        } else if e.is_retryable() {
            self.inner.nodes.mark_failed(node);
        }
    }

    /// The rest of an attempt whose call `first`, sent to `node`, the shard's leader as far as
    /// the client knew, had no answer by the leader-answer deadline.
    ///
    /// About every [`LEADER_RECHECK_EVERY`] until `give_up_at`, the stream's shard map is
    /// asked for again from a node the call does not wait on ([`Client::recheck_map`]). When
    /// it names a leader the call was not sent to, the call goes there too. The answer is the
    /// first success of any copy, or the failure of the copy sent last (an older copy's
    /// failure is only the old leader's; the newest copy may still succeed); `None` when
    /// nothing answered by `give_up_at`. Returns the node the answer came from and how many
    /// copies were sent.
    async fn answer_from_any_leader<T, F, Fut>(
        &self,
        (stream, shard): (&str, ShardId),
        node: Arc<NodeHandle>,
        first: Pin<&mut Fut>,
        call: &mut F,
        mut timer: Pin<&mut tokio::time::Sleep>,
        give_up_at: tokio::time::Instant,
    ) -> (Arc<NodeHandle>, Option<CallAnswer<T>>, u32)
    where
        F: FnMut(Api) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        // Every copy sent, oldest first, with its call while it is unanswered.
        let mut first = Some(first);
        let mut copies: Vec<SentCopy<Fut>> = vec![(node, None)];
        let mut recheck = None;
        let mut next_recheck = tokio::time::Instant::now();
        loop {
            let now = tokio::time::Instant::now();
            if recheck.is_none() && now >= next_recheck {
                let avoid: Vec<Arc<NodeHandle>> =
                    copies.iter().map(|(n, _)| Arc::clone(n)).collect();
                recheck = Some(Box::pin(self.recheck_map(stream, avoid)));
                next_recheck = now + LEADER_RECHECK_EVERY;
            }
            // The timer wakes the wait for the next check (none while one is under way: its
            // end wakes it) or for the request timeout.
            let wake = match recheck {
                None => next_recheck.min(give_up_at),
                Some(_) => give_up_at,
            };
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            let event = std::future::poll_fn(|cx| {
                if let Some(f) = first.as_mut()
                    && let Poll::Ready(answer) = f.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Answer(0, answer));
                }
                for (i, (_, call)) in copies.iter_mut().enumerate().skip(1) {
                    if let Some(f) = call
                        && let Poll::Ready(answer) = f.as_mut().poll(cx)
                    {
                        return Poll::Ready(Event::Answer(i, answer));
                    }
                }
                if let Some(r) = recheck.as_mut()
                    && let Poll::Ready(map) = r.as_mut().poll(cx)
                {
                    return Poll::Ready(Event::Map(map));
                }
                timer.as_mut().poll(cx).map(|()| Event::Tick)
            })
            .await;
            match event {
                Event::Answer(i, answer) => {
                    if i == 0 {
                        first = None;
                    } else {
                        copies[i].1 = None;
                    }
                    let newest = i + 1 == copies.len();
                    match answer {
                        Err(status) if !newest => {
                            let e = ClientError::from_status(&status, &copies[i].0.address);
                            self.note_failure(&copies[i].0, &status, &e);
                            tracing::debug!(%shard, "an older copy of a call failed: {e}");
                        }
                        answer => {
                            let sent = copies.len() as u32;
                            return (Arc::clone(&copies[i].0), Some(answer), sent);
                        }
                    }
                }
                Event::Map(map) => {
                    recheck = None;
                    let sent: Vec<&NodeHandle> = copies.iter().map(|(n, _)| &**n).collect();
                    if let Some(leader) = map.and_then(|m| self.new_leader(&m, shard, &sent)) {
                        tracing::debug!(
                            %shard,
                            from = %copies[copies.len() - 1].0.address,
                            to = %leader.address,
                            "no answer from the shard's leader and another leads it now; \
                             sending the call there too"
                        );
                        let call = Box::pin(call(self.api(&leader)));
                        copies.push((leader, Some(call)));
                    }
                }
                Event::Tick if tokio::time::Instant::now() >= give_up_at => {
                    // The newest copy is unanswered (its answer would have ended the wait):
                    // the caller marks its node; older copies still unanswered are marked here.
                    let sent = copies.len() as u32;
                    let (newest, _) = copies.pop().expect("the first copy is always there");
                    for (i, (node, call)) in copies.iter().enumerate() {
                        let unanswered = if i == 0 {
                            first.is_some()
                        } else {
                            call.is_some()
                        };
                        if unanswered {
                            self.inner.nodes.mark_failed(node);
                        }
                    }
                    return (newest, None, sent);
                }
                Event::Tick => {}
            }
        }
    }

    /// The shard's leader in `map`, when it is a known node that none of `sent` is.
    fn new_leader(
        &self,
        map: &ShardMap,
        shard: ShardId,
        sent: &[&NodeHandle],
    ) -> Option<Arc<NodeHandle>> {
        let leader = self.inner.nodes.member(map.leader_of(shard)?)?;
        (!sent.iter().any(|n| n.is(&leader))).then_some(leader)
    }

    /// The stream's shard map as a node other than those in `avoid` (the nodes a call waits
    /// on) sees it now: one `DescribeStream` for all the calls that wait (a map described
    /// less than [`LEADER_RECHECK_EVERY`] ago is taken as it is). Bypasses the throttle of
    /// [`Client::routing_map`], whose refresh may itself be waiting on the silent node. `None`
    /// when no other node could be asked.
    async fn recheck_map(
        &self,
        stream: &str,
        avoid: Vec<Arc<NodeHandle>>,
    ) -> Option<Arc<ShardMap>> {
        let _one_at_a_time = self.inner.map_recheck.lock().await;
        let fresh = |c: &CachedMap| c.described.elapsed() < LEADER_RECHECK_EVERY;
        if let Some(cached) = self.lock_maps().get(stream).filter(|c| fresh(c)) {
            return Some(Arc::clone(&cached.map));
        }
        let node = self.inner.nodes.pick_other(&avoid)?;
        let request = v1::DescribeStreamRequest {
            stream_name: stream.to_string(),
        };
        let mut stub = self.api(&node).stream();
        let describe = stub.describe_stream(request);
        match tokio::time::timeout(LEADER_RECHECK_TIMEOUT, describe).await {
            Ok(Ok(reply)) => {
                self.inner.nodes.mark_answered(&node);
                match description_of(reply.into_inner().stream) {
                    Ok(desc) => self.remember_map(stream, &desc),
                    Err(e) => tracing::debug!(stream, "could not check the shard map: {e}"),
                }
            }
            Ok(Err(status)) => {
                let e = ClientError::from_status(&status, &node.address);
                self.note_failure(&node, &status, &e);
                tracing::debug!(stream, "could not check the shard map: {e}");
            }
            Err(_) => {
                self.inner.nodes.mark_failed(&node);
                tracing::debug!(stream, node = %node.address, "could not check the shard map: timed out");
            }
        }
        self.cached_map(stream)
    }

    /// A stub factory for `node`'s channel.
    fn api(&self, node: &NodeHandle) -> Api {
        Api {
            channel: node.channel.clone(),
            max_decode: self.inner.config.max_message_bytes,
        }
    }

    /// Learns from a successful answer: a node that had to forward a shard's call names the
    /// node that served it, which is the shard's leader now.
    pub(super) async fn after_success(
        &self,
        route: Route<'_>,
        node: &NodeHandle,
        metadata: &tonic::metadata::MetadataMap,
    ) {
        // The header names the serving node by id; an address is understood as well.
        let Some(served_by) = metadata
            .get(FORWARDED_TO_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let v = v.trim();
                v.parse::<u64>()
                    .ok()
                    .or_else(|| self.inner.nodes.id_of_address(v))
            })
        else {
            return;
        };
        let Route::Shard(stream, shard) = route else {
            return;
        };
        if node.id == Some(served_by) {
            return;
        }
        tracing::debug!(%shard, served_by, "call was forwarded; updating the leader hint");
        if let Some(cached) = self.lock_maps().get_mut(stream) {
            let mut map = (*cached.map).clone();
            if map.set_leader(shard, served_by) {
                cached.map = Arc::new(map);
            }
            cached.stale = true;
        }
        if !self.inner.nodes.knows(served_by) {
            self.refresh_nodes().await;
        }
    }

    /// Makes the next routing decision for `stream` ask for its shard map again.
    pub(crate) fn mark_map_stale(&self, stream: &str) {
        self.mark_stale(Route::Shard(stream, ShardId(0)));
    }

    pub(super) fn mark_stale(&self, route: Route<'_>) {
        if let Route::Shard(stream, _) = route
            && let Some(cached) = self.lock_maps().get_mut(stream)
        {
            cached.stale = true;
        }
    }

    pub(super) fn lock_maps(&self) -> std::sync::MutexGuard<'_, HashMap<String, CachedMap>> {
        self.inner
            .maps
            .lock()
            .expect("shard map lock is never poisoned")
    }

    pub(crate) fn cached_map(&self, stream: &str) -> Option<Arc<ShardMap>> {
        self.lock_maps().get(stream).map(|c| Arc::clone(&c.map))
    }

    pub(super) fn remember_map(&self, stream: &str, desc: &v1::StreamDescription) {
        match ShardMap::from_description(desc) {
            Ok(map) => {
                self.lock_maps().insert(
                    stream.to_string(),
                    CachedMap {
                        map: Arc::new(map),
                        fetched: Instant::now(),
                        described: Instant::now(),
                        stale: false,
                    },
                );
            }
            Err(e) => tracing::debug!(stream, "not caching the shard map: {e}"),
        }
    }

    /// Makes sure a shard map is cached for `stream`, if one can be had with one call.
    pub(crate) async fn ensure_map(&self, stream: &str) {
        self.routing_map(stream).await;
    }

    /// The stream's shard map for routing: the cached one, refreshed with one
    /// `DescribeStream` when missing, stale (at most every 250 ms) or older than 10 s, by one
    /// caller at a time while the others use what is cached. `None` when no map could be had: then calls go to
    /// any node, which forwards.
    pub(crate) async fn routing_map(&self, stream: &str) -> Option<Arc<ShardMap>> {
        let due = |c: Option<&CachedMap>| match c {
            None => true,
            Some(c) => {
                let age = c.fetched.elapsed();
                (c.stale && age >= MIN_MAP_REFRESH) || age >= MAX_MAP_AGE
            }
        };
        {
            let maps = self.lock_maps();
            let cached = maps.get(stream);
            if !due(cached) {
                return cached.map(|c| Arc::clone(&c.map));
            }
        }
        let Ok(_guard) = self.inner.map_refresh.try_lock() else {
            return self.cached_map(stream);
        };
        if !due(self.lock_maps().get(stream)) {
            return self.cached_map(stream);
        }
        match self
            .describe_once_or_retry(stream, Retry::IfNeverSent)
            .await
        {
            Ok(desc) => {
                self.remember_map(stream, &desc);
                let unknown_leader = desc
                    .shards
                    .iter()
                    .any(|s| s.leader != 0 && !self.inner.nodes.knows(s.leader));
                if unknown_leader && self.inner.config.discover_nodes {
                    self.refresh_nodes().await;
                }
            }
            Err(e) => {
                tracing::debug!(stream, "could not refresh the shard map: {e}");
                if let Some(cached) = self.lock_maps().get_mut(stream) {
                    cached.fetched = Instant::now();
                }
            }
        }
        self.cached_map(stream)
    }

    pub(super) async fn describe_once_or_retry(
        &self,
        name: &str,
        retry: Retry,
    ) -> Result<v1::StreamDescription, ClientError> {
        let request = v1::DescribeStreamRequest {
            stream_name: name.to_string(),
        };
        let reply = self
            .call(Route::Any, retry, |ch| {
                let request = request.clone();
                async move { ch.stream().describe_stream(request).await }
            })
            .await?;
        description_of(reply.value.stream)
    }

    /// Asks for the cluster's members again, at most once a second, by one caller at a time.
    pub(super) async fn refresh_nodes(&self) {
        let Ok(mut last) = self.inner.node_refresh.try_lock() else {
            return;
        };
        if last.is_some_and(|t| t.elapsed() < MIN_NODE_REFRESH) {
            return;
        }
        *last = Some(Instant::now());
        // Straight to a node rather than through `attempt`, whose success path calls this.
        let node = self.inner.nodes.pick(None);
        let mut admin = self.api(&node).admin();
        let request = admin.cluster_status(v1::ClusterStatusRequest { local_only: false });
        match tokio::time::timeout(self.inner.config.request_timeout, request).await {
            Ok(Ok(status)) => self.inner.nodes.update(status.get_ref()),
            Ok(Err(status)) => tracing::debug!(
                "could not refresh the cluster's members: {}",
                ClientError::from_status(&status, &node.address)
            ),
            Err(_) => tracing::debug!("could not refresh the cluster's members: timed out"),
        }
    }
}

/// A node's channel with the client's message-size limit, ready to make stubs.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    channel: Channel,
    max_decode: usize,
}

impl Api {
    pub(crate) fn stream(self) -> StreamServiceClient<Channel> {
        StreamServiceClient::new(self.channel).max_decoding_message_size(self.max_decode)
    }

    /// `PutRecords` over entries shared with the caller (see [`SharedPutRecords`]).
    pub(crate) async fn put_records(
        self,
        call: SharedPutRecords,
    ) -> Result<tonic::Response<v1::PutRecordsResponse>, tonic::Status> {
        crate::put_call::put_records(self.channel, self.max_decode, call).await
    }

    pub(crate) fn admin(self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel).max_decoding_message_size(self.max_decode)
    }
}
