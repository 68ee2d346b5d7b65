//! The power-loss file system, mounted for real: what a cut keeps and what it drops.
//!
//! Needs /dev/fuse, fusermount3 (fuse3) and root, as CI has; without them these tests fail
//! with the reason.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use riptide_powerloss::PowerLossMount;

fn mounted() -> (tempfile::TempDir, PowerLossMount) {
    let dir = tempfile::tempdir().expect("temp dir");
    let m = PowerLossMount::mount(&dir.path().join("state"), &dir.path().join("mnt"))
        .unwrap_or_else(|e| panic!("{e}"));
    (dir, m)
}

fn sync_dir(dir: &Path) {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("directory fsync");
}

fn write_new(path: &Path, data: &[u8]) -> File {
    let mut f = File::create(path).expect("create");
    f.write_all(data).expect("write");
    f
}

fn read(path: &Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(d) => Some(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("reading {}: {e}", path.display()),
    }
}

#[test]
fn synced_data_survives_a_cut_and_unsynced_data_does_not() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    let path = root.join("log");
    let f = write_new(&path, b"synced!!");
    f.sync_data().expect("fdatasync");
    sync_dir(&root);
    // After the sync: an overwrite of synced bytes and an append.
    f.write_all_at(b"XX", 2).expect("overwrite");
    f.write_all_at(b"unsynced", 8).expect("append");
    assert_eq!(read(&path).as_deref(), Some(&b"syXXed!!unsynced"[..]));
    drop(f);
    let report = m.cut().expect("cut");
    assert_eq!(read(&path).as_deref(), Some(&b"synced!!"[..]));
    assert_eq!(report.files_reverted, 1);
    assert_eq!(report.bytes_dropped, 8 + 2);
    assert_eq!(report.changes_undone, 0);

    // A sync makes the next writes last.
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.write_all_at(b"more", 8).expect("append");
    f.sync_all().expect("fsync");
    f.write_all_at(b"lost", 12).expect("append");
    drop(f);
    m.cut().expect("cut");
    assert_eq!(read(&path).as_deref(), Some(&b"synced!!more"[..]));
    let stats = m.stats();
    assert_eq!(stats.cuts, 2);
    assert!(stats.file_syncs >= 2 && stats.dir_syncs >= 1, "{stats:?}");
}

#[test]
fn a_truncation_after_the_last_sync_is_undone() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    let path = root.join("t");
    write_new(&path, b"0123456789").sync_all().expect("fsync");
    sync_dir(&root);
    let f = OpenOptions::new().write(true).open(&path).expect("open");
    f.set_len(3).expect("truncate");
    f.write_all_at(b"abcdefgh", 3)
        .expect("write over the cut-off bytes");
    drop(f);
    m.cut().expect("cut");
    assert_eq!(read(&path).as_deref(), Some(&b"0123456789"[..]));
}

#[test]
fn a_new_file_lasts_only_once_its_directory_is_synced() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    // Directory synced, data not: the file is there, empty.
    let f = write_new(&root.join("empty"), b"");
    sync_dir(&root);
    f.write_all_at(b"unsynced", 0).expect("write");
    drop(f);
    // Both synced.
    let f = write_new(&root.join("kept"), b"kept");
    f.sync_all().expect("fsync");
    sync_dir(&root);
    // Data synced, directory not (since the file was made): the file is gone, as fsync(2)
    // promises nothing more.
    write_new(&root.join("orphan"), b"data")
        .sync_all()
        .expect("fsync");

    let report = m.cut().expect("cut");
    assert_eq!(read(&root.join("orphan")), None);
    assert_eq!(read(&root.join("empty")).as_deref(), Some(&b""[..]));
    assert_eq!(read(&root.join("kept")).as_deref(), Some(&b"kept"[..]));
    assert_eq!(report.changes_undone, 1, "{report:?}");
    let names: Vec<String> = std::fs::read_dir(&root)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn a_directory_made_without_syncing_its_parent_is_gone_with_what_it_holds() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    let sub = root.join("db").join("segments");
    std::fs::create_dir_all(&sub).expect("mkdir -p");
    write_new(&sub.join("1.seg"), b"x")
        .sync_all()
        .expect("fsync");
    sync_dir(&sub);
    sync_dir(&root.join("db"));
    m.cut().expect("cut");
    assert!(
        !root.join("db").exists(),
        "db was never synced into the root"
    );

    std::fs::create_dir_all(&sub).expect("mkdir -p");
    write_new(&sub.join("1.seg"), b"x")
        .sync_all()
        .expect("fsync");
    for d in [&sub, &root.join("db"), &root] {
        sync_dir(d);
    }
    m.cut().expect("cut");
    assert_eq!(read(&sub.join("1.seg")).as_deref(), Some(&b"x"[..]));
}

#[test]
fn renames_and_removals_without_a_directory_sync_are_undone() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    let (current, tmp) = (root.join("CURRENT"), root.join("CURRENT.tmp"));
    write_new(&current, b"old").sync_all().expect("fsync");
    sync_dir(&root);

    // The usual atomic replace, without its last step (the directory sync).
    write_new(&tmp, b"new").sync_all().expect("fsync");
    std::fs::rename(&tmp, &current).expect("rename");
    assert_eq!(read(&current).as_deref(), Some(&b"new"[..]));
    m.cut().expect("cut");
    assert_eq!(read(&current).as_deref(), Some(&b"old"[..]));
    assert_eq!(read(&tmp), None, "created after the last directory sync");

    // With it.
    write_new(&tmp, b"new").sync_all().expect("fsync");
    std::fs::rename(&tmp, &current).expect("rename");
    sync_dir(&root);
    m.cut().expect("cut");
    assert_eq!(read(&current).as_deref(), Some(&b"new"[..]));
    assert_eq!(read(&tmp), None);

    // A removal comes back with the content of the file's last sync.
    let f = OpenOptions::new().write(true).open(&current).expect("open");
    f.write_all_at(b"NEWER", 0).expect("write");
    drop(f);
    std::fs::remove_file(&current).expect("unlink");
    assert_eq!(read(&current), None);
    m.cut().expect("cut");
    assert_eq!(read(&current).as_deref(), Some(&b"new"[..]));

    std::fs::remove_file(&current).expect("unlink");
    sync_dir(&root);
    m.cut().expect("cut");
    assert_eq!(read(&current), None);
}

#[test]
fn o_direct_files_are_written_read_and_cut_like_any_other() {
    let (_dir, m) = mounted();
    let root = m.mountpoint().to_path_buf();
    let path = root.join("direct");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .expect("open with O_DIRECT");
    sync_dir(&root);
    // A block-aligned buffer, as O_DIRECT asks.
    let mut raw = vec![0u8; 3 * 4096];
    let start = raw.as_ptr().align_offset(4096);
    let block = &mut raw[start..start + 4096];
    block.fill(7);
    f.write_all_at(block, 0).expect("direct write");
    f.sync_data().expect("fdatasync");
    block.fill(9);
    f.write_all_at(block, 4096)
        .expect("direct write, not synced");
    let mut back = vec![0u8; 8192];
    f.read_exact_at(&mut back, 0).expect("read back");
    assert!(back[..4096].iter().all(|&b| b == 7) && back[4096..].iter().all(|&b| b == 9));
    drop(f);
    m.cut().expect("cut");
    let after = read(&path).expect("kept");
    assert_eq!(after.len(), 4096);
    assert!(after.iter().all(|&b| b == 7));
}
