"""boto3 against Riptide's Kinesis API: every supported action, StreamARN in place of
StreamName, every shard iterator type, paging through GetRecords to the end, every error type.

The cluster runs with Kinesis's per-shard write quotas (1,000 records and 1 MiB per second).
"""

import datetime
import json
import urllib.error
import urllib.request

from harness import (
    ENDPOINTS,
    advance_clock,
    check,
    client,
    expect_error,
    put_all,
    read_shard,
    run_clock,
    section,
    stop_clock,
    wait_active,
)

k = client()
HASH_SPACE = 2**128

section("CreateStream, then CREATING and ACTIVE")
k.create_stream(StreamName="orders", ShardCount=3, Tags={"team": "payments"})
statuses = wait_active("orders")
check(statuses == ["CREATING", "ACTIVE"], f"statuses seen: {statuses}")
k.get_waiter("stream_exists").wait(
    StreamName="orders", WaiterConfig={"Delay": 1, "MaxAttempts": 30}
)
# An ON_DEMAND stream needs no shard count (Kinesis gives it 4 shards).
k.create_stream(StreamName="clicks", StreamModeDetails={"StreamMode": "ON_DEMAND"})
k.create_stream(StreamName="audit", ShardCount=1)
for name in ["clicks", "audit"]:
    wait_active(name)

section("DescribeStream, DescribeStreamSummary")
d = k.describe_stream(StreamName="orders")["StreamDescription"]
arn = d["StreamARN"]
check(arn == "arn:aws:kinesis:us-east-1:000000000000:stream/orders", arn)
check(d["StreamStatus"] == "ACTIVE", d)
check(d["RetentionPeriodHours"] == 24, d)
check(d["StreamModeDetails"] == {"StreamMode": "PROVISIONED"}, d)
check(d["HasMoreShards"] is False, d)
check(isinstance(d["StreamCreationTimestamp"], datetime.datetime), d)
shards = d["Shards"]
check(
    [s["ShardId"] for s in shards]
    == ["shardId-000000000000", "shardId-000000000001", "shardId-000000000002"],
    shards,
)
# The hash ranges cover the whole 128-bit space without gaps.
check(shards[0]["HashKeyRange"]["StartingHashKey"] == "0", shards)
for a, b in zip(shards, shards[1:]):
    check(
        int(a["HashKeyRange"]["EndingHashKey"]) + 1 == int(b["HashKeyRange"]["StartingHashKey"]),
        shards,
    )
check(int(shards[-1]["HashKeyRange"]["EndingHashKey"]) == HASH_SPACE - 1, shards)
page = k.describe_stream(StreamName="orders", Limit=2)["StreamDescription"]
check([s["ShardId"] for s in page["Shards"]] == [s["ShardId"] for s in shards[:2]], page)
check(page["HasMoreShards"] is True, page)
page = k.describe_stream(StreamARN=arn, ExclusiveStartShardId="shardId-000000000001")
page = page["StreamDescription"]
check([s["ShardId"] for s in page["Shards"]] == ["shardId-000000000002"], page)
check(page["HasMoreShards"] is False, page)
summary = k.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"]
check(summary["OpenShardCount"] == 3 and summary["ConsumerCount"] == 0, summary)
check(summary["StreamName"] == "orders" and summary["StreamARN"] == arn, summary)
clicks = k.describe_stream_summary(StreamName="clicks")["StreamDescriptionSummary"]
check(clicks["StreamModeDetails"] == {"StreamMode": "ON_DEMAND"}, clicks)
check(clicks["OpenShardCount"] == 4, clicks)
# Signed for another region, ARNs show that region.
eu = client(region_name="eu-west-1")
eu_arn = eu.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["StreamARN"]
check(eu_arn == "arn:aws:kinesis:eu-west-1:000000000000:stream/orders", eu_arn)

section("ListStreams")
first = k.list_streams(Limit=2)
check(first["StreamNames"] == ["audit", "clicks"], first)
check(first["HasMoreStreams"] is True and "NextToken" in first, first)
check(
    [(s["StreamName"], s["StreamStatus"], s["StreamModeDetails"]["StreamMode"]) for s in first["StreamSummaries"]]
    == [("audit", "ACTIVE", "PROVISIONED"), ("clicks", "ACTIVE", "ON_DEMAND")],
    first,
)
check(first["StreamSummaries"][0]["StreamARN"].endswith(":stream/audit"), first)
rest = k.list_streams(NextToken=first["NextToken"])
check(rest["StreamNames"] == ["orders"] and rest["HasMoreStreams"] is False, rest)
check("NextToken" not in rest, rest)
check(k.list_streams(ExclusiveStartStreamName="audit")["StreamNames"] == ["clicks", "orders"], "start")
names = [
    n
    for p in k.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 1})
    for n in p["StreamNames"]
]
check(names == ["audit", "clicks", "orders"], names)
expect_error(
    "InvalidArgumentException",
    k.list_streams,
    NextToken=first["NextToken"],
    ExclusiveStartStreamName="audit",
)

section("ListShards")
one = k.list_shards(StreamName="orders", MaxResults=2)
check([s["ShardId"] for s in one["Shards"]] == [s["ShardId"] for s in shards[:2]], one)
two = k.list_shards(NextToken=one["NextToken"])
check([s["ShardId"] for s in two["Shards"]] == ["shardId-000000000002"], two)
check("NextToken" not in two, two)
check(k.list_shards(StreamARN=arn)["Shards"] == shards, "list by ARN")
after = k.list_shards(StreamName="orders", ExclusiveStartShardId="shardId-000000000000")
check([s["ShardId"] for s in after["Shards"]] == [s["ShardId"] for s in shards[1:]], after)
for f in [
    {"Type": "AFTER_SHARD_ID", "ShardId": "shardId-000000000001"},
    {"Type": "AT_TRIM_HORIZON"},
    {"Type": "FROM_TRIM_HORIZON"},
    {"Type": "AT_LATEST"},
    {"Type": "AT_TIMESTAMP", "Timestamp": datetime.datetime.now(datetime.timezone.utc)},
    {"Type": "FROM_TIMESTAMP", "Timestamp": datetime.datetime.now(datetime.timezone.utc)},
]:
    got = [s["ShardId"] for s in k.list_shards(StreamName="orders", ShardFilter=f)["Shards"]]
    want = ["shardId-000000000002"] if f["Type"] == "AFTER_SHARD_ID" else [s["ShardId"] for s in shards]
    check(got == want, f"{f}: {got}")
created = summary["StreamCreationTimestamp"]
check(len(k.list_shards(StreamName="orders", StreamCreationTimestamp=created)["Shards"]) == 3, "ts")
paged = [
    s["ShardId"]
    for p in k.get_paginator("list_shards").paginate(
        StreamName="orders", PaginationConfig={"PageSize": 1}
    )
    for s in p["Shards"]
]
check(paged == [s["ShardId"] for s in shards], paged)
msg = expect_error("InvalidArgumentException", k.list_shards, NextToken=one["NextToken"], StreamName="audit")
check("NextToken" in msg, msg)
expect_error("InvalidArgumentException", k.list_shards, NextToken="bm90IGEgdG9rZW4")

section("PutRecord, PutRecords, ExplicitHashKey, SequenceNumberForOrdering")
r1 = k.put_record(StreamName="orders", Data=b"first", PartitionKey="user-1")
check(r1["EncryptionType"] == "NONE", r1)
user_shard = r1["ShardId"]
r2 = k.put_record(StreamARN=arn, Data=b"second", PartitionKey="user-1", SequenceNumberForOrdering=r1["SequenceNumber"])
check(r2["ShardId"] == user_shard, (r1, r2))
check(int(r2["SequenceNumber"]) > int(r1["SequenceNumber"]), (r1, r2))
low = k.put_record(StreamName="orders", Data=b"low", PartitionKey="x", ExplicitHashKey="0")
high = k.put_record(StreamName="orders", Data=b"high", PartitionKey="x", ExplicitHashKey=str(HASH_SPACE - 1))
check(low["ShardId"] == "shardId-000000000000" and high["ShardId"] == "shardId-000000000002", (low, high))
batch = k.put_records(
    StreamName="orders",
    Records=[{"Data": f"batch-{i}".encode(), "PartitionKey": f"key-{i}"} for i in range(500)],
)
check(batch["FailedRecordCount"] == 0 and len(batch["Records"]) == 500, batch["FailedRecordCount"])
check({r["ShardId"] for r in batch["Records"]} == {s["ShardId"] for s in shards}, "all shards used")
by_arn = k.put_records(StreamARN=arn, Records=[{"Data": b"\x00\xff binary", "PartitionKey": "bin"}])
check(by_arn["FailedRecordCount"] == 0, by_arn)

section("GetShardIterator: every type; GetRecords on another node")
other = client(ENDPOINTS[2])


def first_records(kind, **kw):
    it = k.get_shard_iterator(StreamName="orders", ShardId=user_shard, ShardIteratorType=kind, **kw)
    # Iterators are valid on any node.
    return other.get_records(ShardIterator=it["ShardIterator"], Limit=10000)


recs = first_records("TRIM_HORIZON")["Records"]
check(recs[0]["Data"] == b"first" and recs[1]["Data"] == b"second", recs[:2])
check(recs[0]["SequenceNumber"] == r1["SequenceNumber"] and recs[0]["PartitionKey"] == "user-1", recs[0])
check(isinstance(recs[0]["ApproximateArrivalTimestamp"], datetime.datetime), recs[0])
at = first_records("AT_SEQUENCE_NUMBER", StartingSequenceNumber=r2["SequenceNumber"])["Records"]
check(at[0]["SequenceNumber"] == r2["SequenceNumber"], at[0])
after_recs = first_records("AFTER_SEQUENCE_NUMBER", StartingSequenceNumber=r1["SequenceNumber"])["Records"]
check(after_recs[0]["SequenceNumber"] == r2["SequenceNumber"], after_recs[0])
latest = k.get_shard_iterator(StreamName="orders", ShardId=user_shard, ShardIteratorType="LATEST")
resp = k.get_records(ShardIterator=latest["ShardIterator"])
check(resp["Records"] == [] and resp["MillisBehindLatest"] == 0, resp)
newest = k.put_record(StreamName="orders", Data=b"after latest", PartitionKey="user-1")
resp = k.get_records(ShardIterator=resp["NextShardIterator"])
check([r["Data"] for r in resp["Records"]] == [b"after latest"], resp["Records"])
check(resp["Records"][0]["SequenceNumber"] == newest["SequenceNumber"], resp)
# AT_TIMESTAMP: a batch written two seconds (of cluster time) after everything else.
advance_clock(2000)
later = k.put_records(
    StreamName="orders",
    Records=[{"Data": f"later-{i}".encode(), "PartitionKey": "user-1"} for i in range(3)],
)
later_seq = later["Records"][0]["SequenceNumber"]
arrival = first_records("AT_SEQUENCE_NUMBER", StartingSequenceNumber=later_seq)["Records"][0][
    "ApproximateArrivalTimestamp"
]
ts = first_records("AT_TIMESTAMP", Timestamp=arrival)["Records"]
check([r["Data"] for r in ts] == [b"later-0", b"later-1", b"later-2"], [r["Data"] for r in ts])
future = arrival + datetime.timedelta(hours=1)
check(first_records("AT_TIMESTAMP", Timestamp=future)["Records"] == [], "nothing after the future")

section("GetRecords paged to the end, MillisBehindLatest")
k.create_stream(StreamName="pages", ShardCount=1)
wait_active("pages")
entries = [{"Data": f"page-{i}".encode(), "PartitionKey": f"p{i % 7}"} for i in range(2500)]
acks = put_all(k, "pages", entries[:500])
advance_clock(60_000)
acks += put_all(k, "pages", entries[500:])
it = k.get_shard_iterator(StreamName="pages", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")
got, behind = read_shard(k, it["ShardIterator"], limit=300)
# Records the quota refused were sent again later, so the shard holds them in the order of
# their sequence numbers, not of `entries`.
order = sorted(range(len(entries)), key=lambda i: int(acks[i][1]))
check(len(got) == 2500, f"read {len(got)} of 2500")
check([r["Data"] for r in got] == [entries[i]["Data"] for i in order], "data in sequence order")
check([r["SequenceNumber"] for r in got] == [acks[i][1] for i in order], "sequence numbers as acknowledged")
seqs = [int(r["SequenceNumber"]) for r in got]
check(all(a < b for a, b in zip(seqs, seqs[1:])), "sequence numbers increase")
check(len(behind) == 10 and behind[0] >= 60_000 and behind[-1] == 0, f"MillisBehindLatest {behind}")

section("Increase/DecreaseStreamRetentionPeriod")
k.increase_stream_retention_period(StreamName="orders", RetentionPeriodHours=48)
check(k.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["RetentionPeriodHours"] == 48, "48")
k.decrease_stream_retention_period(StreamARN=arn, RetentionPeriodHours=24)
check(k.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["RetentionPeriodHours"] == 24, "24")
msg = expect_error("InvalidArgumentException", k.increase_stream_retention_period, StreamName="orders", RetentionPeriodHours=12)
check("retention_period_hours" in msg, msg)
expect_error("InvalidArgumentException", k.decrease_stream_retention_period, StreamName="orders", RetentionPeriodHours=100)
msg = expect_error("InvalidArgumentException", k.increase_stream_retention_period, StreamName="orders", RetentionPeriodHours=9000)
check("8760" in msg, msg)

section("tags: AddTagsToStream, RemoveTagsFromStream, ListTagsForStream, TagResource, UntagResource, ListTagsForResource")


def tags_of(**kw):
    return {t["Key"]: t["Value"] for t in k.list_tags_for_stream(**kw)["Tags"]}


check(tags_of(StreamName="orders") == {"team": "payments"}, tags_of(StreamName="orders"))
k.add_tags_to_stream(StreamName="orders", Tags={"env": "test", "owner": "ops"})
page = k.list_tags_for_stream(StreamName="orders", Limit=1)
check(page["Tags"] == [{"Key": "env", "Value": "test"}] and page["HasMoreTags"] is True, page)
page = k.list_tags_for_stream(StreamARN=arn, ExclusiveStartTagKey="env")
check([t["Key"] for t in page["Tags"]] == ["owner", "team"] and page["HasMoreTags"] is False, page)
k.remove_tags_from_stream(StreamName="orders", TagKeys=["owner", "absent"])
check(tags_of(StreamName="orders") == {"env": "test", "team": "payments"}, "removed")
k.tag_resource(ResourceARN=arn, Tags={"cost": "1", "env": "prod"})
res = {t["Key"]: t["Value"] for t in k.list_tags_for_resource(ResourceARN=arn)["Tags"]}
check(res == {"cost": "1", "env": "prod", "team": "payments"}, res)
k.untag_resource(ResourceARN=arn, TagKeys=["cost", "env"])
check(tags_of(StreamName="orders") == {"team": "payments"}, "untagged")
created_tags = tags_of(StreamName="clicks")
check(created_tags == {}, created_tags)

section("DescribeLimits, UpdateStreamMode")
limits = k.describe_limits()
check(limits["ShardLimit"] == 1024 and limits["OnDemandStreamCountLimit"] == 100, limits)
check(limits["OpenShardCount"] == 3 + 4 + 1 + 1 and limits["OnDemandStreamCount"] == 1, limits)
k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "ON_DEMAND"})
check(k.describe_stream_summary(StreamName="orders")["StreamDescriptionSummary"]["StreamModeDetails"]["StreamMode"] == "ON_DEMAND", "mode")
check(k.describe_limits()["OnDemandStreamCount"] == 2, "two on-demand streams")
k.update_stream_mode(StreamARN=arn, StreamModeDetails={"StreamMode": "PROVISIONED"})
check(k.describe_limits()["OnDemandStreamCount"] == 1, "back to one")

section("every error type")
msg = expect_error("ResourceNotFoundException", k.describe_stream, StreamName="nope")
check("nope" in msg and "stream_name" in msg, msg)
expect_error("ResourceNotFoundException", k.put_record, StreamName="nope", Data=b"x", PartitionKey="k")
expect_error("ResourceNotFoundException", k.get_shard_iterator, StreamName="orders", ShardId="shardId-000000000009", ShardIteratorType="LATEST")
msg = expect_error("ResourceInUseException", k.create_stream, StreamName="orders", ShardCount=1)
check("already exists" in msg, msg)
msg = expect_error(
    "InvalidArgumentException",
    k.get_shard_iterator,
    StreamName="orders",
    ShardId=user_shard,
    ShardIteratorType="AT_SEQUENCE_NUMBER",
    StartingSequenceNumber="99999999999999999",
)
check("starting_sequence_number" in msg, msg)
expect_error("InvalidArgumentException", k.put_record, StreamName="orders", Data=b"x", PartitionKey="k", ExplicitHashKey=str(HASH_SPACE))
expect_error("InvalidArgumentException", k.get_shard_iterator, StreamName="orders", ShardId=user_shard, ShardIteratorType="AT_TIMESTAMP")
expect_error("InvalidArgumentException", k.get_records, ShardIterator="not-an-iterator")
msg = expect_error("ValidationException", k.get_shard_iterator, StreamName="orders", ShardId=user_shard, ShardIteratorType="SIDEWAYS")
check("ShardIteratorType" in msg, msg)
expect_error("ValidationException", k.update_stream_mode, StreamARN=arn, StreamModeDetails={"StreamMode": "FAST"})
expect_error("ValidationException", k.list_shards, StreamName="orders", ShardFilter={"Type": "SOMETIMES"})
msg = expect_error("ValidationException", k.describe_stream_summary, StreamARN="arn:aws:kinesis:us-east-1:000000000000:table/orders")
check("StreamARN" in msg, msg)
# 50 tags per stream: "orders" has one.
msg = expect_error("LimitExceededException", k.add_tags_to_stream, StreamName="orders", Tags={f"t{i}": "v" for i in range(50)})
check("50" in msg, msg)
check(tags_of(StreamName="orders") == {"team": "payments"}, "nothing added")
k.add_tags_to_stream(StreamName="orders", Tags={f"t{i}": "v" for i in range(49)})
check(len(tags_of(StreamName="orders")) == 50, "exactly 50 fit")
# Kinesis's per-shard quotas: 1,000 records and 1 MiB per second.
k.create_stream(StreamName="hot", ShardCount=1)
wait_active("hot")
# The clock stands still, so that the quotas refill only when the script moves it.
stop_clock()
outcomes = [
    k.put_records(StreamName="hot", Records=[{"Data": b"h", "PartitionKey": f"h{i}"} for i in range(500)])
    for _ in range(3)
]
throttled = [r for o in outcomes for r in o["Records"] if "ErrorCode" in r]
check(sum(o["FailedRecordCount"] for o in outcomes) == len(throttled) > 0, [o["FailedRecordCount"] for o in outcomes])
check({r["ErrorCode"] for r in throttled} == {"ProvisionedThroughputExceededException"}, throttled[:1])
check(all("records/s" in r["ErrorMessage"] for r in throttled), throttled[:1])
# The quotas refill with the cluster's clock: a second later the record quota is full again.
advance_clock(1100)
big = b"x" * 1_000_000
k.put_record(StreamName="hot", Data=big, PartitionKey="big")
msg = expect_error("ProvisionedThroughputExceededException", k.put_record, StreamName="hot", Data=big, PartitionKey="big")
check("bytes/s" in msg, msg)
# Iterators expire after 5 minutes.
old = k.get_shard_iterator(StreamName="orders", ShardId=user_shard, ShardIteratorType="TRIM_HORIZON")
advance_clock(5 * 60 * 1000 + 1000)
msg = expect_error("ExpiredIteratorException", k.get_records, ShardIterator=old["ShardIterator"])
check("expired" in msg, msg)
run_clock()

section("actions not supported yet")
for call, kw, action in [
    (k.split_shard, {"StreamName": "orders", "ShardToSplit": "shardId-000000000000", "NewStartingHashKey": "1"}, "SplitShard"),
    (k.merge_shards, {"StreamName": "orders", "ShardToMerge": "shardId-000000000000", "AdjacentShardToMerge": "shardId-000000000001"}, "MergeShards"),
    (k.update_shard_count, {"StreamName": "orders", "TargetShardCount": 4, "ScalingType": "UNIFORM_SCALING"}, "UpdateShardCount"),
    (k.register_stream_consumer, {"StreamARN": arn, "ConsumerName": "c"}, "RegisterStreamConsumer"),
    (k.list_stream_consumers, {"StreamARN": arn}, "ListStreamConsumers"),
    (k.enable_enhanced_monitoring, {"StreamName": "orders", "ShardLevelMetrics": ["ALL"]}, "EnableEnhancedMonitoring"),
]:
    msg = expect_error("UnsupportedOperationException", call, **kw)
    check(action in msg and "not yet supported" in msg, msg)

section("the wire: unsigned, malformed signature, unknown action, bad JSON, missing member")


def raw(target, body, headers=None):
    req = urllib.request.Request(ENDPOINTS[1] + "/", data=body, method="POST")
    req.add_header("Content-Type", "application/x-amz-json-1.1")
    req.add_header("X-Amz-Target", target)
    for h, v in (headers or {}).items():
        req.add_header(h, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


status, body = raw("Kinesis_20131202.ListStreams", b"{}")
check(status == 200 and "orders" in body["StreamNames"], (status, body))
status, body = raw("Kinesis_20131202.ListStreams", b"{}", {"Authorization": "AWS4-HMAC-SHA256 Credential=broken", "X-Amz-Date": "20240101T000000Z"})
check(status == 400 and body["__type"] == "IncompleteSignatureException", (status, body))
check(body["message"].startswith("Authorization"), body)
status, body = raw("Kinesis_20131202.FlyToTheMoon", b"{}")
check(status == 400 and body["__type"] == "UnknownOperationException", (status, body))
status, body = raw("Kinesis_20131202.ListStreams", b"{not json")
check(status == 400 and body["__type"] == "SerializationException", (status, body))
status, body = raw("Kinesis_20131202.PutRecords", b'{"StreamName": "orders"}')
check(status == 400 and body["__type"] == "ValidationException" and "Records" in body["message"], (status, body))

section("DeleteStream")
k.delete_stream(StreamName="clicks")
k.delete_stream(StreamARN=k.describe_stream_summary(StreamName="audit")["StreamDescriptionSummary"]["StreamARN"])
expect_error("ResourceNotFoundException", k.describe_stream_summary, StreamName="clicks")
check("clicks" not in k.list_streams()["StreamNames"], "clicks deleted")
expect_error("ResourceNotFoundException", k.delete_stream, StreamName="clicks")
print("boto3: all checks passed", flush=True)
