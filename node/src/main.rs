//! The `riptide` command.

use std::path::PathBuf;

use anyhow::Result;
use bytes::Bytes;
use clap::{Parser, Subcommand};
use riptide_node::dev::{CONTROLLER_GROUP, DevCluster, DevOptions};

/// Riptide: a self-hosted streaming log store in the mould of Amazon Kinesis.
#[derive(Debug, Parser)]
#[command(name = "riptide", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a local three-node cluster in this process, on 127.0.0.1, until Ctrl-C.
    ///
    /// The nodes keep their data under --data-dir; starting again with the same folder
    /// brings every group back with every committed entry.
    Dev {
        /// Folder for the three nodes' data directories.
        #[arg(long, default_value = "riptide-dev-data", env = "RIPTIDE_DEV_DATA_DIR")]
        data_dir: PathBuf,
        /// Transport port of node 1; nodes 2 and 3 use the next two ports.
        #[arg(long, default_value_t = 7101, env = "RIPTIDE_DEV_BASE_PORT")]
        base_port: u16,
        /// Data groups to run besides the controller group.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(0..=1000))]
        groups: u64,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,riptide=info".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Dev {
            data_dir,
            base_port,
            groups,
        } => {
            let opts = DevOptions {
                data_dir,
                base_port,
                groups,
            };
            println!(
                "starting a 3-node cluster in {} ...",
                opts.data_dir.display()
            );
            let cluster = DevCluster::start(&opts).await?;
            let index = cluster
                .write(CONTROLLER_GROUP, Bytes::from_static(b"dev cluster started"))
                .await?;
            println!("{}", cluster.describe());
            println!("wrote a start marker to group 0 at index {index}; press Ctrl-C to stop");
            tokio::signal::ctrl_c().await?;
            println!("stopping ...");
            cluster.shutdown().await;
            println!("stopped; data kept in {}", opts.data_dir.display());
        }
    }
    Ok(())
}
