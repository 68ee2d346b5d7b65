//! The Riptide side of `riptide bench`: stream set-up, producers, live consumers and the
//! read-back pass.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use riptide_client::{
    Acks, Client, ClientConfig, ClientError, Created, ErrorCode, Producer, ProducerConfig,
    PutResult, ShardId, StartingPosition, StreamOptions,
};
use tokio::sync::watch;

use super::kinesis::{KinesisHttp, KinesisPublisher};
use super::{Api, BenchArgs, ConsumerMode, RIPTIDE_DURABILITY};
use riptide_bench_measure::payload::Filler;
use riptide_bench_measure::recorder::{Clock, Recorder, Window};
use riptide_bench_measure::report::{Elections, Report};
use riptide_bench_measure::workload::{self, Ack, Load, Outcome, ProducerPlan, Publisher};

/// How long set-up may take before the first record is sent.
const LEAD: Duration = Duration::from_millis(200);

struct RiptidePublisher {
    producer: Producer,
    /// Answers of the records sent, a PutRecords call's records at a time.
    acks: Acks,
}

impl Publisher for RiptidePublisher {
    fn publish(&mut self, seq: u64, key: &str, data: Bytes) -> Option<Ack> {
        match self.producer.send_tagged(key, data, seq) {
            Ok(()) => None,
            Err(e) => {
                tracing::debug!("bench record not queued: {e}");
                Some(Box::pin(async { Outcome::Failed }))
            }
        }
    }

    fn poll_answers(
        &mut self,
        cx: &mut TaskContext<'_>,
        out: &mut Vec<(u64, Outcome)>,
    ) -> Poll<()> {
        let mut any = false;
        while let Poll::Ready(Some(batch)) = self.acks.poll_recv(cx) {
            any = true;
            out.extend(
                batch
                    .into_iter()
                    .map(|ack| (ack.tag, outcome_of(ack.result))),
            );
        }
        if any { Poll::Ready(()) } else { Poll::Pending }
    }
}

fn outcome_of(result: Result<PutResult, ClientError>) -> Outcome {
    match result {
        Ok(put) => Outcome::Acked {
            attempts: put.attempts,
        },
        Err(e) if is_throttle(&e) => Outcome::Throttled,
        Err(e) => {
            tracing::debug!("bench record failed: {e}");
            Outcome::Failed
        }
    }
}

fn is_throttle(e: &ClientError) -> bool {
    matches!(e.code, ErrorCode::Throttled | ErrorCode::LimitExceeded)
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn connect(endpoint: &str) -> anyhow::Result<Client> {
    let config = ClientConfig {
        endpoints: endpoint
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(String::from)
            .collect(),
        connect_deadline: Duration::from_secs(10),
        retry_deadline: Duration::from_secs(15),
        // The bench reads sequence numbers only to resume a subscription.
        numeric_sequence_numbers: true,
        ..ClientConfig::default()
    };
    Client::connect_with(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the cluster: {e}"))
}

/// The stream to use, whether this run created it, and its shards.
async fn set_up_stream(
    client: &Client,
    args: &BenchArgs,
) -> anyhow::Result<(String, bool, Vec<riptide_client::v1::Shard>)> {
    let name = args
        .stream
        .clone()
        .unwrap_or_else(|| format!("bench-{}", unix_ms()));
    // A cluster that has just started may not have every node registered yet: its refusal is
    // retryable, for a while. A name this run made up exists only if an earlier attempt of
    // this run created it.
    let created = match client
        .create_stream_when_ready(
            &name,
            args.shards,
            StreamOptions::default(),
            Duration::from_secs(30),
            |_| {},
        )
        .await
    {
        Ok(Created::Now(_)) => true,
        Ok(Created::AfterRefusal) => args.stream.is_none(),
        Err(e) if e.code == ErrorCode::AlreadyExists || e.code == ErrorCode::ResourceInUse => false,
        Err(e) => return Err(anyhow::anyhow!("creating stream {name}: {e}")),
    };
    let desc = client
        .wait_for_active(&name, Duration::from_secs(120))
        .await
        .map_err(|e| anyhow::anyhow!("waiting for stream {name} to be active: {e}"))?;
    anyhow::ensure!(!desc.shards.is_empty(), "stream {name} has no shards");
    Ok((name, created, desc.shards))
}

/// One shard to read, from where, and the recorder that takes what is read.
#[derive(Clone)]
struct ShardRead {
    client: Client,
    stream: String,
    shard: ShardId,
    from: StartingPosition,
    recorder: Arc<Recorder>,
    /// Read through the Kinesis API instead of gRPC.
    kinesis: Option<Arc<KinesisHttp>>,
}

impl ShardRead {
    /// The Kinesis iterator for this read's start.
    async fn kinesis_iterator(
        &self,
        api: &KinesisHttp,
    ) -> Result<String, super::kinesis::KinesisCallError> {
        let timestamp = match self.from {
            StartingPosition::AtTimestamp(ms) => Some(ms),
            _ => None,
        };
        api.shard_iterator(&self.stream, &self.shard.to_string(), timestamp)
            .await
    }

    /// Reads through the Kinesis API until `stop` (live) or, without `stop`, until the shard's
    /// end (read-back). Records go to `take`.
    async fn kinesis_loop(
        &self,
        api: &KinesisHttp,
        poll_interval: Duration,
        mut stop: Option<watch::Receiver<bool>>,
        take: impl Fn(&[u8]),
    ) -> anyhow::Result<()> {
        let mut iterator: Option<String> = None;
        loop {
            if let Some(stop) = &stop
                && *stop.borrow()
            {
                return Ok(());
            }
            let it = match &iterator {
                Some(it) => it.clone(),
                None => match self.kinesis_iterator(api).await {
                    Ok(it) => it,
                    Err(e) => {
                        tracing::debug!(shard = %self.shard, "bench iterator: {e}");
                        self.recorder.consumer_error();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let page = match stop.as_mut() {
                Some(stop) => tokio::select! {
                    p = api.get_records(&it) => p,
                    _ = stop.changed() => return Ok(()),
                },
                None => api.get_records(&it).await,
            };
            match page {
                Ok((records, next, behind)) => {
                    for r in &records {
                        take(r);
                    }
                    let Some(next) = next else {
                        return Ok(());
                    };
                    iterator = Some(next);
                    if records.is_empty() {
                        if stop.is_none() && behind == 0 {
                            return Ok(());
                        }
                        tokio::time::sleep(poll_interval).await;
                    }
                }
                Err(e) => {
                    // Records already taken are skipped by the ledger if read again, but a
                    // fresh iterator would start over: keep the old one and retry.
                    tracing::debug!(shard = %self.shard, "bench GetRecords: {e}");
                    self.recorder.consumer_error();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Reads a shard live until `stop`, handing each record to the recorder.
async fn live_consumer(
    read: ShardRead,
    mode: ConsumerMode,
    poll_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    if let Some(api) = read.kinesis.clone() {
        let recorder = Arc::clone(&read.recorder);
        let _ = read
            .kinesis_loop(&api, poll_interval, Some(stop), |data| {
                recorder.consumed(data);
            })
            .await;
        return;
    }
    let ShardRead {
        client,
        stream,
        shard,
        from,
        recorder,
        kinesis: _,
    } = read;
    match mode {
        ConsumerMode::Poll => {
            let mut consumer = client
                .consumer(&stream, shard, from)
                .with_limit(10_000)
                .with_poll_interval(poll_interval);
            loop {
                let batch = tokio::select! {
                    b = consumer.next_batch() => b,
                    _ = stop.changed() => return,
                };
                match batch {
                    Ok(records) => {
                        for r in &records {
                            recorder.consumed(&r.data);
                        }
                        if consumer.is_closed() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(shard = %shard, "bench consumer: {e}");
                        recorder.consumer_error();
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = stop.changed() => return,
                        }
                    }
                }
            }
        }
        ConsumerMode::Push => {
            let mut resume = from;
            loop {
                let opened = tokio::select! {
                    s = client.subscribe(&stream, shard, resume) => s,
                    _ = stop.changed() => return,
                };
                let mut events = match opened {
                    Ok(events) => events,
                    Err(e) => {
                        tracing::debug!(shard = %shard, "bench subscription: {e}");
                        recorder.consumer_error();
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            _ = stop.changed() => return,
                        }
                        continue;
                    }
                };
                loop {
                    let event = tokio::select! {
                        e = events.next() => e,
                        _ = stop.changed() => return,
                    };
                    match event {
                        Some(Ok(event)) => {
                            for r in &event.records {
                                recorder.consumed(&r.data);
                            }
                            if let Some(last) = event.records.last()
                                && let Ok(seq) = last.sequence()
                            {
                                resume = StartingPosition::AfterSequence(seq);
                            }
                        }
                        Some(Err(e)) => {
                            tracing::debug!(shard = %shard, "bench subscription: {e}");
                            recorder.consumer_error();
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                                _ = stop.changed() => return,
                            }
                            break;
                        }
                        None => break,
                    }
                }
            }
        }
    }
}

/// Reads a shard from `from` to its end, handing each record to the recorder's read-back
/// ledger. Gives up at `deadline`.
async fn read_back_shard(read: ShardRead, deadline: Instant) -> anyhow::Result<()> {
    if let Some(api) = read.kinesis.clone() {
        let recorder = Arc::clone(&read.recorder);
        let shard = read.shard;
        return tokio::time::timeout_at(
            deadline.into(),
            read.kinesis_loop(&api, Duration::from_millis(5), None, |data| {
                recorder.read_back(data);
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("read-back of {shard} did not reach the end in time"))?;
    }
    let ShardRead {
        client,
        stream,
        shard,
        from,
        recorder,
        kinesis: _,
    } = read;
    let mut consumer = client
        .consumer(&stream, shard, from)
        .with_limit(10_000)
        .with_poll_interval(Duration::from_millis(5));
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "read-back of {shard} did not reach the end in time"
        );
        match tokio::time::timeout_at(deadline.into(), consumer.next_batch()).await {
            Ok(Ok(records)) => {
                for r in &records {
                    recorder.read_back(&r.data);
                }
                if consumer.is_closed() || (records.is_empty() && consumer.caught_up()) {
                    return Ok(());
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(shard = %shard, "bench read-back: {e}");
                recorder.consumer_error();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => anyhow::bail!("read-back of {shard} did not reach the end in time"),
        }
    }
}

/// Runs the whole bench against the cluster at `endpoint` and returns its report.
pub async fn run(endpoint: &str, args: &BenchArgs) -> anyhow::Result<Report> {
    let fsync_probe = super::probe(args.probe_dir.clone(), args.probe).await?;
    if let (Some(p), false) = (&fsync_probe, args.quiet) {
        eprintln!("fsync probe: {}", p.describe());
    }
    let client = connect(endpoint).await?;
    let (stream, created, shards) = set_up_stream(&client, args).await?;
    let shard_ids = shards
        .iter()
        .map(|s| s.shard_id.parse::<ShardId>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("a shard id the cluster sent: {e}"))?;
    let replicas = shards.iter().map(|s| s.replicas.len()).max().unwrap_or(0);
    // Records of earlier runs on a stream that already existed are skipped by run id; reading
    // from shortly before this run saves reading them all.
    let from = if created {
        StartingPosition::TrimHorizon
    } else {
        StartingPosition::AtTimestamp(unix_ms().saturating_sub(5_000))
    };

    let elections_before = elections(&client).await;
    let clock = Clock::new();
    let run_id = rand::random::<u64>();
    let start_at = u64::try_from(LEAD.as_nanos()).unwrap_or(u64::MAX);
    let window_start = start_at + u64::try_from(args.warmup.as_nanos()).unwrap_or(u64::MAX);
    let window = Window {
        start: window_start,
        end: window_start + u64::try_from(args.duration.as_nanos()).unwrap_or(u64::MAX),
    };
    let recorder = Arc::new(Recorder::new(clock, run_id, window));
    let (stop_tx, stop_rx) = watch::channel(false);

    let kinesis =
        (args.api == Api::Kinesis).then(|| Arc::new(KinesisHttp::new(&args.kinesis_endpoint)));
    let reads: Vec<ShardRead> = shard_ids
        .iter()
        .map(|shard| ShardRead {
            client: client.clone(),
            stream: stream.clone(),
            shard: *shard,
            from,
            recorder: Arc::clone(&recorder),
            kinesis: kinesis.clone(),
        })
        .collect();
    let mut consumers = Vec::new();
    for read in &reads {
        consumers.push(tokio::spawn(live_consumer(
            read.clone(),
            args.consumers,
            args.poll_interval,
            stop_rx.clone(),
        )));
    }
    let progress = workload::spawn_progress(Arc::clone(&recorder), args.quiet, stop_rx.clone());

    let keys = workload::partition_keys(args.partition_keys);
    let filler = Arc::new(Filler::new(run_id));
    let load = match args.rate {
        Some(rate) => Load::Open {
            records_per_sec: rate / f64::from(args.producers),
            max_outstanding: args.max_outstanding,
        },
        None => Load::Closed {
            window: args.window,
        },
    };
    let producer_config = ProducerConfig {
        linger: args.linger,
        max_batch_records: args.batch_records,
        max_in_flight: args.in_flight(),
        ..ProducerConfig::default()
    };
    let publishers: Vec<Box<dyn Publisher>> = (0..args.producers)
        .map(|_| -> Box<dyn Publisher> {
            match &kinesis {
                Some(api) => Box::new(KinesisPublisher::start(
                    Arc::clone(api),
                    stream.clone(),
                    args.batch_records,
                    args.linger,
                    args.in_flight(),
                )),
                None => {
                    let (producer, acks) =
                        client.producer_with_acks(&stream, producer_config.clone());
                    Box::new(RiptidePublisher { producer, acks })
                }
            }
        })
        .collect();
    let plan = ProducerPlan {
        producer: 0,
        record_bytes: args.record_bytes,
        keys: Arc::clone(&keys),
        load,
        start_at,
        stop_at: window.end,
        drain: args.drain,
    };
    workload::run_producers(publishers, plan, &recorder, &filler)
        .await
        .context("producer task")?;
    let elections_after = elections(&client).await;
    let live_missing = workload::wait_live_caught_up(&recorder, args.drain).await;
    let _ = stop_tx.send(true);
    for c in consumers {
        c.await.context("consumer task")?;
    }
    progress.await.context("progress task")?;
    if live_missing > 0 && !args.quiet {
        eprintln!("live consumers still miss {live_missing} acknowledged records; reading back");
    }

    // The read-back pass: every shard from the start, after the producers stopped. LR rests on
    // it, and its duration gives H for a backlog.
    if !args.quiet {
        eprintln!(
            "reading back {} acknowledged records ...",
            recorder.acked_count()
        );
    }
    let started = Instant::now();
    let deadline = started + args.read_back_timeout;
    let mut readers = Vec::new();
    for read in &reads {
        readers.push(tokio::spawn(read_back_shard(read.clone(), deadline)));
    }
    let mut read_back_failed = None;
    for r in readers {
        if let Err(e) = r.await.context("read-back task")? {
            read_back_failed = Some(e);
        }
    }
    let backlog_secs = started.elapsed().as_secs_f64();
    if let Some(e) = &read_back_failed
        && !args.quiet
    {
        eprintln!("read-back incomplete: {e:#}");
    }

    if created
        && !args.keep_stream
        && let Err(e) = client.delete_stream(&stream).await
    {
        eprintln!("could not delete stream {stream}: {e}");
    }
    let measures = recorder.finish(Some(backlog_secs));
    let workload = args.workload(
        u32::try_from(shard_ids.len()).unwrap_or(u32::MAX),
        u32::try_from(replicas).unwrap_or(u32::MAX),
    );
    let mut report = Report::new(
        "riptide",
        RIPTIDE_DURABILITY,
        workload,
        fsync_probe,
        measures,
    );
    report.elections = match (elections_before, elections_after) {
        (Some(before), Some(after)) => Some(elections_between(&before, &after)),
        _ => None,
    };
    Ok(report)
}

/// The cluster's election counters, summed over its nodes; `None` when a node did not answer
/// (the counts would not add up).
async fn elections(client: &Client) -> Option<Elections> {
    let status = client.cluster_status().await.ok()?;
    let mut sum = Elections::default();
    for node in &status.nodes {
        let e = node.elections.as_ref()?;
        sum.timeout += e.timeout_elections;
        sum.transfer += e.transfer_elections;
        sum.dead_leaders_noticed += e.dead_leaders_noticed;
        sum.heartbeat_gap_bounds_ms = e.heartbeat_gap_bounds_ms.clone();
        sum.heartbeat_gaps
            .resize(sum.heartbeat_gaps.len().max(e.heartbeat_gaps.len()), 0);
        for (total, n) in sum.heartbeat_gaps.iter_mut().zip(&e.heartbeat_gaps) {
            *total += n;
        }
        sum.longest_heartbeat_gap_ms = sum.longest_heartbeat_gap_ms.max(e.longest_heartbeat_gap_ms);
    }
    Some(sum)
}

/// What happened between two readings of the counters.
fn elections_between(before: &Elections, after: &Elections) -> Elections {
    Elections {
        timeout: after.timeout.saturating_sub(before.timeout),
        transfer: after.transfer.saturating_sub(before.transfer),
        dead_leaders_noticed: after
            .dead_leaders_noticed
            .saturating_sub(before.dead_leaders_noticed),
        heartbeat_gap_bounds_ms: after.heartbeat_gap_bounds_ms.clone(),
        heartbeat_gaps: after
            .heartbeat_gaps
            .iter()
            .enumerate()
            .map(|(i, n)| n.saturating_sub(before.heartbeat_gaps.get(i).copied().unwrap_or(0)))
            .collect(),
        longest_heartbeat_gap_ms: after.longest_heartbeat_gap_ms,
    }
}
