//! The version of the stored layout, checked when a store is opened.

use rocksdb::IteratorMode;

use super::{Family, StoreInner, keys};
use crate::error::StorageError;

/// The layout of the stored data. Version 3: the data of normal log entries is in segment
/// files, the raft_log family holds pointers to it. Version 2: shard records are stored one key
/// per log entry, each entry whole in raft_log. Version 1 (one key per record) had no marker.
pub(crate) const STORE_FORMAT: u32 = 3;

/// Refuses a store written in another format; marks a new store with [`STORE_FORMAT`].
pub(super) fn check_format(inner: &StoreInner) -> Result<(), StorageError> {
    let meta = inner.cf(Family::RaftMeta);
    let found = match inner.db.get_cf(meta, keys::STORE_FORMAT_KEY)? {
        Some(raw) => {
            let raw: [u8; 4] = raw.as_slice().try_into().map_err(|_| {
                StorageError::corrupt("store format marker", format!("{} bytes", raw.len()))
            })?;
            u32::from_be_bytes(raw)
        }
        None => {
            let mut it = inner.db.iterator_cf(meta, IteratorMode::Start);
            if it.next().transpose()?.is_some() {
                1
            } else {
                inner
                    .db
                    .put_cf(meta, keys::STORE_FORMAT_KEY, STORE_FORMAT.to_be_bytes())?;
                inner.db.flush_wal(true)?;
                STORE_FORMAT
            }
        }
    };
    if found != STORE_FORMAT {
        return Err(StorageError::Format {
            path: inner.path.display().to_string(),
            found,
            expected: STORE_FORMAT,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{GroupCommit, NodeStore};
    use crate::types::GroupId;

    #[test]
    fn a_store_without_the_format_marker_is_refused_and_a_new_one_is_marked() {
        let dir = tempfile::tempdir().expect("temp dir");
        // A new store is marked and opens again.
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("opens");
        store.shutdown();
        drop(store);
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("opens again");
        // Take the marker away, leaving a group's metadata as an older build would have.
        let meta = store.inner.cf(Family::RaftMeta);
        store
            .inner
            .db
            .put_cf(meta, keys::meta_key(GroupId(1), keys::META_VOTE), b"v")
            .expect("put");
        store
            .inner
            .db
            .delete_cf(meta, keys::STORE_FORMAT_KEY)
            .expect("delete");
        store.inner.db.flush_wal(true).expect("sync");
        store.shutdown();
        drop(store);
        let err = NodeStore::open(dir.path(), GroupCommit::On).expect_err("older format");
        let msg = err.to_string();
        assert!(
            msg.contains("format 1")
                && msg.contains(&format!("format {STORE_FORMAT}"))
                && msg.contains("move the directory"),
            "{msg}"
        );
    }
}
