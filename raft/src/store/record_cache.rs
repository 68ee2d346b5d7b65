//! The record cache: the newest bytes written to the segment files, kept in memory for readers.
//!
//! The segment files are written with O_DIRECT ([`super::segments`]), so the page cache holds
//! nothing of what was written. Without this cache, every reader a little behind the writers (a
//! consumer reading records written seconds to minutes ago, a follower catching up past its
//! group's log cache) would read each entry from the disk. The segments' sync copies each chunk
//! it wrote into the cache once the chunk is synced, and [`super::segments::Segments::read`]
//! answers from the cache when it holds the whole entry; the reader still checks the entry's
//! CRC, as it does for bytes read from the file.
//!
//! The cache holds extents of the segments, [`EXTENT_BYTES`] each at offsets that are multiples
//! of it, up to a byte budget (`record_cache_mb` of the node's config); when it is full, the
//! extent written longest ago goes and its buffer holds the next one. Buffers are kept and
//! reused rather than freed and allocated again: the first touch of fresh memory is what costs
//! on the virtual machines this runs on (RocksDB's blob cache, which allocated an entry per
//! flushed value, cost a fresh node its first ten seconds of throughput).
//!
//! The cache never holds bytes the file does not: a segment's bytes never change once written
//! (appends go to its end, and segment ids are not reused), and a segment's extents are dropped
//! before its file is unlinked. Entries deleted from a group's log keep their bytes in their
//! segment, and here, until the segment is unlinked. Reads do not fill the cache: a reader of an
//! old backlog would push out the newest data, which most readers want.

use std::collections::{HashMap, VecDeque};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

/// Size of one extent of a segment held in the cache.
pub(crate) const EXTENT_BYTES: usize = 1 << 20;

/// Identifies an extent: its segment, and its offset in the segment divided by [`EXTENT_BYTES`].
type ExtentKey = (u64, u64);

/// The newest segment data, by (segment, offset).
pub(crate) struct RecordCache {
    /// Extents the budget allows.
    max_extents: usize,
    state: RwLock<State>,
    /// Reads answered from the cache.
    hits: AtomicU64,
}

#[derive(Default)]
struct State {
    extents: HashMap<ExtentKey, Extent>,
    /// The keys of `extents`, oldest first.
    order: VecDeque<ExtentKey>,
    /// Buffers of dropped extents, for the next ones. With `extents`, never more than the budget.
    spare: Vec<Box<[u8]>>,
}

/// Bytes of one extent: `data[from..to]` are the segment's bytes at the extent's start plus
/// `from` to plus `to`.
struct Extent {
    data: Box<[u8]>,
    from: usize,
    to: usize,
}

/// The pieces of `[offset, offset + len)` in each extent it touches: (key, start in the extent,
/// length).
fn pieces(
    segment: u64,
    offset: u64,
    len: usize,
) -> impl Iterator<Item = (ExtentKey, usize, usize)> {
    let extent = EXTENT_BYTES as u64;
    let end = offset + len as u64;
    let mut at = offset;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let number = at / extent;
        let start = (at % extent) as usize;
        let take = (end - at).min(extent - start as u64) as usize;
        at += take as u64;
        Some(((segment, number), start, take))
    })
}

impl RecordCache {
    /// A cache of at most `budget_bytes` (rounded down to whole extents; 0: the cache is off).
    pub(crate) fn new(budget_bytes: usize) -> Self {
        Self {
            max_extents: budget_bytes / EXTENT_BYTES,
            state: RwLock::new(State::default()),
            hits: AtomicU64::new(0),
        }
    }

    pub(crate) fn is_enabled(&self) -> bool {
        self.max_extents > 0
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `data`, the bytes of `segment` from `offset` on, just written to the file.
    pub(crate) fn insert(&self, segment: u64, offset: u64, data: &[u8]) {
        if !self.is_enabled() {
            return;
        }
        let mut done = 0;
        for (key, start, len) in pieces(segment, offset, data.len()) {
            let piece = &data[done..done + len];
            done += len;
            // One extent at a time, so that readers wait for one copy at most.
            let mut state = self.write();
            let state = &mut *state;
            let extent = match state.extents.get_mut(&key) {
                Some(extent) => extent,
                None => {
                    let data = match state.spare.pop() {
                        Some(buf) => buf,
                        None if state.extents.len() < self.max_extents => {
                            vec![0u8; EXTENT_BYTES].into_boxed_slice()
                        }
                        None => {
                            let oldest = state
                                .order
                                .pop_front()
                                .expect("a full cache holds at least one extent");
                            state
                                .extents
                                .remove(&oldest)
                                .expect("every key in the order is an extent")
                                .data
                        }
                    };
                    state.order.push_back(key);
                    state.extents.entry(key).or_insert(Extent {
                        data,
                        from: start,
                        to: start,
                    })
                }
            };
            extent.data[start..start + len].copy_from_slice(piece);
            if start <= extent.to && start + len >= extent.from {
                // Overlaps or touches what the extent holds (a sync writes a segment's last,
                // partly filled block again with what follows it).
                extent.from = extent.from.min(start);
                extent.to = extent.to.max(start + len);
            } else {
                // A gap: only the new bytes are known.
                extent.from = start;
                extent.to = start + len;
            }
        }
    }

    /// The `len` bytes of `segment` from `offset` on, if the cache holds all of them.
    pub(crate) fn get(&self, segment: u64, offset: u64, len: usize) -> Option<Bytes> {
        if !self.is_enabled() {
            return None;
        }
        let mut out = BytesMut::with_capacity(len);
        {
            let state = self.read();
            for (key, start, len) in pieces(segment, offset, len) {
                let extent = state.extents.get(&key)?;
                if start < extent.from || start + len > extent.to {
                    return None;
                }
                out.extend_from_slice(&extent.data[start..start + len]);
            }
        }
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(out.freeze())
    }

    /// Drops every extent of the segments `ids` (they are being unlinked).
    pub(crate) fn drop_segments(&self, ids: &[u64]) {
        if !self.is_enabled() {
            return;
        }
        let mut state = self.write();
        let state = &mut *state;
        state.order.retain(|(segment, _)| !ids.contains(segment));
        let gone: Vec<ExtentKey> = state
            .extents
            .keys()
            .filter(|(segment, _)| ids.contains(segment))
            .copied()
            .collect();
        for key in gone {
            if let Some(extent) = state.extents.remove(&key) {
                state.spare.push(extent.data);
            }
        }
    }

    /// Reads answered from the cache so far.
    pub(crate) fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Bytes of memory the cache holds (extents and their spare buffers).
    #[cfg(test)]
    pub(crate) fn held_bytes(&self) -> usize {
        let state = self.read();
        (state.extents.len() + state.spare.len()) * EXTENT_BYTES
    }

    /// Whether the cache holds any byte of `segment`.
    #[cfg(test)]
    pub(crate) fn holds_segment(&self, segment: u64) -> bool {
        self.read().extents.keys().any(|(s, _)| *s == segment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
    }

    #[test]
    fn what_was_inserted_reads_back_also_across_extents_and_nothing_else_does() {
        let cache = RecordCache::new(8 * EXTENT_BYTES);
        let data = bytes(1, EXTENT_BYTES + 5000);
        // Starts inside the first extent, ends inside the second.
        let offset = EXTENT_BYTES as u64 - 3000;
        cache.insert(4, offset, &data);
        let got = cache.get(4, offset, data.len()).expect("held");
        assert_eq!(got.as_ref(), data.as_slice());
        let part = cache.get(4, offset + 100, 6000).expect("held");
        assert_eq!(part.as_ref(), &data[100..6100]);
        assert_eq!(cache.hits(), 2);

        assert!(cache.get(4, offset - 1, 10).is_none(), "one byte before");
        assert!(
            cache.get(4, offset, data.len() + 1).is_none(),
            "one byte after"
        );
        assert!(cache.get(5, offset, 10).is_none(), "another segment");
        assert_eq!(cache.hits(), 2, "misses are not hits");
    }

    /// A sync writes a segment's last, partly filled block again with what follows it, and a
    /// write after a gap replaces what the extent held.
    #[test]
    fn overlapping_writes_extend_an_extent_and_a_gap_restarts_it() {
        let cache = RecordCache::new(4 * EXTENT_BYTES);
        let a = bytes(1, 5000);
        cache.insert(1, 0, &a);
        // The block from 4096 again, with more after it.
        let mut b = a[4096..].to_vec();
        b.extend(bytes(9, 3000));
        cache.insert(1, 4096, &b);
        let whole = cache.get(1, 0, 4096 + b.len()).expect("held");
        assert_eq!(&whole[..4096], &a[..4096]);
        assert_eq!(&whole[4096..], b.as_slice());

        cache.insert(1, 20_000, &bytes(3, 100));
        assert!(cache.get(1, 0, 10).is_none(), "dropped by the gap");
        assert_eq!(
            cache.get(1, 20_000, 100).expect("held").as_ref(),
            bytes(3, 100).as_slice()
        );
    }

    #[test]
    fn the_budget_is_kept_by_dropping_the_oldest_extents_and_reusing_their_memory() {
        let cache = RecordCache::new(3 * EXTENT_BYTES + 100);
        for n in 0..5u64 {
            cache.insert(1, n * EXTENT_BYTES as u64, &bytes(n as u8, EXTENT_BYTES));
            assert!(cache.held_bytes() <= 3 * EXTENT_BYTES);
        }
        assert_eq!(cache.held_bytes(), 3 * EXTENT_BYTES);
        for n in 0..2u64 {
            assert!(cache.get(1, n * EXTENT_BYTES as u64, 1).is_none(), "{n}");
        }
        for n in 2..5u64 {
            assert_eq!(
                cache
                    .get(1, n * EXTENT_BYTES as u64, EXTENT_BYTES)
                    .expect("held")
                    .as_ref(),
                bytes(n as u8, EXTENT_BYTES).as_slice(),
                "{n}"
            );
        }
    }

    #[test]
    fn dropped_segments_leave_the_cache_and_their_memory_is_reused() {
        let cache = RecordCache::new(2 * EXTENT_BYTES);
        cache.insert(1, 0, &bytes(1, 100));
        cache.insert(2, 0, &bytes(2, 100));
        cache.drop_segments(&[1]);
        assert!(!cache.holds_segment(1) && cache.get(1, 0, 100).is_none());
        assert!(cache.holds_segment(2));
        assert_eq!(cache.held_bytes(), 2 * EXTENT_BYTES, "the buffer is kept");
        cache.insert(3, 0, &bytes(3, 100));
        assert!(
            cache.holds_segment(2) && cache.holds_segment(3),
            "the freed buffer holds the new extent, nothing else is dropped"
        );
        assert_eq!(cache.held_bytes(), 2 * EXTENT_BYTES);
    }

    #[test]
    fn a_budget_under_one_extent_turns_the_cache_off() {
        let cache = RecordCache::new(EXTENT_BYTES - 1);
        assert!(!cache.is_enabled());
        cache.insert(1, 0, &bytes(1, 100));
        assert!(cache.get(1, 0, 100).is_none());
        assert_eq!(cache.held_bytes(), 0);
    }
}
