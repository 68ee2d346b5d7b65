//! Settings of a group class (controller or data shard) and of the node-to-node transport.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RaftError;

/// Timing and log-retention settings of one Raft group.
///
/// Groups of different classes are tuned apart: the controller group is small and latency
/// sensitive, data shards are many and should not spend the node's CPU on heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSettings {
    /// How often a leader sends heartbeats, in milliseconds.
    pub heartbeat_interval_ms: u64,
    /// Lower bound of the randomised election timeout, in milliseconds.
    pub election_timeout_min_ms: u64,
    /// Upper bound of the randomised election timeout, in milliseconds.
    pub election_timeout_max_ms: u64,
    /// Ask peers before starting an election (pre-vote), so that a node cut off from the others
    /// does not disturb the group when it comes back.
    pub pre_vote: bool,
    /// Build a snapshot after this many entries were applied since the last one; the log below
    /// the snapshot may then be purged.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log below a snapshot so that slightly lagging followers catch up from
    /// the log rather than through a snapshot.
    pub keep_entries_below_snapshot: u64,
    /// Most entries sent in one append request.
    pub max_entries_per_append: u64,
    /// The log is the group's data: committed entries stay in the log after openraft purges
    /// them, until the state machine releases them ([`crate::GroupBatch::release_log`]), and
    /// snapshots carry the retained entries. Data shards store their records this way, so a
    /// record is written once (the log) instead of twice (the log, then a data family).
    #[serde(default)]
    pub log_is_data: bool,
    /// Bytes of the newest log entries each replica keeps in memory (0: none). Replication
    /// and readers of recent entries are served from there instead of RocksDB.
    #[serde(default = "default_log_cache_bytes")]
    pub log_cache_bytes: u64,
}

fn default_log_cache_bytes() -> u64 {
    4 << 20
}

impl GroupSettings {
    /// Defaults for data shards in one data centre. A follower campaigns after 0.9 to 1.2 s
    /// without a heartbeat (the lease of 600 ms plus 300 to 600 ms): nine or more heartbeats
    /// missed in a row, where ten minutes of the busiest closed-loop `riptide bench` on two
    /// busy cores left at most 474 ms between two (docs/drills.md). A leader whose process
    /// died is replaced sooner, without waiting for the lease: see `transport::failover`.
    pub fn data_shard() -> Self {
        Self {
            heartbeat_interval_ms: 100,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            pre_vote: true,
            snapshot_after_entries: 20_000,
            keep_entries_below_snapshot: 5_000,
            max_entries_per_append: 256,
            log_is_data: true,
            log_cache_bytes: default_log_cache_bytes(),
        }
    }

    /// Defaults for the controller (metadata) group in one data centre.
    pub fn controller() -> Self {
        Self {
            heartbeat_interval_ms: 50,
            election_timeout_min_ms: 300,
            election_timeout_max_ms: 600,
            pre_vote: true,
            snapshot_after_entries: 5_000,
            keep_entries_below_snapshot: 1_000,
            max_entries_per_append: 256,
            log_is_data: false,
            log_cache_bytes: 1 << 20,
        }
    }

    /// Profile for groups whose members are in regions 50 to 150 ms apart: heartbeats every
    /// 200 ms, so that at least five are sent within the shortest election timeout. A follower
    /// campaigns after the leader's lease (the election timeout's max) plus a timeout between
    /// min and max of silence, so a killed leader is replaced 2.5 to 3 s after its last
    /// heartbeat.
    pub fn cross_region() -> Self {
        Self {
            heartbeat_interval_ms: 200,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 1500,
            pre_vote: true,
            snapshot_after_entries: 20_000,
            keep_entries_below_snapshot: 20_000,
            max_entries_per_append: 512,
            log_is_data: true,
            log_cache_bytes: default_log_cache_bytes(),
        }
    }

    /// Checks the settings; the error names the offending key.
    pub fn validate(&self) -> Result<(), RaftError> {
        let bad = |key: &str, why: String| RaftError::InvalidSettings {
            key: key.to_string(),
            reason: why,
        };
        if self.heartbeat_interval_ms == 0 {
            return Err(bad("heartbeat_interval_ms", "must be at least 1".into()));
        }
        if self.election_timeout_min_ms <= self.heartbeat_interval_ms * 2 {
            return Err(bad(
                "election_timeout_min_ms",
                format!(
                    "must be more than twice heartbeat_interval_ms ({}), got {}",
                    self.heartbeat_interval_ms, self.election_timeout_min_ms
                ),
            ));
        }
        if self.election_timeout_max_ms <= self.election_timeout_min_ms {
            return Err(bad(
                "election_timeout_max_ms",
                format!(
                    "must be more than election_timeout_min_ms ({}), got {}",
                    self.election_timeout_min_ms, self.election_timeout_max_ms
                ),
            ));
        }
        if self.snapshot_after_entries == 0 {
            return Err(bad("snapshot_after_entries", "must be at least 1".into()));
        }
        if self.max_entries_per_append == 0 {
            return Err(bad("max_entries_per_append", "must be at least 1".into()));
        }
        Ok(())
    }

    pub(crate) fn to_openraft(&self, name: &str) -> Result<openraft::Config, RaftError> {
        self.validate()?;
        let config = openraft::Config {
            cluster_name: name.to_string(),
            heartbeat_interval: self.heartbeat_interval_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            enable_pre_vote: Some(self.pre_vote),
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_after_entries),
            max_in_snapshot_log_to_keep: self.keep_entries_below_snapshot,
            max_payload_entries: self.max_entries_per_append,
            // Generous: a snapshot is streamed in chunks and each chunk must arrive in time.
            install_snapshot_timeout: 10_000,
            // Data groups are many: keep their channels small.
            api_channel_size: Some(4096),
            notification_channel_size: Some(4096),
            state_machine_channel_size: Some(256),
            // A leader that restarts must win an election in a new term before it leads again.
            // Its followers may hold entries of its term that it lost (it sends entries before
            // its own sync of them ends, and a power cut takes what that sync had not covered);
            // leading on in the same term, it would append different entries under the same
            // log ids, which the followers take for the ones they hold.
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        config.validate().map_err(|e| RaftError::InvalidSettings {
            key: "group settings".into(),
            reason: e.to_string(),
        })
    }
}

/// The default of [`TransportSettings::http2_max_frame_bytes`], which the node's other gRPC
/// channels and the client crate use too.
pub const HTTP2_MAX_FRAME_BYTES: u32 = 256 << 10;

/// Settings of the node-to-node transport. The defaults are sized for links with round trips
/// of up to about 100 ms: an HTTP/2 stream window of 8 MiB keeps 80 MB/s flowing per stream at
/// 100 ms, and the connection window leaves room for many groups at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSettings {
    pub connect_timeout_ms: u64,
    /// Deadline of one vote, append or transfer-leader call.
    pub rpc_timeout_ms: u64,
    pub http2_stream_window_bytes: u32,
    pub http2_connection_window_bytes: u32,
    /// Largest HTTP/2 frame a node accepts, and asks its peers to accept. Raft appends and
    /// PutRecords calls carry hundreds of KiB; at HTTP/2's default of 16 KiB each is cut into
    /// dozens of frames, and each frame costs the sender a write system call of its own.
    /// Frames of other streams on the connection (votes, heartbeats) wait behind a large one:
    /// 256 KiB is 20 ms on a 100 Mbit/s link.
    pub http2_max_frame_bytes: u32,
    pub http2_keepalive_interval_ms: u64,
    pub http2_keepalive_timeout_ms: u64,
    /// Largest message a node accepts or sends. Larger messages are refused.
    pub max_message_bytes: usize,
    /// Size of one snapshot chunk on the wire.
    pub snapshot_chunk_bytes: usize,
    /// Watch every peer over a connection of its own, and when the leader of a group turns out
    /// to be gone (its node refuses a new connection right after the old one broke), have a
    /// successor campaign at once instead of after the lease and an election timeout.
    #[serde(default = "default_notice_dead_leaders")]
    pub notice_dead_leaders: bool,
    /// How long a new connection to a peer may take to answer before the peer counts as slow
    /// (nothing is decided) rather than gone.
    #[serde(default = "default_dead_peer_probe_ms")]
    pub dead_peer_probe_ms: u64,
}

fn default_notice_dead_leaders() -> bool {
    true
}

fn default_dead_peer_probe_ms() -> u64 {
    500
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            rpc_timeout_ms: 5_000,
            http2_stream_window_bytes: 8 << 20,
            http2_connection_window_bytes: 32 << 20,
            http2_max_frame_bytes: HTTP2_MAX_FRAME_BYTES,
            http2_keepalive_interval_ms: 10_000,
            http2_keepalive_timeout_ms: 20_000,
            max_message_bytes: 64 << 20,
            snapshot_chunk_bytes: 1 << 20,
            notice_dead_leaders: default_notice_dead_leaders(),
            dead_peer_probe_ms: default_dead_peer_probe_ms(),
        }
    }
}

impl TransportSettings {
    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub(crate) fn rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.rpc_timeout_ms)
    }
    pub(crate) fn dead_peer_probe(&self) -> Duration {
        Duration::from_millis(self.dead_peer_probe_ms)
    }
}
