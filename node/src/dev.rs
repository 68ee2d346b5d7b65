//! `riptide dev`: a three-node cluster in one process, on 127.0.0.1, for trying Riptide out.
//!
//! Each node has its own data directory under one folder and its own port; together they form
//! a cluster exactly as three `riptide node` processes would. Node 1 also serves the Kinesis
//! HTTP API (on port 4567 unless told otherwise). Starting it again with the same folder brings
//! back every stream and record.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::clock::{Clock, SystemClock};
use crate::config::NodeConfig;
use crate::server::Node;

/// Options of the development cluster.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Folder that holds the three nodes' data directories.
    pub data_dir: PathBuf,
    /// Port of node 1; nodes 2 and 3 take the next two.
    pub base_port: u16,
    /// Port of node 1's Kinesis HTTP API; 0 turns it off.
    pub kinesis_port: u16,
}

/// Port of the Kinesis API of `riptide dev` unless told otherwise, the one kinesalite made
/// familiar.
pub const DEFAULT_KINESIS_PORT: u16 = 4567;

/// A running development cluster.
pub struct DevCluster {
    nodes: Vec<Node>,
}

impl DevCluster {
    /// The configuration of each of the three nodes.
    pub fn configs(opts: &DevOptions) -> Result<Vec<NodeConfig>> {
        let addr = |i: u16| -> Result<String> {
            let port = opts
                .base_port
                .checked_add(i)
                .context("--base-port too high")?;
            Ok(format!("127.0.0.1:{port}"))
        };
        let initial: Vec<String> = (0..3u16)
            .map(|i| Ok(format!("{}={}", i + 1, addr(i)?)))
            .collect::<Result<_>>()?;
        (0..3u16)
            .map(|i| {
                Ok(NodeConfig {
                    node_id: u64::from(i) + 1,
                    listen: addr(i)?,
                    data_dir: opts.data_dir.join(format!("node-{}", i + 1)),
                    zone: format!("local-{}", (b'a' + i as u8) as char),
                    kinesis_listen: if i == 0 && opts.kinesis_port != 0 {
                        format!("127.0.0.1:{}", opts.kinesis_port)
                    } else {
                        String::new()
                    },
                    initial_cluster: initial.clone(),
                    ..NodeConfig::default()
                })
            })
            .collect()
    }

    /// Starts the three nodes and waits until they have registered with the controller.
    pub async fn start(opts: &DevOptions) -> Result<Self> {
        Self::start_with(Self::configs(opts)?, Arc::new(SystemClock)).await
    }

    /// Starts nodes from `configs` with `clock`, and waits until each has registered.
    pub async fn start_with(configs: Vec<NodeConfig>, clock: Arc<dyn Clock>) -> Result<Self> {
        let mut nodes = Vec::new();
        for c in configs {
            let node = Node::start(c, clock.clone()).await?;
            nodes.push(node);
        }
        let cluster = Self { nodes };
        cluster.wait_registered(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    async fn wait_registered(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let expected = self.nodes.len();
        loop {
            let ready = self
                .nodes
                .iter()
                .all(|n| n.core_nodes().map(|v| v.len() >= expected).unwrap_or(false));
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!("nodes did not all register with the controller within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The gRPC endpoints of the nodes, for clients.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("http://{}", n.addr()))
            .collect()
    }

    /// What to print for a user: each node and how to connect.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "node {} listening on http://{}\n",
                n.id(),
                n.addr()
            ));
        }
        if let Some(addr) = self.nodes.first().and_then(|n| n.kinesis_addr()) {
            out.push_str(&format!(
                "kinesis api on http://{addr} (boto3: endpoint_url=\"http://{addr}\"; aws cli: --endpoint-url http://{addr}; any credentials)\n"
            ));
        }
        if let Some(first) = self.nodes.first() {
            out.push_str(&format!(
                "\ntry:\n  riptide stream create orders --shards 4\n  riptide put orders --partition-key user-1 hello\n  riptide tail orders --from trim-horizon --follow\n(the CLI talks to http://{} by default; set --endpoint or RIPTIDE_ENDPOINT for another node)\n",
                first.addr()
            ));
        }
        out
    }

    /// Stops every node: servers and tasks first, then groups, then storage.
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}
