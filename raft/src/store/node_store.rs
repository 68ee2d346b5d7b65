//! [`NodeStore`]: the node's RocksDB, the segment files beside it and the log writer in front
//! of both, with the reads and writes every other part of the store goes through.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use serde::de::DeserializeOwned;

use super::segments::{self, Segments};
use super::{
    DEFAULT_RECORD_CACHE_BYTES, DataFamily, Family, GroupCommit, LogWriter, Op, StoredEntry,
    decode, dirs, encode, format, keys, log_cache, log_writer,
};
use crate::error::StorageError;
use crate::types::{Entry, GroupId};

/// Smallest value stored in a blob file rather than inline in an SST (log and records families).
const BLOB_MIN_BYTES: u64 = 2048;

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
    pub(super) sync_lock: std::sync::Mutex<()>,
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
    /// Opens (or creates) the store in `dir` and starts its log writer, with a record cache of
    /// [`DEFAULT_RECORD_CACHE_BYTES`].
    pub fn open(dir: &Path, group_commit: GroupCommit) -> Result<Self, StorageError> {
        Self::open_with(dir, group_commit, DEFAULT_RECORD_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir` and starts its log writer. The newest
    /// `record_cache_bytes` written to the segment files stay in memory for readers (0: none;
    /// see [`super::record_cache`]).
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
        let families = Family::ALL.iter().map(|f| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&block);
            match f {
                // Log entries kept whole (those installed from a snapshot; the others are
                // pointers into the segments) and shard entries are large values (a whole batch
                // of records) under small keys. Values of at least `BLOB_MIN_BYTES` go to blob files when
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
        let segments = Arc::new(Segments::open(
            &dir.join("segments"),
            segment_bytes,
            record_cache_bytes,
        )?);
        let inner = Arc::new(StoreInner {
            db,
            path: dir.to_path_buf(),
            log_deleted: Default::default(),
            log_caches: Default::default(),
            segments,
            sync_lock: Default::default(),
        });
        format::check_format(&inner)?;
        let writer = LogWriter::start(inner.clone(), group_commit)?;
        let store = Self { inner, writer };
        store.recover_segments()?;
        Ok(store)
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

    /// How reads of log entries' data found it since the store was opened.
    pub fn record_reads(&self) -> super::RecordReads {
        self.inner.segments.reads()
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
            // would push the newest blocks of the log's index, which most readers want, out of
            // the block cache.
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

#[cfg(test)]
mod tests {
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
