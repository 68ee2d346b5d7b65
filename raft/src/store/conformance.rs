//! openraft's storage conformance suite, run against the RocksDB log store and the group
//! state machine.

use bytes::Bytes;
use openraft::testing::log::{StoreBuilder, Suite};

use super::log_store::GroupLogStore;
use super::state_machine::GroupStateMachine;
use super::{GroupBatch, GroupCommit, GroupView, NodeStore};
use crate::error::StorageError;
use crate::types::{AppliedEntry, GroupId, StateMachine, TypeConfig};

struct NoopMachine;

impl StateMachine for NoopMachine {
    fn apply(
        &mut self,
        _batch: &mut GroupBatch,
        _view: &GroupView,
        entries: &[AppliedEntry],
    ) -> Result<Vec<Bytes>, StorageError> {
        Ok(entries.iter().map(|_| Bytes::new()).collect())
    }

    fn restore(&mut self, _view: &GroupView) -> Result<(), StorageError> {
        Ok(())
    }
}

struct Builder;

impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<
        (tempfile::TempDir, GroupLogStore, GroupStateMachine),
        openraft::StorageError<TypeConfig>,
    > {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("open store");
        // A group id other than 0, so that keys of neighbouring groups would show up in any
        // range that is off by one.
        let group = GroupId(42);
        let log = GroupLogStore::new(store.clone(), group);
        let sm = GroupStateMachine::new(store, group, Box::new(NoopMachine), 64 << 10)
            .expect("state machine");
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder).await.expect("storage suite");
}
