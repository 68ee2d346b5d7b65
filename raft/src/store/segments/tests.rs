//! Tests of the segment files and of reads through the record cache.

use super::*;

fn data(byte: u8, len: usize) -> Bytes {
    Bytes::from(vec![byte; len])
}

#[test]
fn appends_read_back_and_a_changed_byte_is_caught() {
    let dir = tempfile::tempdir().expect("temp dir");
    // No record cache: the read after the sync is from the file.
    let segs = Segments::open(dir.path(), 1 << 20, 0).expect("open");
    let (a, b) = (data(1, 1000), data(2, 9000));
    let (ptrs, guard) = segs
        .append(GroupId(1), &[(5, &a), (6, &b)])
        .expect("append");
    drop(guard);
    assert_eq!(segs.read(&ptrs[0]).expect("read"), a);
    assert_eq!(segs.read(&ptrs[1]).expect("read"), b);
    assert_eq!(ptrs[1].offset, 1000);
    segs.sync().expect("sync");
    assert_eq!(segs.read(&ptrs[1]).expect("read from the file"), b);

    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(segment_path(dir.path(), ptrs[1].segment))
        .expect("open file");
    file.write_all_at(&[9], 1500).expect("flip a byte");
    assert!(matches!(
        segs.read(&ptrs[1]),
        Err(ReadError::Corrupt { .. })
    ));
    let past = Pointer {
        offset: 10_000,
        ..ptrs[0]
    };
    assert!(matches!(segs.read(&past), Err(ReadError::Corrupt { .. })));
}

/// Appends that end inside a block: the block is written again with each, and every
/// append reads back, before and after a reopen, from the file or from the record cache.
#[test]
fn appends_of_any_length_share_blocks_and_read_back() {
    for cache in [0, 8 << 20] {
        appends_of_any_length_read_back(cache);
    }
}

fn appends_of_any_length_read_back(cache: usize) {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1 << 30, cache).expect("open");
    let mut written = Vec::new();
    for i in 0..60u32 {
        let len = (i as usize * 977) % 9000 + 1;
        let d = data(i as u8, len);
        let (p, _) = segs
            .append(GroupId(1), &[(u64::from(i), &d)])
            .expect("append");
        assert_eq!(segs.read(&p[0]).expect("read just after"), d);
        written.push((p[0], d));
        if i % 7 == 3 {
            // Written to the file, the last block to be written again with what follows.
            segs.sync().expect("sync");
        }
        if i % 5 == 0 {
            for (p, d) in &written {
                assert_eq!(&segs.read(p).expect("read"), d, "before {i} was written");
            }
        }
    }
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    segs.sync().expect("sync");
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read after the last sync"), d);
    }
    let reads = segs.reads();
    if cache > 0 {
        assert!(reads.file_reads == 0 && reads.cache_hits > 0, "{reads:?}");
    } else {
        assert!(reads.cache_hits == 0 && reads.file_reads > 0, "{reads:?}");
    }
    drop(segs);
    let segs = Segments::open(dir.path(), 1 << 30, cache).expect("reopen");
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read after reopen"), d);
    }
    assert_eq!(segs.reads().file_reads, written.len() as u64);
}

/// Appends `count` entries of `len` bytes to group 1, one sync each, and returns where they
/// went with their data.
fn append_synced(segs: &Segments, count: u64, len: usize) -> Vec<(Pointer, Bytes)> {
    (0..count)
        .map(|i| {
            let d = data(i as u8, len);
            let (p, _) = segs.append(GroupId(1), &[(i, &d)]).expect("append");
            segs.sync().expect("sync");
            (p[0], d)
        })
        .collect()
}

#[test]
fn synced_data_is_read_from_the_record_cache_not_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1 << 30, 8 << 20).expect("open");
    let written = append_synced(&segs, 20, 10_000);
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    assert_eq!(
        segs.reads(),
        RecordReads {
            cache_hits: 20,
            file_reads: 0
        }
    );
    // The file holds the same bytes: a store opened again reads them from there.
    drop(segs);
    let segs = Segments::open(dir.path(), 1 << 30, 8 << 20).expect("reopen");
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    assert_eq!(
        segs.reads(),
        RecordReads {
            cache_hits: 0,
            file_reads: 20
        }
    );
}

#[test]
fn the_record_cache_keeps_the_newest_data_within_its_budget() {
    use super::super::record_cache::EXTENT_BYTES;
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1 << 30, 2 * EXTENT_BYTES).expect("open");
    // 5 MiB written: only about the last 2 fit.
    let written = append_synced(&segs, 80, 64 << 10);
    assert!(segs.cache().held_bytes() <= 2 * EXTENT_BYTES);
    let newest = &written[written.len() - 8..];
    for (p, d) in newest {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    assert_eq!(segs.reads().cache_hits, newest.len() as u64);
    assert_eq!(segs.reads().file_reads, 0);
    for (p, d) in &written[..8] {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    assert_eq!(segs.reads().file_reads, 8, "the oldest were dropped");
}

#[test]
fn unlinked_segments_leave_the_record_cache() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1000, 8 << 20).expect("open");
    // One entry per segment.
    let written = append_synced(&segs, 3, 800);
    let first = written[0].0.segment;
    assert!(segs.cache().holds_segment(first));
    let scan = segs.begin_rescan(GroupId(1));
    segs.finish_rescan(scan, Some((2, written[2].0.segment)));
    assert_eq!(segs.garbage(), vec![first, first + 1]);
    segs.unlink(&segs.garbage()).expect("unlink");
    assert!(!segs.cache().holds_segment(first) && !segs.cache().holds_segment(first + 1));
    assert!(matches!(segs.read(&written[0].0), Err(ReadError::Gone(_))));
    assert_eq!(segs.read(&written[2].0).expect("read"), written[2].1);
}

#[test]
fn with_the_record_cache_off_synced_data_is_read_from_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1 << 30, 0).expect("open");
    let written = append_synced(&segs, 5, 10_000);
    for (p, d) in &written {
        assert_eq!(&segs.read(p).expect("read"), d);
    }
    assert_eq!(
        segs.reads(),
        RecordReads {
            cache_hits: 0,
            file_reads: 5
        }
    );
    assert_eq!(segs.cache().held_bytes(), 0);
}

#[test]
fn a_full_segment_is_sealed_and_the_sync_mark_covers_what_was_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 10_000, 0).expect("open");
    let d = data(3, 6000);
    let (p1, _) = segs.append(GroupId(1), &[(1, &d)]).expect("append");
    let (p2, _) = segs.append(GroupId(1), &[(2, &d)]).expect("append");
    assert_eq!(p2[0].segment, p1[0].segment + 1, "sealed at 10,000 bytes");
    let mark = segs.sync().expect("sync");
    assert!(mark.covers(&p1[0]) && mark.covers(&p2[0]));
    let (p3, _) = segs.append(GroupId(1), &[(3, &d)]).expect("append");
    assert!(!mark.covers(&p3[0]));
    assert!(segs.sync().expect("sync").covers(&p3[0]));
    drop(segs);
    // Reopened: the old segments are readable, new appends go to a new one.
    let segs = Segments::open(dir.path(), 10_000, 0).expect("reopen");
    assert_eq!(segs.read(&p3[0]).expect("read"), d);
    let (p4, _) = segs.append(GroupId(1), &[(4, &d)]).expect("append");
    assert_eq!(p4[0].segment, p3[0].segment + 1);
}

#[test]
fn only_segments_older_than_every_groups_first_pointer_are_garbage() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Arc::new(Segments::open(dir.path(), 1000, 0).expect("open"));
    let d = data(4, 800);
    let mut seg_of = HashMap::new();
    for i in 1..=4u64 {
        for g in [GroupId(1), GroupId(2)] {
            let (p, _) = segs.append(g, &[(i, &d)]).expect("append");
            seg_of.insert((g, i), p[0].segment);
        }
    }
    // One entry per segment, the groups' entries alternating.
    assert_eq!(seg_of[&(GroupId(2), 1)], seg_of[&(GroupId(1), 1)] + 1);
    assert!(segs.garbage().is_empty());
    // Group 1 deleted up to 3: its first pointer is now index 4.
    let scan = segs.begin_rescan(GroupId(1));
    assert_eq!(scan.from, 1);
    segs.finish_rescan(scan, Some((4, seg_of[&(GroupId(1), 4)])));
    assert_eq!(
        segs.garbage(),
        vec![seg_of[&(GroupId(1), 1)]],
        "group 2's first entry is in the second segment"
    );
    let scan = segs.begin_rescan(GroupId(2));
    segs.finish_rescan(scan, Some((3, seg_of[&(GroupId(2), 3)])));
    let garbage = segs.garbage();
    assert_eq!(
        garbage,
        (seg_of[&(GroupId(1), 1)]..seg_of[&(GroupId(2), 3)]).collect::<Vec<_>>()
    );
    let pin = segs.pin();
    assert!(segs.pinned());
    drop(pin);
    segs.sync().expect("sync");
    segs.unlink(&garbage).expect("unlink");
    assert!(matches!(
        segs.read(&Pointer {
            segment: garbage[0],
            offset: 0,
            len: 1,
            crc: 0
        }),
        Err(ReadError::Gone(_))
    ));
    assert!(!segment_path(dir.path(), garbage[0]).exists());
}

#[test]
fn a_rescan_keeps_what_appends_racing_with_it_wrote() {
    let dir = tempfile::tempdir().expect("temp dir");
    let segs = Segments::open(dir.path(), 1000, 0).expect("open");
    let d = data(5, 800);
    let (p1, _) = segs.append(GroupId(1), &[(1, &d)]).expect("append");
    // An append in flight (pointer not yet in RocksDB) when the scan begins...
    let (p2, inflight) = segs.append(GroupId(1), &[(2, &d)]).expect("append");
    let scan = segs.begin_rescan(GroupId(1));
    drop(inflight);
    // ...and another one during the scan, after a rotation.
    segs.append(GroupId(1), &[(3, &d)]).expect("append");
    // The scan saw none of them (say entry 1 was deleted and 2's pointer was not visible).
    segs.finish_rescan(scan, None);
    assert_eq!(segs.group_first(GroupId(1)), Some(p2[0].segment));
    assert_eq!(segs.garbage(), vec![p1[0].segment]);
}
