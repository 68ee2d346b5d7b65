//! A cluster of real `riptide node` processes, each in its own network namespace, labelled with
//! a region and a zone, and the faults a drill applies to them: kill -9 and restart, SIGTERM
//! and restart, SIGSTOP and SIGCONT, cuts in the network.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use riptide_client::{Client, ClientConfig, ShardId};
use riptide_powerloss::{CutReport, MountOptions, PowerLossError, PowerLossMount};

use crate::net::{Net, NetError};

/// The port every node is reached on, inside its own namespace.
const PORT: u16 = 7101;
/// Where a node listens, on 127.0.0.1 inside its namespace, when a delaying proxy takes
/// [`PORT`] in front of it.
const BEHIND_PROXY: &str = "127.0.0.1:7102";

/// A failure of the harness itself (not of the system under test).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The network could not be built or changed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A node process could not be started or signalled.
    #[error("node {node}: {what}: {source}")]
    Process {
        /// The node.
        node: u64,
        /// What was being done.
        what: &'static str,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The cluster did not reach a state in time.
    #[error("{0}")]
    Timeout(String),
    /// A node's power-loss file system could not be mounted or cut.
    #[error("node {node}: {source}")]
    Disk {
        /// The node.
        node: u64,
        /// Why.
        source: PowerLossError,
    },
    /// A call to the cluster failed where the harness needs it to succeed.
    #[error("{what}: {source}")]
    Client {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: riptide_client::ClientError,
    },
}

/// Shape of a drill cluster.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Number of regions, named r1, r2, ...
    pub regions: usize,
    /// Nodes in each region; node ids go round the regions (1 in r1, 2 in r2, ...), so the
    /// controller's voters (the first three ids) are in distinct regions.
    pub nodes_per_region: usize,
    /// Round trip added between nodes of different regions, in milliseconds (0: none). Needs
    /// the delaying proxy ([`crate::proxy`]) in front of every node.
    pub region_rtt_ms: u64,
    /// The nodes' `[timing] profile` ("data-centre" or "cross-region").
    pub timing_profile: String,
    /// The nodes' `replica_repair_after_ms`; their default (5 minutes) when `None`.
    pub replica_repair_after_ms: Option<u64>,
}

impl Topology {
    /// How many nodes.
    pub fn nodes(&self) -> usize {
        self.regions * self.nodes_per_region
    }

    /// Region of node `id`.
    pub fn region_of(&self, id: u64) -> String {
        format!("r{}", (id as usize - 1) % self.regions + 1)
    }

    /// Zone of node `id`: one zone per node within its region.
    pub fn zone_of(&self, id: u64) -> String {
        format!(
            "{}-{}",
            self.region_of(id),
            (id as usize - 1) / self.regions + 1
        )
    }

    /// Nodes in region `region` (1-based).
    pub fn nodes_in_region(&self, region: usize) -> Vec<u64> {
        (1..=self.nodes() as u64)
            .filter(|&id| (id as usize - 1) % self.regions + 1 == region)
            .collect()
    }
}

#[derive(Debug)]
struct NodeProcess {
    child: Option<Child>,
    /// The delaying proxy in front of the node, with `region_rtt_ms`.
    proxy: Option<Child>,
    paused: bool,
}

/// The running cluster. Dropping it kills every node and removes the network.
#[derive(Debug)]
pub struct Cluster {
    net: Net,
    topology: Topology,
    bin: PathBuf,
    proxy_bin: Option<PathBuf>,
    data: PathBuf,
    nodes: Vec<NodeProcess>,
    /// Each node's data directory as a power-loss file system, when the drill cuts power.
    disks: Vec<PowerLossMount>,
}

impl Cluster {
    /// Builds the network and starts every node with the binary `bin`, keeping data and logs
    /// under `data`. With `topology.region_rtt_ms`, `proxy_bin` (a `riptide-chaos` binary) runs
    /// the delaying proxy in front of each node. With `power_loss_disks`, each node's data
    /// directory is a power-loss file system ([`riptide_powerloss`]) mounted with those
    /// options and kept in `data/disk-<id>`, so that [`Cluster::power_cut`] can drop what the
    /// node never synced.
    pub fn start(
        topology: Topology,
        bin: &Path,
        proxy_bin: Option<&Path>,
        data: &Path,
        power_loss_disks: Option<MountOptions>,
    ) -> Result<Cluster, ClusterError> {
        if topology.region_rtt_ms > 0 && proxy_bin.is_none() {
            return Err(ClusterError::Timeout(
                "latency between regions needs the riptide-chaos binary for its proxy".into(),
            ));
        }
        let net = Net::create(topology.nodes())?;
        let mut disks = Vec::new();
        if let Some(options) = power_loss_disks {
            for id in 1..=topology.nodes() as u64 {
                let disk = PowerLossMount::mount_with(
                    &data.join(format!("disk-{id}")),
                    &data.join(format!("node-{id}")),
                    options.clone(),
                )
                .map_err(|source| ClusterError::Disk { node: id, source })?;
                disks.push(disk);
            }
        }
        let mut cluster = Cluster {
            disks,
            net,
            bin: bin.to_path_buf(),
            proxy_bin: proxy_bin.map(Path::to_path_buf),
            data: data.to_path_buf(),
            nodes: (0..topology.nodes())
                .map(|_| NodeProcess {
                    child: None,
                    proxy: None,
                    paused: false,
                })
                .collect(),
            topology,
        };
        for id in cluster.ids() {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// Node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.topology.nodes() as u64).collect()
    }

    /// The cluster's shape.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The network, for cuts.
    pub fn net(&mut self) -> &mut Net {
        &mut self.net
    }

    /// `host:port` of node `id`'s gRPC API.
    pub fn address(&self, id: u64) -> String {
        format!("{}:{PORT}", self.net.addr(id as usize))
    }

    /// The node's log file (stdout and stderr of every run, appended).
    pub fn log_path(&self, id: u64) -> PathBuf {
        self.data.join(format!("node-{id}.log"))
    }

    fn spawn(&mut self, id: u64) -> Result<(), ClusterError> {
        let initial: Vec<String> = self
            .ids()
            .iter()
            .map(|&n| format!("{n}={}", self.address(n)))
            .collect();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(id))
            .map_err(|source| ClusterError::Process {
                node: id,
                what: "opening its log",
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ClusterError::Process {
            node: id,
            what: "opening its log",
            source,
        })?;
        let config = self.data.join("node.toml");
        let repair = self
            .topology
            .replica_repair_after_ms
            .map(|ms| format!("replica_repair_after_ms = {ms}\n"))
            .unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "{repair}[timing]\nprofile = {:?}\n",
                self.topology.timing_profile
            ),
        )
        .map_err(|source| ClusterError::Process {
            node: id,
            what: "writing its configuration",
            source,
        })?;
        let proxied = self.topology.region_rtt_ms > 0;
        if proxied {
            self.spawn_proxy(id, &log)?;
        }
        let listen = if proxied {
            BEHIND_PROXY.to_string()
        } else {
            self.address(id)
        };
        // `ip netns exec` execs the node in place: the child's pid is the node's.
        let child = Command::new("ip")
            .args(["netns", "exec", &self.net.namespace(id as usize)])
            .arg(&self.bin)
            .args(["node", "--node-id", &id.to_string()])
            .arg("--config")
            .arg(&config)
            .args(["--listen", &listen])
            .args(["--advertise", &self.address(id)])
            .arg("--data-dir")
            .arg(self.data.join(format!("node-{id}")))
            .args(["--region", &self.topology.region_of(id)])
            .args(["--zone", &self.topology.zone_of(id)])
            .args(["--initial-cluster", &initial.join(",")])
            .env(
                "RUST_LOG",
                std::env::var("RIPTIDE_CHAOS_NODE_LOG").unwrap_or("info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_err))
            .spawn()
            .map_err(|source| ClusterError::Process {
                node: id,
                what: "starting it",
                source,
            })?;
        let slot = &mut self.nodes[id as usize - 1];
        slot.child = Some(child);
        slot.paused = false;
        Ok(())
    }

    /// Starts the delaying proxy in front of node `id`: half the round trip each way for
    /// connections from nodes of other regions.
    fn spawn_proxy(&mut self, id: u64, log: &std::fs::File) -> Result<(), ClusterError> {
        let Some(proxy_bin) = self.proxy_bin.clone() else {
            return Ok(());
        };
        let half = self.topology.region_rtt_ms / 2;
        let region = self.topology.region_of(id);
        let delays: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|&other| self.topology.region_of(other) != region)
            .map(|other| format!("{}={half}", self.net.addr(other as usize)))
            .collect();
        let io = |source| ClusterError::Process {
            node: id,
            what: "starting its proxy",
            source,
        };
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.net.namespace(id as usize)])
            .arg(proxy_bin)
            .args(["proxy", "--listen", &self.address(id), "--to", BEHIND_PROXY]);
        for d in &delays {
            cmd.args(["--delay", d]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().map_err(io)?))
            .stderr(Stdio::from(log.try_clone().map_err(io)?))
            .spawn()
            .map_err(io)?;
        self.nodes[id as usize - 1].proxy = Some(child);
        Ok(())
    }

    fn signal(&mut self, id: u64, signal: &str) -> Result<(), ClusterError> {
        let Some(child) = self.nodes[id as usize - 1].child.as_ref() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .map_err(|source| ClusterError::Process {
                node: id,
                what: "signalling it",
                source,
            })?;
        if !status.success() {
            return Err(ClusterError::Process {
                node: id,
                what: "signalling it",
                source: std::io::Error::other(format!("kill {signal} failed")),
            });
        }
        Ok(())
    }

    /// Whether node `id` runs (started and not killed).
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[id as usize - 1].child.is_some()
    }

    /// kill -9: the node (and its proxy, as the machine it runs on) stops at once, without
    /// flushing anything.
    pub fn kill(&mut self, id: u64) -> Result<(), ClusterError> {
        let slot = &mut self.nodes[id as usize - 1];
        for mut child in [slot.child.take(), slot.proxy.take()].into_iter().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        slot.paused = false;
        Ok(())
    }

    /// Cuts the power of nodes `ids`: each is killed (kill -9) and then loses every write its
    /// data directory never synced, as after a power cut. Returns what each cut dropped. The
    /// nodes stay down until [`Cluster::restart`]. Needs a cluster started with power-loss disks.
    pub fn power_cut(&mut self, ids: &[u64]) -> Result<Vec<(u64, CutReport)>, ClusterError> {
        if self.disks.is_empty() {
            return Err(ClusterError::Timeout(
                "a power cut needs a cluster started with power-loss disks".into(),
            ));
        }
        // Every node is down before any disk loses its unsynced writes, as when the power of
        // a whole room goes at once.
        for &id in ids {
            self.kill(id)?;
        }
        let mut reports = Vec::new();
        for &id in ids {
            let report = self.disks[id as usize - 1]
                .cut()
                .map_err(|source| ClusterError::Disk { node: id, source })?;
            reports.push((id, report));
        }
        Ok(reports)
    }

    /// SIGTERM, then waits up to `deadline` for a clean exit (kill -9 after that).
    pub fn stop(&mut self, id: u64, deadline: Duration) -> Result<bool, ClusterError> {
        if self.nodes[id as usize - 1].paused {
            self.resume(id)?;
        }
        self.signal(id, "-TERM")?;
        let started = Instant::now();
        let slot = &mut self.nodes[id as usize - 1];
        if let Some(mut proxy) = slot.proxy.take() {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        let Some(mut child) = slot.child.take() else {
            return Ok(true);
        };
        while started.elapsed() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return Ok(true);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        Ok(false)
    }

    /// Starts node `id` again from its data directory.
    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        if self.is_running(id) {
            return Ok(());
        }
        self.spawn(id)
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-STOP")?;
        self.nodes[id as usize - 1].paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<(), ClusterError> {
        self.signal(id, "-CONT")?;
        self.nodes[id as usize - 1].paused = false;
        Ok(())
    }

    /// A client that knows every node.
    pub async fn client(&self) -> Result<Client, ClusterError> {
        let config = ClientConfig {
            endpoints: self
                .ids()
                .iter()
                .map(|&id| format!("http://{}", self.address(id)))
                .collect(),
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(10),
            connect_deadline: Duration::from_secs(60),
            ..ClientConfig::default()
        };
        Client::connect_with(config)
            .await
            .map_err(|source| ClusterError::Client {
                what: "connecting to the drill cluster".into(),
                source,
            })
    }

    /// Waits until every running node answers a gRPC connection.
    pub async fn wait_listening(&self, deadline: Duration) -> Result<(), ClusterError> {
        let started = Instant::now();
        for id in self.ids().into_iter().filter(|&id| self.is_running(id)) {
            let addr = self.address(id);
            loop {
                let attempt = tokio::time::timeout(
                    Duration::from_millis(500),
                    tokio::net::TcpStream::connect(&addr),
                )
                .await;
                if matches!(attempt, Ok(Ok(_))) {
                    break;
                }
                if started.elapsed() > deadline {
                    return Err(ClusterError::Timeout(format!(
                        "node {id} did not listen on {addr} within {deadline:?}; see {}",
                        self.log_path(id).display()
                    )));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// Kills every node, unmounts their power-loss disks and removes the network.
    pub fn shutdown(&mut self) {
        for id in self.ids() {
            let _ = self.kill(id);
        }
        for disk in self.disks.drain(..) {
            let _ = disk.unmount();
        }
        self.net.destroy();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Leader and replicas of every shard of `stream`, as the cluster reports them.
pub async fn shard_leaders(
    client: &Client,
    stream: &str,
) -> Result<Vec<(ShardId, u64, Vec<u64>)>, ClusterError> {
    let desc = client
        .describe_stream(stream)
        .await
        .map_err(|source| ClusterError::Client {
            what: format!("describing {stream}"),
            source,
        })?;
    let mut out = Vec::new();
    for shard in desc.shards {
        let Ok(id) = shard.shard_id.parse::<ShardId>() else {
            continue;
        };
        out.push((id, shard.leader, shard.replicas));
    }
    Ok(out)
}
