"""Helpers shared by the Kinesis client scripts that node/tests/kinesis_clients.rs runs.

The Rust test starts a Riptide cluster with its Kinesis API on, then runs a script with
AWS_ENDPOINT_URL (the first node's Kinesis address), RIPTIDE_KINESIS_ENDPOINTS (every node's,
comma-separated) and dummy credentials in the environment. A script asks the test to move the
cluster's clock forward by printing `RIPTIDE-CLOCK advance-ms <ms>`, to stop it with
`RIPTIDE-CLOCK stop` or to let it run again with `RIPTIDE-CLOCK run`, and waits for `ok` on its
standard input. A script fails by raising; its output is shown when the Rust test fails.
"""

import os
import sys
import time

import boto3
import botocore.exceptions
from botocore.config import Config

ENDPOINTS = os.environ["RIPTIDE_KINESIS_ENDPOINTS"].split(",")


def client(endpoint=None, **config):
    """A boto3 Kinesis client that does not retry, so that every error reaches the test."""
    cfg = Config(retries={"total_max_attempts": 1}, **config)
    return boto3.client("kinesis", endpoint_url=endpoint or ENDPOINTS[0], config=cfg)


def section(name):
    print(f"--- {name}", flush=True)


def clock_request(request):
    print(f"RIPTIDE-CLOCK {request}", flush=True)
    answer = sys.stdin.readline().strip()
    if answer != "ok":
        raise AssertionError(f"clock request {request!r}: the test answered {answer!r}")


def advance_clock(ms):
    """Moves every node's clock forward by `ms` milliseconds."""
    clock_request(f"advance-ms {ms}")


def stop_clock():
    """Stops every node's clock: from now on only advance_clock moves it."""
    clock_request("stop")


def run_clock():
    """Lets a stopped clock run again (it jumps forward by the time it stood still)."""
    clock_request("run")


def expect_error(code, call, *args, **kwargs):
    """Calls `call` and checks that Riptide answered with the Kinesis error `code`; returns the
    error's message."""
    try:
        call(*args, **kwargs)
    except botocore.exceptions.ClientError as e:
        got = e.response["Error"]["Code"]
        message = e.response["Error"].get("Message", "")
        if got != code:
            raise AssertionError(f"expected {code}, got {got}: {message}") from e
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        if status != 400:
            raise AssertionError(f"{code} came with HTTP {status}, not 400") from e
        return message
    raise AssertionError(f"expected {code}, but the call succeeded")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def wait_active(name, endpoints=None, timeout_s=60):
    """Waits until every endpoint's node sees the stream ACTIVE; returns the statuses the first
    endpoint showed, in order, without repeats."""
    seen = []
    deadline = time.monotonic() + timeout_s
    for ep in endpoints or ENDPOINTS:
        k = client(ep)
        while True:
            status = k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"][
                "StreamStatus"
            ]
            if ep == (endpoints or ENDPOINTS)[0] and (not seen or seen[-1] != status):
                seen.append(status)
            if status == "ACTIVE":
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"stream {name} not ACTIVE on {ep} after {timeout_s} s")
            time.sleep(0.05)
    return seen


def read_shard(k, iterator, limit=None):
    """Follows NextShardIterator from `iterator` until a call returns no records; returns the
    records and the pages' MillisBehindLatest values."""
    records, behind = [], []
    while True:
        args = {"ShardIterator": iterator}
        if limit:
            args["Limit"] = limit
        resp = k.get_records(**args)
        behind.append(resp["MillisBehindLatest"])
        if not resp["Records"]:
            return records, behind
        records.extend(resp["Records"])
        iterator = resp["NextShardIterator"]


def put_all(k, stream, entries, pause_s=0.2, timeout_s=60):
    """PutRecords `entries` (500 per call), sending again only the records a shard's quota
    refused (those were not stored); returns each entry's (ShardId, SequenceNumber)."""
    results = [None] * len(entries)
    pending = list(range(len(entries)))
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(pending)} records still refused after {timeout_s} s")
        retry = []
        for start in range(0, len(pending), 500):
            chunk = pending[start : start + 500]
            resp = k.put_records(StreamName=stream, Records=[entries[i] for i in chunk])
            for i, r in zip(chunk, resp["Records"]):
                if "ErrorCode" in r:
                    if r["ErrorCode"] != "ProvisionedThroughputExceededException":
                        raise AssertionError(f"record {i} failed: {r}")
                    retry.append(i)
                else:
                    results[i] = (r["ShardId"], r["SequenceNumber"])
        pending = retry
        if pending:
            time.sleep(pause_s)
    return results
