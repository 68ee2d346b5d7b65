//! The record store: the data of normal log entries, in append-only segment files.
//!
//! RocksDB used to hold every log entry whole. An entry's bytes were then written three times
//! on each replica: to the WAL, into the memtable, and into a blob file when the memtable was
//! flushed, with a checksum for each. Here an entry's data is written once, to the end of the
//! node's active segment file, and the raft_log family keeps a small pointer to it (segment,
//! offset, length, CRC32C of the data). Every group of the node appends to the same active
//! segment, so one `fdatasync` covers them all; a segment is sealed at [`SEGMENT_BYTES`] and a new
//! one started.
//!
//! **Writing.** An append copies its data into the active segment's tail, a reused
//! block-aligned buffer, and is readable from there at once. The log writer's syncer writes
//! what was appended (the tail's new bytes, handed over as a chunk; the tail keeps its last,
//! partly filled block, written again by the next sync with what follows it) with O_DIRECT, so
//! no page-cache page is filled (on the virtual machines this runs on, the first touch of each
//! new page-cache page cost a third of the machine at 50 MB/s per node). Readers find bytes not
//! yet written in the tail or a chunk, bytes written recently in the record cache (the syncer
//! copies each chunk there once it is synced, see [`super::record_cache`]), and the rest in the
//! file.
//!
//! **Durability.** The log writer's sync first writes and syncs every segment appended to since
//! its previous sync, then records how far that covered (a [`SyncMark`]) in the WAL and syncs the
//! WAL. An
//! append is acknowledged only after both, so an acknowledged entry's pointer and data are on
//! disk. A pointer can reach the disk before its data (the kernel writes the WAL's pages back
//! whenever it likes), but only for entries never acknowledged: on open, entries past the mark
//! whose data does not match its CRC are cut off their group's log, the way a torn WAL tail is.
//!
//! **Reclaiming space.** A group's pointers lie in segments whose ids never decrease with the
//! entry's index (appends always go to the newest segment; a truncation deletes the later
//! entries before they are written again). So the segment of a group's first pointer bounds all
//! of its pointers from below, and a sealed segment older than every group's first pointer is
//! garbage. Each group's `first` in the segments' state tracks that bound, lowered by appends
//! and raised only by [`Segments::finish_rescan`] after entries were deleted. Entries installed
//! from a snapshot are kept inline in RocksDB, so they never point into a segment.
//!
//! A segment is unlinked only after a sync made the deletions that freed it durable, so no
//! pointer that a crash could bring back refers to a missing file; and never while a snapshot is
//! being built from a point-in-time view that may still hold pointers into it ([`Segments::pin`]).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::record_cache::RecordCache;
use crate::error::StorageError;
use crate::types::GroupId;

/// Size at which the active segment is sealed and a new one started.
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;

const SUFFIX: &str = ".seg";

/// Where a log entry's data lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pointer {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    /// CRC32C of the data.
    pub crc: u32,
}

impl Pointer {
    fn end(&self) -> u64 {
        self.offset + u64::from(self.len)
    }
}

/// How far the segments were synced: everything before `offset` in `segment`, and every
/// earlier segment whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SyncMark {
    pub segment: u64,
    pub offset: u64,
}

impl SyncMark {
    /// Whether the data at `ptr` was synced when this mark was taken.
    pub(crate) fn covers(&self, ptr: &Pointer) -> bool {
        ptr.segment < self.segment || (ptr.segment == self.segment && ptr.end() <= self.offset)
    }
}

/// Why a pointer could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The segment was reclaimed: the entry was deleted after the reader found its pointer.
    #[error("segment {0} was reclaimed")]
    Gone(u64),
    #[error("segment {segment} at {offset}: {reason}")]
    Corrupt {
        segment: u64,
        offset: u64,
        reason: String,
    },
    #[error("reading segment {segment}: {source}")]
    Io { segment: u64, source: io::Error },
}

impl From<ReadError> for StorageError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Io { source, .. } => StorageError::Io(source),
            other => StorageError::corrupt("log entry data", other),
        }
    }
}

/// What the store knows about one group's pointers.
#[derive(Debug, Default)]
struct GroupSegs {
    /// No pointer of the group lies in a segment before this one (`None`: it has none).
    first: Option<u64>,
    /// No pointer of the group has an index below this one: where a rescan starts.
    hint: u64,
    /// Appends whose data is written but whose pointers may not be visible in RocksDB yet:
    /// (segment, first index).
    inflight: Vec<(u64, u64)>,
    /// Appends started so far.
    appends: u64,
}

/// Writes of the active segment are whole blocks of this size, at offsets that are multiples
/// of it, from a buffer aligned to it (what O_DIRECT asks).
const BLOCK: usize = 4096;

/// A reused, block-aligned buffer of a segment's bytes from a block boundary on.
struct BlockBuf {
    raw: Vec<u8>,
    /// Where the aligned part of `raw` starts.
    start: usize,
    /// Bytes held, from `start`.
    len: usize,
}

impl BlockBuf {
    fn new(capacity: usize) -> Self {
        let raw = vec![0u8; capacity + BLOCK];
        let start = raw.as_ptr().align_offset(BLOCK);
        Self { raw, start, len: 0 }
    }

    fn capacity(&self) -> usize {
        self.raw.len() - self.start
    }

    /// Makes room for `more` bytes after those held (and the padding to a whole block).
    fn reserve(&mut self, more: usize) {
        let need = (self.len + more).next_multiple_of(BLOCK);
        if need > self.capacity() {
            let mut bigger = Self::new(need.next_power_of_two().max(2 * self.capacity()));
            bigger.raw[bigger.start..bigger.start + self.len].copy_from_slice(self.held());
            bigger.len = self.len;
            *self = bigger;
        }
    }

    fn held(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn push(&mut self, data: &[u8]) {
        let at = self.start + self.len;
        self.raw[at..at + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Zero-pads the bytes held to whole blocks.
    fn pad(&mut self) {
        let padded = self.len.next_multiple_of(BLOCK);
        self.raw[self.start + self.len..self.start + padded].fill(0);
    }

    /// The bytes held, with their padding ([`BlockBuf::pad`]).
    fn blocks(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len.next_multiple_of(BLOCK)]
    }
}

/// Appended bytes on their way to a segment file: readers find them here until the write is
/// done.
struct Chunk {
    segment: u64,
    file: Arc<File>,
    /// File offset of the first byte, a block boundary.
    start: u64,
    buf: BlockBuf,
}

impl Chunk {
    fn holds(&self, ptr: &Pointer) -> bool {
        ptr.segment == self.segment
            && ptr.offset >= self.start
            && ptr.end() <= self.start + self.buf.len as u64
    }

    fn copy(&self, ptr: &Pointer) -> Bytes {
        let from = (ptr.offset - self.start) as usize;
        Bytes::copy_from_slice(&self.buf.held()[from..from + ptr.len as usize])
    }
}

struct Active {
    id: u64,
    /// Opened for writing, with O_DIRECT where the file system has it.
    file: Arc<File>,
    len: u64,
    /// The active segment's bytes from `tail_start` (a block boundary) to `len`: the last
    /// block handed to the syncer, which is written again with what follows it, and everything
    /// appended since.
    tail: BlockBuf,
    tail_start: u64,
    /// `len` when the tail was last handed to the syncer.
    handed: u64,
    /// Bytes handed to the syncer and not yet written, oldest first.
    chunks: Vec<Arc<Chunk>>,
    /// Buffers of written chunks, for the next tails.
    spare: Vec<BlockBuf>,
    groups: HashMap<GroupId, GroupSegs>,
}

impl Active {
    /// Hands the tail's new bytes to the syncer; the tail keeps its last, partly filled block.
    fn hand_over(&mut self) {
        if self.len == self.handed {
            return;
        }
        let whole = self.tail.len / BLOCK * BLOCK;
        let mut next = self.spare.pop().unwrap_or_else(|| BlockBuf::new(1 << 20));
        next.len = 0;
        next.reserve(self.tail.len - whole);
        next.push(&self.tail.held()[whole..]);
        let mut buf = std::mem::replace(&mut self.tail, next);
        buf.pad();
        self.chunks.push(Arc::new(Chunk {
            segment: self.id,
            file: self.file.clone(),
            start: self.tail_start,
            buf,
        }));
        self.tail_start += whole as u64;
        self.handed = self.len;
    }
}

/// The node's segment files.
pub(crate) struct Segments {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Every segment that can be read, by id.
    files: RwLock<BTreeMap<u64, Arc<File>>>,
    /// Snapshot builds in progress: while any runs, no segment is unlinked.
    pins: AtomicUsize,
    segment_bytes: u64,
    /// The newest bytes written to the files.
    cache: RecordCache,
    /// Reads that went to a file.
    file_reads: AtomicU64,
}

/// How [`Segments::read`] found the data it returned, counted since the store was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordReads {
    /// Reads answered from the record cache.
    pub cache_hits: u64,
    /// Reads of a segment file (the record cache did not hold the whole entry, or is off).
    pub file_reads: u64,
}

impl std::fmt::Debug for Segments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segments").field("dir", &self.dir).finish()
    }
}

/// `data`, read from `ptr`, if it matches the pointer's CRC.
fn check(ptr: &Pointer, data: Bytes) -> Result<Bytes, ReadError> {
    let crc = crc32c::crc32c(&data);
    if crc != ptr.crc {
        return Err(ReadError::Corrupt {
            segment: ptr.segment,
            offset: ptr.offset,
            reason: format!(
                "{} bytes with CRC32C {crc:08x}, expected {:08x}",
                ptr.len, ptr.crc
            ),
        });
    }
    Ok(data)
}

/// Marks an append in flight until it is dropped ([`Segments::append`]).
pub(crate) struct Inflight<'a> {
    segments: &'a Segments,
    group: GroupId,
    at: (u64, u64),
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut active = self.segments.lock();
        if let Some(g) = active.groups.get_mut(&self.group)
            && let Some(pos) = g.inflight.iter().position(|x| *x == self.at)
        {
            g.inflight.swap_remove(pos);
        }
    }
}

/// Keeps segments from being unlinked while it lives ([`Segments::pin`]).
pub(crate) struct Pin(Arc<Segments>);

impl Drop for Pin {
    fn drop(&mut self) {
        self.0.pins.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Taken by [`Segments::begin_rescan`], consumed by [`Segments::finish_rescan`].
#[derive(Debug)]
pub(crate) struct Rescan {
    group: GroupId,
    /// Where the scan starts.
    pub from: u64,
    appends: u64,
    active: u64,
    /// The lowest (segment, index) of the appends in flight when the scan began.
    inflight: Option<(u64, u64)>,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}{SUFFIX}"))
}

/// Creates segment `id`; returns it opened for writing (with O_DIRECT where the file system
/// has it) and opened for reading (through the page cache).
fn create_segment(dir: &Path, id: u64) -> io::Result<(File, File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = segment_path(dir, id);
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let writer = match direct {
        Ok(f) => f,
        // A file system without O_DIRECT (tmpfs): buffered writes of the same blocks.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?,
        Err(e) => return Err(e),
    };
    let reader = File::open(&path)?;
    // The new file's directory entry must survive a crash as much as its data.
    File::open(dir)?.sync_all()?;
    Ok((writer, reader))
}

impl Segments {
    /// Opens the segments in `dir` (creating it) and starts a new active segment after them,
    /// with a record cache of `cache_bytes` (0: none).
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        cache_bytes: usize,
    ) -> Result<Self, StorageError> {
        super::dirs::create_dir_durable(dir)?;
        let mut files = BTreeMap::new();
        for item in std::fs::read_dir(dir)? {
            let item = item?;
            let name = item.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(SUFFIX))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let file = std::fs::OpenOptions::new().read(true).open(item.path())?;
            files.insert(id, Arc::new(file));
        }
        let id = files.keys().next_back().map_or(1, |last| last + 1);
        let (file, reader) = create_segment(dir, id)?;
        files.insert(id, Arc::new(reader));
        Ok(Self {
            dir: dir.to_path_buf(),
            active: Mutex::new(Active {
                id,
                file: Arc::new(file),
                len: 0,
                tail: BlockBuf::new(1 << 20),
                tail_start: 0,
                handed: 0,
                chunks: Vec::new(),
                spare: Vec::new(),
                groups: HashMap::new(),
            }),
            files: RwLock::new(files),
            pins: AtomicUsize::new(0),
            segment_bytes,
            cache: RecordCache::new(cache_bytes),
            file_reads: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends the data of `group`'s entries (index and data, in index order) to the active
    /// segment and returns where each went. The data is readable at once; the syncer writes it
    /// to the file ([`Segments::sync`]). The returned guard marks the append in flight until the
    /// pointers are written to RocksDB: drop it after that (or after it failed).
    pub(crate) fn append<'a>(
        &'a self,
        group: GroupId,
        entries: &[(u64, &Bytes)],
    ) -> Result<(Vec<Pointer>, Inflight<'a>), StorageError> {
        let total: u64 = entries.iter().map(|(_, d)| d.len() as u64).sum();
        let first_index = entries.first().map_or(0, |(i, _)| *i);
        let mut active = self.lock();
        if active.len > 0 && active.len + total > self.segment_bytes {
            self.rotate(&mut active)?;
        }
        let mut pointers = Vec::with_capacity(entries.len());
        let mut offset = active.len;
        active.tail.reserve(total as usize);
        for (_, data) in entries {
            let len = u32::try_from(data.len()).map_err(|_| {
                StorageError::corrupt("log entry", format!("{} bytes, over 4 GiB", data.len()))
            })?;
            active.tail.push(data);
            pointers.push(Pointer {
                segment: active.id,
                offset,
                len,
                crc: crc32c::crc32c(data),
            });
            offset += u64::from(len);
        }
        active.len = offset;
        let id = active.id;
        let g = active.groups.entry(group).or_insert_with(|| GroupSegs {
            hint: first_index,
            ..Default::default()
        });
        g.first = Some(g.first.map_or(id, |f| f.min(id)));
        g.hint = g.hint.min(first_index);
        g.inflight.push((id, first_index));
        g.appends += 1;
        Ok((
            pointers,
            Inflight {
                segments: self,
                group,
                at: (id, first_index),
            },
        ))
    }

    /// Seals the active segment and starts the next one.
    fn rotate(&self, active: &mut Active) -> Result<(), StorageError> {
        let id = active.id + 1;
        let (file, reader) = create_segment(&self.dir, id)?;
        self.files
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::new(reader));
        // The sealed segment's last bytes go to the syncer with the rest.
        active.hand_over();
        active.id = id;
        active.file = Arc::new(file);
        active.len = 0;
        active.tail.len = 0;
        active.tail_start = 0;
        active.handed = 0;
        Ok(())
    }

    /// Reads the data at `ptr` and checks it against its CRC.
    pub(crate) fn read(&self, ptr: &Pointer) -> Result<Bytes, ReadError> {
        {
            // Not written to its file yet?
            let active = self.lock();
            if ptr.segment == active.id && ptr.offset >= active.tail_start {
                let from = (ptr.offset - active.tail_start) as usize;
                let held = active.tail.held();
                if let Some(data) = held.get(from..from + ptr.len as usize) {
                    return check(ptr, Bytes::copy_from_slice(data));
                }
            } else if let Some(chunk) = active.chunks.iter().rev().find(|c| c.holds(ptr)) {
                return check(ptr, chunk.copy(ptr));
            }
        }
        if let Some(data) = self.cache.get(ptr.segment, ptr.offset, ptr.len as usize) {
            match check(ptr, data) {
                Ok(data) => return Ok(data),
                // Cannot happen unless the cache is wrong: the file decides.
                Err(e) => tracing::warn!(
                    segment = ptr.segment,
                    offset = ptr.offset,
                    "record cache held bytes that fail the entry's check, reading the file: {e}"
                ),
            }
        }
        self.file_reads.fetch_add(1, Ordering::Relaxed);
        let file = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ptr.segment)
            .cloned()
            .ok_or(ReadError::Gone(ptr.segment))?;
        let mut buf = BytesMut::zeroed(ptr.len as usize);
        file.read_exact_at(&mut buf, ptr.offset).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                ReadError::Corrupt {
                    segment: ptr.segment,
                    offset: ptr.offset,
                    reason: format!("{} bytes past the end of the file", ptr.len),
                }
            } else {
                ReadError::Io {
                    segment: ptr.segment,
                    source: e,
                }
            }
        })?;
        check(ptr, buf.freeze())
    }

    /// Writes everything appended so far to the segment files and syncs them; returns how far
    /// that covered. Called by one thread at a time ([`super::StoreInner::sync`]), so the
    /// writes of a segment's shared blocks land in order.
    pub(crate) fn sync(&self) -> Result<SyncMark, StorageError> {
        let (chunks, mark) = {
            let mut active = self.lock();
            active.hand_over();
            let mark = SyncMark {
                segment: active.id,
                offset: active.len,
            };
            (active.chunks.clone(), mark)
        };
        let mut files: Vec<&Arc<File>> = Vec::new();
        for chunk in &chunks {
            chunk.file.write_all_at(chunk.buf.blocks(), chunk.start)?;
            if !files.iter().any(|f| Arc::ptr_eq(f, &chunk.file)) {
                files.push(&chunk.file);
            }
        }
        for file in files {
            file.sync_data()?;
        }
        // Into the cache before the chunks go, so that readers find the bytes in memory
        // throughout. No segment is unlinked meanwhile: that waits for a sync of its own, and
        // syncs run one at a time.
        for chunk in &chunks {
            self.cache
                .insert(chunk.segment, chunk.start, chunk.buf.held());
        }
        let mut active = self.lock();
        active
            .chunks
            .retain(|c| !chunks.iter().any(|w| Arc::ptr_eq(c, w)));
        drop(active);
        // Readers copy out under the lock and keep no chunk, so these are the last references.
        let spare: Vec<BlockBuf> = chunks
            .into_iter()
            .filter_map(|c| Arc::into_inner(c).map(|c| c.buf))
            .collect();
        let mut active = self.lock();
        for buf in spare {
            if active.spare.len() < 4 {
                active.spare.push(buf);
            }
        }
        Ok(mark)
    }

    /// Syncs the segments from `first` on as they are on disk. At open, the entries past the
    /// last sync mark whose data read back whole stay in the log; this makes them as durable as
    /// the rest before the next sync mark (which covers every older segment whole) says so.
    pub(crate) fn sync_from(&self, first: u64) -> Result<(), StorageError> {
        let files: Vec<Arc<File>> = self
            .files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(first..)
            .map(|(_, f)| f.clone())
            .collect();
        for file in files {
            file.sync_data()?;
        }
        Ok(())
    }

    /// Starts recomputing `group`'s first segment after some of its entries were deleted:
    /// the caller scans the group's log from [`Rescan::from`] for its first pointer, then calls
    /// [`Segments::finish_rescan`].
    pub(crate) fn begin_rescan(&self, group: GroupId) -> Rescan {
        let active = self.lock();
        let g = active.groups.get(&group);
        Rescan {
            group,
            from: g.map_or(0, |g| g.hint),
            appends: g.map_or(0, |g| g.appends),
            active: active.id,
            inflight: g.and_then(|g| g.inflight.iter().min().copied()),
        }
    }

    /// Records what the scan begun by `scan` found: the index and segment of the group's first
    /// pointer, or `None`.
    pub(crate) fn finish_rescan(&self, scan: Rescan, found: Option<(u64, u64)>) {
        let mut active = self.lock();
        let g = active.groups.entry(scan.group).or_default();
        // Appends in flight when the scan began may not have been visible to it, and appends
        // since went to the segment active then or later.
        let mut first = found.map(|(_, seg)| seg);
        let mut hint = found.map_or(u64::MAX, |(index, _)| index);
        if let Some((seg, index)) = scan.inflight {
            first = Some(first.map_or(seg, |f| f.min(seg)));
            hint = hint.min(index);
        }
        if g.appends != scan.appends {
            first = Some(first.map_or(scan.active, |f| f.min(scan.active)));
            hint = hint.min(g.hint);
        }
        g.first = first;
        g.hint = hint;
    }

    /// Forgets every pointer of `group`: its log was deleted whole.
    pub(crate) fn forget_group(&self, group: GroupId) {
        let mut active = self.lock();
        if active
            .groups
            .get(&group)
            .is_some_and(|g| g.inflight.is_empty())
        {
            active.groups.remove(&group);
        }
    }

    /// No pointer of `group` lies in a segment before this one.
    #[cfg(test)]
    pub(crate) fn group_first(&self, group: GroupId) -> Option<u64> {
        self.lock().groups.get(&group).and_then(|g| g.first)
    }

    /// Sealed segments that no group's pointers can reach.
    pub(crate) fn garbage(&self) -> Vec<u64> {
        let active = self.lock();
        let floor = active
            .groups
            .values()
            .filter_map(|g| g.first)
            .min()
            .unwrap_or(active.id)
            .min(active.id);
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .range(..floor)
            .map(|(id, _)| *id)
            .collect()
    }

    /// Keeps every segment in place until the pin is dropped.
    pub(crate) fn pin(self: &Arc<Self>) -> Pin {
        self.pins.fetch_add(1, Ordering::AcqRel);
        Pin(self.clone())
    }

    pub(crate) fn pinned(&self) -> bool {
        self.pins.load(Ordering::Acquire) > 0
    }

    /// Unlinks the segments `ids`. Readers holding one of them open finish their read.
    pub(crate) fn unlink(&self, ids: &[u64]) -> Result<(), StorageError> {
        self.lock().chunks.retain(|c| !ids.contains(&c.segment));
        self.cache.drop_segments(ids);
        for id in ids {
            self.files
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(id);
            match std::fs::remove_file(segment_path(&self.dir, *id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
            tracing::debug!(segment = id, "segment reclaimed");
        }
        Ok(())
    }

    /// How reads found their data so far.
    pub(crate) fn reads(&self) -> RecordReads {
        RecordReads {
            cache_hits: self.cache.hits(),
            file_reads: self.file_reads.load(Ordering::Relaxed),
        }
    }

    /// The record cache.
    #[cfg(test)]
    pub(crate) fn cache(&self) -> &RecordCache {
        &self.cache
    }

    /// Ids of the segments on disk, oldest first.
    #[cfg(test)]
    pub(crate) fn ids(&self) -> Vec<u64> {
        self.files
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .copied()
            .collect()
    }
}

#[cfg(test)]
mod tests;
