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

struct Builder {
    log_is_data: bool,
}

/// Keeps a test's store alive and closes it deterministically: the log writer's threads are
/// joined and the database is closed before the test returns, never at process exit.
struct StoreGuard {
    store: NodeStore,
    _dir: tempfile::TempDir,
}

impl Drop for StoreGuard {
    fn drop(&mut self) {
        self.store.shutdown();
    }
}

impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, StoreGuard> for Builder {
    async fn build(
        &self,
    ) -> Result<(StoreGuard, GroupLogStore, GroupStateMachine), openraft::StorageError<TypeConfig>>
    {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = NodeStore::open(dir.path(), GroupCommit::On).expect("open store");
        // A group id other than 0, so that keys of neighbouring groups would show up in any
        // range that is off by one.
        let group = GroupId(42);
        let log =
            GroupLogStore::new(store.clone(), group, self.log_is_data, 1 << 20).expect("log store");
        let sm = GroupStateMachine::new(
            store.clone(),
            group,
            Box::new(NoopMachine),
            64 << 10,
            self.log_is_data,
            log.flushed(),
        )
        .expect("state machine");
        Ok((StoreGuard { store, _dir: dir }, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rocksdb_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder { log_is_data: false })
        .await
        .expect("storage suite");
}

/// A group whose log is its data keeps purged entries until its state machine releases them;
/// openraft must not see the difference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_is_data_store_passes_openraft_storage_suite() {
    Suite::test_all(Builder { log_is_data: true })
        .await
        .expect("storage suite");
}
