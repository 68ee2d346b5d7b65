//! Rate-limited warnings for failures that repeat: a background loop that fails on every pass
//! (every 100 ms for some) would otherwise fill the log with one line, or, logged at debug,
//! fail where no operator sees it. [`WarnLimit`] lets the first failure of each kind through,
//! then at most one per kind every [`WarnLimit::every`], and the one it lets through says how
//! many of its kind it held back since the last. The time is an argument, so that the
//! decision is tested without waiting.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::{Duration, Instant};

/// How often a failure of one kind is logged at most, by default.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// A kind of failure: the task that failed (`"liveness"`), what it was doing
/// (`"replica repair pass"`), and why, as a short fixed word (an error code's name).
pub type Kind = (&'static str, &'static str, &'static str);

/// What to do with one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Log it; `held_back` failures of its kind were not logged since the last one that was.
    Log { held_back: u64 },
    /// Count it and say nothing.
    HoldBack,
}

/// For each kind of failure: when it was last logged and how many were held back since.
#[derive(Debug)]
pub struct WarnLimit {
    every: Duration,
    kinds: HashMap<Kind, (Instant, u64)>,
}

impl Default for WarnLimit {
    fn default() -> Self {
        Self::new(WARN_EVERY)
    }
}

impl WarnLimit {
    /// At most one warning per kind every `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            kinds: HashMap::new(),
        }
    }

    /// The interval between two warnings of one kind.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// Whether a failure of `kind` at `now` is logged.
    pub fn check(&mut self, kind: Kind, now: Instant) -> Verdict {
        match self.kinds.get_mut(&kind) {
            Some((last, held_back)) if now.saturating_duration_since(*last) < self.every => {
                *held_back += 1;
                Verdict::HoldBack
            }
            Some((last, held_back)) => {
                let verdict = Verdict::Log {
                    held_back: *held_back,
                };
                *last = now;
                *held_back = 0;
                verdict
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Verdict::Log { held_back: 0 }
            }
        }
    }

    /// Logs `error`, a failure of `kind` at `now`, at warn when [`WarnLimit::check`] lets it
    /// through, and at debug otherwise (so that it is still there for whoever turns debug on).
    pub fn warn(&mut self, kind: Kind, now: Instant, error: &dyn Display) {
        let (task, what, _) = kind;
        match self.check(kind, now) {
            Verdict::Log { held_back: 0 } => tracing::warn!(task, "{what} failed: {error}"),
            Verdict::Log { held_back } => tracing::warn!(
                task,
                held_back,
                "{what} failed: {error} ({held_back} more like it held back since the last report)"
            ),
            Verdict::HoldBack => tracing::debug!(task, "{what} failed: {error}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPAIR: Kind = ("liveness", "replica repair pass", "Unavailable");

    #[test]
    fn the_first_failure_of_a_kind_is_logged_then_one_per_interval() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut limit = WarnLimit::new(Duration::from_secs(30));
        assert_eq!(limit.check(REPAIR, at(0)), Verdict::Log { held_back: 0 });
        assert_eq!(limit.check(REPAIR, at(1)), Verdict::HoldBack);
        assert_eq!(limit.check(REPAIR, at(29)), Verdict::HoldBack);
        // The next one logged counts those held back, and starts a new interval.
        assert_eq!(limit.check(REPAIR, at(30)), Verdict::Log { held_back: 2 });
        assert_eq!(limit.check(REPAIR, at(31)), Verdict::HoldBack);
        assert_eq!(limit.check(REPAIR, at(100)), Verdict::Log { held_back: 1 });
        assert_eq!(limit.check(REPAIR, at(200)), Verdict::Log { held_back: 0 });
    }

    #[test]
    fn kinds_are_limited_apart() {
        let now = Instant::now();
        let mut limit = WarnLimit::default();
        assert_eq!(limit.every(), WARN_EVERY);
        assert_eq!(limit.check(REPAIR, now), Verdict::Log { held_back: 0 });
        // Another reason, another step, another task: each is a kind of its own.
        for other in [
            ("liveness", "replica repair pass", "NoLeader"),
            ("liveness", "controller voter change", "Unavailable"),
            ("balancer", "replica repair pass", "Unavailable"),
        ] {
            assert_eq!(limit.check(other, now), Verdict::Log { held_back: 0 });
        }
        assert_eq!(limit.check(REPAIR, now), Verdict::HoldBack);
    }

    #[test]
    fn a_clock_that_goes_back_holds_back_rather_than_logging() {
        let start = Instant::now() + Duration::from_secs(60);
        let mut limit = WarnLimit::new(Duration::from_secs(30));
        assert_eq!(limit.check(REPAIR, start), Verdict::Log { held_back: 0 });
        assert_eq!(
            limit.check(REPAIR, start - Duration::from_secs(10)),
            Verdict::HoldBack
        );
    }
}
