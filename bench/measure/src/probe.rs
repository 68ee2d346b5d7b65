//! The fsync probe: one writer doing 4 KiB writes, each followed by fdatasync, into a file
//! written out and synced beforehand (as RocksDB's WAL and JetStream's block files are
//! preallocated or reused), for a few seconds. The disks of the machines the project runs on
//! change their fsync time by up to 20x over minutes, so every run prints it beside its
//! figures and only runs with similar probes are compared.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

const BLOCK: usize = 4096;
const FILE_BYTES: u64 = 16 << 20;

/// What the probe measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeResult {
    /// Folder whose disk was probed.
    pub dir: PathBuf,
    pub secs: f64,
    pub fsyncs_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl ProbeResult {
    pub fn describe(&self) -> String {
        format!(
            "{:.0} fsyncs/s (4 KiB write + fdatasync, p50 {:.2} ms, p99 {:.2} ms, {:.0} s in {})",
            self.fsyncs_per_sec,
            self.p50_ms,
            self.p99_ms,
            self.secs,
            self.dir.display()
        )
    }
}

/// Runs the probe in `dir` for `duration` (blocking: call it from a blocking thread). The file
/// is removed afterwards.
pub fn run(dir: &Path, duration: Duration) -> std::io::Result<ProbeResult> {
    let path = dir.join(format!(".fsync-probe-{}", std::process::id()));
    let result = probe_file(&path, duration);
    let _ = std::fs::remove_file(&path);
    let (count, mut latencies) = result?;
    latencies.sort_unstable();
    let at = |q: f64| -> f64 {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Ok(ProbeResult {
        dir: dir.to_path_buf(),
        secs: duration.as_secs_f64(),
        fsyncs_per_sec: count as f64 / duration.as_secs_f64().max(1e-9),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}

fn probe_file(path: &Path, duration: Duration) -> std::io::Result<(u64, Vec<Duration>)> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)?;
    let block = [0x5au8; BLOCK];
    for _ in 0..FILE_BYTES / BLOCK as u64 {
        file.write_all(&block)?;
    }
    file.sync_all()?;
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut offset = 0u64;
    while start.elapsed() < duration {
        let t = Instant::now();
        file.write_all_at(&block, offset)?;
        file.sync_data()?;
        latencies.push(t.elapsed());
        offset = (offset + BLOCK as u64) % FILE_BYTES;
    }
    Ok((latencies.len() as u64, latencies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_syncs_and_removes_its_file() {
        let dir = std::env::temp_dir().join(format!("probe-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let r = run(&dir, Duration::from_millis(200)).expect("probe");
        assert!(r.fsyncs_per_sec > 0.0);
        assert!(r.p99_ms >= r.p50_ms);
        assert_eq!(std::fs::read_dir(&dir).expect("read dir").count(), 0);
        std::fs::remove_dir(&dir).expect("remove dir");
    }
}
