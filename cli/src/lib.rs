//! riptide-cli: the client subcommands of the `riptide` binary (`stream`, `put`, `get`, `tail`,
//! `cluster`, `shard`), thin wrappers over riptide-client that print tables or JSON, and
//! `riptide bench` ([`bench`]), which measures a running cluster.
//!
//! Everything here is an API client: it reaches a cluster through riptide-client and the
//! Kinesis HTTP API only. It must not depend on riptide-node (the server), riptide-raft or
//! RocksDB; the `riptide` binary (cmd/riptide) puts this crate and the server side by side.

mod admin;
pub mod bench;
mod format;
mod records;
mod streams;

use std::time::Duration;

use riptide_client::{Client, ClientConfig, ShardId, StartingPosition};
use serde_json::Value;

/// Options every client subcommand takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Any node of the cluster (http://host:port or host:port); give several, comma-separated,
    /// to fall back on the others when one is down.
    #[arg(
        long,
        global = true,
        env = "RIPTIDE_ENDPOINT",
        default_value = "http://127.0.0.1:7101"
    )]
    pub endpoint: String,
    /// How to print results: human-readable tables, or JSON for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON (one document, or one object per line where records stream out).
    Json,
}

/// The client subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Create, describe, list and delete streams.
    #[command(subcommand)]
    Stream(StreamCommand),
    /// Write records to a stream
    ///
    /// Each DATA argument is one record. Without DATA, every line of standard input is one
    /// record (empty lines are skipped), sent through the batching producer; more than 10
    /// records get a one-line summary instead of a line each.
    #[command(
        after_help = "Examples:\n  riptide put orders --partition-key customer-17 \
                            '{\"id\": 1}' '{\"id\": 2}'\n  seq 1 100000 | riptide put orders"
    )]
    Put(PutArgs),
    /// Read records from a stream: up to --limit records from each shard
    #[command(
        after_help = "Examples:\n  riptide get orders\n  riptide get orders --shard 2 \
                            --from after:00000000000001048576 --limit 10"
    )]
    Get(GetArgs),
    /// Print a stream's records, to the current end or, with --follow, as they arrive
    ///
    /// With --follow it subscribes to every shard (SubscribeToShard) and prints records as
    /// they are written until Ctrl-C; JSON output is one object per line.
    #[command(
        after_help = "Examples:\n  riptide tail orders\n  riptide tail orders --follow \
                            --output json"
    )]
    Tail(TailArgs),
    /// Look at and manage the cluster's nodes.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Manage single shards.
    #[command(subcommand)]
    Shard(ShardCommand),
    /// Measure the cluster: production rate, processing rate, latency and loss rate
    ///
    /// Writes records to a stream (a new one unless --stream names one) for --duration after
    /// --warmup while consumers read them live, then reads every acknowledged record back.
    /// Prints an fsync probe of the local disk, a progress line each second and a table (or
    /// JSON) at the end; exits non-zero when an acknowledged record was not read back.
    Bench(Box<crate::bench::BenchArgs>),
}

/// `riptide stream ...`
#[derive(Debug, clap::Subcommand)]
pub enum StreamCommand {
    /// Create a stream and wait until it is ACTIVE (every shard has a leader).
    ///
    /// Example: riptide stream create orders --shards 4 --retention-hours 48
    Create {
        /// The stream's name: 1 to 128 characters from a-z A-Z 0-9 _ . -
        name: String,
        /// How many shards (each a Raft group of its own).
        #[arg(long)]
        shards: u32,
        /// How long records are kept, in hours (the cluster's default, 24, when absent).
        #[arg(long)]
        retention_hours: Option<u32>,
        /// A region whose nodes should lead the shards while it is healthy (for producers in
        /// that region); leaders spread over every node when absent.
        #[arg(long)]
        preferred_leader_region: Option<String>,
        /// Return as soon as the cluster accepted the stream, without waiting for ACTIVE.
        #[arg(long)]
        no_wait: bool,
        /// Give up after this many seconds, both waiting for a cluster that is starting to
        /// accept the stream (its nodes still registering) and waiting for ACTIVE.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Show a stream's status, retention and shards with their leaders and replicas.
    ///
    /// Example: riptide stream describe orders
    Describe {
        /// The stream's name.
        name: String,
    },
    /// List every stream.
    ///
    /// Example: riptide stream list --output json
    List,
    /// Change a stream's retention or preferred leader region.
    ///
    /// With a preferred leader region, the controller moves each shard's leadership to its
    /// replica in that region within seconds (`leader_balance_interval_ms`), and back there after
    /// a failover once the region is healthy again.
    ///
    /// Example: riptide stream update orders --preferred-leader-region eu-west
    #[command(group = clap::ArgGroup::new("change").required(true).multiple(true))]
    Update {
        /// The stream's name.
        name: String,
        /// How long records are kept, in hours (1 to 8760).
        #[arg(long, group = "change")]
        retention_hours: Option<u32>,
        /// The region whose nodes should lead the stream's shards.
        #[arg(long, group = "change", conflicts_with = "no_preferred_leader_region")]
        preferred_leader_region: Option<String>,
        /// Clear the preferred leader region: leaders spread over every node.
        #[arg(long, group = "change")]
        no_preferred_leader_region: bool,
    },
    /// Delete a stream and all its records.
    ///
    /// Example: riptide stream delete orders
    Delete {
        /// The stream's name.
        name: String,
    },
}

/// `riptide put ...`
#[derive(Debug, clap::Args)]
pub struct PutArgs {
    /// The stream to write to.
    pub stream: String,
    /// Partition key of every record (picks the shard); a random key per record when absent.
    #[arg(long, short = 'k')]
    pub partition_key: Option<String>,
    /// Records to write; without any, one record per line of standard input.
    pub data: Vec<String>,
}

/// `riptide get ...`
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// The stream to read.
    pub stream: String,
    /// Only this shard (`3` or `shardId-000000000003`); every shard when absent.
    #[arg(long)]
    pub shard: Option<ShardId>,
    /// Where to start: trim-horizon, latest, at:SEQ, after:SEQ or timestamp:MS (milliseconds
    /// since the epoch).
    #[arg(long, default_value = "trim-horizon")]
    pub from: StartingPosition,
    /// Most records to read from each shard.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
}

/// `riptide tail ...`
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// The stream to read.
    pub stream: String,
    /// Only this shard (`3` or `shardId-000000000003`); every shard when absent.
    #[arg(long)]
    pub shard: Option<ShardId>,
    /// Where to start: trim-horizon, latest, at:SEQ, after:SEQ or timestamp:MS. Defaults to
    /// trim-horizon, or to latest with --follow.
    #[arg(long)]
    pub from: Option<StartingPosition>,
    /// Keep printing records as they are written (a SubscribeToShard per shard) until Ctrl-C.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `riptide cluster ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Show every node: address, region, zone, up or down, shard leaders and replicas, and
    /// its part in the controller group.
    ///
    /// Example: riptide cluster status
    Status,
    /// Drain a node, or every node of a region, for example before maintenance: it takes no
    /// new replicas, its shard leaderships move to other replicas, and the controller places
    /// its replicas on other nodes, which copy the data; the node then deletes its copies.
    ///
    /// The command shows progress until the nodes hold no leader and no replica (or
    /// --timeout-secs passes; the controller goes on moving them), then a summary.
    /// `riptide cluster undrain` lets the nodes take replicas and leaders again.
    #[command(
        group = clap::ArgGroup::new("target").required(true),
        after_help = "Examples:\n  riptide cluster drain 2\n  riptide cluster drain --region eu-west --output json"
    )]
    Drain {
        /// The node's id.
        #[arg(group = "target")]
        node: Option<u64>,
        /// Drain every node of this region instead.
        #[arg(long, group = "target")]
        region: Option<String>,
        /// Return once the drain is marked and leaders moved, without waiting for the replicas.
        #[arg(long)]
        no_wait: bool,
        /// Give up waiting for the replicas to move after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout_secs: u64,
    },
    /// Clear the drain mark of a node, or of every node of a region: they may take replicas
    /// and leaderships again. Replicas moved away stay where they are; the leader balancer
    /// gives the nodes their share of leaders back within seconds.
    #[command(
        group = clap::ArgGroup::new("target").required(true),
        after_help = "Examples:\n  riptide cluster undrain 2\n  riptide cluster undrain --region eu-west"
    )]
    Undrain {
        /// The node's id.
        #[arg(group = "target")]
        node: Option<u64>,
        /// Every node of this region instead.
        #[arg(long, group = "target")]
        region: Option<String>,
    },
}

/// `riptide shard ...`
#[derive(Debug, clap::Subcommand)]
pub enum ShardCommand {
    /// Make another replica lead a shard.
    ///
    /// Example: riptide shard transfer-leader orders shardId-000000000001 --to 3
    TransferLeader {
        /// The stream.
        stream: String,
        /// The shard (`1` or `shardId-000000000001`).
        shard: ShardId,
        /// Id of the node whose replica should lead.
        #[arg(long)]
        to: u64,
        /// Give up waiting for the new leader after this many seconds.
        #[arg(long, default_value_t = 15)]
        timeout_secs: u64,
    },
}

/// Runs a client subcommand against the cluster at `global.endpoint`.
pub async fn run(global: &GlobalArgs, cmd: ClientCommand) -> anyhow::Result<()> {
    if let ClientCommand::Bench(args) = cmd {
        return crate::bench::run(&global.endpoint, *args).await;
    }
    let client = connect(global).await?;
    let out = Printer {
        format: global.output,
    };
    match cmd {
        ClientCommand::Stream(cmd) => streams::run(&client, out, cmd).await,
        ClientCommand::Put(args) => records::put(&client, out, args).await,
        ClientCommand::Get(args) => records::get(&client, out, args).await,
        ClientCommand::Tail(args) => records::tail(&client, out, args).await,
        ClientCommand::Cluster(cmd) => admin::cluster(&client, out, cmd).await,
        ClientCommand::Shard(cmd) => admin::shard(&client, out, cmd).await,
        ClientCommand::Bench(_) => unreachable!("bench returned above"),
    }
}

async fn connect(global: &GlobalArgs) -> anyhow::Result<Client> {
    let endpoints: Vec<String> = global
        .endpoint
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(String::from)
        .collect();
    let config = ClientConfig {
        endpoints,
        connect_deadline: Duration::from_secs(5),
        retry_deadline: Duration::from_secs(15),
        ..ClientConfig::default()
    };
    Client::connect_with(config)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the cluster: {e}"))
}

/// Prints in the chosen format.
#[derive(Debug, Clone, Copy)]
struct Printer {
    format: OutputFormat,
}

impl Printer {
    fn json(self) -> bool {
        self.format == OutputFormat::Json
    }

    /// Prints `text` for tables or `value` (pretty) for JSON.
    fn show(self, text: impl FnOnce() -> String, value: impl FnOnce() -> Value) {
        match self.format {
            OutputFormat::Table => print!("{}", text()),
            OutputFormat::Json => println!(
                "{}",
                serde_json::to_string_pretty(&value()).expect("a JSON value always serialises")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct TestCli {
        #[command(flatten)]
        global: GlobalArgs,
        #[command(subcommand)]
        cmd: ClientCommand,
    }

    fn parse(args: &[&str]) -> Result<TestCli, clap::Error> {
        TestCli::try_parse_from(std::iter::once("riptide").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_tree_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn global_options_go_before_or_after_the_subcommand() {
        let cli =
            parse(&["stream", "list", "--output", "json", "--endpoint", "h:1"]).expect("valid");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert_eq!(cli.global.endpoint, "h:1");
        let cli = parse(&["--output", "json", "cluster", "status"]).expect("valid");
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(matches!(
            cli.cmd,
            ClientCommand::Cluster(ClusterCommand::Status)
        ));
    }

    #[test]
    fn positions_and_shards_parse_in_their_short_forms() {
        let cli = parse(&[
            "get", "s", "--shard", "3", "--from", "after:42", "--limit", "5",
        ])
        .expect("valid");
        let ClientCommand::Get(args) = cli.cmd else {
            panic!("parsed as {:?}", cli.cmd);
        };
        assert_eq!(args.shard, Some(ShardId(3)));
        assert_eq!(
            args.from,
            StartingPosition::AfterSequence(riptide_client::SequenceNumber(42))
        );
        assert_eq!(args.limit, 5);

        let err = parse(&["get", "s", "--from", "yesterday"]).expect_err("bad position");
        assert!(err.to_string().contains("trim-horizon"), "{err}");
        let err = parse(&["shard", "transfer-leader", "s", "shard-x", "--to", "2"])
            .expect_err("bad shard");
        assert!(err.to_string().contains("shard_id"), "{err}");
    }

    #[test]
    fn stream_create_needs_a_shard_count() {
        assert!(parse(&["stream", "create", "orders"]).is_err());
        let cli =
            parse(&["stream", "create", "orders", "--shards", "4", "--no-wait"]).expect("valid");
        assert!(matches!(
            cli.cmd,
            ClientCommand::Stream(StreamCommand::Create {
                shards: 4,
                no_wait: true,
                retention_hours: None,
                ..
            })
        ));
    }

    #[test]
    fn every_subcommand_help_shows_an_example() {
        let mut root = TestCli::command();
        root.build();
        let mut missing = Vec::new();
        fn walk(cmd: &clap::Command, path: String, missing: &mut Vec<String>) {
            let subs: Vec<_> = cmd
                .get_subcommands()
                .filter(|s| s.get_name() != "help")
                .collect();
            if subs.is_empty() {
                let help = cmd.clone().render_long_help().to_string();
                if !help.contains("Example") {
                    missing.push(path.clone());
                }
            }
            for s in subs {
                walk(s, format!("{path} {}", s.get_name()), missing);
            }
        }
        walk(&root, "riptide".into(), &mut missing);
        assert!(missing.is_empty(), "no example in the help of {missing:?}");
    }
}
