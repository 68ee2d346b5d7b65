//! Records: puts (routed to each shard's leader, failed records sent again while their code
//! is retryable, each result counting its attempts), shard iterators, GetRecords and
//! subscriptions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use riptide_proto::ShardId;
use riptide_proto::v1::{self, PutRecordsEntry};

use super::{Client, PutResult, Retry, Route, parse_sequence, parse_shard_id};
use crate::ClientError;
use crate::batching::{BatchLimits, record_size, split_batches};
use crate::position::StartingPosition;
use crate::put_call::SharedPutRecords;
use crate::subscription;

/// How many shards one `put_records` writes to at a time.
const PUT_RECORDS_CONCURRENCY: usize = 16;

impl Client {
    /// Writes one record, sent to its shard's leader. Returns once the record is committed.
    /// Unavailable and Throttled answers are retried until the retry deadline;
    /// [`PutResult::attempts`] says how many sends it took.
    pub async fn put_record(
        &self,
        stream: &str,
        partition_key: &str,
        data: impl Into<Bytes>,
    ) -> Result<PutResult, ClientError> {
        let request = v1::PutRecordRequest {
            stream_name: stream.to_string(),
            data: data.into(),
            partition_key: partition_key.to_string(),
            explicit_hash_key: None,
            sequence_number_for_ordering: None,
        };
        let shard = self.routing_map(stream).await.and_then(|m| {
            m.route(partition_key, None)
                .ok()
                .flatten()
                .map(|s| s.shard_id)
        });
        let route = shard.map_or(Route::Any, |s| Route::Shard(stream, s));
        let reply = self
            .call(route, Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().put_record(request).await }
            })
            .await?;
        Ok(PutResult {
            shard_id: parse_shard_id(&reply.value.shard_id)?,
            sequence_number: parse_sequence(&reply.value.sequence_number)?,
            attempts: reply.attempts,
        })
    }

    /// Writes many records: one result per record, in order. Records are split by shard (and
    /// into calls of at most 500 records and 5 MiB) and sent to each shard's leader, shards
    /// concurrently and each shard's calls in order, so records of one partition key are
    /// stored in the order given (except that a record sent again after a retryable failure
    /// lands after those of its call that succeeded at once). Records that fail with a
    /// retryable code are sent again until the retry deadline. The outer error is only for an empty stream name; everything else is reported
    /// per record.
    pub async fn put_records(
        &self,
        stream: &str,
        records: Vec<PutRecordsEntry>,
    ) -> Result<Vec<Result<PutResult, ClientError>>, ClientError> {
        if stream.is_empty() {
            return Err(ClientError::invalid("stream_name", "must not be empty"));
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.routing_map(stream).await;
        let mut results: Vec<Option<Result<PutResult, ClientError>>> =
            (0..records.len()).map(|_| None).collect();
        let mut groups: HashMap<Option<ShardId>, Vec<usize>> = HashMap::new();
        for (i, entry) in records.iter().enumerate() {
            let shard = match &map {
                Some(map) => {
                    match map.route(&entry.partition_key, entry.explicit_hash_key.as_deref()) {
                        Ok(route) => route.map(|r| r.shard_id),
                        Err(e) => {
                            results[i] = Some(Err(e.in_field(format_args!("records[{i}]."))));
                            continue;
                        }
                    }
                }
                None => None,
            };
            groups.entry(shard).or_default().push(i);
        }
        // Calls of one shard go one after another, so that records of one key keep their
        // order; shards go concurrently.
        let limits = BatchLimits::new(usize::MAX, usize::MAX);
        let mut shard_calls = Vec::new();
        for (shard, indices) in groups {
            let sizes: Vec<usize> = indices.iter().map(|&i| record_size(&records[i])).collect();
            let calls: Vec<(Vec<usize>, Arc<Vec<PutRecordsEntry>>)> = split_batches(&sizes, limits)
                .into_iter()
                .map(|range| {
                    let batch: Vec<usize> = indices[range].to_vec();
                    let entries = Arc::new(batch.iter().map(|&i| records[i].clone()).collect());
                    (batch, entries)
                })
                .collect();
            shard_calls.push((shard, calls));
        }
        let mut done = futures::stream::iter(shard_calls)
            .map(|(shard, calls)| async move {
                let mut outcomes = Vec::new();
                for (batch, entries) in calls {
                    let (outcome, _) = self.put_batch(stream, shard, entries, u32::MAX).await;
                    outcomes.push((batch, outcome));
                }
                outcomes
            })
            .buffer_unordered(PUT_RECORDS_CONCURRENCY);
        while let Some(outcomes) = done.next().await {
            for (batch, outcome) in outcomes {
                for (i, result) in batch.into_iter().zip(outcome) {
                    results[i] = Some(result);
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.expect("every record was routed or refused"))
            .collect())
    }

    /// Sends one batch for one shard (or for any node when the shard is unknown) with
    /// `PutRecords`, sending failed records again while their code is retryable, up to
    /// `max_attempts` sends per record and the retry deadline. Returns a result per entry, in
    /// order, and how many calls it made.
    pub(crate) async fn put_batch(
        &self,
        stream: &str,
        shard: Option<ShardId>,
        entries: Arc<Vec<PutRecordsEntry>>,
        max_attempts: u32,
    ) -> (Vec<Result<PutResult, ClientError>>, u32) {
        let started = Instant::now();
        let route = shard.map_or(Route::Any, |s| Route::Shard(stream, s));
        let mut attempts = vec![0u32; entries.len()];
        let mut results: Vec<Option<Result<PutResult, ClientError>>> =
            (0..entries.len()).map(|_| None).collect();
        let mut pending: Vec<usize> = (0..entries.len()).collect();
        let mut last_errors: Vec<Option<ClientError>> = vec![None; entries.len()];
        let mut calls = 0;
        while !pending.is_empty() {
            calls += 1;
            // Encoded from the shared entries: a retry, or a copy sent to a new leader while
            // the old one does not answer, copies no record.
            let (outcome, copies) = self
                .attempt(route, |ch| {
                    let request = SharedPutRecords {
                        stream_name: stream.to_string(),
                        entries: Arc::clone(&entries),
                        pending: pending.clone(),
                        numeric_positions: true,
                    };
                    async move { ch.put_records(request).await }
                })
                .await;
            for &i in &pending {
                attempts[i] += copies;
            }
            let mut retry = Vec::new();
            match outcome {
                Ok(reply) if reply.records.len() != pending.len() => {
                    let e = ClientError::malformed(format_args!(
                        "PutRecords answered {} results for {} records",
                        reply.records.len(),
                        pending.len()
                    ));
                    for &i in &pending {
                        results[i] = Some(Err(e.clone()));
                    }
                }
                Ok(reply) => {
                    for (&i, entry) in pending.iter().zip(reply.records) {
                        match record_outcome(entry, attempts[i]) {
                            Err(e) if e.is_retryable() => {
                                last_errors[i] = Some(e);
                                retry.push(i);
                            }
                            result => results[i] = Some(result),
                        }
                    }
                }
                Err(e) if e.is_retryable() => {
                    for &i in &pending {
                        last_errors[i] = Some(e.clone());
                    }
                    retry = pending.clone();
                }
                Err(e) => {
                    for &i in &pending {
                        results[i] = Some(Err(e.clone()));
                    }
                }
            }
            pending = retry;
            if pending.is_empty() {
                break;
            }
            let delay = self
                .inner
                .retry
                .next_delay(started, Instant::now(), calls)
                .filter(|_| pending.iter().all(|&i| attempts[i] < max_attempts));
            match delay {
                Some(d) => tokio::time::sleep(d).await,
                None => break,
            }
        }
        for i in pending {
            let e = last_errors[i]
                .take()
                .expect("a record is sent again only after an error");
            results[i] = Some(Err(e));
        }
        let results = results
            .into_iter()
            .map(|r| r.expect("every entry has an outcome"))
            .collect();
        (results, calls)
    }

    /// An iterator over `shard` from `from`; valid on any node for 5 minutes.
    pub async fn get_shard_iterator(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<String, ClientError> {
        let wire = from.to_wire();
        let request = v1::GetShardIteratorRequest {
            stream_name: stream.to_string(),
            shard_id: shard.to_string(),
            shard_iterator_type: wire.kind as i32,
            starting_sequence_number: wire.sequence_number,
            timestamp_ms: wire.timestamp_ms,
        };
        self.ensure_map(stream).await;
        let reply = self
            .call(Route::Shard(stream, shard), Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().get_shard_iterator(request).await }
            })
            .await?;
        Ok(reply.value.shard_iterator)
    }

    /// Up to `limit` records (0: the node's maximum of 10,000) from `iterator`, with the
    /// iterator to continue from. An iterator older than 5 minutes fails with
    /// [`crate::ErrorCode::ExpiredIterator`].
    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<v1::GetRecordsResponse, ClientError> {
        self.get_records_via(Route::Any, iterator, limit).await
    }

    pub(crate) async fn get_records_via(
        &self,
        route: Route<'_>,
        iterator: &str,
        limit: u32,
    ) -> Result<v1::GetRecordsResponse, ClientError> {
        let request = v1::GetRecordsRequest {
            shard_iterator: iterator.to_string(),
            limit,
            numeric_positions: self.inner.config.numeric_sequence_numbers,
        };
        let reply = self
            .call(route, Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().get_records(request).await }
            })
            .await?;
        Ok(reply.value)
    }

    /// Records of `shard` pushed as they commit, from `from`, until the stream is dropped.
    ///
    /// When the connection breaks or the shard's leader changes, the subscription resumes by
    /// itself after the last record it delivered (no record is delivered twice); it ends with
    /// an error only when resuming fails for longer than the retry deadline or for a reason
    /// retrying cannot fix.
    pub async fn subscribe(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<
        impl Stream<Item = Result<v1::SubscribeToShardEvent, ClientError>> + Send + Unpin + 'static,
        ClientError,
    > {
        subscription::subscribe(self.clone(), stream.to_string(), shard, from).await
    }

    pub(crate) async fn open_subscription(
        &self,
        stream: &str,
        shard: ShardId,
        from: StartingPosition,
    ) -> Result<tonic::Streaming<v1::SubscribeToShardEvent>, ClientError> {
        let wire = from.to_wire();
        let request = v1::SubscribeToShardRequest {
            stream_name: stream.to_string(),
            shard_id: shard.to_string(),
            starting_position: wire.kind as i32,
            starting_sequence_number: wire.sequence_number,
            timestamp_ms: wire.timestamp_ms,
            numeric_positions: self.inner.config.numeric_sequence_numbers,
        };
        self.ensure_map(stream).await;
        let reply = self
            .call(Route::Shard(stream, shard), Retry::Retryable, |ch| {
                let request = request.clone();
                async move { ch.stream().subscribe_to_shard(request).await }
            })
            .await?;
        Ok(reply.value)
    }
}

/// The result of one record of a `PutRecords` answer.
fn record_outcome(
    entry: v1::PutRecordsResultEntry,
    attempts: u32,
) -> Result<PutResult, ClientError> {
    if !entry.error_code.is_empty() {
        return Err(ClientError::refused(&entry.error_code, entry.error_message));
    }
    let (shard_id, sequence_number) = entry.position().map_err(ClientError::malformed)?;
    Ok(PutResult {
        shard_id,
        sequence_number,
        attempts,
    })
}
