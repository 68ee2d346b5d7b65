//! Raft log and vote storage of one group, over the shared RocksDB and log writer.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{EntryPayload, OptionalSend};

use super::flushed::Flushed;
use super::keys::{self, META_COMMITTED, META_PURGED, META_VOTE};
use super::log_cache::LogCache;
use super::{Family, NodeStore, Op, StoredEntry, encode, encode_in_segment, encode_inline};
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
    /// The log is the group's data: a purge keeps the entries its state machine has not
    /// released ([`crate::GroupSettings::log_is_data`]).
    log_is_data: bool,
    /// The first index not purged: openraft reads nothing below it, even where a log-is-data
    /// group still holds the entries.
    first_unpurged: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The newest entries, as appended: replication reads them from here.
    cache: std::sync::Arc<LogCache>,
    /// How far the log is synced, for the state machine ([`Flushed`]).
    flushed: std::sync::Arc<Flushed>,
}

impl GroupLogStore {
    pub(crate) fn new(
        store: NodeStore,
        group: GroupId,
        log_is_data: bool,
        cache_bytes: usize,
    ) -> Result<Self, crate::error::StorageError> {
        let purged: Option<LogId> =
            store.get_value(Family::RaftMeta, &keys::meta_key(group, META_PURGED))?;
        let cache = store.inner.log_caches.start(group, cache_bytes);
        // What the store holds at open is on disk: the segments past the last sync mark were
        // synced when the store was opened.
        let last = stored_last_log_id(&store, group)?;
        let flushed = std::sync::Arc::new(Flushed::new(last.map_or(0, |l| l.index + 1)));
        Ok(Self {
            cache,
            flushed,
            store,
            group,
            committed_saved: Default::default(),
            log_is_data,
            first_unpurged: std::sync::Arc::new(purged.map(|p| p.index + 1).unwrap_or(0).into()),
        })
    }

    fn read_entries(&self, start: u64, end: Option<u64>) -> Result<Vec<Entry>, io::Error> {
        let start = start.max(
            self.first_unpurged
                .load(std::sync::atomic::Ordering::Acquire),
        );
        if end.is_some_and(|end| end <= start) {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.cache.range(start, end) {
            return Ok(entries);
        }
        let from = keys::log_key(self.group, start);
        let to = match end {
            Some(end) => keys::log_key(self.group, end).to_vec(),
            None => keys::group_end(self.group),
        };
        let mut out = Vec::new();
        let mut expected: Option<u64> = None;
        self.store.scan(Family::RaftLog, &from, &to, |k, v| {
            // A reclaimed segment: the entry was purged since; the caller sees a shorter result.
            let Some(entry) = self.store.load_entry(v)? else {
                return Ok(false);
            };
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
        Ok(stored_last_log_id(&self.store, self.group)?)
    }

    /// How far the log is synced, shared with the group's state machine.
    pub(crate) fn flushed(&self) -> std::sync::Arc<Flushed> {
        self.flushed.clone()
    }
}

/// The log id of `group`'s last stored entry.
fn stored_last_log_id(
    store: &NodeStore,
    group: GroupId,
) -> Result<Option<LogId>, crate::error::StorageError> {
    let inner = &store.inner;
    let mut ro = rocksdb::ReadOptions::default();
    ro.set_iterate_lower_bound(keys::group_prefix(group).to_vec());
    ro.set_iterate_upper_bound(keys::group_end(group));
    let mut it = inner.db.raw_iterator_cf_opt(inner.cf(Family::RaftLog), ro);
    it.seek_to_last();
    if let Some(v) = it.value().filter(|_| it.valid()) {
        return Ok(Some(StoredEntry::decode(v)?.log_id()));
    }
    it.status()?;
    Ok(None)
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
        // A log-is-data group keeps entries below the purge mark, so its last entry can be an
        // older one than the last purged.
        let last = self.last_log_id()?.max(last_purged);
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
        // The committed id can name an entry this node had not synced yet (openraft commits on
        // a majority's syncs); if a crash then took the entry's data, the store cut it off the
        // log at open. Never name more than the log holds: entries past it are not here to be
        // applied again.
        let state = self.get_log_state().await?;
        Ok(v.flatten().min(state.last_log_id))
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
        let entries: Vec<Entry> = entries.into_iter().collect();
        // The data of normal entries goes to the active segment, everything else (and the
        // pointers) to RocksDB.
        let data: Vec<(u64, &bytes::Bytes)> = entries
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(d) => Some((e.log_id.index, &d.0)),
                _ => None,
            })
            .collect();
        let segments = &self.store.inner.segments;
        let (pointers, inflight) = if data.is_empty() {
            (Vec::new(), None)
        } else {
            match segments.append(self.group, &data) {
                Ok((pointers, inflight)) => (pointers, Some(inflight)),
                Err(e) => {
                    let reason = format!("segment write failed: {e}");
                    self.store.writer.poison(reason.clone());
                    callback.io_completed(Err(io::Error::other(reason.clone())));
                    return Err(io::Error::other(reason));
                }
            }
        };
        let mut pointers = pointers.into_iter();
        let ops: Vec<Op> = entries
            .iter()
            .map(|e| {
                // One pointer per normal entry, in order.
                let ptr = match &e.payload {
                    EntryPayload::Normal(_) => pointers.next(),
                    _ => None,
                };
                let value = match ptr {
                    Some(ptr) => encode_in_segment(e.log_id, ptr),
                    None => encode_inline(e),
                };
                Op::Put(
                    Family::RaftLog,
                    keys::log_key(self.group, e.log_id.index).to_vec(),
                    value,
                )
            })
            .collect();
        // Entries must be readable when append returns; durability is reported by the callback.
        let flushed = self.flushed.clone();
        let epoch = flushed.epoch();
        let last = entries.last().map(|e| e.log_id.index);
        self.store
            .writer
            .append(
                ops,
                Box::new(move |r| {
                    if let (Ok(()), Some(last)) = (&r, last) {
                        flushed.synced(epoch, last);
                    }
                    callback.io_completed(r.map_err(io::Error::from));
                }),
            )
            .await?;
        drop(inflight);
        self.cache.appended(&entries);
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index + 1).unwrap_or(0);
        self.flushed.truncated(from);
        self.cache.clear();
        let op = Op::DeleteRange(
            Family::RaftLog,
            keys::log_key(self.group, from).to_vec(),
            keys::group_end(self.group),
        );
        self.store.writer.write(vec![op]).await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut ops = vec![Op::Put(
            Family::RaftMeta,
            keys::meta_key(self.group, META_PURGED).to_vec(),
            encode(&log_id),
        )];
        if !self.log_is_data {
            ops.push(Op::DeleteRange(
                Family::RaftLog,
                keys::log_key(self.group, 0).to_vec(),
                keys::log_key(self.group, log_id.index + 1).to_vec(),
            ));
        }
        self.store.writer.write(ops).await?;
        self.first_unpurged
            .fetch_max(log_id.index + 1, std::sync::atomic::Ordering::AcqRel);
        self.cache.purged(log_id.index);
        if self.log_is_data {
            self.store.delete_released_log(self.group)?;
        } else {
            self.store.log_front_deleted(self.group)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;

    use super::*;
    use openraft::storage::IOFlushed;

    use crate::store::{GroupBatch, GroupCommit, GroupView, RecordReads};
    use crate::types::AppData;

    fn indexes(view: &GroupView) -> Vec<u64> {
        let mut out = Vec::new();
        view.scan_log(0, u64::MAX, |i, _| {
            out.push(i);
            Ok(true)
        })
        .expect("scan");
        out
    }

    /// In a log-is-data group an entry is deleted only once openraft purged it and the state
    /// machine released it, whichever comes last; openraft sees purged entries as gone either
    /// way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_go_when_both_purged_and_released() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("open");
        let group = GroupId(5);
        let mut log = GroupLogStore::new(store.clone(), group, true, 0).expect("log store");
        let view = GroupView::new(store.clone(), group);
        let ops = (1..=10)
            .map(|i| {
                let e =
                    Entry::new_normal(log_id::<TypeConfig>(1, 1, i), AppData(vec![i as u8].into()));
                Op::Put(
                    Family::RaftLog,
                    keys::log_key(group, i).to_vec(),
                    encode_inline(&e),
                )
            })
            .collect();
        store.writer.write(ops).await.expect("append");
        let release = |upto: u64| {
            let mut batch = GroupBatch::new(group);
            batch.release_log(upto);
            store.write_now(&batch.ops).expect("release");
            store.delete_released_log(group).expect("delete");
        };

        log.purge(log_id::<TypeConfig>(1, 1, 5))
            .await
            .expect("purge");
        assert_eq!(
            indexes(&view),
            (1..=10).collect::<Vec<_>>(),
            "nothing released yet"
        );
        let seen: Vec<u64> = log
            .try_get_log_entries(0..11)
            .await
            .expect("read")
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(
            seen,
            (6..=10).collect::<Vec<_>>(),
            "openraft sees the purge"
        );

        release(3);
        assert_eq!(indexes(&view), (4..=10).collect::<Vec<_>>());
        release(8);
        assert_eq!(
            indexes(&view),
            (6..=10).collect::<Vec<_>>(),
            "purged up to 5 only"
        );
        log.purge(log_id::<TypeConfig>(1, 1, 9))
            .await
            .expect("purge");
        assert_eq!(indexes(&view), vec![9, 10], "released up to 8 only");
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(10));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(9));
        store.shutdown();
    }

    fn entries(range: std::ops::RangeInclusive<u64>, bytes: usize) -> Vec<Entry> {
        range
            .map(|i| {
                Entry::new_normal(
                    log_id::<TypeConfig>(1, 1, i),
                    AppData(vec![i as u8; bytes].into()),
                )
            })
            .collect()
    }

    async fn read(log: &mut GroupLogStore, range: std::ops::Range<u64>) -> Vec<(u64, usize)> {
        log.try_get_log_entries(range)
            .await
            .expect("read")
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(d) => {
                    assert!(
                        d.0.iter().all(|b| *b == e.log_id.index as u8),
                        "entry {} reads back as written",
                        e.log_id.index
                    );
                    (e.log_id.index, d.0.len())
                }
                _ => (e.log_id.index, 0),
            })
            .collect()
    }

    /// A segment is unlinked once no group has an entry in it, and not before; what is left
    /// reads back, also after a reopen.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn segments_are_reclaimed_once_no_group_points_into_them() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = NodeStore::open_sized(dir.path(), GroupCommit::On, 0, 64 << 10).expect("open");
        let (g1, g2) = (GroupId(1), GroupId(2));
        let mut l1 = GroupLogStore::new(store.clone(), g1, false, 0).expect("log store");
        let mut l2 = GroupLogStore::new(store.clone(), g2, false, 0).expect("log store");
        for i in 1..=40 {
            l1.append(entries(i..=i, 8 << 10), IOFlushed::noop())
                .await
                .expect("append");
            l2.append(entries(i..=i, 8 << 10), IOFlushed::noop())
                .await
                .expect("append");
        }
        let before = store.inner.segments.ids();
        assert!(before.len() >= 9, "640 KiB in 64 KiB segments: {before:?}");

        l1.purge(log_id::<TypeConfig>(1, 1, 30))
            .await
            .expect("purge");
        assert_eq!(
            store.inner.segments.ids(),
            before,
            "group 2 still has entries in every segment"
        );
        l2.purge(log_id::<TypeConfig>(1, 1, 20))
            .await
            .expect("purge");
        let after = store.inner.segments.ids();
        assert!(
            after.len() < before.len() && after.len() >= before.len() / 2,
            "the segments of group 2's first 20 entries went: {before:?} -> {after:?}"
        );
        let want = |r: std::ops::Range<u64>| r.map(|i| (i, 8 << 10)).collect::<Vec<_>>();
        assert_eq!(read(&mut l1, 31..41).await, want(31..41));
        assert_eq!(read(&mut l2, 21..41).await, want(21..41));

        store.shutdown();
        drop((l1, l2, store));
        let store = NodeStore::open_sized(dir.path(), GroupCommit::On, 0, 64 << 10).expect("open");
        let reopened = store.inner.segments.ids();
        assert_eq!(
            reopened[..reopened.len() - 1],
            after[..],
            "a reopen keeps what is in use and starts a new segment"
        );
        let mut l2 = GroupLogStore::new(store.clone(), g2, false, 0).expect("log store");
        assert_eq!(read(&mut l2, 21..41).await, want(21..41));
        store.shutdown();
    }

    /// Entries read back after they were synced (a follower catching up, openraft reading past
    /// the log cache) come from the record cache when it is on, from the segment files when it
    /// is off.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn synced_entries_are_read_from_the_record_cache_when_it_is_on() {
        for (cache, want) in [
            (
                8 << 20,
                RecordReads {
                    cache_hits: 50,
                    file_reads: 0,
                },
            ),
            (
                0,
                RecordReads {
                    cache_hits: 0,
                    file_reads: 50,
                },
            ),
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let store = NodeStore::open_with(dir.path(), GroupCommit::On, cache).expect("open");
            // No log cache: every read goes to the store.
            let mut log = GroupLogStore::new(store.clone(), GroupId(1), true, 0).expect("log");
            log.append(entries(1..=50, 8 << 10), IOFlushed::noop())
                .await
                .expect("append");
            store.writer.write_durable(Vec::new()).await.expect("sync");
            assert_eq!(
                read(&mut log, 1..51).await,
                (1..=50).map(|i| (i, 8 << 10)).collect::<Vec<_>>()
            );
            assert_eq!(store.record_reads(), want, "record cache of {cache} bytes");
            store.shutdown();
        }
    }

    /// Entries whose pointers reached the disk but whose data did not (possible only for
    /// entries written after the last sync, never acknowledged) are cut off the log on open,
    /// from the first damaged one on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn entries_whose_data_missed_the_disk_are_cut_off_on_open() {
        let dir = tempfile::tempdir().expect("temp dir");
        let group = GroupId(3);
        {
            let store = NodeStore::open(dir.path(), GroupCommit::On).expect("open");
            let mut log = GroupLogStore::new(store.clone(), group, true, 0).expect("log store");
            log.append(entries(1..=5, 1000), IOFlushed::noop())
                .await
                .expect("append");
            store.writer.write_durable(Vec::new()).await.expect("sync");
            let mark = store
                .get(Family::RaftMeta, keys::SEGMENTS_SYNCED_KEY)
                .expect("read")
                .expect("a sync records its mark");
            log.append(entries(6..=8, 1000), IOFlushed::noop())
                .await
                .expect("append");
            store.writer.write_durable(Vec::new()).await.expect("sync");
            // As if the node had crashed after the WAL holding the pointers of 6 to 8 was
            // written back, before the segment was synced, and entry 7's data never got there.
            let raw = store
                .get(Family::RaftLog, &keys::log_key(group, 7))
                .expect("read")
                .expect("entry 7");
            let StoredEntry::InSegment(_, ptr) = StoredEntry::decode(&raw).expect("decode") else {
                panic!("entry 7 is in a segment");
            };
            let db = &store.inner.db;
            db.put_cf(
                store.inner.cf(Family::RaftMeta),
                keys::SEGMENTS_SYNCED_KEY,
                mark,
            )
            .expect("put");
            db.flush_wal(true).expect("sync");
            let seg = std::fs::OpenOptions::new()
                .write(true)
                .open(
                    dir.path()
                        .join("segments")
                        .join(format!("{:020}.seg", ptr.segment)),
                )
                .expect("segment file");
            std::os::unix::fs::FileExt::write_all_at(&seg, &[0u8; 1000], ptr.offset)
                .expect("zero entry 7");
            store.shutdown();
        }
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("reopen");
        let mut log = GroupLogStore::new(store.clone(), group, true, 0).expect("log store");
        assert_eq!(
            read(&mut log, 0..20).await,
            (1..=6).map(|i| (i, 1000)).collect::<Vec<_>>()
        );
        let state = log.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(6));
        store.shutdown();
    }
}
