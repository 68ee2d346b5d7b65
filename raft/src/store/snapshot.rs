//! Snapshots of a group's state-machine data, streamed in chunks.
//!
//! A snapshot is every key of the group in the data families, read from a RocksDB snapshot
//! (a point-in-time view), together with the applied log id and membership read from the same
//! view. Nothing is copied up front: a producer thread walks the view and hands out chunks of
//! about `chunk_bytes` through a bounded channel, only once a consumer asks for them. On a
//! receiving node the chunks are spooled to a file first, so that a transfer cut off half way
//! never reaches the state machine; only a complete file is installed.
//!
//! Chunk payload: a sequence of records `family (u8) ‖ key length (u32 BE) ‖ key ‖ value length
//! (u32 BE) ‖ value`, keys without the group prefix. Besides the data families
//! ([`DataFamily::code`]), a group whose log is its data sends its released-log mark
//! ([`CODE_RELEASED`], empty key, the index as u64 BE) and its retained log entries up to the
//! snapshot's last applied index ([`CODE_LOG`], key the index as u64 BE, value the stored
//! entry).

use std::io::{self, Read};
use std::path::PathBuf;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::{mpsc, oneshot};

use super::keys::{self, SM_APPLIED, SM_MEMBERSHIP};
use super::{DataFamily, ENTRY_INLINE, Family, NodeStore, Op, decode, encode_inline};
use crate::types::{GroupId, LogId, SnapshotMeta, StoredMembership};

/// One item of a live snapshot stream.
#[derive(Debug)]
pub(crate) enum SnapshotFrame {
    Data(Bytes),
    /// The producer read the whole view. A stream that ends without it is incomplete.
    End,
}

/// The data of a snapshot as openraft carries it between the state machine and the transport.
pub(crate) enum SnapshotData {
    /// Produced on demand from a RocksDB snapshot of this node.
    Live {
        start: Option<oneshot::Sender<()>>,
        rx: mpsc::Receiver<io::Result<SnapshotFrame>>,
    },
    /// Received completely from a leader and spooled to this file.
    Spooled(PathBuf),
}

impl std::fmt::Debug for SnapshotData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotData::Live { .. } => f.write_str("SnapshotData::Live"),
            SnapshotData::Spooled(p) => write!(f, "SnapshotData::Spooled({})", p.display()),
        }
    }
}

impl SnapshotData {
    /// Calls `f` with each chunk of the snapshot, in order. Fails if the snapshot is incomplete.
    pub(crate) async fn for_each_chunk<F, Fut>(self, chunk_bytes: usize, mut f: F) -> io::Result<()>
    where
        F: FnMut(Bytes) -> Fut,
        Fut: std::future::Future<Output = io::Result<()>>,
    {
        match self {
            SnapshotData::Live { start, mut rx } => {
                if let Some(start) = start {
                    let _ = start.send(());
                }
                loop {
                    match rx.recv().await {
                        Some(Ok(SnapshotFrame::Data(b))) => f(b).await?,
                        Some(Ok(SnapshotFrame::End)) => return Ok(()),
                        Some(Err(e)) => return Err(e),
                        None => {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "snapshot stream ended before its end marker",
                            ));
                        }
                    }
                }
            }
            SnapshotData::Spooled(path) => {
                let mut file = std::fs::File::open(&path)?;
                let mut buf = vec![0u8; chunk_bytes.max(4096)];
                let mut pending = BytesMut::new();
                loop {
                    let n = file.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Hand out only whole records.
                    let whole = whole_records_len(&pending)?;
                    if whole > 0 {
                        f(pending.split_to(whole).freeze()).await?;
                    }
                }
                if !pending.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spooled snapshot ends inside a record",
                    ));
                }
                let _ = std::fs::remove_file(&path);
                Ok(())
            }
        }
    }
}

/// Length of the longest prefix of `buf` made of whole records.
fn whole_records_len(buf: &[u8]) -> io::Result<usize> {
    let mut pos = 0;
    loop {
        let rest = &buf[pos..];
        if rest.len() < 5 {
            return Ok(pos);
        }
        let klen = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        if rest.len() < 5 + klen + 4 {
            return Ok(pos);
        }
        let v = &rest[5 + klen..];
        let vlen = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
        let total = 5 + klen + 4 + vlen;
        if rest.len() < total {
            return Ok(pos);
        }
        pos += total;
    }
}

/// Snapshot record code of a retained log entry.
pub(crate) const CODE_LOG: u8 = 0x80;
/// Snapshot record code of the released-log mark.
pub(crate) const CODE_RELEASED: u8 = 0x81;

pub(crate) fn encode_record(buf: &mut BytesMut, code: u8, key: &[u8], value: &[u8]) {
    buf.put_u8(code);
    buf.put_u32(key.len() as u32);
    buf.put_slice(key);
    buf.put_u32(value.len() as u32);
    buf.put_slice(value);
}

/// Decodes a chunk into write ops for `group`.
pub(crate) fn chunk_to_ops(group: GroupId, mut chunk: Bytes) -> io::Result<Vec<Op>> {
    let bad =
        |why: &str| io::Error::new(io::ErrorKind::InvalidData, format!("snapshot chunk: {why}"));
    let mut ops = Vec::new();
    while chunk.has_remaining() {
        if chunk.remaining() < 5 {
            return Err(bad("truncated record header"));
        }
        let code = chunk.get_u8();
        let klen = chunk.get_u32() as usize;
        if chunk.remaining() < klen + 4 {
            return Err(bad("truncated key"));
        }
        let key = chunk.split_to(klen);
        let vlen = chunk.get_u32() as usize;
        if chunk.remaining() < vlen {
            return Err(bad("truncated value"));
        }
        let value = chunk.split_to(vlen);
        ops.push(match code {
            CODE_LOG => {
                let index: [u8; 8] = key[..]
                    .try_into()
                    .map_err(|_| bad("log entry key is not 8 bytes"))?;
                // Entries travel whole: a pointer would name a segment of the sender's.
                if value.first() != Some(&ENTRY_INLINE) {
                    return Err(bad("log entry is not a whole entry"));
                }
                Op::Put(
                    Family::RaftLog,
                    keys::log_key(group, u64::from_be_bytes(index)).to_vec(),
                    value.to_vec(),
                )
            }
            CODE_RELEASED => {
                if value.len() != 8 {
                    return Err(bad("released-log mark is not 8 bytes"));
                }
                Op::Put(
                    Family::RaftMeta,
                    keys::meta_key(group, keys::META_RELEASED).to_vec(),
                    value.to_vec(),
                )
            }
            code => {
                let family = DataFamily::from_code(code).ok_or_else(|| bad("unknown family"))?;
                Op::Put(
                    Family::Data(family),
                    keys::data_key(group, &key),
                    value.to_vec(),
                )
            }
        });
    }
    Ok(ops)
}

/// Encodes snapshot records into chunks and hands each full chunk to the consumer.
struct ChunkSender {
    buf: BytesMut,
    tx: mpsc::Sender<io::Result<SnapshotFrame>>,
    chunk_bytes: usize,
}

impl ChunkSender {
    /// Encodes every key in `[from, to)` of `cf` in the view `snap` as a record with `code`
    /// (keys without their group prefix). With `log` set, the values are raft_log entries and
    /// are sent whole, their data read from its segment. Returns false if the consumer went away
    /// or the read failed (the error is sent on).
    fn send_range(
        &mut self,
        snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
        cf: &rocksdb::ColumnFamily,
        from: &[u8],
        to: Vec<u8>,
        code: u8,
        log: Option<&NodeStore>,
    ) -> bool {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to);
        let it = snap.iterator_cf_opt(
            cf,
            ro,
            rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = match item {
                Ok(kv) => kv,
                Err(e) => {
                    let _ = self.tx.blocking_send(Err(io::Error::other(e)));
                    return false;
                }
            };
            let whole;
            let v: &[u8] = match log {
                // Values kept whole travel as they are stored.
                None => &v,
                Some(_) if v.first() == Some(&ENTRY_INLINE) => &v,
                Some(store) => match store.load_entry(&v) {
                    Ok(Some(entry)) => {
                        whole = encode_inline(&entry);
                        &whole
                    }
                    // The view's segments are pinned; a missing one is lost data.
                    Ok(None) => {
                        let _ = self.tx.blocking_send(Err(io::Error::other(format!(
                            "snapshot: the segment of log entry {:?} is missing",
                            keys::log_index_of(&k)
                        ))));
                        return false;
                    }
                    Err(e) => {
                        let _ = self.tx.blocking_send(Err(e.into()));
                        return false;
                    }
                },
            };
            encode_record(&mut self.buf, code, &k[keys::GROUP_PREFIX_LEN..], v);
            if self.buf.len() >= self.chunk_bytes
                && self
                    .tx
                    .blocking_send(Ok(SnapshotFrame::Data(self.buf.split().freeze())))
                    .is_err()
            {
                return false;
            }
        }
        true
    }
}

/// Reads the applied state of `group` from `get`, a point lookup in some view of the store.
pub(crate) fn read_applied(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, crate::error::StorageError>,
    group: GroupId,
) -> Result<(Option<LogId>, StoredMembership), crate::error::StorageError> {
    let applied = match get(&keys::meta_key(group, SM_APPLIED))? {
        Some(raw) => decode::<Option<LogId>>(&raw, "sm_meta applied")?,
        None => None,
    };
    let membership = match get(&keys::meta_key(group, SM_MEMBERSHIP))? {
        Some(raw) => decode::<StoredMembership>(&raw, "sm_meta membership")?,
        None => StoredMembership::default(),
    };
    Ok((applied, membership))
}

/// Starts a producer of a live snapshot of `group`: its metadata now, its data in chunks once
/// the consumer asks for them. A group that applied nothing has an empty snapshot whose
/// `last_log_id` is `None`.
pub(crate) async fn live_snapshot(
    store: NodeStore,
    group: GroupId,
    chunk_bytes: usize,
    log_is_data: bool,
) -> io::Result<(SnapshotMeta, SnapshotData)> {
    let (meta_tx, meta_rx) = oneshot::channel::<io::Result<SnapshotMeta>>();
    let (start_tx, start_rx) = oneshot::channel::<()>();
    let (tx, rx) = mpsc::channel::<io::Result<SnapshotFrame>>(2);
    tokio::task::spawn_blocking(move || {
        let inner = &store.inner;
        // Pinned before the view is taken: no segment its pointers reach is unlinked until the
        // snapshot has been sent.
        let _pin = inner.segments.pin();
        let snap = inner.db.snapshot();
        let sm_meta = inner.cf(Family::SmMeta);
        let meta =
            read_applied(|k| Ok(snap.get_cf(sm_meta, k)?), group).map(|(applied, membership)| {
                SnapshotMeta {
                    last_log_id: applied,
                    last_membership: membership,
                }
            });
        let applied_index = meta
            .as_ref()
            .ok()
            .and_then(|m| m.last_log_id.map(|l| l.index));
        let ok = meta.is_ok();
        let _ = meta_tx.send(meta.map_err(io::Error::from));
        if !ok || start_rx.blocking_recv().is_err() {
            // Nobody asked for the data.
            return;
        }
        let mut out = ChunkSender {
            buf: BytesMut::with_capacity(chunk_bytes + 1024),
            tx,
            chunk_bytes,
        };
        for family in DataFamily::ALL {
            let from = keys::group_prefix(group);
            let to = keys::group_end(group);
            if !out.send_range(
                &snap,
                inner.cf(Family::Data(family)),
                &from,
                to,
                family.code(),
                None,
            ) {
                return;
            }
        }
        if let (true, Some(applied)) = (log_is_data, applied_index) {
            let released = match snap.get_cf(
                inner.cf(Family::RaftMeta),
                keys::meta_key(group, keys::META_RELEASED),
            ) {
                Ok(r) => r,
                Err(e) => {
                    let _ = out.tx.blocking_send(Err(io::Error::other(e)));
                    return;
                }
            };
            let mut from = 0;
            if let Some(raw) = released {
                let Ok(mark) = <[u8; 8]>::try_from(raw.as_slice()) else {
                    let _ = out.tx.blocking_send(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "released log index is not 8 bytes",
                    )));
                    return;
                };
                encode_record(&mut out.buf, CODE_RELEASED, &[], &mark);
                from = u64::from_be_bytes(mark).saturating_add(1);
            }
            let from = keys::log_key(group, from);
            let to = keys::log_key(group, applied.saturating_add(1)).to_vec();
            if !out.send_range(
                &snap,
                inner.cf(Family::RaftLog),
                &from,
                to,
                CODE_LOG,
                Some(&store),
            ) {
                return;
            }
        }
        let ChunkSender { buf, tx, .. } = out;
        if !buf.is_empty()
            && tx
                .blocking_send(Ok(SnapshotFrame::Data(buf.freeze())))
                .is_err()
        {
            return;
        }
        let _ = tx.blocking_send(Ok(SnapshotFrame::End));
    });
    let meta = meta_rx
        .await
        .map_err(|_| io::Error::other("snapshot producer stopped"))??;
    Ok((
        meta,
        SnapshotData::Live {
            start: Some(start_tx),
            rx,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_chunk() {
        let mut buf = BytesMut::new();
        encode_record(&mut buf, DataFamily::Records.code(), b"k1", b"v1");
        encode_record(
            &mut buf,
            DataFamily::Controller.code(),
            b"",
            b"longer value",
        );
        assert_eq!(whole_records_len(&buf).ok(), Some(buf.len()));
        assert_eq!(whole_records_len(&buf[..buf.len() - 1]).ok(), Some(13));
        let ops = chunk_to_ops(GroupId(7), buf.freeze()).expect("valid chunk");
        assert_eq!(ops.len(), 2);
        match &ops[1] {
            Op::Put(Family::Data(DataFamily::Controller), k, v) => {
                assert_eq!(k, &keys::data_key(GroupId(7), b""));
                assert_eq!(v, b"longer value");
            }
            other => panic!("unexpected op {other:?}"),
        }
    }

    #[test]
    fn retained_log_entries_and_the_release_mark_go_to_the_log() {
        let mut buf = BytesMut::new();
        encode_record(&mut buf, CODE_RELEASED, b"", &9u64.to_be_bytes());
        encode_record(&mut buf, CODE_LOG, &10u64.to_be_bytes(), b"\0entry ten");
        let mut pointer = BytesMut::new();
        encode_record(&mut pointer, CODE_LOG, &11u64.to_be_bytes(), b"\x01pointer");
        assert!(
            chunk_to_ops(GroupId(7), pointer.freeze()).is_err(),
            "an entry that points into the sender's segments is refused"
        );
        let ops = chunk_to_ops(GroupId(7), buf.freeze()).expect("valid chunk");
        match &ops[..] {
            [
                Op::Put(Family::RaftMeta, mk, mv),
                Op::Put(Family::RaftLog, lk, lv),
            ] => {
                assert_eq!(mk, &keys::meta_key(GroupId(7), keys::META_RELEASED));
                assert_eq!(mv, &9u64.to_be_bytes());
                assert_eq!(lk, &keys::log_key(GroupId(7), 10));
                assert_eq!(lv, b"\0entry ten");
            }
            other => panic!("unexpected ops {other:?}"),
        }
        let mut bad = BytesMut::new();
        encode_record(&mut bad, CODE_LOG, b"short", b"x");
        assert!(chunk_to_ops(GroupId(7), bad.freeze()).is_err());
    }

    #[test]
    fn a_truncated_chunk_is_refused() {
        let mut buf = BytesMut::new();
        encode_record(&mut buf, DataFamily::Records.code(), b"key", b"value");
        let cut = buf.freeze().slice(..8);
        assert!(chunk_to_ops(GroupId(1), cut).is_err());
    }
}
