//! Per-shard write quotas (`limits.shard_write_records_per_sec` and `..._bytes_per_sec`): a
//! token bucket per shard, refilled with the time of the node's clock. Pure: the time is an
//! argument, so the refill is tested without waiting.

/// A shard's write quota; a dimension of 0 is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub records_per_sec: u32,
    pub bytes_per_sec: u64,
}

impl Quota {
    /// Whether the quota limits anything.
    pub fn is_on(self) -> bool {
        self.records_per_sec > 0 || self.bytes_per_sec > 0
    }
}

/// The quota a write went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    #[error("write rate over {0} records/s (limits.shard_write_records_per_sec)")]
    Records(u32),
    #[error("write rate over {0} bytes/s (limits.shard_write_bytes_per_sec)")]
    Bytes(u64),
}

/// What one shard may still write, as of `at_ms`: at most a second's worth of its quota.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    records: f64,
    bytes: f64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub fn full(quota: Quota, now_ms: u64) -> Self {
        Self {
            records: f64::from(quota.records_per_sec),
            bytes: quota.bytes_per_sec as f64,
            at_ms: now_ms,
        }
    }

    /// Refills the bucket for the time since it was last charged (a clock that went back
    /// refills nothing), then takes `records` and `bytes` from it; takes nothing when either
    /// is short.
    pub fn take(
        &mut self,
        quota: Quota,
        now_ms: u64,
        records: u64,
        bytes: u64,
    ) -> Result<(), Exceeded> {
        let (rps, bps) = (f64::from(quota.records_per_sec), quota.bytes_per_sec as f64);
        let dt = now_ms.saturating_sub(self.at_ms) as f64 / 1000.0;
        self.at_ms = self.at_ms.max(now_ms);
        self.records = (self.records + dt * rps).min(rps);
        self.bytes = (self.bytes + dt * bps).min(bps);
        let (n, size) = (records as f64, bytes as f64);
        if quota.records_per_sec > 0 && self.records < n {
            return Err(Exceeded::Records(quota.records_per_sec));
        }
        if quota.bytes_per_sec > 0 && self.bytes < size {
            return Err(Exceeded::Bytes(quota.bytes_per_sec));
        }
        self.records -= n;
        self.bytes -= size;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Q: Quota = Quota {
        records_per_sec: 100,
        bytes_per_sec: 1000,
    };

    #[test]
    fn a_full_bucket_takes_a_seconds_worth_then_refuses() {
        let mut b = Bucket::full(Q, 0);
        assert_eq!(b.take(Q, 0, 80, 10), Ok(()));
        assert_eq!(b.take(Q, 0, 80, 10), Err(Exceeded::Records(100)));
        // A refused write takes nothing: the 20 records left still fit.
        assert_eq!(b.take(Q, 0, 20, 10), Ok(()));
        assert_eq!(b.take(Q, 0, 1, 1), Err(Exceeded::Records(100)));
    }

    #[test]
    fn the_bucket_refills_with_the_clock_up_to_one_second() {
        let mut b = Bucket::full(Q, 1_000);
        b.take(Q, 1_000, 100, 0).expect("full");
        // Half a second later half the quota is back.
        assert_eq!(b.take(Q, 1_500, 51, 0), Err(Exceeded::Records(100)));
        assert_eq!(b.take(Q, 1_500, 50, 0), Ok(()));
        // Ten seconds of silence refill one second's worth, no more.
        assert_eq!(b.take(Q, 11_500, 101, 0), Err(Exceeded::Records(100)));
        assert_eq!(b.take(Q, 11_500, 100, 0), Ok(()));
    }

    #[test]
    fn bytes_are_limited_apart_and_a_clock_going_back_refills_nothing() {
        let mut b = Bucket::full(Q, 5_000);
        assert_eq!(b.take(Q, 5_000, 1, 900), Ok(()));
        assert_eq!(b.take(Q, 4_000, 1, 200), Err(Exceeded::Bytes(1000)));
        assert_eq!(b.take(Q, 5_100, 1, 200), Ok(()));
    }

    #[test]
    fn a_dimension_of_zero_is_not_limited() {
        let records_only = Quota {
            records_per_sec: 10,
            bytes_per_sec: 0,
        };
        let mut b = Bucket::full(records_only, 0);
        assert_eq!(b.take(records_only, 0, 10, u64::MAX / 2), Ok(()));
        assert!(records_only.is_on());
        assert!(
            !Quota {
                records_per_sec: 0,
                bytes_per_sec: 0
            }
            .is_on()
        );
    }
}
