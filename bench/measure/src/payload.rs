//! The layout of every bench record: a 24-byte header, then filler.
//!
//! | bytes | what |
//! |---|---|
//! | 0..8   | the run's id (records of other runs are told apart and ignored) |
//! | 8..16  | the record's id: producer << 40 \| the producer's sequence |
//! | 16..24 | when the record was meant to be sent, in ns since the run's clock base |
//! | 24..   | filler from a pool of pseudo-random bytes, so that compression gains little |

use bytes::{Bytes, BytesMut};

/// Bytes of the buffers records are cut from (see [`Filler::record`]).
const SLAB_BYTES: usize = 256 << 10;

/// Bytes of the header; the smallest record size.
pub const HEADER_BYTES: usize = 24;

/// Bits of a record id that hold the producer's own sequence.
const SEQ_BITS: u32 = 40;

/// What a record's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub run: u64,
    pub producer: u32,
    pub seq: u64,
    pub intended_nanos: u64,
}

/// A pool of pseudo-random bytes that records take their filler from, at a moving offset.
#[derive(Debug, Clone)]
pub struct Filler {
    pool: Vec<u8>,
}

impl Filler {
    /// A 1 MiB pool from a seeded splitmix64 generator.
    pub fn new(seed: u64) -> Self {
        let mut state = seed;
        let mut pool = Vec::with_capacity(1 << 20);
        while pool.len() < 1 << 20 {
            pool.extend_from_slice(&splitmix64(&mut state).to_le_bytes());
        }
        Self { pool }
    }

    /// A record of `size` bytes (at least the header's) with this header, cut from `slab`.
    /// Records cut from one slab share its allocation (freed with the last of them), so a
    /// record costs no allocation of its own; a slab too small for the record is replaced.
    pub fn record(&self, slab: &mut BytesMut, header: Header, size: usize) -> Bytes {
        let size = size.max(HEADER_BYTES);
        if slab.capacity() - slab.len() < size {
            *slab = BytesMut::with_capacity(size.max(SLAB_BYTES));
        }
        let out = slab;
        out.extend_from_slice(&header.run.to_le_bytes());
        out.extend_from_slice(&(u64::from(header.producer) << SEQ_BITS | header.seq).to_le_bytes());
        out.extend_from_slice(&header.intended_nanos.to_le_bytes());
        let mut offset = (header.seq.wrapping_mul(7_919) as usize) % self.pool.len();
        while out.len() < size {
            let take = (size - out.len()).min(self.pool.len() - offset);
            out.extend_from_slice(&self.pool[offset..offset + take]);
            offset = 0;
        }
        out.split().freeze()
    }
}

/// Reads a record's header; `None` when the record is too short to be a bench record.
pub fn decode(data: &[u8]) -> Option<Header> {
    let word = |i: usize| -> Option<u64> {
        let bytes: [u8; 8] = data.get(i * 8..i * 8 + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(bytes))
    };
    let id = word(1)?;
    Some(Header {
        run: word(0)?,
        producer: u32::try_from(id >> SEQ_BITS).ok()?,
        seq: id & ((1 << SEQ_BITS) - 1),
        intended_nanos: word(2)?,
    })
}

/// One step of splitmix64: a fast generator good enough for filler and run ids.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_decodes_to_its_header_and_has_the_size_asked_for() {
        let filler = Filler::new(7);
        let header = Header {
            run: 0xdead_beef,
            producer: 3,
            seq: 123_456,
            intended_nanos: 987_654_321,
        };
        let mut slab = BytesMut::new();
        for size in [10, 24, 100, 1024, 3_000_000, 1024, 200_000, 200_000] {
            let record = filler.record(&mut slab, header, size);
            assert_eq!(record.len(), size.max(HEADER_BYTES));
            assert_eq!(decode(&record), Some(header));
        }
        assert_eq!(decode(&[1, 2, 3]), None);
    }

    #[test]
    fn filler_differs_between_records() {
        let filler = Filler::new(1);
        let h = |seq| Header {
            run: 1,
            producer: 0,
            seq,
            intended_nanos: 0,
        };
        let mut slab = BytesMut::new();
        let one = filler.record(&mut slab, h(1), 200);
        let two = filler.record(&mut slab, h(2), 200);
        assert_ne!(one[24..], two[24..]);
        // Cutting the second record from the slab left the first one as it was.
        assert_eq!(one, filler.record(&mut BytesMut::new(), h(1), 200));
    }
}
