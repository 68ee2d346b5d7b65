//! Counters of elections and of the gaps between a leader's heartbeats, as one node sees them.
//!
//! They tell an operator (and `riptide bench`) whether leaders change without a fault: an
//! election started because an election timeout ran out is counted apart from one a leader
//! asked for (a transfer) or one started after the leader's process was found gone, and the
//! gaps between heartbeats show how close a loaded node comes to its election timeout.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::types::GroupId;

/// Upper bounds (inclusive, in milliseconds) of the heartbeat gap buckets; a last bucket holds
/// the longer gaps.
pub const HEARTBEAT_GAP_BOUNDS_MS: [u64; 7] = [125, 150, 200, 300, 500, 1_000, 2_000];

/// A snapshot of [`TransportStats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElectionStats {
    /// Elections this node started because it heard no leader within its election timeout.
    pub timeout_elections: u64,
    /// Elections this node started because a leader handed its leadership over, or because the
    /// leader's process was found gone ([`ElectionStats::dead_leaders_noticed`]).
    pub transfer_elections: u64,
    /// Times this node found the leader of one of its groups gone (the leader's node refused a
    /// new connection after the old one broke) and had a successor campaign at once.
    pub dead_leaders_noticed: u64,
    /// Gaps between two heartbeats of the same leader arriving here, one count per bucket of
    /// [`HEARTBEAT_GAP_BOUNDS_MS`] plus one for longer gaps.
    pub heartbeat_gaps: Vec<u64>,
    /// The longest such gap, in milliseconds.
    pub longest_heartbeat_gap_ms: u64,
}

/// Where the last heartbeat of a group came from, and when.
#[derive(Debug, Clone, Copy)]
struct LastHeartbeat {
    from: u64,
    at: Instant,
}

/// The live counters, shared by the transport's two sides and the failover watcher.
#[derive(Debug, Default)]
pub(crate) struct TransportStats {
    timeout_elections: AtomicU64,
    transfer_elections: AtomicU64,
    dead_leaders_noticed: AtomicU64,
    /// The highest term this node campaigned in, per group: a campaign sends one vote request
    /// per peer, and is counted once.
    campaigns: Mutex<HashMap<GroupId, u64>>,
    last_heartbeat: Mutex<HashMap<GroupId, LastHeartbeat>>,
    gaps: [AtomicU64; HEARTBEAT_GAP_BOUNDS_MS.len() + 1],
    longest_gap_ms: AtomicU64,
}

impl TransportStats {
    /// Notes a vote request this node sends for `group` in `term`.
    pub(crate) fn vote_sent(&self, group: GroupId, term: u64, transfer: bool) {
        let mut campaigns = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        let last = campaigns.entry(group).or_insert(0);
        if term <= *last {
            return;
        }
        *last = term;
        let counter = if transfer {
            &self.transfer_elections
        } else {
            &self.timeout_elections
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes that a group's leader was found gone.
    pub(crate) fn dead_leader_noticed(&self) {
        self.dead_leaders_noticed.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a heartbeat (or the opening of a replication stream) of `group` from node `from`.
    pub(crate) fn heartbeat_received(&self, group: GroupId, from: u64, at: Instant) {
        let previous = {
            let mut last = self
                .last_heartbeat
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            last.insert(group, LastHeartbeat { from, at })
        };
        // A gap counts only between two messages of the same leader.
        let Some(previous) = previous.filter(|p| p.from == from) else {
            return;
        };
        let gap_ms = u64::try_from(at.saturating_duration_since(previous.at).as_millis())
            .unwrap_or(u64::MAX);
        let bucket = HEARTBEAT_GAP_BOUNDS_MS
            .iter()
            .position(|bound| gap_ms <= *bound)
            .unwrap_or(HEARTBEAT_GAP_BOUNDS_MS.len());
        self.gaps[bucket].fetch_add(1, Ordering::Relaxed);
        self.longest_gap_ms.fetch_max(gap_ms, Ordering::Relaxed);
    }

    /// Forgets a group's last heartbeat (the group left this node).
    pub(crate) fn forget_group(&self, group: GroupId) {
        self.last_heartbeat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
        self.campaigns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&group);
    }

    pub(crate) fn snapshot(&self) -> ElectionStats {
        ElectionStats {
            timeout_elections: self.timeout_elections.load(Ordering::Relaxed),
            transfer_elections: self.transfer_elections.load(Ordering::Relaxed),
            dead_leaders_noticed: self.dead_leaders_noticed.load(Ordering::Relaxed),
            heartbeat_gaps: self
                .gaps
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            longest_heartbeat_gap_ms: self.longest_gap_ms.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_campaign_counts_once_whatever_the_number_of_peers() {
        let stats = TransportStats::default();
        let g = GroupId(7);
        stats.vote_sent(g, 3, false);
        stats.vote_sent(g, 3, false);
        stats.vote_sent(g, 4, true);
        stats.vote_sent(g, 4, true);
        stats.vote_sent(GroupId(8), 1, false);
        let s = stats.snapshot();
        assert_eq!((s.timeout_elections, s.transfer_elections), (2, 1));
    }

    #[test]
    fn gaps_count_between_heartbeats_of_the_same_leader() {
        let stats = TransportStats::default();
        let g = GroupId(1);
        let t0 = Instant::now();
        stats.heartbeat_received(g, 1, t0);
        stats.heartbeat_received(g, 1, t0 + Duration::from_millis(100));
        stats.heartbeat_received(g, 1, t0 + Duration::from_millis(400));
        // Another leader: no gap across the change.
        stats.heartbeat_received(g, 2, t0 + Duration::from_millis(5_000));
        stats.heartbeat_received(g, 2, t0 + Duration::from_millis(7_500));
        let s = stats.snapshot();
        assert_eq!(s.heartbeat_gaps, vec![1, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(s.longest_heartbeat_gap_ms, 2_500);
    }
}
