//! `riptide put`, `riptide get` and `riptide tail`.

use std::collections::BTreeSet;
use std::time::Instant;

use anyhow::bail;
use futures::StreamExt;
use futures::stream::FuturesOrdered;
use riptide_client::{
    Client, ClientError, ProducerConfig, PutResult, ShardId, StartingPosition, v1,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::format::{Table, data_cell, record_json, record_line, timestamp};
use super::{GetArgs, Printer, PutArgs, TailArgs};

/// Records from standard input up to which each gets its own line of output.
const DETAILED_UP_TO: usize = 10;
/// Records read from standard input and not yet acknowledged, at most.
const MAX_OUTSTANDING: usize = 10_000;

fn random_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn put_json(key: &str, result: &Result<PutResult, ClientError>) -> Value {
    match result {
        Ok(r) => json!({
            "partition_key": key,
            "shard_id": r.shard_id.to_string(),
            "sequence_number": r.sequence_number.to_string(),
            "attempts": r.attempts,
        }),
        Err(e) => json!({
            "partition_key": key,
            "error_code": e.code.name(),
            "error_message": e.message,
        }),
    }
}

fn print_puts(out: Printer, results: &[(String, Result<PutResult, ClientError>)]) {
    out.show(
        || {
            let mut table = Table::new(&["SHARD", "SEQUENCE", "PARTITION KEY", "RESULT"]);
            for (key, r) in results {
                match r {
                    Ok(r) => table.row(vec![
                        r.shard_id.to_string(),
                        r.sequence_number.to_string(),
                        key.clone(),
                        if r.attempts > 1 {
                            format!("ok after {} attempts", r.attempts)
                        } else {
                            "ok".to_string()
                        },
                    ]),
                    Err(e) => table.row(vec!["-".into(), "-".into(), key.clone(), e.to_string()]),
                }
            }
            table.render()
        },
        || {
            json!(
                results
                    .iter()
                    .map(|(k, r)| put_json(k, r))
                    .collect::<Vec<_>>()
            )
        },
    );
}

/// Fails the command when any record failed, naming the first failure.
fn check_failures<'a>(
    total: usize,
    mut failures: impl Iterator<Item = &'a ClientError>,
    failed: usize,
) -> anyhow::Result<()> {
    match failures.next() {
        None => Ok(()),
        Some(first) => bail!("{failed} of {total} records were not written; first error: {first}"),
    }
}

pub(super) async fn put(client: &Client, out: Printer, args: PutArgs) -> anyhow::Result<()> {
    let key_for = |fixed: &Option<String>| fixed.clone().unwrap_or_else(random_key);
    if !args.data.is_empty() {
        let keys: Vec<String> = args
            .data
            .iter()
            .map(|_| key_for(&args.partition_key))
            .collect();
        let entries = args
            .data
            .iter()
            .zip(&keys)
            .map(|(data, key)| v1::PutRecordsEntry {
                data: data.clone().into_bytes().into(),
                partition_key: key.clone(),
                explicit_hash_key: None,
            })
            .collect();
        let results: Vec<(String, Result<PutResult, ClientError>)> = keys
            .into_iter()
            .zip(client.put_records(&args.stream, entries).await?)
            .collect();
        print_puts(out, &results);
        let failed = results.iter().filter(|(_, r)| r.is_err()).count();
        return check_failures(
            results.len(),
            results.iter().filter_map(|(_, r)| r.as_ref().err()),
            failed,
        );
    }

    let started = Instant::now();
    let producer = client.producer(&args.stream, ProducerConfig::default());
    let mut lines = stdin_lines();
    let mut pending = FuturesOrdered::new();
    let mut detailed = Vec::new();
    let mut total = 0usize;
    let mut failed = 0usize;
    let mut first_error: Option<ClientError> = None;
    let mut retried = 0usize;
    let mut shards = BTreeSet::new();
    let mut take = |key: String, r: Result<PutResult, ClientError>, detailed: &mut Vec<_>| {
        total += 1;
        match &r {
            Ok(p) => {
                shards.insert(p.shard_id);
                if p.attempts > 1 {
                    retried += 1;
                }
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert_with(|| e.clone());
            }
        }
        if detailed.len() <= DETAILED_UP_TO {
            detailed.push((key, r));
        }
    };
    while let Some(line) = lines.recv().await {
        let line = line?;
        let line = line.strip_suffix('\r').unwrap_or(&line);
        if line.is_empty() {
            continue;
        }
        let key = key_for(&args.partition_key);
        let ack = producer.send(key.clone(), line.as_bytes().to_vec());
        pending.push_back(async move { (key, ack.await) });
        while pending.len() >= MAX_OUTSTANDING {
            if let Some((key, r)) = pending.next().await {
                take(key, r, &mut detailed);
            }
        }
    }
    producer.flush().await;
    while let Some((key, r)) = pending.next().await {
        take(key, r, &mut detailed);
    }
    producer.close().await;

    if total <= DETAILED_UP_TO {
        print_puts(out, &detailed);
    } else {
        let elapsed = started.elapsed();
        out.show(
            || {
                format!(
                    "wrote {} of {total} records to {} shards of {} in {:.2?} ({:.0} records/s); \
                     {retried} needed more than one attempt\n",
                    total - failed,
                    shards.len(),
                    args.stream,
                    elapsed,
                    total as f64 / elapsed.as_secs_f64().max(1e-9)
                )
            },
            || {
                json!({
                    "stream_name": args.stream,
                    "records": total,
                    "written": total - failed,
                    "failed": failed,
                    "retried": retried,
                    "shards": shards.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                    "elapsed_ms": elapsed.as_millis() as u64,
                })
            },
        );
    }
    check_failures(total, first_error.iter(), failed)
}

/// Lines of standard input, read on a blocking thread (the runtime has no async stdin).
/// The thread stops at the end of input or once the receiver is gone.
fn stdin_lines() -> mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = mpsc::channel(1_024);
    tokio::task::spawn_blocking(move || {
        for line in std::io::stdin().lines() {
            let failed = line.is_err();
            if tx.blocking_send(line).is_err() || failed {
                return;
            }
        }
    });
    rx
}

/// The shards to read: the one asked for, or every shard of the stream.
async fn shards_of(
    client: &Client,
    stream: &str,
    only: Option<ShardId>,
) -> anyhow::Result<Vec<ShardId>> {
    if let Some(shard) = only {
        return Ok(vec![shard]);
    }
    let mut shards = Vec::new();
    for shard in client.list_shards(stream).await? {
        match shard.shard_id.parse::<ShardId>() {
            Ok(id) => shards.push(id),
            Err(e) => bail!("the node listed a malformed shard: {e}"),
        }
    }
    shards.sort();
    Ok(shards)
}

/// Reads `shard` from `from` until `limit` records or the current end, handing each batch to
/// `each`.
async fn read_to_end(
    client: &Client,
    stream: &str,
    shard: ShardId,
    from: StartingPosition,
    limit: usize,
    mut each: impl FnMut(ShardId, Vec<v1::Record>),
) -> anyhow::Result<()> {
    let mut consumer = client.consumer(stream, shard, from);
    let mut read = 0;
    while read < limit {
        let want = (limit - read).min(10_000) as u32;
        consumer = consumer.with_limit(want);
        let batch = consumer.next_batch().await?;
        read += batch.len();
        let empty = batch.is_empty();
        if !empty {
            each(shard, batch);
        }
        if empty || consumer.caught_up() || consumer.is_closed() {
            break;
        }
    }
    Ok(())
}

pub(super) async fn get(client: &Client, out: Printer, args: GetArgs) -> anyhow::Result<()> {
    let mut records: Vec<(ShardId, v1::Record)> = Vec::new();
    for shard in shards_of(client, &args.stream, args.shard).await? {
        read_to_end(
            client,
            &args.stream,
            shard,
            args.from,
            args.limit,
            |s, batch| {
                records.extend(batch.into_iter().map(|r| (s, r)));
            },
        )
        .await?;
    }
    out.show(
        || {
            if records.is_empty() {
                return "no records\n".to_string();
            }
            let mut table = Table::new(&["SHARD", "SEQUENCE", "ARRIVED", "PARTITION KEY", "DATA"]);
            for (shard, r) in &records {
                table.row(vec![
                    shard.to_string(),
                    r.sequence_number.clone(),
                    timestamp(r.approximate_arrival_timestamp_ms),
                    r.partition_key.clone(),
                    data_cell(&r.data),
                ]);
            }
            table.render()
        },
        || {
            json!(
                records
                    .iter()
                    .map(|(s, r)| record_json(*s, r))
                    .collect::<Vec<_>>()
            )
        },
    );
    Ok(())
}

/// Prints one record as it arrives: a line of text, or a JSON object per line.
fn print_record(out: Printer, shard: ShardId, record: &v1::Record) {
    if out.json() {
        println!("{}", record_json(shard, record));
    } else {
        println!("{}", record_line(shard, record));
    }
}

pub(super) async fn tail(client: &Client, out: Printer, args: TailArgs) -> anyhow::Result<()> {
    let shards = shards_of(client, &args.stream, args.shard).await?;
    let default_from = if args.follow {
        StartingPosition::Latest
    } else {
        StartingPosition::TrimHorizon
    };
    let from = args.from.unwrap_or(default_from);
    if !args.follow {
        for shard in shards {
            read_to_end(client, &args.stream, shard, from, usize::MAX, |s, batch| {
                for r in &batch {
                    print_record(out, s, r);
                }
            })
            .await?;
        }
        return Ok(());
    }

    let mut subscriptions = Vec::new();
    for shard in shards {
        let events = client.subscribe(&args.stream, shard, from).await?;
        subscriptions.push(events.map(move |e| (shard, e)).boxed());
    }
    eprintln!(
        "following {} shards of {} from {from}; Ctrl-C stops",
        subscriptions.len(),
        args.stream
    );
    let mut all = futures::stream::select_all(subscriptions);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = all.next() => match next {
                Some((shard, Ok(event))) => {
                    for r in &event.records {
                        print_record(out, shard, r);
                    }
                }
                Some((shard, Err(e))) => bail!("{shard}: {e}"),
                None => return Ok(()),
            },
        }
    }
}
