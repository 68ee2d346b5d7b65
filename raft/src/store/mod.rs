//! The node's one RocksDB, shared by every group it hosts.

#[cfg(test)]
mod conformance;
pub(crate) mod keys;
pub(crate) mod log_store;
mod log_writer;
pub(crate) mod snapshot;
pub(crate) mod state_machine;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rocksdb::{BlockBasedOptions, ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options};
use serde::{Serialize, de::DeserializeOwned};

pub use log_writer::WriterStats;
pub(crate) use log_writer::{LogWriter, WriteTask};

use crate::error::StorageError;
use crate::types::GroupId;

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
}

impl StoreInner {
    pub(crate) fn cf(&self, family: Family) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(family.name())
            .expect("every column family is created when the store is opened")
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
    /// Opens (or creates) the store in `dir` and starts its log writer.
    pub fn open(dir: &Path, group_commit: GroupCommit) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // WAL writes stay in RocksDB's buffer until the log writer flushes and syncs them, so
        // one sync covers every write since the previous one, and nothing unsynced survives a
        // crash that looks synced.
        opts.set_manual_wal_flush(true);
        opts.set_max_total_wal_size(256 << 20);
        opts.set_max_background_jobs(2);
        opts.increase_parallelism(2);

        let mut block = BlockBasedOptions::default();
        block.set_block_size(16 << 10);
        let families = Family::ALL.iter().map(|f| {
            let mut cf_opts = Options::default();
            cf_opts.set_block_based_table_factory(&block);
            match f {
                Family::RaftLog => {
                    cf_opts.set_write_buffer_size(32 << 20);
                }
                Family::Data(DataFamily::Records) => {
                    cf_opts.set_write_buffer_size(64 << 20);
                    cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
                }
                _ => {
                    cf_opts.set_write_buffer_size(4 << 20);
                }
            }
            ColumnFamilyDescriptor::new(f.name(), cf_opts)
        });
        let db = DB::open_cf_descriptors(&opts, dir, families)?;
        let inner = Arc::new(StoreInner {
            db,
            path: dir.to_path_buf(),
        });
        let writer = LogWriter::start(inner.clone(), group_commit)?;
        Ok(Self { inner, writer })
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
}

impl GroupBatch {
    pub(crate) fn new(group: GroupId) -> Self {
        Self {
            group,
            ops: Vec::new(),
        }
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
