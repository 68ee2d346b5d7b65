//! The writes of one group's state machine.

use super::{DataFamily, Family, Op, keys};
use crate::types::GroupId;

/// Writes of one group's state machine, committed atomically with the group's applied index.
#[derive(Debug)]
pub struct GroupBatch {
    group: GroupId,
    pub(crate) ops: Vec<Op>,
    /// Set by [`GroupBatch::release_log`].
    pub(crate) released: Option<u64>,
}

impl GroupBatch {
    pub(crate) fn new(group: GroupId) -> Self {
        Self {
            group,
            ops: Vec::new(),
            released: None,
        }
    }

    /// In a group whose log is its data ([`crate::GroupSettings::log_is_data`]): the state
    /// machine no longer needs the log entries up to `upto`, inclusive. They are deleted once
    /// openraft has purged them too, and snapshots no longer carry them. The mark only moves
    /// forward.
    pub fn release_log(&mut self, upto: u64) {
        if self.released.is_some_and(|r| r >= upto) {
            return;
        }
        self.released = Some(upto);
        self.ops.push(Op::Put(
            Family::RaftMeta,
            keys::meta_key(self.group, keys::META_RELEASED).to_vec(),
            upto.to_be_bytes().to_vec(),
        ));
    }

    pub fn put(&mut self, family: DataFamily, key: &[u8], value: &[u8]) {
        self.ops.push(Op::Put(
            Family::Data(family),
            keys::data_key(self.group, key),
            value.to_vec(),
        ));
    }

    pub fn delete(&mut self, family: DataFamily, key: &[u8]) {
        self.ops.push(Op::Delete(
            Family::Data(family),
            keys::data_key(self.group, key),
        ));
    }

    /// Deletes every key in `[from, to)` of the group's part of `family`.
    pub fn delete_range(&mut self, family: DataFamily, from: &[u8], to: &[u8]) {
        self.ops.push(Op::DeleteRange(
            Family::Data(family),
            keys::data_key(self.group, from),
            keys::data_key(self.group, to),
        ));
    }

    /// Bytes queued so far.
    pub fn size(&self) -> usize {
        self.ops.iter().map(Op::size).sum()
    }
}
