"""CBOR (application/x-amz-cbor-1.1), as the Java SDKs speak it, encoded and decoded here by
cbor2 (an implementation independent of Riptide's): PutRecord and GetRecords round trip raw
bytes, timestamps travel as tag 1 around epoch milliseconds, requests may use
indefinite-length maps, and errors come back in CBOR too. Requests are SigV4-signed by botocore."""

import os
import time
import urllib.error
import urllib.request

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import cbor2

from harness import ENDPOINTS, check, client, section, wait_active

CREDENTIALS = botocore.credentials.Credentials(
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
)
TS = "timestamp"


def decode(body):
    # Tag 1 (epoch time) is kept as ("timestamp", value) to see exactly what was sent.
    return cbor2.loads(body, semantic_decoders={1: lambda value, _immutable: (TS, value)})


def call(action, body, endpoint=ENDPOINTS[0]):
    """Sends a signed CBOR request; returns the HTTP status and the decoded answer."""
    raw = body if isinstance(body, bytes) else cbor2.dumps(body)
    req = botocore.awsrequest.AWSRequest(
        method="POST",
        url=endpoint + "/",
        data=raw,
        headers={
            "Content-Type": "application/x-amz-cbor-1.1",
            "X-Amz-Target": f"Kinesis_20131202.{action}",
        },
    )
    botocore.auth.SigV4Auth(CREDENTIALS, "kinesis", "us-east-1").add_auth(req)
    prepared = req.prepare()
    http = urllib.request.Request(prepared.url, data=raw, headers=dict(prepared.headers), method="POST")
    try:
        with urllib.request.urlopen(http, timeout=30) as resp:
            check(resp.headers["Content-Type"] == "application/x-amz-cbor-1.1", resp.headers)
            return resp.status, decode(resp.read())
    except urllib.error.HTTPError as e:
        check(e.headers["Content-Type"] == "application/x-amz-cbor-1.1", e.headers)
        return e.code, decode(e.read())


section("CreateStream in CBOR, written as an indefinite-length map like Jackson writes it")
body = b"\xbf" + cbor2.dumps("StreamName") + cbor2.dumps("cbor") + cbor2.dumps("ShardCount") + cbor2.dumps(1) + b"\xff"
status, answer = call("CreateStream", body)
check(status == 200 and answer == {}, (status, answer))
wait_active("cbor")

section("PutRecord: the data as a CBOR byte string")
payload = bytes(range(256)) * 4
before_ms = int(time.time() * 1000) - 1000
status, put = call("PutRecord", {"StreamName": "cbor", "Data": payload, "PartitionKey": "bin"})
check(status == 200, (status, put))
check(put["ShardId"] == "shardId-000000000000" and put["SequenceNumber"].isdigit(), put)

section("GetShardIterator AT_TIMESTAMP with a Java-style timestamp (tag 1, milliseconds)")
status, it = call(
    "GetShardIterator",
    {
        "StreamName": "cbor",
        "ShardId": "shardId-000000000000",
        "ShardIteratorType": "AT_TIMESTAMP",
        "Timestamp": cbor2.CBORTag(1, before_ms),
    },
)
check(status == 200 and isinstance(it["ShardIterator"], str), (status, it))

section("GetRecords: the same bytes back, the arrival time as tag 1 milliseconds")
status, got = call("GetRecords", {"ShardIterator": it["ShardIterator"], "Limit": 10}, endpoint=ENDPOINTS[2])
check(status == 200, (status, got))
check(len(got["Records"]) == 1, got)
rec = got["Records"][0]
check(rec["Data"] == payload and isinstance(rec["Data"], bytes), "data round trip")
check(rec["SequenceNumber"] == put["SequenceNumber"] and rec["PartitionKey"] == "bin", rec)
kind, arrival = rec["ApproximateArrivalTimestamp"]
check(kind == TS and isinstance(arrival, int) and arrival >= before_ms, rec["ApproximateArrivalTimestamp"])
check(got["MillisBehindLatest"] == 0 and isinstance(got["NextShardIterator"], str), got)
# The JSON API shows the same record: CBOR and JSON are two encodings of one answer.
j = client().get_records(ShardIterator=it["ShardIterator"])["Records"][0]
check(j["Data"] == payload and int(j["ApproximateArrivalTimestamp"].timestamp() * 1000) == arrival, j)
# A timestamp in seconds under tag 1 (the CBOR specification's form) is understood as well.
status, it_s = call(
    "GetShardIterator",
    {"StreamName": "cbor", "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": cbor2.CBORTag(1, arrival / 1000.0 + 3600)},
)
status, none = call("GetRecords", {"ShardIterator": it_s["ShardIterator"]})
check(status == 200 and none["Records"] == [], none)

section("errors in CBOR")
status, err = call("GetRecords", {"ShardIterator": "garbage"})
check(status == 400 and err["__type"] == "InvalidArgumentException" and "shard_iterator" in err["message"], (status, err))
status, err = call("PutRecord", b"\xa1\x01")
check(status == 400 and err["__type"] == "SerializationException", (status, err))
status, err = call("PutRecord", {"StreamName": "cbor", "PartitionKey": "k"})
check(status == 400 and err["__type"] == "ValidationException" and "Data" in err["message"], (status, err))
print("cbor: all checks passed", flush=True)
