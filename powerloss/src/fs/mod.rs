//! The file system: every operation passes through to a directory underneath, and what a cut
//! would take back is remembered ([`crate::undo`]) until an fsync or a directory sync makes it
//! last.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::undo::{Change, FileUndo, Ino, Journal};

/// Nothing is cached by the kernel: after a cut, every name and size is asked again.
const TTL: Duration = Duration::ZERO;
const ROOT: Ino = 1;

/// What a cut took back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files whose content went back to their last sync.
    pub files_reverted: usize,
    /// Bytes written since those syncs that are gone: file tails cut off and synced bytes
    /// written back over.
    pub bytes_dropped: u64,
    /// Directory changes (creations, removals, renames) that no directory sync covered.
    pub changes_undone: usize,
}

/// Counters since the file system was mounted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Writes taken.
    pub writes: u64,
    /// File syncs (fsync and fdatasync).
    pub file_syncs: u64,
    /// Directory syncs.
    pub dir_syncs: u64,
    /// Cuts.
    pub cuts: u64,
}

/// Where a node is in the directory underneath.
#[derive(Debug, Clone)]
enum Place {
    Root,
    /// An entry of a directory node.
    In(Ino, OsString),
    /// Removed, kept here until the removal lasts or a cut brings it back.
    Grave(PathBuf),
}

#[derive(Debug)]
struct Node {
    kind: FileType,
    place: Place,
}

#[derive(Debug)]
struct Handle {
    ino: Ino,
    file: Arc<File>,
}

#[derive(Debug)]
pub(crate) struct State {
    tree: PathBuf,
    graves: PathBuf,
    nodes: HashMap<Ino, Node>,
    names: HashMap<(Ino, OsString), Ino>,
    next_ino: Ino,
    next_grave: u64,
    /// Files changed since their last sync.
    files: HashMap<Ino, FileUndo>,
    journal: Journal,
    handles: HashMap<u64, Handle>,
    next_fh: u64,
    stats: Stats,
}

/// The state every request and the owner of the mount share.
#[derive(Debug)]
pub(crate) struct Shared(Mutex<State>);

impl Shared {
    /// A file system over `tree`, keeping removed files in `graves` (on the same file system).
    pub(crate) fn new(tree: PathBuf, graves: PathBuf) -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node {
                kind: FileType::Directory,
                place: Place::Root,
            },
        );
        Shared(Mutex::new(State {
            tree,
            graves,
            nodes,
            names: HashMap::new(),
            next_ino: ROOT + 1,
            next_grave: 0,
            files: HashMap::new(),
            journal: Journal::default(),
            handles: HashMap::new(),
            next_fh: 1,
            stats: Stats::default(),
        }))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn kind_of(t: std::fs::FileType) -> FileType {
    if t.is_dir() {
        FileType::Directory
    } else if t.is_symlink() {
        FileType::Symlink
    } else {
        FileType::RegularFile
    }
}

fn time(secs: i64, nanos: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos as u32)
    } else {
        UNIX_EPOCH
    }
}

fn attr(ino: Ino, m: &std::fs::Metadata) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
        size: m.size(),
        blocks: m.blocks(),
        atime: time(m.atime(), m.atime_nsec()),
        mtime: time(m.mtime(), m.mtime_nsec()),
        ctime: time(m.ctime(), m.ctime_nsec()),
        crtime: UNIX_EPOCH,
        kind: kind_of(m.file_type()),
        perm: (m.mode() & 0o7777) as u16,
        nlink: m.nlink() as u32,
        uid: m.uid(),
        gid: m.gid(),
        rdev: m.rdev() as u32,
        blksize: 4096,
        flags: 0,
    }
}

fn errno(e: io::Error) -> Errno {
    Errno::from(e)
}

impl State {
    fn path(&self, ino: Ino) -> Option<PathBuf> {
        match &self.nodes.get(&ino)?.place {
            Place::Root => Some(self.tree.clone()),
            Place::In(parent, name) => Some(self.path(*parent)?.join(name)),
            Place::Grave(p) => Some(p.clone()),
        }
    }

    fn dir_path(&self, ino: Ino) -> Result<PathBuf, Errno> {
        self.path(ino).ok_or(Errno::ENOENT)
    }

    /// The node of `name` in `parent`, added when the directory underneath has it.
    fn child(&mut self, parent: Ino, name: &OsStr) -> Result<(Ino, std::fs::Metadata), Errno> {
        let path = self.dir_path(parent)?.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(errno)?;
        let key = (parent, name.to_os_string());
        if let Some(&ino) = self.names.get(&key)
            && self.nodes.contains_key(&ino)
        {
            return Ok((ino, meta));
        }
        let ino = self.add(parent, name, kind_of(meta.file_type()));
        Ok((ino, meta))
    }

    fn add(&mut self, parent: Ino, name: &OsStr, kind: FileType) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(
            ino,
            Node {
                kind,
                place: Place::In(parent, name.to_os_string()),
            },
        );
        self.names.insert((parent, name.to_os_string()), ino);
        ino
    }

    fn grave(&mut self) -> PathBuf {
        self.next_grave += 1;
        self.graves.join(self.next_grave.to_string())
    }

    /// Saves the synced bytes of `[from, to)` that are not saved yet, before they change; the
    /// first change since a sync also records the file's synced length.
    fn preserve(&mut self, ino: Ino, file: &File, from: u64, to: u64) -> io::Result<()> {
        let undo = match self.files.get_mut(&ino) {
            Some(u) => u,
            None => {
                let len = file.metadata()?.len();
                self.files.entry(ino).or_insert(FileUndo::new(len))
            }
        };
        for (a, b) in undo.unsaved(from, to) {
            let mut buf = vec![0u8; (b - a) as usize];
            file.read_exact_at(&mut buf, a)?;
            undo.save(a, buf);
        }
        Ok(())
    }

    fn handle(&self, fh: FileHandle) -> Result<(Ino, Arc<File>), Errno> {
        self.handles
            .get(&fh.0)
            .map(|h| (h.ino, h.file.clone()))
            .ok_or(Errno::EBADF)
    }

    fn open_handle(&mut self, ino: Ino, file: File) -> u64 {
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(
            fh,
            Handle {
                ino,
                file: Arc::new(file),
            },
        );
        fh
    }

    /// Removes `ino` and everything below it from the table.
    fn forget_subtree(&mut self, ino: Ino) {
        let under: Vec<Ino> = self
            .nodes
            .keys()
            .copied()
            .filter(|&n| self.is_under(n, ino))
            .collect();
        for n in under {
            if let Some(Node {
                place: Place::In(p, name),
                ..
            }) = self.nodes.remove(&n)
                && self.names.get(&(p, name.clone())) == Some(&n)
            {
                self.names.remove(&(p, name));
            }
            self.files.remove(&n);
        }
    }

    fn is_under(&self, mut n: Ino, top: Ino) -> bool {
        loop {
            if n == top {
                return true;
            }
            match self.nodes.get(&n).map(|x| &x.place) {
                Some(Place::In(p, _)) => n = *p,
                _ => return false,
            }
        }
    }

    /// Puts node `ino` at `name` in `parent` (where the directory underneath now has it).
    fn place(&mut self, ino: Ino, parent: Ino, name: OsString) {
        match self.nodes.get_mut(&ino) {
            Some(node) => node.place = Place::In(parent, name.clone()),
            None => {
                let kind = self
                    .path(parent)
                    .and_then(|p| std::fs::symlink_metadata(p.join(&name)).ok())
                    .map_or(FileType::RegularFile, |m| kind_of(m.file_type()));
                self.nodes.insert(
                    ino,
                    Node {
                        kind,
                        place: Place::In(parent, name.clone()),
                    },
                );
            }
        }
        self.names.insert((parent, name), ino);
    }

    /// Puts back what a directory change did; errors name the change.
    fn undo(&mut self, change: Change) -> io::Result<()> {
        match change {
            Change::Created { at, ino } => {
                let path = self.dir_path(at.0).map_err(io_of)?.join(&at.1);
                let is_dir = self
                    .nodes
                    .get(&ino)
                    .is_some_and(|n| n.kind == FileType::Directory);
                let gone = if is_dir {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                ignore_missing(gone)?;
                self.forget_subtree(ino);
                self.names.remove(&at);
            }
            Change::Removed { at, ino, grave } => {
                let path = self.dir_path(at.0).map_err(io_of)?.join(&at.1);
                std::fs::rename(&grave, &path)?;
                self.place(ino, at.0, at.1);
            }
            Change::Renamed {
                from,
                to,
                ino,
                replaced,
            } => {
                let to_path = self.dir_path(to.0).map_err(io_of)?.join(&to.1);
                let from_path = self.dir_path(from.0).map_err(io_of)?.join(&from.1);
                std::fs::rename(&to_path, &from_path)?;
                self.names.remove(&to);
                self.place(ino, from.0, from.1);
                if let Some((old, grave)) = replaced {
                    std::fs::rename(&grave, &to_path)?;
                    self.place(old, to.0, to.1);
                }
            }
        }
        Ok(())
    }

    /// Drops every write and directory change no sync covered.
    pub(crate) fn cut(&mut self) -> Result<CutReport, io::Error> {
        let mut report = CutReport::default();
        let files = std::mem::take(&mut self.files);
        for (ino, undo) in files {
            let Some(path) = self.path(ino) else { continue };
            let file = match OpenOptions::new().write(true).open(&path) {
                Ok(f) => f,
                // Its removal lasted: nothing to put back.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(with_path(e, &path)),
            };
            let len = file.metadata().map_err(|e| with_path(e, &path))?.len();
            file.set_len(undo.synced_len)
                .map_err(|e| with_path(e, &path))?;
            for (offset, bytes) in undo.saved() {
                file.write_all_at(bytes, offset)
                    .map_err(|e| with_path(e, &path))?;
            }
            report.files_reverted += 1;
            report.bytes_dropped += len.saturating_sub(undo.synced_len) + undo.saved_bytes();
        }
        for change in self.journal.take_for_undo() {
            let what = format!("{change:?}");
            self.undo(change)
                .map_err(|e| io::Error::new(e.kind(), format!("undoing {what}: {e}")))?;
            report.changes_undone += 1;
        }
        self.stats.cuts += 1;
        Ok(report)
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.clone()
    }

    /// Makes `dir`'s changes last; removed files whose removal lasts are deleted for good.
    fn dir_synced(&mut self, dir: Ino) -> io::Result<()> {
        for change in self.journal.synced(dir) {
            let gone = match change {
                Change::Removed { ino, grave, .. } => Some((ino, grave)),
                Change::Renamed { replaced, .. } => replaced,
                Change::Created { .. } => None,
            };
            if let Some((ino, grave)) = gone {
                let dir = self
                    .nodes
                    .get(&ino)
                    .is_some_and(|n| n.kind == FileType::Directory);
                if dir {
                    ignore_missing(std::fs::remove_dir_all(&grave))?;
                } else {
                    ignore_missing(std::fs::remove_file(&grave))?;
                }
                if matches!(
                    self.nodes.get(&ino).map(|n| &n.place),
                    Some(Place::Grave(_))
                ) {
                    self.nodes.remove(&ino);
                }
                self.files.remove(&ino);
            }
        }
        Ok(())
    }

    fn set_size(&mut self, ino: Ino, file: &File, size: u64) -> io::Result<()> {
        let len = file.metadata()?.len();
        self.preserve(ino, file, size, len)?;
        file.set_len(size)
    }
}

fn io_of(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.code())
}

fn ignore_missing(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The FUSE side: requests from the kernel.
#[derive(Debug)]
pub(crate) struct PowerLossFs {
    pub(crate) shared: Arc<Shared>,
    /// How long each fsync takes, as a disk's flush does.
    pub(crate) sync_latency: Duration,
}

impl PowerLossFs {
    /// Waits as long as a disk's flush takes; the sync takes effect after it.
    fn sync_wait(&self) {
        if !self.sync_latency.is_zero() {
            std::thread::sleep(self.sync_latency);
        }
    }
}

mod ops;
