//! Where a reader starts in a shard, and its wire form.

use std::fmt;
use std::str::FromStr;

use riptide_proto::SequenceNumber;
use riptide_proto::v1::ShardIteratorType;

use crate::ClientError;

/// Where reading a shard starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartingPosition {
    /// The oldest record the shard still holds.
    TrimHorizon,
    /// Just after the newest record: only records written from now on.
    Latest,
    /// The record with this sequence number (or the next one if it is gone).
    AtSequence(SequenceNumber),
    /// The first record after this sequence number: how a reader resumes.
    AfterSequence(SequenceNumber),
    /// The first record that arrived at or after this time, in milliseconds since the epoch.
    AtTimestamp(u64),
}

/// The fields a `GetShardIterator` or `SubscribeToShard` request carries for a position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WirePosition {
    pub kind: ShardIteratorType,
    pub sequence_number: String,
    pub timestamp_ms: u64,
}

impl StartingPosition {
    pub(crate) fn to_wire(self) -> WirePosition {
        let (kind, sequence_number, timestamp_ms) = match self {
            StartingPosition::TrimHorizon => (ShardIteratorType::TrimHorizon, String::new(), 0),
            StartingPosition::Latest => (ShardIteratorType::Latest, String::new(), 0),
            StartingPosition::AtSequence(s) => {
                (ShardIteratorType::AtSequenceNumber, s.to_string(), 0)
            }
            StartingPosition::AfterSequence(s) => {
                (ShardIteratorType::AfterSequenceNumber, s.to_string(), 0)
            }
            StartingPosition::AtTimestamp(ms) => {
                (ShardIteratorType::AtTimestamp, String::new(), ms)
            }
        };
        WirePosition {
            kind,
            sequence_number,
            timestamp_ms,
        }
    }
}

impl fmt::Display for StartingPosition {
    /// The form [`StartingPosition::from_str`] reads back: `trim-horizon`, `latest`, `at:SEQ`,
    /// `after:SEQ` or `timestamp:MS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartingPosition::TrimHorizon => f.write_str("trim-horizon"),
            StartingPosition::Latest => f.write_str("latest"),
            StartingPosition::AtSequence(s) => write!(f, "at:{s}"),
            StartingPosition::AfterSequence(s) => write!(f, "after:{s}"),
            StartingPosition::AtTimestamp(ms) => write!(f, "timestamp:{ms}"),
        }
    }
}

impl FromStr for StartingPosition {
    type Err = ClientError;

    /// Reads `trim-horizon`, `latest`, `at:SEQ`, `after:SEQ` or `timestamp:MS` (the
    /// command-line form).
    fn from_str(s: &str) -> Result<Self, ClientError> {
        let bad = || {
            ClientError::invalid(
                "starting_position",
                format!(
                    "must be trim-horizon, latest, at:SEQ, after:SEQ or timestamp:MS, got {s:?}"
                ),
            )
        };
        let seq = |v: &str| {
            SequenceNumber::parse(v, "starting_sequence_number").map_err(ClientError::from)
        };
        match s.split_once(':') {
            None => match s.to_ascii_lowercase().replace('_', "-").as_str() {
                "trim-horizon" => Ok(StartingPosition::TrimHorizon),
                "latest" => Ok(StartingPosition::Latest),
                _ => Err(bad()),
            },
            Some((kind, value)) => match kind.to_ascii_lowercase().as_str() {
                "at" => seq(value).map(StartingPosition::AtSequence),
                "after" => seq(value).map(StartingPosition::AfterSequence),
                "timestamp" => value
                    .parse()
                    .map(StartingPosition::AtTimestamp)
                    .map_err(|_| {
                        ClientError::invalid(
                            "timestamp_ms",
                            format!("must be milliseconds since the epoch, got {value:?}"),
                        )
                    }),
                _ => Err(bad()),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_their_text_form() {
        for p in [
            StartingPosition::TrimHorizon,
            StartingPosition::Latest,
            StartingPosition::AtSequence(SequenceNumber(42)),
            StartingPosition::AfterSequence(SequenceNumber::from_entry(7, 3)),
            StartingPosition::AtTimestamp(1_700_000_000_000),
        ] {
            assert_eq!(p.to_string().parse::<StartingPosition>(), Ok(p));
        }
        assert_eq!(
            "TRIM_HORIZON".parse::<StartingPosition>(),
            Ok(StartingPosition::TrimHorizon)
        );
        assert_eq!(
            "after:12".parse::<StartingPosition>(),
            Ok(StartingPosition::AfterSequence(SequenceNumber(12)))
        );
    }

    #[test]
    fn bad_positions_name_what_is_wrong() {
        let e = "after:12x"
            .parse::<StartingPosition>()
            .expect_err("must be refused");
        assert!(e.message.contains("starting_sequence_number"), "{e}");
        let e = "timestamp:yesterday"
            .parse::<StartingPosition>()
            .expect_err("must be refused");
        assert!(e.message.contains("timestamp_ms"), "{e}");
        assert!("oldest".parse::<StartingPosition>().is_err());
        assert!("between:1".parse::<StartingPosition>().is_err());
    }

    #[test]
    fn wire_form_carries_the_sequence_number_or_timestamp() {
        let w = StartingPosition::AfterSequence(SequenceNumber(5)).to_wire();
        assert_eq!(w.kind, ShardIteratorType::AfterSequenceNumber);
        assert_eq!(w.sequence_number, "00000000000000000005");
        let w = StartingPosition::AtTimestamp(99).to_wire();
        assert_eq!(
            (w.kind, w.timestamp_ms),
            (ShardIteratorType::AtTimestamp, 99)
        );
        assert_eq!(StartingPosition::Latest.to_wire().sequence_number, "");
    }
}
