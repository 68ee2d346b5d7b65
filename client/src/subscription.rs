//! The push subscription behind `Client::subscribe`: a `SubscribeToShard` stream that opens
//! again by itself after the connection breaks, resuming after the last record delivered.

use futures::Stream;
use riptide_proto::v1::SubscribeToShardEvent;
use riptide_proto::{SequenceNumber, ShardId};
use tonic::Streaming;

use crate::ClientError;
use crate::client::Client;
use crate::position::StartingPosition;

struct State {
    client: Client,
    stream: String,
    shard: ShardId,
    /// Where to open the next subscription.
    resume: StartingPosition,
    /// The last record delivered; anything at or before it is dropped as a duplicate.
    last: Option<SequenceNumber>,
    open: Option<Streaming<SubscribeToShardEvent>>,
    /// Reopenings since the last delivered event, for the backoff.
    reopenings: u32,
    done: bool,
}

impl State {
    /// Takes in an event: drops records already delivered and moves the resume point.
    fn accept(
        &mut self,
        mut event: SubscribeToShardEvent,
    ) -> Result<Option<SubscribeToShardEvent>, ClientError> {
        let had_records = !event.records.is_empty();
        let mut fresh = Vec::with_capacity(event.records.len());
        for record in event.records {
            let seq = record.sequence().map_err(ClientError::malformed)?;
            if self.last.is_some_and(|last| seq <= last) {
                continue;
            }
            self.last = Some(seq);
            fresh.push(record);
        }
        event.records = fresh;
        if let Some(last) = self.last {
            self.resume = StartingPosition::AfterSequence(last);
        } else if let Ok(continuation) =
            SequenceNumber::parse(&event.continuation_sequence_number, "continuation")
        {
            // Nothing delivered yet: resume after the continuation point (the last record the
            // node has passed) rather than at a start position such as LATEST that would move
            // while the subscription is down.
            self.resume = StartingPosition::AfterSequence(continuation);
        }
        if had_records && event.records.is_empty() {
            return Ok(None);
        }
        Ok(Some(event))
    }
}

pub(crate) async fn subscribe(
    client: Client,
    stream: String,
    shard: ShardId,
    from: StartingPosition,
) -> Result<
    impl Stream<Item = Result<SubscribeToShardEvent, ClientError>> + Send + Unpin + 'static,
    ClientError,
> {
    let open = client.open_subscription(&stream, shard, from).await?;
    let state = State {
        client,
        stream,
        shard,
        resume: from,
        last: None,
        open: Some(open),
        reopenings: 0,
        done: false,
    };
    Ok(Box::pin(futures::stream::unfold(state, next_event)))
}

async fn next_event(
    mut state: State,
) -> Option<(Result<SubscribeToShardEvent, ClientError>, State)> {
    loop {
        if state.done {
            return None;
        }
        let open = match state.open.as_mut() {
            Some(open) => open,
            None => {
                if state.reopenings > 0 {
                    let delay = state
                        .client
                        .config()
                        .retry_policy()
                        .backoff(state.reopenings, rand::random::<f64>());
                    tokio::time::sleep(delay).await;
                }
                state.reopenings += 1;
                match state
                    .client
                    .open_subscription(&state.stream, state.shard, state.resume)
                    .await
                {
                    Ok(open) => state.open.insert(open),
                    Err(e) => {
                        state.done = true;
                        return Some((Err(e), state));
                    }
                }
            }
        };
        match open.message().await {
            Ok(Some(event)) => match state.accept(event) {
                Ok(Some(event)) => {
                    state.reopenings = 0;
                    return Some((Ok(event), state));
                }
                Ok(None) => continue,
                Err(e) => {
                    state.done = true;
                    return Some((Err(e), state));
                }
            },
            Ok(None) => {
                // A node ends a subscription when the shard's leadership moved away from it:
                // ask for the shard map again, so that the subscription opens at the new leader.
                tracing::debug!(shard = %state.shard, "subscription ended; opening it again");
                state.client.mark_map_stale(&state.stream);
                state.open = None;
            }
            Err(status) => {
                let e = ClientError::from(status);
                if !e.is_retryable() {
                    state.done = true;
                    return Some((Err(e), state));
                }
                tracing::debug!(shard = %state.shard, "subscription broke, opening it again: {e}");
                state.client.mark_map_stale(&state.stream);
                state.open = None;
            }
        }
    }
}
