//! The `riptide` command: `riptide node` and `riptide dev` run the server (riptide-node); every
//! other subcommand is a client command of riptide-cli.
//!
//! An error ends the program with one line on standard error, `error: ` and the error's cause
//! chain, and exit code 1 (clap's usage errors exit with 2). Errors are never printed with
//! `{:?}`, which for an `anyhow::Error` appends a stack backtrace when RUST_BACKTRACE is set.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use riptide_node::clock::SystemClock;
use riptide_node::config::{ConfigOverrides, NodeConfig};
use riptide_node::dev::{DevCluster, DevOptions};
use riptide_node::server::Node;

/// Riptide: a self-hosted streaming log store in the mould of Amazon Kinesis.
#[derive(Debug, Parser)]
#[command(name = "riptide", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: riptide_cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    #[command(flatten)]
    Client(riptide_cli::ClientCommand),
    /// Run a local three-node cluster in this process, on 127.0.0.1, until Ctrl-C.
    ///
    /// The nodes keep their data under --data-dir; starting again with the same folder
    /// brings every stream and record back.
    Dev {
        /// Folder for the three nodes' data directories.
        #[arg(long, default_value = "riptide-dev-data", env = "RIPTIDE_DEV_DATA_DIR")]
        data_dir: PathBuf,
        /// Port of node 1; nodes 2 and 3 use the next two ports.
        #[arg(long, default_value_t = 7101, env = "RIPTIDE_DEV_BASE_PORT")]
        base_port: u16,
        /// Port of the Kinesis-compatible HTTP API (node 1, on 127.0.0.1); 0 turns it off.
        #[arg(long, default_value_t = riptide_node::dev::DEFAULT_KINESIS_PORT, env = "RIPTIDE_DEV_KINESIS_PORT")]
        kinesis_port: u16,
    },
    /// Run one node of a cluster.
    ///
    /// Settings come from --config (TOML; deploy/config-template.toml lists every key), then
    /// RIPTIDE_* environment variables, then these flags. To form a new cluster give every node
    /// the same --initial-cluster; to add a node to a running cluster give it --join.
    ///
    /// Example: riptide node --node-id 1 --listen 127.0.0.1:7101 --data-dir /var/lib/riptide \
    ///            --initial-cluster 1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103
    Node {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// This node's id, unique in the cluster (at least 1).
        #[arg(long)]
        node_id: Option<u64>,
        /// Address to bind, host:port.
        #[arg(long)]
        listen: Option<String>,
        /// Address other nodes and clients use, when it differs from --listen.
        #[arg(long)]
        advertise: Option<String>,
        /// Address of the Kinesis-compatible HTTP API, host:port (off unless set).
        #[arg(long)]
        kinesis_listen: Option<String>,
        /// Folder for the node's data.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Region label, for placing replicas.
        #[arg(long)]
        region: Option<String>,
        /// Zone label, for placing replicas.
        #[arg(long)]
        zone: Option<String>,
        /// Members of a new cluster: id=host:port, comma-separated.
        #[arg(long, value_delimiter = ',')]
        initial_cluster: Option<Vec<String>>,
        /// Address of any node of a running cluster to join.
        #[arg(long)]
        join: Option<String>,
        /// Milliseconds a node may leave liveness probes unanswered before its replicas move
        /// to other nodes (default 300000).
        #[arg(long)]
        replica_repair_after_ms: Option<u64>,
    },
}

async fn until_ctrl_c() -> Result<()> {
    tokio::signal::ctrl_c().await?;
    println!("stopping ...");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,openraft=error,riptide_node=info".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, outermost first, separated by `: `, on one line (a message that
/// spans lines has them joined).
fn one_line(error: &anyhow::Error) -> String {
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Client(cmd) => riptide_cli::run(&cli.global, cmd).await?,
        Command::Dev {
            data_dir,
            base_port,
            kinesis_port,
        } => {
            let opts = DevOptions {
                data_dir,
                base_port,
                kinesis_port,
            };
            println!(
                "starting a 3-node cluster in {} ...",
                opts.data_dir.display()
            );
            let cluster = DevCluster::start(&opts)
                .await
                .context("starting the development cluster")?;
            println!("{}", cluster.describe());
            println!("press Ctrl-C to stop");
            until_ctrl_c().await?;
            cluster.shutdown().await;
            println!("stopped; data kept in {}", opts.data_dir.display());
        }
        Command::Node {
            config,
            node_id,
            listen,
            advertise,
            kinesis_listen,
            data_dir,
            region,
            zone,
            initial_cluster,
            join,
            replica_repair_after_ms,
        } => {
            let overrides = ConfigOverrides {
                node_id,
                listen,
                advertise,
                kinesis_listen,
                data_dir,
                region,
                zone,
                initial_cluster,
                join,
                replica_repair_after_ms,
            };
            let config = NodeConfig::load(config.as_deref(), |k| std::env::var(k).ok(), overrides)
                .context("configuration")?;
            let node = Node::start(config, Arc::new(SystemClock))
                .await
                .context("starting the node")?;
            println!("node {} listening on http://{}", node.id(), node.addr());
            if let Some(addr) = node.kinesis_addr() {
                println!("kinesis api on http://{addr}");
            }
            until_ctrl_c().await?;
            node.shutdown().await;
        }
    }
    Ok(())
}
