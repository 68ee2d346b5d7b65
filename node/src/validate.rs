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

/// Checks one record; `field` is its place in the request, e.g. `records[3]`.
pub fn record(field: &str, partition_key: &str, data_len: usize) -> Result<(), ServiceError> {
    let chars = partition_key.chars().count();
    if chars == 0 || chars > MAX_PARTITION_KEY_CHARS {
        return Err(ServiceError::invalid(format!(
            "{field}partition_key: must be 1 to {MAX_PARTITION_KEY_CHARS} characters, got {chars}"
        )));
    }
    let size = data_len + partition_key.len();
    if size > MAX_RECORD_BYTES {
        return Err(ServiceError::invalid(format!(
            "{field}data: record of {size} bytes (data plus partition key) is over the limit of {MAX_RECORD_BYTES} bytes (1 MiB)"
        )));
    }
    Ok(())
}

/// Checks the size of a PutRecords call: 1 to 500 records, at most 5 MiB in all.
pub fn put_records(count: usize, total_bytes: usize) -> Result<(), ServiceError> {
    if count == 0 || count > MAX_PUT_RECORDS {
        return Err(ServiceError::invalid(format!(
            "records: must hold 1 to {MAX_PUT_RECORDS} records, got {count}"
        )));
    }
    if total_bytes > MAX_PUT_RECORDS_BYTES {
        return Err(ServiceError::invalid(format!(
            "records: {total_bytes} bytes in all is over the limit of {MAX_PUT_RECORDS_BYTES} bytes (5 MiB) per call"
        )));
    }
    Ok(())
}

/// The retention of a new stream: 0 means the default of 24 hours.
pub fn retention(field: &str, hours: u32, zero_is_default: bool) -> Result<u32, ServiceError> {
    if hours == 0 && zero_is_default {
        return Ok(DEFAULT_RETENTION_HOURS);
    }
    if !(MIN_RETENTION_HOURS..=MAX_RETENTION_HOURS).contains(&hours) {
        return Err(ServiceError::invalid(format!(
            "{field}: must be {MIN_RETENTION_HOURS} to {MAX_RETENTION_HOURS} hours, got {hours}"
        )));
    }
    Ok(hours)
}

/// The shard count of a new stream.
pub fn shard_count(count: u32, max: u32) -> Result<(), ServiceError> {
    if count == 0 || count > max {
        return Err(ServiceError::invalid(format!(
            "shard_count: must be 1 to {max} (limits.max_shards_per_stream), got {count}"
        )));
    }
    Ok(())
}

/// The record limit of a GetRecords call: 0 means the maximum.
pub fn get_limit(limit: u32) -> Result<usize, ServiceError> {
    match limit {
        0 => Ok(MAX_GET_RECORDS as usize),
        l if l <= MAX_GET_RECORDS => Ok(l as usize),
        l => Err(ServiceError::invalid(format!(
            "limit: must be 1 to {MAX_GET_RECORDS}, got {l}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use riptide_proto::ErrorCode;

    #[test]
    fn limits_hold_at_their_edges() {
        assert!(record("", &"k".repeat(256), 10).is_ok());
        let e = record("records[2].", &"k".repeat(257), 10).expect_err("must be refused");
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.contains("records[2].partition_key") && e.message.contains("256"));
        assert!(
            record("", "", 1)
                .expect_err("must be refused")
                .message
                .contains("partition_key")
        );
        assert!(record("", "k", MAX_RECORD_BYTES - 1).is_ok());
        assert!(
            record("", "k", MAX_RECORD_BYTES)
                .expect_err("must be refused")
                .message
                .contains("1 MiB")
        );
        assert!(put_records(500, MAX_PUT_RECORDS_BYTES).is_ok());
        assert!(
            put_records(501, 1)
                .expect_err("must be refused")
                .message
                .contains("500")
        );
        assert!(put_records(0, 0).is_err());
        assert!(
            put_records(1, MAX_PUT_RECORDS_BYTES + 1)
                .expect_err("must be refused")
                .message
                .contains("5 MiB")
        );
        assert_eq!(retention("r", 0, true), Ok(24));
        assert!(retention("r", 0, false).is_err());
        assert!(
            retention("r", 8761, true)
                .expect_err("must be refused")
                .message
                .contains("8760")
        );
        assert!(shard_count(0, 10).is_err());
        assert!(
            shard_count(11, 10)
                .expect_err("must be refused")
                .message
                .contains("max_shards_per_stream")
        );
        assert_eq!(get_limit(0), Ok(10_000));
        assert!(get_limit(10_001).is_err());
    }
}
