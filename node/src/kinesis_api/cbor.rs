//! The part of CBOR (RFC 8949) the Kinesis API uses, over [`Value`], read and written through
//! minicbor's decoder and encoder (a codec its maintainers fuzz).
//!
//! Decoding takes every major type, definite and indefinite lengths (the Java SDKs write
//! indefinite-length maps), half, single and double floats, and tags: tag 1 (epoch time) becomes
//! a [`Value::Timestamp`], any other tag is dropped and its content kept. Map keys must be text;
//! the chunks of an indefinite-length text string must each be UTF-8, as RFC 8949 requires.
//! minicbor checks a string's length against the bytes left before it takes them; the walk
//! below checks array and map lengths the same way before it allocates, and bounds nesting, so a
//! hostile body costs at most its own size.
//!
//! Encoding writes definite lengths only, integers in their shortest form, floats as doubles,
//! and timestamps as tag 1 around epoch milliseconds, which is what the Java SDKs read.
//!
//! minicbor replaced a codec written here by hand: it encodes and decodes a PutRecords request
//! of 500 records at least as fast (docs/benchmarks.md, Kinesis API), and its decoder leaves the
//! walk over the items, and so the bounds above, to the caller.

use bytes::Bytes;
use minicbor::data::{Int, Tag, Type};
use minicbor::{Decoder, Encoder};

use super::value::{MILLIS_THRESHOLD, Value};

/// Deepest nesting of arrays, maps and tags a request may have.
const MAX_DEPTH: usize = 32;

/// Why a body is not the CBOR this API takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CborError {
    #[error("CBOR ends early, at byte {0}")]
    Truncated(usize),
    #[error("CBOR has {0} bytes after its value")]
    TrailingBytes(usize),
    #[error("CBOR item at byte {at} is not supported: {what}")]
    Unsupported { at: usize, what: &'static str },
    #[error("CBOR nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("CBOR text at byte {0} is not UTF-8")]
    NotUtf8(usize),
    #[error("CBOR map key at byte {0} is not text")]
    KeyNotText(usize),
}

/// Decodes one complete CBOR item.
pub fn decode(bytes: &[u8]) -> Result<Value, CborError> {
    let mut d = Decoder::new(bytes);
    let v = item(&mut d, 0)?;
    if d.position() != bytes.len() {
        return Err(CborError::TrailingBytes(bytes.len() - d.position()));
    }
    Ok(v)
}

/// Encodes a value.
pub fn encode(v: &Value) -> Vec<u8> {
    let mut e = Encoder::new(Vec::with_capacity(256));
    write(&mut e, v).expect("writing into a Vec cannot fail");
    e.into_writer()
}

/// A read that ran out of input: the item ends early at the decoder's position. minicbor's
/// only other refusals, once [`Decoder::datatype`] has named the item, are a length beyond
/// `usize` (the input cannot hold it either) and text that is not UTF-8, which the callers
/// of `str` tell apart.
fn truncated(d: &Decoder<'_>, _: minicbor::decode::Error) -> CborError {
    CborError::Truncated(d.position())
}

/// The type of the item at the decoder's position.
fn peek(d: &Decoder<'_>) -> Result<Type, CborError> {
    d.datatype().map_err(|e| truncated(d, e))
}

/// Why a head minicbor does not know (reserved additional information 28 to 30, or an
/// indefinite length where none may be) is refused.
fn unknown_head(b: u8, at: usize) -> CborError {
    let what = match (b >> 5, b & 0x1f) {
        (7, _) => "a simple value other than false, true, null and undefined",
        (0 | 1 | 6, 31) => "an indefinite length on an integer or tag",
        _ => "reserved additional information",
    };
    CborError::Unsupported { at, what }
}

/// Consumes the "break" that ends an indefinite-length item when it is next.
fn at_break(d: &mut Decoder<'_>) -> Result<bool, CborError> {
    if peek(d)? == Type::Break {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

/// A definite length that the remaining bytes can hold when each element takes at least
/// `min_bytes`.
fn len(d: &Decoder<'_>, n: u64, min_bytes: u64) -> Result<usize, CborError> {
    let left = d.input().len() - d.position();
    usize::try_from(n)
        .ok()
        .filter(|_| n.saturating_mul(min_bytes) <= left as u64)
        .ok_or(CborError::Truncated(d.position()))
}

fn item(d: &mut Decoder<'_>, depth: usize) -> Result<Value, CborError> {
    if depth > MAX_DEPTH {
        return Err(CborError::TooDeep);
    }
    let at = d.position();
    match peek(d)? {
        Type::U8
        | Type::U16
        | Type::U32
        | Type::U64
        | Type::I8
        | Type::I16
        | Type::I32
        | Type::I64
        | Type::Int => {
            let i = d.int().map_err(|e| truncated(d, e))?;
            Ok(Value::Int(i128::from(i)))
        }
        Type::F16 | Type::F32 | Type::F64 => {
            let f = d.f64().map_err(|e| truncated(d, e))?;
            Ok(Value::Float(f))
        }
        Type::Bool => Ok(Value::Bool(d.bool().map_err(|e| truncated(d, e))?)),
        Type::Null | Type::Undefined => {
            d.set_position(at + 1);
            Ok(Value::Null)
        }
        Type::Bytes | Type::BytesIndef => blob(d, at).map(Value::Blob),
        Type::String | Type::StringIndef => text(d, at).map(Value::Text),
        Type::Array | Type::ArrayIndef => {
            let items = match d.array().map_err(|e| truncated(d, e))? {
                Some(n) => {
                    let n = len(d, n, 1)?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(item(d, depth + 1)?);
                    }
                    items
                }
                None => {
                    let mut items = Vec::new();
                    while !at_break(d)? {
                        items.push(item(d, depth + 1)?);
                    }
                    items
                }
            };
            Ok(Value::Array(items))
        }
        Type::Map | Type::MapIndef => {
            let members = match d.map().map_err(|e| truncated(d, e))? {
                Some(n) => {
                    // Each entry takes at least two bytes.
                    let n = len(d, n, 2)?;
                    let mut members = Vec::with_capacity(n);
                    for _ in 0..n {
                        members.push(entry(d, depth)?);
                    }
                    members
                }
                None => {
                    let mut members = Vec::new();
                    while !at_break(d)? {
                        members.push(entry(d, depth)?);
                    }
                    members
                }
            };
            Ok(Value::Map(members))
        }
        Type::Tag => {
            let tag = d.tag().map_err(|e| truncated(d, e))?;
            let inner = item(d, depth + 1)?;
            Ok(match (tag.as_u64(), inner) {
                (1, Value::Int(i)) if i.abs() >= MILLIS_THRESHOLD => Value::Timestamp(clamp_i64(i)),
                (1, Value::Int(i)) => Value::Timestamp(clamp_i64(i.saturating_mul(1000))),
                (1, Value::Float(f)) => Value::Timestamp((f * 1000.0).round() as i64),
                (_, inner) => inner,
            })
        }
        Type::Break => Err(CborError::Unsupported {
            at,
            what: "a break outside an indefinite-length item",
        }),
        Type::Simple => Err(CborError::Unsupported {
            at,
            what: "a simple value other than false, true, null and undefined",
        }),
        Type::Unknown(b) => Err(unknown_head(b, at)),
    }
}

fn entry(d: &mut Decoder<'_>, depth: usize) -> Result<(String, Value), CborError> {
    let at = d.position();
    match peek(d)? {
        Type::String | Type::StringIndef => {}
        Type::Unknown(b) if b >> 5 == 3 => return Err(unknown_head(b, at)),
        _ => return Err(CborError::KeyNotText(at)),
    }
    let key = text(d, at)?;
    Ok((key, item(d, depth + 1)?))
}

/// Why the chunk at `chunk_at` of the indefinite-length string at `at`, whose chunks must be
/// of type `chunk`, is refused.
fn bad_chunk(found: Type, chunk: Type, at: usize, chunk_at: usize) -> CborError {
    match found {
        Type::Unknown(b) if b >> 5 == 7 => CborError::Unsupported {
            at: chunk_at,
            what: "a chunk of another type inside an indefinite-length string",
        },
        Type::Unknown(b) => unknown_head(b, chunk_at),
        Type::BytesIndef if chunk == Type::Bytes => CborError::Unsupported {
            at,
            what: "a nested indefinite-length string",
        },
        Type::StringIndef if chunk == Type::String => CborError::Unsupported {
            at,
            what: "a nested indefinite-length string",
        },
        _ => CborError::Unsupported {
            at: chunk_at,
            what: "a chunk of another type inside an indefinite-length string",
        },
    }
}

/// A byte string at `at`, its chunks concatenated when its length is indefinite.
fn blob(d: &mut Decoder<'_>, at: usize) -> Result<Bytes, CborError> {
    if peek(d)? == Type::Bytes {
        let b = d.bytes().map_err(|e| truncated(d, e))?;
        return Ok(Bytes::copy_from_slice(b));
    }
    d.set_position(at + 1);
    let mut out = Vec::new();
    loop {
        let chunk_at = d.position();
        match peek(d)? {
            Type::Break => {
                d.set_position(chunk_at + 1);
                return Ok(out.into());
            }
            Type::Bytes => out.extend_from_slice(d.bytes().map_err(|e| truncated(d, e))?),
            other => return Err(bad_chunk(other, Type::Bytes, at, chunk_at)),
        }
    }
}

/// A definite-length text string (or chunk) of the text string at `at`.
fn text_chunk<'b>(d: &mut Decoder<'b>, at: usize) -> Result<&'b str, CborError> {
    match d.str() {
        Ok(s) => Ok(s),
        Err(e) if e.is_end_of_input() => Err(CborError::Truncated(d.position())),
        Err(_) => Err(CborError::NotUtf8(at)),
    }
}

/// A text string at `at`, its chunks concatenated when its length is indefinite.
fn text(d: &mut Decoder<'_>, at: usize) -> Result<String, CborError> {
    if peek(d)? == Type::String {
        return text_chunk(d, at).map(str::to_string);
    }
    d.set_position(at + 1);
    let mut out = String::new();
    loop {
        let chunk_at = d.position();
        match peek(d)? {
            Type::Break => {
                d.set_position(chunk_at + 1);
                return Ok(out);
            }
            Type::String => out.push_str(text_chunk(d, at)?),
            other => return Err(bad_chunk(other, Type::String, at, chunk_at)),
        }
    }
}

fn clamp_i64(i: i128) -> i64 {
    i.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

/// An integer as CBOR holds it: -2^64 to 2^64 - 1; beyond that, the nearest end.
fn int(i: i128) -> Int {
    let clamped = i.clamp(-(1i128 << 64), i128::from(u64::MAX));
    Int::try_from(clamped).expect("clamped into CBOR's integer range")
}

type WriteResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

fn write(e: &mut Encoder<Vec<u8>>, v: &Value) -> WriteResult {
    match v {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Int(i) => {
            e.int(int(*i))?;
        }
        Value::Float(f) => {
            e.f64(*f)?;
        }
        Value::Text(s) => {
            e.str(s)?;
        }
        Value::Blob(b) => {
            e.bytes(b)?;
        }
        Value::Timestamp(ms) => {
            e.tag(Tag::new(1))?.i64(*ms)?;
        }
        Value::Array(items) => {
            e.array(items.len() as u64)?;
            for i in items {
                write(e, i)?;
            }
        }
        Value::Map(members) => {
            e.map(members.len() as u64)?;
            for (k, v) in members {
                e.str(k)?;
                write(e, v)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// Examples from RFC 8949 appendix A.
    #[test]
    fn rfc_examples_decode() {
        let cases: Vec<(&str, Value)> = vec![
            ("00", Value::Int(0)),
            ("17", Value::Int(23)),
            ("1818", Value::Int(24)),
            ("1903e8", Value::Int(1000)),
            ("1b000000e8d4a51000", Value::Int(1_000_000_000_000)),
            ("1bffffffffffffffff", Value::Int(u64::MAX as i128)),
            (
                "3bffffffffffffffff",
                Value::Int(-18_446_744_073_709_551_616),
            ),
            ("29", Value::Int(-10)),
            ("3903e7", Value::Int(-1000)),
            ("f93c00", Value::Float(1.0)),
            ("f93e00", Value::Float(1.5)),
            ("f97bff", Value::Float(65504.0)),
            ("f90001", Value::Float(5.960464477539063e-8)),
            ("fa47c35000", Value::Float(100000.0)),
            ("fb3ff199999999999a", Value::Float(1.1)),
            ("f4", Value::Bool(false)),
            ("f5", Value::Bool(true)),
            ("f6", Value::Null),
            ("f7", Value::Null),
            ("4401020304", Value::Blob(vec![1, 2, 3, 4].into())),
            ("6449455446", Value::text("IETF")),
            ("62c3bc", Value::text("\u{fc}")),
            (
                "83010203",
                Value::Array(vec![Value::Int(1), Value::Int(2), Value::Int(3)]),
            ),
            (
                "a26161016162820203",
                Value::Map(vec![
                    ("a".into(), Value::Int(1)),
                    ("b".into(), Value::Array(vec![Value::Int(2), Value::Int(3)])),
                ]),
            ),
            (
                "5f42010243030405ff",
                Value::Blob(vec![1, 2, 3, 4, 5].into()),
            ),
            ("7f657374726561646d696e67ff", Value::text("streaming")),
            ("9f018202039f0405ffff", {
                Value::Array(vec![
                    Value::Int(1),
                    Value::Array(vec![Value::Int(2), Value::Int(3)]),
                    Value::Array(vec![Value::Int(4), Value::Int(5)]),
                ])
            }),
            (
                "bf61610161629f0203ffff",
                Value::Map(vec![
                    ("a".into(), Value::Int(1)),
                    ("b".into(), Value::Array(vec![Value::Int(2), Value::Int(3)])),
                ]),
            ),
            // Tag 1 around seconds (the RFC's form) and a tag that is dropped.
            ("c11a514b67b0", Value::Timestamp(1_363_896_240_000)),
            ("c1fb41d452d9ec200000", Value::Timestamp(1_363_896_240_500)),
            ("d74401020304", Value::Blob(vec![1, 2, 3, 4].into())),
        ];
        for (h, want) in cases {
            assert_eq!(decode(&hex(h)).expect(h), want, "{h}");
        }
        let Value::Float(nan) = decode(&hex("f97e00")).expect("nan") else {
            panic!("not a float");
        };
        assert!(nan.is_nan());
        assert_eq!(
            decode(&hex("f9fc00")).expect("-inf"),
            Value::Float(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn java_sdk_timestamps_are_milliseconds_under_tag_1() {
        // Tag 1 around 1700000000123 as an 8-byte integer, as the Java SDKs write it.
        let mut raw = vec![0xc1, 0x1b];
        raw.extend_from_slice(&1_700_000_000_123u64.to_be_bytes());
        assert_eq!(decode(&raw), Ok(Value::Timestamp(1_700_000_000_123)));
        assert_eq!(encode(&Value::Timestamp(1_700_000_000_123)), raw);
    }

    #[test]
    fn encoded_values_decode_to_themselves() {
        let v = Value::Map(vec![
            (
                "Data".into(),
                Value::Blob((0..=255).collect::<Vec<u8>>().into()),
            ),
            ("PartitionKey".into(), Value::text("k\u{e9}y")),
            ("Count".into(), Value::Int(70_000)),
            ("Big".into(), Value::Int(5_000_000_000)),
            ("Neg".into(), Value::Int(-300)),
            ("F".into(), Value::Float(0.25)),
            ("Empty".into(), Value::Array(vec![])),
            (
                "Flags".into(),
                Value::Array(vec![Value::Bool(true), Value::Null]),
            ),
            ("At".into(), Value::Timestamp(1_700_000_000_123)),
            ("Long".into(), Value::text("x".repeat(300))),
        ]);
        assert_eq!(decode(&encode(&v)), Ok(v));
    }

    #[test]
    fn hostile_input_is_refused_without_panicking_or_allocating() {
        // A byte string that claims 2^63 bytes.
        assert_eq!(
            decode(&hex("5b7fffffffffffffff")),
            Err(CborError::Truncated(9))
        );
        // A map that claims a billion entries.
        assert!(matches!(
            decode(&hex("ba3b9aca00")),
            Err(CborError::Truncated(_))
        ));
        assert!(matches!(decode(&[0x9f; 100]), Err(CborError::TooDeep)));
        assert_eq!(decode(&hex("0000")), Err(CborError::TrailingBytes(1)));
        assert!(matches!(
            decode(&hex("a10102")),
            Err(CborError::KeyNotText(1))
        ));
        assert!(matches!(decode(&hex("62c328")), Err(CborError::NotUtf8(0))));
        assert!(matches!(
            decode(&hex("ff")),
            Err(CborError::Unsupported { .. })
        ));
        assert!(matches!(
            decode(&hex("1c")),
            Err(CborError::Unsupported { .. })
        ));
        assert!(matches!(
            decode(&hex("5f01ff")),
            Err(CborError::Unsupported { .. })
        ));
        assert!(matches!(decode(&[]), Err(CborError::Truncated(0))));
        // A nested indefinite-length string, a reserved head, a simple value, and a code point
        // split between two chunks of a text string (each chunk must be UTF-8 on its own).
        assert!(matches!(
            decode(&hex("5f5f4101ffff")),
            Err(CborError::Unsupported { at: 0, .. })
        ));
        assert!(matches!(
            decode(&hex("7c")),
            Err(CborError::Unsupported { at: 0, .. })
        ));
        assert!(matches!(
            decode(&hex("f810")),
            Err(CborError::Unsupported { at: 0, .. })
        ));
        assert_eq!(decode(&hex("7f61c361bcff")), Err(CborError::NotUtf8(0)));
        // Tags count towards the nesting bound as arrays and maps do.
        assert_eq!(decode(&[0xc6; 40]), Err(CborError::TooDeep));
        // Every prefix of a valid item is refused as truncated.
        let full = encode(&Value::map([("a", Value::Blob(vec![1; 40].into()))]));
        for n in 0..full.len() {
            assert!(decode(&full[..n]).is_err(), "prefix of {n} bytes");
        }
    }
}
