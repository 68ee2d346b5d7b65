//! Power cuts through the store, on the power-loss file system (`riptide-powerloss`).
//!
//! Each test runs itself again as a child process (this test binary, with the child's name in
//! `RIPTIDE_POWER_CUT_CHILD` and the store's directory in `RIPTIDE_POWER_CUT_DIR`), which writes
//! to a store and prints `power-cut-ready` at the moment it should lose power; the parent kills
//! it (kill -9), drops every write no fsync covered, opens the store again and checks what it
//! holds. Needs /dev/fuse, fusermount3 and root, as CI has.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use openraft::EntryPayload;
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage, RaftStateMachine};
use openraft::testing::log_id;
use riptide_powerloss::PowerLossMount;

use super::log_store::GroupLogStore;
use super::state_machine::GroupStateMachine;
use super::{Family, GroupBatch, GroupCommit, GroupView, NodeStore, encode, keys};
use crate::error::StorageError;
use crate::types::{AppData, AppliedEntry, Entry, GroupId, StateMachine, TypeConfig};

const DIR_ENV: &str = "RIPTIDE_POWER_CUT_DIR";
const CHILD_ENV: &str = "RIPTIDE_POWER_CUT_CHILD";
/// What a child prints when it reached the moment it loses power.
const READY: &str = "power-cut-ready";
const GROUP: GroupId = GroupId(7);

struct Noop;

impl StateMachine for Noop {
    fn apply(
        &mut self,
        _batch: &mut GroupBatch,
        _view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<bytes::Bytes>, StorageError> {
        Ok(entries.iter().map(|_| bytes::Bytes::new()).collect())
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }
}

fn data(index: u64) -> bytes::Bytes {
    vec![index as u8; 3000].into()
}

fn entry(index: u64) -> Entry {
    Entry::new_normal(log_id::<TypeConfig>(1, 1, index), AppData(data(index)))
}

/// Shuts a store down when dropped, also when the test fails: no thread of this process may
/// still use the file system when it is unmounted (the process serves it itself).
struct Opened(NodeStore);

impl Drop for Opened {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// Opens the store in `db` again after a cut.
fn reopen(db: &Path) -> Opened {
    Opened(NodeStore::open(db, GroupCommit::On).expect("reopen after the cut"))
}

/// A mounted power-loss file system with the store's directory in it.
fn mounted() -> (tempfile::TempDir, PowerLossMount) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mount = PowerLossMount::mount(&dir.path().join("state"), &dir.path().join("mnt"))
        .unwrap_or_else(|e| panic!("{e}"));
    (dir, mount)
}

/// Runs the test `test` of this binary again in a child process that plays `child` with the
/// store in `db`, kills it (kill -9) once it printed [`READY`], and returns.
fn run_child_until_ready(test: &str, child: &str, db: &Path) {
    let exe = std::env::current_exe().expect("test binary");
    let mut process = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(DIR_ENV, db)
        .env(CHILD_ENV, child)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the child");
    let stdout = process.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints the test's name on the same line first.
            if line.trim_end().ends_with(READY) {
                let _ = tx.send(());
                return;
            }
        }
    });
    let ready = rx.recv_timeout(Duration::from_secs(60));
    let _ = process.kill();
    let status = process.wait().expect("reap the child");
    assert!(
        ready.is_ok(),
        "child {child} did not reach its crash point (exit: {status})"
    );
}

/// In a child process: plays the child named in the environment and never returns. In the
/// test itself: returns at once.
fn play_child_if_asked() {
    let Some(name) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = child_dir();
    match name.to_str() {
        Some("applies-an-entry-before-its-sync") => child_applies_an_entry_before_its_sync(&dir),
        Some("leaves-entry-data-written-but-unsynced") => {
            child_leaves_entry_data_written_but_unsynced(&dir)
        }
        Some("opens-and-syncs-a-new-entry") => child_opens_and_syncs_a_new_entry(&dir),
        other => panic!("{CHILD_ENV}={other:?}: no such child"),
    }
}

/// The store directory a child was given.
fn child_dir() -> std::path::PathBuf {
    std::env::var_os(DIR_ENV)
        .map(Into::into)
        .expect("a child process of the power-cut tests, with RIPTIDE_POWER_CUT_DIR")
}

/// Prints [`READY`] and waits to be killed.
fn ready_and_wait() -> ! {
    println!("{READY}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The stored applied log index of `GROUP` and its last log index.
fn applied_and_last(store: &NodeStore) -> (Option<u64>, Option<u64>) {
    runtime().block_on(async {
        let mut log = GroupLogStore::new(store.clone(), GROUP, true, 0).expect("log store");
        let mut sm = GroupStateMachine::new(
            store.clone(),
            GROUP,
            Box::new(Noop),
            64 << 10,
            true,
            log.flushed(),
        )
        .expect("state machine");
        let (applied, _) = sm.applied_state().await.expect("applied state");
        let state = log.get_log_state().await.expect("log state");
        (applied.map(|l| l.index), state.last_log_id.map(|l| l.index))
    })
}

/// An entry applied on this node before its own sync of it finished (a follower that
/// receives an entry with a commit index already past it) must not have its applied mark on
/// disk ahead of its data. Here a sync has handed the segment's bytes over just before entry 4
/// was appended, and writes the WAL (holding entry 4's pointer) after entry 4 was applied; the
/// power goes before the next sync. Entry 4's data never reached the disk, so the store cuts it
/// off at open: the applied mark must not name it.
#[test]
fn an_applied_mark_never_reaches_the_disk_before_the_entrys_data() {
    play_child_if_asked();
    let (_dir, mount) = mounted();
    let db = mount.mountpoint().join("db");
    run_child_until_ready(
        "store::power_cut_tests::an_applied_mark_never_reaches_the_disk_before_the_entrys_data",
        "applies-an-entry-before-its-sync",
        &db,
    );
    mount.cut().expect("cut");
    let store = reopen(&db);
    let (applied, last) = applied_and_last(&store.0);
    assert!(
        applied <= last,
        "the state machine says it applied entry {applied:?} but the log ends at {last:?}: \
         the applied mark reached the disk before the entry's data"
    );
    assert!(applied >= Some(3), "entries 1 to 3 were applied and synced");
}

// The sync lock is held across awaits on purpose: it keeps the syncer thread from syncing.
#[allow(clippy::await_holding_lock)]
fn child_applies_an_entry_before_its_sync(dir: &Path) -> ! {
    runtime().block_on(async {
        let store = NodeStore::open(dir, GroupCommit::On).expect("open");
        let mut log = GroupLogStore::new(store.clone(), GROUP, true, 0).expect("log store");
        let mut sm = GroupStateMachine::new(
            store.clone(),
            GROUP,
            Box::new(Noop),
            64 << 10,
            true,
            log.flushed(),
        )
        .expect("state machine");
        log.append((1..=3).map(entry), IOFlushed::noop())
            .await
            .expect("append");
        store.writer.write_durable(Vec::new()).await.expect("sync");
        let applied = futures::stream::iter((1..=3).map(|i| Ok((entry(i), None))));
        sm.apply(applied).await.expect("apply 1..3");
        store.writer.write_durable(Vec::new()).await.expect("sync");

        // A sync begins: it hands the segments' bytes over and syncs them. The syncer thread
        // is held off meanwhile, as it would be by that sync.
        let inner = store.inner.clone();
        let held = inner.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mark = inner.segments.sync().expect("segments");
        // Entry 4 is appended, then applied.
        log.append([entry(4)], IOFlushed::noop())
            .await
            .expect("append 4");
        let tasks = store.writer.stats().tasks;
        let apply = tokio::spawn(async move {
            let one = futures::stream::iter([Ok((entry(4), None))]);
            sm.apply(one).await
        });
        // Either the apply is done, or it asked the log writer for a sync first.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !apply.is_finished() && store.writer.stats().tasks == tasks {
            assert!(
                std::time::Instant::now() < deadline,
                "apply neither finished nor asked for a sync"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // The sync ends: its mark and the WAL (with entry 4's pointer, and whatever the apply
        // wrote) go to disk; entry 4's data, appended after the hand-over, does not.
        inner
            .db
            .put_cf(
                inner.cf(Family::RaftMeta),
                keys::SEGMENTS_SYNCED_KEY,
                encode(&mark),
            )
            .expect("mark");
        inner.db.flush_wal(true).expect("wal");
        // The syncer stays held off: the power goes before it syncs again.
        let _held = held;
        ready_and_wait()
    })
}

/// Entries whose data a node wrote but had not synced when it stopped (kill -9, no power cut)
/// read back whole at the next open and stay in the log. The next sync mark lies in a newer
/// segment and says every older one is on disk: a power cut after it must not find those
/// entries' data gone.
#[test]
fn entries_kept_at_open_are_on_disk_before_a_later_mark_covers_them() {
    play_child_if_asked();
    let test =
        "store::power_cut_tests::entries_kept_at_open_are_on_disk_before_a_later_mark_covers_them";
    let (_dir, mount) = mounted();
    let db = mount.mountpoint().join("db");
    run_child_until_ready(test, "leaves-entry-data-written-but-unsynced", &db);
    // Killed, no power cut: the written data is there. The next run keeps entry 4, syncs a
    // new entry in a new segment, and is killed too; then the power goes.
    run_child_until_ready(test, "opens-and-syncs-a-new-entry", &db);
    mount.cut().expect("cut");
    let store = reopen(&db);
    let entries = runtime().block_on(async {
        let mut log = GroupLogStore::new(store.0.clone(), GROUP, true, 0).expect("log store");
        log.try_get_log_entries(0..100).await
    });
    let entries = entries.unwrap_or_else(|e| {
        panic!("the log points at data a power cut took back (entry 4 was never synced): {e}")
    });
    let indexes: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indexes, vec![1, 2, 3, 4, 5]);
    for e in &entries {
        let EntryPayload::Normal(d) = &e.payload else {
            panic!("entry {} is not normal", e.log_id.index);
        };
        assert_eq!(d.0, data(e.log_id.index), "entry {}", e.log_id.index);
    }
}

// The sync lock is held across awaits on purpose: it keeps the syncer thread from syncing.
#[allow(clippy::await_holding_lock)]
fn child_leaves_entry_data_written_but_unsynced(dir: &Path) -> ! {
    runtime().block_on(async {
        let store = NodeStore::open(dir, GroupCommit::On).expect("open");
        let mut log = GroupLogStore::new(store.clone(), GROUP, true, 0).expect("log store");
        log.append((1..=3).map(entry), IOFlushed::noop())
            .await
            .expect("append");
        store.writer.write_durable(Vec::new()).await.expect("sync");
        // A sync of entry 4 that wrote the segment's bytes and was killed before it synced
        // them: its pointer is in the WAL, its data written, nothing synced.
        let inner = store.inner.clone();
        let held = inner.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        log.append([entry(4)], IOFlushed::noop())
            .await
            .expect("append 4");
        let raw = store
            .get(Family::RaftLog, &keys::log_key(GROUP, 4))
            .expect("read")
            .expect("entry 4");
        let super::StoredEntry::InSegment(_, ptr) =
            super::StoredEntry::decode(&raw).expect("decode")
        else {
            panic!("entry 4 is in a segment");
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(
                dir.join("segments")
                    .join(format!("{:020}.seg", ptr.segment)),
            )
            .expect("segment");
        std::os::unix::fs::FileExt::write_all_at(&file, &data(4), ptr.offset)
            .expect("write entry 4's data");
        inner.db.flush_wal(true).expect("wal");
        // The syncer stays held off: the power goes before it syncs again.
        let _held = held;
        ready_and_wait()
    })
}

fn child_opens_and_syncs_a_new_entry(dir: &Path) -> ! {
    runtime().block_on(async {
        let store = NodeStore::open(dir, GroupCommit::On).expect("open");
        let mut log = GroupLogStore::new(store.clone(), GROUP, true, 0).expect("log store");
        let kept: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(
            kept,
            vec![1, 2, 3, 4],
            "entry 4's data was written, so it stays"
        );
        log.append([entry(5)], IOFlushed::noop())
            .await
            .expect("append 5");
        store.writer.write_durable(Vec::new()).await.expect("sync");
        ready_and_wait()
    })
}
