//! Wall-clock time for arrival timestamps, iterator expiry and retention, behind a trait so
//! that tests can move time forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// The system clock plus an offset that tests advance, shared by every node of a test cluster.
/// A test that must not see time pass on its own stops it ([`OffsetClock::stop`]); until it
/// runs again ([`OffsetClock::run`]), only [`OffsetClock::advance`] moves it.
#[derive(Debug, Default, Clone)]
pub struct OffsetClock {
    offset_ms: Arc<AtomicU64>,
    /// The system clock's reading when the clock was stopped; 0 while it runs.
    stopped_at_ms: Arc<AtomicU64>,
}

impl OffsetClock {
    pub fn advance(&self, ms: u64) {
        self.offset_ms.fetch_add(ms, Ordering::SeqCst);
    }

    /// Stops the clock at its current reading (stopping it again changes nothing).
    pub fn stop(&self) {
        let now = SystemClock.now_ms().max(1);
        let _ = self
            .stopped_at_ms
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
    }

    /// Lets a stopped clock run again: it reads the system clock plus the offset once more, a
    /// jump forward by the time it stood still, never back.
    pub fn run(&self) {
        self.stopped_at_ms.store(0, Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> u64 {
        let base = match self.stopped_at_ms.load(Ordering::SeqCst) {
            0 => SystemClock.now_ms(),
            at => at,
        };
        base + self.offset_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_clock_moves_only_when_advanced() {
        let clock = OffsetClock::default();
        clock.advance(5_000);
        let before = SystemClock.now_ms();
        assert!(clock.now_ms() >= before + 5_000);
        clock.stop();
        let stopped = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(clock.now_ms(), stopped);
        clock.stop();
        assert_eq!(clock.now_ms(), stopped);
        clock.advance(1_000);
        assert_eq!(clock.now_ms(), stopped + 1_000);
        clock.run();
        assert!(clock.now_ms() >= stopped + 1_000);
        assert!(clock.now_ms() >= SystemClock.now_ms() + 6_000);
    }
}
