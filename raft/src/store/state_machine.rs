//! openraft's state-machine side of a group: applies entries through the application's
//! [`StateMachine`](crate::StateMachine) and serves and installs snapshots.

use std::io;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, StoredMembership as OrStoredMembership};

use super::flushed::Flushed;
use super::keys::{self, SM_APPLIED, SM_INSTALLING, SM_MEMBERSHIP};
use super::snapshot::{self, SnapshotData};
use super::{DataFamily, Family, GroupBatch, GroupView, NodeStore, Op, encode};
use crate::types::{
    AppResponse, AppliedEntry, GroupId, LogId, SnapshotMeta, StateMachine, StoredMembership,
    TypeConfig,
};

type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotData>;

pub(crate) struct GroupStateMachine {
    store: NodeStore,
    group: GroupId,
    app: Box<dyn StateMachine>,
    view: GroupView,
    chunk_bytes: usize,
    log_is_data: bool,
    /// How far the group's log is synced here ([`Flushed`]).
    flushed: Arc<Flushed>,
}

impl GroupStateMachine {
    pub(crate) fn new(
        store: NodeStore,
        group: GroupId,
        mut app: Box<dyn StateMachine>,
        chunk_bytes: usize,
        log_is_data: bool,
        flushed: Arc<Flushed>,
    ) -> Result<Self, crate::error::StorageError> {
        let view = GroupView::new(store.clone(), group);
        app.restore(&view)?;
        app.applied();
        Ok(Self {
            store,
            group,
            app,
            view,
            chunk_bytes,
            log_is_data,
            flushed,
        })
    }

    fn read_applied(&self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok(snapshot::read_applied(
            |k| self.store.get(Family::SmMeta, k),
            self.group,
        )?)
    }

    /// Ops that reset the group's state machine to empty, marking an install in progress.
    fn begin_install_ops(group: GroupId) -> Vec<Op> {
        let mut ops = vec![
            Op::Put(
                Family::SmMeta,
                keys::meta_key(group, SM_INSTALLING).to_vec(),
                vec![1],
            ),
            Op::Delete(Family::SmMeta, keys::meta_key(group, SM_APPLIED).to_vec()),
            Op::Delete(
                Family::RaftMeta,
                keys::meta_key(group, keys::META_RELEASED).to_vec(),
            ),
        ];
        for f in DataFamily::ALL {
            ops.push(Op::DeleteRange(
                Family::Data(f),
                keys::group_prefix(group).to_vec(),
                keys::group_end(group),
            ));
        }
        ops
    }
}

/// If a snapshot install of `group` was cut short by a crash, the group's stored state is a
/// mix of old and new data. Returns the ops that reset the group to an empty replica (keeping
/// its vote) so that its leader sends it a snapshot again, or `None` if no install was cut short.
pub(crate) fn recover_interrupted_install(
    store: &NodeStore,
    group: GroupId,
) -> Result<Option<Vec<Op>>, crate::error::StorageError> {
    if store
        .get(Family::SmMeta, &keys::meta_key(group, SM_INSTALLING))?
        .is_none()
    {
        return Ok(None);
    }
    let from = keys::group_prefix(group).to_vec();
    let to = keys::group_end(group);
    let mut ops = vec![
        Op::DeleteRange(Family::RaftLog, from.clone(), to.clone()),
        Op::DeleteRange(Family::SmMeta, from.clone(), to.clone()),
        Op::Delete(
            Family::RaftMeta,
            keys::meta_key(group, keys::META_PURGED).to_vec(),
        ),
        Op::Delete(
            Family::RaftMeta,
            keys::meta_key(group, keys::META_COMMITTED).to_vec(),
        ),
        Op::Delete(
            Family::RaftMeta,
            keys::meta_key(group, keys::META_RELEASED).to_vec(),
        ),
    ];
    for f in DataFamily::ALL {
        ops.push(Op::DeleteRange(Family::Data(f), from.clone(), to.clone()));
    }
    Ok(Some(ops))
}

/// Builds snapshots of one group on demand.
pub(crate) struct GroupSnapshotBuilder {
    store: NodeStore,
    group: GroupId,
    chunk_bytes: usize,
    log_is_data: bool,
}

impl RaftSnapshotBuilder<TypeConfig> for GroupSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let (meta, snapshot) = self.live().await?;
        Ok(Snapshot { meta, snapshot })
    }
}

impl GroupSnapshotBuilder {
    /// A live snapshot of the group as applied now.
    async fn live(&self) -> io::Result<(SnapshotMeta, SnapshotData)> {
        snapshot::live_snapshot(
            self.store.clone(),
            self.group,
            self.chunk_bytes,
            self.log_is_data,
        )
        .await
    }
}

impl RaftStateMachine<TypeConfig> for GroupStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = GroupSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        self.read_applied()
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut items = Vec::new();
        while let Some(item) = entries.next().await {
            items.push(item?);
        }
        let Some(last) = items.last().map(|(e, _)| e.log_id) else {
            return Ok(());
        };

        let mut app_entries = Vec::new();
        let mut membership = None;
        for (entry, _) in &items {
            match &entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(data) => app_entries.push(AppliedEntry {
                    index: entry.log_id.index,
                    term: entry.log_id.leader_id.term,
                    data: data.0.clone(),
                }),
                EntryPayload::Membership(m) => {
                    membership = Some(OrStoredMembership::new(Some(entry.log_id), m.clone()));
                }
            }
        }

        let mut batch = GroupBatch::new(self.group);
        let responses = if app_entries.is_empty() {
            Vec::new()
        } else {
            self.app.apply(&mut batch, &self.view, &app_entries)?
        };
        if responses.len() != app_entries.len() {
            return Err(io::Error::other(format!(
                "state machine of group {} returned {} responses for {} entries",
                self.group,
                responses.len(),
                app_entries.len()
            )));
        }
        // A log-is-data group's entries are its data: the applied mark must never reach the disk
        // ahead of them (see `Flushed`).
        if self.log_is_data && !self.flushed.covers(last.index) {
            self.store.writer.write_durable(Vec::new()).await?;
        }
        let released = batch.released;
        let mut ops = batch.ops;
        ops.push(Op::Put(
            Family::SmMeta,
            keys::meta_key(self.group, SM_APPLIED).to_vec(),
            encode(&Some(last)),
        ));
        if let Some(m) = membership {
            ops.push(Op::Put(
                Family::SmMeta,
                keys::meta_key(self.group, SM_MEMBERSHIP).to_vec(),
                encode(&m),
            ));
        }
        self.store.write_now(&ops)?;
        if released.is_some() {
            self.store.delete_released_log(self.group)?;
        }
        self.app.applied();

        let mut responses = responses.into_iter();
        for (entry, responder) in items {
            let response = match entry.payload {
                EntryPayload::Normal(_) => responses.next().unwrap_or_default(),
                _ => Default::default(),
            };
            if let Some(r) = responder {
                r.send(AppResponse(response));
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        GroupSnapshotBuilder {
            store: self.store.clone(),
            group: self.group,
            chunk_bytes: self.chunk_bytes,
            log_is_data: self.log_is_data,
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let group = self.group;
        tracing::info!(group_id = %group, last_log_id = ?meta.last_log_id, "installing snapshot");
        let mut begin = Self::begin_install_ops(group);
        if self.log_is_data {
            // The snapshot carries the entries up to its last log id that its source retained;
            // this replica's own entries up to there are replaced by them.
            let upto = meta
                .last_log_id
                .map(|l| l.index.saturating_add(1))
                .unwrap_or(0);
            begin.push(Op::DeleteRange(
                Family::RaftLog,
                keys::group_prefix(group).to_vec(),
                keys::log_key(group, upto).to_vec(),
            ));
            self.store.forget_deleted_log(group);
        }
        if let Some(cache) = self.store.log_cache(group) {
            cache.clear();
        }
        self.flushed.truncated(
            meta.last_log_id
                .map(|l| l.index.saturating_add(1))
                .unwrap_or(0),
        );
        self.store.writer.write(begin).await?;
        let writer = self.store.writer.clone();
        snapshot
            .for_each_chunk(self.chunk_bytes, |chunk| {
                let writer = writer.clone();
                async move {
                    let ops = snapshot::chunk_to_ops(group, chunk)?;
                    fail::fail_point!("snapshot::install_chunk", |_| Err(io::Error::other(
                        "failpoint snapshot::install_chunk"
                    )));
                    writer.write(ops).await.map_err(io::Error::from)
                }
            })
            .await?;
        let ops = vec![
            Op::Put(
                Family::SmMeta,
                keys::meta_key(group, SM_APPLIED).to_vec(),
                encode(&meta.last_log_id),
            ),
            Op::Put(
                Family::SmMeta,
                keys::meta_key(group, SM_MEMBERSHIP).to_vec(),
                encode(&meta.last_membership),
            ),
            Op::Delete(
                Family::SmMeta,
                keys::meta_key(group, SM_INSTALLING).to_vec(),
            ),
        ];
        self.store.writer.write(ops).await?;
        if self.log_is_data {
            // The entries the snapshot replaced no longer hold their segments.
            self.store.log_front_deleted(group)?;
        }
        self.app.restore(&self.view)?;
        self.app.applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let (meta, snapshot) = self.get_snapshot_builder().await.live().await?;
        // Nothing applied: no snapshot yet.
        if meta.last_log_id.is_none() {
            return Ok(None);
        }
        Ok(Some(Snapshot { meta, snapshot }))
    }
}
