//! The append path: committed entries per second with 1, 10 and 100 groups appending at once,
//! group commit on and off, next to the fsyncs per second that one lone writer gets from the
//! same disk in the same run.
//!
//! Each group is a one-member Raft group, so an entry is committed exactly when its log append
//! is synced: the bench measures the log writer, not the network. Each group has one writer
//! (one write in flight), and in a last setting 100 groups have 8 writers each.
//!
//! Run: `cargo bench -p riptide-raft --bench append`. Besides criterion's own report it prints a
//! summary table (medians of three runs) with the ratio of committed entries per second to the
//! fsync probe taken just before each row, and to the mean of the run's first and last probes.

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use riptide_raft::{
    AppliedEntry, DataFamily, EngineConfig, GroupBatch, GroupCommit, GroupId, GroupSettings,
    GroupView, NodeId, RaftEngine, StateMachine, StateMachineFactory, StorageError,
};

struct Sink;

impl StateMachine for Sink {
    fn apply(
        &mut self,
        batch: &mut GroupBatch,
        _view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        for e in entries {
            batch.put(DataFamily::Records, &e.index.to_be_bytes(), &e.data);
        }
        Ok(vec![Bytes::new(); entries.len()])
    }
    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }
}

struct SinkFactory;

impl StateMachineFactory for SinkFactory {
    fn create(&self, _: GroupId, _: &[u8]) -> Result<Box<dyn StateMachine>, StorageError> {
        Ok(Box::new(Sink))
    }
}

/// fsyncs per second of one writer: 4 KiB writes, each followed by fdatasync, overwriting a
/// file written out and synced beforehand. A preallocated file is what RocksDB's WAL is, so
/// fdatasync has no file size or block allocation to commit; appending to a growing file
/// instead measured several times slower on this machine's disk and flattered every ratio.
fn fsync_probe(dir: &std::path::Path, duration: Duration) -> f64 {
    const FILE_BYTES: usize = 16 << 20;
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = vec![7u8; 4096];
    for _ in 0..FILE_BYTES / block.len() {
        f.write_all(&block).expect("probe prefill");
    }
    f.sync_all().expect("probe prefill sync");
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < duration {
        if (n as usize * block.len()).is_multiple_of(FILE_BYTES) {
            f.seek(std::io::SeekFrom::Start(0)).expect("probe seek");
        }
        f.write_all(&block).expect("probe write");
        f.sync_data().expect("probe fdatasync");
        n += 1;
    }
    let _ = std::fs::remove_file(path);
    n as f64 / start.elapsed().as_secs_f64()
}

struct Setup {
    _dir: tempfile::TempDir,
    engine: RaftEngine,
    groups: Vec<GroupId>,
}

async fn setup(groups: u64, mode: GroupCommit) -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = EngineConfig::new(NodeId(1), dir.path());
    config.group_commit = mode;
    let engine = RaftEngine::open(config, Arc::new(SinkFactory))
        .await
        .expect("engine");
    let ids: Vec<GroupId> = (1..=groups).map(GroupId).collect();
    let mut settings = GroupSettings::data_shard();
    // Keep the bench about appends, not snapshots.
    settings.snapshot_after_entries = 10_000_000;
    for g in &ids {
        let group = engine
            .create_group(*g, settings.clone(), b"bench")
            .await
            .expect("group");
        group
            .initialize(BTreeMap::from([(NodeId(1), "127.0.0.1:1".to_string())]))
            .await
            .expect("initialize");
    }
    for g in &ids {
        engine
            .group(*g)
            .expect("group")
            .wait_for_leader(Duration::from_secs(30))
            .await
            .expect("leader");
    }
    Setup {
        _dir: dir,
        engine,
        groups: ids,
    }
}

/// Commits about `total` 100-byte entries spread over the groups, with `depth` writers per group,
/// each writing in a loop (one write in flight per writer). Returns the time taken and how many
/// entries were committed.
async fn run(setup: &Setup, total: u64, depth: u64) -> (Duration, u64) {
    let writers_total = setup.groups.len() as u64 * depth;
    let per_writer = total.div_ceil(writers_total);
    let start = Instant::now();
    let writers = setup.groups.iter().flat_map(|g| {
        (0..depth).map(move |_| {
            let group = setup.engine.group(*g).expect("group");
            async move {
                let data = Bytes::from(vec![1u8; 100]);
                for _ in 0..per_writer {
                    group.write(data.clone()).await.expect("write");
                }
            }
        })
    });
    futures::future::join_all(writers).await;
    (start.elapsed(), per_writer * writers_total)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let probe_dir = tempfile::tempdir().expect("temp dir");
    let probe = fsync_probe(probe_dir.path(), Duration::from_secs(3));
    println!(
        "fsync probe: {probe:.0} fsyncs/s (4 KiB write + fdatasync into a preallocated file, one writer)"
    );

    let mut summary = Vec::new();
    let mut g = c.benchmark_group("append");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.throughput(Throughput::Elements(1));
    // (groups, writers per group): one writer per group as a lone producer per shard would
    // be, and 100 groups with 8 writers each, as shard leaders serving several producers are.
    for (groups, depth) in [(1u64, 1u64), (10, 1), (100, 1), (100, 8)] {
        for (mode, name) in [
            (GroupCommit::On, "group_commit_on"),
            (GroupCommit::Off, "group_commit_off"),
        ] {
            // The disk's fsync rate drifts by up to 20x within minutes: each row gets a probe
            // of its own, taken just before it.
            let row_probe = fsync_probe(probe_dir.path(), Duration::from_secs(2));
            let s = rt.block_on(setup(groups, mode));
            let id = format!("{groups}x{depth}");
            g.bench_with_input(BenchmarkId::new(name, &id), &groups, |b, _| {
                b.iter_custom(|iters| {
                    let (t, n) = rt.block_on(run(&s, iters.max(groups * depth), depth));
                    // Criterion divides by `iters`; scale to what was actually committed.
                    t.mul_f64(iters as f64 / n as f64)
                });
            });
            // Three timed runs of a fixed size for the summary table.
            let mut rates: Vec<f64> = (0..3)
                .map(|_| {
                    let (t, n) = rt.block_on(run(&s, 200 * groups.max(5) * depth, depth));
                    n as f64 / t.as_secs_f64()
                })
                .collect();
            rates.sort_by(|a, b| a.total_cmp(b));
            let stats = s.engine.writer_stats();
            summary.push((name, groups, depth, rates[1], row_probe, stats));
            rt.block_on(s.engine.shutdown());
        }
    }
    g.finish();

    let probe_after = fsync_probe(probe_dir.path(), Duration::from_secs(3));
    println!();
    println!("fsync probe before: {probe:.0}/s, after: {probe_after:.0}/s");
    println!(
        "| mode | groups | writers per group | committed entries/s (median of 3) | fsync probe before the row | ratio to that probe | ratio to the mean of the run's first and last probes | writes per batch | tasks per sync |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let baseline = (probe + probe_after) / 2.0;
    for (name, groups, depth, rate, row_probe, st) in summary {
        println!(
            "| {name} | {groups} | {depth} | {rate:.0} | {row_probe:.0} | {:.1}x | {:.1}x | {:.1} | {:.1} |",
            rate / row_probe,
            rate / baseline,
            st.tasks as f64 / st.batches.max(1) as f64,
            st.tasks as f64 / st.syncs.max(1) as f64,
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
