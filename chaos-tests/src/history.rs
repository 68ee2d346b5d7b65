//! The history a drill records: every put with its outcome, every record read and every fault
//! injected, in the order they happened. It is kept as JSON lines, one [`Event`] a line, which
//! the checker ([`crate::checker`]) judges.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One thing that happened during a drill. Times are milliseconds since the drill started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// One attempt to put a record.
    Put {
        /// Unique id of the logical record (producer id and counter); retries reuse it.
        id: String,
        /// The partition key it was put with.
        partition_key: String,
        /// 1 for the first try, 2 and up for retries of the same id.
        attempt: u32,
        /// When the attempt was sent.
        invoked_ms: u64,
        /// When its outcome was known.
        completed_ms: u64,
        /// What came of it.
        outcome: PutOutcome,
    },
    /// One record seen by a reader.
    Read {
        /// Who read it (readers keep their own order per shard).
        reader: String,
        /// The shard it was read from.
        shard: String,
        /// Its sequence number, a u64 in decimal.
        seq: String,
        /// The id of the record, as its data says.
        id: String,
        /// When it was read.
        read_ms: u64,
    },
    /// A fault injected into the cluster, from its start until it was healed.
    Fault {
        /// What kind of fault, e.g. `leader-kill`.
        name: String,
        /// What it hit, e.g. `node 3`.
        target: String,
        /// When it started.
        start_ms: u64,
        /// When it ended.
        end_ms: u64,
    },
}

/// The outcome of one put attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum PutOutcome {
    /// Acknowledged: committed at this shard and sequence number.
    Ok {
        /// The shard that took it.
        shard: String,
        /// Its sequence number, a u64 in decimal.
        seq: String,
    },
    /// Definitely not written: refused before the append.
    Failed {
        /// Why.
        error: String,
    },
    /// May or may not have been written (a timeout, a connection lost mid-call).
    Unknown {
        /// Why the outcome is not known.
        error: String,
    },
}

/// A failure to write or read a history.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The history file could not be opened or read.
    #[error("reading {}: {source}", .path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: io::Error,
    },
    /// A line of the history file is not an event.
    #[error("{}, line {line}: {source}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line, counted from 1.
        line: usize,
        /// What is wrong with it.
        source: serde_json::Error,
    },
    /// An event could not be encoded as JSON.
    #[error("encoding an event: {0}")]
    Encode(#[from] serde_json::Error),
    /// The history could not be written.
    #[error("writing the history: {0}")]
    Write(#[from] io::Error),
}

/// Writes `event` to `out` as one line of JSON.
pub fn write_event(mut out: impl Write, event: &Event) -> Result<(), HistoryError> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    out.write_all(&line)?;
    Ok(())
}

/// Writes `events` to `out`, one JSON line each, and flushes it.
pub fn write_jsonl(mut out: impl Write, events: &[Event]) -> Result<(), HistoryError> {
    for event in events {
        write_event(&mut out, event)?;
    }
    out.flush()?;
    Ok(())
}

/// Reads a JSON-lines history back, skipping blank lines. A line that is not an event is an
/// error naming its line number.
pub fn read_jsonl(path: impl AsRef<Path>) -> Result<Vec<Event>, HistoryError> {
    let path = path.as_ref();
    let io_error = |source| HistoryError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let mut events = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error)?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|source| HistoryError::Parse {
            path: path.to_path_buf(),
            line: index + 1,
            source,
        })?;
        events.push(event);
    }
    Ok(events)
}
