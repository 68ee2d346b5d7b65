//! Paging of the listings: page sizes and their limits, which streams, shards and tags a page
//! holds after an exclusive start, and the continuation tokens of the Kinesis listings. Pure.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use riptide_proto::ShardId;

use crate::controller::{ShardInfo, StreamInfo};
use crate::error::ServiceError;

/// Streams a listing returns when the request names no limit, and the most it may ask for.
pub const DEFAULT_LIST_STREAMS: u32 = 100;
pub const MAX_LIST_STREAMS: u32 = 10_000;

/// The page size a ListStreams request asks for: 0 takes [`DEFAULT_LIST_STREAMS`].
pub fn streams_limit(limit: u32) -> Result<usize, ServiceError> {
    match limit {
        0 => Ok(DEFAULT_LIST_STREAMS as usize),
        l if l <= MAX_LIST_STREAMS => Ok(l as usize),
        l => Err(ServiceError::invalid(
            "limit",
            format!("must be 1 to {MAX_LIST_STREAMS}, got {l}"),
        )),
    }
}

/// The streams whose names sort after `exclusive_start`, in name order, at most `limit`; true
/// when more follow.
pub fn streams_page(
    streams: Vec<StreamInfo>,
    exclusive_start: &str,
    limit: usize,
) -> (Vec<StreamInfo>, bool) {
    let mut page: Vec<StreamInfo> = streams
        .into_iter()
        .filter(|s| s.name.as_str() > exclusive_start)
        .collect();
    page.sort_by(|a, b| a.name.cmp(&b.name));
    let more = page.len() > limit;
    page.truncate(limit);
    (page, more)
}

/// The stream's shards after `exclusive_start` (all when `None`), at most `limit`; true when
/// more follow.
pub fn shards_page(
    info: &StreamInfo,
    exclusive_start: Option<ShardId>,
    limit: usize,
) -> (&[ShardInfo], bool) {
    let from = exclusive_start
        .map(|s| (s.0 as usize).saturating_add(1))
        .unwrap_or(0)
        .min(info.shards.len());
    let rest = &info.shards[from..];
    let n = rest.len().min(limit);
    (&rest[..n], rest.len() > n)
}

/// The stream's tags in key order after `exclusive_start` (all when `None`), at most `limit`;
/// true when more follow.
pub fn tags_page<'a>(
    info: &'a StreamInfo,
    exclusive_start: Option<&str>,
    limit: usize,
) -> (Vec<(&'a String, &'a String)>, bool) {
    let rest: Vec<_> = info
        .tags
        .iter()
        .filter(|(k, _)| exclusive_start.is_none_or(|s| k.as_str() > s))
        .collect();
    let more = rest.len() > limit;
    (rest.into_iter().take(limit).collect(), more)
}

/// A continuation token of a Kinesis listing: opaque to clients, base64 of the listing's
/// `kind` and its `parts` (the stream, the last name or shard returned, ...).
pub fn encode_token(kind: &str, parts: &[&str]) -> String {
    let mut text = kind.to_string();
    for p in parts {
        text.push('\n');
        text.push_str(p);
    }
    URL_SAFE_NO_PAD.encode(text)
}

/// The `n` parts of a token [`encode_token`] made for a listing of `kind`; any other text is
/// refused as a bad `NextToken`.
pub fn decode_token(kind: &str, token: &str, n: usize) -> Result<Vec<String>, ServiceError> {
    let bad = || {
        ServiceError::invalid(
            "NextToken",
            format!("not a token this call returned: {token:?}"),
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let mut parts = text.split('\n');
    if parts.next() != Some(kind) {
        return Err(bad());
    }
    let out: Vec<String> = parts.map(str::to_string).collect();
    if out.len() != n {
        return Err(bad());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::controller::{StreamMode, StreamStatus};

    fn stream(name: &str, shards: u32) -> StreamInfo {
        StreamInfo {
            name: name.into(),
            status: StreamStatus::Active,
            retention_hours: 24,
            created_ms: 1,
            shards: (0..shards)
                .map(|i| ShardInfo {
                    index: i,
                    group: u64::from(i) + 1,
                    hash_start: 0,
                    hash_end: 0,
                    replicas: vec![1],
                    ready: true,
                })
                .collect(),
            mode: StreamMode::Provisioned,
            tags: BTreeMap::new(),
            preferred_leader_region: None,
        }
    }

    #[test]
    fn shard_pages_follow_the_exclusive_start() {
        let s = stream("s", 5);
        let ids = |(page, more): (&[ShardInfo], bool)| {
            (page.iter().map(|sh| sh.index).collect::<Vec<_>>(), more)
        };
        assert_eq!(ids(shards_page(&s, None, 2)), (vec![0, 1], true));
        assert_eq!(
            ids(shards_page(&s, Some(ShardId(1)), 2)),
            (vec![2, 3], true)
        );
        assert_eq!(ids(shards_page(&s, Some(ShardId(3)), 2)), (vec![4], false));
        assert_eq!(ids(shards_page(&s, Some(ShardId(4)), 2)), (vec![], false));
        assert_eq!(
            ids(shards_page(&s, Some(ShardId(u32::MAX)), 2)),
            (vec![], false)
        );
        assert_eq!(ids(shards_page(&s, None, 100)).0.len(), 5);
    }

    #[test]
    fn stream_pages_are_in_name_order_after_the_start() {
        let all = || {
            vec![
                stream("c", 1),
                stream("a", 1),
                stream("d", 1),
                stream("b", 1),
            ]
        };
        let names = |(page, more): (Vec<StreamInfo>, bool)| {
            (page.into_iter().map(|s| s.name).collect::<Vec<_>>(), more)
        };
        assert_eq!(
            names(streams_page(all(), "", 2)),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(
            names(streams_page(all(), "b", 2)),
            (vec!["c".into(), "d".into()], false)
        );
        assert_eq!(names(streams_page(all(), "d", 2)), (vec![], false));
    }

    #[test]
    fn stream_limits_default_and_cap() {
        assert_eq!(streams_limit(0), Ok(DEFAULT_LIST_STREAMS as usize));
        assert_eq!(
            streams_limit(MAX_LIST_STREAMS),
            Ok(MAX_LIST_STREAMS as usize)
        );
        let e = streams_limit(MAX_LIST_STREAMS + 1).expect_err("over the cap");
        assert_eq!(e.to_string(), "limit: must be 1 to 10000, got 10001");
    }

    #[test]
    fn tag_pages_are_in_key_order_after_the_start() {
        let mut s = stream("s", 1);
        for k in ["b", "a", "c"] {
            s.tags.insert(k.into(), format!("v{k}"));
        }
        let keys = |(page, more): (Vec<(&String, &String)>, bool)| {
            (
                page.into_iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
                more,
            )
        };
        assert_eq!(
            keys(tags_page(&s, None, 2)),
            (vec!["a".into(), "b".into()], true)
        );
        assert_eq!(keys(tags_page(&s, Some("b"), 2)), (vec!["c".into()], false));
    }

    #[test]
    fn tokens_round_trip_and_refuse_other_kinds() {
        let t = encode_token("shards", &["s", "5", "shardId-000000000001"]);
        assert_eq!(
            decode_token("shards", &t, 3).expect("round trip"),
            ["s", "5", "shardId-000000000001"]
        );
        assert!(decode_token("streams", &t, 1).is_err());
        assert!(decode_token("shards", &t, 2).is_err());
        let e = decode_token("shards", "!!", 3).expect_err("garbage");
        assert!(e.to_string().starts_with("NextToken"), "{e}");
    }
}
