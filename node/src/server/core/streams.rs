//! Stream administration: creating streams (shard counts and placements), deleting them, their
//! retention, tags, mode and preferred leader region (each a controller command), listings and
//! descriptions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use riptide_proto::v1;
use riptide_proto::{SequenceNumber, ShardId, StreamName};
use riptide_raft::GroupId;

use super::{Core, paging};
use crate::controller::placement::{self, Candidate, REPLICATION};
use crate::controller::{
    ControllerCommand, ControllerReply, CountLimits, ShardInfo, StreamInfo, StreamMode,
    StreamStatus,
};
use crate::error::ServiceError;
use crate::validate;

/// Shards of an ON_DEMAND stream created without a shard count, as in Kinesis.
pub const ON_DEMAND_SHARDS: u32 = 4;
/// How long a write waits for this node to see a new stream turn ACTIVE.
const CREATING_WAIT: Duration = Duration::from_secs(2);

/// Which way a retention change may go (Kinesis has one call for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionChange {
    Increase,
    Decrease,
}

/// The cluster's stream and shard counts against their limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Shards the cluster may hold (`limits.max_shards`).
    pub shard_limit: u32,
    /// Shards of every stream (no shard is ever closed yet).
    pub open_shards: u32,
    pub on_demand_streams: u32,
    /// Streams the cluster may hold (`limits.max_streams`), ON_DEMAND ones included.
    pub on_demand_stream_limit: u32,
}

/// The shard count of a new stream in `mode`: the count asked for, or, for an ON_DEMAND stream
/// created without one, [`ON_DEMAND_SHARDS`] (at most `max_per_stream`). A PROVISIONED stream
/// needs a count of 1 to `max_per_stream`.
pub fn new_stream_shards(
    requested: Option<u32>,
    mode: StreamMode,
    max_per_stream: u32,
) -> Result<u32, ServiceError> {
    let count = match (requested, mode) {
        (Some(n), _) => n,
        (None, StreamMode::OnDemand) => ON_DEMAND_SHARDS.min(max_per_stream),
        (None, StreamMode::Provisioned) => {
            return Err(ServiceError::invalid(
                "shard_count",
                "required for a PROVISIONED stream (1 to limits.max_shards_per_stream)",
            ));
        }
    };
    validate::shard_count(count, max_per_stream)?;
    Ok(count)
}

impl Core {
    pub async fn create_stream(
        &self,
        name: &str,
        shard_count: u32,
        retention_hours: u32,
        preferred_leader_region: Option<String>,
    ) -> Result<StreamInfo, ServiceError> {
        self.create_stream_with(
            name,
            Some(shard_count),
            retention_hours,
            StreamMode::Provisioned,
            BTreeMap::new(),
            preferred_leader_region,
        )
        .await
    }

    /// Creates a stream in `mode` with `tags`. An ON_DEMAND stream created without a shard
    /// count gets [`ON_DEMAND_SHARDS`]; a PROVISIONED one needs a count.
    pub async fn create_stream_with(
        &self,
        name: &str,
        shard_count: Option<u32>,
        retention_hours: u32,
        mode: StreamMode,
        tags: BTreeMap<String, String>,
        preferred_leader_region: Option<String>,
    ) -> Result<StreamInfo, ServiceError> {
        let name = StreamName::new(name)?;
        let preferred_leader_region = self.known_region(preferred_leader_region)?;
        let limits = &self.config.limits;
        let shard_count = new_stream_shards(shard_count, mode, limits.max_shards_per_stream)?;
        let retention_hours = validate::retention("retention_period_hours", retention_hours, true)?;
        if !tags.is_empty() {
            validate::tags("tags", tags.iter())?;
            if tags.len() > validate::MAX_TAGS_PER_STREAM as usize {
                return Err(ServiceError::LimitExceeded {
                    field: "tags".into(),
                    reason: format!(
                        "{} tags given, the limit is {} per stream",
                        tags.len(),
                        validate::MAX_TAGS_PER_STREAM
                    ),
                });
            }
        }
        let placements = self.place_shards(
            shard_count,
            preferred_leader_region.as_deref(),
            &BTreeSet::new(),
        )?;
        let cmd = ControllerCommand::CreateStream {
            name: name.as_str().to_string(),
            retention_hours,
            created_ms: self.clock.now_ms(),
            placements,
            limits: CountLimits {
                max_streams: limits.max_streams,
                max_shards: limits.max_shards,
            },
            mode,
            tags,
            preferred_leader_region,
        };
        match self.propose(&cmd).await? {
            ControllerReply::Stream(s) => Ok(s),
            ControllerReply::Done => Err(ServiceError::internal("controller gave no stream back")),
        }
    }

    /// Placements for `shards` new shards over the registered nodes that take replicas (not
    /// draining), by their current load; nodes in `down` never form a group while another
    /// node can (see [`placement::place`]).
    pub(super) fn place_shards(
        &self,
        shards: u32,
        preferred_leader_region: Option<&str>,
        down: &BTreeSet<u64>,
    ) -> Result<Vec<Vec<u64>>, ServiceError> {
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        for s in self.streams()? {
            for sh in s.shards {
                for r in sh.replicas {
                    *load.entry(r).or_default() += 1;
                }
            }
        }
        let nodes = self.nodes()?;
        let voters = self.controller()?.status().voters.len();
        placement::replicas_for_new_shards(nodes.len(), voters).map_err(|short| {
            ServiceError::unavailable(format!(
                "only {} of the cluster's nodes have registered with the controller, and a shard \
                 needs {} replicas; retry in a moment (a cluster that is starting registers \
                 its nodes within seconds; one left with fewer nodes needs more nodes added)",
                short.registered, short.wanted
            ))
        })?;
        let candidates: Vec<Candidate> = nodes
            .into_iter()
            .filter(|n| !n.draining)
            .map(|n| Candidate {
                id: n.id,
                load: load.get(&n.id).copied().unwrap_or(0),
                region: n.region,
                zone: n.zone,
            })
            .collect();
        if candidates.is_empty() {
            return Err(ServiceError::unavailable(
                "no node that takes replicas has registered with the controller (none yet, or all are draining); retry in a moment",
            ));
        }
        Ok(placement::place(
            &candidates,
            shards,
            REPLICATION,
            preferred_leader_region,
            down,
        ))
    }

    pub async fn delete_stream(&self, name: &str) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        self.propose(&ControllerCommand::DeleteStream {
            name: name.as_str().to_string(),
        })
        .await
        .map(|_| ())
    }

    pub async fn set_retention(&self, name: &str, hours: u32) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        let hours = validate::retention("retention_period_hours", hours, false)?;
        self.propose(&ControllerCommand::SetRetention {
            name: name.as_str().to_string(),
            hours,
        })
        .await
        .map(|_| ())
    }

    /// Sets (or, with `None`, clears) the region whose replicas should lead the stream's
    /// shards; the leader balancer moves the leaders within seconds.
    pub async fn set_preferred_leader_region(
        &self,
        name: &str,
        region: Option<String>,
    ) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        let region = self.known_region(region)?;
        self.propose(&ControllerCommand::SetPreferredLeaderRegion {
            name: name.as_str().to_string(),
            region,
        })
        .await
        .map(|_| ())
    }

    /// A preferred leader region as given: `None` or empty for none, otherwise a region some
    /// registered node is in (a misspelt region would otherwise be silently ignored).
    fn known_region(&self, region: Option<String>) -> Result<Option<String>, ServiceError> {
        let Some(region) = region.filter(|r| !r.is_empty()) else {
            return Ok(None);
        };
        let known: BTreeSet<String> = self.nodes()?.into_iter().map(|n| n.region).collect();
        if known.contains(&region) {
            Ok(Some(region))
        } else {
            Err(ServiceError::invalid(
                "preferred_leader_region",
                format!(
                    "no node of the cluster is in region {region:?} (regions: {})",
                    known.into_iter().collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    }

    /// Changes the retention in one direction only, as Kinesis's Increase and Decrease calls do.
    pub async fn change_retention(
        &self,
        name: &str,
        hours: u32,
        change: RetentionChange,
    ) -> Result<(), ServiceError> {
        let current = self.stream(name)?.retention_hours;
        match change {
            RetentionChange::Increase if hours < current => Err(ServiceError::invalid(
                "retention_period_hours",
                format!(
                    "{hours} is shorter than the stream's current {current} hours; decrease it instead"
                ),
            )),
            RetentionChange::Decrease if hours > current => Err(ServiceError::invalid(
                "retention_period_hours",
                format!(
                    "{hours} is longer than the stream's current {current} hours; increase it instead"
                ),
            )),
            _ => self.set_retention(name, hours).await,
        }
    }

    /// Sets tags on a stream (replacing the values of keys it has); a stream holds at most
    /// [`validate::MAX_TAGS_PER_STREAM`] tags.
    pub async fn tag_stream(
        &self,
        name: &str,
        tags: BTreeMap<String, String>,
    ) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        validate::tags("tags", tags.iter())?;
        self.propose(&ControllerCommand::UpdateTags {
            name: name.as_str().to_string(),
            set: tags,
            remove: Vec::new(),
            max_tags: validate::MAX_TAGS_PER_STREAM,
        })
        .await
        .map(|_| ())
    }

    /// Removes tags from a stream; keys it does not have are ignored.
    pub async fn untag_stream(&self, name: &str, keys: Vec<String>) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        validate::tag_keys("tag_keys", &keys)?;
        self.propose(&ControllerCommand::UpdateTags {
            name: name.as_str().to_string(),
            set: BTreeMap::new(),
            remove: keys,
            max_tags: validate::MAX_TAGS_PER_STREAM,
        })
        .await
        .map(|_| ())
    }

    pub async fn set_stream_mode(&self, name: &str, mode: StreamMode) -> Result<(), ServiceError> {
        let name = StreamName::new(name)?;
        self.propose(&ControllerCommand::SetStreamMode {
            name: name.as_str().to_string(),
            mode,
        })
        .await
        .map(|_| ())
    }

    /// Streams whose names sort after `exclusive_start`, in name order, at most `limit` (0
    /// takes [`paging::DEFAULT_LIST_STREAMS`]); true when more follow.
    pub fn list_streams(
        &self,
        exclusive_start: &str,
        limit: u32,
    ) -> Result<(Vec<StreamInfo>, bool), ServiceError> {
        let limit = paging::streams_limit(limit)?;
        Ok(paging::streams_page(
            self.streams()?,
            exclusive_start,
            limit,
        ))
    }

    /// Shard and stream counts against the configured limits.
    pub fn stream_limits(&self) -> Result<StreamLimits, ServiceError> {
        let streams = self.streams()?;
        Ok(StreamLimits {
            shard_limit: self.config.limits.max_shards,
            open_shards: streams.iter().map(|s| s.shards.len() as u32).sum(),
            on_demand_streams: streams
                .iter()
                .filter(|s| s.mode == StreamMode::OnDemand)
                .count() as u32,
            on_demand_stream_limit: self.config.limits.max_streams,
        })
    }

    /// The stream's description as the API shows it, with each shard's leader as this node
    /// knows it (0 where it hosts no replica).
    pub fn describe(&self, s: &StreamInfo) -> v1::StreamDescription {
        v1::StreamDescription {
            stream_name: s.name.clone(),
            status: match s.status {
                StreamStatus::Creating => v1::StreamStatus::Creating,
                StreamStatus::Active => v1::StreamStatus::Active,
            } as i32,
            shards: s
                .shards
                .iter()
                .map(|sh| v1::Shard {
                    shard_id: ShardId(sh.index).to_string(),
                    hash_key_range: Some(v1::HashKeyRange {
                        starting_hash_key: sh.hash_start.to_string(),
                        ending_hash_key: sh.hash_end.to_string(),
                    }),
                    replicas: sh.replicas.clone(),
                    leader: self
                        .engine
                        .group(GroupId(sh.group))
                        .ok()
                        .and_then(|g| g.leader())
                        .map(|l| l.0)
                        .unwrap_or(0),
                    starting_sequence_number: SequenceNumber(0).to_string(),
                })
                .collect(),
            retention_period_hours: s.retention_hours,
            created_at_ms: s.created_ms,
            preferred_leader_region: s.preferred_leader_region.clone().unwrap_or_default(),
        }
    }

    /// [`Core::describe`], with the leaders of the shards this node holds no replica of filled
    /// in: their replicas' nodes are asked which groups they lead (one status call per node,
    /// concurrently, 500 ms at most). A shard whose replicas do not answer keeps leader 0.
    pub async fn describe_with_leaders(&self, s: &StreamInfo) -> v1::StreamDescription {
        let mut desc = self.describe(s);
        let unknown: Vec<&ShardInfo> = s
            .shards
            .iter()
            .zip(&desc.shards)
            .filter(|(sh, d)| d.leader == 0 && self.engine.group(GroupId(sh.group)).is_err())
            .map(|(sh, _)| sh)
            .collect();
        if unknown.is_empty() {
            return desc;
        }
        let ask: BTreeSet<u64> = unknown
            .iter()
            .flat_map(|sh| sh.replicas.iter().copied())
            .filter(|id| *id != self.node_id())
            .collect();
        let Ok(nodes) = self.nodes() else {
            return desc;
        };
        let calls = nodes
            .into_iter()
            .filter(|n| ask.contains(&n.id))
            .map(|n| async move {
                let status = self
                    .probe_node(n.id, &n.address, Duration::from_millis(500))
                    .await?;
                Some((n.id, status.leading_groups))
            });
        let mut leader_of: HashMap<u64, u64> = HashMap::new();
        for (node, groups) in futures::future::join_all(calls).await.into_iter().flatten() {
            for g in groups {
                leader_of.insert(g, node);
            }
        }
        for (sh, d) in s.shards.iter().zip(desc.shards.iter_mut()) {
            if d.leader == 0
                && let Some(l) = leader_of.get(&sh.group)
            {
                d.leader = *l;
            }
        }
        desc
    }

    /// The shard `id` names in the stream; NotFound when the stream has no such shard.
    pub(crate) fn shard<'a>(
        &self,
        s: &'a StreamInfo,
        id: &str,
    ) -> Result<&'a ShardInfo, ServiceError> {
        let shard: ShardId = id.parse()?;
        s.shards.get(shard.0 as usize).ok_or_else(|| {
            ServiceError::not_found(
                "shard_id",
                format!(
                    "stream {:?} has no shard {shard} (it has {} shards)",
                    s.name,
                    s.shards.len()
                ),
            )
        })
    }

    /// The stream, once it takes writes. A node whose view of the controller lags behind may
    /// still see a new stream as CREATING after another node reported it ACTIVE, so a CREATING
    /// stream is looked up again for up to [`CREATING_WAIT`] before the request is refused.
    pub(super) async fn writable_stream(&self, name: &str) -> Result<StreamInfo, ServiceError> {
        let deadline = Instant::now() + CREATING_WAIT;
        let mut changed = self.controller_applied.clone();
        loop {
            let s = self.stream(name)?;
            if s.status == StreamStatus::Active {
                return Ok(s);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ServiceError::ResourceInUse(format!(
                    "stream_name: stream \"{}\" is still CREATING",
                    s.name
                )));
            }
            let _ = tokio::time::timeout(left, changed.changed()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_streams_get_the_shards_asked_for_or_the_on_demand_default() {
        assert_eq!(
            new_stream_shards(Some(7), StreamMode::Provisioned, 256),
            Ok(7)
        );
        assert_eq!(new_stream_shards(Some(7), StreamMode::OnDemand, 256), Ok(7));
        assert_eq!(
            new_stream_shards(None, StreamMode::OnDemand, 256),
            Ok(ON_DEMAND_SHARDS)
        );
        assert_eq!(new_stream_shards(None, StreamMode::OnDemand, 2), Ok(2));
        let e = new_stream_shards(None, StreamMode::Provisioned, 256).expect_err("no count");
        assert!(e.to_string().starts_with("shard_count: required"), "{e}");
        let e = new_stream_shards(Some(300), StreamMode::Provisioned, 256).expect_err("over");
        assert!(
            e.to_string().contains("limits.max_shards_per_stream"),
            "{e}"
        );
        let e = new_stream_shards(Some(0), StreamMode::Provisioned, 256).expect_err("zero");
        assert_eq!(e.code(), riptide_proto::ErrorCode::InvalidArgument);
    }
}
