//! `--plot FILE.svg`: acknowledged and consumed records per second, and p99 put-ack latency,
//! over the run's seconds, as two stacked charts in one SVG, drawn with plotters (its SVG
//! backend and line series only: no fonts, no bitmaps).

use plotters::coord::Shift;
use plotters::prelude::*;

use super::report::{Report, fmt_num};

const WIDTH: u32 = 900;
const HEIGHT: u32 = 670;
const ACKED: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const CONSUMED: RGBColor = RGBColor(0x2c, 0xa0, 0x2c);
const P99: RGBColor = RGBColor(0xd6, 0x27, 0x28);
const WARMUP: RGBColor = RGBColor(0x88, 0x88, 0x88);

/// Drawing the plot failed (plotters' error, as text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotError(String);

impl std::fmt::Display for PlotError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "drawing the plot: {}", self.0)
    }
}

impl std::error::Error for PlotError {}

/// The SVG document for a report's timeline.
pub fn svg(report: &Report) -> Result<String, PlotError> {
    let mut out = String::new();
    draw(report, &mut out).map_err(|e| PlotError(e.to_string()))?;
    Ok(out)
}

type Series<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

fn draw(report: &Report, out: &mut String) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    let points = &report.timeline;
    let t_max = points.last().map_or(1.0, |p| p.t_secs).max(1.0);
    let root = SVGBackend::with_string(out, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = format!(
        "{} — {} B records, {} producers ({})",
        report.system,
        report.workload.record_bytes,
        report.workload.producers,
        report.workload.load
    );
    let root = root.titled(&title, ("sans-serif", 18))?;
    let (upper, lower) = root.split_vertically(HEIGHT / 2 - 20);
    let warmup = report.workload.warmup_secs;
    panel(
        &upper,
        t_max,
        warmup,
        "records/s",
        vec![
            (
                "acknowledged",
                ACKED,
                points.iter().map(|p| (p.t_secs, p.acked_per_sec)).collect(),
            ),
            (
                "consumed",
                CONSUMED,
                points
                    .iter()
                    .map(|p| (p.t_secs, p.consumed_per_sec))
                    .collect(),
            ),
        ],
    )?;
    panel(
        &lower,
        t_max,
        warmup,
        "p99 put-ack ms",
        vec![(
            "p99 put-ack latency",
            P99,
            points
                .iter()
                .filter_map(|p| p.put_ack_p99_ms.map(|v| (p.t_secs, v)))
                .collect(),
        )],
    )?;
    root.present()?;
    Ok(())
}

/// One chart: `series` over 0..=t_max seconds, the y axis up to a round number above the
/// highest point, and a dashed line where the warm-up ended.
fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    t_max: f64,
    warmup: f64,
    unit: &str,
    series: Vec<Series<'_>>,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let y_max = nice_ceiling(
        series
            .iter()
            .flat_map(|(_, _, s)| s.iter().map(|p| p.1))
            .fold(0.0f64, f64::max),
    );
    let mut chart = ChartBuilder::on(area)
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart
        .configure_mesh()
        .x_labels(6)
        .y_labels(5)
        .x_label_formatter(&|t| format!("{t:.0}"))
        .y_label_formatter(&|v| fmt_num(*v))
        .x_desc("seconds since start")
        .y_desc(unit)
        .draw()?;
    for (name, colour, points) in series {
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    if warmup > 0.0 {
        let x = warmup.min(t_max);
        chart
            .draw_series(DashedLineSeries::new(
                [(x, 0.0), (x, y_max)],
                4,
                4,
                WARMUP.into(),
            ))?
            .label("end of warm-up")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], WARMUP));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::super::report::{Report, TimelinePoint, Workload};
    use super::*;

    /// The `points` attribute of the polyline drawn in `colour` with the series' width.
    fn series_points(svg: &str, colour: RGBColor) -> Vec<(f64, f64)> {
        let stroke = format!(
            r##"stroke="#{:02X}{:02X}{:02X}""##,
            colour.0, colour.1, colour.2
        );
        let line = svg
            .lines()
            .find(|l| {
                l.contains("<polyline") && l.contains(&stroke) && l.contains(r#"stroke-width="2""#)
            })
            .unwrap_or_else(|| panic!("no polyline with {stroke} in:\n{svg}"));
        let start = line.find("points=\"").expect("points") + "points=\"".len();
        let end = start + line[start..].find('"').expect("end of points");
        line[start..end]
            .split_whitespace()
            .map(|xy| {
                let (x, y) = xy.split_once(',').expect("x,y");
                (x.parse().expect("x"), y.parse().expect("y"))
            })
            .collect()
    }

    #[test]
    fn the_plot_has_a_line_per_series_and_scales_to_nice_numbers() {
        assert_eq!(nice_ceiling(730.0), 1_000.0);
        assert_eq!(nice_ceiling(120.0), 200.0);
        assert_eq!(nice_ceiling(0.0), 1.0);
        let report = Report {
            system: "a<b".into(),
            workload: Workload {
                warmup_secs: 2.0,
                ..Workload::default()
            },
            timeline: (1..=5)
                .map(|t| TimelinePoint {
                    t_secs: f64::from(t),
                    acked_per_sec: 100.0 * f64::from(t),
                    consumed_per_sec: 90.0,
                    // No latency in the first second.
                    put_ack_p99_ms: (t > 1).then_some(3.0),
                    ..TimelinePoint::default()
                })
                .collect(),
            ..Report::default()
        };
        let svg = svg(&report).expect("plot");
        assert!(svg.starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // A line per series, with a point per second that has a value.
        assert_eq!(series_points(&svg, ACKED).len(), 5);
        assert_eq!(series_points(&svg, CONSUMED).len(), 5);
        assert_eq!(series_points(&svg, P99).len(), 4);
        // Acknowledged records rise from 100/s to 500/s: on screen, y falls as x grows.
        let acked = series_points(&svg, ACKED);
        assert!(acked.windows(2).all(|w| w[1].0 > w[0].0 && w[1].1 < w[0].1));
        // The consumed rate is flat.
        let consumed = series_points(&svg, CONSUMED);
        assert!(consumed.iter().all(|p| p.1 == consumed[0].1));
        for text in [
            "acknowledged",
            "consumed",
            "p99 put-ack latency",
            "records/s",
            "p99 put-ack ms",
            "seconds since start",
            "end of warm-up",
        ] {
            assert!(svg.contains(text), "no {text:?} in:\n{svg}");
        }
        // The rates' axis ends at 500, the round number at or above the highest point, and
        // the latencies' axis at 5.
        let label = |text: &str| svg.lines().any(|l| l.trim() == text);
        assert!(label("200") && label("400") && !label("600"), "{svg}");
        assert!(label("2.0") && label("4.0") && !label("6.0"), "{svg}");
        // Text from the report is escaped.
        assert!(svg.contains("a&lt;b"));
        assert!(!svg.contains("a<b"));
    }
}
