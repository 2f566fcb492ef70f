//! The benchmark's chart: the distribution of batch durations (box plots) and the CPU time per
//! message of every variant on every backend, as one SVG drawn with `plotters`.

use std::path::Path;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, SegmentedCoord, ValueFormatter};
use plotters::coord::types::RangedSlice;
use plotters::prelude::*;

/// One row of the chart.
pub struct Series {
    /// Whether it is the baseline (drawn in another colour).
    pub baseline: bool,
    /// Backend and variant.
    pub label: String,
    /// Every batch's duration (ms).
    pub batch_ms: Vec<f64>,
    /// CPU time per message (ms).
    pub cpu_ms_per_message: f64,
}

/// Draws `series` into an SVG at `path`.
pub fn draw(path: &Path, series: &[Series]) -> Result<(), String> {
    draw_into(path, series).map_err(|e| format!("chart {}: {e}", path.display()))
}

/// This project's colour, and the baseline's.
const THIS: RGBColor = RGBColor(0x1f, 0x77, 0xb4);
const BASELINE: RGBColor = RGBColor(0xff, 0x7f, 0x0e);

fn colour(baseline: bool) -> RGBColor {
    if baseline { BASELINE } else { THIS }
}

/// A row's name as written, not as `Debug` quotes it.
fn label(value: &SegmentValue<&&str>) -> String {
    match value {
        SegmentValue::Exact(label) | SegmentValue::CenterOf(label) => (**label).to_owned(),
        SegmentValue::Last => String::new(),
    }
}

/// A panel: `X` across, one row per label.
type Panel<'a, 'b, X> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<X, SegmentedCoord<RangedSlice<'a, &'a str>>>>;

/// One panel: a caption, `x` across, a row per label, the rows named as written.
fn panel<'a, 'b, X>(
    area: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    x: X,
    labels: &'a [&'a str],
) -> Result<Panel<'a, 'b, X::CoordDescType>, String>
where
    X: AsRangedCoord,
    X::CoordDescType: ValueFormatter<X::Value>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(420)
        .build_cartesian_2d(x, labels.into_segmented())
        .map_err(|e| e.to_string())?;
    let mut mesh = chart.configure_mesh();
    mesh.disable_y_mesh().y_label_style(("sans-serif", 13)).y_label_formatter(&label);
    mesh.draw().map_err(|e| e.to_string())?;
    Ok(chart)
}

fn draw_into(path: &Path, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let row_height = 34;
    let panel_height = 90 + row_height * series.len() as u32;
    let root = SVGBackend::new(path, (1100, 2 * panel_height)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(panel_height);
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();

    let max_ms = series.iter().flat_map(|s| s.batch_ms.iter().copied()).fold(1.0f64, f64::max) as f32;
    let caption = "Batch duration, 10 messages (ms): box = quartiles, whiskers = min and max";
    let mut durations = panel(&top, caption, 0f32..max_ms * 1.05, &labels)?;
    durations.draw_series(series.iter().zip(&labels).map(|(s, label)| {
        Boxplot::new_horizontal(SegmentValue::CenterOf(label), &Quartiles::new(&s.batch_ms))
            .width(16)
            .style(colour(s.baseline))
    }))?;

    let max_cpu = series.iter().map(|s| s.cpu_ms_per_message).fold(0.1f64, f64::max);
    let mut cpu = panel(&bottom, "CPU time per message (ms)", 0f64..max_cpu * 1.1, &labels)?;
    for baseline in [false, true] {
        let bars = series.iter().zip(&labels).filter(|(s, _)| s.baseline == baseline);
        cpu.draw_series(
            Histogram::horizontal(&cpu)
                .style(colour(baseline).mix(0.7).filled())
                .margin(8)
                .data(bars.map(|(s, label)| (label, s.cpu_ms_per_message))),
        )?;
    }
    root.present()?;
    Ok(())
}
