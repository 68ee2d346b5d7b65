//! `riptide bench`: drives a running cluster with a configurable workload and reports the four
//! measures of the design's source article (production rate P, processing rate H, latency L,
//! loss rate LR), with a live progress line, a table or JSON, and an SVG plot.
//!
//! The measurement half (riptide-bench-measure, `bench/measure/`) has no riptide dependency
//! and is shared with the JetStream peer program under `bench/peers/`; this module adds the
//! Riptide side: the stream, producers on [`riptide_client::Producer`], live consumers (push
//! or polling) and the read-back pass on which LR rests.

mod kinesis;
mod riptide;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use riptide_bench_measure as measure;
use riptide_bench_measure::parse_duration;
use riptide_bench_measure::report::{Report, Workload};

pub use riptide::run as run_riptide;

/// How the live consumers read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsumerMode {
    /// A SubscribeToShard stream per shard: records are pushed as they commit.
    Push,
    /// GetRecords in a loop per shard, waiting --poll-interval after an empty answer.
    Poll,
}

/// Which API carries the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// The native gRPC API, through riptide-client's batching producer and consumers.
    Grpc,
    /// The Kinesis HTTP API (PutRecords and GetRecords in JSON) at --kinesis-endpoint; the
    /// stream is still set up through gRPC at --endpoint.
    Kinesis,
}

/// `riptide bench ...`
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  riptide bench --duration 30s --json\n  riptide bench \
                        --record-bytes 100 --producers 8 --shards 8\n  riptide bench --rate \
                        20000 --plot run.svg"
)]
pub struct BenchArgs {
    /// Stream to write to: created with --shards if missing. Without it, a new stream
    /// `bench-<time>` is created and deleted at the end (unless --keep-stream).
    #[arg(long)]
    pub stream: Option<String>,
    /// Which API writes and reads the records.
    #[arg(long, value_enum, default_value_t = Api::Grpc)]
    pub api: Api,
    /// The Kinesis API's address, for --api kinesis (`riptide dev` serves it on port 4567).
    #[arg(long, default_value = "http://127.0.0.1:4567")]
    pub kinesis_endpoint: String,
    /// Shards of a stream the bench creates.
    #[arg(long, default_value_t = 4)]
    pub shards: u32,
    /// Keep the stream the bench created.
    #[arg(long)]
    pub keep_stream: bool,
    /// Producers, each with its own batching client producer.
    #[arg(long, default_value_t = 4)]
    pub producers: u32,
    /// Bytes per record (at least 24: the bench's header).
    #[arg(long, default_value_t = 1024)]
    pub record_bytes: usize,
    /// Distinct partition keys, used round robin.
    #[arg(long, default_value_t = 1000)]
    pub partition_keys: u32,
    /// Most records per PutRecords call (1 to 500).
    #[arg(long, default_value_t = 500)]
    pub batch_records: usize,
    /// How long a batch's first record waits for more (e.g. 5ms).
    #[arg(long, default_value = "5ms", value_parser = parse_duration)]
    pub linger: Duration,
    /// PutRecords calls in flight per shard per producer (with --api kinesis: per producer).
    /// Default: the client producer's (1 per shard) with grpc, 4 per producer with kinesis.
    #[arg(long)]
    pub in_flight: Option<usize>,
    /// Closed loop: records each producer keeps unacknowledged.
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Open loop: records/s offered over all producers, on a fixed schedule; latencies count
    /// from the scheduled send time. Without it, the bench runs closed loop (as fast as the
    /// cluster acknowledges, --window records outstanding per producer).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Open loop: most records a producer keeps unacknowledged before it waits.
    #[arg(long, default_value_t = 100_000)]
    pub max_outstanding: usize,
    /// How long to measure, after the warm-up.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load before measuring, not counted in P, H or L (its records count in LR).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// How the live consumers read: push (SubscribeToShard) or poll (GetRecords).
    #[arg(long, value_enum, default_value_t = ConsumerMode::Push)]
    pub consumers: ConsumerMode,
    /// Polling consumers: wait after an empty answer.
    #[arg(long, default_value = "20ms", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long to wait for unanswered sends and for live consumers after the producers stop.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub drain: Duration,
    /// Give up the read-back pass after this long (its records then count as lost).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub read_back_timeout: Duration,
    /// Folder on the disk to probe with fsyncs (the cluster's disk when it is local).
    #[arg(long, default_value = ".")]
    pub probe_dir: PathBuf,
    /// Length of the fsync probe run before the workload; 0s skips it.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub probe: Duration,
    /// Print the report as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Write throughput and p99 latency over time to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// The parts of the workload description that do not depend on the cluster.
    fn workload(&self, shards: u32, replicas: u32) -> Workload {
        Workload {
            api: match self.api {
                Api::Grpc => "riptide gRPC, batching client producer".into(),
                Api::Kinesis => {
                    "Kinesis HTTP API (JSON), PutRecords batched per producer, calls in flight \
                     counted per producer"
                        .into()
                }
            },
            shards,
            replicas,
            producers: self.producers,
            record_bytes: self.record_bytes.max(measure::payload::HEADER_BYTES),
            partition_keys: self.partition_keys,
            batch_records: Some(self.batch_records),
            linger_ms: Some(self.linger.as_secs_f64() * 1e3),
            in_flight_calls: Some(self.in_flight()),
            load: if self.rate.is_some() {
                "open"
            } else {
                "closed"
            }
            .into(),
            window: if self.rate.is_some() {
                self.max_outstanding
            } else {
                self.window
            },
            offered_records_per_sec: self.rate,
            duration_secs: self.duration.as_secs_f64(),
            warmup_secs: self.warmup.as_secs_f64(),
            consumers: match self.consumers {
                ConsumerMode::Push => "push (SubscribeToShard)".into(),
                ConsumerMode::Poll => format!(
                    "polling (GetRecords, {} ms after an empty answer)",
                    self.poll_interval.as_millis()
                ),
            },
        }
    }

    /// Calls in flight: per shard per producer with grpc, per producer with kinesis.
    fn in_flight(&self) -> usize {
        self.in_flight.unwrap_or(match self.api {
            Api::Grpc => riptide_client::ProducerConfig::default().max_in_flight,
            // One producer's calls for every shard share this limit.
            Api::Kinesis => 4,
        })
    }

    fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.producers >= 1, "--producers must be at least 1");
        anyhow::ensure!(self.shards >= 1, "--shards must be at least 1");
        anyhow::ensure!(
            (1..=riptide_client::MAX_RECORDS_PER_CALL).contains(&self.batch_records),
            "--batch-records must be 1 to {}",
            riptide_client::MAX_RECORDS_PER_CALL
        );
        anyhow::ensure!(
            self.in_flight.is_none_or(|n| n >= 1),
            "--in-flight must be at least 1"
        );
        anyhow::ensure!(self.window >= 1, "--window must be at least 1");
        anyhow::ensure!(
            self.rate.is_none_or(|r| r.is_finite() && r > 0.0),
            "--rate must be a positive number of records per second"
        );
        anyhow::ensure!(
            self.record_bytes <= 1 << 20,
            "--record-bytes must be at most 1 MiB (the record size limit)"
        );
        anyhow::ensure!(!self.duration.is_zero(), "--duration must be above 0");
        anyhow::ensure!(
            self.api == Api::Grpc || self.consumers == ConsumerMode::Poll,
            "--api kinesis reads with GetRecords: give --consumers poll"
        );
        Ok(())
    }
}

/// Riptide's durability at acknowledgement, as the reports state it.
pub const RIPTIDE_DURABILITY: &str =
    "acknowledged after the record is fsynced on a majority of its shard's replicas";

/// Runs the fsync probe if asked to.
pub async fn probe(
    dir: PathBuf,
    length: Duration,
) -> anyhow::Result<Option<measure::probe::ProbeResult>> {
    if length.is_zero() {
        return Ok(None);
    }
    let result = tokio::task::spawn_blocking(move || measure::probe::run(&dir, length))
        .await
        .context("fsync probe task")?
        .context("fsync probe")?;
    Ok(Some(result))
}

/// Prints the report as asked and writes the plot.
pub fn emit(report: &Report, json: bool, plot: Option<&std::path::Path>) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{}", report.table());
    }
    if let Some(path) = plot {
        std::fs::write(path, measure::plot::svg(report)?)
            .with_context(|| format!("writing the plot to {}", path.display()))?;
        if !json {
            println!("plot written to {}", path.display());
        }
    }
    Ok(())
}

/// `riptide bench` against the cluster at `endpoint`.
pub async fn run(endpoint: &str, args: BenchArgs) -> anyhow::Result<()> {
    args.check()?;
    let report = run_riptide(endpoint, &args).await?;
    emit(&report, args.json, args.plot.as_deref())?;
    if report.loss.lost > 0 {
        anyhow::bail!(
            "{} acknowledged records were not read back (LR {:.3e})",
            report.loss.lost,
            report.loss.loss_rate
        );
    }
    Ok(())
}
