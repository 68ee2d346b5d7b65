//! riptide-firehose: the delivery daemon. It reads Riptide streams with the client crate and
//! delivers their records to a directory, S3-compatible object storage, PostgreSQL or an HTTP
//! endpoint, as configured in a TOML file of delivery streams.
//!
//! It depends on riptide-client and riptide-proto only, never on riptide-raft, riptide-node or
//! RocksDB: it runs beside the cluster or on any other machine.

mod config;
mod format;
mod naming;
mod pipeline;
mod retry;
mod sink;
mod status;
mod template;
mod transform;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use riptide_client::{Client, ClientConfig};
use tokio::sync::watch;

use crate::status::{Stats, StatusFile};

/// Delivers Riptide streams into files, object storage, PostgreSQL tables and HTTP endpoints.
///
/// The configuration file lists delivery streams; each reads a stream (all its shards or
/// some), cuts batches by size or time (whichever comes first), formats them (raw, JSON lines
/// or Parquet, optionally compressed) and delivers them. Directories, S3 and PostgreSQL get
/// every record exactly once, across crashes: the daemon finds where it left off from what the
/// destination already holds. HTTP endpoints get every record at least once, with a request id
/// that stays the same for a batch. Records that cannot be delivered within the retry
/// duration, or that do not fit the format, go to an error output with the reason.
///
/// See docs/firehose.md for the configuration reference and a worked example.
#[derive(Debug, Parser)]
#[command(name = "riptide-firehose", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Deliver the configured streams until SIGTERM or Ctrl-C, then deliver what is buffered
    /// and stop.
    Run {
        /// The TOML configuration file.
        config: PathBuf,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Check a configuration file and name every mistake with its key; exits 1 if any.
    Validate {
        /// The TOML configuration file.
        config: PathBuf,
    },
    /// Show the running daemon's counters: records and bytes delivered, retries, errors, and
    /// each shard's lag in milliseconds (read from the status file in the state directory).
    Status {
        /// The TOML configuration file the daemon runs with.
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => validate(&config),
        Command::Status { config } => match status(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, json_logs } => {
            init_logs(json_logs);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(&config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn init_logs(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn validate(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(c) => {
            println!(
                "{}: ok, {} delivery stream(s): {}",
                path.display(),
                c.deliveries.len(),
                c.deliveries
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn status(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    let file = status::status_path(&config.state_dir);
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("no status at {} (is the daemon running?)", file.display()))?;
    let status: StatusFile = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a status file", file.display()))?;
    print!("{}", status::render(&status, now_ms()));
    Ok(())
}

async fn run(path: &Path) -> anyhow::Result<()> {
    let config = config::load(path)?;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("cannot create {}", config.state_dir.display()))?;
    let mut client_config = ClientConfig::new(config.endpoints[0].clone());
    client_config.endpoints = config.endpoints.clone();
    // Records' positions as numbers: the pipeline reads them with `Record::sequence()`.
    client_config.numeric_sequence_numbers = true;
    let signal = shutdown_signal();
    tokio::pin!(signal);
    // A daemon outlives a cluster that is not up yet: keep trying until it answers.
    let mut attempt = 0;
    let client = loop {
        tokio::select! {
            _ = &mut signal => {
                tracing::info!("stopped before the cluster answered");
                return Ok(());
            }
            r = Client::connect_with(client_config.clone()) => match r {
                Ok(c) => break c,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(attempt, "cannot reach the cluster yet: {e}");
                    tokio::select! {
                        _ = &mut signal => return Ok(()),
                        _ = tokio::time::sleep(retry::backoff(attempt, 0.0)) => {}
                    }
                }
            }
        }
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let all_stats: Vec<(String, Arc<Stats>)> = config
        .deliveries
        .iter()
        .map(|d| (d.name.clone(), Arc::new(Stats::default())))
        .collect();
    let mut deliveries = tokio::task::JoinSet::new();
    for (d, (_, stats)) in config.deliveries.iter().zip(&all_stats) {
        let name = d.name.clone();
        let run = pipeline::run_delivery(
            client.clone(),
            d.clone(),
            config.state_dir.clone(),
            stats.clone(),
            stop_rx.clone(),
        );
        deliveries.spawn(async move { (name, run.await) });
    }
    let status_file = status::status_path(&config.state_dir);
    let reporter = tokio::spawn(report(
        all_stats.clone(),
        status_file.clone(),
        Duration::from_secs(config.progress_interval_seconds),
        stop_rx.clone(),
    ));
    let mut failed = false;
    loop {
        tokio::select! {
            _ = &mut signal => {
                tracing::info!("shutting down: delivering what is buffered");
                break;
            }
            done = deliveries.join_next() => match done {
                None => break,
                Some(Ok((name, Err(e)))) => {
                    tracing::error!(delivery = %name, "delivery stopped: {e:#}");
                    failed = true;
                }
                Some(Ok((_, Ok(())))) => {}
                Some(Err(e)) => {
                    tracing::error!("delivery task failed: {e}");
                    failed = true;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    let timeout = Duration::from_secs(config.shutdown_timeout_seconds);
    let drained = tokio::time::timeout(timeout, async {
        while let Some(done) = deliveries.join_next().await {
            if let Ok((name, Err(e))) = done {
                tracing::error!(delivery = %name, "delivery stopped: {e:#}");
                failed = true;
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            timeout_s = timeout.as_secs(),
            "shutdown timed out: records not delivered are read again on the next start"
        );
        deliveries.abort_all();
        while deliveries.join_next().await.is_some() {}
    }
    let _ = reporter.await;
    write_status(&all_stats, &status_file).await;
    tracing::info!("stopped");
    if failed {
        anyhow::bail!("a delivery stream stopped with an error");
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM: {e}");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn write_status(all: &[(String, Arc<Stats>)], path: &Path) {
    let file = StatusFile {
        pid: std::process::id(),
        updated_at_ms: now_ms(),
        deliveries: all.iter().map(|(n, s)| s.snapshot(n)).collect(),
    };
    let bytes = serde_json::to_vec_pretty(&file).expect("serialising the status cannot fail");
    let path = path.to_path_buf();
    let r =
        tokio::task::spawn_blocking(move || sink::objects::write_file_atomically(&path, &bytes))
            .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("cannot write the status file: {e}"),
        Err(e) => tracing::warn!("cannot write the status file: {e}"),
    }
}

/// Writes the status file every second and logs a progress line per delivery stream every
/// `progress` (never when zero), until shutdown.
async fn report(
    all: Vec<(String, Arc<Stats>)>,
    path: PathBuf,
    progress: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_progress = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        write_status(&all, &path).await;
        if !progress.is_zero() && last_progress.elapsed() >= progress {
            last_progress = tokio::time::Instant::now();
            for (name, stats) in &all {
                tracing::info!("{}", status::progress_line(&stats.snapshot(name)));
            }
        }
    }
}
