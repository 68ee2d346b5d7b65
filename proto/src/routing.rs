//! Hash-key routing: a record goes to the shard whose range holds MD5 of its partition key (or
//! its explicit hash key). Shards of a stream split the 128-bit space into contiguous ranges.

use crate::ids::IdError;

/// A shard's range of hash keys, both ends inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKeyRange {
    pub start: u128,
    pub end: u128,
}

impl HashKeyRange {
    pub fn contains(&self, key: u128) -> bool {
        self.start <= key && key <= self.end
    }
}

/// The 128-bit hash key of a partition key: its MD5 digest read as a big-endian integer.
pub fn hash_key_of(partition_key: &str) -> u128 {
    u128::from_be_bytes(md5::compute(partition_key.as_bytes()).0)
}

/// Parses an explicit hash key: a decimal integer in `0..=2^128-1`.
pub fn parse_hash_key(s: &str, field: &'static str) -> Result<u128, IdError> {
    if s.is_empty() || s.len() > 39 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(IdError {
            field,
            reason: format!("must be a decimal integer between 0 and 2^128-1, got {s:?}"),
        });
    }
    s.parse::<u128>().map_err(|_| IdError {
        field,
        reason: format!("{s:?} is larger than 2^128-1"),
    })
}

/// Splits the hash-key space into `shards` contiguous ranges of equal size (the last one takes
/// the remainder), in shard order.
pub fn split_hash_space(shards: u32) -> Vec<HashKeyRange> {
    let n = u128::from(shards.max(1));
    if n == 1 {
        return vec![HashKeyRange {
            start: 0,
            end: u128::MAX,
        }];
    }
    // floor((2^128 - 1) / n) + 1: exactly 2^128 / n when n is a power of two.
    let step = u128::MAX / n + 1;
    (0..n)
        .map(|i| HashKeyRange {
            start: i * step,
            end: if i + 1 == n {
                u128::MAX
            } else {
                (i + 1) * step - 1
            },
        })
        .collect()
}

/// The index of the range that holds `key`; ranges must cover the space in order.
pub fn shard_for(ranges: &[HashKeyRange], key: u128) -> Option<usize> {
    let i = ranges.partition_point(|r| r.end < key);
    (i < ranges.len() && ranges[i].contains(key)).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_space_without_gaps() {
        for n in [1u32, 2, 3, 4, 7, 100, 1000] {
            let r = split_hash_space(n);
            assert_eq!(r.len(), n as usize);
            assert_eq!(r[0].start, 0);
            assert_eq!(r[r.len() - 1].end, u128::MAX);
            for w in r.windows(2) {
                assert_eq!(w[0].end + 1, w[1].start, "gap or overlap with {n} shards");
                assert!(w[0].start <= w[0].end);
            }
        }
    }

    #[test]
    fn keys_route_to_the_range_that_holds_them() {
        let r = split_hash_space(4);
        assert_eq!(shard_for(&r, 0), Some(0));
        assert_eq!(shard_for(&r, u128::MAX), Some(3));
        assert_eq!(shard_for(&r, r[2].start), Some(2));
        assert_eq!(shard_for(&r, r[1].end), Some(1));
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(hash_key_of(""), 0xd41d8cd98f00b204e9800998ecf8427e);
    }

    #[test]
    fn explicit_hash_keys_are_checked() {
        assert_eq!(parse_hash_key("0", "k"), Ok(0));
        assert_eq!(parse_hash_key(&u128::MAX.to_string(), "k"), Ok(u128::MAX));
        assert!(parse_hash_key("340282366920938463463374607431768211456", "k").is_err());
        assert!(parse_hash_key("-1", "k").is_err());
    }
}
