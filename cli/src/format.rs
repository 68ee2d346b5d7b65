//! How the CLI shows things: aligned tables (comfy-table), record data as text or hex,
//! timestamps, and the JSON forms. Pure functions, tested without a cluster.

use std::fmt::Write as _;

use riptide_client::{ShardId, v1};
use serde_json::{Value, json};

/// A table in the CLI's plain style: a header row, no borders, columns separated by two
/// spaces and as wide as their widest cell (in terminal columns), no trailing spaces, never
/// wrapped (lines stay whole for `grep` and `cut`).
#[derive(Debug)]
pub struct Table {
    table: comfy_table::Table,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Self {
        let mut table = comfy_table::Table::new();
        table
            .load_style(comfy_table::presets::NOTHING)
            .set_content_arrangement(comfy_table::ContentArrangement::Disabled)
            .set_header(headers.to_vec());
        let last = headers.len().saturating_sub(1);
        for (i, column) in table.column_iter_mut().enumerate() {
            column.set_padding((0, if i == last { 0 } else { 2 }));
        }
        Self { table }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.table.add_row(cells);
    }

    /// The table, each line ending with a newline.
    pub fn render(&self) -> String {
        let mut out = self.table.trim_fmt();
        out.push('\n');
        out
    }
}

/// Lowercase hex of `data`.
pub fn hex(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len() * 2);
    for b in data {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Record data for one line of a table: the text with control characters escaped when it is
/// UTF-8, else `hex:` and its hex digits.
pub fn data_cell(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => text
            .chars()
            .flat_map(|c| {
                if c.is_control() {
                    c.escape_default().collect::<Vec<_>>()
                } else {
                    vec![c]
                }
            })
            .collect(),
        Err(_) => format!("hex:{}", hex(data)),
    }
}

/// A record as JSON: its data under `data` when UTF-8, else under `data_hex`.
pub fn record_json(shard: ShardId, record: &v1::Record) -> Value {
    let mut v = json!({
        "shard_id": shard.to_string(),
        "sequence_number": record.sequence_number,
        "partition_key": record.partition_key,
        "approximate_arrival_timestamp_ms": record.approximate_arrival_timestamp_ms,
    });
    match std::str::from_utf8(&record.data) {
        Ok(text) => v["data"] = json!(text),
        Err(_) => v["data_hex"] = json!(hex(&record.data)),
    }
    v
}

/// A record as one line of a table-style listing (used where records stream out one by one).
pub fn record_line(shard: ShardId, record: &v1::Record) -> String {
    format!(
        "{shard}  {}  {}  {}  {}",
        record.sequence_number,
        timestamp(record.approximate_arrival_timestamp_ms),
        record.partition_key,
        data_cell(&record.data)
    )
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DD hh:mm:ss.mmmZ` (UTC).
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Year, month and day of a count of days since 1970-01-01 (proleptic Gregorian calendar;
/// Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A stream status without its prefix: `ACTIVE`, `CREATING`, ...
pub fn status_name(desc: &v1::StreamDescription) -> &'static str {
    match desc.status() {
        v1::StreamStatus::Creating => "CREATING",
        v1::StreamStatus::Active => "ACTIVE",
        v1::StreamStatus::Deleting => "DELETING",
        v1::StreamStatus::Unspecified => "UNKNOWN",
    }
}

/// A node id, or `-` when unknown (0).
pub fn node_cell(node: u64) -> String {
    if node == 0 {
        "-".to_string()
    } else {
        node.to_string()
    }
}

fn node_list(nodes: &[u64]) -> String {
    nodes
        .iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A stream description as JSON.
pub fn stream_json(desc: &v1::StreamDescription) -> Value {
    json!({
        "stream_name": desc.stream_name,
        "status": status_name(desc),
        "retention_period_hours": desc.retention_period_hours,
        "preferred_leader_region": (!desc.preferred_leader_region.is_empty())
            .then_some(&desc.preferred_leader_region),
        "created_at_ms": desc.created_at_ms,
        "shards": desc.shards.iter().map(shard_json).collect::<Vec<_>>(),
    })
}

/// A shard as JSON.
pub fn shard_json(shard: &v1::Shard) -> Value {
    let range = shard.hash_key_range.clone().unwrap_or_default();
    json!({
        "shard_id": shard.shard_id,
        "starting_hash_key": range.starting_hash_key,
        "ending_hash_key": range.ending_hash_key,
        "leader": shard.leader,
        "replicas": shard.replicas,
        "starting_sequence_number": shard.starting_sequence_number,
    })
}

/// A stream description as a summary followed by a table of its shards.
pub fn stream_text(desc: &v1::StreamDescription) -> String {
    let mut out = format!(
        "stream     {}\nstatus     {}\nretention  {} hours\ncreated    {}\nshards     {}\n",
        desc.stream_name,
        status_name(desc),
        desc.retention_period_hours,
        timestamp(desc.created_at_ms),
        desc.shards.len()
    );
    if !desc.preferred_leader_region.is_empty() {
        out.push_str(&format!(
            "leaders    preferred in region {}\n",
            desc.preferred_leader_region
        ));
    }
    out.push('\n');
    let mut table = Table::new(&[
        "SHARD",
        "LEADER",
        "REPLICAS",
        "STARTING HASH KEY",
        "ENDING HASH KEY",
    ]);
    for shard in &desc.shards {
        let range = shard.hash_key_range.clone().unwrap_or_default();
        table.row(vec![
            shard.shard_id.clone(),
            node_cell(shard.leader),
            node_list(&shard.replicas),
            range.starting_hash_key,
            range.ending_hash_key,
        ]);
    }
    out.push_str(&table.render());
    out
}

/// Streams as a table.
pub fn streams_text(streams: &[v1::StreamDescription]) -> String {
    let mut table = Table::new(&["STREAM", "STATUS", "SHARDS", "RETENTION", "CREATED"]);
    for s in streams {
        table.row(vec![
            s.stream_name.clone(),
            status_name(s).to_string(),
            s.shards.len().to_string(),
            format!("{} h", s.retention_period_hours),
            timestamp(s.created_at_ms),
        ]);
    }
    table.render()
}

/// The cluster's nodes as a table, with a line about the controller and the counts.
pub fn cluster_text(status: &v1::ClusterStatusResponse) -> String {
    let mut table = Table::new(&[
        "NODE",
        "ADDRESS",
        "REGION",
        "ZONE",
        "STATE",
        "LAST ANSWER",
        "LEADERS",
        "REPLICAS",
        "CONTROLLER",
    ]);
    for n in &status.nodes {
        let controller = match (n.controller_voter, n.node_id == status.controller_leader) {
            (_, true) => "leader",
            (true, false) => "voter",
            (false, false) => "-",
        };
        table.row(vec![
            n.node_id.to_string(),
            n.address.clone(),
            n.region.clone(),
            n.zone.clone(),
            match (n.up, n.draining) {
                (true, false) => "up",
                (true, true) => "up,draining",
                (false, false) => "down",
                (false, true) => "down,draining",
            }
            .to_string(),
            // Known only when the controller's leader answered the status call.
            match n.since_last_answer_ms {
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "-".to_string(),
            },
            if n.up {
                n.shard_leaders.to_string()
            } else {
                "?".to_string()
            },
            if n.up {
                n.shard_replicas.to_string()
            } else {
                "?".to_string()
            },
            controller.to_string(),
        ]);
    }
    format!(
        "{}\ncontroller leader: {}; {} streams, {} shards\n",
        table.render(),
        node_cell(status.controller_leader),
        status.streams,
        status.shards
    )
}

/// The cluster's status as JSON.
pub fn cluster_json(status: &v1::ClusterStatusResponse) -> Value {
    json!({
        "controller_leader": status.controller_leader,
        "streams": status.streams,
        "shards": status.shards,
        "nodes": status.nodes.iter().map(|n| json!({
            "node_id": n.node_id,
            "address": n.address,
            "region": n.region,
            "zone": n.zone,
            "up": n.up,
            "shard_leaders": n.shard_leaders,
            "shard_replicas": n.shard_replicas,
            "controller_voter": n.controller_voter,
            "draining": n.draining,
            "since_last_answer_ms": n.since_last_answer_ms,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_and_leave_no_trailing_spaces() {
        let mut t = Table::new(&["A", "LONGER", "LAST"]);
        t.row(vec!["xyz".into(), "1".into(), "end".into()]);
        t.row(vec!["q".into(), "".into(), "".into()]);
        assert_eq!(t.render(), "A    LONGER  LAST\nxyz  1       end\nq\n");
        // Columns are as wide as their cells on a terminal: a CJK character takes two.
        t.row(vec!["日本".into(), "2".into(), "x y".into()]);
        assert_eq!(
            t.render(),
            "A     LONGER  LAST\nxyz   1       end\nq\n日本  2       x y\n"
        );
    }

    #[test]
    fn data_shows_as_text_when_utf8_and_hex_otherwise() {
        assert_eq!(data_cell(b"hello world"), "hello world");
        assert_eq!(data_cell(b"two\nlines\t!"), "two\\nlines\\t!");
        assert_eq!(data_cell(&[0xff, 0x00, 0x10]), "hex:ff0010");
        let text = v1::Record {
            sequence_number: "00000000000000000001".into(),
            approximate_arrival_timestamp_ms: 0,
            data: bytes::Bytes::from_static("héllo".as_bytes()),
            partition_key: "k".into(),
            sequence: 0,
        };
        let j = record_json(ShardId(2), &text);
        assert_eq!(j["data"], "héllo");
        assert!(j.get("data_hex").is_none());
        assert_eq!(j["shard_id"], "shardId-000000000002");
        let binary = v1::Record {
            data: bytes::Bytes::from_static(&[0xc3, 0x28]),
            ..text
        };
        let j = record_json(ShardId(2), &binary);
        assert_eq!(j["data_hex"], "c328");
        assert!(j.get("data").is_none());
    }

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29 00:00:00.000Z");
        assert_eq!(timestamp(1_700_000_000_123), "2023-11-14 22:13:20.123Z");
        assert_eq!(timestamp(4_102_444_799_999), "2099-12-31 23:59:59.999Z");
    }

    #[test]
    fn cluster_table_marks_down_nodes_and_the_controller_leader() {
        let status = v1::ClusterStatusResponse {
            nodes: vec![
                v1::NodeStatus {
                    node_id: 1,
                    address: "127.0.0.1:7101".into(),
                    region: "r1".into(),
                    zone: "a".into(),
                    up: true,
                    shard_leaders: 3,
                    shard_replicas: 8,
                    controller_voter: true,
                    draining: false,
                    since_last_answer_ms: Some(0),
                    leading_groups: vec![1, 2, 3],
                    storage_failure: String::new(),
                    elections: None,
                },
                v1::NodeStatus {
                    node_id: 2,
                    address: "127.0.0.1:7102".into(),
                    up: false,
                    controller_voter: true,
                    draining: true,
                    since_last_answer_ms: Some(12_345),
                    ..Default::default()
                },
            ],
            controller_leader: 1,
            streams: 2,
            shards: 8,
        };
        let text = cluster_text(&status);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[1].contains(" up ") && lines[1].ends_with("leader"),
            "{text}"
        );
        assert!(
            lines[2].contains(" down,draining ")
                && lines[2].contains(" 12.3s ago ")
                && lines[2].ends_with("voter"),
            "{text}"
        );
        assert!(
            text.contains("controller leader: 1; 2 streams, 8 shards"),
            "{text}"
        );
        assert_eq!(cluster_json(&status)["nodes"][1]["up"], false);
        assert_eq!(cluster_json(&status)["nodes"][1]["draining"], true);
        assert_eq!(
            cluster_json(&status)["nodes"][1]["since_last_answer_ms"],
            12_345
        );
    }
}
