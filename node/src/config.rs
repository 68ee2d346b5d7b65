//! Node configuration: a TOML file, then `RIPTIDE_*` environment variables, then command-line
//! flags, each overriding the one before. Every error names the key it is about.
//! `deploy/config-template.toml` lists every key with its default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use riptide_raft::GroupSettings;
use serde::{Deserialize, Serialize};

/// Largest `record_cache_mb`.
const MAX_RECORD_CACHE_MB: u64 = 1 << 20;
/// Smallest `leader_balance_interval_ms` other than 0 (off).
pub const MIN_LEADER_BALANCE_INTERVAL_MS: u64 = 1_000;

/// Largest `start_hold_ms`.
pub const MAX_START_HOLD_MS: u64 = 120_000;

/// Smallest `replica_repair_after_ms`: a node must miss at least one liveness probe (about one
/// a second) before its replicas move.
pub const MIN_REPLICA_REPAIR_AFTER_MS: u64 = 1_000;

/// A configuration mistake, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    fn new(key: &str, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Counts and rates a node enforces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Streams the cluster may hold.
    pub max_streams: u32,
    /// Shards over all streams.
    pub max_shards: u32,
    /// Shards of one stream.
    pub max_shards_per_stream: u32,
    /// Per-shard write quota in records per second; 0 turns it off.
    pub shard_write_records_per_sec: u32,
    /// Per-shard write quota in bytes per second; 0 turns it off.
    pub shard_write_bytes_per_sec: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_streams: 100,
            max_shards: 1024,
            max_shards_per_stream: 256,
            shard_write_records_per_sec: 0,
            shard_write_bytes_per_sec: 0,
        }
    }
}

/// Which timeout defaults the Raft groups start from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TimingProfile {
    /// Nodes a few milliseconds apart: shards heartbeat every 100 ms and elect after 0.9 to
    /// 1.2 s of silence (the leader's lease, the election timeout's max of 600 ms, plus a
    /// timeout of 300 to 600 ms); the controller every 50 ms, after 0.9 to 1.2 s.
    #[default]
    DataCentre,
    /// Regions 50 to 150 ms apart: every group heartbeats every 200 ms and elects after 2.5 to
    /// 3 s of silence (the leader's lease of 1.5 s plus an election timeout of 1 to 1.5 s), so
    /// that a slow round trip is not taken for a dead leader.
    CrossRegion,
}

/// Raft timeouts, for the controller group and for data shards apart. A value of 0 keeps the
/// profile's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Timing {
    pub profile: TimingProfile,
    pub controller_heartbeat_interval_ms: u64,
    pub controller_election_timeout_min_ms: u64,
    pub controller_election_timeout_max_ms: u64,
    pub shard_heartbeat_interval_ms: u64,
    pub shard_election_timeout_min_ms: u64,
    pub shard_election_timeout_max_ms: u64,
}

impl Timing {
    fn apply(base: GroupSettings, heartbeat: u64, min: u64, max: u64) -> GroupSettings {
        let pick = |v: u64, default: u64| if v == 0 { default } else { v };
        GroupSettings {
            heartbeat_interval_ms: pick(heartbeat, base.heartbeat_interval_ms),
            election_timeout_min_ms: pick(min, base.election_timeout_min_ms),
            election_timeout_max_ms: pick(max, base.election_timeout_max_ms),
            ..base
        }
    }

    /// Settings of the controller group.
    pub fn controller(&self) -> GroupSettings {
        let base = match self.profile {
            TimingProfile::DataCentre => GroupSettings::controller(),
            TimingProfile::CrossRegion => GroupSettings {
                snapshot_after_entries: GroupSettings::controller().snapshot_after_entries,
                log_is_data: false,
                ..GroupSettings::cross_region()
            },
        };
        Self::apply(
            base,
            self.controller_heartbeat_interval_ms,
            self.controller_election_timeout_min_ms,
            self.controller_election_timeout_max_ms,
        )
    }

    /// Settings of every data shard's group.
    pub fn shard(&self) -> GroupSettings {
        let base = match self.profile {
            TimingProfile::DataCentre => GroupSettings::data_shard(),
            TimingProfile::CrossRegion => GroupSettings::cross_region(),
        };
        Self::apply(
            base,
            self.shard_heartbeat_interval_ms,
            self.shard_election_timeout_min_ms,
            self.shard_election_timeout_max_ms,
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (prefix, settings) in [("controller", self.controller()), ("shard", self.shard())] {
            settings.validate().map_err(|e| match e {
                riptide_raft::RaftError::InvalidSettings { key, reason } => {
                    ConfigError::new(&format!("timing.{prefix}_{key}"), reason)
                }
                other => ConfigError::new("timing", other.to_string()),
            })?;
        }
        Ok(())
    }
}

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, unique in the cluster, at least 1.
    pub node_id: u64,
    /// Address the gRPC server binds (clients, admin and node-to-node traffic).
    pub listen: String,
    /// Address other nodes and clients use to reach this node; defaults to `listen`.
    pub advertise: String,
    /// Address the Kinesis-compatible HTTP API binds; empty turns it off.
    pub kinesis_listen: String,
    /// Holds the node's RocksDB and snapshot spool.
    pub data_dir: PathBuf,
    pub region: String,
    pub zone: String,
    /// `id=host:port` of each node that forms a new cluster; the first three (by id) become
    /// the controller's voters. Empty when joining.
    pub initial_cluster: Vec<String>,
    /// Address of any node of a running cluster, to join it.
    pub join: String,
    /// How often shard leaders remove records older than their stream's retention.
    pub retention_check_interval_ms: u64,
    /// How long a node may leave the controller leader's liveness probes unanswered before the
    /// controller moves its replicas to other nodes.
    pub replica_repair_after_ms: u64,
    /// How often the controller's leader rebalances shard leaderships (to each stream's
    /// preferred leader region, then evenly over the usable nodes); 0 turns balancing off.
    pub leader_balance_interval_ms: u64,
    /// How long after it started a node holds client calls it cannot serve yet (the cluster has
    /// not formed: too few nodes registered) until it can, instead of refusing them; 0 refuses
    /// them at once. See `server::core::readiness`.
    pub start_hold_ms: u64,
    /// MiB of the newest records written to the node's segment files that it keeps in memory,
    /// so that consumers a little behind do not read them from the disk; 0 turns the cache off.
    pub record_cache_mb: u64,
    pub limits: Limits,
    pub timing: Timing,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: 0,
            listen: "127.0.0.1:7101".into(),
            advertise: String::new(),
            kinesis_listen: String::new(),
            data_dir: PathBuf::from("riptide-data"),
            region: "local".into(),
            zone: "local-a".into(),
            initial_cluster: Vec::new(),
            join: String::new(),
            retention_check_interval_ms: 60_000,
            replica_repair_after_ms: 300_000,
            leader_balance_interval_ms: 10_000,
            start_hold_ms: 15_000,
            record_cache_mb: 512,
            limits: Limits::default(),
            timing: Timing::default(),
        }
    }
}

/// A member of the initial cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitialMember {
    pub id: u64,
    pub address: String,
}

/// Values given on the command line; `None` leaves the earlier layers' value.
#[derive(Debug, Clone, Default)]
pub struct ConfigOverrides {
    pub node_id: Option<u64>,
    pub listen: Option<String>,
    pub advertise: Option<String>,
    pub kinesis_listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub region: Option<String>,
    pub zone: Option<String>,
    pub initial_cluster: Option<Vec<String>>,
    pub join: Option<String>,
    pub replica_repair_after_ms: Option<u64>,
}

impl NodeConfig {
    /// Reads `file` (if any), then the environment through `env`, then `flags`, and validates.
    pub fn load(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        flags: ConfigOverrides,
    ) -> Result<Self, ConfigError> {
        let mut c = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::new("config", format!("cannot read {}: {e}", path.display()))
                })?;
                Self::from_toml(&text)?
            }
            None => Self::default(),
        };
        let num = |key: &str, v: String| {
            v.parse::<u64>()
                .map_err(|_| ConfigError::new(key, format!("must be a whole number, got {v:?}")))
        };
        if let Some(v) = env("RIPTIDE_NODE_ID") {
            c.node_id = num("RIPTIDE_NODE_ID", v)?;
        }
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        };
        for (key, slot) in [
            ("RIPTIDE_LISTEN", &mut c.listen),
            ("RIPTIDE_ADVERTISE", &mut c.advertise),
            ("RIPTIDE_KINESIS_LISTEN", &mut c.kinesis_listen),
            ("RIPTIDE_REGION", &mut c.region),
            ("RIPTIDE_ZONE", &mut c.zone),
            ("RIPTIDE_JOIN", &mut c.join),
        ] {
            if let Some(v) = env(key) {
                *slot = v;
            }
        }
        if let Some(v) = env("RIPTIDE_DATA_DIR") {
            c.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("RIPTIDE_INITIAL_CLUSTER") {
            c.initial_cluster = list(v);
        }
        if let Some(v) = env("RIPTIDE_REPLICA_REPAIR_AFTER_MS") {
            c.replica_repair_after_ms = num("RIPTIDE_REPLICA_REPAIR_AFTER_MS", v)?;
        }
        if let Some(v) = env("RIPTIDE_LEADER_BALANCE_INTERVAL_MS") {
            c.leader_balance_interval_ms = num("RIPTIDE_LEADER_BALANCE_INTERVAL_MS", v)?;
        }
        if let Some(v) = env("RIPTIDE_START_HOLD_MS") {
            c.start_hold_ms = num("RIPTIDE_START_HOLD_MS", v)?;
        }
        if let Some(v) = env("RIPTIDE_RECORD_CACHE_MB") {
            c.record_cache_mb = num("RIPTIDE_RECORD_CACHE_MB", v)?;
        }
        let ConfigOverrides {
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
        } = flags;
        c.node_id = node_id.unwrap_or(c.node_id);
        c.listen = listen.unwrap_or(c.listen);
        c.advertise = advertise.unwrap_or(c.advertise);
        c.kinesis_listen = kinesis_listen.unwrap_or(c.kinesis_listen);
        c.data_dir = data_dir.unwrap_or(c.data_dir);
        c.region = region.unwrap_or(c.region);
        c.zone = zone.unwrap_or(c.zone);
        c.initial_cluster = initial_cluster.unwrap_or(c.initial_cluster);
        c.join = join.unwrap_or(c.join);
        c.replica_repair_after_ms = replica_repair_after_ms.unwrap_or(c.replica_repair_after_ms);
        c.validate()?;
        Ok(c)
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let key = e
                .message()
                .split('`')
                .nth(1)
                .unwrap_or("config")
                .to_string();
            ConfigError::new(&key, e.to_string().trim().replace('\n', " "))
        })
    }

    /// `record_cache_mb` in bytes.
    pub fn record_cache_bytes(&self) -> usize {
        usize::try_from(self.record_cache_mb << 20).unwrap_or(usize::MAX)
    }

    /// The address other nodes use.
    pub fn advertised(&self) -> &str {
        if self.advertise.is_empty() {
            &self.listen
        } else {
            &self.advertise
        }
    }

    /// The parsed `initial_cluster`, sorted by id.
    pub fn initial_members(&self) -> Result<Vec<InitialMember>, ConfigError> {
        let mut out = Vec::new();
        for (i, m) in self.initial_cluster.iter().enumerate() {
            let key = format!("initial_cluster[{i}]");
            let (id, addr) = m.split_once('=').ok_or_else(|| {
                ConfigError::new(&key, format!("must be id=host:port, got {m:?}"))
            })?;
            let id: u64 = id.trim().parse().map_err(|_| {
                ConfigError::new(&key, format!("node id must be a whole number, got {id:?}"))
            })?;
            if id == 0 {
                return Err(ConfigError::new(&key, "node id must be at least 1"));
            }
            if out.iter().any(|x: &InitialMember| x.id == id) {
                return Err(ConfigError::new(
                    &key,
                    format!("node id {id} appears twice"),
                ));
            }
            check_addr(&key, addr.trim())?;
            out.push(InitialMember {
                id,
                address: addr.trim().to_string(),
            });
        }
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node_id == 0 {
            return Err(ConfigError::new(
                "node_id",
                "must be set to a whole number of at least 1 (flag --node-id, env RIPTIDE_NODE_ID)",
            ));
        }
        check_addr("listen", &self.listen)?;
        if !self.advertise.is_empty() {
            check_addr("advertise", &self.advertise)?;
        }
        if !self.kinesis_listen.is_empty() {
            check_addr("kinesis_listen", &self.kinesis_listen)?;
            if self.kinesis_listen == self.listen {
                return Err(ConfigError::new(
                    "kinesis_listen",
                    format!(
                        "must differ from listen ({}): the Kinesis API has its own port",
                        self.listen
                    ),
                ));
            }
        }
        if self.data_dir.as_os_str().is_empty() {
            return Err(ConfigError::new("data_dir", "must not be empty"));
        }
        for (key, v) in [("region", &self.region), ("zone", &self.zone)] {
            if v.is_empty() || v.len() > 64 {
                return Err(ConfigError::new(key, "must be 1 to 64 characters"));
            }
        }
        let members = self.initial_members()?;
        match (members.is_empty(), self.join.is_empty()) {
            (true, true) => {
                return Err(ConfigError::new(
                    "initial_cluster",
                    "set initial_cluster to form a new cluster, or join to join a running one",
                ));
            }
            (false, false) => {
                return Err(ConfigError::new(
                    "join",
                    "set either initial_cluster or join, not both",
                ));
            }
            (false, true) => {
                if !members.iter().any(|m| m.id == self.node_id) {
                    return Err(ConfigError::new(
                        "initial_cluster",
                        format!("does not list this node (node_id {})", self.node_id),
                    ));
                }
            }
            (true, false) => check_addr("join", &self.join)?,
        }
        if self.retention_check_interval_ms == 0 {
            return Err(ConfigError::new(
                "retention_check_interval_ms",
                "must be at least 1",
            ));
        }
        if self.replica_repair_after_ms < MIN_REPLICA_REPAIR_AFTER_MS {
            return Err(ConfigError::new(
                "replica_repair_after_ms",
                format!(
                    "must be at least {MIN_REPLICA_REPAIR_AFTER_MS} (nodes are probed about once a second), got {}",
                    self.replica_repair_after_ms
                ),
            ));
        }
        if self.leader_balance_interval_ms != 0
            && self.leader_balance_interval_ms < MIN_LEADER_BALANCE_INTERVAL_MS
        {
            return Err(ConfigError::new(
                "leader_balance_interval_ms",
                format!(
                    "must be 0 (off) or at least {MIN_LEADER_BALANCE_INTERVAL_MS} (leaders are learnt from probes about once a second), got {}",
                    self.leader_balance_interval_ms
                ),
            ));
        }
        if self.start_hold_ms > MAX_START_HOLD_MS {
            return Err(ConfigError::new(
                "start_hold_ms",
                format!(
                    "must be at most {MAX_START_HOLD_MS} (a client waits this long for an answer), got {}",
                    self.start_hold_ms
                ),
            ));
        }
        if self.record_cache_mb > MAX_RECORD_CACHE_MB {
            return Err(ConfigError::new(
                "record_cache_mb",
                format!(
                    "must be at most {MAX_RECORD_CACHE_MB} (1 TiB), got {}",
                    self.record_cache_mb
                ),
            ));
        }
        self.timing.validate()?;
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_streams", l.max_streams),
            ("limits.max_shards", l.max_shards),
            ("limits.max_shards_per_stream", l.max_shards_per_stream),
        ] {
            if v == 0 {
                return Err(ConfigError::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

fn check_addr(key: &str, addr: &str) -> Result<(), ConfigError> {
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(ConfigError::new(
            key,
            format!("must be host:port, got {addr:?}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "node_id = 2\nregion = \"eu\"\ninitial_cluster = [\"1=127.0.0.1:7101\", \"2=127.0.0.1:7102\"]\nlisten = \"127.0.0.1:7102\"\n",
        )
        .expect("write");
        let env = |k: &str| match k {
            "RIPTIDE_ZONE" => Some("eu-b".to_string()),
            "RIPTIDE_REPLICA_REPAIR_AFTER_MS" => Some("5000".to_string()),
            _ => None,
        };
        let c = NodeConfig::load(
            Some(&path),
            env,
            ConfigOverrides {
                region: Some("us".into()),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(
            (c.node_id, c.region.as_str(), c.zone.as_str()),
            (2, "us", "eu-b")
        );
        assert_eq!(c.initial_members().expect("members").len(), 2);
        assert_eq!(c.replica_repair_after_ms, 5000);
        let flagged = NodeConfig::load(
            Some(&path),
            env,
            ConfigOverrides {
                replica_repair_after_ms: Some(2000),
                ..Default::default()
            },
        )
        .expect("valid");
        assert_eq!(flagged.replica_repair_after_ms, 2000);
    }

    #[test]
    fn mistakes_name_their_key() {
        let err = |text: &str| {
            NodeConfig::from_toml(text)
                .and_then(|c| c.validate())
                .expect_err("must be refused")
                .key
        };
        assert_eq!(err("node_id = 0\ninitial_cluster=[\"1=a:1\"]"), "node_id");
        assert_eq!(
            err("node_id = 1\nlisten = \"nope\"\ninitial_cluster=[\"1=a:1\"]"),
            "listen"
        );
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"x\"]"),
            "initial_cluster[0]"
        );
        assert_eq!(err("node_id = 1"), "initial_cluster");
        assert_eq!(
            err("node_id = 3\ninitial_cluster=[\"1=a:1\"]"),
            "initial_cluster"
        );
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"1=a:1\"]\n[limits]\nmax_shards = 0"),
            "limits.max_shards"
        );
        assert_eq!(err("nodeid = 1"), "nodeid");
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"1=a:1\"]\nreplica_repair_after_ms = 10"),
            "replica_repair_after_ms"
        );
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"1=a:1\"]\nkinesis_listen = \"4567\""),
            "kinesis_listen"
        );
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"1=a:1\"]\nrecord_cache_mb = 1048577"),
            "record_cache_mb"
        );
        assert_eq!(
            err("node_id = 1\ninitial_cluster=[\"1=a:1\"]\nstart_hold_ms = 120001"),
            "start_hold_ms"
        );
        assert_eq!(
            err(
                "node_id = 1\ninitial_cluster=[\"1=a:1\"]\nlisten = \"a:1\"\nkinesis_listen = \"a:1\""
            ),
            "kinesis_listen"
        );
        let e = NodeConfig::load(
            None,
            |k| (k == "RIPTIDE_NODE_ID").then(|| "x".into()),
            ConfigOverrides::default(),
        )
        .expect_err("must be refused");
        assert_eq!(e.key, "RIPTIDE_NODE_ID");
    }
}

#[cfg(test)]
mod template_tests {
    use super::*;

    /// deploy/config-template.toml lists every key with its default.
    #[test]
    fn the_template_holds_every_key_at_its_default() {
        let text = include_str!("../../deploy/config-template.toml");
        let parsed = NodeConfig::from_toml(text).expect("template parses");
        assert_eq!(parsed, NodeConfig::default());
        // Every key of the configuration, found by serialising the defaults, so that a key
        // added to NodeConfig without the template fails here.
        let defaults = toml::Value::try_from(NodeConfig::default()).expect("defaults serialise");
        let mut keys = Vec::new();
        let Some(top) = defaults.as_table() else {
            panic!("the configuration is a table");
        };
        for (key, value) in top {
            match value.as_table() {
                Some(table) => {
                    keys.push(format!("[{key}]"));
                    keys.extend(table.keys().cloned());
                }
                None => keys.push(key.clone()),
            }
        }
        assert!(keys.len() > 20, "found only {keys:?}");
        for k in keys {
            assert!(text.contains(&format!("\n{k}")), "template lacks {k}");
        }
    }
}

#[cfg(test)]
mod timing_tests {
    use super::*;

    #[test]
    fn profiles_give_their_timeouts_and_overrides_win() {
        let dc = NodeConfig::from_toml("").expect("empty config").timing;
        assert_eq!(dc.shard(), GroupSettings::data_shard());
        assert_eq!(dc.controller(), GroupSettings::controller());
        let cross = NodeConfig::from_toml(
            "[timing]\nprofile = \"cross-region\"\nshard_election_timeout_max_ms = 5000\n",
        )
        .expect("cross-region config")
        .timing;
        let shard = cross.shard();
        assert_eq!(
            (
                shard.heartbeat_interval_ms,
                shard.election_timeout_min_ms,
                shard.election_timeout_max_ms
            ),
            (200, 1000, 5000)
        );
        assert_eq!(cross.controller().election_timeout_min_ms, 1000);
    }

    #[test]
    fn bad_timeouts_name_their_key() {
        let mut c = NodeConfig {
            node_id: 1,
            initial_cluster: vec!["1=127.0.0.1:7101".into()],
            ..NodeConfig::default()
        };
        c.validate().expect("defaults are valid");
        c.timing.shard_election_timeout_min_ms = 150;
        let e = c
            .validate()
            .expect_err("150 ms is not more than twice 100 ms");
        assert_eq!(e.key, "timing.shard_election_timeout_min_ms");
        c.timing.shard_election_timeout_min_ms = 0;
        c.timing.controller_election_timeout_max_ms = 100;
        let e = c.validate().expect_err("max below min");
        assert_eq!(e.key, "timing.controller_election_timeout_max_ms");
        let e = NodeConfig::from_toml("[timing]\nprofile = \"moon\"\n").expect_err("unknown");
        assert!(e.to_string().contains("profile"), "{e}");
    }
}
