"""The original article's three examples (article/), run exactly as written, with the endpoint
and dummy credentials coming from the environment only.

The first example runs as written. The second and third do not, against Kinesis either: boto3
itself refuses them before sending anything (an empty PartitionKey breaks the API's minimum
length of 1; GetRecords takes a ShardIterator, not StreamName and ShardId). The test checks
exactly that, checks that nothing reached the stream, and then runs each with the smallest
change that makes it valid Kinesis code."""

import json
import os
import subprocess
import sys

import boto3

from harness import check, read_shard, section, wait_active

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "article")


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=os.environ, cwd=HERE)


section("4.1 aws kinesis create-stream --stream-name my-stream --shard-count 1")
proc = run("bash", os.path.join(HERE, "create_stream.sh"))
check(proc.returncode == 0, f"create-stream failed: {proc.stderr}")
wait_active("my-stream")

# The article's code makes its client with boto3.client('kinesis') alone: the endpoint and the
# credentials come from AWS_ENDPOINT_URL and the AWS_* variables, as they do here.
kinesis = boto3.client("kinesis")
shards = kinesis.list_shards(StreamName="my-stream")["Shards"]
check([s["ShardId"] for s in shards] == ["shardId-000000000000"], shards)

section("4.2 put_record as written")
proc = run(sys.executable, os.path.join(HERE, "put_record.py"))
check(proc.returncode != 0, "the article's put_record ran, but boto3 should refuse PartitionKey=''")
check("ParamValidationError" in proc.stderr and "PartitionKey" in proc.stderr, proc.stderr)
it = kinesis.get_shard_iterator(StreamName="my-stream", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")
check(read_shard(kinesis, it["ShardIterator"])[0] == [], "nothing reached the stream")

section("4.2 put_record with a partition key")
data = {"timestamp": "2021-01-01T00:00:00Z", "value": 100}
data_bytes = json.dumps(data).encode("utf-8")
response = kinesis.put_record(StreamName="my-stream", PartitionKey="article", Data=data_bytes)
check(response["ShardId"] == "shardId-000000000000", response)

section("4.3 get_records as written")
proc = run(sys.executable, os.path.join(HERE, "get_records.py"))
check(proc.returncode != 0, "the article's get_records ran, but boto3 should refuse it")
check("ParamValidationError" in proc.stderr and "ShardIterator" in proc.stderr, proc.stderr)

section("4.3 get_records through a shard iterator")
iterator = kinesis.get_shard_iterator(StreamName="my-stream", ShardId="shardId-000000000000", ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
response = kinesis.get_records(ShardIterator=iterator, Limit=10)
records = response["Records"]
check([json.loads(r["Data"]) for r in records] == [data], records)
print("article: example 4.1 ran as written; 4.2 and 4.3 are refused by boto3 itself and ran with the smallest fix", flush=True)
