//! Stream ARNs: `arn:aws:kinesis:<region>:<account>:stream/<name>`.
//!
//! Riptide has no AWS accounts or regions. It shows every stream under the account
//! [`ACCOUNT`] in the region the client signed its request for, and accepts any partition,
//! region and 12-digit account when it reads an ARN: only the stream name counts.

/// The account id in the ARNs Riptide shows.
pub const ACCOUNT: &str = "000000000000";
/// The region shown to clients that did not sign their request.
pub const DEFAULT_REGION: &str = "us-east-1";

/// What an ARN names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Stream(String),
    /// An enhanced fan-out consumer of a stream.
    Consumer {
        stream: String,
        consumer: String,
    },
}

/// Why an ARN was refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{field}: must look like arn:aws:kinesis:<region>:<12-digit account>:stream/<name>, got {arn:?}"
)]
pub struct ArnError {
    pub field: &'static str,
    pub arn: String,
}

pub fn stream_arn(region: &str, name: &str) -> String {
    format!("arn:aws:kinesis:{region}:{ACCOUNT}:stream/{name}")
}

/// Reads the ARN in `field`.
pub fn parse(field: &'static str, arn: &str) -> Result<Resource, ArnError> {
    let err = || ArnError {
        field,
        arn: arn.to_string(),
    };
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("kinesis"), Some(_region), Some(account), Some(res)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(err());
    };
    if !partition.starts_with("aws")
        || account.len() != 12
        || !account.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(err());
    }
    let rest = res.strip_prefix("stream/").ok_or_else(err)?;
    match rest.split_once("/consumer/") {
        None if !rest.is_empty() && !rest.contains('/') => Ok(Resource::Stream(rest.to_string())),
        Some((stream, consumer)) if !stream.is_empty() && !consumer.is_empty() => {
            Ok(Resource::Consumer {
                stream: stream.to_string(),
                consumer: consumer.to_string(),
            })
        }
        _ => Err(err()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_arns_round_trip_whatever_the_region_and_account() {
        let arn = stream_arn("eu-west-1", "orders");
        assert_eq!(arn, "arn:aws:kinesis:eu-west-1:000000000000:stream/orders");
        assert_eq!(
            parse("StreamARN", &arn),
            Ok(Resource::Stream("orders".into()))
        );
        assert_eq!(
            parse(
                "StreamARN",
                "arn:aws-cn:kinesis:cn-north-1:123456789012:stream/a.b-c_d"
            ),
            Ok(Resource::Stream("a.b-c_d".into()))
        );
        assert_eq!(
            parse(
                "ResourceARN",
                "arn:aws:kinesis:us-east-1:123456789012:stream/s/consumer/c:1700000000"
            ),
            Ok(Resource::Consumer {
                stream: "s".into(),
                consumer: "c:1700000000".into()
            })
        );
    }

    #[test]
    fn other_arns_are_refused_naming_the_field() {
        for bad in [
            "orders",
            "arn:aws:kinesis:us-east-1:000000000000:stream/",
            "arn:aws:kinesis:us-east-1:0000:stream/s",
            "arn:aws:firehose:us-east-1:000000000000:deliverystream/s",
            "arn:aws:kinesis:us-east-1:000000000000:table/s",
            "arn:gcp:kinesis:us-east-1:000000000000:stream/s",
            "arn:aws:kinesis:us-east-1:000000000000:stream/s/x",
        ] {
            let e = parse("StreamARN", bad).expect_err(bad);
            assert!(
                e.to_string().starts_with("StreamARN: must look like"),
                "{e}"
            );
        }
    }
}
