//! The benchmark's chart: the distribution of batch durations (box plots) and the CPU time per
//! message of every variant on every backend, as one SVG drawn with `plotters`.

use std::path::Path;

use plotters::prelude::*;

/// One row of the chart.
pub struct Series {
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

fn draw_into(path: &Path, series: &[Series]) -> Result<(), Box<dyn std::error::Error>> {
    let row_height = 34;
    let panel = 90 + row_height * series.len() as u32;
    let root = SVGBackend::new(path, (1100, 2 * panel)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(panel);
    let labels: Vec<&str> = series.iter().map(|s| s.label.as_str()).collect();

    let max_ms = series.iter().flat_map(|s| s.batch_ms.iter().copied()).fold(1.0f64, f64::max) as f32;
    let mut durations = ChartBuilder::on(&top)
        .caption("Batch duration, 10 messages (ms): box = quartiles, whiskers = min and max", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(420)
        .build_cartesian_2d(0f32..max_ms * 1.05, labels.as_slice().into_segmented())?;
    durations.configure_mesh().disable_y_mesh().y_label_style(("sans-serif", 13)).draw()?;
    durations.draw_series(series.iter().zip(&labels).map(|(s, label)| {
        Boxplot::new_horizontal(SegmentValue::CenterOf(label), &Quartiles::new(&s.batch_ms)).width(16)
    }))?;

    let max_cpu = series.iter().map(|s| s.cpu_ms_per_message).fold(0.1f64, f64::max);
    let mut cpu = ChartBuilder::on(&bottom)
        .caption("CPU time per message (ms)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(30)
        .y_label_area_size(420)
        .build_cartesian_2d(0f64..max_cpu * 1.1, labels.as_slice().into_segmented())?;
    cpu.configure_mesh().disable_y_mesh().y_label_style(("sans-serif", 13)).draw()?;
    cpu.draw_series(
        Histogram::horizontal(&cpu)
            .style(BLUE.mix(0.6).filled())
            .margin(8)
            .data(series.iter().zip(&labels).map(|(s, label)| (label, s.cpu_ms_per_message))),
    )?;
    root.present()?;
    Ok(())
}
