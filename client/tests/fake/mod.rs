//! A fake Riptide cluster for the client's tests: N gRPC servers on 127.0.0.1 sharing one
//! in-memory state. Each serves every call itself but, like a real node, marks a call for a
//! shard it does not lead with `x-riptide-forwarded-to`. Faults are injected through
//! [`Faults`]; every call is logged with the node that received it.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use riptide_client::{ErrorCode, FORWARDED_TO_HEADER};
use riptide_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use riptide_proto::v1::stream_service_server::{StreamService, StreamServiceServer};
use riptide_proto::v1::{self, ShardIteratorType};
use riptide_proto::{SequenceNumber, ShardId, hash_key_of, parse_hash_key, split_hash_space};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

mod admin;
mod hold;
pub mod waits;

/// One call as a node received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub node: u64,
    pub method: &'static str,
    /// The shard the call was for, when it names one (a put names its first record's).
    pub shard: Option<u32>,
    /// Records the call carried (puts).
    pub records: usize,
    /// Whether the receiving node led that shard.
    pub at_leader: bool,
    /// Whether the node held the call unanswered (see [`Faults::hold`]).
    pub held: bool,
}

/// Faults the next calls run into.
#[derive(Debug, Default)]
pub struct Faults {
    /// Fail this many next calls of a method (by name) with a code.
    pub fail_next: HashMap<&'static str, (u32, ErrorCode)>,
    /// Answer a put entry whose data starts with this prefix with Throttled, this many times
    /// in total.
    pub throttle_prefix: Option<(String, u32)>,
    /// Refuse a put entry whose data starts with this prefix with InvalidArgument.
    pub invalid_prefix: Option<String>,
    /// Answer the next GetRecords calls with ExpiredIterator.
    pub expire_next_get_records: u32,
    /// Describes that still answer CREATING after a create.
    pub creating_describes: u32,
    /// Describes that a node (by id) still answers CREATING for, whatever the stream's state.
    pub lagging_nodes: HashMap<u64, u32>,
    /// Name the serving node by address rather than id in the forwarding header.
    pub forward_by_address: bool,
    /// Hold every PutRecords answer this long after its records are stored.
    pub put_answer_delay: Option<Duration>,
    /// Calls (by method) that one node (by id) takes in and leaves unanswered, storing
    /// nothing, until [`FakeCluster::release_held`]: a leader that froze.
    pub hold: HashMap<&'static str, u64>,
}

#[derive(Debug)]
struct FakeShard {
    range: riptide_proto::HashKeyRange,
    leader: u64,
    records: Vec<v1::Record>,
    next_index: u64,
}

#[derive(Debug)]
struct FakeStream {
    shards: Vec<FakeShard>,
    retention: u32,
    creating_left: u32,
}

#[derive(Debug, Default)]
pub struct State {
    streams: BTreeMap<String, FakeStream>,
    nodes: Vec<(u64, String)>,
    pub calls: Vec<Call>,
    pub faults: Faults,
    /// Bumped to break every open subscription.
    subscription_epoch: u64,
    page_size: usize,
    /// PutRecords calls stored and not yet answered, per shard (first record's), while
    /// `put_answer_delay` holds them.
    puts_open: HashMap<u32, usize>,
    /// The most such calls one shard had at once.
    pub most_puts_open: usize,
    /// Wakes the calls [`Faults::hold`] holds.
    release: Arc<tokio::sync::Notify>,
    /// Calls held and not yet released or given up by their client.
    pub held_open: usize,
}

impl State {
    fn fault(&mut self, method: &'static str) -> Result<(), Status> {
        if let Some((left, code)) = self.faults.fail_next.get_mut(method)
            && *left > 0
        {
            *left -= 1;
            return Err(code.status(format!("injected fault in {method}")));
        }
        Ok(())
    }

    fn stream(&mut self, name: &str) -> Result<&mut FakeStream, Status> {
        self.streams
            .get_mut(name)
            .ok_or_else(|| ErrorCode::NotFound.status(format!("stream {name:?} does not exist")))
    }

    fn describe(&mut self, name: &str) -> Result<v1::StreamDescription, Status> {
        let stream = self.stream(name)?;
        let status = if stream.creating_left > 0 {
            stream.creating_left -= 1;
            v1::StreamStatus::Creating
        } else {
            v1::StreamStatus::Active
        };
        Ok(v1::StreamDescription {
            stream_name: name.to_string(),
            status: status as i32,
            shards: stream
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| v1::Shard {
                    shard_id: ShardId(i as u32).to_string(),
                    hash_key_range: Some(v1::HashKeyRange {
                        starting_hash_key: s.range.start.to_string(),
                        ending_hash_key: s.range.end.to_string(),
                    }),
                    replicas: vec![1, 2, 3],
                    leader: if status == v1::StreamStatus::Active {
                        s.leader
                    } else {
                        0
                    },
                    starting_sequence_number: SequenceNumber(0).to_string(),
                })
                .collect(),
            retention_period_hours: stream.retention,
            created_at_ms: 1,
            preferred_leader_region: String::new(),
        })
    }

    fn shard_of(
        &mut self,
        stream: &str,
        key: &str,
        explicit: Option<&str>,
    ) -> Result<usize, Status> {
        let hash = match explicit {
            Some(k) => parse_hash_key(k, "explicit_hash_key")
                .map_err(|e| ErrorCode::InvalidArgument.status(e.to_string()))?,
            None => hash_key_of(key),
        };
        let s = self.stream(stream)?;
        Ok(s.shards
            .iter()
            .position(|sh| sh.range.contains(hash))
            .expect("ranges cover the space"))
    }

    fn append(
        &mut self,
        stream: &str,
        shard: usize,
        entries: Vec<(bytes::Bytes, String)>,
    ) -> Vec<SequenceNumber> {
        let s = self.streams.get_mut(stream).expect("checked");
        let sh = &mut s.shards[shard];
        sh.next_index += 1;
        let index = sh.next_index;
        entries
            .into_iter()
            .enumerate()
            .map(|(pos, (data, key))| {
                let seq = SequenceNumber::from_entry(index, pos as u32);
                // Always text, whatever the request asks: the fake answers as a node of an
                // older build would.
                sh.records.push(v1::Record {
                    sequence_number: seq.to_string(),
                    approximate_arrival_timestamp_ms: 1,
                    data,
                    partition_key: key,
                    sequence: 0,
                });
                seq
            })
            .collect()
    }

    fn leader(&self, stream: &str, shard: usize) -> u64 {
        self.streams
            .get(stream)
            .map_or(0, |s| s.shards[shard].leader)
    }

    /// Index of the first record at or after `position` in a shard.
    fn start_index(
        &self,
        stream: &str,
        shard: usize,
        kind: ShardIteratorType,
        seq: &str,
    ) -> Result<usize, Status> {
        let records = &self.streams.get(stream).expect("checked").shards[shard].records;
        let parse = || {
            SequenceNumber::parse(seq, "starting_sequence_number")
                .map_err(|e| ErrorCode::InvalidArgument.status(e.to_string()))
        };
        let seq_of = |r: &v1::Record| SequenceNumber::parse(&r.sequence_number, "x").expect("own");
        Ok(match kind {
            ShardIteratorType::TrimHorizon | ShardIteratorType::AtTimestamp => 0,
            ShardIteratorType::Latest => records.len(),
            ShardIteratorType::AtSequenceNumber => {
                let s = parse()?;
                records.partition_point(|r| seq_of(r) < s)
            }
            ShardIteratorType::AfterSequenceNumber => {
                let s = parse()?;
                records.partition_point(|r| seq_of(r) <= s)
            }
            ShardIteratorType::Unspecified => {
                return Err(ErrorCode::InvalidArgument.status("shard_iterator_type: required"));
            }
        })
    }
}

#[derive(Clone)]
struct FakeNode {
    id: u64,
    state: Arc<Mutex<State>>,
}

impl FakeNode {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake state lock")
    }

    /// Logs a call and answers with the forwarding header when this node does not lead.
    fn respond<T>(
        &self,
        state: &mut State,
        method: &'static str,
        shard: Option<(&str, usize)>,
        records: usize,
        value: T,
    ) -> Response<T> {
        let leader = shard.map(|(stream, i)| state.leader(stream, i));
        let at_leader = leader.is_none_or(|l| l == self.id);
        state.calls.push(Call {
            node: self.id,
            method,
            shard: shard.map(|(_, i)| i as u32),
            records,
            at_leader,
            held: false,
        });
        let mut response = Response::new(value);
        if let Some(l) = leader.filter(|_| !at_leader) {
            let value = if state.faults.forward_by_address {
                state
                    .nodes
                    .iter()
                    .find(|n| n.0 == l)
                    .map(|n| n.1.clone())
                    .expect("known")
            } else {
                l.to_string()
            };
            response
                .metadata_mut()
                .insert(FORWARDED_TO_HEADER, value.parse().expect("ascii"));
        }
        response
    }

    fn log_failure(&self, state: &mut State, method: &'static str) {
        state.calls.push(Call {
            node: self.id,
            method,
            shard: None,
            records: 0,
            at_leader: true,
            held: false,
        });
    }
}

fn encode_iterator(stream: &str, shard: usize, index: usize) -> String {
    format!("{stream}|{shard}|{index}")
}

fn decode_iterator(it: &str) -> Result<(String, usize, usize), Status> {
    let bad = || ErrorCode::InvalidArgument.status("shard_iterator: malformed");
    let mut parts = it.split('|');
    let stream = parts.next().ok_or_else(bad)?.to_string();
    let shard = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let index = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    Ok((stream, shard, index))
}

#[tonic::async_trait]
impl StreamService for FakeNode {
    async fn create_stream(
        &self,
        request: Request<v1::CreateStreamRequest>,
    ) -> Result<Response<v1::CreateStreamResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        if let Err(e) = state.fault("CreateStream") {
            self.log_failure(&mut state, "CreateStream");
            return Err(e);
        }
        if r.shard_count == 0 {
            return Err(ErrorCode::InvalidArgument.status("shard_count: must be 1 to 1000, got 0"));
        }
        if state.streams.contains_key(&r.stream_name) {
            return Err(
                ErrorCode::AlreadyExists.status(format!("stream {:?} exists", r.stream_name))
            );
        }
        let node_count = state.nodes.len() as u64;
        let shards = split_hash_space(r.shard_count)
            .into_iter()
            .enumerate()
            .map(|(i, range)| FakeShard {
                range,
                leader: i as u64 % node_count + 1,
                records: Vec::new(),
                next_index: 0,
            })
            .collect();

        state.streams.insert(
            r.stream_name.clone(),
            FakeStream {
                shards,
                retention: if r.retention_period_hours == 0 {
                    24
                } else {
                    r.retention_period_hours
                },
                creating_left: 0,
            },
        );
        let mut desc = state.describe(&r.stream_name)?;
        desc.status = v1::StreamStatus::Creating as i32;
        let creating_left = state.faults.creating_describes;
        state.stream(&r.stream_name)?.creating_left = creating_left;
        Ok(self.respond(
            &mut state,
            "CreateStream",
            None,
            0,
            v1::CreateStreamResponse { stream: Some(desc) },
        ))
    }

    async fn delete_stream(
        &self,
        request: Request<v1::DeleteStreamRequest>,
    ) -> Result<Response<v1::DeleteStreamResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        state.stream(&r.stream_name)?;
        state.streams.remove(&r.stream_name);
        Ok(self.respond(
            &mut state,
            "DeleteStream",
            None,
            0,
            v1::DeleteStreamResponse {},
        ))
    }

    async fn describe_stream(
        &self,
        request: Request<v1::DescribeStreamRequest>,
    ) -> Result<Response<v1::DescribeStreamResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        if let Err(e) = state.fault("DescribeStream") {
            self.log_failure(&mut state, "DescribeStream");
            return Err(e);
        }
        let mut desc = state.describe(&r.stream_name)?;
        if let Some(left) = state.faults.lagging_nodes.get_mut(&self.id)
            && *left > 0
        {
            *left -= 1;
            desc.status = v1::StreamStatus::Creating as i32;
        }
        Ok(self.respond(
            &mut state,
            "DescribeStream",
            None,
            0,
            v1::DescribeStreamResponse { stream: Some(desc) },
        ))
    }

    async fn list_streams(
        &self,
        request: Request<v1::ListStreamsRequest>,
    ) -> Result<Response<v1::ListStreamsResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        let page = state.page_size.max(1);
        let names: Vec<String> = state
            .streams
            .keys()
            .filter(|n| {
                r.exclusive_start_stream_name.is_empty() || **n > r.exclusive_start_stream_name
            })
            .cloned()
            .collect();
        let has_more = names.len() > page;
        let mut streams = Vec::new();
        for name in names.into_iter().take(page) {
            streams.push(state.describe(&name)?);
        }
        Ok(self.respond(
            &mut state,
            "ListStreams",
            None,
            0,
            v1::ListStreamsResponse {
                streams,
                has_more_streams: has_more,
            },
        ))
    }

    async fn list_shards(
        &self,
        request: Request<v1::ListShardsRequest>,
    ) -> Result<Response<v1::ListShardsResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        let desc = state.describe(&r.stream_name)?;
        Ok(self.respond(
            &mut state,
            "ListShards",
            None,
            0,
            v1::ListShardsResponse {
                shards: desc.shards,
            },
        ))
    }

    async fn update_retention(
        &self,
        request: Request<v1::UpdateRetentionRequest>,
    ) -> Result<Response<v1::UpdateRetentionResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        state.stream(&r.stream_name)?.retention = r.retention_period_hours;
        Ok(self.respond(
            &mut state,
            "UpdateRetention",
            None,
            0,
            v1::UpdateRetentionResponse {},
        ))
    }

    async fn update_preferred_leader_region(
        &self,
        request: Request<v1::UpdatePreferredLeaderRegionRequest>,
    ) -> Result<Response<v1::UpdatePreferredLeaderRegionResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        state.stream(&r.stream_name)?;
        Ok(self.respond(
            &mut state,
            "UpdatePreferredLeaderRegion",
            None,
            0,
            v1::UpdatePreferredLeaderRegionResponse {},
        ))
    }

    async fn put_record(
        &self,
        request: Request<v1::PutRecordRequest>,
    ) -> Result<Response<v1::PutRecordResponse>, Status> {
        self.hold_if_asked("PutRecord").await;
        let r = request.into_inner();
        let mut state = self.lock();
        if let Err(e) = state.fault("PutRecord") {
            self.log_failure(&mut state, "PutRecord");
            return Err(e);
        }
        let shard = state.shard_of(
            &r.stream_name,
            &r.partition_key,
            r.explicit_hash_key.as_deref(),
        )?;
        let seq = state.append(&r.stream_name, shard, vec![(r.data, r.partition_key)]);
        let reply = v1::PutRecordResponse {
            shard_id: ShardId(shard as u32).to_string(),
            sequence_number: seq[0].to_string(),
        };
        Ok(self.respond(
            &mut state,
            "PutRecord",
            Some((&r.stream_name, shard)),
            1,
            reply,
        ))
    }

    async fn put_records(
        &self,
        request: Request<v1::PutRecordsRequest>,
    ) -> Result<Response<v1::PutRecordsResponse>, Status> {
        self.hold_if_asked("PutRecords").await;
        let r = request.into_inner();
        // The lock is not held while an answer is delayed.
        let (reply, count, first_shard, held) = {
            let mut state = self.lock();
            if let Err(e) = state.fault("PutRecords") {
                self.log_failure(&mut state, "PutRecords");
                return Err(e);
            }
            state.stream(&r.stream_name)?;
            let mut results = vec![v1::PutRecordsResultEntry::default(); r.records.len()];
            let mut by_shard: BTreeMap<usize, Vec<(usize, bytes::Bytes, String)>> = BTreeMap::new();
            let mut first_shard = None;
            for (i, entry) in r.records.into_iter().enumerate() {
                let shard = state.shard_of(
                    &r.stream_name,
                    &entry.partition_key,
                    entry.explicit_hash_key.as_deref(),
                )?;
                first_shard.get_or_insert(shard);
                if let Some((prefix, left)) = state.faults.throttle_prefix.as_mut()
                    && *left > 0
                    && entry.data.starts_with(prefix.as_bytes())
                {
                    *left -= 1;
                    results[i].error_code = ErrorCode::Throttled.name().into();
                    results[i].error_message = "shard throughput exceeded".into();
                    continue;
                }
                if let Some(prefix) = &state.faults.invalid_prefix
                    && entry.data.starts_with(prefix.as_bytes())
                {
                    results[i].error_code = ErrorCode::InvalidArgument.name().into();
                    results[i].error_message = format!("records[{i}].data: refused by the test");
                    continue;
                }
                by_shard
                    .entry(shard)
                    .or_default()
                    .push((i, entry.data, entry.partition_key));
            }
            let count = results.len();
            for (shard, entries) in by_shard {
                let indices: Vec<usize> = entries.iter().map(|e| e.0).collect();
                let seqs = state.append(
                    &r.stream_name,
                    shard,
                    entries.into_iter().map(|(_, d, k)| (d, k)).collect(),
                );
                for (i, seq) in indices.into_iter().zip(seqs) {
                    results[i].shard_id = ShardId(shard as u32).to_string();
                    results[i].sequence_number = seq.to_string();
                }
            }
            let failed = results.iter().filter(|r| !r.error_code.is_empty()).count() as u32;
            let reply = v1::PutRecordsResponse {
                records: results,
                failed_record_count: failed,
            };
            // (delay, shard) when this answer is held.
            let held = state.faults.put_answer_delay.zip(first_shard);
            if let Some((_, first)) = held {
                let open = state.puts_open.entry(first as u32).or_default();
                *open += 1;
                let now_open = *open;
                state.most_puts_open = state.most_puts_open.max(now_open);
            }
            (reply, count, first_shard, held)
        };
        if let Some((delay, _)) = held {
            tokio::time::sleep(delay).await;
        }
        let mut state = self.lock();
        if let Some((_, first)) = held
            && let Some(open) = state.puts_open.get_mut(&(first as u32))
        {
            *open -= 1;
        }
        let shard = first_shard.map(|s| (r.stream_name.as_str(), s));
        Ok(self.respond(&mut state, "PutRecords", shard, count, reply))
    }

    async fn get_shard_iterator(
        &self,
        request: Request<v1::GetShardIteratorRequest>,
    ) -> Result<Response<v1::GetShardIteratorResponse>, Status> {
        let r = request.into_inner();
        let mut state = self.lock();
        let shard: ShardId = r.shard_id.parse().map_err(|e: riptide_proto::IdError| {
            ErrorCode::InvalidArgument.status(e.to_string())
        })?;
        let shard = shard.0 as usize;
        if state.stream(&r.stream_name)?.shards.len() <= shard {
            return Err(
                ErrorCode::NotFound.status(format!("shard_id: {} does not exist", r.shard_id))
            );
        }
        let index = state.start_index(
            &r.stream_name,
            shard,
            r.shard_iterator_type(),
            &r.starting_sequence_number,
        )?;
        let reply = v1::GetShardIteratorResponse {
            shard_iterator: encode_iterator(&r.stream_name, shard, index),
        };
        Ok(self.respond(
            &mut state,
            "GetShardIterator",
            Some((&r.stream_name, shard)),
            0,
            reply,
        ))
    }

    async fn get_records(
        &self,
        request: Request<v1::GetRecordsRequest>,
    ) -> Result<Response<v1::GetRecordsResponse>, Status> {
        self.hold_if_asked("GetRecords").await;
        let r = request.into_inner();
        let mut state = self.lock();
        if state.faults.expire_next_get_records > 0 {
            state.faults.expire_next_get_records -= 1;
            self.log_failure(&mut state, "GetRecords");
            return Err(ErrorCode::ExpiredIterator.status("shard_iterator expired 1 ms ago"));
        }
        let (stream, shard, index) = decode_iterator(&r.shard_iterator)?;
        let records = &state.stream(&stream)?.shards[shard].records;
        let limit = if r.limit == 0 {
            10_000
        } else {
            r.limit as usize
        };
        let end = (index + limit).min(records.len());
        let page: Vec<v1::Record> = records[index.min(end)..end].to_vec();
        let behind = if end < records.len() { 1_000 } else { 0 };
        let reply = v1::GetRecordsResponse {
            records: page,
            next_shard_iterator: encode_iterator(&stream, shard, end),
            millis_behind_latest: behind,
        };
        Ok(self.respond(&mut state, "GetRecords", Some((&stream, shard)), 0, reply))
    }

    type SubscribeToShardStream = ReceiverStream<Result<v1::SubscribeToShardEvent, Status>>;

    async fn subscribe_to_shard(
        &self,
        request: Request<v1::SubscribeToShardRequest>,
    ) -> Result<Response<Self::SubscribeToShardStream>, Status> {
        let r = request.into_inner();
        let shard: ShardId = r.shard_id.parse().map_err(|e: riptide_proto::IdError| {
            ErrorCode::InvalidArgument.status(e.to_string())
        })?;
        let shard = shard.0 as usize;
        let (mut index, epoch, response) = {
            let mut state = self.lock();
            if let Err(e) = state.fault("SubscribeToShard") {
                self.log_failure(&mut state, "SubscribeToShard");
                return Err(e);
            }
            state.stream(&r.stream_name)?;
            let index = state.start_index(
                &r.stream_name,
                shard,
                r.starting_position(),
                &r.starting_sequence_number,
            )?;
            let epoch = state.subscription_epoch;
            (
                index,
                epoch,
                self.respond(
                    &mut state,
                    "SubscribeToShard",
                    Some((&r.stream_name, shard)),
                    0,
                    (),
                ),
            )
        };
        let (tx, rx) = mpsc::channel(16);
        let node = self.clone();
        let stream = r.stream_name.clone();
        tokio::spawn(async move {
            loop {
                let event = {
                    let state = node.lock();
                    let Some(s) = state.streams.get(&stream) else {
                        return;
                    };
                    if state.subscription_epoch != epoch {
                        Some(Err(ErrorCode::Unavailable.status("leader changed")))
                    } else {
                        let records = &s.shards[shard].records;
                        if index < records.len() {
                            let page = records[index..].to_vec();
                            index = records.len();
                            let continuation = page
                                .last()
                                .map(|r| r.sequence_number.clone())
                                .unwrap_or_default();
                            Some(Ok(v1::SubscribeToShardEvent {
                                records: page,
                                continuation_sequence_number: continuation,
                                millis_behind_latest: 0,
                            }))
                        } else {
                            None
                        }
                    }
                };
                match event {
                    Some(e) => {
                        let broken = e.is_err();
                        if tx.send(e).await.is_err() || broken {
                            return;
                        }
                    }
                    None => {
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
        });
        let (metadata, (), extensions) = response.into_parts();
        Ok(Response::from_parts(
            metadata,
            ReceiverStream::new(rx),
            extensions,
        ))
    }
}

struct Running {
    id: u64,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

/// N fake nodes sharing one state.
pub struct FakeCluster {
    pub state: Arc<Mutex<State>>,
    nodes: Vec<Running>,
}

impl FakeCluster {
    pub async fn start(n: u64) -> FakeCluster {
        let state = Arc::new(Mutex::new(State {
            page_size: 100,
            ..State::default()
        }));
        let mut nodes = Vec::new();
        for id in 1..=n {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            state
                .lock()
                .expect("lock")
                .nodes
                .push((id, addr.to_string()));
            let node = FakeNode {
                id,
                state: Arc::clone(&state),
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let _ = tonic::transport::Server::builder()
                    .add_service(StreamServiceServer::new(node.clone()))
                    .add_service(AdminServiceServer::new(node))
                    .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            nodes.push(Running {
                id,
                addr,
                stop: Some(stop),
                task,
            });
        }
        FakeCluster { state, nodes }
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake state lock")
    }

    /// `http://127.0.0.1:port` of node `id`.
    pub fn endpoint(&self, id: u64) -> String {
        format!("http://{}", self.nodes[(id - 1) as usize].addr)
    }

    /// Stops node `id`: its port refuses connections from now on.
    pub async fn stop(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        if let Some(stop) = node.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown sends GOAWAY on open connections, so clients reconnect and are
        // refused from then on.
        if tokio::time::timeout(Duration::from_secs(5), &mut node.task)
            .await
            .is_err()
        {
            node.task.abort();
        }
    }

    pub fn set_leader(&self, stream: &str, shard: u32, node: u64) {
        self.lock().streams.get_mut(stream).expect("stream").shards[shard as usize].leader = node;
    }

    pub fn leader(&self, stream: &str, shard: u32) -> u64 {
        self.lock().leader(stream, shard as usize)
    }

    pub fn calls(&self, method: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.method == method)
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    pub fn records(&self, stream: &str, shard: u32) -> Vec<v1::Record> {
        self.lock().streams[stream].shards[shard as usize]
            .records
            .clone()
    }

    pub fn set_page_size(&self, n: usize) {
        self.lock().page_size = n;
    }

    /// Breaks every open subscription with Unavailable.
    pub fn break_subscriptions(&self) {
        self.lock().subscription_epoch += 1;
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }
}

impl Drop for FakeCluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.task.abort();
        }
    }
}
