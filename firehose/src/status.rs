//! Counters of each delivery stream, the status file the running daemon keeps, the progress
//! line it logs, and `riptide-firehose status`, which reads that file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One delivery stream's counters, shared by its shard tasks.
#[derive(Debug, Default)]
pub struct Stats {
    records: AtomicU64,
    bytes: AtomicU64,
    objects: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    dropped: AtomicU64,
    shards: Mutex<BTreeMap<String, ShardStatus>>,
}

/// One shard's place in a delivery stream.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardStatus {
    /// How far the reader was behind the newest record of the shard, in milliseconds.
    pub lag_ms: Option<u64>,
    /// The last sequence number delivered (or sent to the error output).
    pub delivered_through: Option<String>,
    /// Records read and not delivered yet.
    pub pending_records: u64,
}

/// A snapshot of one delivery stream, as the status file holds it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeliveryStatus {
    pub name: String,
    pub records: u64,
    pub bytes: u64,
    pub objects: u64,
    pub retries: u64,
    pub errors: u64,
    pub dropped: u64,
    pub shards: BTreeMap<String, ShardStatus>,
}

/// The status file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusFile {
    pub pid: u32,
    pub updated_at_ms: u64,
    pub deliveries: Vec<DeliveryStatus>,
}

impl Stats {
    pub fn delivered(&self, records: u64, bytes: u64, objects: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.objects.fetch_add(objects, Ordering::Relaxed);
    }
    pub fn retried(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
    pub fn failed(&self, records: u64) {
        self.errors.fetch_add(records, Ordering::Relaxed);
    }
    pub fn dropped(&self, records: u64) {
        self.dropped.fetch_add(records, Ordering::Relaxed);
    }
    pub fn update_shard(&self, shard: &str, f: impl FnOnce(&mut ShardStatus)) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        f(shards.entry(shard.to_string()).or_default());
    }
    pub fn snapshot(&self, name: &str) -> DeliveryStatus {
        DeliveryStatus {
            name: name.to_string(),
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            objects: self.objects.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            shards: self
                .shards
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// Where the running daemon writes its status.
pub fn status_path(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// One progress line per delivery stream.
pub fn progress_line(d: &DeliveryStatus) -> String {
    let max_lag = d.shards.values().filter_map(|s| s.lag_ms).max();
    let pending: u64 = d.shards.values().map(|s| s.pending_records).sum();
    format!(
        "{}: {} records ({} bytes) in {} objects, {} pending, max lag {} ms, {} retries, {} errors, {} dropped",
        d.name,
        d.records,
        d.bytes,
        d.objects,
        pending,
        max_lag.map_or("-".to_string(), |l| l.to_string()),
        d.retries,
        d.errors,
        d.dropped
    )
}

/// The table `riptide-firehose status` prints.
pub fn render(status: &StatusFile, now_ms: u64) -> String {
    let mut out = format!(
        "daemon pid {}, status written {:.1} s ago\n",
        status.pid,
        now_ms.saturating_sub(status.updated_at_ms) as f64 / 1000.0
    );
    for d in &status.deliveries {
        out.push_str(&progress_line(d));
        out.push('\n');
        out.push_str(&format!(
            "  {:<22} {:>10} {:>10} {}\n",
            "shard", "lag_ms", "pending", "delivered_through"
        ));
        for (shard, s) in &d.shards {
            out.push_str(&format!(
                "  {:<22} {:>10} {:>10} {}\n",
                shard,
                s.lag_ms.map_or("-".to_string(), |l| l.to_string()),
                s.pending_records,
                s.delivered_through.as_deref().unwrap_or("-")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_table_shows_counters_and_shards() {
        let stats = Stats::default();
        stats.delivered(10, 100, 2);
        stats.retried();
        stats.failed(3);
        stats.update_shard("shardId-000000000000", |s| {
            s.lag_ms = Some(42);
            s.delivered_through = Some("00000000000000000007".into());
        });
        let file = StatusFile {
            pid: 1,
            updated_at_ms: 1_000,
            deliveries: vec![stats.snapshot("to-disk")],
        };
        let text = render(&file, 3_000);
        assert!(text.contains("2.0 s ago"), "{text}");
        assert!(
            text.contains("to-disk: 10 records (100 bytes) in 2 objects"),
            "{text}"
        );
        assert!(text.contains("1 retries, 3 errors"), "{text}");
        assert!(text.contains("00000000000000000007"), "{text}");
        assert!(text.contains("42"), "{text}");
    }
}
