//! Backoff between attempts: exponential growth, a cap, and jitter, bounded by a deadline.
//! Pure arithmetic; the sleeping happens in the callers.

use std::time::{Duration, Instant};

/// How long to wait between attempts and how long to keep trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the second attempt (before jitter).
    pub initial_backoff: Duration,
    /// Longest wait between two attempts (before jitter).
    pub max_backoff: Duration,
    /// Time after the first attempt's start beyond which no new attempt starts.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The wait before the attempt that follows attempt number `attempt` (1-based).
    ///
    /// `unit` is a random number in `[0, 1)`: the wait is drawn from the upper half of the
    /// exponential step (`initial * 2^(attempt-1)`, capped at `max_backoff`), so that clients
    /// that failed together spread out but never retry sooner than half the step.
    pub fn backoff(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = attempt.saturating_sub(1).min(30);
        let step = self
            .initial_backoff
            .saturating_mul(1u32 << exponent)
            .min(self.max_backoff);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        step / 2 + step.mul_f64(unit / 2.0)
    }

    /// The wait before the next attempt, or `None` when starting it would pass the deadline
    /// counted from `started`.
    pub fn next_delay(&self, started: Instant, now: Instant, attempt: u32) -> Option<Duration> {
        let delay = self.backoff(attempt, rand::random::<f64>());
        let deadline = started + self.deadline;
        (now + delay < deadline).then_some(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            deadline: Duration::from_secs(10),
        }
    }

    #[test]
    fn backoff_doubles_within_jitter_bounds_and_stops_at_the_cap() {
        let p = policy();
        for attempt in 1..=40 {
            let step = (Duration::from_millis(100) * 2u32.pow((attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            let low = p.backoff(attempt, 0.0);
            let high = p.backoff(attempt, 0.999_999);
            assert_eq!(low, step / 2, "attempt {attempt}");
            assert!(
                high <= step && high > step.mul_f64(0.99),
                "attempt {attempt}"
            );
        }
        assert_eq!(p.backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(p.backoff(3, 0.0), Duration::from_millis(200));
        assert_eq!(p.backoff(100, 1.0), Duration::from_secs(2));
    }

    #[test]
    fn bad_random_input_never_escapes_the_bounds() {
        let p = policy();
        assert_eq!(p.backoff(2, f64::NAN), Duration::from_millis(100));
        assert_eq!(p.backoff(2, -3.0), Duration::from_millis(100));
        assert_eq!(p.backoff(2, 7.0), Duration::from_millis(200));
    }

    #[test]
    fn no_attempt_starts_past_the_deadline() {
        let p = policy();
        let start = Instant::now();
        assert!(p.next_delay(start, start, 1).is_some());
        let late = start + Duration::from_millis(9_990);
        assert_eq!(p.next_delay(start, late, 1), None);
        let past = start + Duration::from_secs(11);
        assert_eq!(p.next_delay(start, past, 1), None);
    }
}
