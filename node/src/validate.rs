//! Checks of request fields against Kinesis's limits. Pure functions: each error names the
//! field and the limit.

use crate::error::ServiceError;

/// Longest partition key, in characters.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;
/// Largest record: data plus partition key, 1 MiB.
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
/// Most records in one PutRecords call.
pub const MAX_PUT_RECORDS: usize = 500;
/// Largest PutRecords call: data plus partition keys, 5 MiB.
pub const MAX_PUT_RECORDS_BYTES: usize = 5 * 1024 * 1024;
/// Most records one GetRecords call returns.
pub const MAX_GET_RECORDS: u32 = 10_000;
/// Most bytes one GetRecords call returns: 10 MiB.
pub const MAX_GET_RECORDS_BYTES: usize = 10 * 1024 * 1024;
/// Retention bounds in hours: 1 hour to 365 days.
pub const MIN_RETENTION_HOURS: u32 = 1;
pub const MAX_RETENTION_HOURS: u32 = 8760;
pub const DEFAULT_RETENTION_HOURS: u32 = 24;
/// Tags one stream may hold, as in Kinesis.
pub const MAX_TAGS_PER_STREAM: u32 = 50;
/// Tag keys are 1 to 128 characters, values 0 to 256.
pub const MAX_TAG_KEY_CHARS: usize = 128;
pub const MAX_TAG_VALUE_CHARS: usize = 256;
/// Most tag keys one call may remove.
pub const MAX_TAG_KEYS_PER_CALL: usize = 50;

fn tag_key(field: &str, key: &str) -> Result<(), ServiceError> {
    let chars = key.chars().count();
    if chars == 0 || chars > MAX_TAG_KEY_CHARS {
        return Err(ServiceError::Validation(format!(
            "{field}: tag key {key:?} must be 1 to {MAX_TAG_KEY_CHARS} characters, got {chars}"
        )));
    }
    Ok(())
}

/// Checks tags to set: at least one, keys of 1 to 128 characters, values of at most 256. The
/// count per stream is checked when the controller applies them.
pub fn tags<'a>(
    field: &str,
    tags: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<(), ServiceError> {
    if tags.len() == 0 {
        return Err(ServiceError::Validation(format!(
            "{field}: must hold at least 1 tag"
        )));
    }
    for (k, v) in tags {
        tag_key(field, k)?;
        let chars = v.chars().count();
        if chars > MAX_TAG_VALUE_CHARS {
            return Err(ServiceError::Validation(format!(
                "{field}: value of tag {k:?} must be at most {MAX_TAG_VALUE_CHARS} characters, got {chars}"
            )));
        }
    }
    Ok(())
}

/// Checks tag keys to remove: 1 to 50 keys of 1 to 128 characters.
pub fn tag_keys(field: &str, keys: &[String]) -> Result<(), ServiceError> {
    if keys.is_empty() || keys.len() > MAX_TAG_KEYS_PER_CALL {
        return Err(ServiceError::Validation(format!(
            "{field}: must hold 1 to {MAX_TAG_KEYS_PER_CALL} tag keys, got {}",
            keys.len()
        )));
    }
    keys.iter().try_for_each(|k| tag_key(field, k))
}

/// Checks one record (its fields are named on their own: the caller puts the record's place
/// in the request in front, with [`ServiceError::in_field`]).
pub fn record(partition_key: &str, data_len: usize) -> Result<(), ServiceError> {
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(ServiceError::invalid(
            "partition_key",
            format!("must be 1 to {MAX_PARTITION_KEY_CHARS} characters, got {chars}"),
        ));
    }
    let size = data_len + partition_key.len();
    if size > MAX_RECORD_BYTES {
        return Err(ServiceError::invalid(
            "data",
            format!(
                "record of {size} bytes (data plus partition key) is over the limit of {MAX_RECORD_BYTES} bytes (1 MiB)"
            ),
        ));
    }
    Ok(())
}

/// Checks the size of a PutRecords call: 1 to 500 records, at most 5 MiB in all.
pub fn put_records(count: usize, total_bytes: usize) -> Result<(), ServiceError> {
    if count == 0 || count > MAX_PUT_RECORDS {
        return Err(ServiceError::invalid(
            "records",
            format!("must hold 1 to {MAX_PUT_RECORDS} records, got {count}"),
        ));
    }
    if total_bytes > MAX_PUT_RECORDS_BYTES {
        return Err(ServiceError::invalid(
            "records",
            format!(
                "{total_bytes} bytes in all is over the limit of {MAX_PUT_RECORDS_BYTES} bytes (5 MiB) per call"
            ),
        ));
    }
    Ok(())
}

/// The retention of a new stream: 0 means the default of 24 hours.
pub fn retention(field: &str, hours: u32, zero_is_default: bool) -> Result<u32, ServiceError> {
    if hours == 0 && zero_is_default {
        return Ok(DEFAULT_RETENTION_HOURS);
    }
    if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        return Err(ServiceError::invalid(
            field,
            format!("must be {MIN_RETENTION_HOURS} to {MAX_RETENTION_HOURS} hours, got {hours}"),
        ));
    }
    Ok(hours)
}

/// The shard count of a new stream.
pub fn shard_count(count: u32, max: u32) -> Result<(), ServiceError> {
    if count == 0 || count > max {
        return Err(ServiceError::invalid(
            "shard_count",
            format!("must be 1 to {max} (limits.max_shards_per_stream), got {count}"),
        ));
    }
    Ok(())
}

/// The record limit of a GetRecords call: 0 means the maximum.
pub fn get_limit(limit: u32) -> Result<usize, ServiceError> {
    match limit {
        0 => Ok(MAX_GET_RECORDS as usize),
        l if l <= MAX_GET_RECORDS => Ok(l as usize),
        l => Err(ServiceError::invalid(
            "limit",
            format!("must be 1 to {MAX_GET_RECORDS}, got {l}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riptide_proto::ErrorCode;
    use std::collections::BTreeMap;

    #[test]
    fn limits_hold_at_their_edges() {
        assert!(record(&"k".repeat(256), 10).is_ok());
        let e = record(&"k".repeat(257), 10).expect_err("must be refused");
        assert_eq!(e.code(), ErrorCode::InvalidArgument);
        assert!(
            matches!(&e, ServiceError::InvalidArgument { field, .. } if field == "partition_key")
        );
        assert!(e.to_string().contains("256"));
        assert!(
            record("", 1)
                .expect_err("must be refused")
                .to_string()
                .starts_with("partition_key")
        );
        assert!(record("k", MAX_RECORD_BYTES - 1).is_ok());
        let e = record("k", MAX_RECORD_BYTES).expect_err("must be refused");
        assert!(e.to_string().starts_with("data") && e.to_string().contains("1 MiB"));
        assert!(put_records(500, MAX_PUT_RECORDS_BYTES).is_ok());
        assert!(
            put_records(501, 1)
                .expect_err("must be refused")
                .to_string()
                .contains("500")
        );
        assert!(put_records(0, 0).is_err());
        assert!(
            put_records(1, MAX_PUT_RECORDS_BYTES + 1)
                .expect_err("must be refused")
                .to_string()
                .contains("5 MiB")
        );
        assert_eq!(retention("r", 0, true), Ok(24));
        assert!(retention("r", 0, false).is_err());
        assert!(
            retention("r", 8761, true)
                .expect_err("must be refused")
                .to_string()
                .contains("8760")
        );
        assert!(shard_count(0, 10).is_err());
        assert!(
            shard_count(11, 10)
                .expect_err("must be refused")
                .to_string()
                .contains("max_shards_per_stream")
        );
        assert_eq!(get_limit(0), Ok(10_000));
        assert!(get_limit(10_001).is_err());
    }

    #[test]
    fn tag_limits_hold_at_their_edges() {
        let one = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        assert!(tags("tags", one(&"k".repeat(128), &"v".repeat(256)).iter()).is_ok());
        assert!(tags("tags", one("k", "").iter()).is_ok());
        let e = tags("tags", one(&"k".repeat(129), "v").iter()).expect_err("long key");
        assert_eq!(e.code(), ErrorCode::Validation);
        assert!(e.to_string().contains("tags") && e.to_string().contains("128"));
        let e = tags("tags", one("k", &"v".repeat(257)).iter()).expect_err("long value");
        assert!(e.to_string().contains("256"));
        assert!(tags("tags", one("", "v").iter()).is_err());
        assert!(tags("tags", BTreeMap::new().iter()).is_err());
        assert!(tag_keys("tag_keys", &["a".into()]).is_ok());
        assert!(tag_keys("tag_keys", &[]).is_err());
        let e = tag_keys("tag_keys", &vec!["a".to_string(); 51]).expect_err("51 keys");
        assert!(e.to_string().contains("tag_keys") && e.to_string().contains("50"));
    }
}
