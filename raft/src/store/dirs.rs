//! Directories whose existence survives a power cut.
//!
//! A new directory entry is durable only once the directory holding it is fsynced (fsync(2)
//! promises no more), so a store created in a fresh data directory and written to for a while
//! could lose its whole `db` folder to a power cut unless its parents are synced.

use std::fs::File;
use std::io;
use std::path::Path;

/// Creates `dir` and its missing parents, fsyncing each new directory's parent, and fsyncs
/// `dir`'s parent even when `dir` already existed (an earlier run may have made it and died
/// before syncing it).
pub(crate) fn create_dir_durable(dir: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.exists() {
        missing.push(at);
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => break,
        }
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        sync_parent(d)?;
    }
    if missing.is_empty() {
        sync_parent(dir)?;
    }
    Ok(())
}

/// Fsyncs the directory holding `path`'s entry.
fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makes_missing_parents_and_accepts_an_existing_directory() {
        let root = tempfile::tempdir().expect("temp dir");
        let deep = root.path().join("a").join("b").join("c");
        create_dir_durable(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_durable(&deep).expect("again");
        let file = root.path().join("f");
        std::fs::write(&file, b"x").expect("file");
        assert!(create_dir_durable(&file.join("d")).is_err(), "under a file");
    }
}
