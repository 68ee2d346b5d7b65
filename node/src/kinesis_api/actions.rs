//! Each Kinesis action: read the request's members, call [`Core`], shape the answer as
//! Kinesis does. Nothing here decides anything about streams or records.

use std::collections::BTreeMap;

use riptide_proto::v1;
use riptide_proto::{SequenceNumber, ShardId};

use super::arn::{self, Resource};
use super::value::{Obj, Value};
use crate::controller::{ShardInfo, StreamInfo, StreamMode, StreamStatus};
use crate::error::ServiceError;
use crate::server::core::paging::{self, decode_token, encode_token};
use crate::server::core::{Core, RetentionChange};
use crate::validate;

/// Actions of the Kinesis API that Riptide does not serve yet, and why.
pub const NOT_YET: &[(&str, &str)] = &[
    ("UpdateShardCount", "resharding"),
    ("SplitShard", "resharding"),
    ("MergeShards", "resharding"),
    ("SubscribeToShard", "enhanced fan-out"),
    ("RegisterStreamConsumer", "enhanced fan-out"),
    ("DeregisterStreamConsumer", "enhanced fan-out"),
    ("DescribeStreamConsumer", "enhanced fan-out"),
    ("ListStreamConsumers", "enhanced fan-out"),
    ("StartStreamEncryption", "server-side encryption"),
    ("StopStreamEncryption", "server-side encryption"),
    ("EnableEnhancedMonitoring", "enhanced monitoring"),
    ("DisableEnhancedMonitoring", "enhanced monitoring"),
    ("PutResourcePolicy", "resource policies"),
    ("GetResourcePolicy", "resource policies"),
    ("DeleteResourcePolicy", "resource policies"),
    ("DescribeAccountSettings", "account settings"),
    ("UpdateAccountSettings", "account settings"),
    ("UpdateMaxRecordSize", "records over 1 MiB"),
    ("UpdateStreamWarmThroughput", "warm throughput"),
    (
        "UpdateStreamRecordDistributionStrategy",
        "record distribution strategies",
    ),
    ("CreateChannel", "channels"),
    ("DeleteChannel", "channels"),
    ("DescribeChannel", "channels"),
    ("ListChannels", "channels"),
    ("UpdateChannel", "channels"),
    ("CreateQueue", "queues"),
    ("DeleteQueue", "queues"),
    ("DescribeQueue", "queues"),
    ("ListQueues", "queues"),
    ("UpdateQueue", "queues"),
    ("ReceiveQueueRecords", "queues"),
    ("AcknowledgeQueueRecords", "queues"),
    ("UpdateQueueRecordsVisibility", "queues"),
    ("ReceiveDeadLetterQueueRecords", "queues"),
    ("AcknowledgeDeadLetterQueueRecords", "queues"),
    ("RestoreDeadLetterQueueRecords", "queues"),
    ("UpdateDeadLetterQueueRecordsVisibility", "queues"),
];

/// Actions Riptide serves.
pub const SUPPORTED: &[&str] = &[
    "CreateStream",
    "DeleteStream",
    "DescribeStream",
    "DescribeStreamSummary",
    "ListStreams",
    "ListShards",
    "PutRecord",
    "PutRecords",
    "GetShardIterator",
    "GetRecords",
    "IncreaseStreamRetentionPeriod",
    "DecreaseStreamRetentionPeriod",
    "AddTagsToStream",
    "RemoveTagsFromStream",
    "ListTagsForStream",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
    "DescribeLimits",
    "UpdateStreamMode",
];

/// Records show a 1 MiB limit, the only size Riptide takes.
const MAX_RECORD_KIB: i64 = 1024;
/// Default and largest page of ListShards, as in Kinesis.
const LIST_SHARDS_PAGE: i64 = 1000;
/// Default page of DescribeStream.
const DESCRIBE_STREAM_PAGE: i64 = 100;

/// What an action needs besides its request.
pub struct Ctx<'a> {
    pub core: &'a Core,
    /// The region stream ARNs are shown in.
    pub region: &'a str,
}

fn invalid(field: &str, reason: String) -> ServiceError {
    ServiceError::invalid(field, reason)
}

fn unsupported(message: String) -> ServiceError {
    ServiceError::Unsupported(message)
}

/// Runs `action` on `req`.
pub async fn run(ctx: &Ctx<'_>, action: &str, req: &Obj<'_>) -> Result<Value, ServiceError> {
    if req.opt_bool("DryRun")? == Some(true) {
        return Err(unsupported(format!(
            "DryRun: dry runs of {action} are not yet supported by Riptide"
        )));
    }
    match action {
        "CreateStream" => create_stream(ctx, req).await,
        "DeleteStream" => {
            ctx.core.delete_stream(&stream_name(req)?).await?;
            Ok(Value::map([]))
        }
        "DescribeStream" => describe_stream(ctx, req),
        "DescribeStreamSummary" => describe_stream_summary(ctx, req),
        "ListStreams" => list_streams(ctx, req),
        "ListShards" => list_shards(ctx, req),
        "PutRecord" => put_record(ctx, req).await,
        "PutRecords" => put_records(ctx, req).await,
        "GetShardIterator" => get_shard_iterator(ctx, req).await,
        "GetRecords" => get_records(ctx, req).await,
        "IncreaseStreamRetentionPeriod" => retention(ctx, req, RetentionChange::Increase).await,
        "DecreaseStreamRetentionPeriod" => retention(ctx, req, RetentionChange::Decrease).await,
        "AddTagsToStream" => {
            let tags = required_tags(req)?;
            ctx.core.tag_stream(&stream_name(req)?, tags).await?;
            Ok(Value::map([]))
        }
        "RemoveTagsFromStream" => {
            let keys = required_tag_keys(req)?;
            ctx.core.untag_stream(&stream_name(req)?, keys).await?;
            Ok(Value::map([]))
        }
        "ListTagsForStream" => list_tags_for_stream(ctx, req),
        "TagResource" => {
            let tags = required_tags(req)?;
            ctx.core.tag_stream(&resource_stream(req)?, tags).await?;
            Ok(Value::map([]))
        }
        "UntagResource" => {
            let keys = required_tag_keys(req)?;
            ctx.core.untag_stream(&resource_stream(req)?, keys).await?;
            Ok(Value::map([]))
        }
        "ListTagsForResource" => {
            let info = ctx.core.stream(&resource_stream(req)?)?;
            Ok(Value::map([("Tags", tag_list(info.tags.iter()))]))
        }
        "DescribeLimits" => {
            let l = ctx.core.stream_limits()?;
            Ok(Value::map([
                ("ShardLimit", Value::Int(l.shard_limit.into())),
                ("OpenShardCount", Value::Int(l.open_shards.into())),
                (
                    "OnDemandStreamCount",
                    Value::Int(l.on_demand_streams.into()),
                ),
                (
                    "OnDemandStreamCountLimit",
                    Value::Int(l.on_demand_stream_limit.into()),
                ),
            ]))
        }
        "UpdateStreamMode" => {
            let name = stream_name(req)?;
            let mode = stream_mode(req)?
                .ok_or_else(|| validation("StreamModeDetails: required, but missing".into()))?;
            no_warm_throughput(req)?;
            ctx.core.set_stream_mode(&name, mode).await?;
            Ok(Value::map([]))
        }
        other => match NOT_YET.iter().find(|(a, _)| *a == other) {
            Some((a, what)) => Err(unsupported(format!(
                "{a} is not yet supported by Riptide ({what} will come in a later release)"
            ))),
            None => Err(ServiceError::UnknownOperation(format!(
                "X-Amz-Target: Kinesis_20131202 has no operation named {other:?}"
            ))),
        },
    }
}

fn validation(message: String) -> ServiceError {
    ServiceError::Validation(message)
}

/// The stream a request names, by StreamName, StreamARN or both (then they must agree).
fn stream_name(req: &Obj<'_>) -> Result<String, ServiceError> {
    let name = req.opt_str("StreamName")?;
    let from_arn = req
        .opt_str("StreamARN")?
        .map(|a| arn_stream("StreamARN", a))
        .transpose()?;
    match (name, from_arn) {
        (Some(n), Some(a)) if n != a => Err(invalid(
            "StreamARN",
            format!("names stream {a:?} but StreamName names {n:?}"),
        )),
        (Some(n), _) => Ok(n.to_string()),
        (None, Some(a)) => Ok(a),
        (None, None) => Err(validation(
            "StreamName or StreamARN: one of them is required".into(),
        )),
    }
}

fn arn_stream(field: &'static str, a: &str) -> Result<String, ServiceError> {
    match arn::parse(field, a).map_err(|e| validation(e.to_string()))? {
        Resource::Stream(name) => Ok(name),
        Resource::Consumer { .. } => Err(unsupported(format!(
            "{field}: stream consumers (enhanced fan-out) are not yet supported by Riptide"
        ))),
    }
}

fn resource_stream(req: &Obj<'_>) -> Result<String, ServiceError> {
    arn_stream("ResourceARN", req.str("ResourceARN")?)
}

fn required_tags(req: &Obj<'_>) -> Result<BTreeMap<String, String>, ServiceError> {
    req.opt_str_map("Tags")?
        .ok_or_else(|| validation("Tags: required, but missing".into()))
}

fn required_tag_keys(req: &Obj<'_>) -> Result<Vec<String>, ServiceError> {
    req.opt_str_list("TagKeys")?
        .ok_or_else(|| validation("TagKeys: required, but missing".into()))
}

fn stream_mode(req: &Obj<'_>) -> Result<Option<StreamMode>, ServiceError> {
    let Some(details) = req.opt_obj("StreamModeDetails")? else {
        return Ok(None);
    };
    match details.str("StreamMode")? {
        "PROVISIONED" => Ok(Some(StreamMode::Provisioned)),
        "ON_DEMAND" => Ok(Some(StreamMode::OnDemand)),
        other => Err(validation(format!(
            "StreamModeDetails.StreamMode: must be PROVISIONED or ON_DEMAND, got {other:?}"
        ))),
    }
}

fn no_warm_throughput(req: &Obj<'_>) -> Result<(), ServiceError> {
    match req.opt_int("WarmThroughputMiBps", 0, i64::from(i32::MAX))? {
        Some(n) if n > 0 => Err(unsupported(format!(
            "WarmThroughputMiBps: warm throughput is not yet supported by Riptide, got {n}"
        ))),
        _ => Ok(()),
    }
}

fn to_u32(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

fn mode_details(mode: StreamMode) -> Value {
    Value::map([(
        "StreamMode",
        Value::text(match mode {
            StreamMode::Provisioned => "PROVISIONED",
            StreamMode::OnDemand => "ON_DEMAND",
        }),
    )])
}

fn status(s: StreamStatus) -> Value {
    Value::text(match s {
        StreamStatus::Creating => "CREATING",
        StreamStatus::Active => "ACTIVE",
    })
}

fn timestamp(ms: u64) -> Value {
    Value::Timestamp(i64::try_from(ms).unwrap_or(i64::MAX))
}

fn enhanced_monitoring() -> Value {
    Value::Array(vec![Value::map([(
        "ShardLevelMetrics",
        Value::Array(vec![]),
    )])])
}

fn shard(sh: &ShardInfo) -> Value {
    Value::map([
        ("ShardId", Value::text(ShardId(sh.index).to_string())),
        (
            "HashKeyRange",
            Value::map([
                ("StartingHashKey", Value::text(sh.hash_start.to_string())),
                ("EndingHashKey", Value::text(sh.hash_end.to_string())),
            ]),
        ),
        (
            "SequenceNumberRange",
            Value::map([(
                "StartingSequenceNumber",
                Value::text(SequenceNumber(0).to_string()),
            )]),
        ),
    ])
}

fn tag_list<'a>(tags: impl Iterator<Item = (&'a String, &'a String)>) -> Value {
    Value::Array(
        tags.map(|(k, v)| {
            Value::map([
                ("Key", Value::text(k.clone())),
                ("Value", Value::text(v.clone())),
            ])
        })
        .collect(),
    )
}

async fn create_stream(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let name = req.str("StreamName")?;
    let shard_count = req.opt_int("ShardCount", 1, i64::from(i32::MAX))?;
    let mode = stream_mode(req)?.unwrap_or_default();
    let tags = req.opt_str_map("Tags")?.unwrap_or_default();
    no_warm_throughput(req)?;
    if let Some(kib) = req.opt_int("MaxRecordSizeInKiB", 1024, 10240)?
        && kib != MAX_RECORD_KIB
    {
        return Err(unsupported(format!(
            "MaxRecordSizeInKiB: records over {MAX_RECORD_KIB} KiB are not yet supported by Riptide, got {kib}"
        )));
    }
    match req.opt_str("RecordDistributionStrategy")? {
        None | Some("USER_PARTITION_KEY") => {}
        Some(other) => {
            return Err(unsupported(format!(
                "RecordDistributionStrategy: only USER_PARTITION_KEY is supported by Riptide, got {other:?}"
            )));
        }
    }
    ctx.core
        .create_stream_with(name, shard_count.map(to_u32), 0, mode, tags, None)
        .await?;
    Ok(Value::map([]))
}

fn describe_stream(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let info = ctx.core.stream(&stream_name(req)?)?;
    let limit = req
        .opt_int("Limit", 1, 10_000)?
        .unwrap_or(DESCRIBE_STREAM_PAGE);
    let after = req
        .opt_str("ExclusiveStartShardId")?
        .map(|s| s.parse::<ShardId>())
        .transpose()?;
    let (shards, more) = paging::shards_page(&info, after, limit as usize);
    Ok(Value::map([(
        "StreamDescription",
        Value::map([
            ("StreamName", Value::text(info.name.clone())),
            (
                "StreamARN",
                Value::text(arn::stream_arn(ctx.region, &info.name)),
            ),
            ("StreamStatus", status(info.status)),
            ("StreamModeDetails", mode_details(info.mode)),
            ("Shards", Value::Array(shards.iter().map(shard).collect())),
            ("HasMoreShards", Value::Bool(more)),
            (
                "RetentionPeriodHours",
                Value::Int(info.retention_hours.into()),
            ),
            ("StreamCreationTimestamp", timestamp(info.created_ms)),
            ("EnhancedMonitoring", enhanced_monitoring()),
            ("EncryptionType", Value::text("NONE")),
        ]),
    )]))
}

fn describe_stream_summary(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let info = ctx.core.stream(&stream_name(req)?)?;
    Ok(Value::map([(
        "StreamDescriptionSummary",
        Value::map([
            ("StreamName", Value::text(info.name.clone())),
            (
                "StreamARN",
                Value::text(arn::stream_arn(ctx.region, &info.name)),
            ),
            ("StreamStatus", status(info.status)),
            ("StreamModeDetails", mode_details(info.mode)),
            (
                "RetentionPeriodHours",
                Value::Int(info.retention_hours.into()),
            ),
            ("StreamCreationTimestamp", timestamp(info.created_ms)),
            ("EnhancedMonitoring", enhanced_monitoring()),
            ("EncryptionType", Value::text("NONE")),
            ("OpenShardCount", Value::Int(info.shards.len() as i128)),
            ("ConsumerCount", Value::Int(0)),
            ("MaxRecordSizeInKiB", Value::Int(MAX_RECORD_KIB.into())),
        ]),
    )]))
}

fn list_streams(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let limit = req.opt_int("Limit", 1, 10_000)?.map(to_u32).unwrap_or(0);
    let start = match (
        req.opt_str("NextToken")?,
        req.opt_str("ExclusiveStartStreamName")?,
    ) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "NextToken",
                "cannot be combined with ExclusiveStartStreamName".into(),
            ));
        }
        (Some(t), None) => decode_token("streams", t, 1)?.remove(0),
        (None, Some(s)) => s.to_string(),
        (None, None) => String::new(),
    };
    let (streams, more) = ctx.core.list_streams(&start, limit)?;
    let mut out = vec![
        (
            "StreamNames",
            Value::Array(
                streams
                    .iter()
                    .map(|s| Value::text(s.name.clone()))
                    .collect(),
            ),
        ),
        ("HasMoreStreams", Value::Bool(more)),
        (
            "StreamSummaries",
            Value::Array(
                streams
                    .iter()
                    .map(|s| {
                        Value::map([
                            ("StreamName", Value::text(s.name.clone())),
                            (
                                "StreamARN",
                                Value::text(arn::stream_arn(ctx.region, &s.name)),
                            ),
                            ("StreamStatus", status(s.status)),
                            ("StreamModeDetails", mode_details(s.mode)),
                            ("StreamCreationTimestamp", timestamp(s.created_ms)),
                        ])
                    })
                    .collect(),
            ),
        ),
    ];
    if let (true, Some(last)) = (more, streams.last()) {
        out.push((
            "NextToken",
            Value::text(encode_token("streams", &[&last.name])),
        ));
    }
    Ok(Value::Map(
        out.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    ))
}

fn list_shards(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let limit = req
        .opt_int("MaxResults", 1, 10_000)?
        .unwrap_or(LIST_SHARDS_PAGE)
        .min(LIST_SHARDS_PAGE) as usize;
    let filter = req.opt_obj("ShardFilter")?;
    let named = match (req.get("StreamName"), req.get("StreamARN")) {
        (None, None) => None,
        _ => Some(stream_name(req)?),
    };
    let explicit_start = req
        .opt_str("ExclusiveStartShardId")?
        .map(|s| s.parse::<ShardId>())
        .transpose()?;
    // A token carries the stream and the last shard returned. Paginators (boto3's among them)
    // send the first page's other members along with it: the stream must then be the same,
    // and a start position is combined with the token's.
    let (info, mut after) = match req.opt_str("NextToken")? {
        Some(t) => {
            let parts = decode_token("shards", t, 3)?;
            if let Some(n) = named.as_ref().filter(|n| **n != parts[0]) {
                return Err(invalid(
                    "NextToken",
                    format!("continues a listing of stream {:?}, not of {n:?}", parts[0]),
                ));
            }
            let info = ctx.core.stream(&parts[0])?;
            if parts[1] != info.created_ms.to_string() {
                return Err(ServiceError::not_found(
                    "NextToken",
                    format!(
                        "stream {:?} was deleted after the token was issued",
                        info.name
                    ),
                ));
            }
            let from_token = parts[2].parse::<ShardId>()?;
            (
                info,
                Some(explicit_start.map_or(from_token, |e| e.max(from_token))),
            )
        }
        None => {
            let name = named.ok_or_else(|| {
                validation("StreamName or StreamARN: one of them is required".into())
            })?;
            (ctx.core.stream(&name)?, explicit_start)
        }
    };
    if let Some(ts) = req.opt_timestamp("StreamCreationTimestamp")?
        && ts / 1000 != info.created_ms / 1000
    {
        return Err(ServiceError::not_found(
            "StreamCreationTimestamp",
            format!(
                "stream {:?} was created at {} ms, not {ts} ms",
                info.name, info.created_ms
            ),
        ));
    }
    if let Some(f) = filter {
        // Every shard is open and has been since the stream was created, so only AFTER_SHARD_ID
        // narrows the list.
        match f.str("Type")? {
            "AFTER_SHARD_ID" => {
                let id = f.opt_str("ShardId")?.ok_or_else(|| {
                    invalid(
                        "ShardFilter.ShardId",
                        "required when Type is AFTER_SHARD_ID".into(),
                    )
                })?;
                let id = id.parse::<ShardId>()?;
                after = Some(after.map_or(id, |a| a.max(id)));
            }
            "AT_TRIM_HORIZON" | "FROM_TRIM_HORIZON" | "AT_LATEST" => {}
            "AT_TIMESTAMP" | "FROM_TIMESTAMP" => {
                f.opt_timestamp("Timestamp")?.ok_or_else(|| {
                    invalid(
                        "ShardFilter.Timestamp",
                        "required when Type is AT_TIMESTAMP or FROM_TIMESTAMP".into(),
                    )
                })?;
            }
            other => {
                return Err(validation(format!(
                    "ShardFilter.Type: must be AFTER_SHARD_ID, AT_TRIM_HORIZON, FROM_TRIM_HORIZON, AT_LATEST, AT_TIMESTAMP or FROM_TIMESTAMP, got {other:?}"
                )));
            }
        }
    }
    let (shards, more) = paging::shards_page(&info, after, limit);
    let mut out = vec![(
        "Shards".to_string(),
        Value::Array(shards.iter().map(shard).collect()),
    )];
    if let (true, Some(last)) = (more, shards.last()) {
        out.push((
            "NextToken".into(),
            Value::text(encode_token(
                "shards",
                &[
                    &info.name,
                    &info.created_ms.to_string(),
                    &ShardId(last.index).to_string(),
                ],
            )),
        ));
    }
    Ok(Value::Map(out))
}

fn entry(obj: &Obj<'_>) -> Result<v1::PutRecordsEntry, ServiceError> {
    Ok(v1::PutRecordsEntry {
        data: obj.blob("Data")?,
        partition_key: obj.opt_str("PartitionKey")?.unwrap_or_default().to_string(),
        explicit_hash_key: obj.opt_str("ExplicitHashKey")?.map(str::to_string),
    })
}

async fn put_record(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let name = stream_name(req)?;
    let (shard, seq) = ctx
        .core
        .put_record(
            &name,
            entry(req)?,
            req.opt_str("SequenceNumberForOrdering")?,
        )
        .await?;
    Ok(Value::map([
        ("ShardId", Value::text(shard.to_string())),
        ("SequenceNumber", Value::text(seq.to_string())),
        ("EncryptionType", Value::text("NONE")),
    ]))
}

async fn put_records(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let name = stream_name(req)?;
    let items = req
        .opt_list("Records")?
        .ok_or_else(|| validation("Records: required, but missing".into()))?;
    let entries = items
        .iter()
        .enumerate()
        .map(|(i, v)| entry(&req.item("Records", i, v)?))
        .collect::<Result<Vec<_>, _>>()?;
    let results = ctx.core.put_records(&name, entries).await?;
    let mut failed = 0;
    let records = results
        .into_iter()
        .map(|r| match r {
            Ok((shard, seq)) => Value::map([
                ("SequenceNumber", Value::text(seq.to_string())),
                ("ShardId", Value::text(shard.to_string())),
            ]),
            Err(e) => {
                failed += 1;
                Value::map([
                    ("ErrorCode", Value::text(e.code().kinesis_type())),
                    ("ErrorMessage", Value::text(e.to_string())),
                ])
            }
        })
        .collect();
    Ok(Value::map([
        ("FailedRecordCount", Value::Int(failed)),
        ("Records", Value::Array(records)),
        ("EncryptionType", Value::text("NONE")),
    ]))
}

async fn get_shard_iterator(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let name = stream_name(req)?;
    let shard_id = req.str("ShardId")?;
    let kind = match req.str("ShardIteratorType")? {
        "TRIM_HORIZON" => v1::ShardIteratorType::TrimHorizon,
        "LATEST" => v1::ShardIteratorType::Latest,
        "AT_SEQUENCE_NUMBER" => v1::ShardIteratorType::AtSequenceNumber,
        "AFTER_SEQUENCE_NUMBER" => v1::ShardIteratorType::AfterSequenceNumber,
        "AT_TIMESTAMP" => v1::ShardIteratorType::AtTimestamp,
        other => {
            return Err(validation(format!(
                "ShardIteratorType: must be AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, TRIM_HORIZON, LATEST or AT_TIMESTAMP, got {other:?}"
            )));
        }
    };
    let timestamp_ms = req.opt_timestamp("Timestamp")?;
    if kind == v1::ShardIteratorType::AtTimestamp && timestamp_ms.is_none() {
        return Err(invalid(
            "Timestamp",
            "required when ShardIteratorType is AT_TIMESTAMP".into(),
        ));
    }
    let it = ctx
        .core
        .get_shard_iterator(v1::GetShardIteratorRequest {
            stream_name: name,
            shard_id: shard_id.to_string(),
            shard_iterator_type: kind as i32,
            starting_sequence_number: req
                .opt_str("StartingSequenceNumber")?
                .unwrap_or_default()
                .to_string(),
            timestamp_ms: timestamp_ms.unwrap_or(0),
        })
        .await?;
    Ok(Value::map([("ShardIterator", Value::text(it))]))
}

async fn get_records(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let it = req.str("ShardIterator")?;
    let limit = req.opt_int("Limit", 1, i64::from(validate::MAX_GET_RECORDS))?;
    // The iterator names the stream; a StreamARN sent along must at least be one.
    if let Some(a) = req.opt_str("StreamARN")? {
        arn_stream("StreamARN", a)?;
    }
    let resp = ctx
        .core
        .get_records(it, limit.map(to_u32).unwrap_or(0), false)
        .await?;
    let records = resp
        .records
        .into_iter()
        .map(|r| {
            Value::map([
                ("SequenceNumber", Value::text(r.sequence_number)),
                (
                    "ApproximateArrivalTimestamp",
                    timestamp(r.approximate_arrival_timestamp_ms),
                ),
                ("Data", Value::Blob(r.data)),
                ("PartitionKey", Value::text(r.partition_key)),
            ])
        })
        .collect();
    Ok(Value::map([
        ("Records", Value::Array(records)),
        ("NextShardIterator", Value::text(resp.next_shard_iterator)),
        (
            "MillisBehindLatest",
            Value::Int(resp.millis_behind_latest.into()),
        ),
    ]))
}

async fn retention(
    ctx: &Ctx<'_>,
    req: &Obj<'_>,
    change: RetentionChange,
) -> Result<Value, ServiceError> {
    let name = stream_name(req)?;
    let hours = req
        .opt_int("RetentionPeriodHours", 0, i64::from(u32::MAX))?
        .ok_or_else(|| validation("RetentionPeriodHours: required, but missing".into()))?;
    ctx.core
        .change_retention(&name, to_u32(hours), change)
        .await?;
    Ok(Value::map([]))
}

fn list_tags_for_stream(ctx: &Ctx<'_>, req: &Obj<'_>) -> Result<Value, ServiceError> {
    let info: StreamInfo = ctx.core.stream(&stream_name(req)?)?;
    let limit = req
        .opt_int("Limit", 1, i64::from(validate::MAX_TAGS_PER_STREAM))?
        .unwrap_or(i64::from(validate::MAX_TAGS_PER_STREAM));
    let (tags, more) =
        paging::tags_page(&info, req.opt_str("ExclusiveStartTagKey")?, limit as usize);
    Ok(Value::map([
        ("Tags", tag_list(tags.into_iter())),
        ("HasMoreTags", Value::Bool(more)),
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_lists_cover_the_kinesis_api_once() {
        let mut all: Vec<&str> = SUPPORTED
            .iter()
            .copied()
            .chain(NOT_YET.iter().map(|(a, _)| *a))
            .collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "an action is listed twice");
        // The 39 actions of the Kinesis Data Streams API reference, plus the 18 newer ones
        // (channels, queues, distribution strategy) that current SDKs know.
        assert_eq!(n, 39 + 18);
    }
}
