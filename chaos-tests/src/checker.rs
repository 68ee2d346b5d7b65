//! The checker: judges a drill's history. Every acknowledged record must be readable at the
//! sequence number it was acknowledged with, exactly once, in per-shard order, and nothing may be
//! read that was never written. It also measures, for each fault, how long each shard went
//! without an acknowledged write around it.
//!
//! Sequence numbers are compared as the u64s they stand for, never as strings.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::history::{Event, PutOutcome};

/// How many examples a [`Findings`] keeps; its count goes on past them.
pub const MAX_EXAMPLES: usize = 20;

/// A position in the stream: a shard and a sequence number.
type Pos<'a> = (&'a str, u64);

/// Input the checker cannot judge.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A sequence number is not the decimal form of a u64.
    #[error("event {index}: sequence number {seq:?} is not a decimal u64")]
    BadSeq {
        /// The event's index in the history, from 0.
        index: usize,
        /// The sequence number as recorded.
        seq: String,
    },
}

/// One example of a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The record's id.
    pub id: String,
    /// The shard the finding is about.
    pub shard: String,
    /// The sequence number the finding is about.
    pub seq: String,
    /// What was seen and what was expected.
    pub detail: String,
}

/// Every finding of one kind: how many, and the first [`MAX_EXAMPLES`] of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// How many there are in all.
    pub count: usize,
    /// The first few, in a deterministic order.
    pub examples: Vec<Finding>,
}

impl Findings {
    fn push(&mut self, id: &str, (shard, seq): Pos, detail: String) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(Finding {
                id: id.to_string(),
                shard: shard.to_string(),
                seq: seq.to_string(),
                detail,
            });
        }
    }
}

/// How long one shard went without an acknowledged write around one fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShardOutage {
    /// The longest gap between acknowledged writes that overlaps the fault.
    pub outage_ms: u64,
    /// False if no write was acknowledged after the fault started: the gap then runs to the end
    /// of the history.
    pub resumed: bool,
}

/// The write outages around one fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultOutage {
    /// What kind of fault.
    pub name: String,
    /// What it hit.
    pub target: String,
    /// When it started.
    pub start_ms: u64,
    /// When it ended.
    pub end_ms: u64,
    /// The longest outage over all shards.
    pub longest_outage_ms: u64,
    /// The outage of every shard that acknowledged any write.
    pub per_shard: BTreeMap<String, ShardOutage>,
}

/// The verdict on a history. Counts of ids are of distinct record ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// Ids with any put.
    pub attempted: usize,
    /// Ids with an acknowledged (`Ok`) put.
    pub acknowledged: usize,
    /// Ids whose every put failed.
    pub failed: usize,
    /// Ids with a put of unknown outcome.
    pub unknown: usize,
    /// Ids read at least once.
    pub read: usize,
    /// Acknowledged ids not read at their acknowledged position.
    pub lost: Findings,
    /// Ids read at more than one position (or acknowledged at more than one), never retried
    /// after an unknown outcome.
    pub duplicated: Findings,
    /// Ids read at more than one position after a retry of an unknown outcome: expected.
    pub retried_duplicates: Findings,
    /// Ids read that were never put, or whose every put failed.
    pub phantom: Findings,
    /// Reads out of order for their reader and shard, and acknowledged puts of one partition
    /// key that got a lower sequence number than a put acknowledged before they started.
    pub reordered: Findings,
    /// Positions where readers saw different ids.
    pub divergent: Findings,
    /// The write outages around every fault, in the history's order.
    pub faults: Vec<FaultOutage>,
}

impl Report {
    /// Whether the history passed: nothing lost, phantom, duplicated, reordered or divergent.
    /// Retried duplicates are expected and do not count against it.
    pub fn ok(&self) -> bool {
        self.failures()
            .iter()
            .all(|(_, findings)| findings.count == 0)
    }

    fn failures(&self) -> [(&'static str, &Findings); 5] {
        [
            ("lost", &self.lost),
            ("duplicated", &self.duplicated),
            ("phantom", &self.phantom),
            ("reordered", &self.reordered),
            ("divergent", &self.divergent),
        ]
    }

    /// A few human-readable lines: the verdict, the counts, the first example of each kind of
    /// failure and the longest write outage around each fault.
    pub fn summary(&self) -> String {
        let mut lines = vec![
            format!(
                "{}: {} ids attempted, {} acknowledged, {} failed, {} unknown, {} read",
                if self.ok() { "PASS" } else { "FAIL" },
                self.attempted,
                self.acknowledged,
                self.failed,
                self.unknown,
                self.read
            ),
            format!(
                "lost {}, duplicated {}, phantom {}, reordered {}, divergent {}, \
                 retried duplicates {} (expected)",
                self.lost.count,
                self.duplicated.count,
                self.phantom.count,
                self.reordered.count,
                self.divergent.count,
                self.retried_duplicates.count
            ),
        ];
        for (kind, findings) in self.failures() {
            if let Some(f) = findings.examples.first() {
                lines.push(format!(
                    "  {kind}: {} at {}/{}: {}",
                    f.id, f.shard, f.seq, f.detail
                ));
            }
        }
        for fault in &self.faults {
            let stuck: Vec<&str> = fault
                .per_shard
                .iter()
                .filter(|(_, outage)| !outage.resumed)
                .map(|(shard, _)| shard.as_str())
                .collect();
            let mut line = format!(
                "fault {} on {} ({}..{} ms): longest write outage {} ms",
                fault.name, fault.target, fault.start_ms, fault.end_ms, fault.longest_outage_ms
            );
            if !stuck.is_empty() {
                line.push_str(&format!(", no write after it on {}", stuck.join(", ")));
            }
            lines.push(line);
        }
        lines.join("\n")
    }
}

/// What the puts of one id came to.
#[derive(Default)]
struct IdState<'a> {
    attempts: usize,
    failed: usize,
    unknown: bool,
    acked: BTreeSet<Pos<'a>>,
}

/// An acknowledged put.
struct OkPut<'a> {
    id: &'a str,
    key: &'a str,
    shard: &'a str,
    seq: u64,
    invoked: u64,
    completed: u64,
}

fn parse_seq(index: usize, seq: &str) -> Result<u64, CheckError> {
    seq.parse().map_err(|_| CheckError::BadSeq {
        index,
        seq: seq.to_string(),
    })
}

fn show<'a>(positions: impl IntoIterator<Item = &'a Pos<'a>>) -> String {
    let shown: Vec<String> = positions
        .into_iter()
        .map(|(s, n)| format!("{s}/{n}"))
        .collect();
    if shown.is_empty() {
        "nowhere".to_string()
    } else {
        shown.join(", ")
    }
}

/// Judges a history. Fails only on malformed input, such as a sequence number that is not a u64.
pub fn check(events: &[Event]) -> Result<Report, CheckError> {
    let mut report = Report::default();
    let mut ids: BTreeMap<&str, IdState> = BTreeMap::new();
    let mut ok_puts = Vec::new();
    // Every position each id was read at; every id (with its readers) read at each position.
    let mut read_at: BTreeMap<&str, BTreeSet<Pos>> = BTreeMap::new();
    let mut seen_at: BTreeMap<Pos, BTreeMap<&str, BTreeSet<&str>>> = BTreeMap::new();
    let mut last_read: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut faults = Vec::new();
    let mut last_ms = 0;

    for (index, event) in events.iter().enumerate() {
        match event {
            Event::Put {
                id,
                partition_key,
                invoked_ms,
                completed_ms,
                outcome,
                ..
            } => {
                last_ms = last_ms.max(*invoked_ms).max(*completed_ms);
                let state = ids.entry(id).or_default();
                state.attempts += 1;
                match outcome {
                    PutOutcome::Ok { shard, seq } => {
                        let seq = parse_seq(index, seq)?;
                        state.acked.insert((shard, seq));
                        ok_puts.push(OkPut {
                            id,
                            key: partition_key,
                            shard,
                            seq,
                            invoked: *invoked_ms,
                            completed: *completed_ms,
                        });
                    }
                    PutOutcome::Failed { .. } => state.failed += 1,
                    PutOutcome::Unknown { .. } => state.unknown = true,
                }
            }
            Event::Read {
                reader,
                shard,
                seq,
                id,
                read_ms,
            } => {
                last_ms = last_ms.max(*read_ms);
                let pos = (shard.as_str(), parse_seq(index, seq)?);
                if let Some(previous) = last_read.insert((reader, shard), pos.1)
                    && pos.1 <= previous
                {
                    let detail = format!("{reader} read seq {} after seq {previous}", pos.1);
                    report.reordered.push(id, pos, detail);
                }
                read_at.entry(id).or_default().insert(pos);
                seen_at
                    .entry(pos)
                    .or_default()
                    .entry(id)
                    .or_default()
                    .insert(reader);
            }
            Event::Fault {
                name,
                target,
                start_ms,
                end_ms,
            } => {
                last_ms = last_ms.max(*start_ms).max(*end_ms);
                faults.push((name, target, *start_ms, *end_ms));
            }
        }
    }

    let no_reads = BTreeSet::new();
    for (&id, state) in &ids {
        let reads = read_at.get(id).unwrap_or(&no_reads);
        report.acknowledged += usize::from(!state.acked.is_empty());
        report.failed += usize::from(state.failed == state.attempts);
        report.unknown += usize::from(state.unknown);
        if let Some(&missing) = state.acked.iter().find(|pos| !reads.contains(pos)) {
            let detail = format!("not read where acknowledged; read at {}", show(reads));
            report.lost.push(id, missing, detail);
        }
        if reads.len() > 1 || state.acked.len() > 1 {
            let Some(&pos) = state.acked.first().or(reads.first()) else {
                continue;
            };
            let detail = format!(
                "acknowledged at {}, read at {}",
                show(&state.acked),
                show(reads)
            );
            if state.unknown {
                report.retried_duplicates.push(id, pos, detail);
            } else {
                report.duplicated.push(id, pos, detail);
            }
        }
    }
    report.attempted = ids.len();
    report.read = read_at.len();

    for (&id, reads) in &read_at {
        let Some(&pos) = reads.first() else { continue };
        match ids.get(id) {
            None => report
                .phantom
                .push(id, pos, "read, but never put".to_string()),
            Some(state) if state.failed == state.attempts => {
                let detail = format!("read, but all {} puts of it failed", state.attempts);
                report.phantom.push(id, pos, detail);
            }
            Some(_) => {}
        }
    }

    let acked_as: BTreeMap<Pos, &str> = ok_puts.iter().map(|p| ((p.shard, p.seq), p.id)).collect();
    for (&pos, seen) in &seen_at {
        if seen.len() > 1 {
            let id = acked_as
                .get(&pos)
                .or(seen.keys().next())
                .copied()
                .unwrap_or_default();
            let who: Vec<String> = seen
                .iter()
                .map(|(id, readers)| {
                    let readers: Vec<&str> = readers.iter().copied().collect();
                    format!("{id} by {}", readers.join(", "))
                })
                .collect();
            let detail = format!("readers disagree: {}", who.join("; "));
            report.divergent.push(id, pos, detail);
        }
    }

    check_key_order(&ok_puts, &mut report.reordered);
    report.faults = outages(&ok_puts, &faults, last_ms);
    Ok(report)
}

/// Per partition key and shard: a put acknowledged before another was invoked must have the
/// lower sequence number. Each later put that breaks this is one finding.
fn check_key_order(ok_puts: &[OkPut], reordered: &mut Findings) {
    let mut by_key: BTreeMap<(&str, &str), Vec<&OkPut>> = BTreeMap::new();
    for put in ok_puts {
        by_key.entry((put.key, put.shard)).or_default().push(put);
    }
    for ((key, _), mut puts) in by_key {
        puts.sort_by_key(|p| (p.completed, p.seq, p.id));
        // highest[i] is the put with the highest seq among puts[..=i].
        let mut highest: Vec<&OkPut> = Vec::with_capacity(puts.len());
        for &put in &puts {
            let top = match highest.last() {
                Some(&top) if top.seq >= put.seq => top,
                _ => put,
            };
            highest.push(top);
        }
        for later in &puts {
            let before = puts.partition_point(|p| p.completed < later.invoked);
            if let Some(earlier) = before.checked_sub(1).and_then(|i| highest.get(i))
                && earlier.seq >= later.seq
            {
                let detail = format!(
                    "key {key}: {} was acknowledged at seq {} at {} ms, before this put was \
                     invoked at {} ms, so this seq should be higher",
                    earlier.id, earlier.seq, earlier.completed, later.invoked
                );
                reordered.push(later.id, (later.shard, later.seq), detail);
            }
        }
    }
}

/// The write outages of every shard around every fault.
fn outages(
    ok_puts: &[OkPut],
    faults: &[(&String, &String, u64, u64)],
    last_ms: u64,
) -> Vec<FaultOutage> {
    let mut ok_times: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for put in ok_puts {
        ok_times.entry(put.shard).or_default().push(put.completed);
    }
    ok_times
        .values_mut()
        .for_each(|times| times.sort_unstable());
    faults
        .iter()
        .map(|&(name, target, start, end)| {
            let per_shard: BTreeMap<String, ShardOutage> = ok_times
                .iter()
                .map(|(shard, times)| (shard.to_string(), shard_outage(times, start, end, last_ms)))
                .collect();
            FaultOutage {
                name: name.clone(),
                target: target.clone(),
                start_ms: start,
                end_ms: end,
                longest_outage_ms: per_shard.values().map(|o| o.outage_ms).max().unwrap_or(0),
                per_shard,
            }
        })
        .collect()
}

/// The longest gap between consecutive acknowledged writes (`times`, sorted) that overlaps the
/// fault `[start, end]`; if none is acknowledged after `start`, the gap from the last one to the
/// end of the history counts too, and the shard has not resumed.
fn shard_outage(times: &[u64], start: u64, end: u64, last_ms: u64) -> ShardOutage {
    let longest = times
        .windows(2)
        .filter(|gap| gap[0] <= end && gap[1] >= start)
        .map(|gap| gap[1] - gap[0])
        .max()
        .unwrap_or(0);
    match times.last() {
        Some(&last) if last <= start => ShardOutage {
            outage_ms: longest.max(last_ms.saturating_sub(last)),
            resumed: false,
        },
        _ => ShardOutage {
            outage_ms: longest,
            resumed: true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{HistoryError, read_jsonl, write_jsonl};

    fn put(id: &str, key: &str, attempt: u32, at: (u64, u64), outcome: PutOutcome) -> Event {
        Event::Put {
            id: id.into(),
            partition_key: key.into(),
            attempt,
            invoked_ms: at.0,
            completed_ms: at.1,
            outcome,
        }
    }

    fn ok(shard: &str, seq: u64) -> PutOutcome {
        PutOutcome::Ok {
            shard: shard.into(),
            seq: seq.to_string(),
        }
    }

    fn unknown() -> PutOutcome {
        PutOutcome::Unknown {
            error: "timed out".into(),
        }
    }

    fn failed() -> PutOutcome {
        PutOutcome::Failed {
            error: "throttled".into(),
        }
    }

    fn read(reader: &str, shard: &str, seq: u64, id: &str) -> Event {
        Event::Read {
            reader: reader.into(),
            shard: shard.into(),
            seq: seq.to_string(),
            id: id.into(),
            read_ms: 0,
        }
    }

    fn fault(name: &str, start_ms: u64, end_ms: u64) -> Event {
        Event::Fault {
            name: name.into(),
            target: "node 1".into(),
            start_ms,
            end_ms,
        }
    }

    fn ids(findings: &Findings) -> Vec<&str> {
        findings.examples.iter().map(|f| f.id.as_str()).collect()
    }

    /// Three producers put 10 records each over two shards; one reader reads both shards in
    /// order. Sequence numbers go 5, 8, 11, ... so that comparing them as strings would fail.
    fn clean_history() -> Vec<Event> {
        let mut events = vec![fault("leader-kill", 100, 150)];
        let mut next_seq = [5u64, 5];
        let mut written = Vec::new();
        for n in 0..10u64 {
            for producer in 0..3u64 {
                let id = format!("p{producer}-{n}");
                let shard = ((producer + n) % 2) as usize;
                let seq = next_seq[shard];
                next_seq[shard] += 3;
                let t = (n * 3 + producer) * 10;
                let key = format!("k{producer}-{}", n % 2);
                events.push(put(&id, &key, 1, (t, t + 5), ok(&format!("s{shard}"), seq)));
                written.push((shard, seq, id));
            }
        }
        events.push(put("p0-failed", "k0-0", 1, (400, 405), failed()));
        events.push(put("p1-unknown", "k1-0", 1, (400, 405), unknown()));
        written.sort();
        for (shard, seq, id) in &written {
            events.push(read("final", &format!("s{shard}"), *seq, id));
        }
        events
    }

    #[test]
    fn clean_history_passes() {
        let report = check(&clean_history()).expect("well-formed history");
        assert_eq!(
            (
                report.attempted,
                report.acknowledged,
                report.failed,
                report.unknown,
                report.read
            ),
            (32, 30, 1, 1, 30)
        );
        for findings in [
            &report.lost,
            &report.duplicated,
            &report.retried_duplicates,
            &report.phantom,
            &report.reordered,
            &report.divergent,
        ] {
            assert_eq!(findings, &Findings::default(), "{}", report.summary());
        }
        assert!(report.ok());
        assert!(report.summary().starts_with("PASS"));
        let json = serde_json::to_value(&report).expect("serializable");
        assert_eq!(json["lost"]["count"], 0);
    }

    #[test]
    fn lost_duplicated_reordered_and_phantom_records_are_found() {
        let events = vec![
            put("a", "ka", 1, (0, 1), ok("s0", 9)),
            put("b", "kb", 1, (0, 1), ok("s0", 10)),
            put("c", "kc", 1, (0, 1), ok("s0", 11)),
            put("d", "kd", 1, (0, 1), ok("s0", 12)),
            read("r", "s0", 9, "a"),
            // b (s0/10) is never read: lost.
            read("r", "s0", 12, "d"),
            // Read after 12: reordered.
            read("r", "s0", 11, "c"),
            // c again at another position: duplicated.
            read("r", "s1", 1, "c"),
            // Never put: phantom.
            read("r", "s1", 2, "ghost"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!((report.lost.count, ids(&report.lost)), (1, vec!["b"]));
        assert_eq!(report.lost.examples[0].seq, "10");
        assert_eq!(
            (report.duplicated.count, ids(&report.duplicated)),
            (1, vec!["c"])
        );
        assert_eq!(
            (report.reordered.count, ids(&report.reordered)),
            (1, vec!["c"])
        );
        assert_eq!(report.reordered.examples[0].seq, "11");
        assert_eq!(
            (report.phantom.count, ids(&report.phantom)),
            (1, vec!["ghost"])
        );
        assert_eq!(
            (report.divergent.count, report.retried_duplicates.count),
            (0, 0)
        );
        assert!(!report.ok());
        let summary = report.summary();
        assert!(summary.starts_with("FAIL"), "{summary}");
        assert!(
            summary.contains("lost 1, duplicated 1, phantom 1, reordered 1"),
            "{summary}"
        );
    }

    #[test]
    fn record_read_only_at_another_position_is_lost_not_duplicated() {
        let events = vec![
            put("x", "k", 1, (0, 1), ok("s0", 5)),
            read("r", "s0", 6, "x"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!((report.lost.count, ids(&report.lost)), (1, vec!["x"]));
        assert!(report.lost.examples[0].detail.contains("s0/6"));
        assert_eq!(report.duplicated.count, 0);
    }

    #[test]
    fn put_acknowledged_after_a_later_invoked_put_is_reordered() {
        let events = vec![
            put("a", "k", 1, (0, 10), ok("s0", 20)),
            // Concurrent with a: no constraint either way.
            put("c", "k", 1, (5, 40), ok("s0", 18)),
            // Invoked after a was acknowledged, yet lower: reordered.
            put("b", "k", 1, (20, 30), ok("s0", 15)),
            // Same key, another shard: no constraint.
            put("d", "k", 1, (50, 60), ok("s1", 1)),
            read("r", "s0", 15, "b"),
            read("r", "s0", 18, "c"),
            read("r", "s0", 20, "a"),
            read("r", "s1", 1, "d"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!(
            (report.reordered.count, ids(&report.reordered)),
            (1, vec!["b"])
        );
        assert_eq!(report.reordered.examples[0].seq, "15");
        assert_eq!(report.lost.count + report.duplicated.count, 0);
        assert!(!report.ok());
    }

    #[test]
    fn readers_that_disagree_are_divergent() {
        let events = vec![
            put("a", "ka", 1, (0, 1), ok("s0", 1)),
            put("b", "kb", 1, (0, 1), ok("s0", 2)),
            read("r1", "s0", 1, "a"),
            read("r1", "s0", 2, "b"),
            read("r2", "s0", 1, "b"),
            read("r2", "s0", 2, "b"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!(
            (report.divergent.count, ids(&report.divergent)),
            (1, vec!["a"])
        );
        assert_eq!(report.divergent.examples[0].seq, "1");
        assert!(!report.ok());
    }

    #[test]
    fn failed_put_that_is_read_is_phantom() {
        let events = vec![
            put("f", "k", 1, (0, 1), failed()),
            put("f", "k", 2, (2, 3), failed()),
            read("r", "s0", 1, "f"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!((report.phantom.count, ids(&report.phantom)), (1, vec!["f"]));
        assert_eq!(report.failed, 1);
    }

    #[test]
    fn retry_after_unknown_read_twice_is_an_expected_duplicate() {
        let events = vec![
            put("r", "k", 1, (0, 100), unknown()),
            put("r", "k", 2, (100, 110), ok("s0", 2)),
            read("reader", "s0", 1, "r"),
            read("reader", "s0", 2, "r"),
        ];
        let report = check(&events).expect("well-formed history");
        assert_eq!(report.retried_duplicates.count, 1);
        assert_eq!(ids(&report.retried_duplicates), vec!["r"]);
        assert_eq!((report.duplicated.count, report.lost.count), (0, 0));
        assert_eq!((report.acknowledged, report.unknown), (1, 1));
        assert!(report.ok());
    }

    #[test]
    fn write_outages_around_faults() {
        // s0 acknowledges every 100 ms to 1000, nothing until 3500, then every 100 ms to 4000;
        // s1 acknowledges every 100 ms from 0 to 4000.
        let mut times: Vec<u64> = (0..=10).map(|i| i * 100).collect();
        times.extend((35..=40).map(|i| i * 100));
        let mut events = Vec::new();
        for (n, &t) in times.iter().enumerate() {
            events.push(put(&format!("a{n}"), "ka", 1, (t, t), ok("s0", n as u64)));
        }
        for n in 0..=40u64 {
            events.push(put(
                &format!("b{n}"),
                "kb",
                1,
                (n * 100, n * 100),
                ok("s1", n),
            ));
        }
        events.push(fault("pause", 1050, 1100));
        events.push(fault("isolate", 4500, 4800));
        events.push(Event::Read {
            reader: "r".into(),
            shard: "s0".into(),
            seq: "0".into(),
            id: "a0".into(),
            read_ms: 5000,
        });
        let report = check(&events).expect("well-formed history");
        let [pause, isolate] = report.faults.as_slice() else {
            panic!("two faults expected: {:?}", report.faults);
        };
        assert_eq!(pause.name, "pause");
        let outage = |ms, resumed| ShardOutage {
            outage_ms: ms,
            resumed,
        };
        assert_eq!(pause.per_shard["s0"], outage(2500, true));
        assert_eq!(pause.per_shard["s1"], outage(100, true));
        assert_eq!(pause.longest_outage_ms, 2500);
        // Nothing after 4000 ms; the history ends with the read at 5000 ms.
        assert_eq!(isolate.per_shard["s0"], outage(1000, false));
        assert_eq!(isolate.per_shard["s1"], outage(1000, false));
        assert_eq!(isolate.longest_outage_ms, 1000);
        assert!(report.summary().contains("no write after it on s0, s1"));
    }

    #[test]
    fn unparsable_sequence_number_is_an_input_error() {
        let mut event = read("r", "s0", 1, "a");
        if let Event::Read { seq, .. } = &mut event {
            *seq = "12x".into();
        }
        let error = check(&[put("a", "k", 1, (0, 1), ok("s0", 1)), event]);
        assert!(
            matches!(error, Err(CheckError::BadSeq { index: 1, .. })),
            "{error:?}"
        );
    }

    #[test]
    fn jsonl_round_trip() {
        let events = clean_history();
        let mut buffer = Vec::new();
        write_jsonl(&mut buffer, &events).expect("written");
        let text = String::from_utf8(buffer).expect("utf-8");
        assert_eq!(text.lines().count(), events.len());
        assert!(text.contains(r#""type":"put""#) && text.contains(r#""status":"ok""#));
        assert!(text.contains(r#""type":"read""#) && text.contains(r#""type":"fault""#));

        let dir = std::env::temp_dir();
        let good = dir.join(format!("riptide-history-{}-good.jsonl", std::process::id()));
        std::fs::write(&good, &text).expect("written");
        let back = read_jsonl(&good);
        std::fs::remove_file(&good).ok();
        assert_eq!(back.expect("read back"), events);

        let bad = dir.join(format!("riptide-history-{}-bad.jsonl", std::process::id()));
        let first_two: Vec<&str> = text.lines().take(2).collect();
        std::fs::write(
            &bad,
            format!("{}\n{{\"type\":\"put\"}}\n", first_two.join("\n")),
        )
        .expect("written");
        let error = read_jsonl(&bad);
        std::fs::remove_file(&bad).ok();
        match error {
            Err(e @ HistoryError::Parse { line: 3, .. }) => {
                assert!(e.to_string().contains("line 3"), "{e}")
            }
            other => panic!("expected a parse error on line 3, got {other:?}"),
        }
    }
}
