//! A PutRecords request whose records are shared with the caller, so that every attempt of a
//! batch (the first and each retry of its failed records) is encoded from the same entries
//! instead of from copies of them.
//!
//! On the wire it is a `riptide.v1.PutRecordsRequest`, byte for byte: the stream's name, the
//! entries at `pending` in that order, and `numeric_positions`.

use std::sync::Arc;

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, bool as pb_bool, message, skip_field, string};
use prost::{DecodeError, Message};
use riptide_proto::v1::{PutRecordsEntry, PutRecordsResponse};
use tonic::transport::Channel;

/// Field numbers of `PutRecordsRequest`.
const STREAM_NAME: u32 = 1;
const RECORDS: u32 = 2;
const NUMERIC_POSITIONS: u32 = 3;

/// The gRPC path of `StreamService.PutRecords`.
const PUT_RECORDS_PATH: &str = "/riptide.v1.StreamService/PutRecords";

/// One PutRecords call over `entries[i]` for each `i` in `pending`.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SharedPutRecords {
    pub(crate) stream_name: String,
    pub(crate) entries: Arc<Vec<PutRecordsEntry>>,
    pub(crate) pending: Vec<usize>,
    pub(crate) numeric_positions: bool,
}

impl SharedPutRecords {
    fn records(&self) -> impl Iterator<Item = &PutRecordsEntry> {
        self.pending.iter().map(|&i| &self.entries[i])
    }
}

impl Message for SharedPutRecords {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.stream_name.is_empty() {
            string::encode(STREAM_NAME, &self.stream_name, buf);
        }
        for entry in self.records() {
            message::encode(RECORDS, entry, buf);
        }
        if self.numeric_positions {
            pb_bool::encode(NUMERIC_POSITIONS, &self.numeric_positions, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            STREAM_NAME => string::merge(wire_type, &mut self.stream_name, buf, ctx),
            RECORDS => {
                let mut entry = PutRecordsEntry::default();
                message::merge(wire_type, &mut entry, buf, ctx)?;
                let entries = Arc::make_mut(&mut self.entries);
                self.pending.push(entries.len());
                entries.push(entry);
                Ok(())
            }
            NUMERIC_POSITIONS => pb_bool::merge(wire_type, &mut self.numeric_positions, buf, ctx),
            _ => skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let name = if self.stream_name.is_empty() {
            0
        } else {
            string::encoded_len(STREAM_NAME, &self.stream_name)
        };
        let records: usize = self
            .records()
            .map(|entry| message::encoded_len(RECORDS, entry))
            .sum();
        let numeric = if self.numeric_positions {
            pb_bool::encoded_len(NUMERIC_POSITIONS, &self.numeric_positions)
        } else {
            0
        };
        name + records + numeric
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Sends `call` to the node behind `channel`, as the generated `put_records` stub does.
pub(crate) async fn put_records(
    channel: Channel,
    max_decode: usize,
    call: SharedPutRecords,
) -> Result<tonic::Response<PutRecordsResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(max_decode);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
    let codec = riptide_proto::codec::SizedCodec::<SharedPutRecords, PutRecordsResponse>::default();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(PUT_RECORDS_PATH);
    let mut request = tonic::Request::new(call);
    request.extensions_mut().insert(tonic::GrpcMethod::new(
        "riptide.v1.StreamService",
        "PutRecords",
    ));
    grpc.unary(request, path, codec).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::bytes::Bytes;
    use riptide_proto::v1::PutRecordsRequest;

    fn entries() -> Arc<Vec<PutRecordsEntry>> {
        Arc::new(
            (0..5)
                .map(|i| PutRecordsEntry {
                    partition_key: format!("key-{i}"),
                    data: Bytes::from(vec![i as u8; 10 * i]),
                    explicit_hash_key: (i == 3).then(|| "12345".to_string()),
                })
                .collect(),
        )
    }

    #[test]
    fn encodes_as_the_put_records_request_of_its_pending_entries() {
        let entries = entries();
        for (pending, numeric) in [
            (vec![0, 1, 2, 3, 4], true),
            (vec![4, 1], false),
            (vec![], true),
        ] {
            let call = SharedPutRecords {
                stream_name: "orders".into(),
                entries: Arc::clone(&entries),
                pending: pending.clone(),
                numeric_positions: numeric,
            };
            let plain = PutRecordsRequest {
                stream_name: "orders".into(),
                records: pending.iter().map(|&i| entries[i].clone()).collect(),
                numeric_positions: numeric,
            };
            assert_eq!(call.encoded_len(), plain.encoded_len());
            assert_eq!(call.encode_to_vec(), plain.encode_to_vec(), "{pending:?}");
        }
    }

    #[test]
    fn decodes_a_put_records_request() {
        let entries = entries();
        let plain = PutRecordsRequest {
            stream_name: "orders".into(),
            records: entries.iter().rev().cloned().collect(),
            numeric_positions: true,
        };
        let call = SharedPutRecords::decode(&plain.encode_to_vec()[..]).expect("decodes");
        assert_eq!(call.stream_name, "orders");
        assert!(call.numeric_positions);
        assert_eq!(call.pending, vec![0, 1, 2, 3, 4]);
        assert_eq!(*call.entries, plain.records);
    }
}
