//! Key layout of the node's RocksDB.
//!
//! Every key starts with the group id in big-endian, so one group's keys are one contiguous
//! range in each column family and a group is deleted with one range delete per family.
//!
//! | family      | key                          | value                                   |
//! |-------------|------------------------------|-----------------------------------------|
//! | raft_log    | group ‖ index (BE u64)       | log entry, or its log id and where its data is in a segment |
//! | raft_meta   | group ‖ tag                  | vote, last purged log id, committed, group registration, released log index |
//! | sm_meta     | group ‖ tag                  | last applied log id, last membership, snapshot-install marker |
//! | records, shard_meta, controller | group ‖ application key | written by the group's state machine |

use crate::types::GroupId;

pub(crate) const GROUP_PREFIX_LEN: usize = 8;

pub(crate) const META_VOTE: u8 = 1;
pub(crate) const META_PURGED: u8 = 2;
pub(crate) const META_COMMITTED: u8 = 3;
pub(crate) const META_REGISTRATION: u8 = 4;
/// Index up to which a log-is-data group's state machine released its log entries.
pub(crate) const META_RELEASED: u8 = 5;

/// Key in raft_meta of the store's format version. It lies in the range of the reserved group
/// `u64::MAX`, so no group's keys or range deletes reach it.
pub(crate) const STORE_FORMAT_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xffformat";

/// Key in raft_meta of how far the segments were last synced (a `SyncMark`), in the reserved
/// group like the format marker.
pub(crate) const SEGMENTS_SYNCED_KEY: &[u8] = b"\xff\xff\xff\xff\xff\xff\xff\xffsegsync";

pub(crate) const SM_APPLIED: u8 = 1;
pub(crate) const SM_MEMBERSHIP: u8 = 2;
pub(crate) const SM_INSTALLING: u8 = 3;

pub(crate) fn group_prefix(group: GroupId) -> [u8; 8] {
    group.0.to_be_bytes()
}

/// The first key after every key of `group`, or `None` for the last possible group.
/// Group `u64::MAX` is reserved so that every group has an end key.
pub(crate) fn group_end(group: GroupId) -> Vec<u8> {
    group.0.saturating_add(1).to_be_bytes().to_vec()
}

/// The largest group id a node accepts.
pub(crate) const MAX_GROUP_ID: u64 = u64::MAX - 1;

pub(crate) fn log_key(group: GroupId, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&group.0.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

pub(crate) fn log_index_of(key: &[u8]) -> Option<u64> {
    let idx: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(idx))
}

pub(crate) fn group_of(key: &[u8]) -> Option<GroupId> {
    let g: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(GroupId(u64::from_be_bytes(g)))
}

pub(crate) fn meta_key(group: GroupId, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&group.0.to_be_bytes());
    k[8] = tag;
    k
}

pub(crate) fn data_key(group: GroupId, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&group.0.to_be_bytes());
    k.extend_from_slice(key);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_group_then_index() {
        let a = log_key(GroupId(1), 300);
        let b = log_key(GroupId(1), 301);
        let c = log_key(GroupId(2), 0);
        assert!(a < b && b < c);
        assert!(c.as_slice() >= group_end(GroupId(1)).as_slice());
        assert_eq!(log_index_of(&b), Some(301));
        assert_eq!(group_of(&c), Some(GroupId(2)));
    }
}
