//! The node's one RocksDB, shared by every group it hosts.

#[cfg(test)]
mod conformance;
pub(crate) mod dirs;
pub(crate) mod flushed;
pub(crate) mod keys;
pub(crate) mod log_cache;
pub(crate) mod log_store;
mod log_writer;
#[cfg(test)]
mod power_cut_tests;
pub(crate) mod segments;
pub(crate) mod snapshot;
pub(crate) mod state_machine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use serde::{Serialize, de::DeserializeOwned};

pub(crate) use log_writer::LogWriter;
pub use log_writer::WriterStats;

use crate::error::StorageError;
use crate::types::{Entry, GroupId, LogId};
use segments::{Pointer, Segments, SyncMark};

/// Column families of the node's RocksDB. Fixed: groups never add families of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Family {
    RaftLog,
    RaftMeta,
    SmMeta,
    Data(DataFamily),
}

/// Column families a state machine writes its data to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DataFamily {
    /// A shard's records.
    Records,
    /// A shard's own metadata (retention watermark, counters).
    ShardMeta,
    /// The controller's metadata.
    Controller,
}

impl DataFamily {
    pub(crate) const ALL: [DataFamily; 3] = [
        DataFamily::Records,
        DataFamily::ShardMeta,
        DataFamily::Controller,
    ];

    pub(crate) fn code(self) -> u8 {
        match self {
            DataFamily::Records => 1,
            DataFamily::ShardMeta => 2,
            DataFamily::Controller => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.code() == code)
    }
}

impl Family {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::RaftLog => "raft_log",
            Family::RaftMeta => "raft_meta",
            Family::SmMeta => "sm_meta",
            Family::Data(DataFamily::Records) => "records",
            Family::Data(DataFamily::ShardMeta) => "shard_meta",
            Family::Data(DataFamily::Controller) => "controller",
        }
    }

    pub(crate) const ALL: [Family; 6] = [
        Family::RaftLog,
        Family::RaftMeta,
        Family::SmMeta,
        Family::Data(DataFamily::Records),
        Family::Data(DataFamily::ShardMeta),
        Family::Data(DataFamily::Controller),
    ];
}

/// One write operation, queued for the log writer.
#[derive(Debug)]
pub(crate) enum Op {
    Put(Family, Vec<u8>, Vec<u8>),
    Delete(Family, Vec<u8>),
    DeleteRange(Family, Vec<u8>, Vec<u8>),
}

impl Op {
    pub(crate) fn size(&self) -> usize {
        match self {
            Op::Put(_, k, v) => k.len() + v.len(),
            Op::Delete(_, k) => k.len(),
            Op::DeleteRange(_, a, b) => a.len() + b.len(),
        }
    }
}

/// Smallest value stored in a blob file rather than inline in an SST (log and records families).
const BLOB_MIN_BYTES: u64 = 2048;

/// Default size of a node's cache of flushed entries ([`NodeStore::open_with`]).
pub const DEFAULT_RECORD_CACHE_BYTES: usize = 512 << 20;

/// Whether the log writer merges concurrent writes into one batch and one sync (the default),
/// or writes and syncs each request on its own (for comparison in benchmarks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupCommit {
    On,
    Off,
}

pub(crate) struct StoreInner {
    pub(crate) db: DB,
    pub(crate) path: PathBuf,
    /// Log-is-data groups: serialises deleting log entries that are both purged and released,
    /// and remembers up to which index each group's entries were deleted.
    pub(crate) log_deleted: std::sync::Mutex<std::collections::HashMap<GroupId, u64>>,
    /// The newest entries of each running group's log.
    pub(crate) log_caches: log_cache::LogCaches,
    /// The data of normal log entries.
    pub(crate) segments: Arc<Segments>,
    /// Held through a whole [`StoreInner::sync`], so that no sync records a mark that another,
    /// still running, has not made true yet.
    sync_lock: std::sync::Mutex<()>,
}

impl StoreInner {
    pub(crate) fn cf(&self, family: Family) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(family.name())
            .expect("every column family is created when the store is opened")
    }

    /// Makes everything written so far durable: the segments written since the last sync, then
    /// the WAL, which records how far the segments were synced.
    pub(crate) fn sync(&self) -> Result<(), StorageError> {
        let _one_at_a_time = self.sync_lock.lock().unwrap_or_else(|e| e.into_inner());
        let mark = self.segments.sync()?;
        self.db.put_cf(
            self.cf(Family::RaftMeta),
            keys::SEGMENTS_SYNCED_KEY,
            encode(&mark),
        )?;
        self.db.flush_wal(true)?;
        Ok(())
    }
}

/// How a log entry is kept in the raft_log family: whole, in the value...
pub(crate) const ENTRY_INLINE: u8 = 0;
/// ...or as its log id and a pointer to its data in a segment.
const ENTRY_IN_SEGMENT: u8 = 1;

/// A raft_log value of an entry whose data is in a segment.
#[derive(Serialize, serde::Deserialize)]
struct SegmentEntry {
    log_id: LogId,
    data: Pointer,
}

/// A raft_log value, decoded.
pub(crate) enum StoredEntry {
    Inline(Entry),
    InSegment(LogId, Pointer),
}

impl StoredEntry {
    pub(crate) fn decode(raw: &[u8]) -> Result<Self, StorageError> {
        match raw.split_first() {
            Some((&ENTRY_INLINE, rest)) => Ok(Self::Inline(decode(rest, "raft_log entry")?)),
            Some((&ENTRY_IN_SEGMENT, rest)) => {
                let e: SegmentEntry = decode(rest, "raft_log entry pointer")?;
                Ok(Self::InSegment(e.log_id, e.data))
            }
            Some((tag, _)) => Err(StorageError::corrupt(
                "raft_log entry",
                format!("unknown kind {tag}"),
            )),
            None => Err(StorageError::corrupt("raft_log entry", "empty value")),
        }
    }

    pub(crate) fn log_id(&self) -> LogId {
        match self {
            Self::Inline(e) => e.log_id,
            Self::InSegment(log_id, _) => *log_id,
        }
    }
}

/// The raft_log value of `entry`, kept whole.
pub(crate) fn encode_inline(entry: &Entry) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_INLINE);
    bincode::serialize_into(&mut out, entry).expect("engine types always serialize");
    out
}

/// The raft_log value of an entry whose data is at `data`.
pub(crate) fn encode_in_segment(log_id: LogId, data: Pointer) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENTRY_IN_SEGMENT);
    bincode::serialize_into(&mut out, &SegmentEntry { log_id, data })
        .expect("engine types always serialize");
    out
}

/// Tells when a [`NodeStore`]'s RocksDB has been closed.
#[derive(Debug, Clone)]
pub struct StoreClosed(std::sync::Weak<StoreInner>);

impl StoreClosed {
    pub fn is_closed(&self) -> bool {
        self.0.strong_count() == 0
    }

    /// Waits until the database is closed, at most `timeout`; returns whether it is.
    pub async fn wait(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_closed() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }
}

/// The node's storage: one RocksDB and the log writer in front of it.
#[derive(Clone)]
pub struct NodeStore {
    pub(crate) inner: Arc<StoreInner>,
    pub(crate) writer: LogWriter,
}

impl std::fmt::Debug for NodeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

impl NodeStore {
    /// Opens (or creates) the store in `dir` and starts its log writer, with a cache of
    /// [`DEFAULT_RECORD_CACHE_BYTES`].
    pub fn open(dir: &Path, group_commit: GroupCommit) -> Result<Self, StorageError> {
        Self::open_with(dir, group_commit, DEFAULT_RECORD_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir` and starts its log writer. The newest
    /// `record_cache_bytes` of log entries written to blob files stay in memory (0: none).
    pub fn open_with(
        dir: &Path,
        group_commit: GroupCommit,
        record_cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        Self::open_sized(
            dir,
            group_commit,
            record_cache_bytes,
            segments::SEGMENT_BYTES,
        )
    }

    /// [`NodeStore::open_with`], with segments sealed at `segment_bytes` (tests use small ones).
    pub(crate) fn open_sized(
        dir: &Path,
        group_commit: GroupCommit,
        record_cache_bytes: usize,
        segment_bytes: u64,
    ) -> Result<Self, StorageError> {
        dirs::create_dir_durable(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // WAL writes stay in RocksDB's buffer until the log writer flushes and syncs them, so
        // one sync covers every write since the previous one, and nothing unsynced survives a
        // crash that looks synced.
        opts.set_manual_wal_flush(true);
        opts.set_max_total_wal_size(256 << 20);
        // WAL files no longer needed are kept and written over as new WALs instead of being
        // deleted. Deleting a 64 MB WAL makes the file system free (and, mounted with
        // `discard`, trim) its blocks in the journal commit that the next WAL sync waits for:
        // when the small families' flushes release four WALs at once, every node's syncs took
        // 50 ms four times in a row. A sync of a reused file also changes no file size, so it
        // writes no inode. RocksDB recovers a reused WAL only up to its own records (the log
        // number in each record header), with the default point-in-time recovery mode.
        opts.set_recycle_log_file_num(4);
        opts.set_max_background_jobs(2);
        // Flushes and compactions write with O_DIRECT: the blob files of a node taking 50 MB/s
        // cost a fifth of its CPU in the kernel's page-cache copy when written buffered.
        opts.set_use_direct_io_for_flush_and_compaction(true);
        opts.increase_parallelism(2);

        let mut block = BlockBasedOptions::default();
        block.set_block_size(16 << 10);
        // Blob files are written with O_DIRECT, so unlike buffered writes they leave nothing in
        // the page cache: without this cache a reader of entries flushed a moment ago (a
        // consumer behind by a memtable or more) reads them from the disk.
        let record_cache =
            (record_cache_bytes > 0).then(|| rocksdb::Cache::new_lru_cache(record_cache_bytes));
        let families = Family::ALL.iter().map(|f| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&block);
            match f {
                // Log entries and shard entries are large values (a whole batch of records)
                // under small keys. Values of at least `BLOB_MIN_BYTES` go to blob files when
                // their memtable is flushed and stay there: compactions rewrite only the keys,
                // so a record's bytes are written to an SST-side file once, not once per level.
                // A blob file is deleted when no key refers to it any more (the log purged and
                // released, the records trimmed). Blob garbage collection stays off: it would
                // relocate the oldest files' live values at every compaction, which for a log
                // kept for its retention period is every value, rewritten again and again. The
                // price is that a blob file holding entries of streams with different retention
                // periods is kept until the longest of them ends.
                Family::RaftLog | Family::Data(DataFamily::Records) => {
                    cf_opts.set_write_buffer_size(64 << 20);
                    cf_opts.set_max_write_buffer_number(4);
                    cf_opts.set_enable_blob_files(true);
                    cf_opts.set_min_blob_size(BLOB_MIN_BYTES);
                    cf_opts.set_blob_file_size(256 << 20);
                    cf_opts.set_enable_blob_gc(false);
                    if let Some(cache) = &record_cache {
                        cf_opts.set_blob_cache(cache);
                    }
                    // Records are stored as sent: batches of random or already compressed
                    // data gain nothing, and CPU is what bounds the write path.
                    cf_opts.set_compression_type(rocksdb::DBCompressionType::None);
                }
                _ => {
                    cf_opts.set_write_buffer_size(4 << 20);
                }
            }
            ColumnFamilyDescriptor::new(f.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, families)?;
        if record_cache.is_some() {
            // Values written to blob files at a flush go into the cache as they are written
            // (the Rust bindings have no setter for this option, only the options string).
            for f in [Family::RaftLog, Family::Data(DataFamily::Records)] {
                let cf = db
                    .cf_handle(f.name())
                    .expect("every column family is created when the store is opened");
                db.set_options_cf(&cf, &[("prepopulate_blob_cache", "kFlushOnly")])?;
            }
        }
        let segments = Arc::new(Segments::open(&dir.join("segments"), segment_bytes)?);
        let inner = Arc::new(StoreInner {
            db,
            path: dir.to_path_buf(),
            log_deleted: Default::default(),
            log_caches: Default::default(),
            segments,
            sync_lock: Default::default(),
        });
        check_format(&inner)?;
        let writer = LogWriter::start(inner.clone(), group_commit)?;
        let store = Self { inner, writer };
        store.recover_segments()?;
        Ok(store)
    }

    /// On open: cuts off each group's log where entries written after the last segment sync
    /// have data that did not reach the disk (never acknowledged, see [`segments`]), then finds
    /// each group's first segment and reclaims the segments no group points into.
    fn recover_segments(&self) -> Result<(), StorageError> {
        let mark: SyncMark = self
            .get_value(Family::RaftMeta, keys::SEGMENTS_SYNCED_KEY)?
            .unwrap_or(SyncMark {
                segment: 0,
                offset: 0,
            });
        let groups = self.log_groups()?;
        let mut cut = Vec::new();
        for &group in &groups {
            if let Some(from) = self.first_unsynced_damage(group, &mark)? {
                tracing::warn!(
                    group_id = %group,
                    from_index = from,
                    "log entries written after the last sync lost their data in a crash; \
                     cutting the log there (they were never acknowledged)"
                );
                cut.push(Op::DeleteRange(
                    Family::RaftLog,
                    keys::log_key(group, from).to_vec(),
                    keys::group_end(group),
                ));
            }
        }
        // What survived past the mark (written, not yet synced when the node stopped) is
        // synced now, before anything is built on it.
        self.inner.segments.sync_from(mark.segment)?;
        if !cut.is_empty() {
            self.write_now(&cut)?;
            self.inner.sync()?;
        }
        for group in groups {
            self.rescan_segments(group)?;
        }
        self.reclaim_segments()
    }

    /// The groups that have log entries.
    fn log_groups(&self) -> Result<Vec<GroupId>, StorageError> {
        let mut out = Vec::new();
        let mut it = self
            .inner
            .db
            .raw_iterator_cf(self.inner.cf(Family::RaftLog));
        it.seek_to_first();
        while it.valid() {
            let Some(group) = it.key().and_then(keys::group_of) else {
                return Err(StorageError::corrupt("raft_log key", "short key"));
            };
            out.push(group);
            if group.0 >= keys::MAX_GROUP_ID {
                break;
            }
            it.seek(keys::group_end(group));
        }
        it.status()?;
        Ok(out)
    }

    /// The first index of `group` whose data is past `mark` and does not read back whole.
    fn first_unsynced_damage(
        &self,
        group: GroupId,
        mark: &SyncMark,
    ) -> Result<Option<u64>, StorageError> {
        // Walk back from the last entry to the first whose data the mark covers.
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(keys::group_prefix(group).to_vec());
        ro.set_iterate_upper_bound(keys::group_end(group));
        let mut it = self
            .inner
            .db
            .raw_iterator_cf_opt(self.inner.cf(Family::RaftLog), ro);
        it.seek_to_last();
        let mut unsynced = Vec::new();
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if let StoredEntry::InSegment(log_id, ptr) = StoredEntry::decode(v)? {
                if mark.covers(&ptr) {
                    break;
                }
                let index = keys::log_index_of(k)
                    .ok_or_else(|| StorageError::corrupt("raft_log key", "short key"))?;
                debug_assert_eq!(index, log_id.index);
                unsynced.push((index, ptr));
            }
            it.prev();
        }
        it.status()?;
        // Oldest first: everything from the first damaged entry on goes.
        for (index, ptr) in unsynced.into_iter().rev() {
            if self.inner.segments.read(&ptr).is_err() {
                return Ok(Some(index));
            }
        }
        Ok(None)
    }

    /// Finds `group`'s first entry in a segment, after some of its entries were deleted.
    pub(crate) fn rescan_segments(&self, group: GroupId) -> Result<(), StorageError> {
        let scan = self.inner.segments.begin_rescan(group);
        let mut found = None;
        self.scan(
            Family::RaftLog,
            &keys::log_key(group, scan.from),
            &keys::group_end(group),
            |k, v| {
                if let StoredEntry::InSegment(_, ptr) = StoredEntry::decode(v)? {
                    let index = keys::log_index_of(k)
                        .ok_or_else(|| StorageError::corrupt("raft_log key", "short key"))?;
                    found = Some((index, ptr.segment));
                    return Ok(false);
                }
                Ok(true)
            },
        )?;
        self.inner.segments.finish_rescan(scan, found);
        Ok(())
    }

    /// Unlinks the segments no group points into any more, once a sync has made the deletions
    /// that freed them durable. Nothing is unlinked while a snapshot is being built.
    pub(crate) fn reclaim_segments(&self) -> Result<(), StorageError> {
        let segments = &self.inner.segments;
        if segments.pinned() {
            return Ok(());
        }
        let garbage = segments.garbage();
        if garbage.is_empty() {
            return Ok(());
        }
        self.inner.sync().inspect_err(|e| {
            self.writer.poison(format!("sync failed: {e}"));
        })?;
        segments.unlink(&garbage)
    }

    /// After entries of `group` were deleted from the front of its log: reclaims what they held.
    pub(crate) fn log_front_deleted(&self, group: GroupId) -> Result<(), StorageError> {
        self.rescan_segments(group)?;
        self.reclaim_segments()
    }

    /// After `group`'s whole log was deleted (and the deletion synced).
    pub(crate) fn log_deleted_whole(&self, group: GroupId) -> Result<(), StorageError> {
        self.inner.segments.forget_group(group);
        self.reclaim_segments()
    }

    /// Reads a raft_log value back into its entry. `None`: its segment was reclaimed, i.e. the
    /// entry was deleted since the caller found it.
    pub(crate) fn load_entry(&self, raw: &[u8]) -> Result<Option<Entry>, StorageError> {
        match StoredEntry::decode(raw)? {
            StoredEntry::Inline(e) => Ok(Some(e)),
            StoredEntry::InSegment(log_id, ptr) => match self.inner.segments.read(&ptr) {
                Ok(data) => Ok(Some(<Entry as openraft::entry::RaftEntry>::new_normal(
                    log_id,
                    crate::types::AppData(data),
                ))),
                Err(segments::ReadError::Gone(_)) => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// A handle that tells when the RocksDB has been closed, i.e. every clone of this store
    /// (held by groups, views and tasks) has been dropped.
    pub fn closed_signal(&self) -> StoreClosed {
        StoreClosed(Arc::downgrade(&self.inner))
    }

    /// Writes `ops` from the calling thread, unsynced: readable on return, durable with the
    /// log writer's next sync. For state-machine writes, which need no ordering with the log
    /// (they cover entries already committed and persisted in the log), and which thereby save
    /// two thread hand-offs per apply. A failed write poisons the store like a failed log write.
    pub(crate) fn write_now(&self, ops: &[Op]) -> Result<(), StorageError> {
        if let Some(reason) = self.writer.poisoned() {
            return Err(StorageError::Poisoned(reason));
        }
        let batch = log_writer::batch_of(&self.inner, ops.iter());
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(false);
        self.inner.db.write_opt(batch, &opts).map_err(|e| {
            let reason = format!("write failed: {e}");
            self.writer.poison(reason.clone());
            StorageError::Poisoned(reason)
        })
    }

    /// Deletes the entries of a log-is-data group that openraft purged and its state machine
    /// released: those up to the lower of the two marks. Called after either mark moves.
    pub(crate) fn delete_released_log(&self, group: GroupId) -> Result<(), StorageError> {
        let mut deleted = self
            .inner
            .log_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let purged: Option<crate::types::LogId> =
            self.get_value(Family::RaftMeta, &keys::meta_key(group, keys::META_PURGED))?;
        let released = self.released_log(group)?;
        let (Some(purged), Some(released)) = (purged, released) else {
            return Ok(());
        };
        let upto = purged.index.min(released);
        if deleted.get(&group).is_some_and(|d| *d >= upto) {
            return Ok(());
        }
        self.write_now(&[Op::DeleteRange(
            Family::RaftLog,
            keys::log_key(group, 0).to_vec(),
            keys::log_key(group, upto.saturating_add(1)).to_vec(),
        )])?;
        deleted.insert(group, upto);
        drop(deleted);
        self.log_front_deleted(group)
    }

    /// Forgets what [`NodeStore::delete_released_log`] deleted for `group`, after its log was
    /// replaced (a snapshot install).
    /// `group`'s cache of its newest log entries, if the group runs here.
    pub(crate) fn log_cache(&self, group: GroupId) -> Option<Arc<log_cache::LogCache>> {
        self.inner.log_caches.get(group)
    }

    pub(crate) fn forget_deleted_log(&self, group: GroupId) {
        self.inner
            .log_deleted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
    }

    /// The index up to which a log-is-data group's state machine released its entries.
    pub(crate) fn released_log(&self, group: GroupId) -> Result<Option<u64>, StorageError> {
        match self.get(
            Family::RaftMeta,
            &keys::meta_key(group, keys::META_RELEASED),
        )? {
            None => Ok(None),
            Some(raw) => {
                let raw: [u8; 8] = raw.as_slice().try_into().map_err(|_| {
                    StorageError::corrupt("released log index", format!("{} bytes", raw.len()))
                })?;
                Ok(Some(u64::from_be_bytes(raw)))
            }
        }
    }

    /// Stops the log writer after it has written and synced everything queued.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }

    pub(crate) fn get(&self, family: Family, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.inner.db.get_cf(self.inner.cf(family), key)?)
    }

    pub(crate) fn get_value<T: DeserializeOwned>(
        &self,
        family: Family,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.get(family, key)? {
            None => Ok(None),
            Some(raw) => decode(&raw, family.name()).map(Some),
        }
    }

    /// Groups that have a registration record: the groups this node hosts.
    pub(crate) fn registered_groups(&self) -> Result<Vec<(GroupId, Vec<u8>)>, StorageError> {
        let mut out = Vec::new();
        let it = self
            .inner
            .db
            .iterator_cf(self.inner.cf(Family::RaftMeta), IteratorMode::Start);
        for item in it {
            let (k, v) = item?;
            if k.len() == 9 && k[8] == keys::META_REGISTRATION {
                let group = keys::group_of(&k)
                    .ok_or_else(|| StorageError::corrupt("raft_meta key", "short key"))?;
                out.push((group, v.to_vec()));
            }
        }
        Ok(out)
    }

    /// Ops that delete every key of `group` in every family.
    pub(crate) fn delete_group_ops(group: GroupId) -> Vec<Op> {
        let from = keys::group_prefix(group).to_vec();
        let to = keys::group_end(group);
        Family::ALL
            .iter()
            .map(|f| Op::DeleteRange(*f, from.clone(), to.clone()))
            .collect()
    }

    /// Scans `[from, to)` in `family`, calling `f` with each key and value until it returns
    /// false.
    pub(crate) fn scan(
        &self,
        family: Family,
        from: &[u8],
        to: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        if family == Family::RaftLog {
            // A scan of old entries (a consumer reading a backlog, a follower catching up)
            // would push the newest entries, which most readers want, out of the cache.
            ro.fill_cache(false);
        }
        let it = self.inner.db.iterator_cf_opt(
            self.inner.cf(family),
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            if !f(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

/// The layout of the stored data. Version 3: the data of normal log entries is in segment
/// files, the raft_log family holds pointers to it. Version 2: shard records are stored one key
/// per log entry, each entry whole in raft_log. Version 1 (one key per record) had no marker.
pub(crate) const STORE_FORMAT: u32 = 3;

/// Refuses a store written in another format; marks a new store with [`STORE_FORMAT`].
fn check_format(inner: &StoreInner) -> Result<(), StorageError> {
    let meta = inner.cf(Family::RaftMeta);
    let found = match inner.db.get_cf(meta, keys::STORE_FORMAT_KEY)? {
        Some(raw) => {
            let raw: [u8; 4] = raw.as_slice().try_into().map_err(|_| {
                StorageError::corrupt("store format marker", format!("{} bytes", raw.len()))
            })?;
            u32::from_be_bytes(raw)
        }
        None => {
            let mut it = inner.db.iterator_cf(meta, IteratorMode::Start);
            if it.next().transpose()?.is_some() {
                1
            } else {
                inner
                    .db
                    .put_cf(meta, keys::STORE_FORMAT_KEY, STORE_FORMAT.to_be_bytes())?;
                inner.db.flush_wal(true)?;
                STORE_FORMAT
            }
        }
    };
    if found != STORE_FORMAT {
        return Err(StorageError::Format {
            path: inner.path.display().to_string(),
            found,
            expected: STORE_FORMAT,
        });
    }
    Ok(())
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("engine types always serialize")
}

pub(crate) fn decode<T: DeserializeOwned>(raw: &[u8], what: &str) -> Result<T, StorageError> {
    bincode::deserialize(raw).map_err(|e| StorageError::corrupt(what, e))
}

/// Writes of one group's state machine, committed atomically with the group's applied index.
#[derive(Debug)]
pub struct GroupBatch {
    group: GroupId,
    pub(crate) ops: Vec<Op>,
    /// Set by [`GroupBatch::release_log`].
    pub(crate) released: Option<u64>,
}

impl GroupBatch {
    pub(crate) fn new(group: GroupId) -> Self {
        Self {
            group,
            ops: Vec::new(),
            released: None,
        }
    }

    /// In a group whose log is its data ([`crate::GroupSettings::log_is_data`]): the state
    /// machine no longer needs the log entries up to `upto`, inclusive. They are deleted once
    /// openraft has purged them too, and snapshots no longer carry them. The mark only moves
    /// forward.
    pub fn release_log(&mut self, upto: u64) {
        if self.released.is_some_and(|r| r >= upto) {
            return;
        }
        self.released = Some(upto);
        self.ops.push(Op::Put(
            Family::RaftMeta,
            keys::meta_key(self.group, keys::META_RELEASED).to_vec(),
            upto.to_be_bytes().to_vec(),
        ));
    }

    pub fn put(&mut self, family: DataFamily, key: &[u8], value: &[u8]) {
        self.ops.push(Op::Put(
            Family::Data(family),
            keys::data_key(self.group, key),
            value.to_vec(),
        ));
    }

    pub fn delete(&mut self, family: DataFamily, key: &[u8]) {
        self.ops.push(Op::Delete(
            Family::Data(family),
            keys::data_key(self.group, key),
        ));
    }

    /// Deletes every key in `[from, to)` of the group's part of `family`.
    pub fn delete_range(&mut self, family: DataFamily, from: &[u8], to: &[u8]) {
        self.ops.push(Op::DeleteRange(
            Family::Data(family),
            keys::data_key(self.group, from),
            keys::data_key(self.group, to),
        ));
    }

    /// Bytes queued so far.
    pub fn size(&self) -> usize {
        self.ops.iter().map(Op::size).sum()
    }
}

/// A key and its value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Read access to one group's state-machine data. Reads see every entry applied so far.
#[derive(Clone)]
pub struct GroupView {
    store: NodeStore,
    group: GroupId,
}

impl std::fmt::Debug for GroupView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupView")
            .field("group", &self.group)
            .finish()
    }
}

impl GroupView {
    pub(crate) fn new(store: NodeStore, group: GroupId) -> Self {
        Self { store, group }
    }

    pub fn group(&self) -> GroupId {
        self.group
    }

    pub fn get(&self, family: DataFamily, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.store
            .get(Family::Data(family), &keys::data_key(self.group, key))
    }

    /// Calls `f` with each key (without the group prefix) and value in `[from, to)`, in key
    /// order, until `f` returns false. `to = None` scans to the end of the group's keys.
    pub fn scan(
        &self,
        family: DataFamily,
        from: &[u8],
        to: Option<&[u8]>,
        mut f: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StorageError> {
        let start = keys::data_key(self.group, from);
        let end = match to {
            Some(to) => keys::data_key(self.group, to),
            None => keys::group_end(self.group),
        };
        self.store.scan(Family::Data(family), &start, &end, |k, v| {
            Ok(f(&k[keys::GROUP_PREFIX_LEN..], v))
        })
    }

    /// Whether the group's entries from `index` on are all in memory, so that
    /// [`GroupView::scan_log`] from there reads no disk.
    pub fn log_cached_from(&self, index: u64) -> bool {
        self.store
            .log_cache(self.group)
            .is_some_and(|c| c.holds_from(index))
    }

    /// Calls `f` with the index and application data of each normal entry of the group's log
    /// from index `from` to `to`, inclusive, in order, until `f` returns false. For groups whose
    /// log is their data; the caller bounds `to` by what it has applied, since later entries
    /// are not committed yet and may still be replaced.
    pub fn scan_log(
        &self,
        from: u64,
        to: u64,
        mut f: impl FnMut(u64, bytes::Bytes) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        if to < from {
            return Ok(());
        }
        let start = keys::log_key(self.group, from);
        let end = keys::log_key(self.group, to.saturating_add(1));
        let end: &[u8] = if to == u64::MAX {
            &keys::group_end(self.group)
        } else {
            &end
        };
        let cached = self
            .store
            .log_cache(self.group)
            .and_then(|c| c.range(from, to.checked_add(1)));
        if let Some(entries) = cached {
            for entry in entries {
                if let openraft::EntryPayload::Normal(data) = entry.payload
                    && !f(entry.log_id.index, data.0)?
                {
                    break;
                }
            }
            return Ok(());
        }
        self.store.scan(Family::RaftLog, &start, end, |_, v| {
            // A reclaimed segment: the rest was deleted while this scan ran.
            let Some(entry) = self.store.load_entry(v)? else {
                return Ok(false);
            };
            match entry.payload {
                openraft::EntryPayload::Normal(data) => f(entry.log_id.index, data.0),
                _ => Ok(true),
            }
        })
    }

    /// The last key and value in `[from, to)`, if any.
    pub fn last(
        &self,
        family: DataFamily,
        from: &[u8],
        to: Option<&[u8]>,
    ) -> Result<Option<KeyValue>, StorageError> {
        let start = keys::data_key(self.group, from);
        let end = match to {
            Some(to) => keys::data_key(self.group, to),
            None => keys::group_end(self.group),
        };
        let inner = &self.store.inner;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(start);
        ro.set_iterate_upper_bound(end);
        let mut it = inner
            .db
            .raw_iterator_cf_opt(inner.cf(Family::Data(family)), ro);
        it.seek_to_last();
        if it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                return Ok(None);
            };
            return Ok(Some((k[keys::GROUP_PREFIX_LEN..].to_vec(), v.to_vec())));
        }
        it.status()?;
        Ok(None)
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn a_store_without_the_format_marker_is_refused_and_a_new_one_is_marked() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A new store is marked and opens again.
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("opens");
        store.shutdown();
        drop(store);
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("opens again");
        // Take the marker away, leaving a group's metadata as an older build would have.
        let meta = store.inner.cf(Family::RaftMeta);
        store
            .inner
            .db
            .put_cf(meta, keys::meta_key(GroupId(1), keys::META_VOTE), b"v")
            .expect("put");
        store
            .inner
            .db
            .delete_cf(meta, keys::STORE_FORMAT_KEY)
            .expect("delete");
        store.inner.db.flush_wal(true).expect("sync");
        store.shutdown();
        drop(store);
        let err = NodeStore::open(dir.path(), GroupCommit::On).expect_err("older format");
        let msg = err.to_string();
        assert!(
            msg.contains("format 1")
                && msg.contains(&format!("format {STORE_FORMAT}"))
                && msg.contains("move the directory"),
            "{msg}"
        );
    }
}

#[cfg(test)]
mod record_cache_tests {
    use super::*;

    fn blob_cache_usage(store: &NodeStore) -> u64 {
        let cf = store.inner.cf(Family::RaftLog);
        store
            .inner
            .db
            .property_int_value_cf(cf, "rocksdb.blob-cache-usage")
            .expect("property")
            .expect("the log family has a blob cache")
    }

    /// Entries flushed to blob files stay readable from memory: the flush fills the cache.
    #[test]
    fn a_flush_puts_the_log_entries_it_writes_to_blob_files_in_the_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = NodeStore::open_with(dir.path(), GroupCommit::On, 8 << 20).expect("opens");
        let ops: Vec<Op> = (0..10)
            .map(|i| {
                Op::Put(
                    Family::RaftLog,
                    keys::log_key(GroupId(1), i).to_vec(),
                    vec![7u8; 16 << 10],
                )
            })
            .collect();
        store.write_now(&ops).expect("write");
        assert_eq!(blob_cache_usage(&store), 0, "nothing flushed yet");
        let cf = store.inner.cf(Family::RaftLog);
        store.inner.db.flush_cf(cf).expect("flush");
        assert!(
            blob_cache_usage(&store) >= 10 * (16 << 10),
            "the flushed values are cached: {} bytes",
            blob_cache_usage(&store)
        );
        store.shutdown();
    }
}

#[cfg(test)]
mod wal_recycling_tests {
    use super::*;

    fn wal_files(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("store dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".log"))
            })
            .count()
    }

    fn round(store: &NodeStore, round: u8, keys: u64) {
        let ops: Vec<Op> = (0..keys)
            .map(|i| {
                Op::Put(
                    Family::Data(DataFamily::Records),
                    keys::log_key(GroupId(1), i).to_vec(),
                    vec![round; 8 << 10],
                )
            })
            .collect();
        store.write_now(&ops).expect("write");
        store.inner.db.flush_wal(true).expect("sync");
    }

    /// WAL files are written over rather than deleted once flushes release them, and what was
    /// synced to a written-over WAL (shorter than what the file held before) reads back after
    /// the store is reopened, with nothing of the file's older contents.
    #[test]
    fn released_wals_are_reused_and_what_was_synced_to_them_survives_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        {
            let store = NodeStore::open(dir.path(), GroupCommit::On).expect("opens");
            for r in 0..3 {
                round(&store, r, 20);
                // Flushing every family releases the WAL that held the round.
                for f in Family::ALL {
                    store.inner.db.flush_cf(store.inner.cf(f)).expect("flush");
                }
            }
            assert!(
                wal_files(dir.path()) > 1,
                "released WALs are kept for reuse, found {}",
                wal_files(dir.path())
            );
            // Written to a reused WAL and synced, never flushed.
            round(&store, 3, 5);
            store.shutdown();
        }
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("reopens");
        for i in 0..20u64 {
            let value = store
                .get(
                    Family::Data(DataFamily::Records),
                    &keys::log_key(GroupId(1), i),
                )
                .expect("read")
                .expect("present");
            let want = if i < 5 { 3 } else { 2 };
            assert_eq!(value, vec![want; 8 << 10], "key {i}");
        }
        store.shutdown();
    }
}
