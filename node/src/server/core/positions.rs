//! Iterator positions: where a shard iterator starts for each iterator type, where the next
//! one continues, and how far behind the newest record a read is. Pure: the shard's newest
//! record (and, for AT_TIMESTAMP, the first record at or after the time) are arguments.

use riptide_proto::v1::ShardIteratorType;
use riptide_proto::{SequenceNumber, ShardId};

use crate::error::ServiceError;

/// Where a new iterator starts, as a GetShardIterator request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The oldest record the shard still holds.
    TrimHorizon,
    /// Just after the newest record: only records written from now on.
    Latest,
    /// At the record with this sequence number.
    At(SequenceNumber),
    /// Just after the record with this sequence number.
    After(SequenceNumber),
    /// At the first record that arrived at or after this time (ms since the epoch).
    AtTimestamp(u64),
}

impl Start {
    /// The start a request asks for: its iterator type (the wire enum's value), with the
    /// sequence number the two sequence types need and the time AT_TIMESTAMP needs.
    pub fn from_request(
        kind: i32,
        starting_sequence_number: &str,
        timestamp_ms: u64,
    ) -> Result<Self, ServiceError> {
        let seq = || SequenceNumber::parse(starting_sequence_number, "starting_sequence_number");
        match ShardIteratorType::try_from(kind) {
            Ok(ShardIteratorType::TrimHorizon) => Ok(Start::TrimHorizon),
            Ok(ShardIteratorType::Latest) => Ok(Start::Latest),
            Ok(ShardIteratorType::AtSequenceNumber) => Ok(Start::At(seq()?)),
            Ok(ShardIteratorType::AfterSequenceNumber) => Ok(Start::After(seq()?)),
            Ok(ShardIteratorType::AtTimestamp) => Ok(Start::AtTimestamp(timestamp_ms)),
            Ok(ShardIteratorType::Unspecified) | Err(_) => Err(ServiceError::invalid(
                "shard_iterator_type",
                format!(
                    "must be TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER or AT_TIMESTAMP, got {kind}"
                ),
            )),
        }
    }
}

/// The position (a sequence number's value) an iterator starting at `start` reads from first.
/// `newest` is the shard's newest record; `first_at_or_after` is the first record at or after
/// the time of an AT_TIMESTAMP start (ignored for the others). A sequence number past the
/// newest record is refused: it cannot name a record of `shard`.
pub fn start_position(
    shard: ShardId,
    start: Start,
    newest: Option<SequenceNumber>,
    first_at_or_after: Option<SequenceNumber>,
) -> Result<u64, ServiceError> {
    let after_newest = newest.map_or(0, |s| s.0 + 1);
    let existing = |s: SequenceNumber| match newest {
        Some(n) if s <= n => Ok(s.0),
        _ => Err(ServiceError::invalid(
            "starting_sequence_number",
            format!(
                "{s} is beyond the newest record of shard {shard} ({})",
                newest.map_or_else(|| "none yet".to_string(), |n| n.to_string())
            ),
        )),
    };
    match start {
        Start::TrimHorizon => Ok(0),
        Start::Latest => Ok(after_newest),
        Start::At(s) => existing(s),
        Start::After(s) => Ok(existing(s)? + 1),
        Start::AtTimestamp(_) => Ok(first_at_or_after.map_or(after_newest, |s| s.0)),
    }
}

/// Where the iterator after a read continues: after the last record returned, or where the
/// read started when it returned none.
pub fn next_position(last_returned: Option<SequenceNumber>, from: u64) -> u64 {
    last_returned.map_or(from, |s| s.0 + 1)
}

/// How far (ms of arrival time) the last record returned is behind the shard's newest record;
/// 0 when the read returned nothing or reached the newest record.
pub fn millis_behind_latest(
    last_returned: Option<(SequenceNumber, u64)>,
    newest: Option<(SequenceNumber, u64)>,
) -> u64 {
    match (last_returned, newest) {
        (Some((seq, arrived)), Some((newest, newest_arrived))) if seq < newest => {
            newest_arrived.saturating_sub(arrived)
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seq(index: u64, pos: u32) -> SequenceNumber {
        SequenceNumber::from_entry(index, pos)
    }

    #[test]
    fn each_iterator_type_resolves_to_its_position() {
        let shard = ShardId(1);
        let newest = Some(seq(10, 2));
        let at = |start| start_position(shard, start, newest, None);
        assert_eq!(at(Start::TrimHorizon), Ok(0));
        assert_eq!(at(Start::Latest), Ok(seq(10, 2).0 + 1));
        assert_eq!(at(Start::At(seq(5, 0))), Ok(seq(5, 0).0));
        assert_eq!(at(Start::After(seq(5, 0))), Ok(seq(5, 0).0 + 1));
        assert_eq!(at(Start::At(seq(10, 2))), Ok(seq(10, 2).0));
        // AT_TIMESTAMP: the first record at or after the time, or the end when none is.
        assert_eq!(
            start_position(shard, Start::AtTimestamp(7), newest, Some(seq(7, 1))),
            Ok(seq(7, 1).0)
        );
        assert_eq!(at(Start::AtTimestamp(7)), Ok(seq(10, 2).0 + 1));
    }

    #[test]
    fn sequence_numbers_past_the_newest_record_are_refused() {
        let shard = ShardId(3);
        let e = start_position(shard, Start::After(seq(11, 0)), Some(seq(10, 2)), None)
            .expect_err("past the end");
        assert!(
            matches!(&e, ServiceError::InvalidArgument { field, .. } if field == "starting_sequence_number")
        );
        assert!(e.to_string().contains("shardId-000000000003"), "{e}");
        let e = start_position(shard, Start::At(seq(1, 0)), None, None).expect_err("empty");
        assert!(e.to_string().contains("none yet"), "{e}");
        // An empty shard starts at 0 for LATEST and AT_TIMESTAMP.
        assert_eq!(start_position(shard, Start::Latest, None, None), Ok(0));
        assert_eq!(
            start_position(shard, Start::AtTimestamp(1), None, None),
            Ok(0)
        );
    }

    #[test]
    fn requests_name_their_start() {
        let kind = |k: ShardIteratorType| k as i32;
        assert_eq!(
            Start::from_request(kind(ShardIteratorType::Latest), "", 0),
            Ok(Start::Latest)
        );
        let s = seq(4, 1);
        assert_eq!(
            Start::from_request(
                kind(ShardIteratorType::AfterSequenceNumber),
                &s.to_string(),
                0
            ),
            Ok(Start::After(s))
        );
        assert_eq!(
            Start::from_request(kind(ShardIteratorType::AtTimestamp), "", 99),
            Ok(Start::AtTimestamp(99))
        );
        let e = Start::from_request(kind(ShardIteratorType::AtSequenceNumber), "x", 0)
            .expect_err("not a number");
        assert!(e.to_string().starts_with("starting_sequence_number"), "{e}");
        let e = Start::from_request(0, "", 0).expect_err("unspecified");
        assert!(e.to_string().starts_with("shard_iterator_type"), "{e}");
        assert!(Start::from_request(42, "", 0).is_err());
    }

    #[test]
    fn reads_continue_after_their_last_record_and_say_how_far_behind_they_are() {
        assert_eq!(next_position(Some(seq(3, 4)), 0), seq(3, 4).0 + 1);
        assert_eq!(next_position(None, 77), 77);
        let newest = Some((seq(9, 0), 5_000));
        assert_eq!(
            millis_behind_latest(Some((seq(3, 0), 1_500)), newest),
            3_500
        );
        assert_eq!(millis_behind_latest(Some((seq(9, 0), 5_000)), newest), 0);
        assert_eq!(millis_behind_latest(None, newest), 0);
        // A clock that went back never makes a negative lag.
        assert_eq!(millis_behind_latest(Some((seq(3, 0), 6_000)), newest), 0);
    }
}
