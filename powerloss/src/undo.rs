//! What a cut puts back: a file's bytes as of its last sync, and the directory changes no
//! directory sync covered. Pure bookkeeping; the file system does the reading and writing.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::path::PathBuf;

/// An inode number of the file system.
pub(crate) type Ino = u64;

/// A file's content as of its last fsync or fdatasync, where it has changed since.
///
/// Writes go straight to the file underneath; before a write (or a truncation, or a hole
/// punched) changes bytes that were synced, those bytes are saved here once. A cut shortens
/// the file to its synced length and writes the saved bytes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileUndo {
    /// The file's length at its last sync.
    pub synced_len: u64,
    /// Synced bytes changed since, by offset; the ranges do not overlap.
    saved: BTreeMap<u64, Vec<u8>>,
}

impl FileUndo {
    /// A file whose last sync left it `synced_len` bytes long, unchanged since.
    pub fn new(synced_len: u64) -> Self {
        Self {
            synced_len,
            saved: BTreeMap::new(),
        }
    }

    /// The parts of `[from, to)` that were synced and are not saved yet, in order: the bytes
    /// the caller must save (with [`FileUndo::save`]) before it changes that range.
    pub fn unsaved(&self, from: u64, to: u64) -> Vec<(u64, u64)> {
        let to = to.min(self.synced_len);
        let mut gaps = Vec::new();
        if from >= to {
            return gaps;
        }
        let mut at = from;
        // A saved range that starts before `from` may reach into it.
        let before = self.saved.range(..from).next_back();
        let overlapping = before.into_iter().chain(self.saved.range(from..to));
        for (&start, bytes) in overlapping {
            let end = start + bytes.len() as u64;
            if end <= at {
                continue;
            }
            if start > at {
                gaps.push((at, start.min(to)));
            }
            at = at.max(end);
            if at >= to {
                break;
            }
        }
        if at < to {
            gaps.push((at, to));
        }
        gaps
    }

    /// Keeps `bytes`, the synced content at `offset`, which must be a gap [`FileUndo::unsaved`]
    /// returned.
    pub fn save(&mut self, offset: u64, bytes: Vec<u8>) {
        if !bytes.is_empty() {
            self.saved.insert(offset, bytes);
        }
    }

    /// The saved bytes, by offset.
    pub fn saved(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.saved.iter().map(|(o, b)| (*o, b.as_slice()))
    }

    /// How many synced bytes were saved.
    pub fn saved_bytes(&self) -> u64 {
        self.saved.values().map(|b| b.len() as u64).sum()
    }
}

/// Where a directory entry is: a directory's inode and a name in it.
pub(crate) type Entry = (Ino, OsString);

/// A change to directories since they were last synced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// `ino` was created as `at`.
    Created { at: Entry, ino: Ino },
    /// `ino`, once `at`, was removed; it is kept at `grave` until the removal is synced.
    Removed { at: Entry, ino: Ino, grave: PathBuf },
    /// `ino` moved from `from` to `to`; what `to` held before is kept at its grave.
    Renamed {
        from: Entry,
        to: Entry,
        ino: Ino,
        replaced: Option<(Ino, PathBuf)>,
    },
}

impl Change {
    /// The directories that must be synced for the change to last.
    fn dirs(&self) -> BTreeSet<Ino> {
        match self {
            Change::Created { at, .. } | Change::Removed { at, .. } => BTreeSet::from([at.0]),
            Change::Renamed { from, to, .. } => BTreeSet::from([from.0, to.0]),
        }
    }
}

/// Directory changes, oldest first, each until every directory it touched was synced.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    pending: Vec<(Change, BTreeSet<Ino>)>,
}

impl Journal {
    pub fn record(&mut self, change: Change) {
        let dirs = change.dirs();
        self.pending.push((change, dirs));
    }

    /// Directory `dir` was synced: returns the changes that lasts now, oldest first.
    pub fn synced(&mut self, dir: Ino) -> Vec<Change> {
        let mut lasting = Vec::new();
        let mut kept = Vec::with_capacity(self.pending.len());
        for (change, mut dirs) in self.pending.drain(..) {
            dirs.remove(&dir);
            if dirs.is_empty() {
                lasting.push(change);
            } else {
                kept.push((change, dirs));
            }
        }
        self.pending = kept;
        lasting
    }

    /// Every change not made to last, newest first: what a cut undoes, in order.
    pub fn take_for_undo(&mut self) -> Vec<Change> {
        let mut out: Vec<Change> = self.pending.drain(..).map(|(c, _)| c).collect();
        out.reverse();
        out
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_bytes_not_saved_yet_need_saving() {
        let mut u = FileUndo::new(100);
        assert_eq!(u.unsaved(10, 20), vec![(10, 20)]);
        assert_eq!(
            u.unsaved(90, 150),
            vec![(90, 100)],
            "bytes past the synced length"
        );
        assert!(u.unsaved(100, 150).is_empty());
        u.save(10, vec![1; 10]);
        u.save(40, vec![2; 10]);
        assert!(u.unsaved(12, 18).is_empty());
        assert_eq!(u.unsaved(5, 15), vec![(5, 10)]);
        assert_eq!(u.unsaved(15, 45), vec![(20, 40)]);
        assert_eq!(u.unsaved(0, 100), vec![(0, 10), (20, 40), (50, 100)]);
        for (a, b) in u.unsaved(0, 100) {
            u.save(a, vec![0; (b - a) as usize]);
        }
        assert!(u.unsaved(0, 200).is_empty());
        assert_eq!(u.saved_bytes(), 100);
        let offsets: Vec<u64> = u.saved().map(|(o, _)| o).collect();
        assert_eq!(offsets, vec![0, 10, 20, 40, 50]);
    }

    #[test]
    fn a_change_lasts_once_every_directory_it_touched_was_synced() {
        let mut j = Journal::default();
        let name = |s: &str| OsString::from(s);
        j.record(Change::Created {
            at: (1, name("a")),
            ino: 10,
        });
        j.record(Change::Renamed {
            from: (1, name("a")),
            to: (2, name("b")),
            ino: 10,
            replaced: None,
        });
        j.record(Change::Created {
            at: (2, name("c")),
            ino: 11,
        });
        let lasting = j.synced(2);
        assert_eq!(
            lasting,
            vec![Change::Created {
                at: (2, name("c")),
                ino: 11
            }]
        );
        assert_eq!(j.len(), 2);
        let lasting = j.synced(1);
        assert_eq!(lasting.len(), 2, "both now: {lasting:?}");
        assert_eq!(j.len(), 0);

        j.record(Change::Created {
            at: (1, name("x")),
            ino: 12,
        });
        j.record(Change::Created {
            at: (1, name("y")),
            ino: 13,
        });
        let undo = j.take_for_undo();
        assert!(
            matches!(undo[0], Change::Created { ino: 13, .. }),
            "newest first"
        );
        assert_eq!(j.len(), 0);
    }
}
