//! [`Producer`]: batches records per shard and writes them with `PutRecords`, a few calls in
//! flight per shard, sending failed records again while their error is retryable.
//!
//! One task per producer owns the queues. [`Producer::send`] only hands it a record; the
//! task routes the record to its shard's queue, starts a call when a batch is full, when the
//! oldest record has lingered long enough or when a flush asks for it, and answers each
//! record's future when its call completes. The calls run inside that task, so ending it
//! ([`Producer::close`], or dropping the producer) leaves nothing running.
//!
//! A producer made by [`Client::producer_with_acks`] also takes records with
//! [`Producer::send_tagged`]: their answers come through its [`Acks`], one call's records at a
//! time, instead of through a future per record. A writer of many small records saves a
//! channel, a future and a wake-up per record that way.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use riptide_proto::ShardId;
use riptide_proto::v1::PutRecordsEntry;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ClientError;
use crate::batching::{
    BatchLimits, MAX_BYTES_PER_CALL, MAX_RECORDS_PER_CALL, ShardQueue, record_size,
};
use crate::client::{Client, PutResult};
use crate::routing::ShardMap;

/// How a [`Producer`] batches and retries.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long the first record of a batch waits for more before the batch is sent
    /// (default 5 ms).
    pub linger: Duration,
    /// Most records per `PutRecords` call (default and maximum 500).
    pub max_batch_records: usize,
    /// Most bytes (data plus partition keys) per call (default and maximum 5 MiB).
    pub max_batch_bytes: usize,
    /// Most calls in flight per shard (default 1). While a shard's call is out, its records
    /// gather into the next batch, so a busy producer sends fewer and larger calls, and each
    /// call costs the cluster a Raft entry, a WAL write and an fsync on every replica. Above
    /// 1, calls of one shard may commit in another order than they were sent (and retried
    /// records always land later), so records of one partition key keep their order only
    /// with 1. One call carries at most 500 records, so a producer writes at most 500
    /// records per shard per round trip; raise this when the round trip is long (another
    /// region) and one producer must write faster than that to one shard.
    pub max_in_flight: usize,
    /// Most sends of one record before its retryable error is given up on (default 10); the
    /// client's retry deadline also bounds them.
    pub max_attempts: u32,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        Self {
            linger: Duration::from_millis(5),
            max_batch_records: MAX_RECORDS_PER_CALL,
            max_batch_bytes: MAX_BYTES_PER_CALL,
            max_in_flight: 1,
            max_attempts: 10,
        }
    }
}

/// Counters of a [`Producer`] since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Records acknowledged.
    pub records_acked: u64,
    /// Records that failed for good.
    pub records_failed: u64,
    /// Acknowledged records that took more than one send: each may have been written twice.
    pub records_retried: u64,
    /// `PutRecords` calls made.
    pub calls: u64,
    /// Records handed to [`Producer::send`] and not answered yet.
    pub pending: u64,
}

#[derive(Debug, Default)]
struct Counters {
    acked: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    calls: AtomicU64,
    pending: AtomicU64,
}

impl Counters {
    fn record(&self, result: &Result<PutResult, ClientError>) {
        match result {
            Ok(r) => {
                self.acked.fetch_add(1, Ordering::Relaxed);
                if r.attempts > 1 {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Where a record's answer goes.
enum Reply {
    /// To the future [`Producer::send`] returned.
    Future(oneshot::Sender<Result<PutResult, ClientError>>),
    /// To the producer's [`Acks`], with this tag.
    Tagged(u64),
}

struct Pending {
    entry: PutRecordsEntry,
    reply: Reply,
}

/// The answer to a record sent with [`Producer::send_tagged`].
#[derive(Debug)]
pub struct TaggedAck {
    /// The tag the record was sent with.
    pub tag: u64,
    pub result: Result<PutResult, ClientError>,
}

type AckSender = mpsc::UnboundedSender<Vec<TaggedAck>>;

/// The answers to the records a producer took with [`Producer::send_tagged`], a batch at a
/// time (the records of one `PutRecords` call, or one record refused before any call). Made
/// with the producer by [`Client::producer_with_acks`].
#[derive(Debug)]
pub struct Acks {
    rx: mpsc::UnboundedReceiver<Vec<TaggedAck>>,
}

impl Acks {
    /// The next batch of answers; `None` once the producer has stopped and every answer was
    /// delivered. Records of a producer that was dropped rather than closed may stay
    /// unanswered: they were not acknowledged.
    pub async fn recv(&mut self) -> Option<Vec<TaggedAck>> {
        self.rx.recv().await
    }

    /// The next batch of answers if one is there, without waiting.
    pub fn try_recv(&mut self) -> Option<Vec<TaggedAck>> {
        self.rx.try_recv().ok()
    }

    /// [`Acks::recv`] for code that polls: `Ready(None)` once every answer was delivered.
    pub fn poll_recv(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Vec<TaggedAck>>> {
        self.rx.poll_recv(cx)
    }
}

/// Answers `replies` with `results`: each future at once, the tagged ones in one batch.
fn answer(
    replies: impl IntoIterator<Item = (Reply, Result<PutResult, ClientError>)>,
    counters: &Counters,
    acks: Option<&AckSender>,
) {
    let mut tagged = Vec::new();
    for (reply, result) in replies {
        counters.record(&result);
        match reply {
            Reply::Future(tx) => {
                let _ = tx.send(result);
            }
            Reply::Tagged(tag) => tagged.push(TaggedAck { tag, result }),
        }
    }
    if let Some(acks) = acks
        && !tagged.is_empty()
    {
        let _ = acks.send(tagged);
    }
}

enum Command {
    Record(Pending),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// An entry routed by its partition key.
fn entry(partition_key: impl Into<String>, data: impl Into<Bytes>) -> PutRecordsEntry {
    PutRecordsEntry {
        data: data.into(),
        partition_key: partition_key.into(),
        explicit_hash_key: None,
    }
}

fn closed() -> ClientError {
    ClientError::producer_closed()
}

/// A batching writer to one stream. Made by [`Client::producer`].
///
/// Records sent with one partition key go to one shard and, with `max_in_flight` 1 (the
/// default) and no retries, are written in the order sent.
#[derive(Debug)]
pub struct Producer {
    stream: String,
    commands: mpsc::UnboundedSender<Command>,
    counters: Arc<Counters>,
    task: Option<JoinHandle<()>>,
    /// Whether [`Producer::send_tagged`] has an [`Acks`] to answer to.
    tagged: bool,
}

impl Producer {
    pub(crate) fn start(client: Client, stream: String, config: ProducerConfig) -> Self {
        Self::start_with(client, stream, config, None)
    }

    /// A producer whose tagged records are answered through the returned [`Acks`].
    pub(crate) fn start_with_acks(
        client: Client,
        stream: String,
        config: ProducerConfig,
    ) -> (Self, Acks) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self::start_with(client, stream, config, Some(tx)),
            Acks { rx },
        )
    }

    fn start_with(
        client: Client,
        stream: String,
        config: ProducerConfig,
        acks: Option<AckSender>,
    ) -> Self {
        let tagged = acks.is_some();
        let (commands, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(Counters::default());
        let dispatcher = Dispatcher {
            limits: BatchLimits::new(config.max_batch_records, config.max_batch_bytes),
            config: ProducerConfig {
                max_in_flight: config.max_in_flight.max(1),
                max_attempts: config.max_attempts.max(1),
                ..config
            },
            client,
            stream: stream.clone(),
            counters: Arc::clone(&counters),
            map: None,
            map_tried: None,
            queues: HashMap::new(),
            in_flight: HashMap::new(),
            next_id: 0,
            outstanding: BTreeSet::new(),
            flush_waiters: Vec::new(),
            acks,
        };
        let task = tokio::spawn(dispatcher.run(rx));
        Self {
            stream,
            commands,
            counters,
            task: Some(task),
            tagged,
        }
    }

    /// The stream this producer writes to.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Queues a record; the future resolves when it is acknowledged (committed on a majority
    /// of its shard's replicas) or has failed for good. The record is queued at once, even if
    /// the future is never polled.
    pub fn send(
        &self,
        partition_key: impl Into<String>,
        data: impl Into<Bytes>,
    ) -> impl Future<Output = Result<PutResult, ClientError>> + Send + 'static {
        self.send_entry(entry(partition_key, data))
    }

    /// Like [`Producer::send`], for an entry that may carry an explicit hash key.
    pub fn send_entry(
        &self,
        entry: PutRecordsEntry,
    ) -> impl Future<Output = Result<PutResult, ClientError>> + Send + 'static {
        let (reply, answer) = oneshot::channel();
        let queued = self.queue(entry, Reply::Future(reply));
        async move {
            if !queued {
                return Err(closed());
            }
            answer.await.unwrap_or_else(|_| Err(closed()))
        }
    }

    /// Queues a record whose answer comes through the producer's [`Acks`] (see
    /// [`Client::producer_with_acks`]), with `tag` to tell it by. Fails at once, queuing
    /// nothing, on a producer made without [`Acks`] or after it was closed.
    pub fn send_tagged(
        &self,
        partition_key: impl Into<String>,
        data: impl Into<Bytes>,
        tag: u64,
    ) -> Result<(), ClientError> {
        if !self.tagged {
            return Err(ClientError::invalid(
                "send_tagged",
                "this producer has no Acks to answer to; make it with \
                 Client::producer_with_acks",
            ));
        }
        if self.queue(entry(partition_key, data), Reply::Tagged(tag)) {
            Ok(())
        } else {
            Err(closed())
        }
    }

    /// Hands a record to the task; false when the task has stopped.
    fn queue(&self, entry: PutRecordsEntry, reply: Reply) -> bool {
        self.counters.pending.fetch_add(1, Ordering::Relaxed);
        let queued = self
            .commands
            .send(Command::Record(Pending { entry, reply }))
            .is_ok();
        if !queued {
            self.counters.pending.fetch_sub(1, Ordering::Relaxed);
        }
        queued
    }

    /// Sends every queued record now and waits until all records sent before this call are
    /// answered.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Flushes, then stops the producer's task and waits for it to end.
    pub async fn close(mut self) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!("producer task panicked: {e}");
        }
    }

    /// Counters since the producer started.
    pub fn stats(&self) -> ProducerStats {
        let c = &self.counters;
        ProducerStats {
            records_acked: c.acked.load(Ordering::Relaxed),
            records_failed: c.failed.load(Ordering::Relaxed),
            records_retried: c.retried.load(Ordering::Relaxed),
            calls: c.calls.load(Ordering::Relaxed),
            pending: c.pending.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Producer {
    /// Stops the task at once: records not yet answered fail with "the producer is closed".
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Most commands the producer's task takes in one pass of its loop before it starts the calls
/// that are ready.
const MAX_COMMANDS_PER_PASS: usize = 256;

/// A queue key: the shard, or `None` for records routed by whichever node receives them.
type QueueKey = Option<ShardId>;

type Call = Pin<Box<dyn Future<Output = (QueueKey, Vec<u64>)> + Send>>;

struct Dispatcher {
    client: Client,
    stream: String,
    config: ProducerConfig,
    limits: BatchLimits,
    counters: Arc<Counters>,
    map: Option<Arc<ShardMap>>,
    map_tried: Option<Instant>,
    queues: HashMap<QueueKey, ShardQueue<(u64, Pending)>>,
    in_flight: HashMap<QueueKey, usize>,
    next_id: u64,
    /// Ids of records received and not yet answered.
    outstanding: BTreeSet<u64>,
    /// Flushes waiting for every record with an id below theirs.
    flush_waiters: Vec<(u64, oneshot::Sender<()>)>,
    /// Where tagged records are answered.
    acks: Option<AckSender>,
}

impl Dispatcher {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let mut calls: FuturesUnordered<Call> = FuturesUnordered::new();
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut input_open = true;
        loop {
            let flush = !input_open || !self.flush_waiters.is_empty();
            self.start_calls(&mut calls, flush);
            if !input_open && calls.is_empty() && self.queues.values().all(|q| q.is_empty()) {
                break;
            }
            let wake = self.next_linger_deadline();
            tokio::select! {
                command = commands.recv(), if input_open => {
                    let mut next = command;
                    let mut taken = 0;
                    // Commands already queued are taken in the same pass, so that a burst of
                    // records costs one round of this loop (its timer, its batch checks), not one
                    // each.
                    loop {
                        match next {
                            Some(Command::Record(pending)) => self.accept(pending).await,
                            Some(Command::Flush(tx)) => {
                                self.flush_waiters.push((self.next_id, tx));
                                self.answer_flushes();
                            }
                            Some(Command::Close(tx)) => {
                                closing = Some(tx);
                                input_open = false;
                                break;
                            }
                            None => {
                                input_open = false;
                                break;
                            }
                        }
                        taken += 1;
                        if taken == MAX_COMMANDS_PER_PASS {
                            break;
                        }
                        next = match commands.try_recv() {
                            Ok(command) => Some(command),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        };
                    }
                }
                Some((key, ids)) = calls.next(), if !calls.is_empty() => {
                    if let Some(n) = self.in_flight.get_mut(&key) {
                        *n = n.saturating_sub(1);
                    }
                    for id in ids {
                        self.outstanding.remove(&id);
                    }
                    self.answer_flushes();
                }
                _ = tokio::time::sleep_until(wake.unwrap_or_else(far_future).into()), if wake.is_some() => {}
            }
        }
        self.answer_flushes();
        if let Some(tx) = closing {
            let _ = tx.send(());
        }
    }

    /// Routes a record to its shard's queue.
    async fn accept(&mut self, pending: Pending) {
        if self.map.is_none()
            && self
                .map_tried
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            self.map_tried = Some(Instant::now());
            self.map = self.client.routing_map(&self.stream).await;
        }
        let key = match &self.map {
            Some(map) => {
                match map.route(
                    &pending.entry.partition_key,
                    pending.entry.explicit_hash_key.as_deref(),
                ) {
                    Ok(route) => route.map(|r| r.shard_id),
                    Err(e) => {
                        answer(
                            [(pending.reply, Err(e))],
                            &self.counters,
                            self.acks.as_ref(),
                        );
                        return;
                    }
                }
            }
            None => None,
        };
        let id = self.next_id;
        self.next_id += 1;
        self.outstanding.insert(id);
        let size = record_size(&pending.entry);
        self.queues
            .entry(key)
            .or_default()
            .push((id, pending), size, Instant::now());
    }

    /// Starts a call for every queue that has a batch ready and room in flight.
    fn start_calls(&mut self, calls: &mut FuturesUnordered<Call>, flush: bool) {
        let now = Instant::now();
        for (key, queue) in &mut self.queues {
            let in_flight = self.in_flight.entry(*key).or_default();
            while *in_flight < self.config.max_in_flight
                && queue.ready(now, self.config.linger, self.limits, flush)
            {
                let batch = queue.take_batch(self.limits);
                *in_flight += 1;
                calls.push(Box::pin(send_batch(
                    self.client.clone(),
                    self.stream.clone(),
                    *key,
                    batch,
                    self.config.max_attempts,
                    Arc::clone(&self.counters),
                    self.acks.clone(),
                )));
            }
        }
    }

    /// When the next waiting batch's linger ends, among queues with room in flight.
    fn next_linger_deadline(&self) -> Option<Instant> {
        self.queues
            .iter()
            .filter(|(key, _)| {
                self.in_flight.get(*key).copied().unwrap_or(0) < self.config.max_in_flight
            })
            .filter_map(|(_, q)| q.linger_deadline(self.config.linger))
            .min()
    }

    /// Answers every flush whose records have all been answered.
    fn answer_flushes(&mut self) {
        let oldest = self.outstanding.first().copied();
        let (waiting, done): (Vec<_>, Vec<_>) = std::mem::take(&mut self.flush_waiters)
            .into_iter()
            .partition(|(mark, _)| oldest.is_some_and(|o| o < *mark));
        self.flush_waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(());
        }
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Sends one batch and answers its records.
async fn send_batch(
    client: Client,
    stream: String,
    key: QueueKey,
    batch: Vec<(u64, Pending)>,
    max_attempts: u32,
    counters: Arc<Counters>,
    acks: Option<AckSender>,
) -> (QueueKey, Vec<u64>) {
    let mut ids = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    let mut entries = Vec::with_capacity(batch.len());
    for (id, pending) in batch {
        ids.push(id);
        replies.push(pending.reply);
        entries.push(pending.entry);
    }
    let (results, calls) = client
        .put_batch(&stream, key, Arc::new(entries), max_attempts)
        .await;
    counters
        .calls
        .fetch_add(u64::from(calls), Ordering::Relaxed);
    answer(replies.into_iter().zip(results), &counters, acks.as_ref());
    (key, ids)
}
