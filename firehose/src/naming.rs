//! Object names and where delivery resumes. Every object a batch writes is named from the
//! stream, the shard and the first and last sequence numbers of the batch:
//! `<prefix><stream>-<shard>-<first>-<last>.<ext>`. Delivering a batch again writes the same
//! names, and listing what exists tells where a shard left off ([`resume_point`]).

use riptide_client::{SequenceNumber, ShardId, StartingPosition};

/// The suffix of the error objects a batch writes after its data objects.
pub const ERROR_SUFFIX: &str = ".errors.jsonl";

/// The first and last sequence numbers of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BatchRange {
    pub first: SequenceNumber,
    pub last: SequenceNumber,
}

/// The file name of an object of a batch (without its prefix).
pub fn object_name(stream: &str, shard: ShardId, range: BatchRange, ext: &str) -> String {
    format!("{stream}-{shard}-{}-{}{ext}", range.first, range.last)
}

/// An object of `stream`'s `shard` found in a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub range: BatchRange,
    /// An error object: written last, so its batch is complete.
    pub is_error: bool,
}

/// Reads an object's key back, if it is one of `stream`'s `shard`.
pub fn parse_key(key: &str, stream: &str, shard: ShardId) -> Option<Found> {
    let name = key.rsplit('/').next().unwrap_or(key);
    let rest = name.strip_prefix(&format!("{stream}-{shard}-"))?;
    let first = digits(rest)?;
    let rest = rest[20..].strip_prefix('-')?;
    let last = digits(rest)?;
    let ext = &rest[20..];
    if !(ext.is_empty() || ext.starts_with('.')) || ext.ends_with(".tmp") {
        return None;
    }
    (first <= last).then_some(Found {
        range: BatchRange {
            first: SequenceNumber(first),
            last: SequenceNumber(last),
        },
        is_error: ext == ERROR_SUFFIX,
    })
}

fn digits(s: &str) -> Option<u64> {
    let d = s.get(..20)?;
    if !d.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    d.parse().ok()
}

/// Where a shard's delivery resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    pub from: StartingPosition,
    /// The first batch must end exactly here: it repeats a batch that may have been cut short
    /// by a crash, so it must write the same objects again.
    pub cut_at: Option<SequenceNumber>,
}

/// Where to resume given the objects already delivered for a shard, or `None` when nothing
/// was delivered yet. Batches are delivered one after another, so only the newest can be
/// incomplete: without its error object (written last), it is delivered again, to the same
/// names, ending at the same record.
pub fn resume_point(found: &[Found]) -> Option<ResumePoint> {
    let newest = found.iter().map(|f| f.range.last).max()?;
    let of_newest: Vec<&Found> = found.iter().filter(|f| f.range.last == newest).collect();
    if of_newest.iter().any(|f| f.is_error) {
        return Some(ResumePoint {
            from: StartingPosition::AfterSequence(newest),
            cut_at: None,
        });
    }
    let first = of_newest
        .iter()
        .map(|f| f.range.first)
        .min()
        .expect("of_newest holds at least the newest object");
    Some(ResumePoint {
        from: StartingPosition::AtSequence(first),
        cut_at: Some(newest),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(a: u64, b: u64) -> BatchRange {
        BatchRange {
            first: SequenceNumber(a),
            last: SequenceNumber(b),
        }
    }

    #[test]
    fn names_parse_back_for_their_own_shard_only() {
        let key = format!(
            "orders/2024/01/{}",
            object_name("my-orders", ShardId(3), range(7, 99), ".jsonl.gz")
        );
        assert_eq!(
            parse_key(&key, "my-orders", ShardId(3)),
            Some(Found {
                range: range(7, 99),
                is_error: false
            })
        );
        assert_eq!(parse_key(&key, "my-orders", ShardId(30)), None);
        assert_eq!(parse_key(&key, "my", ShardId(3)), None);
        let err = object_name("s", ShardId(0), range(1, 2), ERROR_SUFFIX);
        assert!(parse_key(&err, "s", ShardId(0)).is_some_and(|f| f.is_error));
        let tmp = format!("{}.tmp", object_name("s", ShardId(0), range(1, 2), ".gz"));
        assert_eq!(parse_key(&tmp, "s", ShardId(0)), None);
    }

    #[test]
    fn resumes_after_a_complete_batch_and_repeats_an_unfinished_one() {
        assert_eq!(resume_point(&[]), None);
        let data = |a, b| Found {
            range: range(a, b),
            is_error: false,
        };
        let error = |a, b| Found {
            range: range(a, b),
            is_error: true,
        };
        // The newest batch has data objects only: it may be missing a partition.
        assert_eq!(
            resume_point(&[data(1, 10), data(11, 20), data(11, 20)]),
            Some(ResumePoint {
                from: StartingPosition::AtSequence(SequenceNumber(11)),
                cut_at: Some(SequenceNumber(20)),
            })
        );
        // Its error object was written: it is complete.
        assert_eq!(
            resume_point(&[data(1, 10), data(11, 20), error(11, 20)]),
            Some(ResumePoint {
                from: StartingPosition::AfterSequence(SequenceNumber(20)),
                cut_at: None,
            })
        );
    }
}
