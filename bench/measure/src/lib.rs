//! The measurement half of `riptide bench`, shared with the JetStream peer program in
//! `bench/peers/jetstream-bench`, which depends on this crate by path, so that both systems
//! are driven by the same workload loop and judged by the same code.
//!
//! It must stay free of every riptide crate: it uses only std, tokio, futures, hdrhistogram,
//! serde and serde_json, which both programs depend on anyway.
//!
//! - [`payload`]: the record layout (run id, record id, intended send time, filler).
//! - [`recorder`]: histograms, per-second timeline and the ledger of acknowledged and read-back
//!   records from which the loss rate comes.
//! - [`workload`]: the producer loop, open loop at a target rate or closed loop at a window.
//! - [`report`]: the four measures as a serialisable report, its table and the comparison.
//! - [`plot`]: the report's timeline as an SVG.
//! - [`probe`]: the fsync probe.

pub mod payload;
pub mod plot;
pub mod probe;
pub mod recorder;
pub mod report;
pub mod workload;

/// Parses a duration such as `30s`, `500ms`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (e.g. 30s, 500ms, 2m)"))?;
    let secs = match unit {
        "ms" => value / 1_000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{text}`: unit must be ms, s or m")),
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!("`{text}` is not a duration"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_with_and_without_units() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
    }
}
