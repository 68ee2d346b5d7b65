//! The document model both wire formats decode into and encode from, and typed access to a
//! request's members with errors that name the member.
//!
//! JSON (`application/x-amz-json-1.1`) carries blobs as base64 text and timestamps as epoch
//! seconds; CBOR (`application/x-amz-cbor-1.1`) carries blobs as byte strings and timestamps as
//! the Java SDKs write them (tag 1 around epoch milliseconds). [`Value::Blob`] and
//! [`Value::Timestamp`] let a response say what a value is, and each encoder writes it its way.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;

use crate::error::ServiceError;

/// A decoded request or a response to encode.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Text(String),
    /// Raw bytes: a CBOR byte string, or a blob to send.
    Blob(Bytes),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Array(Vec<Value>),
    Map(Vec<(String, Value)>),
}

/// Which wire format a request came in, and so its answer goes out in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Cbor,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/x-amz-json-1.1",
            Format::Cbor => "application/x-amz-cbor-1.1",
        }
    }
}

/// Epoch values at or above this are milliseconds, below it seconds: 10^11 seconds is the year
/// 5138, 10^11 milliseconds is 1973. The Java SDKs send milliseconds under CBOR's tag 1, which
/// the CBOR specification defines as seconds; both forms are read.
pub(crate) const MILLIS_THRESHOLD: i128 = 100_000_000_000;

impl Value {
    pub fn text(s: impl Into<String>) -> Self {
        Value::Text(s.into())
    }

    pub fn map<const N: usize>(members: [(&str, Value); N]) -> Self {
        Value::Map(
            members
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        )
    }

    fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::Float(_) => "a number",
            Value::Text(_) => "a string",
            Value::Blob(_) => "a byte string",
            Value::Timestamp(_) => "a timestamp",
            Value::Array(_) => "a list",
            Value::Map(_) => "a structure",
        }
    }

    /// Parses a JSON document straight into a value.
    pub fn parse_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The JSON text of the value: blobs as base64, timestamps as epoch seconds with
    /// milliseconds.
    pub fn json_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Converts a parsed JSON document (the tests compare the direct reader with it).
    #[cfg(test)]
    pub fn from_json(v: serde_json::Value) -> Self {
        match v {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::Int(i128::from(i)),
                (None, Some(u)) => Value::Int(i128::from(u)),
                _ => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Text(s),
            serde_json::Value::Array(a) => {
                Value::Array(a.into_iter().map(Value::from_json).collect())
            }
            serde_json::Value::Object(o) => Value::Map(
                o.into_iter()
                    .map(|(k, v)| (k, Value::from_json(v)))
                    .collect(),
            ),
        }
    }

    /// The JSON form as a `serde_json` tree (the tests compare the direct writer with it).
    #[cfg(test)]
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => serde_json::Value::from(i),
                Err(_) => serde_json::Value::from(*i as f64),
            },
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => serde_json::Value::String(s.clone()),
            Value::Blob(b) => serde_json::Value::String(BASE64.encode(b)),
            Value::Timestamp(ms) => {
                // Whole seconds stay integers; otherwise three decimals.
                if ms % 1000 == 0 {
                    serde_json::Value::from(ms / 1000)
                } else {
                    serde_json::Number::from_f64(*ms as f64 / 1000.0)
                        .map(serde_json::Value::Number)
                        .unwrap_or(serde_json::Value::Null)
                }
            }
            Value::Array(a) => serde_json::Value::Array(a.iter().map(Value::to_json).collect()),
            Value::Map(m) => {
                serde_json::Value::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect())
            }
        }
    }
}

/// Writes the JSON form directly, without building a `serde_json::Value` first.
impl serde::Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self {
            Value::Null => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => match i64::try_from(*i) {
                Ok(i) => s.serialize_i64(i),
                Err(_) => s.serialize_f64(*i as f64),
            },
            Value::Float(f) if f.is_finite() => s.serialize_f64(*f),
            Value::Float(_) => s.serialize_unit(),
            Value::Text(t) => s.serialize_str(t),
            Value::Blob(b) => s.serialize_str(&BASE64.encode(b)),
            Value::Timestamp(ms) if ms % 1000 == 0 => s.serialize_i64(ms / 1000),
            Value::Timestamp(ms) => s.serialize_f64(*ms as f64 / 1000.0),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Value::Map(members) => {
                let mut map = s.serialize_map(Some(members.len()))?;
                for (k, v) in members {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Reads JSON (or any self-describing format) straight into a value.
impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Value;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_unit<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
                Ok(Value::Bool(b))
            }
            fn visit_i64<E>(self, i: i64) -> Result<Value, E> {
                Ok(Value::Int(i128::from(i)))
            }
            fn visit_u64<E>(self, u: u64) -> Result<Value, E> {
                Ok(Value::Int(i128::from(u)))
            }
            fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
                Ok(Value::Float(f))
            }
            fn visit_str<E>(self, s: &str) -> Result<Value, E> {
                Ok(Value::Text(s.to_string()))
            }
            fn visit_string<E>(self, s: String) -> Result<Value, E> {
                Ok(Value::Text(s))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut items = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1024));
                while let Some(v) = a.next_element()? {
                    items.push(v);
                }
                Ok(Value::Array(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
                let mut members = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    members.push((k, v));
                }
                Ok(Value::Map(members))
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn validation(message: String) -> ServiceError {
    ServiceError::Validation(message)
}

fn wrong_type(path: &str, expected: &str, got: &Value) -> ServiceError {
    ServiceError::Serialization(format!("{path}: expected {expected}, got {}", got.kind()))
}

/// A structure of a request, with its path for error messages (`Records[2]`).
#[derive(Debug, Clone)]
pub struct Obj<'a> {
    path: String,
    members: &'a [(String, Value)],
    format: Format,
}

impl<'a> Obj<'a> {
    /// The request's top-level structure; an empty body counts as an empty structure.
    pub fn root(v: &'a Value, format: Format) -> Result<Self, ServiceError> {
        match v {
            Value::Map(m) => Ok(Obj {
                path: String::new(),
                members: m,
                format,
            }),
            other => Err(wrong_type("request body", "a structure", other)),
        }
    }

    fn name(&self, member: &str) -> String {
        if self.path.is_empty() {
            member.to_string()
        } else {
            format!("{}.{member}", self.path)
        }
    }

    /// The member's value; a JSON or CBOR null counts as absent.
    pub fn get(&self, member: &str) -> Option<&'a Value> {
        self.members
            .iter()
            .find(|(k, _)| k == member)
            .map(|(_, v)| v)
            .filter(|v| **v != Value::Null)
    }

    fn required<T>(&self, member: &str, v: Option<T>) -> Result<T, ServiceError> {
        v.ok_or_else(|| validation(format!("{}: required, but missing", self.name(member))))
    }

    pub fn opt_str(&self, member: &str) -> Result<Option<&'a str>, ServiceError> {
        match self.get(member) {
            None => Ok(None),
            Some(Value::Text(s)) => Ok(Some(s)),
            Some(other) => Err(wrong_type(&self.name(member), "a string", other)),
        }
    }

    pub fn str(&self, member: &str) -> Result<&'a str, ServiceError> {
        let v = self.opt_str(member)?;
        self.required(member, v)
    }

    pub fn opt_bool(&self, member: &str) -> Result<Option<bool>, ServiceError> {
        match self.get(member) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(wrong_type(&self.name(member), "a boolean", other)),
        }
    }

    /// An integer member within `min..=max` (the range the Kinesis API declares for it).
    pub fn opt_int(&self, member: &str, min: i64, max: i64) -> Result<Option<i64>, ServiceError> {
        let i = match self.get(member) {
            None => return Ok(None),
            Some(Value::Int(i)) => *i,
            Some(Value::Float(f)) if f.fract() == 0.0 && f.is_finite() => *f as i128,
            Some(other) => return Err(wrong_type(&self.name(member), "an integer", other)),
        };
        if i < i128::from(min) || i > i128::from(max) {
            return Err(validation(format!(
                "{}: must be {min} to {max}, got {i}",
                self.name(member)
            )));
        }
        Ok(Some(i as i64))
    }

    /// A blob member: base64 text in JSON, a byte string in CBOR.
    pub fn blob(&self, member: &str) -> Result<Bytes, ServiceError> {
        let path = self.name(member);
        match self.get(member) {
            None => Err(validation(format!("{path}: required, but missing"))),
            Some(Value::Blob(b)) => Ok(b.clone()),
            Some(Value::Text(s)) => BASE64
                .decode(s)
                .map(Bytes::from)
                .map_err(|e| ServiceError::Serialization(format!("{path}: not valid base64: {e}"))),
            Some(other) => Err(wrong_type(&path, "a blob", other)),
        }
    }

    /// A timestamp member in milliseconds since the Unix epoch: epoch seconds in JSON; in
    /// CBOR tag 1 around seconds or (as the Java SDKs send) milliseconds.
    pub fn opt_timestamp(&self, member: &str) -> Result<Option<u64>, ServiceError> {
        let path = self.name(member);
        let ms: f64 = match (self.get(member), self.format) {
            (None, _) => return Ok(None),
            (Some(Value::Timestamp(ms)), _) => *ms as f64,
            (Some(Value::Int(i)), Format::Json) => *i as f64 * 1000.0,
            (Some(Value::Int(i)), Format::Cbor) if i.abs() >= MILLIS_THRESHOLD => *i as f64,
            (Some(Value::Int(i)), Format::Cbor) => *i as f64 * 1000.0,
            (Some(Value::Float(f)), _) => f * 1000.0,
            (Some(other), _) => return Err(wrong_type(&path, "a timestamp", other)),
        };
        if !ms.is_finite() || ms < 0.0 || ms > u64::MAX as f64 {
            return Err(validation(format!(
                "{path}: must be a time after 1970, got {ms} ms"
            )));
        }
        Ok(Some(ms.round() as u64))
    }

    pub fn opt_obj(&self, member: &str) -> Result<Option<Obj<'a>>, ServiceError> {
        let path = self.name(member);
        match self.get(member) {
            None => Ok(None),
            Some(Value::Map(m)) => Ok(Some(Obj {
                path,
                members: m,
                format: self.format,
            })),
            Some(other) => Err(wrong_type(&path, "a structure", other)),
        }
    }

    /// A list member's items; `None` when absent.
    pub fn opt_list(&self, member: &str) -> Result<Option<&'a [Value]>, ServiceError> {
        match self.get(member) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(other) => Err(wrong_type(&self.name(member), "a list", other)),
        }
    }

    /// A list of strings.
    pub fn opt_str_list(&self, member: &str) -> Result<Option<Vec<String>>, ServiceError> {
        let Some(items) = self.opt_list(member)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Text(s) => Ok(s.clone()),
                other => Err(wrong_type(
                    &format!("{}[{i}]", self.name(member)),
                    "a string",
                    other,
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A map of strings to strings (tags).
    pub fn opt_str_map(
        &self,
        member: &str,
    ) -> Result<Option<std::collections::BTreeMap<String, String>>, ServiceError> {
        let path = self.name(member);
        match self.get(member) {
            None => Ok(None),
            Some(Value::Map(m)) => m
                .iter()
                .map(|(k, v)| match v {
                    Value::Text(s) => Ok((k.clone(), s.clone())),
                    other => Err(wrong_type(&format!("{path}.{k}"), "a string", other)),
                })
                .collect::<Result<_, _>>()
                .map(Some),
            Some(other) => Err(wrong_type(&path, "a map", other)),
        }
    }

    /// The structure at `items[i]` of a list member named `member`.
    pub fn item(&self, member: &str, i: usize, v: &'a Value) -> Result<Obj<'a>, ServiceError> {
        let path = format!("{}[{i}]", self.name(member));
        match v {
            Value::Map(m) => Ok(Obj {
                path,
                members: m,
                format: self.format,
            }),
            other => Err(wrong_type(&path, "a structure", other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riptide_proto::ErrorCode;

    fn json(text: &str) -> Value {
        Value::from_json(serde_json::from_str(text).expect("json"))
    }

    #[test]
    fn members_are_read_by_type_and_named_in_errors() {
        let v = json(
            r#"{"S":"x","N":5,"B":true,"D":"aGk=","T":1700000000.5,"L":["a"],"M":{"k":"v"},"Z":null}"#,
        );
        let o = Obj::root(&v, Format::Json).expect("structure");
        assert_eq!(o.str("S").expect("S"), "x");
        assert_eq!(o.opt_int("N", 1, 10).expect("N"), Some(5));
        assert_eq!(o.opt_bool("B").expect("B"), Some(true));
        assert_eq!(o.blob("D").expect("D"), &b"hi"[..]);
        assert_eq!(o.opt_timestamp("T").expect("T"), Some(1_700_000_000_500));
        assert_eq!(o.opt_str_list("L").expect("L"), Some(vec!["a".to_string()]));
        assert_eq!(o.opt_str_map("M").expect("M").expect("M")["k"], "v");
        assert_eq!(o.opt_str("Z").expect("null is absent"), None);

        let e = o.str("Missing").expect_err("missing");
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.to_string().contains("Missing"));
        let e = o.opt_int("N", 6, 10).expect_err("range");
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.to_string().contains("N: must be 6 to 10, got 5"), "{e}");
        let e = o.str("N").expect_err("type");
        assert_eq!(e.code(), ErrorCode::Serialization);
        assert!(e.to_string().contains("N: expected a string"));
        assert_eq!(
            o.blob("S").expect_err("bad base64").code(),
            ErrorCode::Serialization
        );
    }

    #[test]
    fn nested_members_carry_their_path() {
        let v = json(r#"{"Records":[{"Data":"aGk="},{"Data":5}]}"#);
        let o = Obj::root(&v, Format::Json).expect("structure");
        let items = o.opt_list("Records").expect("list").expect("present");
        let r0 = o.item("Records", 0, &items[0]).expect("item");
        assert_eq!(r0.blob("Data").expect("data"), &b"hi"[..]);
        let r1 = o.item("Records", 1, &items[1]).expect("item");
        let e = r1.blob("Data").expect_err("number");
        assert!(e.to_string().starts_with("Records[1].Data"), "{e}");
        let e = r0.str("PartitionKey").expect_err("missing");
        assert!(e.to_string().starts_with("Records[0].PartitionKey"), "{e}");
    }

    #[test]
    fn timestamps_read_seconds_in_json_and_both_units_in_cbor() {
        let v = Value::Map(vec![
            ("Ms".into(), Value::Int(1_700_000_000_123)),
            ("S".into(), Value::Int(1_700_000_000)),
            ("Tagged".into(), Value::Timestamp(1_700_000_000_123)),
            ("Neg".into(), Value::Int(-5)),
        ]);
        let cbor = Obj::root(&v, Format::Cbor).expect("structure");
        assert_eq!(
            cbor.opt_timestamp("Ms").expect("ms"),
            Some(1_700_000_000_123)
        );
        assert_eq!(cbor.opt_timestamp("S").expect("s"), Some(1_700_000_000_000));
        assert_eq!(
            cbor.opt_timestamp("Tagged").expect("tag"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            cbor.opt_timestamp("Neg").expect_err("negative").code(),
            ErrorCode::Validation
        );
        let json = Obj::root(&v, Format::Json).expect("structure");
        assert_eq!(json.opt_timestamp("S").expect("s"), Some(1_700_000_000_000));
    }

    #[test]
    fn direct_json_reading_and_writing_match_the_serde_json_tree() {
        let text = br#"{"S":"x","N":-5,"U":18446744073709551615,"F":1.5,"B":false,"Z":null,"L":[1,{"k":"v"}]}"#;
        let direct = Value::parse_json(text).expect("json");
        let via_tree = Value::from_json(serde_json::from_slice(text).expect("json"));
        let sorted = |v: Value| match v {
            Value::Map(mut m) => {
                m.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Map(m)
            }
            other => other,
        };
        assert_eq!(sorted(direct.clone()), sorted(via_tree));
        let v = Value::map([
            ("D", Value::Blob(Bytes::from_static(b"hi"))),
            ("T", Value::Timestamp(1_700_000_000_500)),
            ("W", Value::Timestamp(1_700_000_000_000)),
            ("L", Value::Array(vec![Value::Int(1), Value::Null])),
        ]);
        let written: serde_json::Value =
            serde_json::from_slice(&v.json_bytes()).expect("valid json");
        assert_eq!(written, v.to_json());
        assert!(Value::parse_json(b"{\"a\":").is_err());
    }

    #[test]
    fn responses_encode_blobs_and_timestamps_for_json() {
        let v = Value::map([
            ("D", Value::Blob(Bytes::from_static(b"hi"))),
            ("T", Value::Timestamp(1_700_000_000_500)),
            ("W", Value::Timestamp(1_700_000_000_000)),
        ]);
        assert_eq!(
            v.to_json(),
            serde_json::json!({"D": "aGk=", "T": 1_700_000_000.5, "W": 1_700_000_000})
        );
    }
}
