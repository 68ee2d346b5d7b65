//! What a run observed: latency histograms (HDR, microseconds), a per-second timeline, and the
//! ledger of which records were acknowledged, seen by the live consumers and read back.
//!
//! Every latency is measured from the record's *intended* send time. In closed-loop runs that
//! is the moment it was sent; in open-loop runs it is the moment the schedule said to send it,
//! so a stalled system that makes the producer fall behind its schedule is charged for the
//! wait (the correction for coordinated omission).

use std::sync::Mutex;
use std::time::Instant;

use hdrhistogram::Histogram;

use super::payload;
use super::report::{Errors, Loss, Percentiles, Rate, TimelinePoint};

/// Nanoseconds since the run's base instant, shared by producers and consumers.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    base: Instant,
}

impl Clock {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
        }
    }

    pub fn now_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the base.
    pub fn at(&self, nanos: u64) -> Instant {
        self.base + std::time::Duration::from_nanos(nanos)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The measured part of a run: after the warm-up, until the producers stop.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub start: u64,
    pub end: u64,
}

impl Window {
    fn contains(&self, nanos: u64) -> bool {
        nanos >= self.start && nanos < self.end
    }

    pub fn secs(&self) -> f64 {
        self.end.saturating_sub(self.start) as f64 / 1e9
    }
}

/// Why a record was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The system refused it for lack of capacity, after any retries.
    Throttled,
    /// Any other error, after any retries.
    Error,
    /// No answer before the drain deadline.
    Unanswered,
}

/// A growable bitset, one bit per record of one producer.
#[derive(Debug, Default, Clone)]
struct Bits {
    words: Vec<u64>,
}

impl Bits {
    /// Sets bit `i`; true if it was clear.
    fn set(&mut self, i: u64) -> bool {
        let word = (i / 64) as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let mask = 1u64 << (i % 64);
        let was = self.words[word] & mask != 0;
        self.words[word] |= mask;
        !was
    }

    fn word(&self, i: usize) -> u64 {
        self.words.get(i).copied().unwrap_or(0)
    }

    fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Bits set here and clear in `other`.
    fn count_missing_from(&self, other: &Bits) -> u64 {
        self.words
            .iter()
            .enumerate()
            .map(|(i, w)| u64::from((w & !other.word(i)).count_ones()))
            .sum()
    }
}

/// Per-producer ledgers: bit `seq` of producer `p`.
#[derive(Debug, Default)]
struct Ledger {
    producers: Vec<Bits>,
}

impl Ledger {
    fn set(&mut self, producer: u32, seq: u64) -> bool {
        let p = producer as usize;
        if p >= self.producers.len() {
            self.producers.resize_with(p + 1, Bits::default);
        }
        self.producers[p].set(seq)
    }

    fn count(&self) -> u64 {
        self.producers.iter().map(Bits::count).sum()
    }

    /// Records in this ledger and not in `other`.
    fn missing_from(&self, other: &Ledger) -> u64 {
        let empty = Bits::default();
        self.producers
            .iter()
            .enumerate()
            .map(|(p, bits)| {
                let theirs = other.producers.get(p).unwrap_or(&empty);
                bits.count_missing_from(theirs)
            })
            .sum()
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to one hour at three significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

#[derive(Debug)]
struct IntervalAcc {
    start: u64,
    acked: u64,
    acked_bytes: u64,
    consumed: u64,
    put_ack: Histogram<u64>,
}

#[derive(Debug)]
struct State {
    put_ack: Histogram<u64>,
    end_to_end: Histogram<u64>,
    interval: IntervalAcc,
    timeline: Vec<TimelinePoint>,
    window_acked: u64,
    window_acked_bytes: u64,
    window_consumed: u64,
    window_consumed_bytes: u64,
    errors: Errors,
    acked: Ledger,
    live: Ledger,
    live_duplicates: u64,
    read_back: Ledger,
    read_back_records: u64,
    read_back_bytes: u64,
    read_back_duplicates: u64,
}

/// Everything a run records; shared by its producer and consumer tasks.
#[derive(Debug)]
pub struct Recorder {
    pub clock: Clock,
    pub run: u64,
    pub window: Window,
    state: Mutex<State>,
}

/// A progress line's figures, for the second that just ended.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub t_secs: f64,
    pub acked_per_sec: f64,
    pub acked_mb_per_sec: f64,
    pub consumed_per_sec: f64,
    pub put_ack_p99_ms: Option<f64>,
    pub failures: u64,
    pub in_warmup: bool,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1_000.0
}

impl Recorder {
    pub fn new(clock: Clock, run: u64, window: Window) -> Self {
        let now = clock.now_nanos();
        Self {
            clock,
            run,
            window,
            state: Mutex::new(State {
                put_ack: histogram(),
                end_to_end: histogram(),
                interval: IntervalAcc {
                    start: now,
                    acked: 0,
                    acked_bytes: 0,
                    consumed: 0,
                    put_ack: histogram(),
                },
                timeline: Vec::new(),
                window_acked: 0,
                window_acked_bytes: 0,
                window_consumed: 0,
                window_consumed_bytes: 0,
                errors: Errors::default(),
                acked: Ledger::default(),
                live: Ledger::default(),
                live_duplicates: 0,
                read_back: Ledger::default(),
                read_back_records: 0,
                read_back_bytes: 0,
                read_back_duplicates: 0,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves only counters half updated: keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A record was acknowledged after `attempts` sends.
    pub fn acked(&self, producer: u32, seq: u64, bytes: usize, intended: u64, attempts: u32) {
        self.acked_at(
            self.clock.now_nanos(),
            producer,
            seq,
            bytes,
            intended,
            attempts,
        );
    }

    /// [`Recorder::acked`] at `now` (nanoseconds on the run's clock).
    fn acked_at(
        &self,
        now: u64,
        producer: u32,
        seq: u64,
        bytes: usize,
        intended: u64,
        attempts: u32,
    ) {
        let micros = now.saturating_sub(intended) / 1_000;
        let bytes = bytes as u64;
        let mut s = self.state();
        s.acked.set(producer, seq);
        if attempts > 1 {
            s.errors.retries += 1;
        }
        if self.window.contains(intended) {
            s.put_ack.saturating_record(micros.max(1));
        }
        if self.window.contains(now) {
            s.window_acked += 1;
            s.window_acked_bytes += bytes;
        }
        s.interval.acked += 1;
        s.interval.acked_bytes += bytes;
        s.interval.put_ack.saturating_record(micros.max(1));
    }

    /// A record failed for good.
    pub fn failed(&self, failure: Failure, count: u64) {
        let mut s = self.state();
        match failure {
            Failure::Throttled => s.errors.throttles += count,
            Failure::Error => s.errors.errors += count,
            Failure::Unanswered => s.errors.unanswered += count,
        }
    }

    /// A consumer call failed (it is retried by the consumer).
    pub fn consumer_error(&self) {
        self.state().errors.consumer_errors += 1;
    }

    /// A live consumer received `data`; false when it is not a record of this run.
    pub fn consumed(&self, data: &[u8]) -> bool {
        let Some(h) = payload::decode(data).filter(|h| h.run == self.run) else {
            return false;
        };
        let now = self.clock.now_nanos();
        let mut s = self.state();
        if !s.live.set(h.producer, h.seq) {
            s.live_duplicates += 1;
            return true;
        }
        if self.window.contains(h.intended_nanos) {
            let micros = now.saturating_sub(h.intended_nanos) / 1_000;
            s.end_to_end.saturating_record(micros.max(1));
        }
        if self.window.contains(now) {
            s.window_consumed += 1;
            s.window_consumed_bytes += data.len() as u64;
        }
        s.interval.consumed += 1;
        true
    }

    /// The read-back pass read `data`; false when it is not a record of this run.
    pub fn read_back(&self, data: &[u8]) -> bool {
        let Some(h) = payload::decode(data).filter(|h| h.run == self.run) else {
            return false;
        };
        let mut s = self.state();
        if s.read_back.set(h.producer, h.seq) {
            s.read_back_records += 1;
            s.read_back_bytes += data.len() as u64;
        } else {
            s.read_back_duplicates += 1;
        }
        true
    }

    /// Acknowledged records the live consumers have not seen yet.
    pub fn live_missing(&self) -> u64 {
        let s = self.state();
        s.acked.missing_from(&s.live)
    }

    /// Records acknowledged so far.
    pub fn acked_count(&self) -> u64 {
        self.state().acked.count()
    }

    /// Distinct records of this run read back so far.
    pub fn read_back_count(&self) -> u64 {
        self.state().read_back_records
    }

    /// Closes the current one-second interval: adds it to the timeline and returns it.
    pub fn tick(&self) -> Progress {
        let now = self.clock.now_nanos();
        let mut s = self.state();
        let secs = (now.saturating_sub(s.interval.start) as f64 / 1e9).max(1e-3);
        let failures = s.errors.errors + s.errors.throttles + s.errors.unanswered;
        let p99 = (!s.interval.put_ack.is_empty())
            .then(|| ms(s.interval.put_ack.value_at_quantile(0.99)));
        let point = TimelinePoint {
            t_secs: now as f64 / 1e9,
            acked_per_sec: s.interval.acked as f64 / secs,
            acked_mb_per_sec: s.interval.acked_bytes as f64 / secs / 1e6,
            consumed_per_sec: s.interval.consumed as f64 / secs,
            put_ack_p99_ms: p99,
        };
        s.timeline.push(point);
        s.interval.start = now;
        s.interval.acked = 0;
        s.interval.acked_bytes = 0;
        s.interval.consumed = 0;
        s.interval.put_ack.reset();
        Progress {
            t_secs: point.t_secs,
            acked_per_sec: point.acked_per_sec,
            acked_mb_per_sec: point.acked_mb_per_sec,
            consumed_per_sec: point.consumed_per_sec,
            put_ack_p99_ms: p99,
            failures,
            in_warmup: now < self.window.start,
        }
    }

    /// The measures so far. `backlog_secs` is how long the read-back pass took.
    pub fn finish(&self, backlog_secs: Option<f64>) -> Measures {
        let s = self.state();
        let secs = self.window.secs();
        let acknowledged = s.acked.count();
        let lost = s.acked.missing_from(&s.read_back);
        let read_not_acknowledged = s.read_back.missing_from(&s.acked);
        Measures {
            production: Rate::new(s.window_acked, s.window_acked_bytes, secs),
            processing_live: Rate::new(s.window_consumed, s.window_consumed_bytes, secs),
            processing_backlog: backlog_secs
                .map(|t| Rate::new(s.read_back_records, s.read_back_bytes, t)),
            put_ack_latency_ms: Percentiles::of(&s.put_ack),
            end_to_end_latency_ms: Percentiles::of(&s.end_to_end),
            loss: Loss {
                acknowledged,
                read_back: acknowledged - lost,
                lost,
                loss_rate: if acknowledged == 0 {
                    0.0
                } else {
                    lost as f64 / acknowledged as f64
                },
                read_not_acknowledged,
                duplicates_read_back: s.read_back_duplicates,
                live_missing: s.acked.missing_from(&s.live),
                live_duplicates: s.live_duplicates,
            },
            errors: s.errors,
            timeline: s.timeline.clone(),
        }
    }
}

/// The recorder's part of a report.
#[derive(Debug, Clone)]
pub struct Measures {
    pub production: Rate,
    pub processing_live: Rate,
    pub processing_backlog: Option<Rate>,
    pub put_ack_latency_ms: Percentiles,
    pub end_to_end_latency_ms: Percentiles,
    pub loss: Loss,
    pub errors: Errors,
    pub timeline: Vec<TimelinePoint>,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::payload::{Filler, Header};
    use super::*;

    fn record(filler: &Filler, run: u64, producer: u32, seq: u64) -> bytes::Bytes {
        filler.record(
            &mut bytes::BytesMut::new(),
            Header {
                run,
                producer,
                seq,
                intended_nanos: 0,
            },
            64,
        )
    }

    #[test]
    fn loss_counts_acknowledged_records_that_were_not_read_back() {
        let filler = Filler::new(3);
        let rec = Recorder::new(Clock::new(), 42, Window { start: 0, end: 1 });
        for seq in 0..100 {
            rec.acked(0, seq, 64, 0, 1);
        }
        rec.acked(1, 0, 64, 0, 2);
        // Read back everything but seq 7 of producer 0; seq 3 twice; one record that was
        // never acknowledged; one record of another run.
        for seq in (0..100).filter(|s| *s != 7) {
            assert!(rec.read_back(&record(&filler, 42, 0, seq)));
        }
        assert!(rec.read_back(&record(&filler, 42, 0, 3)));
        assert!(rec.read_back(&record(&filler, 42, 1, 0)));
        assert!(rec.read_back(&record(&filler, 42, 2, 0)));
        assert!(!rec.read_back(&record(&filler, 41, 0, 7)));
        let m = rec.finish(Some(1.0));
        assert_eq!(m.loss.acknowledged, 101);
        assert_eq!(m.loss.lost, 1);
        assert_eq!(m.loss.read_back, 100);
        assert_eq!(m.loss.duplicates_read_back, 1);
        assert_eq!(m.loss.read_not_acknowledged, 1);
        assert!((m.loss.loss_rate - 1.0 / 101.0).abs() < 1e-12);
        assert_eq!(m.errors.retries, 1);
        assert_eq!(m.processing_backlog.map(|r| r.records), Some(101));
    }

    #[test]
    fn live_missing_falls_as_consumers_see_acknowledged_records() {
        let filler = Filler::new(3);
        let rec = Recorder::new(Clock::new(), 9, Window { start: 0, end: 1 });
        for seq in 0..10 {
            rec.acked(0, seq, 64, 0, 1);
        }
        assert_eq!(rec.live_missing(), 10);
        for seq in 0..9 {
            assert!(rec.consumed(&record(&filler, 9, 0, seq)));
        }
        assert_eq!(rec.live_missing(), 1);
        assert!(rec.consumed(&record(&filler, 9, 0, 9)));
        assert_eq!(rec.live_missing(), 0);
    }

    #[test]
    fn latency_counts_from_the_intended_send_time() {
        let clock = Clock::new();
        let rec = Recorder::new(
            clock,
            1,
            Window {
                start: 0,
                end: u64::MAX,
            },
        );
        // Meant to be sent at 5 ms and acknowledged at 25 ms: 20 ms, however late it was sent.
        rec.acked_at(25_000_000, 0, 0, 10, 5_000_000, 1);
        let m = rec.finish(None);
        assert_eq!(m.put_ack_latency_ms.count, 1);
        assert!(
            (19.9..=20.1).contains(&m.put_ack_latency_ms.max),
            "{:?}",
            m.put_ack_latency_ms
        );
    }
}
