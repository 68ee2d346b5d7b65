//! `--plot FILE.svg`: acknowledged and consumed records per second, and p99 put-ack latency,
//! over the run's seconds, as two stacked charts in one hand-written SVG.

use std::fmt::Write;

use super::report::Report;

const WIDTH: f64 = 900.0;
const PANEL: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

/// The SVG document for a report's timeline.
pub fn svg(report: &Report) -> String {
    let points = &report.timeline;
    let t_max = points.last().map_or(1.0, |p| p.t_secs).max(1.0);
    let height = TOP + 2.0 * PANEL + GAP + 50.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="{LEFT}" y="20" font-size="14">{} — {} B records, {} producers ({})</text>"#,
        escape(&report.system),
        report.workload.record_bytes,
        report.workload.producers,
        escape(&report.workload.load)
    );
    let throughput: Vec<(f64, f64)> = points.iter().map(|p| (p.t_secs, p.acked_per_sec)).collect();
    let consumed: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.t_secs, p.consumed_per_sec))
        .collect();
    let p99: Vec<(f64, f64)> = points
        .iter()
        .filter_map(|p| p.put_ack_p99_ms.map(|v| (p.t_secs, v)))
        .collect();
    panel(
        &mut out,
        TOP,
        t_max,
        "records/s",
        &[
            ("acknowledged", "#1f77b4", &throughput),
            ("consumed", "#2ca02c", &consumed),
        ],
    );
    panel(
        &mut out,
        TOP + PANEL + GAP,
        t_max,
        "p99 put-ack ms",
        &[("p99 put-ack latency", "#d62728", &p99)],
    );
    let warmup = report.workload.warmup_secs;
    if warmup > 0.0 {
        let x = LEFT + (WIDTH - LEFT - RIGHT) * (warmup / t_max).min(1.0);
        let _ = writeln!(
            out,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#888" stroke-dasharray="4 4"/><text x="{:.1}" y="{:.1}" fill="#888">end of warm-up</text>"##,
            TOP + 2.0 * PANEL + GAP,
            x + 4.0,
            TOP + 12.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds since start</text>"#,
        LEFT + (WIDTH - LEFT - RIGHT) / 2.0,
        height - 10.0
    );
    out.push_str("</svg>\n");
    out
}

type Series<'a> = (&'a str, &'a str, &'a [(f64, f64)]);

fn panel(out: &mut String, top: f64, t_max: f64, unit: &str, series: &[Series<'_>]) {
    let plot_w = WIDTH - LEFT - RIGHT;
    let y_max = series
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|p| p.1))
        .fold(0.0f64, f64::max);
    let y_max = nice_ceiling(y_max);
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{PANEL}" fill="none" stroke="#444"/>"##
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = top + PANEL - PANEL * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT + plot_w,
            LEFT - 6.0,
            y + 4.0,
            super::report::fmt_num(v)
        );
    }
    for i in 0..=5 {
        let t = t_max * f64::from(i) / 5.0;
        let x = LEFT + plot_w * f64::from(i) / 5.0;
        let _ = writeln!(
            out,
            r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"#,
            top + PANEL + 16.0
        );
    }
    let _ = writeln!(
        out,
        r#"<text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">{}</text>"#,
        top + PANEL / 2.0,
        top + PANEL / 2.0,
        escape(unit)
    );
    for (i, (name, colour, points)) in series.iter().enumerate() {
        let path: Vec<String> = points
            .iter()
            .map(|(t, v)| {
                format!(
                    "{:.1},{:.1}",
                    LEFT + plot_w * (t / t_max).min(1.0),
                    top + PANEL - PANEL * (v / y_max).min(1.0)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{}"/>"#,
            path.join(" ")
        );
        let _ = writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" fill="{colour}">{}</text>"#,
            LEFT + 10.0 + 170.0 * i as f64,
            top - 6.0,
            escape(name)
        );
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `x` (1 for nothing).
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let power = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|v| *v >= x)
        .unwrap_or(10.0 * power)
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::super::report::{Report, TimelinePoint};
    use super::*;

    #[test]
    fn the_plot_has_a_line_per_series_and_scales_to_nice_numbers() {
        assert_eq!(nice_ceiling(730.0), 1_000.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        let report = Report {
            system: "a<b".into(),
            timeline: (1..=5)
                .map(|t| TimelinePoint {
                    t_secs: f64::from(t),
                    acked_per_sec: 100.0,
                    consumed_per_sec: 90.0,
                    put_ack_p99_ms: Some(3.0),
                    ..TimelinePoint::default()
                })
                .collect(),
            ..Report::default()
        };
        let svg = svg(&report);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        assert!(svg.contains("a&lt;b"));
    }
}
