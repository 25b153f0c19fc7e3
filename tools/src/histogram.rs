//! Latency reporting: the percentile table, the `.hgrm` percentile-distribution file
//! (the format HdrHistogram's own tools write and plot), and a latency-by-percentile
//! plot on a log scale, the way HdrHistogram's plotter shows it.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;

/// Microseconds per millisecond: `.hgrm` files conventionally hold milliseconds.
const OUTPUT_SCALING: f64 = 1_000.0;

/// The standard percentile-distribution text of `histogram` (values recorded in µs,
/// written in ms), with `ticks` reporting ticks per half distance (HdrHistogram uses 5).
pub fn hgrm(histogram: &Histogram<u64>, ticks: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    // TotalCount is cumulative: every value recorded at or below this row's value.
    let mut total = 0u64;
    for value in histogram.iter_quantiles(ticks) {
        let quantile = value.quantile_iterated_to();
        let scaled = value.value_iterated_to() as f64 / OUTPUT_SCALING;
        total += value.count_since_last_iteration();
        if quantile < 1.0 {
            let _ =
                writeln!(out, "{scaled:>12.3} {quantile:>2.12} {total:>10} {:>14.2}", 1.0 / (1.0 - quantile));
        } else {
            let _ = writeln!(out, "{scaled:>12.3} {quantile:>2.12} {total:>10}");
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
        histogram.mean() / OUTPUT_SCALING,
        histogram.stdev() / OUTPUT_SCALING
    );
    let _ = writeln!(
        out,
        "#[Max     = {:>12.3}, Total count    = {:>12}]",
        histogram.max() as f64 / OUTPUT_SCALING,
        histogram.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        histogram.buckets(),
        histogram.distinct_values()
    );
    out
}

/// Parses a `.hgrm` file back into (value in ms, percentile, cumulative count) rows.
pub fn parse_hgrm(text: &str) -> anyhow::Result<Vec<(f64, f64, u64)>> {
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let value: f64 = fields.next().context("value")?.parse().context("value")?;
        let percentile: f64 = fields.next().context("percentile")?.parse().context("percentile")?;
        let count: u64 = fields.next().context("count")?.parse().context("count")?;
        rows.push((value, percentile, count));
    }
    if rows.is_empty() {
        bail!("no percentile rows");
    }
    Ok(rows)
}

/// The table printed after a run, values in µs.
pub fn table(histogram: &Histogram<u64>) -> String {
    let mut out = String::new();
    for (label, quantile) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("p99.99", 0.9999)]
    {
        let _ = writeln!(out, "  {label:<7} {:>10} µs", histogram.value_at_quantile(quantile));
    }
    let _ = writeln!(out, "  {:<7} {:>10} µs", "max", histogram.max());
    out
}

/// Writes the latency-by-percentile plot: x is 1/(1-percentile) on a log scale (so
/// p50, p90, p99, p99.9 are evenly spaced), y is latency in µs. SVG only: PNG would
/// need system fonts this tool does not assume are installed.
pub fn plot(histogram: &Histogram<u64>, path: &Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => {}
        Some("png") => {
            bail!("{}: PNG plots need system fonts; write .svg (any browser shows it)", path.display())
        }
        _ => bail!("{}: the plot file must end in .svg", path.display()),
    }
    let points: Vec<(f64, f64)> = histogram
        .iter_quantiles(5)
        .filter(|v| v.quantile_iterated_to() < 1.0)
        .map(|v| (1.0 / (1.0 - v.quantile_iterated_to()), v.value_iterated_to() as f64))
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let y_max = (histogram.max() as f64 * 1.1).max(1.0);
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..y_max)?;
    chart
        .configure_mesh()
        .x_desc("percentile (1/(1-p), log scale: 10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("{:.3}%", 100.0 * (1.0 - 1.0 / x)))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()?;
    chart.draw_series(LineSeries::new(points, &BLUE))?;
    root.present().with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
