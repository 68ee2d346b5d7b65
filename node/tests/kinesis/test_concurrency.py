"""Several hundred PutRecords calls from boto3 at once, spread over every node: every
acknowledged record is stored exactly once, at the shard and sequence number its answer gave.
boto3 does not retry here, so no call can store a record twice on purpose."""

import collections
import concurrent.futures
import threading

from harness import ENDPOINTS, check, client, read_shard, section, wait_active

CALLS = 600
RECORDS_PER_CALL = 10
WORKERS = 200

k = client()
section("a stream of 4 shards")
k.create_stream(StreamName="burst", ShardCount=4)
wait_active("burst")

local = threading.local()


def put(call):
    if not hasattr(local, "clients"):
        local.clients = [client(ep, max_pool_connections=4) for ep in ENDPOINTS]
    k = local.clients[call % len(ENDPOINTS)]
    records = [
        {"Data": f"call-{call}-record-{i}".encode(), "PartitionKey": f"key-{call}-{i}"}
        for i in range(RECORDS_PER_CALL)
    ]
    resp = k.put_records(StreamName="burst", Records=records)
    return [(r["Data"].decode(), res) for r, res in zip(records, resp["Records"])], resp["FailedRecordCount"]


section(f"{CALLS} PutRecords calls, {WORKERS} at a time")
acked = {}
failed = 0
with concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS) as pool:
    for results, n_failed in pool.map(put, range(CALLS)):
        failed += n_failed
        for data, res in results:
            check("ErrorCode" not in res, f"{data}: {res}")
            check(data not in acked, f"{data} acknowledged twice")
            acked[data] = (res["ShardId"], res["SequenceNumber"])
check(failed == 0, f"{failed} records failed")
check(len(acked) == CALLS * RECORDS_PER_CALL, len(acked))

section("read every shard back")
stored = collections.defaultdict(list)
for shard in k.list_shards(StreamName="burst")["Shards"]:
    it = k.get_shard_iterator(StreamName="burst", ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")
    records, _ = read_shard(k, it["ShardIterator"])
    for r in records:
        stored[r["Data"].decode()].append((shard["ShardId"], r["SequenceNumber"]))
lost = [d for d in acked if d not in stored]
dups = {d: at for d, at in stored.items() if len(at) > 1}
phantoms = [d for d in stored if d not in acked]
check(not lost, f"{len(lost)} acknowledged records lost, e.g. {lost[:3]}")
check(not dups, f"{len(dups)} records stored more than once, e.g. {list(dups.items())[:3]}")
check(not phantoms, f"{len(phantoms)} records stored that no call sent: {phantoms[:3]}")
moved = [d for d, at in acked.items() if stored[d] != [at]]
check(not moved, f"{len(moved)} records are not where their answer said, e.g. {moved[:3]}")
print(f"concurrency: {len(acked)} records from {CALLS} concurrent calls, each stored exactly once", flush=True)
