//! The drills: for each scenario, a fresh cluster, the workload, the faults, then a full read
//! and the checker's verdict.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use rand::seq::IndexedRandom;
use riptide_client::{Client, ErrorCode, ShardId};
use serde::Serialize;

use crate::checker::{Report, check};
use crate::cluster::{Cluster, ClusterError, Topology, shard_leaders};
use crate::history::{Event, write_jsonl};
use crate::workload::{Recorder, Workload, WorkloadConfig, read_all, read_shards_as};

/// The stream every drill writes to.
pub const STREAM: &str = "drill";

/// A failure that stopped a drill before the checker could judge it.
#[derive(Debug, thiserror::Error)]
pub enum DrillError {
    /// The harness failed.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// Writing the history or report failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The recorded history could not be judged.
    #[error("checking the history: {0}")]
    Check(String),
}

/// One kind of fault a drill rehearses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// kill -9 a shard's leader, restart it after the hold time; repeated `kills` times.
    LeaderKill,
    /// Cut a shard's leader off from every other host, both ways.
    Isolate,
    /// Drop every packet a shard's leader sends to the shard's other replicas (but not theirs
    /// to it).
    OneWayCut,
    /// kill -9 every node of the region of a shard's leader.
    RegionLoss,
    /// Stop (SIGTERM) and restart every node, one after another.
    RollingRestart,
    /// SIGSTOP a shard's leader, SIGCONT after the hold time.
    Pause,
    /// Move shard leaders between replicas twice a second.
    TransferStorm,
    /// kill -9 a shard's leader and keep it down until the controller has rebuilt its
    /// replicas on the other nodes (at least two nodes per region; nodes repair after 5 s).
    NodeLoss,
    /// Every node loses power at once, `cuts` times at random moments: each is killed and its
    /// data directory (a power-loss file system) loses every write it never synced; then all
    /// start again.
    PowerLoss,
    /// One node at a time, picked at random, loses power the same way, `cuts` times.
    PowerLossNode,
}

impl Scenario {
    /// Every scenario, in the order a full drill runs them.
    pub const ALL: [Scenario; 10] = [
        Scenario::LeaderKill,
        Scenario::Isolate,
        Scenario::OneWayCut,
        Scenario::RegionLoss,
        Scenario::RollingRestart,
        Scenario::Pause,
        Scenario::TransferStorm,
        Scenario::NodeLoss,
        Scenario::PowerLoss,
        Scenario::PowerLossNode,
    ];

    /// The scenario's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::LeaderKill => "leader-kill",
            Scenario::Isolate => "isolate",
            Scenario::OneWayCut => "one-way-cut",
            Scenario::RegionLoss => "region-loss",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::Pause => "pause",
            Scenario::TransferStorm => "transfer-storm",
            Scenario::NodeLoss => "node-loss",
            Scenario::PowerLoss => "power-loss",
            Scenario::PowerLossNode => "power-loss-node",
        }
    }

    /// Whether the nodes' data directories must be power-loss file systems.
    pub fn cuts_power(self) -> bool {
        matches!(self, Scenario::PowerLoss | Scenario::PowerLossNode)
    }

    /// The scenario called `name`.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// Everything a drill run needs.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The `riptide` binary the nodes run.
    pub bin: PathBuf,
    /// A `riptide-chaos` binary, for the delaying proxy when the topology has latency between
    /// regions.
    pub proxy_bin: Option<PathBuf>,
    /// Where each scenario keeps its nodes' data, logs, history and report.
    pub out: PathBuf,
    /// Shape of the cluster.
    pub topology: Topology,
    /// Shards of the drill stream.
    pub shards: u32,
    /// The producers.
    pub workload: WorkloadConfig,
    /// How many leaders the leader-kill scenario kills, one after another.
    pub kills: usize,
    /// How many power cuts the power-loss scenarios make.
    pub cuts: usize,
    /// How long each fsync takes on the power-loss scenarios' disks.
    pub disk_sync_latency: Duration,
    /// How long each fault lasts.
    pub hold: Duration,
    /// Writing before the first fault, and between faults.
    pub settle: Duration,
}

/// The outcome of one scenario.
#[derive(Debug, Serialize)]
pub struct ScenarioResult {
    /// Which scenario.
    pub scenario: Scenario,
    /// The checker's report on its history.
    pub report: Report,
    /// For each fault, how long writes to the worst-hit shard stopped, in milliseconds.
    pub outages_ms: Vec<u64>,
    /// Where the history, report and node logs are.
    pub dir: PathBuf,
    /// How long the scenario took, in seconds.
    pub seconds: f64,
}

impl ScenarioResult {
    /// Median and maximum of the faults' write outages, in milliseconds.
    pub fn outage_median_max(&self) -> (u64, u64) {
        let mut v = self.outages_ms.clone();
        v.sort_unstable();
        let median = v.get(v.len() / 2).copied().unwrap_or(0);
        (median, v.last().copied().unwrap_or(0))
    }
}

/// Prints a progress line, with the time since the drill started.
fn say(recorder: &Recorder, scenario: Scenario, what: impl AsRef<str>) {
    eprintln!(
        "[{:>7.1}s] {}: {}",
        recorder.now_ms() as f64 / 1000.0,
        scenario.name(),
        what.as_ref()
    );
}

/// Runs `scenario` on a fresh cluster and judges its history.
pub async fn run(scenario: Scenario, opts: &DrillOptions) -> Result<ScenarioResult, DrillError> {
    let started = Instant::now();
    let dir = opts.out.join(scenario.name());
    // Power-loss disks of an earlier drill whose process died are still mounted there.
    riptide_powerloss::unmount_stale(&dir).map_err(|source| DrillError::Io {
        path: dir.clone(),
        source,
    })?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| DrillError::Io {
            path: dir.clone(),
            source,
        })?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| DrillError::Io {
        path: dir.clone(),
        source,
    })?;
    let recorder = Recorder::new();
    let mut topology = opts.topology.clone();
    if scenario == Scenario::NodeLoss {
        // The lost node's replicas need nodes that hold none of its shards, in its region.
        topology.nodes_per_region = topology.nodes_per_region.max(2);
        topology.replica_repair_after_ms = Some(NODE_LOSS_REPAIR_AFTER.as_millis() as u64);
    }
    say(
        &recorder,
        scenario,
        format!(
            "starting {} nodes in {} regions ({} ms round trip between regions)",
            topology.nodes(),
            topology.regions,
            topology.region_rtt_ms
        ),
    );
    let mut cluster = Cluster::start(
        topology.clone(),
        &opts.bin,
        opts.proxy_bin.as_deref(),
        &dir,
        scenario
            .cuts_power()
            .then_some(riptide_powerloss::MountOptions {
                sync_latency: opts.disk_sync_latency,
            }),
    )?;
    cluster.wait_listening(Duration::from_secs(30)).await?;
    let client = cluster.client().await?;
    let shards = create_stream(&client, opts.shards, topology.nodes()).await?;
    say(
        &recorder,
        scenario,
        format!("stream {STREAM} with {} shards is active", shards.len()),
    );

    let workload = Workload::start(&client, STREAM, &shards, &opts.workload, &recorder);
    tokio::time::sleep(opts.settle).await;
    let faults = inject(scenario, opts, &mut cluster, &client, &recorder).await;
    // Whatever happened, leave every node running and connected before the final read.
    cluster.net().heal().map_err(ClusterError::from)?;
    for id in cluster.ids() {
        cluster.restart(id)?;
        cluster.resume(id)?;
    }
    faults?;
    say(
        &recorder,
        scenario,
        "faults over; writing on while the cluster settles",
    );
    tokio::time::sleep(opts.settle).await;
    workload.stop().await;
    say(&recorder, scenario, "reading every shard from the start");
    read_all(&client, STREAM, &shards, &recorder, Duration::from_secs(60))
        .await
        .map_err(|source| ClusterError::Client {
            what: "reading the stream back".into(),
            source,
        })?;
    if scenario.cuts_power() {
        // Every replica must hold the same records: after power cuts a replica that lost
        // what it had acknowledged, or holds another entry under the same log id, only shows
        // once it leads. Each leads in turn and reads its shard whole; the checker counts
        // readers that disagree as divergent.
        say(
            &recorder,
            scenario,
            "reading every shard again from each of its replicas, as leader",
        );
        read_from_every_replica(&client, &recorder).await?;
    }
    cluster.shutdown();

    let events = recorder.events();
    write_history(&dir.join("history.jsonl"), &events)?;
    let report = check(&events).map_err(|e| DrillError::Check(e.to_string()))?;
    let json = serde_json::to_vec_pretty(&report).map_err(|e| DrillError::Check(e.to_string()))?;
    let report_path = dir.join("report.json");
    std::fs::write(&report_path, json).map_err(|source| DrillError::Io {
        path: report_path,
        source,
    })?;
    let outages_ms = report.faults.iter().map(|f| f.longest_outage_ms).collect();
    let result = ScenarioResult {
        scenario,
        report,
        outages_ms,
        dir,
        seconds: started.elapsed().as_secs_f64(),
    };
    let (median, max) = result.outage_median_max();
    say(
        &recorder,
        scenario,
        format!(
            "done: {}; write outage median {median} ms, max {max} ms",
            result.report.summary().lines().next().unwrap_or_default()
        ),
    );
    Ok(result)
}

fn write_history(path: &Path, events: &[Event]) -> Result<(), DrillError> {
    let io = |source| DrillError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(path).map_err(io)?;
    write_jsonl(std::io::BufWriter::new(file), events)
        .map_err(|e| DrillError::Check(format!("{}: {e}", path.display())))
}

async fn create_stream(
    client: &Client,
    shards: u32,
    nodes: usize,
) -> Result<Vec<ShardId>, ClusterError> {
    let call = |what: &str| {
        let what = what.to_string();
        move |source| ClusterError::Client { what, source }
    };
    // Placement uses the nodes registered with the controller: wait for all of them, so that
    // every shard gets a replica in every region.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let registered = client.cluster_status().await.map(|s| s.nodes.len());
        if registered.as_ref().is_ok_and(|&n| n >= nodes) {
            break;
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!(
                "only {registered:?} of {nodes} nodes registered with the controller after 60 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    loop {
        match client.create_stream(STREAM, shards, None).await {
            Ok(_) => break,
            // An earlier attempt whose answer was lost created it.
            Err(e) if e.code == ErrorCode::AlreadyExists || e.code == ErrorCode::ResourceInUse => {
                break;
            }
            Err(e) if e.is_retryable() && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(call("creating the drill stream")(e)),
        }
    }
    // Another node may not have applied the new stream yet and answer NotFound for a moment.
    loop {
        match client
            .wait_for_active(STREAM, Duration::from_secs(60))
            .await
        {
            Ok(_) => break,
            Err(e) if e.code == ErrorCode::NotFound && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(call("waiting for the drill stream")(e)),
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leaders = shard_leaders(client, STREAM).await?;
        if leaders.iter().all(|(_, leader, _)| *leader != 0) {
            return Ok(leaders.into_iter().map(|(s, _, _)| s).collect());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(
                "not every shard of the drill stream has a leader after 30 s".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Makes each replica of every shard of the drill stream its leader in turn and reads the shard
/// whole from it, as reader `replica-<node>`.
async fn read_from_every_replica(client: &Client, recorder: &Recorder) -> Result<(), ClusterError> {
    for (shard, _, replicas) in shard_leaders(client, STREAM).await? {
        for node in replicas {
            lead_from(client, shard, node).await?;
            read_shards_as(
                client,
                STREAM,
                &[shard],
                &format!("replica-{node}"),
                recorder,
                Duration::from_secs(60),
            )
            .await
            .map_err(|source| ClusterError::Client {
                what: format!("reading {shard} back from node {node}"),
                source,
            })?;
        }
    }
    Ok(())
}

/// Moves the leadership of `shard` to `node` and waits until the cluster reports it there
/// (30 s at most).
async fn lead_from(client: &Client, shard: ShardId, node: u64) -> Result<(), ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader = shard_leaders(client, STREAM)
            .await?
            .into_iter()
            .find(|(s, _, _)| *s == shard)
            .map(|(_, l, _)| l);
        if leader == Some(node) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!(
                "{shard} is led by {leader:?}, not node {node}, 30 s after asking"
            )));
        }
        // Refused while an election runs or the node catches up: asked again.
        let _ = client.transfer_shard_leader(STREAM, shard, node).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The leader and replicas of shard number `index` (wrapping), waiting up to 10 s for it to
/// have a leader.
async fn leader_of(
    client: &Client,
    index: usize,
) -> Result<(ShardId, u64, Vec<u64>), ClusterError> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leaders = shard_leaders(client, STREAM).await?;
        if !leaders.is_empty() {
            let (shard, leader, replicas) = leaders[index % leaders.len()].clone();
            if leader != 0 {
                return Ok((shard, leader, replicas));
            }
        }
        if Instant::now() > deadline {
            return Err(ClusterError::Timeout(format!(
                "shard number {index} has no leader for 10 s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn inject(
    scenario: Scenario,
    opts: &DrillOptions,
    cluster: &mut Cluster,
    client: &Client,
    recorder: &Arc<Recorder>,
) -> Result<(), ClusterError> {
    let hold = opts.hold;
    match scenario {
        Scenario::LeaderKill => {
            for i in 0..opts.kills {
                let (shard, leader, _) = leader_of(client, i).await?;
                let t0 = recorder.now_ms();
                cluster.kill(leader)?;
                say(
                    recorder,
                    scenario,
                    format!(
                        "kill {}/{}: kill -9 node {leader}, leader of {shard}",
                        i + 1,
                        opts.kills
                    ),
                );
                tokio::time::sleep(hold).await;
                cluster.restart(leader)?;
                recorder.fault(
                    "leader-kill",
                    &format!("node {leader} (leader of {shard})"),
                    t0,
                );
                tokio::time::sleep(opts.settle).await;
            }
        }
        Scenario::Isolate => {
            let (shard, leader, _) = leader_of(client, 0).await?;
            let t0 = recorder.now_ms();
            cluster.net().isolate(leader as usize)?;
            say(
                recorder,
                scenario,
                format!("node {leader} (leader of {shard}) cut off"),
            );
            tokio::time::sleep(hold).await;
            cluster.net().heal()?;
            recorder.fault("isolate", &format!("node {leader} (leader of {shard})"), t0);
        }
        Scenario::OneWayCut => {
            let (shard, leader, replicas) = leader_of(client, 0).await?;
            let t0 = recorder.now_ms();
            let followers: Vec<u64> = replicas.into_iter().filter(|&r| r != leader).collect();
            for &r in &followers {
                cluster.net().cut(leader as usize, r as usize)?;
            }
            say(
                recorder,
                scenario,
                format!("node {leader} (leader of {shard}) can no longer send to {followers:?}"),
            );
            tokio::time::sleep(hold).await;
            cluster.net().heal()?;
            recorder.fault(
                "one-way-cut",
                &format!("node {leader} (leader of {shard}) to its followers"),
                t0,
            );
        }
        Scenario::RegionLoss => {
            let (shard, leader, _) = leader_of(client, 0).await?;
            let topology = cluster.topology().clone();
            let region = (leader as usize - 1) % topology.regions + 1;
            let lost = topology.nodes_in_region(region);
            let t0 = recorder.now_ms();
            for &id in &lost {
                cluster.kill(id)?;
            }
            say(
                recorder,
                scenario,
                format!("region r{region} lost (nodes {lost:?}; node {leader} led {shard})"),
            );
            tokio::time::sleep(hold).await;
            for &id in &lost {
                cluster.restart(id)?;
            }
            recorder.fault("region-loss", &format!("region r{region}"), t0);
        }
        Scenario::RollingRestart => {
            for id in cluster.ids() {
                let t0 = recorder.now_ms();
                let clean = cluster.stop(id, Duration::from_secs(20))?;
                say(
                    recorder,
                    scenario,
                    format!(
                        "node {id} stopped{}; starting it again",
                        if clean { "" } else { " (killed after 20 s)" }
                    ),
                );
                cluster.restart(id)?;
                cluster.wait_listening(Duration::from_secs(30)).await?;
                recorder.fault("restart", &format!("node {id}"), t0);
                tokio::time::sleep(opts.settle).await;
            }
        }
        Scenario::Pause => {
            let (shard, leader, _) = leader_of(client, 0).await?;
            let t0 = recorder.now_ms();
            cluster.pause(leader)?;
            say(
                recorder,
                scenario,
                format!("node {leader} (leader of {shard}) paused"),
            );
            tokio::time::sleep(hold).await;
            cluster.resume(leader)?;
            recorder.fault("pause", &format!("node {leader} (leader of {shard})"), t0);
        }
        Scenario::NodeLoss => {
            let (shard, leader, replicas) = leader_of(client, 0).await?;
            let t0 = recorder.now_ms();
            cluster.kill(leader)?;
            say(
                recorder,
                scenario,
                format!(
                    "kill -9 node {leader} (leader of {shard}); it stays down until its replicas are rebuilt"
                ),
            );
            let took = wait_repaired(cluster, client, leader, replicas.len()).await?;
            say(
                recorder,
                scenario,
                format!(
                    "every shard back to {} replicas in distinct regions, copies on disk, {:.1} s after the kill ({} s of it waiting for replica_repair_after_ms)",
                    replicas.len(),
                    took.as_secs_f64(),
                    NODE_LOSS_REPAIR_AFTER.as_secs()
                ),
            );
            recorder.fault(
                "node-loss",
                &format!("node {leader} (leader of {shard})"),
                t0,
            );
        }
        Scenario::PowerLoss | Scenario::PowerLossNode => {
            for i in 0..opts.cuts {
                // Anywhere from just after the nodes came back (while they recover and elect
                // leaders) to well into steady writing.
                let (gap, down, pick) = {
                    let mut rng = rand::rng();
                    let gap = hold.mul_f64(rng.random_range(0.05..2.0));
                    let down = Duration::from_millis(rng.random_range(100..1000));
                    let ids = cluster.ids();
                    let pick = *ids.choose(&mut rng).unwrap_or(&1);
                    (gap, down, pick)
                };
                tokio::time::sleep(gap).await;
                let ids = if scenario == Scenario::PowerLoss {
                    cluster.ids()
                } else {
                    vec![pick]
                };
                let t0 = recorder.now_ms();
                let reports = cluster.power_cut(&ids)?;
                let dropped: u64 = reports.iter().map(|(_, r)| r.bytes_dropped).sum();
                let files: usize = reports.iter().map(|(_, r)| r.files_reverted).sum();
                let changes: usize = reports.iter().map(|(_, r)| r.changes_undone).sum();
                let target = if scenario == Scenario::PowerLoss {
                    "every node".to_string()
                } else {
                    format!("node {pick}")
                };
                say(
                    recorder,
                    scenario,
                    format!(
                        "cut {}/{}: {target} lost power {:.1} s after the last restart; {dropped} unsynced bytes in {files} files and {changes} directory changes dropped",
                        i + 1,
                        opts.cuts,
                        gap.as_secs_f64()
                    ),
                );
                tokio::time::sleep(down).await;
                for &id in &ids {
                    cluster.restart(id)?;
                }
                recorder.fault(scenario.name(), &target, t0);
            }
            // The last restart has its turn at writing before the final read.
            tokio::time::sleep(hold).await;
        }
        Scenario::TransferStorm => {
            let t0 = recorder.now_ms();
            let storm_end = Instant::now() + hold * 2;
            let mut moved = 0;
            let mut refused = 0;
            while Instant::now() < storm_end {
                let leaders = shard_leaders(client, STREAM).await?;
                let pick = {
                    let mut rng = rand::rng();
                    leaders
                        .choose(&mut rng)
                        .and_then(|(shard, leader, replicas)| {
                            let others: Vec<u64> =
                                replicas.iter().copied().filter(|r| r != leader).collect();
                            others.choose(&mut rng).map(|&to| (*shard, to))
                        })
                };
                if let Some((shard, to)) = pick {
                    match client.transfer_shard_leader(STREAM, shard, to).await {
                        Ok(()) => moved += 1,
                        Err(_) => refused += 1,
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            say(
                recorder,
                scenario,
                format!("{moved} leader transfers done, {refused} refused"),
            );
            recorder.fault("transfer-storm", "every shard", t0);
        }
    }
    Ok(())
}

/// How long node-loss's nodes wait before they rebuild a silent node's replicas elsewhere.
const NODE_LOSS_REPAIR_AFTER: Duration = Duration::from_secs(5);
/// How long node-loss waits for the repair to finish.
const NODE_LOSS_REPAIR_DEADLINE: Duration = Duration::from_secs(180);

/// Waits until no shard is placed on `lost`, every shard has as many replicas as before in as
/// many distinct regions, and the nodes that are up hold a copy of every placed replica.
/// Returns how long that took.
async fn wait_repaired(
    cluster: &Cluster,
    client: &Client,
    lost: u64,
    replicas_per_shard: usize,
) -> Result<Duration, ClusterError> {
    let started = Instant::now();
    let topology = cluster.topology().clone();
    loop {
        let shards = shard_leaders(client, STREAM).await?;
        let placed_ok = shards.iter().all(|(_, leader, replicas)| {
            let regions: std::collections::BTreeSet<String> =
                replicas.iter().map(|r| topology.region_of(*r)).collect();
            *leader != 0
                && !replicas.contains(&lost)
                && replicas.len() == replicas_per_shard
                && regions.len() == replicas_per_shard.min(topology.regions)
        });
        let copies: u32 = match client.cluster_status().await {
            Ok(status) => status
                .nodes
                .iter()
                .filter(|n| n.up && n.node_id != lost)
                .map(|n| n.shard_replicas)
                .sum(),
            Err(_) => 0,
        };
        if placed_ok && copies as usize == shards.len() * replicas_per_shard {
            return Ok(started.elapsed());
        }
        if started.elapsed() > NODE_LOSS_REPAIR_DEADLINE {
            return Err(ClusterError::Timeout(format!(
                "node {lost}'s replicas were not rebuilt within {NODE_LOSS_REPAIR_DEADLINE:?}: placements {shards:?}, copies on the nodes up {copies}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The drills table, in Markdown.
pub fn table(results: &[ScenarioResult]) -> String {
    let mut out = String::from(
        "| scenario | faults | acknowledged | lost | duplicated | retried duplicates | phantom | reordered | write outage median / max (ms) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in results {
        let (median, max) = r.outage_median_max();
        let c = &r.report;
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {median} / {max} |\n",
            r.scenario.name(),
            r.outages_ms.len(),
            c.acknowledged,
            c.lost.count,
            c.duplicated.count,
            c.retried_duplicates.count,
            c.phantom.count,
            c.reordered.count,
        ));
    }
    out
}
