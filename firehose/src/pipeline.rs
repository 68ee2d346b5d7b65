//! One delivery stream at work: per shard, a reader that cuts batches by the buffering hints
//! and a deliverer that sends each batch through the transform to the destination. A bounded
//! channel of one batch sits between them, so a destination that is down stops the reading
//! (back-pressure) instead of filling memory; nothing is acknowledged anywhere, so records
//! not delivered are simply read again after a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use riptide_client::{Client, ClientError, SequenceNumber, ShardId, StartingPosition, v1};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{self, Delivery, Destination};
use crate::format::{self, Failed, Item};
use crate::naming::{BatchRange, ResumePoint};
use crate::retry::Retrier;
use crate::sink::http::{self, HttpSink};
use crate::sink::objects::{Layout, Store, StoreError};
use crate::sink::postgres::{PgError, PgSink};
use crate::status::Stats;
use crate::template::Template;
use crate::transform::Transformer;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("stream {stream}: {source}")]
    Source { stream: String, source: ClientError },
    #[error("shard {0} is not a shard of the stream")]
    NoSuchShard(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Postgres(#[from] PgError),
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("{0}")]
    Transform(#[from] crate::transform::TransformError),
    #[error("{0}")]
    Format(#[from] format::FormatError),
    #[error("record from the stream has a bad sequence number: {0}")]
    BadRecord(String),
}

/// A batch cut by the reader.
#[derive(Debug)]
pub struct Batch {
    pub range: BatchRange,
    pub items: Vec<Item>,
}

/// Decides where batches are cut: by size or age, whichever comes first, or exactly at a
/// given sequence number when a batch is repeated after a restart.
#[derive(Debug)]
pub struct Cutter {
    max_bytes: usize,
    max_age: Duration,
    cut_at: Option<SequenceNumber>,
    items: Vec<Item>,
    bytes: usize,
    opened: Option<Instant>,
}

impl Cutter {
    pub fn new(max_bytes: usize, max_age: Duration, cut_at: Option<SequenceNumber>) -> Self {
        Self {
            max_bytes,
            max_age,
            cut_at,
            items: Vec::new(),
            bytes: 0,
            opened: None,
        }
    }

    /// Adds a record; returns the batches it completes.
    pub fn push(&mut self, item: Item, now: Instant) -> Vec<Batch> {
        let mut out = Vec::new();
        if let Some(cut) = self.cut_at {
            if item.seq > cut {
                // The repeated batch ended at a record that is gone: end it before this one.
                out.extend(self.take());
                self.cut_at = None;
            }
        } else if !self.items.is_empty() && self.bytes + item.data.len() > self.max_bytes {
            out.extend(self.take());
        }
        let seq = item.seq;
        self.bytes += item.data.len();
        self.items.push(item);
        self.opened.get_or_insert(now);
        if let Some(cut) = self.cut_at {
            if seq == cut {
                out.extend(self.take());
                self.cut_at = None;
            }
        } else if self.bytes >= self.max_bytes {
            out.extend(self.take());
        }
        out
    }

    /// The buffered batch, if its interval has passed.
    pub fn due(&mut self, now: Instant) -> Option<Batch> {
        if self.cut_at.is_some() {
            return None;
        }
        match self.opened {
            Some(t) if now.duration_since(t) >= self.max_age => self.take(),
            _ => None,
        }
    }

    /// When the buffered batch falls due.
    pub fn due_at(&self) -> Option<Instant> {
        self.opened.map(|t| t + self.max_age)
    }

    /// Whatever is buffered, as a batch.
    pub fn take(&mut self) -> Option<Batch> {
        let first = self.items.first()?.seq;
        let last = self.items.last()?.seq;
        self.opened = None;
        self.bytes = 0;
        Some(Batch {
            range: BatchRange { first, last },
            items: std::mem::take(&mut self.items),
        })
    }

    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.items.len()
    }
}

/// A shard's destination.
enum ShardSink {
    Objects {
        store: Store,
        layout: Arc<Layout>,
    },
    Postgres {
        pg: Box<PgSink>,
        checkpoint: Option<SequenceNumber>,
    },
    Http {
        sink: HttpSink,
        state_path: PathBuf,
        state: http::HttpState,
        errors: Store,
    },
}

/// What every shard task of a delivery shares.
struct Shared {
    client: Client,
    delivery: Delivery,
    state_dir: PathBuf,
    stats: Arc<Stats>,
    transformer: Option<Transformer>,
    store: Option<Store>,
    layout: Option<Arc<Layout>>,
    http: Option<HttpSink>,
}

/// Runs one delivery stream until shutdown (or until all its shards are closed).
pub async fn run_delivery(
    client: Client,
    delivery: Delivery,
    state_dir: PathBuf,
    stats: Arc<Stats>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let stream = delivery.stream.clone();
    let shards = {
        let mut wait = Retrier::new("list shards", None, &stats);
        loop {
            match client.list_shards(&stream).await {
                Ok(s) => break s,
                Err(e) if e.is_retryable() => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    wait.wait(&e).await;
                }
                Err(source) => return Err(PipelineError::Source { stream, source }),
            }
        }
    };
    let mut ids = Vec::new();
    for s in &shards {
        let id = config::parse_shard(&s.shard_id)
            .ok_or_else(|| PipelineError::NoSuchShard(s.shard_id.clone()))?;
        ids.push(id);
    }
    if let Some(wanted) = &delivery.shards {
        let mut chosen = Vec::new();
        for w in wanted {
            let id = config::parse_shard(w).ok_or_else(|| PipelineError::NoSuchShard(w.clone()))?;
            if !ids.contains(&id) {
                return Err(PipelineError::NoSuchShard(w.clone()));
            }
            chosen.push(id);
        }
        ids = chosen;
    }
    let (store, layout, http) = match &delivery.destination {
        d @ (Destination::Directory {
            prefix,
            error_prefix,
            ..
        }
        | Destination::S3 {
            prefix,
            error_prefix,
            ..
        }) => {
            let layout = Layout {
                stream: stream.clone(),
                prefix: Template::parse(prefix).expect("validated with the configuration"),
                error_prefix: error_prefix.clone(),
                format: delivery.format.clone(),
            };
            (
                Some(Store::from_destination(d)?),
                Some(Arc::new(layout)),
                None,
            )
        }
        Destination::Http {
            url,
            access_key,
            timeout_seconds,
            error_directory,
        } => (
            Some(Store::Directory(error_directory.clone())),
            None,
            Some(HttpSink::new(
                url,
                access_key.as_deref(),
                Duration::from_secs_f64(*timeout_seconds),
            )?),
        ),
        Destination::Postgres { .. } => (None, None, None),
    };
    let transformer = match &delivery.transform {
        Some(t) => Some(Transformer::new(
            &t.url,
            Duration::from_secs_f64(t.timeout_seconds),
        )?),
        None => None,
    };
    if let Destination::Postgres {
        url,
        table,
        columns,
        checkpoint_table,
        error_table,
    } = &delivery.destination
    {
        let mut pg = PgSink::new(
            url,
            &delivery.name,
            table,
            columns,
            checkpoint_table,
            error_table.as_deref(),
        );
        let mut wait = Retrier::new("prepare postgres tables", None, &stats);
        while let Err(e) = pg.prepare().await {
            if *shutdown.borrow() {
                return Ok(());
            }
            wait.wait(&e).await;
        }
    }
    tracing::info!(delivery = %delivery.name, stream = %stream, shards = ids.len(), "delivery started");
    let shared = Arc::new(Shared {
        client,
        delivery,
        state_dir,
        stats,
        transformer,
        store,
        layout,
        http,
    });
    let mut tasks = tokio::task::JoinSet::new();
    for shard in ids {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let r = run_shard(&shared, shard, shutdown).await;
            if let Err(e) = &r {
                tracing::error!(delivery = %shared.delivery.name, shard = %shard, "shard delivery stopped: {e:#}");
            }
            r
        });
    }
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => tracing::error!("shard task failed: {e}"),
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn shard_sink(shared: &Shared, shard: ShardId) -> ShardSink {
    match &shared.delivery.destination {
        Destination::Directory { .. } | Destination::S3 { .. } => ShardSink::Objects {
            store: shared
                .store
                .clone()
                .expect("object destinations have a store"),
            layout: shared
                .layout
                .clone()
                .expect("object destinations have a layout"),
        },
        Destination::Http { .. } => ShardSink::Http {
            sink: shared.http.clone().expect("http destinations have a sink"),
            state_path: http::state_path(&shared.state_dir, &shared.delivery.name, shard),
            state: http::HttpState::default(),
            errors: shared
                .store
                .clone()
                .expect("http destinations have an error store"),
        },
        Destination::Postgres {
            url,
            table,
            columns,
            checkpoint_table,
            error_table,
        } => ShardSink::Postgres {
            pg: Box::new(PgSink::new(
                url,
                &shared.delivery.name,
                table,
                columns,
                checkpoint_table,
                error_table.as_deref(),
            )),
            checkpoint: None,
        },
    }
}

impl ShardSink {
    /// Where the shard resumes, from what the destination already holds.
    async fn resume_point(&mut self, shard: ShardId) -> Result<Option<ResumePoint>, PipelineError> {
        let after = |s: Option<SequenceNumber>| {
            s.map(|s| ResumePoint {
                from: StartingPosition::AfterSequence(s),
                cut_at: None,
            })
        };
        Ok(match self {
            ShardSink::Objects { store, layout } => layout.resume_point(store, shard).await?,
            ShardSink::Postgres { pg, checkpoint } => {
                *checkpoint = pg.checkpoint(shard).await?;
                after(*checkpoint)
            }
            ShardSink::Http {
                state_path, state, ..
            } => {
                *state = http::read_state(state_path).await?;
                state.resume_point()
            }
        })
    }
}

async fn run_shard(
    shared: &Arc<Shared>,
    shard: ShardId,
    shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let mut sink = shard_sink(shared, shard);
    let stats = &shared.stats;
    let resume = {
        let mut wait = Retrier::new("find where delivery left off", None, stats);
        loop {
            match sink.resume_point(shard).await {
                Ok(r) => break r,
                Err(PipelineError::Postgres(e)) if e.is_fatal() => return Err(e.into()),
                Err(e) => {
                    if *shutdown.borrow() {
                        return Ok(());
                    }
                    wait.wait(&e).await;
                }
            }
        }
    };
    let start = match resume {
        Some(r) => r,
        None => ResumePoint {
            from: shared
                .delivery
                .start
                .parse()
                .expect("validated with the configuration"),
            cut_at: None,
        },
    };
    tracing::info!(delivery = %shared.delivery.name, shard = %shard, from = %start.from, "shard delivery starts");
    let (tx, mut rx) = mpsc::channel::<Batch>(1);
    let reader = tokio::spawn(read_shard(shared.clone(), shard, start, tx, shutdown));
    let shard_name = shard.to_string();
    while let Some(batch) = rx.recv().await {
        let records = batch.items.len() as u64;
        let last = batch.range.last;
        deliver(shared, &mut sink, shard, batch).await?;
        stats.update_shard(&shard_name, |s| {
            s.pending_records = s.pending_records.saturating_sub(records);
            s.delivered_through = Some(last.to_string());
        });
    }
    match reader.await {
        Ok(r) => r,
        Err(e) if e.is_cancelled() => Ok(()),
        Err(e) => {
            tracing::error!(shard = %shard, "reader task failed: {e}");
            Ok(())
        }
    }
}

fn to_item(r: v1::Record) -> Result<Item, PipelineError> {
    let seq = r
        .sequence()
        .map_err(|e| PipelineError::BadRecord(e.to_string()))?;
    Ok(Item {
        seq,
        partition_key: r.partition_key,
        arrival_ms: r.approximate_arrival_timestamp_ms,
        data: Vec::from(r.data),
    })
}

/// Reads the shard and sends batches; stops on shutdown after sending what is buffered.
async fn read_shard(
    shared: Arc<Shared>,
    shard: ShardId,
    start: ResumePoint,
    tx: mpsc::Sender<Batch>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), PipelineError> {
    let d = &shared.delivery;
    let mut consumer = shared
        .client
        .consumer(&d.stream, shard, start.from)
        .with_limit(10_000)
        .with_poll_interval(Duration::from_millis(100));
    let mut cutter = Cutter::new(d.buffer.size_bytes(), d.buffer.interval(), start.cut_at);
    let shard_name = shard.to_string();
    let stats = &shared.stats;
    let mut failures = Retrier::new("read shard", None, stats);
    let send = |batch: Batch| {
        let tx = tx.clone();
        async move { tx.send(batch).await.is_ok() }
    };
    loop {
        if *shutdown.borrow() {
            break;
        }
        let wake = cutter.due_at();
        let read = tokio::select! {
            _ = shutdown.changed() => break,
            _ = sleep_until_opt(wake) => None,
            r = consumer.next_batch() => Some(r),
        };
        let now = Instant::now();
        match read {
            None => {}
            Some(Ok(records)) => {
                failures = Retrier::new("read shard", None, stats);
                let n = records.len() as u64;
                let lag = consumer.millis_behind_latest();
                stats.update_shard(&shard_name, |s| {
                    s.pending_records += n;
                    s.lag_ms = lag;
                });
                for r in records {
                    for batch in cutter.push(to_item(r)?, now) {
                        if !send(batch).await {
                            return Ok(());
                        }
                    }
                }
            }
            Some(Err(e)) => {
                tracing::warn!(shard = %shard, "reading the shard failed: {e}");
                tokio::select! {
                    _ = shutdown.changed() => break,
                    _ = failures.wait(&e) => {}
                }
            }
        }
        if let Some(batch) = cutter.due(Instant::now())
            && !send(batch).await
        {
            return Ok(());
        }
        if consumer.is_closed() {
            tracing::info!(shard = %shard, "shard is closed: delivering what is left");
            break;
        }
    }
    if let Some(batch) = cutter.take() {
        let _ = send(batch).await;
    }
    Ok(())
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn failed_all(items: Vec<Item>, code: &'static str, message: &str) -> Vec<Failed> {
    items
        .into_iter()
        .map(|item| Failed {
            item,
            code,
            message: message.to_string(),
        })
        .collect()
}

/// Delivers one batch: transform, then the destination, with retries until the retry
/// duration, then the error output (retried until it works).
async fn deliver(
    shared: &Shared,
    sink: &mut ShardSink,
    shard: ShardId,
    batch: Batch,
) -> Result<(), PipelineError> {
    let d = &shared.delivery;
    let stats = &*shared.stats;
    let deadline = Some(Instant::now() + d.retry.duration());
    let range = batch.range;
    let batch_id = http::request_id(&d.name, shard, range);
    let (items, mut failed) = match &shared.transformer {
        None => (batch.items, Vec::new()),
        Some(t) => {
            let mut wait = Retrier::new("transform", deadline, stats);
            loop {
                match t.run(&batch_id, &batch.items).await {
                    Ok(out) => {
                        stats.dropped(out.dropped as u64);
                        break (out.ok, out.failed);
                    }
                    Err(e) => {
                        if !wait.wait(&e).await {
                            break (
                                Vec::new(),
                                failed_all(batch.items, "TransformFailed", &e.to_string()),
                            );
                        }
                    }
                }
            }
        }
    };
    let shard_name = shard.to_string();
    match sink {
        ShardSink::Objects { store, layout } => {
            let (objects, misfits) = layout.objects(shard, range, items)?;
            failed.extend(misfits);
            for object in objects {
                let mut wait = Retrier::new("write object", deadline, stats);
                let len = object.bytes.len() as u64;
                loop {
                    match store.put(&object.key, object.bytes.clone()).await {
                        Ok(()) => {
                            tracing::debug!(key = %object.key, records = object.items.len(), "object written");
                            stats.delivered(object.items.len() as u64, len, 1);
                            break;
                        }
                        Err(e) => {
                            if !wait.wait(&e).await {
                                failed.extend(failed_all(
                                    object.items,
                                    "DeliveryFailed",
                                    &e.to_string(),
                                ));
                                break;
                            }
                        }
                    }
                }
            }
            if !failed.is_empty() {
                let key = layout.error_key(shard, range);
                write_errors(store, &key, &d.name, &shard_name, &failed, stats).await;
            }
        }
        ShardSink::Postgres { pg, checkpoint } => {
            let (rows, kept, misfits) = pg.rows(shard, items);
            failed.extend(misfits);
            let mut wait = Retrier::new("copy into postgres", deadline, stats);
            let mut rows = rows;
            let mut kept = kept;
            let mut bytes = rows.len() as u64;
            let mut final_wait = Retrier::new("write postgres error table", None, stats);
            loop {
                match pg
                    .deliver(shard, *checkpoint, range.last, &rows, &failed)
                    .await
                {
                    Ok(()) => break,
                    Err(e) if e.is_fatal() => return Err(e.into()),
                    Err(e) => {
                        if rows.is_empty() {
                            // Only the error table is left to write: never drop it.
                            final_wait.wait(&e).await;
                        } else if !wait.wait(&e).await {
                            failed.extend(failed_all(
                                std::mem::take(&mut kept),
                                "DeliveryFailed",
                                &e.to_string(),
                            ));
                            rows.clear();
                            bytes = 0;
                        }
                    }
                }
            }
            stats.delivered(kept.len() as u64, bytes, 1);
            *checkpoint = Some(range.last);
        }
        ShardSink::Http {
            sink: http_sink,
            state_path,
            state,
            errors,
        } => {
            if !items.is_empty() {
                // Recorded before sending: after a crash this batch is cut again at the same
                // records and sent with the same request id.
                let sending = http::HttpState {
                    delivered: state.delivered,
                    sending: Some(range),
                };
                let mut wait = Retrier::new("write http state", None, stats);
                while let Err(e) = http::write_state(state_path, sending).await {
                    wait.wait(&e).await;
                }
                let mut wait = Retrier::new("post to http endpoint", deadline, stats);
                let bytes: u64 = items.iter().map(|i| i.data.len() as u64).sum();
                loop {
                    match http_sink.send(&batch_id, &items).await {
                        Ok(()) => {
                            stats.delivered(items.len() as u64, bytes, 1);
                            break;
                        }
                        Err(e) => {
                            if !wait.wait(&e).await {
                                failed.extend(failed_all(items, "DeliveryFailed", &e.to_string()));
                                break;
                            }
                        }
                    }
                }
            }
            if !failed.is_empty() {
                let key = format!(
                    "{}/{}",
                    d.name,
                    crate::naming::object_name(
                        &d.stream,
                        shard,
                        range,
                        crate::naming::ERROR_SUFFIX
                    )
                );
                write_errors(errors, &key, &d.name, &shard_name, &failed, stats).await;
            }
            *state = http::HttpState {
                delivered: Some(range.last),
                sending: None,
            };
            let mut wait = Retrier::new("write http state", None, stats);
            while let Err(e) = http::write_state(state_path, *state).await {
                wait.wait(&e).await;
            }
        }
    }
    Ok(())
}

/// Writes a batch's failed records to its error object, retrying until it is written.
async fn write_errors(
    store: &Store,
    key: &str,
    delivery: &str,
    shard: &str,
    failed: &[Failed],
    stats: &Stats,
) {
    let bytes = format::encode_failures(delivery, shard, failed);
    let mut wait = Retrier::new("write error output", None, stats);
    while let Err(e) = store.put(key, bytes.clone()).await {
        wait.wait(&e).await;
    }
    tracing::warn!(key, records = failed.len(), reason = %failed[0].message, "records sent to the error output");
    stats.failed(failed.len() as u64);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: u64, len: usize) -> Item {
        Item {
            seq: SequenceNumber(n),
            partition_key: "k".into(),
            arrival_ms: 0,
            data: vec![b'x'; len],
        }
    }

    #[test]
    fn batches_are_cut_by_size() {
        let now = Instant::now();
        let mut c = Cutter::new(100, Duration::from_secs(60), None);
        assert!(c.push(item(1, 40), now).is_empty());
        assert!(c.push(item(2, 40), now).is_empty());
        // 120 bytes would pass the hint: the first two go alone.
        let out = c.push(item(3, 40), now);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].items.len(), 2);
        assert_eq!(out[0].range.last, SequenceNumber(2));
        // A record as big as the hint is a batch by itself.
        let out = c.push(item(4, 100), now);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].range.first, SequenceNumber(4));
        assert_eq!(c.buffered(), 0);
    }

    #[test]
    fn batches_are_cut_by_age() {
        let now = Instant::now();
        let mut c = Cutter::new(1 << 20, Duration::from_secs(2), None);
        assert!(c.push(item(1, 10), now).is_empty());
        assert!(c.due(now + Duration::from_secs(1)).is_none());
        assert_eq!(c.due_at(), Some(now + Duration::from_secs(2)));
        let b = c.due(now + Duration::from_secs(2)).expect("due");
        assert_eq!(b.items.len(), 1);
        assert!(c.due(now + Duration::from_secs(9)).is_none());
    }

    #[test]
    fn a_repeated_batch_ends_exactly_where_it_ended_before() {
        let now = Instant::now();
        // Hints that would cut after every record do not apply to the repeated batch.
        let mut c = Cutter::new(1, Duration::ZERO, Some(SequenceNumber(3)));
        assert!(c.push(item(1, 10), now).is_empty());
        assert!(c.due(now + Duration::from_secs(5)).is_none());
        assert!(c.push(item(2, 10), now).is_empty());
        let out = c.push(item(3, 10), now);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].range,
            BatchRange {
                first: SequenceNumber(1),
                last: SequenceNumber(3)
            }
        );
        // After it, the hints apply again.
        assert_eq!(c.push(item(4, 10), now).len(), 1);
    }
}
