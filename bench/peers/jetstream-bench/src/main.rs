//! `riptide-jetstream-bench`: the workload of `riptide bench`, run against a NATS JetStream
//! cluster through the NATS Rust client, reported with the same code (riptide-bench-measure,
//! in bench/measure), so that `bench/peers/compare` can put both systems side by side.
//!
//! `run` drives JetStream; `compare A.json B.json` prints two reports side by side with the
//! ratio of every figure.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::Subject;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::response::Response;
use async_nats::jetstream::{self, consumer, stream};
use clap::{Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use riptide_bench_measure::parse_duration;
use riptide_bench_measure::payload::Filler;
use riptide_bench_measure::recorder::{Clock, Recorder, Window};
use riptide_bench_measure::report::{Report, Workload};
use riptide_bench_measure::workload::{self, Ack, Load, Outcome, ProducerPlan, Publisher};

/// How long set-up may take before the first record is sent.
const LEAD: Duration = Duration::from_millis(200);

/// JetStream's durability at acknowledgement, as the reports state it.
const JETSTREAM_DURABILITY: &str = "acknowledged once a majority of the stream's replicas \
     has the message, before it is fsynced: nats-server syncs its files every 2 minutes by \
     default (jetstream sync_interval), so acknowledged messages can be lost when a majority \
     of machines loses power";

#[derive(Debug, Parser)]
#[command(name = "riptide-jetstream-bench", about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the workload against a JetStream cluster.
    Run(Box<RunArgs>),
    /// Print two systems' JSON reports side by side with the ratio first ÷ second of every
    /// figure; several reports per system are reduced to their median first.
    Compare {
        /// Reports of the first system.
        #[arg(long, num_args = 1.., required = true)]
        first: Vec<PathBuf>,
        /// Reports of the second system.
        #[arg(long, num_args = 1.., required = true)]
        second: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ConsumerMode {
    /// An ordered push consumer per stream.
    Push,
    /// An ordered pull consumer per stream.
    Poll,
}

#[derive(Debug, Clone, clap::Args)]
struct RunArgs {
    /// NATS servers, comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:14222")]
    servers: String,
    /// Streams, each a replicated log of its own (as many as Riptide's shards for a like for
    /// like run); records go to a stream by partition key.
    #[arg(long, default_value_t = 4)]
    streams: u32,
    /// Replicas of each stream.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value_t = 4)]
    producers: u32,
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    #[arg(long, default_value_t = 1000)]
    partition_keys: u32,
    /// Closed loop: records each producer keeps unacknowledged.
    #[arg(long, default_value_t = 1000)]
    window: usize,
    /// Open loop: records/s offered over all producers.
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: most records a producer keeps unacknowledged before it waits.
    #[arg(long, default_value_t = 100_000)]
    max_outstanding: usize,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,
    #[arg(long, value_enum, default_value_t = ConsumerMode::Push)]
    consumers: ConsumerMode,
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    drain: Duration,
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    read_back_timeout: Duration,
    #[arg(long, default_value = ".")]
    probe_dir: PathBuf,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    probe: Duration,
    #[arg(long)]
    json: bool,
    #[arg(long)]
    plot: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

fn stream_name(i: u32) -> String {
    format!("BENCH{i}")
}

/// Publishes as nats.go's asynchronous JetStream publish (`PublishAsync`) does, JetStream's
/// fastest way to publish from one connection: every message carries a reply subject of its
/// own under one wildcard subscription per connection (`<inbox>.<seq>`), the sends are queued
/// without waiting for anything, and the server's acknowledgements (PubAck, JSON) are read off
/// that subscription and handed to the producer loop in batches (`poll_answers`), with no
/// future, oneshot channel or timer per message. How many stay unacknowledged is the producer
/// loop's window (nats.go: `PublishAsyncMaxPending`).
///
/// The sends go through a task of their own because the NATS client's publish is async (it
/// waits only when the connection's command queue is full), while a publisher must have queued
/// a record when `publish` returns.
struct NatsPublisher {
    /// Messages for the sending task: subject, reply subject, payload.
    outbox: mpsc::UnboundedSender<(Subject, Subject, bytes::Bytes)>,
    /// Where this connection's acknowledgements arrive.
    acks: async_nats::Subscriber,
    /// `<inbox>.`, to which a record's seq is appended for its reply subject.
    reply_prefix: String,
    subjects: Arc<[Vec<Subject>]>,
    key_index: Arc<HashMap<String, usize>>,
    streams: usize,
}

impl NatsPublisher {
    async fn new(
        client: async_nats::Client,
        subjects: Arc<[Vec<Subject>]>,
        key_index: Arc<HashMap<String, usize>>,
    ) -> anyhow::Result<Self> {
        let inbox = client.new_inbox();
        let acks = client
            .subscribe(format!("{inbox}.*"))
            .await
            .context("subscribing to publish acknowledgements")?;
        let (outbox, mut queued) = mpsc::unbounded_channel::<(Subject, Subject, bytes::Bytes)>();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(SEND_BATCH);
            while queued.recv_many(&mut batch, SEND_BATCH).await > 0 {
                for (subject, reply, payload) in batch.drain(..) {
                    if let Err(e) = client.publish_with_reply(subject, reply, payload).await {
                        // The records stay unanswered and are counted so at the end.
                        eprintln!("publish: {e}");
                        return;
                    }
                }
            }
        });
        let streams = subjects.len();
        Ok(NatsPublisher {
            outbox,
            acks,
            reply_prefix: format!("{inbox}."),
            subjects,
            key_index,
            streams,
        })
    }

    /// The outcome an acknowledgement reports, and the seq of the record it answers.
    fn answer(&self, ack: &async_nats::Message) -> Option<(u64, Outcome)> {
        let seq = ack
            .subject
            .strip_prefix(self.reply_prefix.as_str())?
            .parse()
            .ok()?;
        // A status instead of a PubAck: no stream took the message (503 "no responders").
        if ack.status.is_some() {
            return Some((seq, Outcome::Failed));
        }
        let outcome = match serde_json::from_slice::<Response<PublishAck>>(&ack.payload) {
            Ok(Response::Ok(_)) => Outcome::Acked { attempts: 1 },
            Ok(Response::Err { .. }) | Err(_) => Outcome::Failed,
        };
        Some((seq, outcome))
    }
}

/// Most queued messages the sending task takes at a time.
const SEND_BATCH: usize = 256;

impl Publisher for NatsPublisher {
    fn publish(&mut self, seq: u64, key: &str, data: bytes::Bytes) -> Option<Ack> {
        let k = self.key_index.get(key).copied().unwrap_or(0);
        let subject = self.subjects[k % self.streams][k].clone();
        let reply = Subject::from(format!("{}{seq}", self.reply_prefix));
        // Fails only once the sending task has stopped, which it reported; the record then
        // stays unanswered.
        let _ = self.outbox.send((subject, reply, data));
        None
    }

    fn poll_answers(&mut self, cx: &mut Context<'_>, out: &mut Vec<(u64, Outcome)>) -> Poll<()> {
        let before = out.len();
        while let Poll::Ready(Some(ack)) = self.acks.poll_next_unpin(cx) {
            if let Some(answer) = self.answer(&ack) {
                out.push(answer);
            }
        }
        if out.len() > before {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

async fn live_consumer(
    context: jetstream::Context,
    stream: String,
    mode: ConsumerMode,
    recorder: Arc<Recorder>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let stream = context.get_stream(&stream).await?;
    let mut messages = match mode {
        ConsumerMode::Push => {
            let inbox = context_client(&context).new_inbox();
            let c = stream
                .create_consumer(consumer::push::OrderedConfig {
                    deliver_subject: inbox,
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            c.messages()
                .await?
                .map(|m| m.map_err(|e| e.to_string()))
                .boxed()
        }
        ConsumerMode::Poll => {
            let c = stream
                .create_consumer(consumer::pull::OrderedConfig {
                    deliver_policy: consumer::DeliverPolicy::All,
                    ..Default::default()
                })
                .await?;
            c.messages()
                .await?
                .map(|m| m.map_err(|e| e.to_string()))
                .boxed()
        }
    };
    loop {
        let next = tokio::select! {
            m = messages.next() => m,
            _ = stop.changed() => return Ok(()),
        };
        match next {
            Some(Ok(message)) => {
                recorder.consumed(&message.payload);
            }
            Some(Err(_)) => recorder.consumer_error(),
            None => return Ok(()),
        }
    }
}

/// Reads a stream from its first message to `last`, into the read-back ledger.
async fn read_back_stream(
    context: jetstream::Context,
    name: String,
    recorder: Arc<Recorder>,
    deadline: Instant,
) -> anyhow::Result<()> {
    let mut stream = context.get_stream(&name).await?;
    let last = stream.info().await?.state.last_sequence;
    if last == 0 {
        return Ok(());
    }
    let c = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut messages = c.messages().await?;
    loop {
        let next = tokio::time::timeout_at(deadline.into(), messages.next())
            .await
            .map_err(|_| anyhow::anyhow!("read-back of {name} did not reach the end in time"))?;
        match next {
            Some(Ok(message)) => {
                recorder.read_back(&message.payload);
                let seq = message
                    .info()
                    .map_err(|e| anyhow::anyhow!("message metadata: {e}"))?
                    .stream_sequence;
                if seq >= last {
                    return Ok(());
                }
            }
            Some(Err(_)) => recorder.consumer_error(),
            None => anyhow::bail!("read-back of {name} ended early"),
        }
    }
}

fn context_client(context: &jetstream::Context) -> async_nats::Client {
    context.client()
}

/// A connection of its own to the cluster.
async fn connect_client(servers: &str) -> anyhow::Result<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = servers
        .split(',')
        .map(|s| s.trim().parse())
        .collect::<Result<_, _>>()
        .context("--servers")?;
    async_nats::ConnectOptions::new()
        // The bench's subjects are fixed and valid; nats.go does not check them per publish
        // either.
        .skip_subject_validation(true)
        .connect(addrs)
        .await
        .context("connecting to NATS")
}

/// A JetStream context on a connection of its own, for administration and consumers.
async fn connect(servers: &str) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(30))
        .build(connect_client(servers).await?))
}

async fn run(args: RunArgs) -> anyhow::Result<Report> {
    let fsync_probe = if args.probe.is_zero() {
        None
    } else {
        let (dir, len) = (args.probe_dir.clone(), args.probe);
        let p = tokio::task::spawn_blocking(move || riptide_bench_measure::probe::run(&dir, len))
            .await?
            .context("fsync probe")?;
        if !args.quiet {
            eprintln!("fsync probe: {}", p.describe());
        }
        Some(p)
    };
    let streams = args.streams.max(1);
    let admin = connect(&args.servers).await?;
    for s in 0..streams {
        let name = stream_name(s);
        // A fresh stream per run, so that the read-back pass reads only this run's records.
        let _ = admin.delete_stream(&name).await;
        let config = stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            num_replicas: args.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        };
        // A new cluster takes a few seconds to elect its JetStream meta leader.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match admin.create_stream(config.clone()).await {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("creating stream {name}: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).with_context(|| format!("creating stream {name}")),
            }
        }
    }
    let keys = workload::partition_keys(args.partition_keys);
    let subjects: Arc<[Vec<Subject>]> = (0..streams)
        .map(|s| {
            keys.iter()
                .map(|k| Subject::from(format!("{}.{k}", stream_name(s))))
                .collect()
        })
        .collect();
    let key_index: Arc<HashMap<String, usize>> = Arc::new(
        keys.iter()
            .enumerate()
            .map(|(i, k)| (k.clone(), i))
            .collect(),
    );

    let clock = Clock::new();
    let run_id = rand_u64();
    let start_at = LEAD.as_nanos() as u64;
    let window_start = start_at + args.warmup.as_nanos() as u64;
    let window = Window {
        start: window_start,
        end: window_start + args.duration.as_nanos() as u64,
    };
    let recorder = Arc::new(Recorder::new(clock, run_id, window));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut consumers = Vec::new();
    for s in 0..streams {
        let context = connect(&args.servers).await?;
        consumers.push(tokio::spawn(live_consumer(
            context,
            stream_name(s),
            args.consumers,
            Arc::clone(&recorder),
            stop_rx.clone(),
        )));
    }
    let progress = workload::spawn_progress(Arc::clone(&recorder), args.quiet, stop_rx.clone());
    let load = match args.rate {
        Some(rate) => Load::Open {
            records_per_sec: rate / f64::from(args.producers.max(1)),
            max_outstanding: args.max_outstanding,
        },
        None => Load::Closed {
            window: args.window,
        },
    };
    let filler = Arc::new(Filler::new(run_id));
    let inflight = match load {
        Load::Closed { window } => window,
        Load::Open {
            max_outstanding, ..
        } => max_outstanding,
    };
    // A connection per producer, as nats.go's publishers have.
    let mut publishers = Vec::new();
    for _ in 0..args.producers.max(1) {
        publishers.push(
            NatsPublisher::new(
                connect_client(&args.servers).await?,
                Arc::clone(&subjects),
                Arc::clone(&key_index),
            )
            .await?,
        );
    }
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
    let live_missing = workload::wait_live_caught_up(&recorder, args.drain).await;
    let _ = stop_tx.send(true);
    for c in consumers {
        if let Err(e) = c.await.context("consumer task")? {
            eprintln!("live consumer: {e:#}");
        }
    }
    progress.await.context("progress task")?;
    if live_missing > 0 && !args.quiet {
        eprintln!("live consumers still miss {live_missing} acknowledged records; reading back");
    }
    if !args.quiet {
        eprintln!(
            "reading back {} acknowledged records ...",
            recorder.acked_count()
        );
    }
    let started = Instant::now();
    let deadline = started + args.read_back_timeout;
    let mut readers = Vec::new();
    for s in 0..streams {
        let context = connect(&args.servers).await?;
        readers.push(tokio::spawn(read_back_stream(
            context,
            stream_name(s),
            Arc::clone(&recorder),
            deadline,
        )));
    }
    for r in readers {
        if let Err(e) = r.await.context("read-back task")? {
            eprintln!("read-back incomplete: {e:#}");
        }
    }
    let backlog_secs = started.elapsed().as_secs_f64();
    for s in 0..streams {
        let _ = admin.delete_stream(stream_name(s)).await;
    }
    let measures = recorder.finish(Some(backlog_secs));
    let workload = Workload {
        api: "NATS JetStream, asynchronous publishes (a reply subscription per connection, as \
              nats.go's PublishAsync)"
            .into(),
        shards: streams,
        replicas: args.replicas as u32,
        producers: args.producers,
        record_bytes: args
            .record_bytes
            .max(riptide_bench_measure::payload::HEADER_BYTES),
        partition_keys: args.partition_keys,
        batch_records: None,
        linger_ms: None,
        in_flight_calls: None,
        load: if args.rate.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        window: inflight,
        offered_records_per_sec: args.rate,
        duration_secs: args.duration.as_secs_f64(),
        warmup_secs: args.warmup.as_secs_f64(),
        consumers: match args.consumers {
            ConsumerMode::Push => "push (ordered push consumer)".into(),
            ConsumerMode::Poll => "polling (ordered pull consumer)".into(),
        },
    };
    Ok(Report::new(
        "jetstream",
        JETSTREAM_DURABILITY,
        workload,
        fsync_probe,
        measures,
    ))
}

/// A run id from the clock and the process id: unique enough to tell runs apart.
fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos ^ (u64::from(std::process::id()) << 32);
    riptide_bench_measure::payload::splitmix64(&mut state)
}

fn read_report(path: &std::path::Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let (json, plot) = (args.json, args.plot.clone());
            let report = run(*args).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.table());
            }
            if let Some(path) = plot {
                std::fs::write(&path, riptide_bench_measure::plot::svg(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if report.loss.lost > 0 {
                anyhow::bail!(
                    "{} acknowledged records were not read back",
                    report.loss.lost
                );
            }
        }
        Command::Compare { first, second } => {
            let load = |paths: &[PathBuf]| -> anyhow::Result<Report> {
                let reports = paths
                    .iter()
                    .map(|p| read_report(p))
                    .collect::<anyhow::Result<Vec<_>>>()?;
                if reports.len() == 1 {
                    return Ok(reports.into_iter().next().expect("one report"));
                }
                riptide_bench_measure::report::median(&reports).context("no reports")
            };
            let (a, b) = (load(&first)?, load(&second)?);
            print!("{}", riptide_bench_measure::report::compare(&a, &b));
        }
    }
    Ok(())
}
