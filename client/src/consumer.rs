//! [`Consumer`]: reads one shard by polling `GetRecords`, renewing its iterator when it
//! expires, and remembers how far it got so that a reader can resume.

use std::time::Duration;

use riptide_proto::v1;
use riptide_proto::{ErrorCode, SequenceNumber, ShardId};

use crate::ClientError;
use crate::client::{Client, Route};
use crate::position::StartingPosition;

/// How many empty pages a consumer follows in one [`Consumer::next_batch`] while the node
/// says it is still behind (a gap of trimmed records), before it returns an empty batch.
const MAX_EMPTY_PAGES: usize = 8;

/// A polling reader of one shard.
///
/// [`Consumer::next_batch`] returns the next records (empty once the reader has caught up);
/// after an empty batch the next call waits [`Consumer::with_poll_interval`] first, so a plain
/// loop polls at that pace. [`Consumer::position`] is the last sequence number returned; a new
/// consumer started at [`StartingPosition::AfterSequence`] of it continues where this one
/// stopped.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    stream: String,
    shard: ShardId,
    start: StartingPosition,
    iterator: Option<String>,
    last: Option<SequenceNumber>,
    millis_behind: Option<u64>,
    limit: u32,
    poll_interval: Duration,
    wait_first: bool,
    closed: bool,
}

impl Consumer {
    pub(crate) fn new(
        client: Client,
        stream: String,
        shard: ShardId,
        start: StartingPosition,
    ) -> Self {
        Self {
            client,
            stream,
            shard,
            start,
            iterator: None,
            last: None,
            millis_behind: None,
            limit: 1_000,
            poll_interval: Duration::from_millis(200),
            wait_first: false,
            closed: false,
        }
    }

    /// Reads at most `limit` records per call (default 1,000; 0 takes the node's maximum).
    pub fn with_limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }

    /// Waits this long before polling again after an empty batch (default 200 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The shard this consumer reads.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The sequence number of the last record returned, if any.
    pub fn position(&self) -> Option<SequenceNumber> {
        self.last
    }

    /// How far behind the newest record of the shard the last batch ended, in milliseconds,
    /// once a batch was read.
    pub fn millis_behind_latest(&self) -> Option<u64> {
        self.millis_behind
    }

    /// Whether the last batch reached the end of the shard.
    pub fn caught_up(&self) -> bool {
        self.millis_behind == Some(0)
    }

    /// Whether the shard is closed (the node returned no next iterator): no record will
    /// follow.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Where reading resumes: after the last record returned, or at the start position.
    fn resume_position(&self) -> StartingPosition {
        self.last
            .map_or(self.start, StartingPosition::AfterSequence)
    }

    /// The next records of the shard, oldest first; empty when there is nothing new yet.
    pub async fn next_batch(&mut self) -> Result<Vec<v1::Record>, ClientError> {
        if self.closed {
            return Ok(Vec::new());
        }
        if self.wait_first {
            tokio::time::sleep(self.poll_interval).await;
        }
        let mut renewed = false;
        let mut empty_pages = 0;
        loop {
            let iterator = match &self.iterator {
                Some(it) => it.clone(),
                None => {
                    let it = self
                        .client
                        .get_shard_iterator(&self.stream, self.shard, self.resume_position())
                        .await?;
                    self.iterator = Some(it.clone());
                    it
                }
            };
            let route = Route::Shard(&self.stream, self.shard);
            let page = match self
                .client
                .get_records_via(route, &iterator, self.limit)
                .await
            {
                Ok(page) => page,
                Err(e) if e.code == ErrorCode::ExpiredIterator && !renewed => {
                    tracing::debug!(shard = %self.shard, "iterator expired; renewing it");
                    self.iterator = None;
                    renewed = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut last = self.last;
            for record in &page.records {
                let seq = record.sequence().map_err(ClientError::malformed)?;
                last = Some(seq);
            }
            self.last = last;
            self.millis_behind = Some(page.millis_behind_latest);
            if page.next_shard_iterator.is_empty() {
                self.closed = true;
                self.iterator = None;
            } else {
                self.iterator = Some(page.next_shard_iterator);
            }
            if page.records.is_empty()
                && page.millis_behind_latest > 0
                && !self.closed
                && empty_pages < MAX_EMPTY_PAGES
            {
                empty_pages += 1;
                continue;
            }
            self.wait_first = page.records.is_empty();
            return Ok(page.records);
        }
    }
}
