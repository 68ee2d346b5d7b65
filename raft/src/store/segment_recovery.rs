//! What opening a store checks in the segment files, and the reclaiming of segments that no
//! group points into (see [`super::segments`] for why both are needed).

use super::segments::SyncMark;
use super::{Family, NodeStore, Op, StoredEntry, keys};
use crate::error::StorageError;
use crate::types::GroupId;

impl NodeStore {
    /// On open: cuts off each group's log where entries written after the last segment sync
    /// have data that did not reach the disk (never acknowledged, see [`super::segments`]), then finds
    /// each group's first segment and reclaims the segments no group points into.
    pub(super) fn recover_segments(&self) -> Result<(), StorageError> {
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
}
