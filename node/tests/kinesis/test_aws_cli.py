"""The AWS CLI (v1, from PyPI) against Riptide's Kinesis API: a stream's life from create-stream
to delete-stream, records in and out, tags and retention, and how an error looks to a user."""

import base64
import json
import os
import subprocess

from harness import check, section, wait_active


def aws(*args, ok=True):
    """Runs `aws kinesis ...`; returns the parsed JSON output, or the error text when `ok` is
    false (and the command must then fail)."""
    proc = subprocess.run(
        ["aws", "kinesis", *args, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ,
    )
    if ok:
        check(proc.returncode == 0, f"aws kinesis {' '.join(args)} failed: {proc.stderr}")
        return json.loads(proc.stdout) if proc.stdout.strip() else {}
    check(proc.returncode != 0, f"aws kinesis {' '.join(args)} should have failed: {proc.stdout}")
    return proc.stderr


section("create-stream, describe-stream-summary, list-streams, list-shards")
aws("create-stream", "--stream-name", "cli", "--shard-count", "2")
wait_active("cli")
summary = aws("describe-stream-summary", "--stream-name", "cli")["StreamDescriptionSummary"]
check(summary["StreamStatus"] == "ACTIVE" and summary["OpenShardCount"] == 2, summary)
arn = summary["StreamARN"]
check("cli" in aws("list-streams")["StreamNames"], "listed")
shards = aws("list-shards", "--stream-arn", arn)["Shards"]
check([s["ShardId"] for s in shards] == ["shardId-000000000000", "shardId-000000000001"], shards)
described = aws("describe-stream", "--stream-name", "cli")["StreamDescription"]
check(len(described["Shards"]) == 2 and described["StreamARN"] == arn, described)

section("put-record, put-records, get-shard-iterator, get-records")
# AWS CLI v1 sends a blob given on the command line as its raw bytes.
put = aws("put-record", "--stream-name", "cli", "--partition-key", "k1", "--data", "hello from the cli")
shard, seq = put["ShardId"], put["SequenceNumber"]
# ... and so does a blob inside --records (the output shows blobs in base64).
records = json.dumps([{"Data": f"batch {i}", "PartitionKey": "k1"} for i in range(3)])
batch = aws("put-records", "--stream-name", "cli", "--records", records)
check(batch["FailedRecordCount"] == 0 and len(batch["Records"]) == 3, batch)
it = aws(
    "get-shard-iterator", "--stream-name", "cli", "--shard-id", shard,
    "--shard-iterator-type", "AT_SEQUENCE_NUMBER", "--starting-sequence-number", seq,
)["ShardIterator"]
got = aws("get-records", "--shard-iterator", it, "--limit", "10")
data = [base64.b64decode(r["Data"]).decode() for r in got["Records"]]
check(data == ["hello from the cli", "batch 0", "batch 1", "batch 2"], data)
check(got["MillisBehindLatest"] == 0 and got["NextShardIterator"], got)

section("tags and retention")
aws("add-tags-to-stream", "--stream-name", "cli", "--tags", "env=dev,team=data")
tags = aws("list-tags-for-stream", "--stream-name", "cli")["Tags"]
check(tags == [{"Key": "env", "Value": "dev"}, {"Key": "team", "Value": "data"}], tags)
aws("remove-tags-from-stream", "--stream-name", "cli", "--tag-keys", "env")
check(aws("list-tags-for-resource", "--resource-arn", arn)["Tags"] == [{"Key": "team", "Value": "data"}], "tags")
aws("increase-stream-retention-period", "--stream-name", "cli", "--retention-period-hours", "72")
check(aws("describe-stream-summary", "--stream-name", "cli")["StreamDescriptionSummary"]["RetentionPeriodHours"] == 72, "72")
limits = aws("describe-limits")
check(limits["OpenShardCount"] == 2, limits)

section("errors as a user sees them")
err = aws("describe-stream", "--stream-name", "missing", ok=False)
check("ResourceNotFoundException" in err and "missing" in err, err)
err = aws("split-shard", "--stream-name", "cli", "--shard-to-split", shard, "--new-starting-hash-key", "5", ok=False)
check("UnsupportedOperationException" in err and "SplitShard" in err, err)

section("delete-stream")
aws("delete-stream", "--stream-name", "cli")
check("cli" not in aws("list-streams")["StreamNames"], "deleted")
print("aws cli: all checks passed", flush=True)
