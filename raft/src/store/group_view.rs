//! Read access to one group's state-machine data and log.

use super::{DataFamily, Family, NodeStore, keys};
use crate::error::StorageError;
use crate::types::GroupId;

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
