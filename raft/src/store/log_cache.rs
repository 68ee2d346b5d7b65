//! The newest entries of each group's log, kept in memory as they were appended.
//!
//! A leader sends every entry it appends to its followers, and the readers of a data shard
//! mostly read the entries just applied. Both used to read the entries back from RocksDB (an
//! iterator, a copy and a decode per entry) moments after writing them. The cache holds the
//! entries of each group's log tail, contiguous and in order, up to a byte budget per group;
//! a read it covers entirely is answered from it, any other read goes to RocksDB.
//!
//! The cache never holds an entry that the log does not: entries go in after they were
//! written, a truncation or a snapshot install empties it before the stored log changes, and
//! a purge drops what it purged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::types::{Entry, GroupId};

/// Bytes an entry counts for besides its payload.
const ENTRY_OVERHEAD: usize = 64;

/// The cached tail of one group's log.
pub(crate) struct LogCache {
    max_bytes: usize,
    tail: Mutex<Tail>,
}

#[derive(Default)]
struct Tail {
    /// Contiguous entries, oldest first.
    entries: VecDeque<Entry>,
    bytes: usize,
}

fn size_of(entry: &Entry) -> usize {
    let payload = match &entry.payload {
        openraft::EntryPayload::Normal(data) => data.0.len(),
        _ => 0,
    };
    payload + ENTRY_OVERHEAD
}

impl Tail {
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= size_of(&e);
        }
    }
}

impl LogCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            max_bytes,
            tail: Mutex::new(Tail::default()),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds entries just written to the log, in order. Entries that do not follow the cached
    /// ones replace them.
    pub(crate) fn appended(&self, entries: &[Entry]) {
        if self.max_bytes == 0 {
            return;
        }
        let mut tail = self.tail();
        for e in entries {
            let follows = tail
                .entries
                .back()
                .is_none_or(|last| last.log_id.index + 1 == e.log_id.index);
            if !follows {
                tail.clear();
            }
            tail.bytes += size_of(e);
            tail.entries.push_back(e.clone());
        }
        while tail.bytes > self.max_bytes {
            tail.pop_front();
        }
    }

    /// Forgets every entry: called before the stored log changes other than by an append.
    pub(crate) fn clear(&self) {
        self.tail().clear();
    }

    /// Drops the entries up to `index`, inclusive.
    pub(crate) fn purged(&self, index: u64) {
        let mut tail = self.tail();
        while tail.first_index().is_some_and(|first| first <= index) {
            tail.pop_front();
        }
    }

    /// Whether every entry from `index` to the log's end is held.
    pub(crate) fn holds_from(&self, index: u64) -> bool {
        self.tail()
            .first_index()
            .is_some_and(|first| first <= index)
    }

    /// The entries from `start` up to `end` (exclusive; `None`: to the last one), if the cache
    /// holds every one of them. The cache's last entry is the log's last: every append goes
    /// through it.
    pub(crate) fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let tail = self.tail();
        let first = tail.first_index()?;
        let next = first + tail.entries.len() as u64;
        let end = end.unwrap_or(next);
        if start < first || end > next {
            return None;
        }
        if end <= start {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(tail.entries.range(from..to).cloned().collect())
    }
}

/// Every group's cache on this node, shared by its log store, its state machine and its views.
#[derive(Default)]
pub(crate) struct LogCaches {
    groups: Mutex<HashMap<GroupId, Arc<LogCache>>>,
}

impl LogCaches {
    fn groups(&self) -> std::sync::MutexGuard<'_, HashMap<GroupId, Arc<LogCache>>> {
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `group`'s cache, made empty with a budget of `max_bytes` when the group (re)starts.
    pub(crate) fn start(&self, group: GroupId, max_bytes: usize) -> Arc<LogCache> {
        let cache = Arc::new(LogCache::new(max_bytes));
        self.groups().insert(group, Arc::clone(&cache));
        cache
    }

    /// `group`'s cache, if the group runs here.
    pub(crate) fn get(&self, group: GroupId) -> Option<Arc<LogCache>> {
        self.groups().get(&group).cloned()
    }

    /// Forgets `group`'s cache (the group stopped or was deleted).
    pub(crate) fn remove(&self, group: GroupId) {
        self.groups().remove(&group);
    }
}

#[cfg(test)]
mod tests {
    use openraft::entry::RaftEntry;
    use openraft::testing::log_id;

    use super::*;
    use crate::types::{AppData, TypeConfig};

    fn entry(term: u64, index: u64, bytes: usize) -> Entry {
        Entry::new_normal(
            log_id::<TypeConfig>(term, 1, index),
            AppData(vec![index as u8; bytes].into()),
        )
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn answers_only_ranges_it_holds_entirely() {
        let cache = LogCache::new(1 << 20);
        assert_eq!(indexes(cache.range(0, None)), None, "empty");
        cache.appended(&(5..=9).map(|i| entry(1, i, 10)).collect::<Vec<_>>());
        assert_eq!(indexes(cache.range(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(cache.range(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(
            indexes(cache.range(10, None)),
            Some(vec![]),
            "nothing after the last"
        );
        assert_eq!(indexes(cache.range(4, Some(7))), None, "4 is not held");
        assert_eq!(
            indexes(cache.range(8, Some(11))),
            None,
            "10 is not written yet"
        );

        assert!(cache.holds_from(5) && cache.holds_from(12) && !cache.holds_from(4));
        cache.purged(6);
        assert_eq!(indexes(cache.range(6, None)), None);
        assert_eq!(indexes(cache.range(7, None)), Some(vec![7, 8, 9]));
    }

    #[test]
    fn entries_that_do_not_follow_replace_the_tail_and_the_budget_drops_the_oldest() {
        let cache = LogCache::new(3 * (100 + ENTRY_OVERHEAD));
        cache.appended(&(1..=3).map(|i| entry(1, i, 100)).collect::<Vec<_>>());
        cache.appended(&[entry(2, 7, 100)]);
        assert_eq!(indexes(cache.range(7, None)), Some(vec![7]));
        assert_eq!(indexes(cache.range(1, None)), None);

        cache.appended(&(8..=10).map(|i| entry(2, i, 100)).collect::<Vec<_>>());
        assert_eq!(
            indexes(cache.range(7, None)),
            None,
            "7 went over the budget"
        );
        assert_eq!(indexes(cache.range(8, None)), Some(vec![8, 9, 10]));

        cache.clear();
        assert_eq!(indexes(cache.range(8, None)), None);

        let off = LogCache::new(0);
        off.appended(&[entry(1, 1, 1)]);
        assert_eq!(
            indexes(off.range(1, None)),
            None,
            "a zero budget caches nothing"
        );
    }
}
