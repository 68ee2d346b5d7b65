//! The daemon's TOML configuration: the cluster to read from and the delivery streams, and
//! [`validate`], which names every mistake with the key it is under.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use riptide_client::{ShardId, StartingPosition};
use serde::Deserialize;

use crate::template::Template;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Nodes of the Riptide cluster, `http://host:port`.
    #[serde(default = "default_endpoints")]
    pub endpoints: Vec<String>,
    /// Where the daemon keeps its own state: HTTP checkpoints and the status file.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Seconds between progress lines in the log (0 turns them off).
    #[serde(default = "default_progress_seconds")]
    pub progress_interval_seconds: u64,
    /// How long a shutdown may take to deliver what is buffered before it gives up (the
    /// records not delivered are read again on the next start).
    #[serde(default = "default_shutdown_seconds")]
    pub shutdown_timeout_seconds: u64,
    #[serde(default, rename = "delivery")]
    pub deliveries: Vec<Delivery>,
}

fn default_endpoints() -> Vec<String> {
    vec!["http://127.0.0.1:7101".to_string()]
}
fn default_state_dir() -> PathBuf {
    PathBuf::from("firehose-state")
}
fn default_progress_seconds() -> u64 {
    10
}
fn default_shutdown_seconds() -> u64 {
    30
}

/// One delivery stream: a source stream, how records are buffered, formatted and where they go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    pub name: String,
    pub stream: String,
    /// Shard ids to deliver (`shardId-000000000000` or the number); all shards when absent.
    #[serde(default)]
    pub shards: Option<Vec<String>>,
    /// `trim-horizon`, `latest` or `timestamp:MS` (milliseconds since the epoch): where a
    /// shard starts when nothing of it was delivered yet.
    #[serde(default = "default_start")]
    pub start: String,
    #[serde(default)]
    pub buffer: Buffer,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub transform: Option<Transform>,
    pub destination: Destination,
}

fn default_start() -> String {
    "trim-horizon".to_string()
}

/// Buffering hints: a batch is cut when either is reached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Buffer {
    #[serde(default = "default_size_mib")]
    pub size_mib: f64,
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: f64,
}

fn default_size_mib() -> f64 {
    5.0
}
fn default_interval_seconds() -> f64 {
    300.0
}

impl Default for Buffer {
    fn default() -> Self {
        Self {
            size_mib: default_size_mib(),
            interval_seconds: default_interval_seconds(),
        }
    }
}

impl Buffer {
    pub fn size_bytes(&self) -> usize {
        (self.size_mib * 1024.0 * 1024.0) as usize
    }
    pub fn interval(&self) -> Duration {
        Duration::from_secs_f64(self.interval_seconds)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum FormatKind {
    #[default]
    Raw,
    JsonLines,
    Parquet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
    Zstd,
    Snappy,
}

/// How a batch of records becomes bytes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Format {
    #[serde(default)]
    pub kind: FormatKind,
    /// Written after every record in the raw format.
    #[serde(default = "default_delimiter")]
    pub delimiter: String,
    #[serde(default)]
    pub compression: Compression,
    /// Parquet only: the columns records are parsed into.
    #[serde(default)]
    pub schema: Vec<Column>,
}

fn default_delimiter() -> String {
    "\n".to_string()
}

impl Default for Format {
    fn default() -> Self {
        Self {
            kind: FormatKind::Raw,
            delimiter: default_delimiter(),
            compression: Compression::None,
            schema: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Boolean,
    /// Milliseconds since the epoch in the JSON record.
    TimestampMillis,
}

/// A Parquet column filled from the JSON field of the same name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Column {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: ColumnType,
    #[serde(default)]
    pub nullable: bool,
}

/// How long a failing batch is retried before its records go to the error output.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    #[serde(default = "default_retry_seconds")]
    pub duration_seconds: f64,
}

fn default_retry_seconds() -> f64 {
    300.0
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            duration_seconds: default_retry_seconds(),
        }
    }
}

impl Retry {
    pub fn duration(&self) -> Duration {
        Duration::from_secs_f64(self.duration_seconds)
    }
}

/// The optional transform step: an HTTP endpoint that gets each batch first.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transform {
    pub url: String,
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: f64,
}

fn default_timeout_seconds() -> f64 {
    30.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Destination {
    Directory {
        path: PathBuf,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default = "default_error_prefix")]
        error_prefix: String,
    },
    S3 {
        bucket: String,
        /// The store's URL, `http://127.0.0.1:9000`; AWS's own when absent.
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default = "default_region")]
        region: String,
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
        #[serde(default = "default_prefix")]
        prefix: String,
        #[serde(default = "default_error_prefix")]
        error_prefix: String,
    },
    Http {
        url: String,
        /// Sent as `X-Amz-Firehose-Access-Key`.
        #[serde(default)]
        access_key: Option<String>,
        #[serde(default = "default_timeout_seconds")]
        timeout_seconds: f64,
        /// Records that could not be delivered go to files under this directory.
        error_directory: PathBuf,
    },
    Postgres {
        /// A libpq-style connection string, `host=127.0.0.1 port=5432 user=... dbname=...`.
        url: String,
        table: String,
        /// Columns of `table` and what fills each; `data` only when absent.
        #[serde(default)]
        columns: Vec<PgColumn>,
        #[serde(default = "default_checkpoint_table")]
        checkpoint_table: String,
        /// `<table>_errors` when absent.
        #[serde(default)]
        error_table: Option<String>,
    },
}

fn default_prefix() -> String {
    "{stream}/".to_string()
}
fn default_error_prefix() -> String {
    "errors/".to_string()
}
fn default_region() -> String {
    "us-east-1".to_string()
}
fn default_checkpoint_table() -> String {
    "riptide_firehose_checkpoints".to_string()
}

/// A PostgreSQL column and its source: `data`, `partition_key`, `sequence_number`, `shard`,
/// `arrival_timestamp` or `field:NAME` (a field of the record parsed as JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgColumn {
    pub name: String,
    pub from: String,
}

/// One mistake in a configuration, under its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path} has {} problem(s):\n{}", problems.len(), problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

/// Reads and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let config = parse(&text).map_err(|message| ConfigError::Syntax {
        path: path.to_path_buf(),
        message,
    })?;
    let problems = validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            path: path.to_path_buf(),
            problems,
        })
    }
}

/// Parses TOML; the message names the key serde stopped at.
pub fn parse(text: &str) -> Result<Config, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

/// Parses a shard given as `shardId-000000000003` or `3`.
pub fn parse_shard(s: &str) -> Option<ShardId> {
    s.parse::<ShardId>()
        .ok()
        .or_else(|| s.parse::<u32>().ok().map(ShardId))
}

/// Every mistake the file has, each with its key.
pub fn validate(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut p = |key: String, message: String| problems.push(ConfigProblem { key, message });
    if config.endpoints.is_empty() {
        p("endpoints".into(), "give at least one node".into());
    }
    for (i, e) in config.endpoints.iter().enumerate() {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            p(
                format!("endpoints[{i}]"),
                format!("must be http://host:port, got {e:?}"),
            );
        }
    }
    if config.deliveries.is_empty() {
        p(
            "delivery".into(),
            "no [[delivery]] table: nothing to deliver".into(),
        );
    }
    let mut names = HashSet::new();
    for (i, d) in config.deliveries.iter().enumerate() {
        let k = |field: &str| format!("delivery[{i}].{field}");
        if d.name.is_empty()
            || !d
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        {
            p(
                k("name"),
                format!("use letters, digits, '-', '_' and '.', got {:?}", d.name),
            );
        }
        if !names.insert(d.name.clone()) {
            p(k("name"), format!("{:?} is used twice", d.name));
        }
        if d.stream.is_empty() {
            p(k("stream"), "must name a stream".into());
        }
        if let Some(shards) = &d.shards {
            if shards.is_empty() {
                p(k("shards"), "leave it out to deliver every shard".into());
            }
            for (j, s) in shards.iter().enumerate() {
                if parse_shard(s).is_none() {
                    p(
                        k(&format!("shards[{j}]")),
                        format!("not a shard id (shardId-000000000000 or 0): {s:?}"),
                    );
                }
            }
        }
        match d.start.parse::<StartingPosition>() {
            Ok(
                StartingPosition::TrimHorizon
                | StartingPosition::Latest
                | StartingPosition::AtTimestamp(_),
            ) => {}
            _ => p(
                k("start"),
                format!(
                    "must be trim-horizon, latest or timestamp:MS (milliseconds since the epoch), got {:?}",
                    d.start
                ),
            ),
        }
        if !(d.buffer.size_mib > 0.0 && d.buffer.size_mib <= 128.0) {
            p(
                k("buffer.size_mib"),
                format!("must be above 0 and at most 128, got {}", d.buffer.size_mib),
            );
        }
        if !(d.buffer.interval_seconds >= 0.0 && d.buffer.interval_seconds <= 900.0) {
            p(
                k("buffer.interval_seconds"),
                format!(
                    "must be between 0 and 900, got {}",
                    d.buffer.interval_seconds
                ),
            );
        }
        if !(d.retry.duration_seconds >= 0.0 && d.retry.duration_seconds <= 7200.0) {
            p(
                k("retry.duration_seconds"),
                format!(
                    "must be between 0 and 7200, got {}",
                    d.retry.duration_seconds
                ),
            );
        }
        validate_format(&d.format, &k, &mut p);
        if let Some(t) = &d.transform {
            if !(t.url.starts_with("http://") || t.url.starts_with("https://")) {
                p(
                    k("transform.url"),
                    format!("must be an http(s) URL, got {:?}", t.url),
                );
            }
            if t.timeout_seconds.is_nan() || t.timeout_seconds <= 0.0 {
                p(k("transform.timeout_seconds"), "must be above 0".into());
            }
        }
        match &d.destination {
            Destination::Directory {
                prefix,
                error_prefix,
                path,
            } => {
                if path.as_os_str().is_empty() {
                    p(k("destination.path"), "must name a directory".into());
                }
                check_prefixes(prefix, error_prefix, &d.format, &k, &mut p);
            }
            Destination::S3 {
                bucket,
                endpoint,
                access_key_id,
                secret_access_key,
                prefix,
                error_prefix,
                ..
            } => {
                if bucket.is_empty() {
                    p(k("destination.bucket"), "must name a bucket".into());
                }
                if let Some(e) = endpoint
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    p(
                        k("destination.endpoint"),
                        format!("must be an http(s) URL, got {e:?}"),
                    );
                }
                if access_key_id.is_some() != secret_access_key.is_some() {
                    p(
                        k("destination.secret_access_key"),
                        "give access_key_id and secret_access_key together".into(),
                    );
                }
                check_prefixes(prefix, error_prefix, &d.format, &k, &mut p);
            }
            Destination::Http {
                url,
                timeout_seconds,
                ..
            } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    p(
                        k("destination.url"),
                        format!("must be an http(s) URL, got {url:?}"),
                    );
                }
                if timeout_seconds.is_nan() || *timeout_seconds <= 0.0 {
                    p(k("destination.timeout_seconds"), "must be above 0".into());
                }
                if d.format.kind != FormatKind::Raw || d.format.compression != Compression::None {
                    p(
                        k("format"),
                        "an http destination takes records as they are: leave format out".into(),
                    );
                }
            }
            Destination::Postgres {
                table,
                columns,
                checkpoint_table,
                error_table,
                ..
            } => {
                for (key, name) in [
                    ("destination.table", Some(table)),
                    ("destination.checkpoint_table", Some(checkpoint_table)),
                    ("destination.error_table", error_table.as_ref()),
                ] {
                    if let Some(name) = name
                        && !is_sql_name(name)
                    {
                        p(
                            k(key),
                            format!(
                                "use letters, digits and '_' (optionally schema.table), got {name:?}"
                            ),
                        );
                    }
                }
                for (j, c) in columns.iter().enumerate() {
                    if !is_sql_name(&c.name) || c.name.contains('.') {
                        p(
                            k(&format!("destination.columns[{j}].name")),
                            format!("use letters, digits and '_', got {:?}", c.name),
                        );
                    }
                    if crate::sink::postgres::ColumnSource::parse(&c.from).is_none() {
                        p(
                            k(&format!("destination.columns[{j}].from")),
                            format!(
                                "must be data, partition_key, sequence_number, shard, \
                                 arrival_timestamp or field:NAME, got {:?}",
                                c.from
                            ),
                        );
                    }
                }
                if d.format.kind != FormatKind::Raw || d.format.compression != Compression::None {
                    p(
                        k("format"),
                        "a postgres destination fills columns: leave format out".into(),
                    );
                }
            }
        }
    }
    check_overlaps(config, &mut p);
    problems
}

/// Where an object destination lists on start: the store and the heads of its prefixes.
fn listing_area(d: &Delivery) -> Option<(String, Vec<String>)> {
    let (store, prefix, error_prefix) = match &d.destination {
        Destination::Directory {
            path,
            prefix,
            error_prefix,
        } => (format!("dir:{}", path.display()), prefix, error_prefix),
        Destination::S3 {
            bucket,
            endpoint,
            prefix,
            error_prefix,
            ..
        } => (
            format!("s3:{}/{bucket}", endpoint.as_deref().unwrap_or("")),
            prefix,
            error_prefix,
        ),
        _ => return None,
    };
    let head = Template::parse(prefix).ok()?.static_head().to_string();
    Some((store, vec![head, error_prefix.clone()]))
}

/// Two deliveries of one stream must not share where they list: each would take the other's
/// objects for its own when finding where it left off.
fn check_overlaps(config: &Config, p: &mut dyn FnMut(String, String)) {
    let areas: Vec<Option<(String, Vec<String>)>> =
        config.deliveries.iter().map(listing_area).collect();
    for (j, b) in config.deliveries.iter().enumerate() {
        for (i, a) in config.deliveries.iter().enumerate().take(j) {
            let (Some((store_a, heads_a)), Some((store_b, heads_b))) = (&areas[i], &areas[j])
            else {
                continue;
            };
            let overlap = heads_a.iter().any(|x| {
                heads_b
                    .iter()
                    .any(|y| x.starts_with(y.as_str()) || y.starts_with(x.as_str()))
            });
            if a.stream == b.stream && store_a == store_b && overlap {
                p(
                    format!("delivery[{j}].destination.prefix"),
                    format!(
                        "delivery {:?} writes stream {:?} to the same place as delivery {:?}: \
                         give each its own prefix and error_prefix, neither starting with the other's",
                        b.name, b.stream, a.name
                    ),
                );
            }
        }
    }
}

fn validate_format(f: &Format, k: &dyn Fn(&str) -> String, p: &mut dyn FnMut(String, String)) {
    match f.kind {
        FormatKind::Parquet => {
            if f.schema.is_empty() {
                p(
                    k("format.schema"),
                    "parquet needs a schema: [[delivery.format.schema]] name = \"id\", type = \"int64\""
                        .into(),
                );
            }
            let mut seen = HashSet::new();
            for (j, c) in f.schema.iter().enumerate() {
                if c.name.is_empty() {
                    p(
                        k(&format!("format.schema[{j}].name")),
                        "must not be empty".into(),
                    );
                }
                if !seen.insert(&c.name) {
                    p(
                        k(&format!("format.schema[{j}].name")),
                        format!("{:?} is used twice", c.name),
                    );
                }
            }
        }
        FormatKind::Raw | FormatKind::JsonLines => {
            if !f.schema.is_empty() {
                p(
                    k("format.schema"),
                    "only the parquet format takes a schema".into(),
                );
            }
        }
    }
}

fn check_prefixes(
    prefix: &str,
    error_prefix: &str,
    format: &Format,
    k: &dyn Fn(&str) -> String,
    p: &mut dyn FnMut(String, String),
) {
    match Template::parse(prefix) {
        Ok(t) => {
            if t.uses_fields() && format.kind == FormatKind::Raw {
                // Fine: raw records are parsed as JSON only to find the partition.
            }
        }
        Err(e) => p(k("destination.prefix"), e),
    }
    match Template::parse(error_prefix) {
        Ok(t) if t.is_static() => {}
        Ok(_) => p(
            k("destination.error_prefix"),
            "must be plain text, without {...}".into(),
        ),
        Err(e) => p(k("destination.error_prefix"), e),
    }
    if error_prefix.is_empty() {
        p(
            k("destination.error_prefix"),
            "must not be empty: errors would mix with delivered objects".into(),
        );
    }
    if prefix.starts_with('/') || error_prefix.starts_with('/') {
        p(
            k("destination.prefix"),
            "prefixes are relative: leave out the leading '/'".into(),
        );
    }
}

fn is_sql_name(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        let config = parse(text).expect("parses");
        validate(&config).iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_minimal_directory_delivery_is_valid() {
        let text = r#"
            [[delivery]]
            name = "orders"
            stream = "orders"
            destination = { kind = "directory", path = "out" }
        "#;
        assert_eq!(problems(text), Vec::<String>::new());
    }

    #[test]
    fn every_mistake_is_named_with_its_key() {
        let text = r#"
            endpoints = ["127.0.0.1:7101"]
            [[delivery]]
            name = "a b"
            stream = "orders"
            shards = ["shard-x"]
            start = "yesterday"
            buffer = { size_mib = 0, interval_seconds = 1000 }
            format = { kind = "parquet", compression = "gzip" }
            destination = { kind = "s3", bucket = "", access_key_id = "k", prefix = "{nope}/" }
        "#;
        let found = problems(text);
        for key in [
            "endpoints[0]",
            "delivery[0].name",
            "delivery[0].shards[0]",
            "delivery[0].start",
            "delivery[0].buffer.size_mib",
            "delivery[0].buffer.interval_seconds",
            "delivery[0].format.schema",
            "delivery[0].destination.bucket",
            "delivery[0].destination.secret_access_key",
            "delivery[0].destination.prefix",
        ] {
            assert!(
                found.iter().any(|p| p.starts_with(&format!("{key}:"))),
                "no problem under {key} in {found:#?}"
            );
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let text = r#"
            [[delivery]]
            name = "orders"
            stream = "orders"
            buffer = { size_mb = 1 }
            destination = { kind = "directory", path = "out" }
        "#;
        let e = parse(text).expect_err("unknown key");
        assert!(e.contains("size_mb"), "{e}");
    }

    #[test]
    fn two_deliveries_of_a_stream_must_not_share_a_listing() {
        let text = r#"
            [[delivery]]
            name = "raw"
            stream = "orders"
            destination = { kind = "directory", path = "out" }
            [[delivery]]
            name = "json"
            stream = "orders"
            format = { kind = "json-lines" }
            destination = { kind = "directory", path = "out", prefix = "json/", error_prefix = "json-errors/" }
            [[delivery]]
            name = "other-stream"
            stream = "payments"
            destination = { kind = "directory", path = "out" }
        "#;
        let found = problems(text);
        // "raw" lists the whole folder ("{stream}/" has no fixed head): it overlaps "json".
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("delivery[1].destination.prefix:")),
            "{found:#?}"
        );
        assert!(
            !found.iter().any(|p| p.starts_with("delivery[2]")),
            "{found:#?}"
        );
        let fixed = text.replace(
            r#"destination = { kind = "directory", path = "out" }
            [[delivery]]
            name = "json""#,
            r#"destination = { kind = "directory", path = "out", prefix = "raw/", error_prefix = "raw-errors/" }
            [[delivery]]
            name = "json""#,
        );
        assert_eq!(problems(&fixed), Vec::<String>::new());
    }

    #[test]
    fn postgres_columns_are_checked() {
        let text = r#"
            [[delivery]]
            name = "pg"
            stream = "orders"
            [delivery.destination]
            kind = "postgres"
            url = "host=127.0.0.1"
            table = "orders; drop table x"
            columns = [{ name = "id", from = "field:id" }, { name = "x", from = "body" }]
        "#;
        let found = problems(text);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("delivery[0].destination.table:"))
        );
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("delivery[0].destination.columns[1].from:"))
        );
        assert!(
            !found
                .iter()
                .any(|p| p.starts_with("delivery[0].destination.columns[0]"))
        );
    }
}
