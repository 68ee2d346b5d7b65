//! The client's view of a stream's shards: which shard a record belongs to and which node
//! leads that shard. Built from a `DescribeStream` answer; pure, no I/O.
//!
//! The map is only a hint: every node routes a request itself, so a stale map costs one
//! forwarding hop, never a misplaced record.

use riptide_proto::v1::StreamDescription;
use riptide_proto::{HashKeyRange, ShardId, hash_key_of, parse_hash_key, shard_for};

use crate::ClientError;

/// One shard as the client routes to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardRoute {
    pub shard_id: ShardId,
    pub range: HashKeyRange,
    /// Node id of the leader, `None` when unknown.
    pub leader: Option<u64>,
    pub replicas: Vec<u64>,
}

/// The shards of one stream, ordered by hash range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardMap {
    shards: Vec<ShardRoute>,
    ranges: Vec<HashKeyRange>,
}

impl ShardMap {
    /// Builds the map from a description. Refuses shards whose id or range does not parse and
    /// ranges that overlap.
    pub fn from_description(desc: &StreamDescription) -> Result<Self, ClientError> {
        let mut shards = Vec::with_capacity(desc.shards.len());
        for (i, shard) in desc.shards.iter().enumerate() {
            let shard_id = shard
                .shard_id
                .parse::<ShardId>()
                .map_err(|e| ClientError::malformed(format_args!("shards[{i}]: {e}")))?;
            let range = shard.hash_key_range.as_ref().ok_or_else(|| {
                ClientError::malformed(format_args!("shards[{i}]: hash_key_range is missing"))
            })?;
            let start = parse_hash_key(&range.starting_hash_key, "starting_hash_key")
                .map_err(|e| ClientError::malformed(format_args!("shards[{i}]: {e}")))?;
            let end = parse_hash_key(&range.ending_hash_key, "ending_hash_key")
                .map_err(|e| ClientError::malformed(format_args!("shards[{i}]: {e}")))?;
            if start > end {
                return Err(ClientError::malformed(format_args!(
                    "shards[{i}]: hash key range starts after it ends"
                )));
            }
            shards.push(ShardRoute {
                shard_id,
                range: HashKeyRange { start, end },
                leader: (shard.leader != 0).then_some(shard.leader),
                replicas: shard.replicas.clone(),
            });
        }
        shards.sort_by_key(|s| s.range.start);
        if let Some(w) = shards
            .windows(2)
            .find(|w| w[0].range.end >= w[1].range.start)
        {
            return Err(ClientError::malformed(format_args!(
                "hash key ranges of {} and {} overlap",
                w[0].shard_id, w[1].shard_id
            )));
        }
        let ranges = shards.iter().map(|s| s.range).collect();
        Ok(Self { shards, ranges })
    }

    /// The shards, in hash-range order.
    #[cfg(test)]
    pub fn shards(&self) -> &[ShardRoute] {
        &self.shards
    }

    /// The shard that holds `hash_key`, if any range holds it.
    pub fn shard_for_hash(&self, hash_key: u128) -> Option<&ShardRoute> {
        shard_for(&self.ranges, hash_key).map(|i| &self.shards[i])
    }

    /// The shard of a record with `partition_key` and an optional explicit hash key; an
    /// explicit hash key that does not parse is refused as the node would refuse it.
    pub fn route(
        &self,
        partition_key: &str,
        explicit_hash_key: Option<&str>,
    ) -> Result<Option<&ShardRoute>, ClientError> {
        let key = match explicit_hash_key {
            Some(k) => parse_hash_key(k, "explicit_hash_key").map_err(ClientError::from)?,
            None => hash_key_of(partition_key),
        };
        Ok(self.shard_for_hash(key))
    }

    /// The route of `shard`, if the stream has it.
    pub fn get(&self, shard: ShardId) -> Option<&ShardRoute> {
        self.shards.iter().find(|s| s.shard_id == shard)
    }

    /// The leader of `shard`, if known.
    pub fn leader_of(&self, shard: ShardId) -> Option<u64> {
        self.get(shard).and_then(|s| s.leader)
    }

    /// Records that `node` leads `shard`; returns whether that changed anything.
    pub fn set_leader(&mut self, shard: ShardId, node: u64) -> bool {
        match self.shards.iter_mut().find(|s| s.shard_id == shard) {
            Some(s) if s.leader != Some(node) => {
                s.leader = Some(node);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use riptide_proto::split_hash_space;
    use riptide_proto::v1;

    use super::*;

    fn description(shards: u32, leaders: &[u64]) -> StreamDescription {
        StreamDescription {
            stream_name: "orders".into(),
            status: v1::StreamStatus::Active as i32,
            shards: split_hash_space(shards)
                .into_iter()
                .enumerate()
                .map(|(i, r)| v1::Shard {
                    shard_id: ShardId(i as u32).to_string(),
                    hash_key_range: Some(v1::HashKeyRange {
                        starting_hash_key: r.start.to_string(),
                        ending_hash_key: r.end.to_string(),
                    }),
                    replicas: vec![1, 2, 3],
                    leader: leaders.get(i).copied().unwrap_or(0),
                    starting_sequence_number: String::new(),
                })
                .collect(),
            retention_period_hours: 24,
            created_at_ms: 0,
            preferred_leader_region: String::new(),
        }
    }

    #[test]
    fn keys_route_to_the_shard_whose_range_holds_their_hash() {
        let mut desc = description(4, &[1, 2, 3, 0]);
        // The node may list shards in any order; the map sorts them by range.
        desc.shards.reverse();
        let map = ShardMap::from_description(&desc).expect("valid description");
        assert_eq!(map.shards().len(), 4);
        let ranges = split_hash_space(4);
        for key in ["", "a", "user-17", "orders/2026/01"] {
            let hash = hash_key_of(key);
            let expected = ranges
                .iter()
                .position(|r| r.contains(hash))
                .expect("covered");
            let route = map.route(key, None).expect("valid").expect("routed");
            assert_eq!(route.shard_id, ShardId(expected as u32), "key {key:?}");
        }
        let explicit = map
            .route("ignored", Some(&ranges[2].start.to_string()))
            .expect("valid")
            .expect("routed");
        assert_eq!(explicit.shard_id, ShardId(2));
        assert_eq!(map.leader_of(ShardId(0)), Some(1));
        assert_eq!(map.leader_of(ShardId(3)), None);
        assert_eq!(
            map.get(ShardId(1)).map(|s| s.replicas.clone()),
            Some(vec![1, 2, 3])
        );
    }

    #[test]
    fn a_bad_explicit_hash_key_is_refused_naming_the_field() {
        let map = ShardMap::from_description(&description(2, &[])).expect("valid");
        let err = map.route("k", Some("12ab")).expect_err("must be refused");
        assert!(err.message.starts_with("explicit_hash_key"), "{err}");
    }

    #[test]
    fn leader_hints_update_only_known_shards() {
        let mut map = ShardMap::from_description(&description(2, &[1, 1])).expect("valid");
        assert!(map.set_leader(ShardId(1), 3));
        assert!(!map.set_leader(ShardId(1), 3));
        assert!(!map.set_leader(ShardId(9), 3));
        assert_eq!(map.leader_of(ShardId(1)), Some(3));
        assert_eq!(map.leader_of(ShardId(0)), Some(1));
    }

    #[test]
    fn malformed_descriptions_are_refused() {
        let mut desc = description(2, &[]);
        desc.shards[0].shard_id = "shard-zero".into();
        assert!(ShardMap::from_description(&desc).is_err());

        let mut desc = description(2, &[]);
        desc.shards[1].hash_key_range = None;
        assert!(ShardMap::from_description(&desc).is_err());

        let mut desc = description(2, &[]);
        let r = desc.shards[0].hash_key_range.as_mut().expect("set");
        r.ending_hash_key = u128::MAX.to_string();
        let err = ShardMap::from_description(&desc).expect_err("must be refused");
        assert!(err.message.contains("overlap"), "{err}");
    }

    #[test]
    fn keys_outside_every_range_have_no_shard() {
        let mut desc = description(2, &[]);
        desc.shards.truncate(1);
        let map = ShardMap::from_description(&desc).expect("valid");
        assert!(map.shard_for_hash(u128::MAX).is_none());
        assert!(map.shard_for_hash(0).is_some());
    }
}
