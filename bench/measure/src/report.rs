//! The article's four measures as one report: production rate P (acknowledged records and MB
//! per second), processing rate H (consumed records and MB per second, live and from a
//! backlog), latency L (put-ack and end-to-end percentiles) and loss rate LR (acknowledged
//! records never read back over acknowledged records), plus errors counted apart.
//!
//! MB is 10^6 bytes of record data (partition keys and framing not counted).

use serde::{Deserialize, Serialize};

use super::probe::ProbeResult;
use super::recorder::Measures;

/// A rate over a time span.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Rate {
    pub records: u64,
    pub bytes: u64,
    pub secs: f64,
    pub records_per_sec: f64,
    pub mb_per_sec: f64,
}

impl Rate {
    pub fn new(records: u64, bytes: u64, secs: f64) -> Self {
        let per = |x: u64| if secs > 0.0 { x as f64 / secs } else { 0.0 };
        Self {
            records,
            bytes,
            secs,
            records_per_sec: per(records),
            mb_per_sec: per(bytes) / 1e6,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// LR and the ledger behind it.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Loss {
    /// Distinct records acknowledged.
    pub acknowledged: u64,
    /// Of those, how many the read-back pass found.
    pub read_back: u64,
    /// Acknowledged and not read back.
    pub lost: u64,
    /// lost / acknowledged.
    pub loss_rate: f64,
    /// Records of this run read back that were never acknowledged (failed or unanswered
    /// sends that were written all the same): not a loss.
    pub read_not_acknowledged: u64,
    /// Records read back more than once (a retried send written twice).
    pub duplicates_read_back: u64,
    /// Acknowledged records the live consumers had not seen when they stopped.
    pub live_missing: u64,
    /// Records the live consumers received more than once.
    pub live_duplicates: u64,
}

/// Failures, counted apart from each other.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Errors {
    /// Records that failed for good with an error other than a throttle.
    pub errors: u64,
    /// Records refused for lack of capacity, after retries.
    pub throttles: u64,
    /// Acknowledged records that took more than one send.
    pub retries: u64,
    /// Records with no answer by the end of the drain.
    pub unanswered: u64,
    /// Failed consumer calls (each retried).
    pub consumer_errors: u64,
}

/// One second of the run.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// End of the second, since the run started (the warm-up included).
    pub t_secs: f64,
    pub acked_per_sec: f64,
    pub acked_mb_per_sec: f64,
    pub consumed_per_sec: f64,
    /// p99 put-ack latency of the records acknowledged in this second.
    pub put_ack_p99_ms: Option<f64>,
}

/// What was run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Workload {
    /// How records were written and read (e.g. "riptide gRPC", "jetstream async publish").
    pub api: String,
    /// Shards (Riptide) or streams (JetStream).
    pub shards: u32,
    pub replicas: u32,
    pub producers: u32,
    pub record_bytes: usize,
    pub partition_keys: u32,
    /// Client-side batching, where the system's client has it.
    pub batch_records: Option<usize>,
    pub linger_ms: Option<f64>,
    /// Calls in flight per shard per producer, where the system's client has it.
    pub in_flight_calls: Option<usize>,
    /// "closed" (each producer keeps `window` records unacknowledged) or "open".
    pub load: String,
    /// Records each producer may have unacknowledged.
    pub window: usize,
    /// Offered rate in open loop, records/s over all producers.
    pub offered_records_per_sec: Option<f64>,
    pub duration_secs: f64,
    pub warmup_secs: f64,
    /// "push" or "poll".
    pub consumers: String,
}

/// A whole run's report.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub system: String,
    /// When the system acknowledges a write, as to durability.
    pub durability: String,
    pub workload: Workload,
    pub fsync_probe: Option<ProbeResult>,
    /// P: acknowledged in the measured window.
    pub production: Rate,
    /// H: consumed by the live consumers in the measured window.
    pub processing_live: Rate,
    /// H: every record of the run read back from the start after the producers stopped.
    pub processing_backlog: Option<Rate>,
    pub put_ack_latency_ms: Percentiles,
    pub end_to_end_latency_ms: Percentiles,
    pub loss: Loss,
    pub errors: Errors,
    pub timeline: Vec<TimelinePoint>,
    /// Leader elections in the cluster during the run, for systems that report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elections: Option<Elections>,
}

/// Leader elections in the cluster during a run, summed over its nodes' counters (the
/// counters after the run less those before it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elections {
    /// Started because an election timeout ran out. With no fault injected, each one is a
    /// leader change that no fault caused.
    pub timeout: u64,
    /// Started because a leader handed its leadership over (the leader balancer, a drain) or
    /// because a leader's node was found gone.
    pub transfer: u64,
    /// Replicas that found their leader's node gone.
    pub dead_leaders_noticed: u64,
    /// Upper bounds (ms) of the heartbeat gap buckets; `heartbeat_gaps` has one more count,
    /// for the longer gaps.
    pub heartbeat_gap_bounds_ms: Vec<u64>,
    /// Gaps between two heartbeats of the same leader received by a follower.
    pub heartbeat_gaps: Vec<u64>,
    /// The longest such gap any node saw since it started.
    pub longest_heartbeat_gap_ms: u64,
}

impl Elections {
    /// The gap histogram as text: `≤125 ms: 9,812 · ≤150 ms: 3 · ...`, empty buckets left out.
    pub fn gaps_text(&self) -> String {
        let labels = self
            .heartbeat_gap_bounds_ms
            .iter()
            .map(|b| format!("<={b} ms"))
            .chain(std::iter::once(format!(
                ">{} ms",
                self.heartbeat_gap_bounds_ms.last().copied().unwrap_or(0)
            )));
        let parts: Vec<String> = labels
            .zip(&self.heartbeat_gaps)
            .filter(|(_, n)| **n > 0)
            .map(|(label, n)| format!("{label}: {}", Value::count(*n).text))
            .collect();
        parts.join(", ")
    }
}

impl Report {
    pub fn new(
        system: &str,
        durability: &str,
        workload: Workload,
        fsync_probe: Option<ProbeResult>,
        m: Measures,
    ) -> Self {
        Self {
            system: system.to_string(),
            durability: durability.to_string(),
            workload,
            fsync_probe,
            production: m.production,
            processing_live: m.processing_live,
            processing_backlog: m.processing_backlog,
            put_ack_latency_ms: m.put_ack_latency_ms,
            end_to_end_latency_ms: m.end_to_end_latency_ms,
            loss: m.loss,
            errors: m.errors,
            timeline: m.timeline,
            elections: None,
        }
    }

    /// The rows of the table: (label, value) pairs, values already formatted.
    fn rows(&self) -> Vec<(String, Value)> {
        let mut rows = vec![
            (
                "P  acknowledged records/s".into(),
                Value::num(self.production.records_per_sec),
            ),
            (
                "P  acknowledged MB/s".into(),
                Value::num(self.production.mb_per_sec),
            ),
            (
                "H  consumed live records/s".into(),
                Value::num(self.processing_live.records_per_sec),
            ),
            (
                "H  consumed live MB/s".into(),
                Value::num(self.processing_live.mb_per_sec),
            ),
        ];
        let backlog = self.processing_backlog.unwrap_or_default();
        rows.push((
            "H  backlog read records/s".into(),
            Value::num(backlog.records_per_sec),
        ));
        rows.push((
            "H  backlog read MB/s".into(),
            Value::num(backlog.mb_per_sec),
        ));
        for (name, p) in [
            ("put-ack", &self.put_ack_latency_ms),
            ("end-to-end", &self.end_to_end_latency_ms),
        ] {
            for (q, v) in [
                ("p50", p.p50),
                ("p90", p.p90),
                ("p99", p.p99),
                ("p99.9", p.p999),
                ("max", p.max),
            ] {
                rows.push((format!("L  {name} {q} ms"), Value::ms(v)));
            }
        }
        rows.push(("LR loss rate".into(), Value::rate(self.loss.loss_rate)));
        rows.push((
            "   acknowledged records".into(),
            Value::count(self.loss.acknowledged),
        ));
        rows.push(("   read back".into(), Value::count(self.loss.read_back)));
        rows.push(("   lost".into(), Value::count(self.loss.lost)));
        rows.push(("   errors".into(), Value::count(self.errors.errors)));
        rows.push(("   throttles".into(), Value::count(self.errors.throttles)));
        rows.push(("   retried".into(), Value::count(self.errors.retries)));
        rows.push(("   unanswered".into(), Value::count(self.errors.unanswered)));
        rows.push((
            "   consumer errors".into(),
            Value::count(self.errors.consumer_errors),
        ));
        if let Some(e) = &self.elections {
            rows.push(("   elections (timeout)".into(), Value::count(e.timeout)));
            rows.push(("   elections (transfer)".into(), Value::count(e.transfer)));
            rows.push((
                "   longest heartbeat gap ms".into(),
                Value::count(e.longest_heartbeat_gap_ms),
            ));
        }
        rows
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let w = &self.workload;
        let mut out = String::new();
        out.push_str(&format!("{} ({})\n", self.system, w.api));
        out.push_str(&format!("  durability: {}\n", self.durability));
        out.push_str(&format!("  workload:   {}\n", describe_workload(w)));
        if let Some(p) = &self.fsync_probe {
            out.push_str(&format!("  fsync probe: {}\n", p.describe()));
        }
        for (label, value) in self.rows() {
            out.push_str(&format!("  {label:<30} {:>14}\n", value.text));
        }
        if let Some(e) = &self.elections {
            out.push_str(&format!("  heartbeat gaps: {}\n", e.gaps_text()));
        }
        out
    }
}

/// The median of several runs of one workload: the median of every rate and percentile and
/// of the fsync probe; loss and error counts are summed, and LR is the runs' lost records over
/// their acknowledged records. The timeline is the first run's. `None` without reports.
pub fn median(reports: &[Report]) -> Option<Report> {
    let first = reports.first()?;
    let med = |f: &dyn Fn(&Report) -> f64| -> f64 {
        let mut v: Vec<f64> = reports.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    let rate = |get: &dyn Fn(&Report) -> Rate| Rate {
        records: med(&|r| get(r).records as f64) as u64,
        bytes: med(&|r| get(r).bytes as f64) as u64,
        secs: med(&|r| get(r).secs),
        records_per_sec: med(&|r| get(r).records_per_sec),
        mb_per_sec: med(&|r| get(r).mb_per_sec),
    };
    let pct = |get: &dyn Fn(&Report) -> Percentiles| Percentiles {
        count: med(&|r| get(r).count as f64) as u64,
        p50: med(&|r| get(r).p50),
        p90: med(&|r| get(r).p90),
        p99: med(&|r| get(r).p99),
        p999: med(&|r| get(r).p999),
        max: med(&|r| get(r).max),
    };
    let sum = |f: &dyn Fn(&Report) -> u64| -> u64 { reports.iter().map(f).sum() };
    let acknowledged = sum(&|r| r.loss.acknowledged);
    let lost = sum(&|r| r.loss.lost);
    let fsync_probe = first.fsync_probe.clone().map(|p| ProbeResult {
        fsyncs_per_sec: med(&|r| r.fsync_probe.as_ref().map_or(0.0, |p| p.fsyncs_per_sec)),
        p50_ms: med(&|r| r.fsync_probe.as_ref().map_or(0.0, |p| p.p50_ms)),
        p99_ms: med(&|r| r.fsync_probe.as_ref().map_or(0.0, |p| p.p99_ms)),
        ..p
    });
    Some(Report {
        system: format!("{} (median of {})", first.system, reports.len()),
        durability: first.durability.clone(),
        workload: first.workload.clone(),
        fsync_probe,
        production: rate(&|r| r.production),
        processing_live: rate(&|r| r.processing_live),
        processing_backlog: first
            .processing_backlog
            .map(|_| rate(&|r| r.processing_backlog.unwrap_or_default())),
        put_ack_latency_ms: pct(&|r| r.put_ack_latency_ms),
        end_to_end_latency_ms: pct(&|r| r.end_to_end_latency_ms),
        loss: Loss {
            acknowledged,
            read_back: sum(&|r| r.loss.read_back),
            lost,
            loss_rate: if acknowledged == 0 {
                0.0
            } else {
                lost as f64 / acknowledged as f64
            },
            read_not_acknowledged: sum(&|r| r.loss.read_not_acknowledged),
            duplicates_read_back: sum(&|r| r.loss.duplicates_read_back),
            live_missing: sum(&|r| r.loss.live_missing),
            live_duplicates: sum(&|r| r.loss.live_duplicates),
        },
        errors: Errors {
            errors: sum(&|r| r.errors.errors),
            throttles: sum(&|r| r.errors.throttles),
            retries: sum(&|r| r.errors.retries),
            unanswered: sum(&|r| r.errors.unanswered),
            consumer_errors: sum(&|r| r.errors.consumer_errors),
        },
        timeline: first.timeline.clone(),
        elections: first.elections.as_ref().map(|e| Elections {
            timeout: sum(&|r| r.elections.as_ref().map_or(0, |e| e.timeout)),
            transfer: sum(&|r| r.elections.as_ref().map_or(0, |e| e.transfer)),
            dead_leaders_noticed: sum(&|r| {
                r.elections.as_ref().map_or(0, |e| e.dead_leaders_noticed)
            }),
            heartbeat_gap_bounds_ms: e.heartbeat_gap_bounds_ms.clone(),
            heartbeat_gaps: (0..e.heartbeat_gaps.len())
                .map(|i| {
                    sum(&|r| {
                        r.elections
                            .as_ref()
                            .and_then(|e| e.heartbeat_gaps.get(i).copied())
                            .unwrap_or(0)
                    })
                })
                .collect(),
            longest_heartbeat_gap_ms: reports
                .iter()
                .filter_map(|r| r.elections.as_ref().map(|e| e.longest_heartbeat_gap_ms))
                .max()
                .unwrap_or(0),
        }),
    })
}

/// A one-line description of a workload.
pub fn describe_workload(w: &Workload) -> String {
    let load = match w.offered_records_per_sec {
        Some(rate) => format!("open loop at {rate:.0} records/s"),
        None => format!(
            "closed loop, {} unacknowledged records per producer",
            w.window
        ),
    };
    let batching = match (w.batch_records, w.linger_ms, w.in_flight_calls) {
        (Some(b), Some(l), Some(f)) => {
            format!(", batches of up to {b} records, linger {l} ms, {f} calls in flight per shard")
        }
        _ => String::new(),
    };
    format!(
        "{} B records, {} producers, {} partition keys, {} shards x {} replicas, {}{}, \
         {} consumers, {:.0} s after {:.0} s warm-up",
        w.record_bytes,
        w.producers,
        w.partition_keys,
        w.shards,
        w.replicas,
        load,
        batching,
        w.consumers,
        w.duration_secs,
        w.warmup_secs,
    )
}

/// A formatted cell and the number behind it (for ratios).
#[derive(Debug, Clone)]
struct Value {
    text: String,
    number: f64,
}

impl Value {
    fn num(x: f64) -> Self {
        Self {
            text: fmt_num(x),
            number: x,
        }
    }

    fn ms(x: f64) -> Self {
        Self {
            text: format!("{x:.2}"),
            number: x,
        }
    }

    fn rate(x: f64) -> Self {
        Self {
            text: if x == 0.0 {
                "0".into()
            } else {
                format!("{x:.3e}")
            },
            number: x,
        }
    }

    fn count(x: u64) -> Self {
        Self {
            text: fmt_count(x),
            number: x as f64,
        }
    }
}

/// `12,345` for counts.
pub fn fmt_count(x: u64) -> String {
    let digits = x.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Rates: thousands separated, one decimal under 100.
pub fn fmt_num(x: f64) -> String {
    if x.abs() < 100.0 {
        format!("{x:.1}")
    } else {
        fmt_count(x.round() as u64)
    }
}

/// Both systems' measures side by side, with the ratio a ÷ b of every row.
pub fn compare(a: &Report, b: &Report) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "{:<32} {:>14} {:>14} {:>9}\n",
        "", a.system, b.system, "ratio"
    ));
    for ((label, va), (_, vb)) in a.rows().into_iter().zip(b.rows()) {
        let ratio = if vb.number != 0.0 {
            format!("{:.2}x", va.number / vb.number)
        } else {
            "-".to_string()
        };
        out.push_str(&format!(
            "{label:<32} {:>14} {:>14} {:>9}\n",
            va.text, vb.text, ratio
        ));
    }
    out.push_str(&format!(
        "ratio = {} ÷ {}: above 1 is better for rates, below 1 is better for latencies.\n",
        a.system, b.system
    ));
    for r in [a, b] {
        out.push_str(&format!("{}: {}\n", r.system, r.durability));
        if let Some(p) = &r.fsync_probe {
            out.push_str(&format!("{} fsync probe: {}\n", r.system, p.describe()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_rates_are_formatted_for_people() {
        assert_eq!(fmt_count(0), "0");
        assert_eq!(fmt_count(999), "999");
        assert_eq!(fmt_count(1_000), "1,000");
        assert_eq!(fmt_count(12_345_678), "12,345,678");
        assert_eq!(fmt_num(12.345), "12.3");
        assert_eq!(fmt_num(12_345.6), "12,346");
    }

    #[test]
    fn comparison_divides_the_first_system_by_the_second() {
        let mut a = Report {
            system: "a".into(),
            ..Report::default()
        };
        a.production = Rate::new(400, 4_000, 1.0);
        let mut b = Report {
            system: "b".into(),
            ..Report::default()
        };
        b.production = Rate::new(100, 1_000, 1.0);
        let text = compare(&a, &b);
        let line = text
            .lines()
            .find(|l| l.starts_with("P  acknowledged records/s"))
            .expect("row");
        assert!(line.ends_with("4.00x"), "{line}");
    }

    #[test]
    fn the_median_of_runs_takes_the_middle_rate_and_sums_losses() {
        let run = |rps: f64, lost: u64| Report {
            system: "x".into(),
            production: Rate::new((rps * 10.0) as u64, 0, 10.0),
            loss: Loss {
                acknowledged: 100,
                lost,
                ..Loss::default()
            },
            ..Report::default()
        };
        let m = median(&[run(5.0, 0), run(1.0, 1), run(3.0, 0)]).expect("median");
        assert_eq!(m.production.records_per_sec, 3.0);
        assert_eq!(m.loss.acknowledged, 300);
        assert_eq!(m.loss.lost, 1);
        assert!((m.loss.loss_rate - 1.0 / 300.0).abs() < 1e-12);
        assert!(median(&[]).is_none());
    }
}
