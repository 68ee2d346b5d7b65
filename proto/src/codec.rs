//! The gRPC codec of every Riptide service: protobuf through prost, like `tonic_prost`'s, except
//! that each message's buffer is reserved at the message's encoded size before encoding.
//!
//! tonic encodes into a buffer of 8 KiB that grows as the message is written into it, so a
//! message of a few hundred KiB (a PutRecords call, a Raft append, a subscription's batch) was
//! copied again at every doubling of its buffer. Reserving the whole size first writes it once.
//!
//! The generated services of this crate and of `riptide-raft` use it (`codec_path` in their
//! build scripts); the client crate's shared PutRecords call uses it directly.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// A [`Codec`] encoding `T` and decoding `U` with prost, reserving each message's size first.
pub struct SizedCodec<T, U> {
    _types: PhantomData<fn(T) -> U>,
}

impl<T, U> Default for SizedCodec<T, U> {
    fn default() -> Self {
        Self {
            _types: PhantomData,
        }
    }
}

impl<T, U> std::fmt::Debug for SizedCodec<T, U> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SizedCodec")
    }
}

impl<T, U> Codec for SizedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SizedEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SizedEncoder {
            _types: PhantomData,
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a `T` into a buffer first grown to the message's whole encoded size.
pub struct SizedEncoder<T> {
    _types: PhantomData<fn(T)>,
}

impl<T> std::fmt::Debug for SizedEncoder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SizedEncoder")
    }
}

impl<T: prost::Message> Encoder for SizedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // The buffer grows without bound, so prost's only error (too little room) cannot occur;
        // answered as an internal error all the same rather than assumed away.
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1;
    use http_body_util::BodyExt;
    use prost::Message;
    use prost::bytes::Bytes;
    use tonic::codec::EncodeBody;

    fn request(records: usize, bytes: usize) -> v1::PutRecordsRequest {
        v1::PutRecordsRequest {
            stream_name: "orders".into(),
            records: (0..records)
                .map(|i| v1::PutRecordsEntry {
                    partition_key: format!("key-{i}"),
                    data: Bytes::from(vec![(i % 251) as u8; bytes]),
                    explicit_hash_key: None,
                })
                .collect(),
            numeric_positions: true,
        }
    }

    /// Encodes `items` as a gRPC request body, as tonic's client does, and splits the body's
    /// bytes into the messages' own bytes.
    async fn encode_as_tonic_does(items: Vec<v1::PutRecordsRequest>) -> Vec<Vec<u8>> {
        let mut codec = SizedCodec::<v1::PutRecordsRequest, v1::PutRecordsResponse>::default();
        let source = futures::stream::iter(items.into_iter().map(Ok));
        let mut body = std::pin::pin!(EncodeBody::new_client(codec.encoder(), source, None, None));
        let mut wire = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("encodes");
            wire.extend_from_slice(frame.data_ref().expect("a data frame"));
        }
        let mut messages = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            assert_eq!(rest[0], 0, "not compressed");
            let len = u32::from_be_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
            messages.push(rest[5..5 + len].to_vec());
            rest = &rest[5 + len..];
        }
        messages
    }

    #[tokio::test]
    async fn messages_are_encoded_as_prost_encodes_them() {
        let items = vec![request(500, 1024), request(0, 0), request(3, 100)];
        let encoded = encode_as_tonic_does(items.clone()).await;
        assert_eq!(encoded.len(), items.len());
        for (item, bytes) in items.iter().zip(&encoded) {
            assert_eq!(bytes, &item.encode_to_vec());
            let back = v1::PutRecordsRequest::decode(&bytes[..]).expect("decodes");
            assert_eq!(&back, item);
        }
    }
}
