//! How far a group's log is synced on this node.
//!
//! openraft applies an entry once the group has committed it, which a majority's syncs decide:
//! this node's own sync of the entry may still be running (a follower that receives the entry
//! with a commit index already past it, or a leader whose followers synced first). The applied
//! log id written by the apply then reaches the disk with the next WAL sync, possibly before the
//! entry's data in its segment does; after a power cut the entry is cut off the log at open
//! while the state machine says it was applied, and openraft "cleans the hole" by counting the
//! entry as purged. For a group whose log is its data that is a record this replica claims to
//! hold and cannot serve. So the state machine of such a group applies only entries this record
//! shows synced, and has a sync made first when it does not ([`super::state_machine`]).

use std::sync::Mutex;

#[derive(Debug)]
struct State {
    /// Bumped by every truncation: an append begun before one may report entries that are gone.
    epoch: u64,
    /// Every entry below this index is synced.
    upto: u64,
}

/// The synced prefix of one group's log, shared by its log store and state machine. It may
/// show less than is synced (an append's sync that lands after a truncation reports nothing),
/// never more.
#[derive(Debug)]
pub(crate) struct Flushed(Mutex<State>);

impl Flushed {
    /// A log whose entries below `upto` are on disk (at open: every entry it holds).
    pub(crate) fn new(upto: u64) -> Self {
        Self(Mutex::new(State { epoch: 0, upto }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The epoch an append begins in; hand it to [`Flushed::synced`] when it is synced.
    pub(crate) fn epoch(&self) -> u64 {
        self.lock().epoch
    }

    /// An append of entries up to `last`, begun in `epoch`, is synced, and with it every
    /// earlier write (a sync covers everything written before it).
    pub(crate) fn synced(&self, epoch: u64, last: u64) {
        let mut st = self.lock();
        // After a truncation the append's entries from the cut on are gone; the next append's
        // sync reports the log again.
        if st.epoch == epoch {
            st.upto = st.upto.max(last.saturating_add(1));
        }
    }

    /// Entries from `from` on were removed or replaced (a truncation, or a snapshot install:
    /// the state machine never applies the entries a snapshot brings).
    pub(crate) fn truncated(&self, from: u64) {
        let mut st = self.lock();
        st.epoch += 1;
        st.upto = st.upto.min(from);
    }

    /// Whether every entry up to `index` is known to be synced.
    pub(crate) fn covers(&self, index: u64) -> bool {
        self.lock().upto > index
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_covers_its_append_and_everything_before() {
        let f = Flushed::new(5);
        assert!(f.covers(4) && !f.covers(5));
        let epoch = f.epoch();
        f.synced(epoch, 7);
        assert!(f.covers(7) && !f.covers(8));
        f.synced(epoch, 6);
        assert!(
            f.covers(7),
            "an older append's sync reported late lowers nothing"
        );
    }

    #[test]
    fn an_append_from_before_a_truncation_reports_nothing() {
        let f = Flushed::new(10);
        let before = f.epoch();
        f.truncated(6);
        assert!(!f.covers(6));
        // The old append (entries up to 12) is synced after the truncation: its entries from 6
        // on are not the log's any more.
        f.synced(before, 12);
        assert!(!f.covers(6));
        let after = f.epoch();
        f.synced(after, 8);
        assert!(f.covers(8));
    }
}
