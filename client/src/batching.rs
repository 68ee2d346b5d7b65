//! How records are grouped into `PutRecords` calls: by count and by bytes, and, in the
//! producer, by how long the oldest record has waited. Pure; the producer and
//! `Client::put_records` drive it.

use std::collections::VecDeque;
use std::ops::Range;
use std::time::{Duration, Instant};

use riptide_proto::v1::PutRecordsEntry;

/// Most records one `PutRecords` call may carry (the Kinesis limit, which Riptide keeps).
pub const MAX_RECORDS_PER_CALL: usize = 500;
/// Most bytes (data plus partition keys) one `PutRecords` call may carry.
pub const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;

/// The bytes a record counts for against a call's limit: its data plus its partition key.
pub(crate) fn record_size(entry: &PutRecordsEntry) -> usize {
    entry.data.len() + entry.partition_key.len()
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

impl BatchLimits {
    /// Limits clamped to what one call may carry, and to at least one record.
    pub fn new(max_records: usize, max_bytes: usize) -> Self {
        Self {
            max_records: max_records.clamp(1, MAX_RECORDS_PER_CALL),
            max_bytes: max_bytes.clamp(1, MAX_BYTES_PER_CALL),
        }
    }
}

/// Splits records of the given sizes, in order, into consecutive batches within `limits`.
/// A record larger than `max_bytes` travels alone (the node then refuses it, naming the
/// limit); no batch is empty.
pub(crate) fn split_batches(sizes: &[usize], limits: BatchLimits) -> Vec<Range<usize>> {
    let mut batches = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let count = i - start;
        if count > 0 && (count >= limits.max_records || bytes + size > limits.max_bytes) {
            batches.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += size;
    }
    if start < sizes.len() {
        batches.push(start..sizes.len());
    }
    batches
}

/// Records waiting for one shard, oldest first.
#[derive(Debug)]
pub(crate) struct ShardQueue<T> {
    items: VecDeque<(T, usize, Instant)>,
    bytes: usize,
}

impl<T> Default for ShardQueue<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T> ShardQueue<T> {
    pub fn push(&mut self, item: T, size: usize, now: Instant) {
        self.bytes += size;
        self.items.push_back((item, size, now));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// When the oldest record's linger ends, if any record waits.
    pub fn linger_deadline(&self, linger: Duration) -> Option<Instant> {
        self.items.front().map(|(_, _, at)| *at + linger)
    }

    /// Whether a batch should leave now: a full batch is waiting, the oldest record has
    /// lingered long enough, or a flush asks for everything.
    pub fn ready(&self, now: Instant, linger: Duration, limits: BatchLimits, flush: bool) -> bool {
        !self.is_empty()
            && (flush
                || self.items.len() >= limits.max_records
                || self.bytes >= limits.max_bytes
                || self.linger_deadline(linger).is_some_and(|d| d <= now))
    }

    /// Takes the next batch off the front: as many records as fit in `limits`, at least one.
    pub fn take_batch(&mut self, limits: BatchLimits) -> Vec<T> {
        let mut batch = Vec::with_capacity(self.items.len().min(limits.max_records));
        let mut bytes = 0;
        while let Some((_, size, _)) = self.items.front() {
            if !batch.is_empty()
                && (batch.len() >= limits.max_records || bytes + size > limits.max_bytes)
            {
                break;
            }
            let (item, size, _) = self.items.pop_front().expect("front exists");
            bytes += size;
            self.bytes -= size;
            batch.push(item);
        }
        batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_record_count() {
        let limits = BatchLimits::new(3, 1_000);
        assert_eq!(split_batches(&[1; 7], limits), vec![0..3, 3..6, 6..7]);
        assert_eq!(split_batches(&[], limits), Vec::<Range<usize>>::new());
    }

    #[test]
    fn batches_split_by_bytes_and_oversized_records_travel_alone() {
        let limits = BatchLimits::new(500, 10);
        assert_eq!(
            split_batches(&[4, 4, 4, 10, 11, 1, 9, 1], limits),
            vec![0..2, 2..3, 3..4, 4..5, 5..7, 7..8]
        );
    }

    #[test]
    fn limits_are_clamped_to_what_one_call_may_carry() {
        let l = BatchLimits::new(10_000, usize::MAX);
        assert_eq!(l.max_records, MAX_RECORDS_PER_CALL);
        assert_eq!(l.max_bytes, MAX_BYTES_PER_CALL);
        assert_eq!(
            BatchLimits::new(0, 0),
            BatchLimits {
                max_records: 1,
                max_bytes: 1
            }
        );
    }

    #[test]
    fn a_queue_is_ready_when_full_lingered_or_flushed() {
        let limits = BatchLimits::new(3, 100);
        let linger = Duration::from_millis(5);
        let t0 = Instant::now();
        let mut q = ShardQueue::default();
        assert!(
            !q.ready(t0, linger, limits, true),
            "an empty queue is never ready"
        );
        q.push('a', 10, t0);
        assert!(!q.ready(t0, linger, limits, false));
        assert!(q.ready(t0, linger, limits, true));
        assert!(q.ready(t0 + linger, linger, limits, false));
        assert_eq!(q.linger_deadline(linger), Some(t0 + linger));
        q.push('b', 10, t0);
        q.push('c', 10, t0);
        assert!(
            q.ready(t0, linger, limits, false),
            "three records fill a batch"
        );

        let mut q = ShardQueue::default();
        q.push('x', 60, t0);
        q.push('y', 60, t0);
        assert!(
            q.ready(t0, linger, limits, false),
            "120 bytes pass the 100-byte limit"
        );
    }

    #[test]
    fn take_batch_respects_count_and_bytes_and_keeps_order() {
        let limits = BatchLimits::new(2, 100);
        let t0 = Instant::now();
        let mut q = ShardQueue::default();
        for (i, size) in [10, 10, 10, 95, 200, 1].into_iter().enumerate() {
            q.push(i, size, t0);
        }
        assert_eq!(q.take_batch(limits), vec![0, 1]);
        assert_eq!(q.take_batch(limits), vec![2]);
        assert_eq!(q.take_batch(limits), vec![3]);
        assert_eq!(q.take_batch(limits), vec![4]);
        assert_eq!(q.len(), 1);
        assert_eq!(q.take_batch(limits), vec![5]);
        assert!(q.is_empty());
        assert!(q.take_batch(limits).is_empty());
    }
}
