//! Retrying a delivery step with backoff until its retry duration runs out.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::status::Stats;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The wait before retry number `attempt` (1-based): doubling from 200 ms up to 5 s, with
/// `jitter` (0..1) taking up to half of it off.
pub fn backoff(attempt: u32, jitter: f64) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
    let capped = base.min(MAX_BACKOFF);
    capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

/// Paces the retries of one step:
/// `loop { match step().await { Ok(v) => break v, Err(e) => if !retrier.wait(&e).await { give up } } }`.
/// Without a deadline it always retries: that is for error outputs and checkpoints, which
/// must not drop records; the daemon's shutdown timeout is what ends such a wait.
#[derive(Debug)]
pub struct Retrier<'a> {
    what: &'static str,
    deadline: Option<Instant>,
    stats: &'a Stats,
    attempt: u32,
}

impl<'a> Retrier<'a> {
    pub fn new(what: &'static str, deadline: Option<Instant>, stats: &'a Stats) -> Self {
        Self {
            what,
            deadline,
            stats,
            attempt: 0,
        }
    }

    /// After a failure: waits and returns true to retry, or false once the deadline would be
    /// passed.
    pub fn wait(&mut self, error: &dyn Display) -> impl Future<Output = bool> + Send + use<> {
        self.attempt += 1;
        let wait = backoff(self.attempt, jitter());
        let retry = self.deadline.is_none_or(|d| Instant::now() + wait < d);
        if !retry {
            tracing::warn!(
                what = self.what,
                attempts = self.attempt,
                "giving up after the retry duration: {error}"
            );
        } else {
            self.stats.retried();
            if self.attempt == 1 || self.attempt.is_power_of_two() {
                tracing::warn!(
                    what = self.what,
                    attempt = self.attempt,
                    "delivery step failed, retrying: {error}"
                );
            }
        }
        async move {
            if retry {
                tokio::time::sleep(wait).await;
            }
            retry
        }
    }
}

/// A fraction in 0..1 from the clock, enough to spread retries.
fn jitter() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1000) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(2, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(30, 0.0), MAX_BACKOFF);
        assert_eq!(backoff(1, 1.0), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_at_the_deadline() {
        let stats = Stats::default();
        let start = Instant::now();
        let deadline = start + Duration::from_secs(3);
        let mut retrier = Retrier::new("test", Some(deadline), &stats);
        let mut waits = 0;
        while retrier.wait(&"failure").await {
            waits += 1;
            assert!(waits < 100, "never gave up");
        }
        assert!(waits >= 3, "{waits}");
        assert!(Instant::now() <= deadline, "waited past the deadline");
        assert_eq!(stats.snapshot("x").retries, waits);
        let mut forever = Retrier::new("test", None, &stats);
        for _ in 0..50 {
            assert!(forever.wait(&"failure").await);
        }
    }
}
