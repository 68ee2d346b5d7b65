//! A file system for power-loss tests.
//!
//! [`PowerLossMount`] mounts a FUSE file system that passes every operation through to a real
//! directory, but remembers what a power cut would take back, and takes it back when asked
//! ([`PowerLossMount::cut`]):
//!
//! - **File data.** A write reaches the directory underneath at once (readers see it), but
//!   until the file is fsynced or fdatasynced, a cut puts the file back as it was at its last
//!   sync: its length then, and every byte it held then. Closing a file makes nothing durable.
//! - **Directory entries.** Creating, removing and renaming a file or directory lasts only once
//!   the directory holding the entry is fsynced (both directories, for a rename between two):
//!   what `fsync(2)` promises and no more. A cut removes files created since, puts removed
//!   files back (with their content as of their last sync), and undoes renames, replaced
//!   targets included. A file created and fsynced in a directory that was never fsynced is
//!   gone after a cut.
//!
//! The processes using the file system must be stopped (killed) before a cut, as power takes
//! them down with it. Every file is opened for direct I/O, so the kernel caches no page and no
//! attribute: after a cut, processes started again read what the cut left. `O_DIRECT` opens
//! work. Hard links, symbolic links and device nodes are refused.
//!
//! Needs `/dev/fuse` and `fusermount3` (Debian's fuse3), and runs as root in the drills and
//! tests.

#![warn(missing_docs)]

mod fs;
mod undo;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use fs::{CutReport, Stats};

/// A failure to mount, unmount or cut.
#[derive(Debug, thiserror::Error)]
pub enum PowerLossError {
    /// The state directory could not be prepared.
    #[error("preparing {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The kernel refused the mount (no /dev/fuse, no fusermount3, not permitted).
    #[error("mounting on {path}: {source} (needs /dev/fuse and fusermount3, from fuse3)")]
    Mount {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A cut could not put a file or entry back; the directory underneath is then in between.
    #[error("cut on {path}: {source}")]
    Cut {
        /// The mount point.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// A mounted power-loss file system. Dropping it unmounts it.
#[derive(Debug)]
pub struct PowerLossMount {
    shared: Arc<fs::Shared>,
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    tree: PathBuf,
    /// The FUSE connection's number under /sys/fs/fuse/connections.
    connection: Option<u64>,
}

/// How a mount behaves.
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    /// How long every fsync, fdatasync and directory sync takes before it returns (and takes
    /// effect), as a disk's flush does; zero by default. A few hundred microseconds to a few
    /// milliseconds gives a power cut the chance to land in the middle of a sync, as on a real
    /// disk.
    pub sync_latency: std::time::Duration,
}

impl PowerLossMount {
    /// Mounts the file system on `mountpoint` (created if missing), keeping its files under
    /// `state/tree` (what a cut leaves is what is there after it; an existing tree is used as
    /// is, as synced) and removed files under `state/graves` until their removal lasts.
    pub fn mount(state: &Path, mountpoint: &Path) -> Result<Self, PowerLossError> {
        Self::mount_with(state, mountpoint, MountOptions::default())
    }

    /// [`PowerLossMount::mount`] with `options`.
    pub fn mount_with(
        state: &Path,
        mountpoint: &Path,
        options: MountOptions,
    ) -> Result<Self, PowerLossError> {
        let tree = state.join("tree");
        let graves = state.join("graves");
        for dir in [&tree, &graves, &mountpoint.to_path_buf()] {
            std::fs::create_dir_all(dir).map_err(|source| PowerLossError::State {
                path: dir.clone(),
                source,
            })?;
        }
        // Removals from an earlier mount that no sync made last were never put back: they are
        // gone with that mount.
        let stale = std::fs::read_dir(&graves).map_err(|source| PowerLossError::State {
            path: graves.clone(),
            source,
        })?;
        for entry in stale.flatten() {
            let path = entry.path();
            let gone = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            gone.map_err(|source| PowerLossError::State { path, source })?;
        }
        let shared = Arc::new(fs::Shared::new(tree.clone(), graves));
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("riptide-powerloss".into()),
            fuser::MountOption::Subtype("riptide-powerloss".into()),
        ];
        config.n_threads = Some(4);
        let fs = fs::PowerLossFs {
            shared: shared.clone(),
            sync_latency: options.sync_latency,
        };
        let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|source| {
            PowerLossError::Mount {
                path: mountpoint.to_path_buf(),
                source,
            }
        })?;
        // The kernel's name for the connection, to abort it if an unmount cannot finish.
        let connection = std::fs::metadata(mountpoint).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            let dev = m.dev();
            (dev & 0xff) | ((dev >> 12) & 0xfff00)
        });
        Ok(Self {
            shared,
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
            tree,
            connection,
        })
    }

    /// Cuts the power: every write and directory change that no sync covered is dropped. Stop
    /// the processes using the file system first.
    pub fn cut(&self) -> Result<CutReport, PowerLossError> {
        self.shared
            .lock()
            .cut()
            .map_err(|source| PowerLossError::Cut {
                path: self.mountpoint.clone(),
                source,
            })
    }

    /// Counters since the mount.
    pub fn stats(&self) -> Stats {
        self.shared.lock().stats()
    }

    /// Where it is mounted.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// The directory underneath, holding the files as they are now.
    pub fn tree(&self) -> &Path {
        &self.tree
    }

    /// Unmounts and waits for the file system's threads.
    pub fn unmount(mut self) -> Result<(), PowerLossError> {
        self.stop()
    }

    /// Unmounts. Files still open on the file system (a process not stopped first, or one of
    /// this process's own threads) would keep the unmount from finishing and, at this process's
    /// exit, leave a thread waiting forever on a file system nobody serves: then the connection
    /// is aborted (their calls fail) and the mount detached.
    fn stop(&mut self) -> Result<(), PowerLossError> {
        let Some(session) = self.session.take() else {
            return Ok(());
        };
        let err = |source| PowerLossError::Mount {
            path: self.mountpoint.clone(),
            source,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(session.umount_and_join());
        });
        match rx.recv_timeout(std::time::Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(()),
            outcome => {
                self.abort_connection();
                let _ = std::process::Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mountpoint)
                    .status();
                Err(err(match outcome {
                    Ok(Err(e)) => e,
                    _ => io::Error::other("the unmount did not finish within 10 s"),
                }))
            }
        }
    }

    /// Aborts the FUSE connection: every call on it fails from now on.
    fn abort_connection(&self) {
        let Some(id) = self.connection else { return };
        let control = Path::new("/sys/fs/fuse/connections");
        if std::fs::read_dir(control).is_ok_and(|mut d| d.next().is_none()) {
            let _ = std::process::Command::new("mount")
                .args(["-t", "fusectl", "none"])
                .arg(control)
                .status();
        }
        let _ = std::fs::write(control.join(id.to_string()).join("abort"), b"1");
    }
}

impl Drop for PowerLossMount {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Unmounts every power-loss file system mounted at or below `path` (left behind by a process
/// that died), lazily, so that the directories can be removed. Returns how many there were.
pub fn unmount_stale(path: &Path) -> io::Result<usize> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut count = 0;
    for line in mounts.lines() {
        let mut fields = line.split(' ');
        let (Some(source), Some(target)) = (fields.next(), fields.next()) else {
            continue;
        };
        let target = PathBuf::from(target.replace("\\040", " "));
        if source != "riptide-powerloss" || !target.starts_with(path) {
            continue;
        }
        let status = std::process::Command::new("fusermount3")
            .arg("-uz")
            .arg(&target)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "fusermount3 -uz {} failed",
                target.display()
            )));
        }
        count += 1;
    }
    Ok(count)
}
