//! `riptide-chaos`: failover drills against a cluster the drill builds itself, and the checker
//! on its own.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use riptide_chaos::checker::check;
use riptide_chaos::cluster::Topology;
use riptide_chaos::drills::{self, DrillOptions, Scenario, ScenarioResult};
use riptide_chaos::history::read_jsonl;
use riptide_chaos::workload::WorkloadConfig;

/// Failover drills for Riptide.
///
/// `drill` starts real `riptide node` processes, each in a network namespace of its own
/// (needs root and iproute2), writes to them while it kills, pauses and cuts off nodes, then
/// reads everything back and checks that no acknowledged record was lost, duplicated, reordered
/// or made up. It prints a table, one row per scenario, and exits non-zero if any check failed.
#[derive(Debug, Parser)]
#[command(name = "riptide-chaos", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run failover drills, each on a fresh cluster.
    ///
    /// Scenarios: leader-kill, isolate, one-way-cut, region-loss, rolling-restart, pause,
    /// transfer-storm, node-loss, power-loss (every node at once) and power-loss-node (one at
    /// a time). With none named, all run. --smoke runs a short set (under two minutes). The
    /// power-loss scenarios put each node's data directory on a FUSE file system that drops
    /// every write not yet fsynced at each cut (needs /dev/fuse and fusermount3, from fuse3).
    Drill(DrillArgs),
    /// Check a recorded history (history.jsonl of a drill) and print the verdict.
    Check {
        /// The history file, one JSON event per line.
        history: PathBuf,
        /// Print the whole report as JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// The delaying TCP proxy that a drill with --region-rtt-ms runs in front of each node.
    #[command(hide = true)]
    Proxy {
        /// Address to accept on.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Address to relay to.
        #[arg(long)]
        to: std::net::SocketAddr,
        /// IP=MILLISECONDS: delay each direction of connections from IP; repeatable.
        #[arg(long = "delay")]
        delays: Vec<String>,
    },
}

#[derive(Debug, clap::Args)]
struct DrillArgs {
    /// Scenario to run; repeat for several. Default: all.
    #[arg(long = "scenario", value_name = "NAME")]
    scenarios: Vec<String>,
    /// A short drill: leader-kill (3 kills), isolate, one-way-cut and pause, with short holds.
    #[arg(long)]
    smoke: bool,
    /// Regions, named r1, r2, ...
    #[arg(long, default_value_t = 3)]
    regions: usize,
    /// Nodes in each region.
    #[arg(long, default_value_t = 1)]
    nodes_per_region: usize,
    /// Round trip added between nodes of different regions, in milliseconds, by a delaying
    /// proxy in front of each node (0: none). The single data centre defaults are meant for
    /// round trips of a few milliseconds.
    #[arg(long, default_value_t = 0)]
    region_rtt_ms: u64,
    /// The nodes' Raft timeout profile: data-centre, or cross-region for round trips of 50 to
    /// 150 ms (see deploy/config-template.toml, [timing]).
    #[arg(long, default_value = "data-centre", value_parser = ["data-centre", "cross-region"])]
    timing_profile: String,
    /// Shards of the drill stream.
    #[arg(long, default_value_t = 3)]
    shards: u32,
    /// Producer tasks, one put in flight each, spread over the shards round robin (each writes
    /// only to its shard, so a shard without a leader stalls only its own producers).
    #[arg(long, default_value_t = 6)]
    producers: usize,
    /// Puts per second per producer.
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Records per put: 1 sends PutRecord, more send PutRecords (at most 500).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Bytes per record: its id, padded to this size (at most 1 MiB; 0: the id alone).
    #[arg(long, default_value_t = 0)]
    record_bytes: usize,
    /// How many leaders the leader-kill scenario kills.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// How many power cuts the power-loss scenarios make; the time between two is random,
    /// from a twentieth of --hold-secs to twice it.
    #[arg(long, default_value_t = 10)]
    cuts: usize,
    /// How long each fsync takes on the power-loss scenarios' disks, in microseconds, as a
    /// disk's flush does (the file system underneath keeps everything in the page cache).
    #[arg(long, default_value_t = 500)]
    disk_sync_us: u64,
    /// How long each fault lasts, in seconds.
    #[arg(long, default_value_t = 10.0)]
    hold_secs: f64,
    /// Writing before, between and after faults, in seconds.
    #[arg(long, default_value_t = 3.0)]
    settle_secs: f64,
    /// Folder for the nodes' data and logs, the histories and the reports.
    #[arg(long, default_value = "target/drills")]
    out: PathBuf,
    /// The `riptide` binary (default: next to this program, then $RIPTIDE_BIN).
    #[arg(long, env = "RIPTIDE_BIN")]
    riptide_bin: Option<PathBuf>,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn riptide_bin(given: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.is_file() {
            bail!("--riptide-bin {}: no such file", path.display());
        }
        return Ok(path);
    }
    let me = std::env::current_exe().context("locating this program")?;
    let sibling = me.with_file_name("riptide");
    if sibling.is_file() {
        return Ok(sibling);
    }
    bail!(
        "no `riptide` binary next to {}: build it with `cargo build -p riptide` or pass \
         --riptide-bin",
        me.display()
    )
}

fn options(args: &DrillArgs) -> Result<(Vec<Scenario>, DrillOptions)> {
    let mut scenarios = Vec::new();
    for name in &args.scenarios {
        let Some(s) = Scenario::parse(name) else {
            let known: Vec<&str> = Scenario::ALL.iter().map(|s| s.name()).collect();
            bail!("--scenario {name}: unknown; one of {}", known.join(", "));
        };
        scenarios.push(s);
    }
    if args.region_rtt_ms > 10_000 {
        bail!("--region-rtt-ms {}: at most 10000", args.region_rtt_ms);
    }
    let (mut kills, mut hold, mut settle) = (args.kills, args.hold_secs, args.settle_secs);
    let mut cuts = args.cuts;
    if args.smoke {
        if scenarios.is_empty() {
            scenarios = vec![
                Scenario::LeaderKill,
                Scenario::Isolate,
                Scenario::OneWayCut,
                Scenario::Pause,
            ];
        }
        kills = kills.min(3);
        cuts = cuts.min(3);
        hold = hold.min(4.0);
        settle = settle.min(2.0);
    }
    if scenarios.is_empty() {
        scenarios = Scenario::ALL.to_vec();
    }
    if args.regions == 0 || args.nodes_per_region == 0 {
        bail!("--regions and --nodes-per-region must be at least 1");
    }
    if args.regions * args.nodes_per_region < 3 {
        bail!(
            "--regions {} x --nodes-per-region {}: a drill needs at least 3 nodes",
            args.regions,
            args.nodes_per_region
        );
    }
    if args.shards == 0 || args.producers == 0 || args.rate == 0 {
        bail!("--shards, --producers and --rate must be at least 1");
    }
    if args.batch == 0 || args.batch > 500 {
        bail!(
            "--batch {}: between 1 and 500 (a PutRecords call's limit)",
            args.batch
        );
    }
    if args.disk_sync_us > 1_000_000 {
        bail!(
            "--disk-sync-us {}: at most 1000000 (1 s)",
            args.disk_sync_us
        );
    }
    if args.record_bytes > 1 << 20 {
        bail!(
            "--record-bytes {}: at most 1048576 (1 MiB, a record's limit)",
            args.record_bytes
        );
    }
    let in_range = |secs: f64| secs > 0.0 && secs <= 600.0;
    if !in_range(hold) || !in_range(settle) {
        bail!("--hold-secs and --settle-secs must be between 0 and 600");
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("--out {}", args.out.display()))?;
    let out = std::fs::canonicalize(&args.out)
        .with_context(|| format!("--out {}", args.out.display()))?;
    let opts = DrillOptions {
        bin: riptide_bin(args.riptide_bin.clone())?,
        proxy_bin: Some(std::env::current_exe().context("locating this program")?),
        out,
        topology: Topology {
            regions: args.regions,
            nodes_per_region: args.nodes_per_region,
            region_rtt_ms: args.region_rtt_ms,
            timing_profile: args.timing_profile.clone(),
            replica_repair_after_ms: None,
        },
        shards: args.shards,
        workload: WorkloadConfig {
            producers: args.producers,
            rate_per_producer: args.rate,
            batch: args.batch,
            record_bytes: args.record_bytes,
            ..WorkloadConfig::default()
        },
        kills,
        cuts,
        disk_sync_latency: Duration::from_micros(args.disk_sync_us),
        hold: Duration::from_secs_f64(hold),
        settle: Duration::from_secs_f64(settle),
    };
    Ok((scenarios, opts))
}

async fn drill(args: DrillArgs) -> Result<bool> {
    let (scenarios, opts) = options(&args)?;
    let mut results: Vec<ScenarioResult> = Vec::new();
    for scenario in scenarios {
        results.push(drills::run(scenario, &opts).await?);
    }
    let ok = results.iter().all(|r| r.report.ok());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        println!("{}", drills::table(&results));
        for r in results.iter().filter(|r| !r.report.ok()) {
            println!("{}:\n{}\n", r.scenario.name(), r.report.summary());
        }
        println!("histories, reports and node logs: {}", opts.out.display());
    }
    Ok(ok)
}

fn check_file(history: &Path, json: bool) -> Result<bool> {
    let events = read_jsonl(history).with_context(|| history.display().to_string())?;
    let report = check(&events).with_context(|| history.display().to_string())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary());
    }
    Ok(report.ok())
}

fn proxy(
    listen: std::net::SocketAddr,
    to: std::net::SocketAddr,
    delays: &[String],
) -> Result<bool> {
    let delays = riptide_chaos::proxy::parse_delays(delays).map_err(anyhow::Error::msg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(riptide_chaos::proxy::run(listen, to, delays))
        .with_context(|| format!("proxy on {listen}"))?;
    Ok(true)
}

/// Waits for Ctrl-C or SIGTERM; returns which.
async fn interrupted() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return "interrupted";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Check { history, json } => check_file(&history, json),
        Command::Proxy { listen, to, delays } => proxy(listen, to, &delays),
        Command::Drill(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| {
                rt.block_on(async {
                    // Dropping the drill on Ctrl-C or SIGTERM drops its cluster, which stops
                    // the nodes, unmounts their disks and removes the network.
                    tokio::select! {
                        r = drill(args) => r,
                        signal = interrupted() => Err(anyhow::anyhow!(
                            "{signal}: drill stopped; nodes killed, disks unmounted, network removed"
                        )),
                    }
                })
            }),
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("riptide-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}
