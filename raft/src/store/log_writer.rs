//! The group-commit log writer.
//!
//! Every write of every group on the node (log appends, votes, truncations, purges and
//! state-machine applies) goes through one queue. A writer thread drains the queue into one
//! `WriteBatch` and writes it to RocksDB without syncing; at that point the writes are readable
//! and their `written` waiters are released. The callbacks that need durability are handed to a
//! syncer thread, which syncs the record store's segments and then the WAL
//! ([`StoreInner::sync`]) once for everything written since its previous sync, and then fires
//! them all. While one sync runs, the next batches pile up and share the
//! next one.
//!
//! Log appends skip the writer thread: [`LogWriter::append`] writes on the calling task and
//! hands only the sync to the syncer thread, one thread switch fewer per append. A write that
//! RocksDB would have to slow down or stall (memtables full, too many level-0 files) is not
//! made there but queued for the writer thread, so that a stall never blocks the runtime's
//! workers.
//!
//! The WAL is in manual-flush mode: nothing written is on disk before the syncer has flushed
//! it, so no callback can observe durability that is not there. A failed write or sync poisons
//! the store: every waiting and every later request fails; nothing is retried.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rocksdb::{WriteBatch, WriteOptions};
use tokio::sync::oneshot;

use super::{GroupCommit, Op, StoreInner};
use crate::error::StorageError;

/// Called once the task's writes are durable, or with the reason they never will be.
pub(crate) type DurableCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// A unit of work for the writer: ops written atomically, and who to tell.
struct WriteTask {
    pub ops: Vec<Op>,
    /// Released once the ops are written (readable), before they are synced.
    pub written: Option<oneshot::Sender<Result<(), StorageError>>>,
    /// Called once the ops are synced to disk.
    pub durable: Option<DurableCallback>,
}

/// Counters of the log writer, for benchmarks and status pages.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterStats {
    pub batches: u64,
    pub tasks: u64,
    pub syncs: u64,
}

struct Shared {
    poisoned: Mutex<Option<String>>,
    stats: Mutex<WriterStats>,
}

impl Shared {
    fn poison(&self, reason: String) {
        let mut p = self.poisoned.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_none() {
            tracing::error!(reason = %reason, "storage poisoned; the node's groups stop");
            *p = Some(reason);
        }
    }

    fn poisoned(&self) -> Option<String> {
        self.poisoned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

enum Msg {
    Task(WriteTask),
    Shutdown,
}

/// What the syncer is asked: sync, then call these; or stop.
enum SyncMsg {
    Sync(Vec<DurableCallback>),
    Stop,
}

/// Handle to the log writer. Cheap to clone.
#[derive(Clone)]
pub(crate) struct LogWriter {
    tx: mpsc::Sender<Msg>,
    sync_tx: mpsc::Sender<SyncMsg>,
    store: Arc<StoreInner>,
    mode: GroupCommit,
    shared: Arc<Shared>,
    threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

const MAX_BATCH_TASKS: usize = 4096;
const MAX_BATCH_BYTES: usize = 16 << 20;

impl LogWriter {
    pub(crate) fn start(store: Arc<StoreInner>, mode: GroupCommit) -> Result<Self, StorageError> {
        let (tx, rx) = mpsc::channel::<Msg>();
        let (sync_tx, sync_rx) = mpsc::channel::<SyncMsg>();
        let shared = Arc::new(Shared {
            poisoned: Mutex::new(None),
            stats: Mutex::new(WriterStats::default()),
        });
        let mut threads = Vec::new();
        {
            let store = store.clone();
            let shared = shared.clone();
            let sync_tx = sync_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("riptide-log-writer".into())
                    .spawn(move || writer_loop(store, shared, rx, sync_tx, mode))?,
            );
        }
        {
            let store = store.clone();
            let shared = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("riptide-log-syncer".into())
                    .spawn(move || syncer_loop(store, shared, sync_rx))?,
            );
        }
        Ok(Self {
            tx,
            sync_tx,
            store,
            mode,
            shared,
            threads: Arc::new(Mutex::new(threads)),
        })
    }

    /// Writes `ops` now, on the calling task, and has the syncer call `durable` once they are
    /// synced; returns once they are readable. With group commit off, or when RocksDB would
    /// slow the write down, the ops go through the writer thread's queue instead.
    pub(crate) async fn append(
        &self,
        ops: Vec<Op>,
        durable: DurableCallback,
    ) -> Result<(), StorageError> {
        if self.mode == GroupCommit::On {
            if let Some(reason) = self.shared.poisoned() {
                durable(Err(StorageError::Poisoned(reason.clone())));
                return Err(StorageError::Poisoned(reason));
            }
            let mut opts = WriteOptions::default();
            opts.set_sync(false);
            opts.set_no_slowdown(true);
            match self
                .store
                .db
                .write_opt(batch_of(&self.store, ops.iter()), &opts)
            {
                Ok(()) => {
                    {
                        let mut s = self.shared.stats.lock().unwrap_or_else(|e| e.into_inner());
                        s.batches += 1;
                        s.tasks += 1;
                    }
                    if let Err(mpsc::SendError(SyncMsg::Sync(callbacks))) =
                        self.sync_tx.send(SyncMsg::Sync(vec![durable]))
                    {
                        callbacks.into_iter().for_each(|d| {
                            d(Err(StorageError::Poisoned(
                                "the log writer has stopped".into(),
                            )))
                        });
                    }
                    return Ok(());
                }
                // RocksDB would have delayed or stopped the write: the writer thread waits.
                Err(e) if e.kind() == rocksdb::ErrorKind::Incomplete => {}
                Err(e) => {
                    let reason = format!("write failed: {e}");
                    self.shared.poison(reason.clone());
                    durable(Err(StorageError::Poisoned(reason.clone())));
                    return Err(StorageError::Poisoned(reason));
                }
            }
        }
        let (tx, rx) = oneshot::channel();
        self.submit(WriteTask {
            ops,
            written: Some(tx),
            durable: Some(durable),
        });
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Queues a task. If the store is poisoned or shut down, the task's waiters are failed.
    fn submit(&self, task: WriteTask) {
        if let Some(reason) = self.shared.poisoned() {
            fail_task(task, &reason);
            return;
        }
        if let Err(mpsc::SendError(Msg::Task(task))) = self.tx.send(Msg::Task(task)) {
            fail_task(task, "the log writer has stopped");
        }
    }

    /// Writes `ops` and waits until they are readable (not necessarily synced).
    pub(crate) async fn write(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteTask {
            ops,
            written: Some(tx),
            durable: None,
        });
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    /// Writes `ops` and waits until they are synced to disk.
    pub(crate) async fn write_durable(&self, ops: Vec<Op>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.submit(WriteTask {
            ops,
            written: None,
            durable: Some(Box::new(move |r| {
                let _ = tx.send(r);
            })),
        });
        rx.await.unwrap_or(Err(StorageError::Closed))
    }

    pub(crate) fn poisoned(&self) -> Option<String> {
        self.shared.poisoned()
    }

    /// Stops the store's writes for good: every later task fails with `reason`.
    pub(crate) fn poison(&self, reason: String) {
        self.shared.poison(reason);
    }

    pub(crate) fn stats(&self) -> WriterStats {
        *self.shared.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stops both threads after everything queued so far was written and synced.
    pub(crate) fn shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
        // The writer thread tells the syncer to stop once its last batch is queued there.
        let threads: Vec<_> =
            std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        for t in threads {
            let _ = t.join();
        }
    }
}

/// One RocksDB write batch holding `ops` in order.
pub(crate) fn batch_of<'a>(store: &StoreInner, ops: impl Iterator<Item = &'a Op>) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for op in ops {
        match op {
            Op::Put(f, k, v) => batch.put_cf(store.cf(*f), k, v),
            Op::Delete(f, k) => batch.delete_cf(store.cf(*f), k),
            Op::DeleteRange(f, a, b) => batch.delete_range_cf(store.cf(*f), a, b),
        }
    }
    batch
}

fn fail_task(task: WriteTask, reason: &str) {
    if let Some(w) = task.written {
        let _ = w.send(Err(StorageError::Poisoned(reason.to_string())));
    }
    if let Some(d) = task.durable {
        d(Err(StorageError::Poisoned(reason.to_string())));
    }
}

fn writer_loop(
    store: Arc<StoreInner>,
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Msg>,
    sync_tx: mpsc::Sender<SyncMsg>,
    mode: GroupCommit,
) {
    let mut write_opts = WriteOptions::default();
    write_opts.set_sync(false);
    let mut shutting_down = false;
    while !shutting_down {
        let Ok(first) = rx.recv() else { break };
        let mut tasks = Vec::new();
        match first {
            Msg::Task(t) => tasks.push(t),
            Msg::Shutdown => break,
        }
        if mode == GroupCommit::On {
            let mut bytes: usize = tasks[0].ops.iter().map(Op::size).sum();
            while tasks.len() < MAX_BATCH_TASKS && bytes < MAX_BATCH_BYTES {
                match rx.try_recv() {
                    Ok(Msg::Task(t)) => {
                        bytes += t.ops.iter().map(Op::size).sum::<usize>();
                        tasks.push(t);
                    }
                    Ok(Msg::Shutdown) => {
                        shutting_down = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }

        if let Some(reason) = shared.poisoned() {
            tasks.into_iter().for_each(|t| fail_task(t, &reason));
            continue;
        }

        let batch = batch_of(&store, tasks.iter().flat_map(|t| &t.ops));
        if let Err(e) = store.db.write_opt(batch, &write_opts) {
            shared.poison(format!("write failed: {e}"));
            let reason = shared.poisoned().unwrap_or_default();
            tasks.into_iter().for_each(|t| fail_task(t, &reason));
            continue;
        }
        {
            let mut s = shared.stats.lock().unwrap_or_else(|e| e.into_inner());
            s.batches += 1;
            s.tasks += tasks.len() as u64;
        }
        let mut durable = Vec::new();
        for task in tasks {
            if let Some(w) = task.written {
                let _ = w.send(Ok(()));
            }
            if let Some(d) = task.durable {
                durable.push(d);
            }
        }
        if mode == GroupCommit::Off {
            // One sync per request, on this thread, before the next request is taken.
            let result = sync_wal(&store, &shared);
            durable.into_iter().for_each(|d| d(result.clone_err()));
            continue;
        }
        if !durable.is_empty() && sync_tx.send(SyncMsg::Sync(durable)).is_err() {
            break;
        }
    }
    // The syncer syncs what it has been given so far, then stops.
    let _ = sync_tx.send(SyncMsg::Stop);
    // Anything still queued after shutdown fails rather than hangs.
    while let Ok(Msg::Task(t)) = rx.try_recv() {
        fail_task(t, "the log writer has stopped");
    }
}

fn syncer_loop(store: Arc<StoreInner>, shared: Arc<Shared>, rx: mpsc::Receiver<SyncMsg>) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { break };
        // Everything queued so far shares one sync.
        let mut callbacks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next {
            match msg {
                SyncMsg::Sync(c) => callbacks.extend(c),
                SyncMsg::Stop => stopping = true,
            }
            next = rx.try_recv().ok();
        }
        if callbacks.is_empty() {
            continue;
        }
        fail::fail_point!("log_writer::before_sync");
        let result = sync_wal(&store, &shared);
        for cb in callbacks {
            cb(result.clone_err());
        }
    }
    // Appends written after the stop are failed rather than left unanswered.
    while let Ok(msg) = rx.try_recv() {
        if let SyncMsg::Sync(late) = msg {
            for cb in late {
                cb(Err(StorageError::Poisoned(
                    "the log writer has stopped".into(),
                )));
            }
        }
    }
}

fn sync_wal(store: &StoreInner, shared: &Shared) -> Result<(), StorageError> {
    if let Some(reason) = shared.poisoned() {
        return Err(StorageError::Poisoned(reason));
    }
    // A failing sync, for tests: named after the store's directory, so that one node of
    // several in a process can be made to fail.
    fail::fail_point!(
        &format!("log_writer::sync_fails:{}", store.path.display()),
        |_| {
            shared.poison("sync failed: failpoint log_writer::sync_fails".into());
            Err(StorageError::Poisoned("sync failed: failpoint".into()))
        }
    );
    let started = Instant::now();
    match store.sync() {
        Ok(()) => {
            shared.stats.lock().unwrap_or_else(|e| e.into_inner()).syncs += 1;
            tracing::trace!(
                elapsed_us = started.elapsed().as_micros() as u64,
                "wal synced"
            );
            Ok(())
        }
        Err(e) => {
            shared.poison(format!("sync failed: {e}"));
            Err(StorageError::Poisoned(format!("sync failed: {e}")))
        }
    }
}

trait CloneErr {
    fn clone_err(&self) -> Result<(), StorageError>;
}

impl CloneErr for Result<(), StorageError> {
    fn clone_err(&self) -> Result<(), StorageError> {
        match self {
            Ok(()) => Ok(()),
            Err(StorageError::Poisoned(r)) => Err(StorageError::Poisoned(r.clone())),
            Err(e) => Err(StorageError::Poisoned(e.to_string())),
        }
    }
}
