//! The drill's workload: producers that give every record a unique id and record every put
//! with its outcome, live readers that follow every shard while the faults happen, and a final
//! reader that reads every shard from the start once they are over. Everything goes into one
//! [`Recorder`], whose events the checker judges.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use riptide_client::v1::PutRecordsEntry;
use riptide_client::{
    Client, ClientError, ErrorCode, PutResult, SequenceNumber, ShardId, StartingPosition,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::history::{Event, PutOutcome};

/// The history of one drill, with the clock every event is stamped by.
#[derive(Debug)]
pub struct Recorder {
    started: Instant,
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder {
            started: Instant::now(),
            events: Mutex::new(Vec::new()),
        })
    }

    /// Milliseconds since the drill started.
    pub fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Appends an event.
    pub fn push(&self, event: Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event);
        }
    }

    /// Every event so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Records a fault that lasted from `start_ms` until now.
    pub fn fault(&self, name: &str, target: &str, start_ms: u64) {
        self.push(Event::Fault {
            name: name.to_string(),
            target: target.to_string(),
            start_ms,
            end_ms: self.now_ms(),
        });
    }
}

/// How hard the workload pushes.
#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    /// Producer tasks, each with one put in flight, spread over the shards round robin; each
    /// writes to its shard only.
    pub producers: usize,
    /// Puts per second per producer (at most; a slow put delays the next).
    pub rate_per_producer: u32,
    /// Distinct partition keys per producer.
    pub keys_per_producer: usize,
    /// How long one put may take before the producer counts it as unknown and goes on.
    pub put_timeout: Duration,
    /// Records per put: 1 sends PutRecord, more send PutRecords with that many records (each
    /// with its own id and outcome).
    pub batch: usize,
    /// Bytes of each record: its id, then a space and padding up to this size.
    pub record_bytes: usize,
}

impl Default for WorkloadConfig {
    fn default() -> Self {
        Self {
            producers: 6,
            rate_per_producer: 50,
            keys_per_producer: 8,
            put_timeout: Duration::from_secs(15),
            batch: 1,
            record_bytes: 0,
        }
    }
}

/// The running workload; [`Workload::stop`] ends it.
#[derive(Debug)]
pub struct Workload {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

impl Workload {
    /// Starts the producers and one live reader per shard.
    pub fn start(
        client: &Client,
        stream: &str,
        shards: &[ShardId],
        config: &WorkloadConfig,
        recorder: &Arc<Recorder>,
    ) -> Workload {
        let (stop, stopped) = watch::channel(false);
        let mut tasks = JoinSet::new();
        for p in 0..config.producers {
            let keys = keys_of_shard(
                p,
                p % shards.len().max(1),
                shards.len(),
                config.keys_per_producer,
            );
            tasks.spawn(produce(
                client.clone(),
                stream.to_string(),
                p,
                keys,
                config.clone(),
                recorder.clone(),
                stopped.clone(),
            ));
        }
        for &shard in shards {
            tasks.spawn(follow(
                client.clone(),
                stream.to_string(),
                shard,
                recorder.clone(),
                stopped.clone(),
            ));
        }
        Workload { stop, tasks }
    }

    /// Stops every task and waits for the puts in flight to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Whether a failed put may still have been written: anything but a refusal the node made
/// before appending the record.
fn may_have_been_written(e: &ClientError) -> bool {
    matches!(e.code, ErrorCode::Unavailable | ErrorCode::Internal) || e.is_retryable()
}

/// `n` partition keys of producer `producer` that all hash into shard `shard` of a stream of
/// `shards` evenly split shards. Producers stick to one shard each, so that a shard without a
/// leader stalls only its own producers and the outages measured for the other shards are
/// theirs, not the wait of producers stuck on it.
fn keys_of_shard(producer: usize, shard: usize, shards: usize, n: usize) -> Vec<String> {
    let ranges = riptide_proto::split_hash_space(shards.max(1) as u32);
    (0u64..)
        .map(|i| format!("k{producer}-{i}"))
        .filter(|k| riptide_proto::shard_for(&ranges, riptide_proto::hash_key_of(k)) == Some(shard))
        .take(n.max(1))
        .collect()
}

/// The bytes of the record with id `id`: the id, then a space and padding up to `size`.
fn record_data(id: &str, size: usize) -> Vec<u8> {
    let mut data = id.as_bytes().to_vec();
    if size > data.len() {
        data.push(b' ');
        data.resize(size, b'.');
    }
    data
}

/// The id of a record read back ([`record_data`]).
fn record_id(data: &[u8]) -> String {
    let end = data.iter().position(|&b| b == b' ').unwrap_or(data.len());
    String::from_utf8_lossy(&data[..end]).into_owned()
}

async fn produce(
    client: Client,
    stream: String,
    producer: usize,
    keys: Vec<String>,
    config: WorkloadConfig,
    recorder: Arc<Recorder>,
    mut stopped: watch::Receiver<bool>,
) {
    let interval = Duration::from_secs_f64(1.0 / f64::from(config.rate_per_producer.max(1)));
    let batch = config.batch.max(1) as u64;
    let mut next = Instant::now();
    for round in 0u64.. {
        if *stopped.borrow() {
            return;
        }
        let records: Vec<(String, String)> = (round * batch..(round + 1) * batch)
            .map(|n| {
                (
                    format!("p{producer}-{n}"),
                    keys[(n % keys.len() as u64) as usize].clone(),
                )
            })
            .collect();
        let invoked_ms = recorder.now_ms();
        let results: Vec<Result<Result<PutResult, ClientError>, String>> = if batch == 1 {
            let (id, key) = &records[0];
            let put = client.put_record(&stream, key, record_data(id, config.record_bytes));
            vec![match tokio::time::timeout(config.put_timeout, put).await {
                Ok(r) => Ok(r),
                Err(_) => Err(format!("no answer within {:?}", config.put_timeout)),
            }]
        } else {
            let entries = records
                .iter()
                .map(|(id, key)| PutRecordsEntry {
                    data: record_data(id, config.record_bytes).into(),
                    partition_key: key.clone(),
                    explicit_hash_key: None,
                })
                .collect();
            let put = client.put_records(&stream, entries);
            match tokio::time::timeout(config.put_timeout, put).await {
                Ok(Ok(each)) => each.into_iter().map(Ok).collect(),
                Ok(Err(e)) => records.iter().map(|_| Ok(Err(e.clone()))).collect(),
                Err(_) => records
                    .iter()
                    .map(|_| Err(format!("no answer within {:?}", config.put_timeout)))
                    .collect(),
            }
        };
        let completed_ms = recorder.now_ms();
        for ((id, partition_key), result) in records.iter().zip(results) {
            record_put(
                &recorder,
                id,
                partition_key,
                invoked_ms,
                completed_ms,
                result,
            );
        }
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = stopped.changed() => {}
        }
    }
}

/// Records the outcome of one record's put (`Err`: no answer in time).
fn record_put(
    recorder: &Recorder,
    id: &str,
    partition_key: &str,
    invoked_ms: u64,
    completed_ms: u64,
    result: Result<Result<PutResult, ClientError>, String>,
) {
    let event = |attempt, outcome| Event::Put {
        id: id.to_string(),
        partition_key: partition_key.to_string(),
        attempt,
        invoked_ms,
        completed_ms,
        outcome,
    };
    match result {
        Ok(Ok(put)) => {
            // The client sent it more than once: the earlier sends' answers were lost, so
            // they may have been written too.
            for attempt in 1..put.attempts {
                recorder.push(event(
                    attempt,
                    PutOutcome::Unknown {
                        error: "sent again by the client after an unanswered attempt".into(),
                    },
                ));
            }
            recorder.push(event(
                put.attempts.max(1),
                PutOutcome::Ok {
                    shard: put.shard_id.to_string(),
                    seq: put.sequence_number.to_string(),
                },
            ));
        }
        Ok(Err(e)) if may_have_been_written(&e) => recorder.push(event(
            1,
            PutOutcome::Unknown {
                error: e.to_string(),
            },
        )),
        Ok(Err(e)) => recorder.push(event(
            1,
            PutOutcome::Failed {
                error: e.to_string(),
            },
        )),
        Err(error) => recorder.push(event(1, PutOutcome::Unknown { error })),
    }
}

/// One page of records read from `shard`, recorded as `reader`. Returns the last sequence
/// number read, whether the shard had nothing more, and the next iterator.
async fn read_page(
    client: &Client,
    shard: ShardId,
    iterator: &str,
    reader: &str,
    recorder: &Recorder,
) -> Result<(Option<String>, bool, Option<String>), ClientError> {
    let page = client.get_records(iterator, 10_000).await?;
    let mut last = None;
    let read_ms = recorder.now_ms();
    let empty = page.records.is_empty();
    for record in page.records {
        recorder.push(Event::Read {
            reader: reader.to_string(),
            shard: shard.to_string(),
            seq: record.sequence_number.clone(),
            id: record_id(&record.data),
            read_ms,
        });
        last = Some(record.sequence_number);
    }
    let caught_up = empty && page.millis_behind_latest == 0;
    let next = (!page.next_shard_iterator.is_empty()).then_some(page.next_shard_iterator);
    Ok((last, caught_up, next))
}

fn position_after(last: &Option<String>) -> StartingPosition {
    match last
        .as_deref()
        .and_then(|s| SequenceNumber::parse(s, "sequence_number").ok())
    {
        Some(seq) => StartingPosition::AfterSequence(seq),
        None => StartingPosition::TrimHorizon,
    }
}

/// Follows `shard` from its start while the drill runs, starting over after the last record
/// it read whenever a call fails.
async fn follow(
    client: Client,
    stream: String,
    shard: ShardId,
    recorder: Arc<Recorder>,
    mut stopped: watch::Receiver<bool>,
) {
    let reader = format!("live-{shard}");
    let mut last: Option<String> = None;
    let mut iterator: Option<String> = None;
    while !*stopped.borrow() {
        let it = match iterator.take() {
            Some(it) => it,
            None => match client
                .get_shard_iterator(&stream, shard, position_after(&last))
                .await
            {
                Ok(it) => it,
                Err(_) => {
                    pause(&mut stopped, Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        match read_page(&client, shard, &it, &reader, &recorder).await {
            Ok((read, caught_up, next)) => {
                if read.is_some() {
                    last = read;
                }
                iterator = next;
                if caught_up {
                    pause(&mut stopped, Duration::from_millis(100)).await;
                }
            }
            Err(_) => pause(&mut stopped, Duration::from_millis(200)).await,
        }
    }
}

async fn pause(stopped: &mut watch::Receiver<bool>, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = stopped.changed() => {}
    }
}

/// Reads every shard from its start to its end as reader `final`, retrying failed calls until
/// `deadline`.
pub async fn read_all(
    client: &Client,
    stream: &str,
    shards: &[ShardId],
    recorder: &Recorder,
    deadline: Duration,
) -> Result<(), ClientError> {
    read_shards_as(client, stream, shards, "final", recorder, deadline).await
}

/// Reads `shards` from their start to their end as reader `reader`, retrying failed calls
/// until `deadline`.
pub async fn read_shards_as(
    client: &Client,
    stream: &str,
    shards: &[ShardId],
    reader: &str,
    recorder: &Recorder,
    deadline: Duration,
) -> Result<(), ClientError> {
    let started = Instant::now();
    for &shard in shards {
        let mut last: Option<String> = None;
        let mut iterator: Option<String> = None;
        loop {
            let step = async {
                let it = match iterator.take() {
                    Some(it) => it,
                    None => {
                        client
                            .get_shard_iterator(stream, shard, position_after(&last))
                            .await?
                    }
                };
                read_page(client, shard, &it, reader, recorder).await
            };
            match step.await {
                Ok((read, caught_up, next)) => {
                    if read.is_some() {
                        last = read;
                    }
                    if caught_up || next.is_none() {
                        break;
                    }
                    iterator = next;
                }
                Err(e) if started.elapsed() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn a_producers_keys_all_hash_into_its_shard() {
        let ranges = riptide_proto::split_hash_space(3);
        for p in 0..6 {
            let keys = keys_of_shard(p, p % 3, 3, 8);
            assert_eq!(keys.len(), 8);
            for k in &keys {
                let shard = riptide_proto::shard_for(&ranges, riptide_proto::hash_key_of(k));
                assert_eq!(shard, Some(p % 3), "{k}");
            }
        }
    }
}
