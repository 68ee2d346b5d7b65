//! Shard iterators: opaque tokens that name a stream, a shard and the next sequence number to
//! read. Any node can serve them (they hold no node state), and they expire
//! [`ITERATOR_TTL_MS`] after they were issued, as Kinesis iterators do.

use riptide_proto::ShardId;

/// How long an iterator stays valid: 5 minutes.
pub const ITERATOR_TTL_MS: u64 = 5 * 60 * 1000;

const VERSION: u8 = 1;
const FIXED: usize = 1 + 8 + 4 + 8 + 8;
const CHECKSUM: usize = 4;

/// A decoded shard iterator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIterator {
    pub stream: String,
    /// Creation time of the stream the iterator was issued for, so that an iterator of a deleted
    /// stream does not read a new stream of the same name.
    pub stream_created_ms: u64,
    pub shard: ShardId,
    /// The next sequence number to return (records at or after it).
    pub position: u64,
    pub issued_ms: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IteratorError {
    #[error("shard_iterator is malformed: {0}")]
    Malformed(&'static str),
    #[error("shard_iterator expired {ago_ms} ms ago (iterators are valid for 5 minutes)")]
    Expired { ago_ms: u64 },
}

impl ShardIterator {
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(FIXED + self.stream.len() + CHECKSUM);
        raw.push(VERSION);
        raw.extend_from_slice(&self.stream_created_ms.to_be_bytes());
        raw.extend_from_slice(&self.shard.0.to_be_bytes());
        raw.extend_from_slice(&self.position.to_be_bytes());
        raw.extend_from_slice(&self.issued_ms.to_be_bytes());
        raw.extend_from_slice(self.stream.as_bytes());
        let sum = md5::compute(&raw);
        raw.extend_from_slice(&sum.0[..CHECKSUM]);
        raw.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Decodes `token` and checks that it has not expired at `now_ms`.
    pub fn decode(token: &str, now_ms: u64) -> Result<Self, IteratorError> {
        if !token.len().is_multiple_of(2) || token.len() > 2 * (FIXED + 128 + CHECKSUM) {
            return Err(IteratorError::Malformed("wrong length"));
        }
        let raw: Vec<u8> = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2).unwrap_or("zz"), 16))
            .collect::<Result<_, _>>()
            .map_err(|_| IteratorError::Malformed("not a hex string"))?;
        if raw.len() < FIXED + 1 + CHECKSUM {
            return Err(IteratorError::Malformed("too short"));
        }
        let (body, sum) = raw.split_at(raw.len() - CHECKSUM);
        if md5::compute(body).0[..CHECKSUM] != *sum {
            return Err(IteratorError::Malformed("checksum mismatch"));
        }
        if body[0] != VERSION {
            return Err(IteratorError::Malformed("unknown version"));
        }
        let u64_at = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("in range"));
        let shard = u32::from_be_bytes(body[9..13].try_into().expect("in range"));
        let stream = std::str::from_utf8(&body[FIXED..])
            .map_err(|_| IteratorError::Malformed("stream name is not UTF-8"))?
            .to_owned();
        let it = Self {
            stream,
            stream_created_ms: u64_at(1),
            shard: ShardId(shard),
            position: u64_at(13),
            issued_ms: u64_at(21),
        };
        let age = now_ms.saturating_sub(it.issued_ms);
        if age > ITERATOR_TTL_MS {
            return Err(IteratorError::Expired {
                ago_ms: age - ITERATOR_TTL_MS,
            });
        }
        Ok(it)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ShardIterator {
        ShardIterator {
            stream: "orders".into(),
            stream_created_ms: 1_700_000_000_000,
            shard: ShardId(3),
            position: 42 << 20,
            issued_ms: 1_800_000_000_000,
        }
    }

    #[test]
    fn iterators_round_trip_until_they_expire() {
        let it = sample();
        let token = it.encode();
        assert_eq!(
            ShardIterator::decode(&token, it.issued_ms + 1000),
            Ok(it.clone())
        );
        assert_eq!(
            ShardIterator::decode(&token, it.issued_ms + ITERATOR_TTL_MS + 5),
            Err(IteratorError::Expired { ago_ms: 5 })
        );
    }

    #[test]
    fn tampered_or_garbage_tokens_are_refused() {
        let token = sample().encode();
        let mut bytes = token.into_bytes();
        bytes[10] = if bytes[10] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(matches!(
            ShardIterator::decode(&tampered, 0),
            Err(IteratorError::Malformed(_))
        ));
        for bad in ["", "abc", "zz", "not an iterator at all!"] {
            assert!(matches!(
                ShardIterator::decode(bad, 0),
                Err(IteratorError::Malformed(_))
            ));
        }
    }
}
