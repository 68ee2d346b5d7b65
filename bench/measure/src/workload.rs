//! The producer loop both systems are driven by, the progress line, and the wait for live
//! consumers to catch up.
//!
//! Closed loop: each producer keeps `window` records unacknowledged and sends the next as soon
//! as one is answered, so it measures the most the system takes at that concurrency. Open
//! loop: each producer sends on a fixed schedule (its share of the offered rate) whatever the
//! system answers, and every latency counts from the scheduled time, so back-pressure cannot
//! hide latency.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::FutureExt;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::payload::{Filler, HEADER_BYTES, Header};
use super::recorder::{Failure, Recorder};

/// How a send ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged (durably, as the system defines it) after this many sends.
    Acked { attempts: u32 },
    /// Refused for lack of capacity, after retries.
    Throttled,
    /// Failed for good otherwise.
    Failed,
}

/// A send in flight.
pub type Ack = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// One producer's connection to the system under test.
pub trait Publisher: Send + 'static {
    /// Sends record `seq`. The send must be under way (queued in the client) when this
    /// returns. Its answer comes either from the returned future (clients that answer each
    /// record with a future of its own) or, when this returns `None`, through
    /// [`Publisher::poll_answers`] (clients that answer a batch of records at a time).
    fn publish(&mut self, seq: u64, key: &str, data: Bytes) -> Option<Ack>;

    /// Appends the answers that are there to `out` as (seq, outcome): `Ready` when it appended
    /// any, `Pending` (with the waker registered) when none. Only publishers whose `publish`
    /// returns `None` answer here.
    fn poll_answers(&mut self, _cx: &mut Context<'_>, _out: &mut Vec<(u64, Outcome)>) -> Poll<()> {
        Poll::Pending
    }
}

impl<P: Publisher + ?Sized> Publisher for Box<P> {
    fn publish(&mut self, seq: u64, key: &str, data: Bytes) -> Option<Ack> {
        (**self).publish(seq, key, data)
    }

    fn poll_answers(&mut self, cx: &mut Context<'_>, out: &mut Vec<(u64, Outcome)>) -> Poll<()> {
        (**self).poll_answers(cx, out)
    }
}

/// How hard producers push.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// Each producer keeps `window` records unacknowledged.
    Closed { window: usize },
    /// Each producer sends `records_per_sec` on a schedule, with at most `max_outstanding`
    /// unacknowledged (beyond that it waits, and the wait counts in the latency).
    Open {
        records_per_sec: f64,
        max_outstanding: usize,
    },
}

/// One producer's part of the run.
#[derive(Debug, Clone)]
pub struct ProducerPlan {
    pub producer: u32,
    pub record_bytes: usize,
    pub keys: Arc<[String]>,
    pub load: Load,
    /// When the producer starts and stops sending, in the recorder's clock.
    pub start_at: u64,
    pub stop_at: u64,
    /// How long after `stop_at` unanswered sends are waited for.
    pub drain: Duration,
}

/// A record's answer from a publisher that answers each record with a future.
type Answer = Pin<Box<dyn Future<Output = (u64, Outcome)> + Send>>;

/// A producer's records sent and not answered yet.
struct InFlight<P> {
    publisher: P,
    /// Answers of publishers that answer with a future per record.
    futures: FuturesUnordered<Answer>,
    /// When each record in flight was meant to be sent, by seq.
    intended: HashMap<u64, u64>,
    /// Answers taken in and not yet recorded.
    answers: Vec<(u64, Outcome)>,
}

impl<P: Publisher> InFlight<P> {
    fn len(&self) -> usize {
        self.intended.len()
    }

    fn send(&mut self, seq: u64, intended: u64, key: &str, data: Bytes) {
        self.intended.insert(seq, intended);
        if let Some(ack) = self.publisher.publish(seq, key, data) {
            self.futures.push(Box::pin(ack.map(move |o| (seq, o))));
        }
    }

    /// Takes in every answer that is there: `Ready` when there was any.
    fn poll_answers(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        while let Poll::Ready(Some(done)) = self.futures.poll_next_unpin(cx) {
            self.answers.push(done);
        }
        let _ = self.publisher.poll_answers(cx, &mut self.answers);
        if self.answers.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    }

    /// Waits for at least one answer.
    async fn answered(&mut self) {
        futures::future::poll_fn(|cx| self.poll_answers(cx)).await
    }

    /// Records the answers taken in.
    fn record(&mut self, recorder: &Recorder, producer: u32, bytes: usize) {
        for (seq, outcome) in self.answers.drain(..) {
            // A record answered twice (a publisher's fault) counts once.
            let Some(intended) = self.intended.remove(&seq) else {
                continue;
            };
            match outcome {
                Outcome::Acked { attempts } => {
                    recorder.acked(producer, seq, bytes, intended, attempts)
                }
                Outcome::Throttled => recorder.failed(Failure::Throttled, 1),
                Outcome::Failed => recorder.failed(Failure::Error, 1),
            }
        }
    }
}

/// Runs one producer per publisher, numbered from 0, each on `plan` with its own number, and
/// waits until every one has finished its plan and the drain after it.
pub async fn run_producers<P: Publisher>(
    publishers: Vec<P>,
    plan: ProducerPlan,
    recorder: &Arc<Recorder>,
    filler: &Arc<Filler>,
) -> Result<(), tokio::task::JoinError> {
    let tasks: Vec<_> = publishers
        .into_iter()
        .zip(0u32..)
        .map(|(publisher, producer)| {
            let plan = ProducerPlan {
                producer,
                ..plan.clone()
            };
            tokio::spawn(run_producer(
                publisher,
                plan,
                Arc::clone(recorder),
                Arc::clone(filler),
            ))
        })
        .collect();
    for t in tasks {
        t.await?;
    }
    Ok(())
}

/// Runs one producer to its plan's end and the drain after it.
pub async fn run_producer<P: Publisher>(
    publisher: P,
    plan: ProducerPlan,
    recorder: Arc<Recorder>,
    filler: Arc<Filler>,
) {
    let clock = recorder.clock;
    let mut flight = InFlight {
        publisher,
        futures: FuturesUnordered::new(),
        intended: HashMap::new(),
        answers: Vec::new(),
    };
    let stop = clock.at(plan.stop_at);
    let bytes = plan.record_bytes.max(HEADER_BYTES);
    let mut seq = 0u64;
    let mut slab = BytesMut::new();
    let key_offset = plan.producer as usize * 7_919;
    let mut send = |flight: &mut InFlight<P>, seq: &mut u64, intended: u64| {
        let header = Header {
            run: recorder.run,
            producer: plan.producer,
            seq: *seq,
            intended_nanos: intended,
        };
        let data = filler.record(&mut slab, header, plan.record_bytes);
        let key = &plan.keys[(*seq as usize + key_offset) % plan.keys.len()];
        flight.send(*seq, intended, key, data);
        *seq += 1;
    };
    tokio::time::sleep_until(clock.at(plan.start_at).into()).await;
    loop {
        // Take every answer that is already there, so that latencies are recorded on time.
        if futures::future::poll_fn(|cx| flight.poll_answers(cx))
            .now_or_never()
            .is_some()
        {
            flight.record(&recorder, plan.producer, bytes);
        }
        let now = clock.now_nanos();
        if now >= plan.stop_at {
            break;
        }
        match plan.load {
            Load::Closed { window } => {
                if flight.len() < window.max(1) {
                    send(&mut flight, &mut seq, now);
                    continue;
                }
                tokio::select! {
                    () = flight.answered() => {}
                    _ = tokio::time::sleep_until(stop.into()) => {}
                }
            }
            Load::Open {
                records_per_sec,
                max_outstanding,
            } => {
                let due = plan.start_at + (seq as f64 * 1e9 / records_per_sec.max(1e-3)) as u64;
                let room = flight.len() < max_outstanding.max(1);
                if due <= now && room {
                    send(&mut flight, &mut seq, due);
                    continue;
                }
                let wake = if room {
                    due.min(plan.stop_at)
                } else {
                    plan.stop_at
                };
                tokio::select! {
                    () = flight.answered(), if flight.len() > 0 => {}
                    _ = tokio::time::sleep_until(clock.at(wake).into()) => {}
                }
            }
        }
        flight.record(&recorder, plan.producer, bytes);
    }
    let deadline = Instant::now() + plan.drain;
    while flight.len() > 0 {
        match tokio::time::timeout_at(deadline.into(), flight.answered()).await {
            Ok(()) => flight.record(&recorder, plan.producer, bytes),
            Err(_) => {
                recorder.failed(Failure::Unanswered, flight.len() as u64);
                break;
            }
        }
    }
}

/// Prints a progress line every second (to stderr, unless `quiet`) and adds each second to the
/// recorder's timeline, until `stop` changes.
pub fn spawn_progress(
    recorder: Arc<Recorder>,
    quiet: bool,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => break,
            }
            let p = recorder.tick();
            if !quiet {
                eprint!(
                    "\r{:>5.0} s {} acknowledged {:>9.0} records/s {:>8.2} MB/s  consumed {:>9.0} records/s  p99 put-ack {:>8}  failed {}   ",
                    p.t_secs,
                    if p.in_warmup {
                        "(warm-up)"
                    } else {
                        "         "
                    },
                    p.acked_per_sec,
                    p.acked_mb_per_sec,
                    p.consumed_per_sec,
                    p.put_ack_p99_ms
                        .map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms")),
                    p.failures
                );
            }
        }
        if !quiet {
            eprintln!();
        }
    })
}

/// Waits until the live consumers have seen every acknowledged record, or `timeout` passed.
/// Returns how many they still miss.
pub async fn wait_live_caught_up(recorder: &Recorder, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let missing = recorder.live_missing();
        if missing == 0 || Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The partition keys `k0`..`k{n-1}`.
pub fn partition_keys(n: u32) -> Arc<[String]> {
    (0..n.max(1)).map(|i| format!("k{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::recorder::{Clock, Window};
    use super::*;

    /// Acknowledges each record after `delay`, counting what it was sent.
    struct Delayed {
        delay: Duration,
        sent: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Publisher for Delayed {
        fn publish(&mut self, _seq: u64, _key: &str, _data: Bytes) -> Option<Ack> {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let delay = self.delay;
            Some(Box::pin(async move {
                tokio::time::sleep(delay).await;
                Outcome::Acked { attempts: 1 }
            }))
        }
    }

    /// Answers records in batches of up to `batch` through `poll_answers`, each batch `delay`
    /// after its first record; every `fail_every`th record fails.
    struct Batched {
        delay: Duration,
        batch: usize,
        fail_every: u64,
        waiting: Vec<u64>,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        sent: Arc<std::sync::atomic::AtomicU64>,
    }

    impl Publisher for Batched {
        fn publish(&mut self, seq: u64, _key: &str, _data: Bytes) -> Option<Ack> {
            self.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.waiting.is_empty() {
                self.timer = Some(Box::pin(tokio::time::sleep(self.delay)));
            }
            self.waiting.push(seq);
            None
        }

        fn poll_answers(
            &mut self,
            cx: &mut Context<'_>,
            out: &mut Vec<(u64, Outcome)>,
        ) -> Poll<()> {
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let n = self.batch.min(self.waiting.len());
            for seq in self.waiting.drain(..n) {
                let outcome = if (seq + 1) % self.fail_every == 0 {
                    Outcome::Failed
                } else {
                    Outcome::Acked { attempts: 1 }
                };
                out.push((seq, outcome));
            }
            self.timer =
                (!self.waiting.is_empty()).then(|| Box::pin(tokio::time::sleep(self.delay)));
            Poll::Ready(())
        }
    }

    #[tokio::test]
    async fn answers_in_batches_are_recorded_like_answers_by_future() {
        let rec = recorder();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publisher = Batched {
            delay: Duration::from_millis(10),
            batch: 7,
            fail_every: 10,
            waiting: Vec::new(),
            timer: None,
            sent: Arc::clone(&sent),
        };
        run_producer(
            publisher,
            plan(Load::Closed { window: 20 }, 200),
            Arc::clone(&rec),
            Arc::new(Filler::new(1)),
        )
        .await;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        // 20 in flight, 7 answered every 10 ms, 200 ms: well over one window of sends.
        assert!(sent > 40, "{sent}");
        // Every record was answered: a tenth failed, the rest were acknowledged.
        assert_eq!(rec.acked_count(), sent - sent / 10);
    }

    /// A recorder whose window covers the whole run.
    fn recorder() -> Arc<Recorder> {
        Arc::new(Recorder::new(
            Clock::new(),
            5,
            Window {
                start: 0,
                end: u64::MAX,
            },
        ))
    }

    fn plan(load: Load, ms: u64) -> ProducerPlan {
        ProducerPlan {
            producer: 0,
            record_bytes: 32,
            keys: partition_keys(4),
            load,
            start_at: 0,
            stop_at: ms * 1_000_000,
            drain: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn a_closed_loop_keeps_its_window_full_and_every_send_is_answered() {
        let rec = recorder();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let publisher = Delayed {
            delay: Duration::from_millis(20),
            sent: Arc::clone(&sent),
        };
        run_producer(
            publisher,
            plan(Load::Closed { window: 10 }, 200),
            Arc::clone(&rec),
            Arc::new(Filler::new(1)),
        )
        .await;
        let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
        // 10 in flight, 20 ms each, 200 ms: about 100 sends; at least the first window.
        assert!(sent >= 10, "{sent}");
        assert_eq!(rec.acked_count(), sent);
    }

    #[tokio::test]
    async fn an_open_loop_charges_the_wait_for_a_full_window_to_latency() {
        let rec = recorder();
        let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        // 1,000 records/s offered, one outstanding at a time, each answered after 50 ms: the
        // schedule falls behind at once, and latencies grow far above 50 ms.
        let publisher = Delayed {
            delay: Duration::from_millis(50),
            sent: Arc::clone(&sent),
        };
        run_producer(
            publisher,
            plan(
                Load::Open {
                    records_per_sec: 1_000.0,
                    max_outstanding: 1,
                },
                300,
            ),
            Arc::clone(&rec),
            Arc::new(Filler::new(1)),
        )
        .await;
        let m = rec.finish(None);
        assert!(m.put_ack_latency_ms.count >= 3);
        assert!(
            m.put_ack_latency_ms.max > 100.0,
            "{:?}",
            m.put_ack_latency_ms
        );
    }
}
