//! Raft log and vote storage of one group, over the shared RocksDB and log writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::OptionalSend;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};

use super::keys::{self, META_COMMITTED, META_PURGED, META_VOTE};
use super::{Family, NodeStore, Op, WriteTask, decode, encode};
use crate::types::{Entry, GroupId, LogId, TypeConfig, Vote};

/// The committed log id is written at most once per this many entries. It only speeds up
/// recovery (entries up to it are applied again before the group rejoins), so an older value
/// after a crash is safe.
const COMMITTED_SAVE_EVERY: u64 = 128;

/// Log storage of one group. Clones share the same data.
#[derive(Clone)]
pub(crate) struct GroupLogStore {
    store: NodeStore,
    group: GroupId,
    /// Index of the committed log id last written, plus one (0: none written yet).
    committed_saved: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl GroupLogStore {
    pub(crate) fn new(store: NodeStore, group: GroupId) -> Self {
        Self {
            store,
            group,
            committed_saved: Default::default(),
        }
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, io::Error> {
        let from = keys::log_key(self.group, start);
        let to = match end {
            Some(end) => keys::log_key(self.group, end).to_vec(),
            None => keys::group_end(self.group),
        };
        let mut out = Vec::new();
        let mut expected: Option<u64> = None;
        self.store.scan(Family::RaftLog, &from, &to, |k, v| {
            let entry: Entry = decode(v, "raft_log entry")?;
            let index = keys::log_index_of(k)
                .ok_or_else(|| crate::error::StorageError::corrupt("raft_log key", "short key"))?;
            if entry.log_id.index != index || expected.is_some_and(|e| e != index) {
                // A hole: stop at the first missing index, the caller sees a shorter result.
                return Ok(false);
            }
            expected = Some(index + 1);
            out.push(entry);
            Ok(true)
        })?;
        Ok(out)
    }

    fn last_log_id(&self) -> Result<Option<LogId>, io::Error> {
        let inner = &self.store.inner;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(keys::group_prefix(self.group).to_vec());
        ro.set_iterate_upper_bound(keys::group_end(self.group));
        let mut it = inner.db.raw_iterator_cf_opt(inner.cf(Family::RaftLog), ro);
        it.seek_to_last();
        if let Some(v) = it.value().filter(|_| it.valid()) {
            let entry: Entry = decode(v, "raft_log entry")?;
            return Ok(Some(entry.log_id));
        }
        it.status().map_err(io::Error::other)?;
        Ok(None)
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, Option<u64>) {
    let start = match range.start_bound() {
        Bound::Included(x) => *x,
        Bound::Excluded(x) => x.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(x) => x.checked_add(1),
        Bound::Excluded(x) => Some(*x),
        Bound::Unbounded => None,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for GroupLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let (start, end) = bounds(&range);
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        self.read_entries(start, end)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self
            .store
            .get_value(Family::RaftMeta, &keys::meta_key(self.group, META_VOTE))?)
    }
}

impl RaftLogStorage<TypeConfig> for GroupLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = self
            .store
            .get_value(Family::RaftMeta, &keys::meta_key(self.group, META_PURGED))?;
        let last = self.last_log_id()?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        // A vote must be on disk before it is acted upon.
        let key = keys::meta_key(self.group, META_VOTE).to_vec();
        self.store
            .writer
            .write_durable(vec![Op::Put(Family::RaftMeta, key, encode(vote))])
            .await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        use std::sync::atomic::Ordering;
        let next = committed.map(|c| c.index + 1).unwrap_or(0);
        let saved = self.committed_saved.load(Ordering::Relaxed);
        if saved != 0 && next < saved + COMMITTED_SAVE_EVERY {
            return Ok(());
        }
        self.committed_saved.store(next.max(1), Ordering::Relaxed);
        let key = keys::meta_key(self.group, META_COMMITTED).to_vec();
        self.store
            .writer
            .write(vec![Op::Put(Family::RaftMeta, key, encode(&committed))])
            .await?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        let v: Option<Option<LogId>> = self.store.get_value(
            Family::RaftMeta,
            &keys::meta_key(self.group, META_COMMITTED),
        )?;
        Ok(v.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let ops: Vec<Op> = entries
            .into_iter()
            .map(|e| {
                Op::Put(
                    Family::RaftLog,
                    keys::log_key(self.group, e.log_id.index).to_vec(),
                    encode(&e),
                )
            })
            .collect();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.writer.submit(WriteTask {
            ops,
            written: Some(tx),
            durable: Some(Box::new(move |r| {
                callback.io_completed(r.map_err(io::Error::from));
            })),
        });
        // Entries must be readable when append returns; durability is reported by the callback.
        rx.await
            .unwrap_or(Err(crate::error::StorageError::Closed))
            .map_err(io::Error::from)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        let op = Op::DeleteRange(
            Family::RaftLog,
            keys::log_key(self.group, from).to_vec(),
            keys::group_end(self.group),
        );
        self.store.writer.write(vec![op]).await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let ops = vec![
            Op::Put(
                Family::RaftMeta,
                keys::meta_key(self.group, META_PURGED).to_vec(),
                encode(&log_id),
            ),
            Op::DeleteRange(
                Family::RaftLog,
                keys::log_key(self.group, 0).to_vec(),
                keys::log_key(self.group, log_id.index + 1).to_vec(),
            ),
        ];
        self.store.writer.write(ops).await?;
        Ok(())
    }
}
