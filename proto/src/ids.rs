//! Id newtypes and their wire forms.

use std::fmt;
use std::str::FromStr;

/// Why an id from the wire was refused. The message names the field and the rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for IdError {}

/// Longest stream name Kinesis accepts, and so Riptide.
pub const MAX_STREAM_NAME_LEN: usize = 128;

/// A stream's name: 1 to 128 characters from `a-z A-Z 0-9 _ . -`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamName(String);

impl StreamName {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        let err = |reason: String| IdError {
            field: "stream_name",
            reason,
        };
        if name.is_empty() || name.len() > MAX_STREAM_NAME_LEN {
            return Err(err(format!(
                "must be 1 to {MAX_STREAM_NAME_LEN} characters, got {}",
                name.len()
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
        {
            return Err(err(format!(
                "may hold only a-z, A-Z, 0-9, '_', '.' and '-', found {c:?}"
            )));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A shard's index within its stream, shown as `shardId-000000000000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

const SHARD_PREFIX: &str = "shardId-";

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SHARD_PREFIX}{:012}", self.0)
    }
}

impl FromStr for ShardId {
    type Err = IdError;

    /// Accepts `shardId-000000000003` and, as Kinesis does, the bare number `3`.
    fn from_str(s: &str) -> Result<Self, IdError> {
        let digits = s.strip_prefix(SHARD_PREFIX).unwrap_or(s);
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError {
                field: "shard_id",
                reason: format!("must look like shardId-000000000000, got {s:?}"),
            });
        }
        digits.parse::<u32>().map(ShardId).map_err(|_| IdError {
            field: "shard_id",
            reason: format!("shard index out of range in {s:?}"),
        })
    }
}

/// A record's sequence number: unique and strictly increasing within a shard, the same on every
/// replica. It is the Raft log index of the entry that carried the record, shifted left by
/// [`SequenceNumber::POSITION_BITS`], plus the record's position in that entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber(pub u64);

impl SequenceNumber {
    /// Bits for the position of a record within its Raft entry: up to 1,048,576 records.
    pub const POSITION_BITS: u32 = 20;
    /// Digits on the wire; every sequence number is zero-padded to this width so that string
    /// order and numeric order agree.
    pub const WIDTH: usize = 20;

    pub fn from_entry(log_index: u64, position: u32) -> Self {
        Self((log_index << Self::POSITION_BITS) | u64::from(position))
    }

    pub fn log_index(self) -> u64 {
        self.0 >> Self::POSITION_BITS
    }

    /// The record's position within its log entry.
    pub fn position(self) -> u32 {
        (self.0 & ((1 << Self::POSITION_BITS) - 1)) as u32
    }

    /// Parses a decimal sequence number named `field` in the request.
    pub fn parse(s: &str, field: &'static str) -> Result<Self, IdError> {
        if s.is_empty() || s.len() > Self::WIDTH || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(IdError {
                field,
                reason: format!(
                    "must be a decimal sequence number of 1 to {} digits, got {s:?}",
                    Self::WIDTH
                ),
            });
        }
        s.parse::<u64>().map(Self).map_err(|_| IdError {
            field,
            reason: format!("{s:?} is larger than any sequence number"),
        })
    }
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:020}", self.0)
    }
}

impl crate::v1::PutRecordsResultEntry {
    /// The written record's position: from the numbers when the text is empty (the request
    /// asked for `numeric_positions`), from the text otherwise (a node of an older build, or
    /// a request that did not ask). Only for an entry without an error code.
    pub fn position(&self) -> Result<(ShardId, SequenceNumber), IdError> {
        if self.sequence_number.is_empty() {
            return Ok((ShardId(self.shard_index), SequenceNumber(self.sequence)));
        }
        Ok((
            self.shard_id.parse()?,
            SequenceNumber::parse(&self.sequence_number, "sequence_number")?,
        ))
    }
}

impl crate::v1::Record {
    /// The record's sequence number: from the number when the text is empty (the request
    /// asked for `numeric_positions`), from the text otherwise.
    pub fn sequence(&self) -> Result<SequenceNumber, IdError> {
        if self.sequence_number.is_empty() {
            return Ok(SequenceNumber(self.sequence));
        }
        SequenceNumber::parse(&self.sequence_number, "sequence_number")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_ids_round_trip_and_accept_bare_numbers() {
        assert_eq!(ShardId(3).to_string(), "shardId-000000000003");
        assert_eq!("shardId-000000000003".parse::<ShardId>(), Ok(ShardId(3)));
        assert_eq!("7".parse::<ShardId>(), Ok(ShardId(7)));
        assert!("shard-1".parse::<ShardId>().is_err());
        assert!("shardId-".parse::<ShardId>().is_err());
    }

    #[test]
    fn sequence_numbers_order_as_strings_and_numbers() {
        let a = SequenceNumber::from_entry(5, 499);
        let b = SequenceNumber::from_entry(6, 0);
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
        assert_eq!(a.to_string().len(), SequenceNumber::WIDTH);
        assert_eq!(SequenceNumber::parse(&b.to_string(), "seq"), Ok(b));
        assert_eq!(b.log_index(), 6);
        assert!(SequenceNumber::parse("12a", "seq").is_err());
        assert!(SequenceNumber::parse("99999999999999999999", "seq").is_err());
        assert!(SequenceNumber::parse("", "seq").is_err());
    }

    #[test]
    fn a_put_result_reads_its_position_from_numbers_or_text() {
        let seq = SequenceNumber::from_entry(9, 3);
        let numeric = crate::v1::PutRecordsResultEntry {
            shard_index: 2,
            sequence: seq.0,
            ..Default::default()
        };
        assert_eq!(numeric.position(), Ok((ShardId(2), seq)));
        // A node of an older build answers text and leaves the numbers zero.
        let text = crate::v1::PutRecordsResultEntry {
            shard_id: ShardId(2).to_string(),
            sequence_number: seq.to_string(),
            ..Default::default()
        };
        assert_eq!(text.position(), Ok((ShardId(2), seq)));
        let bad = crate::v1::PutRecordsResultEntry {
            shard_id: "shard-2".into(),
            sequence_number: seq.to_string(),
            ..Default::default()
        };
        assert_eq!(bad.position().map_err(|e| e.field), Err("shard_id"));
    }

    #[test]
    fn a_record_reads_its_sequence_number_from_the_number_or_the_text() {
        let seq = SequenceNumber::from_entry(12, 7);
        let numeric = crate::v1::Record {
            sequence: seq.0,
            ..Default::default()
        };
        assert_eq!(numeric.sequence(), Ok(seq));
        let text = crate::v1::Record {
            sequence_number: seq.to_string(),
            ..Default::default()
        };
        assert_eq!(text.sequence(), Ok(seq));
        let bad = crate::v1::Record {
            sequence_number: "12x".into(),
            sequence: seq.0,
            ..Default::default()
        };
        assert_eq!(bad.sequence().map_err(|e| e.field), Err("sequence_number"));
    }

    #[test]
    fn stream_names_follow_kinesis_rules() {
        assert!(StreamName::new("orders-2026.v1_a").is_ok());
        let e = StreamName::new("").expect_err("must be refused");
        assert_eq!(e.field, "stream_name");
        assert!(StreamName::new("a/b").is_err());
        assert!(StreamName::new("x".repeat(129)).is_err());
    }
}
