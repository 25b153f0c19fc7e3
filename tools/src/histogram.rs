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
        sub_buckets(histogram.sigfig())
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
/// p50, p90, p99, p99.9 are evenly spaced), y is latency in µs. `.svg` or `.png`;
/// text is set in DejaVu Sans, built in, so no system fonts are needed.
pub fn plot(histogram: &Histogram<u64>, path: &Path, title: &str) -> anyhow::Result<()> {
    plot_curves(&[Curve::of(histogram, "")], path, title)
}

/// One latency-by-percentile line: points of (1/(1-p), latency µs), and its label.
#[derive(Debug, Clone)]
pub struct Curve {
    /// Shown in the legend (empty: no legend).
    pub label: String,
    /// (1/(1-percentile), latency in µs), by increasing percentile.
    pub points: Vec<(f64, f64)>,
}

impl Curve {
    /// The curve of a recorded histogram.
    pub fn of(histogram: &Histogram<u64>, label: &str) -> Curve {
        let points = histogram
            .iter_quantiles(5)
            .filter(|v| v.quantile_iterated_to() < 1.0)
            .map(|v| (1.0 / (1.0 - v.quantile_iterated_to()), v.value_iterated_to() as f64))
            .collect();
        Curve { label: label.to_string(), points }
    }

    /// The curve in a `.hgrm` file (HdrHistogram's percentile output, as `hgrm` writes
    /// it and other HdrHistogram tools do: values scaled by 1000).
    pub fn from_hgrm(text: &str, label: &str) -> anyhow::Result<Curve> {
        let points = parse_hgrm(text)
            .context("not an .hgrm file")?
            .into_iter()
            .filter(|&(_, percentile, _)| percentile < 1.0)
            .map(|(value, percentile, _)| (1.0 / (1.0 - percentile), value * OUTPUT_SCALING))
            .collect();
        Ok(Curve { label: label.to_string(), points })
    }
}

/// Draws one or more curves in one plot (`.svg` or `.png`), the way runs are compared.
pub fn plot_curves(curves: &[Curve], path: &Path, title: &str) -> anyhow::Result<()> {
    use plotters::prelude::*;
    register_font()?;
    const SIZE: (u32, u32) = (960, 540);
    match path.extension().and_then(|e| e.to_str()) {
        Some("svg") => draw(SVGBackend::new(path, SIZE).into_drawing_area(), curves, title)?,
        Some("png") => draw(BitMapBackend::new(path, SIZE).into_drawing_area(), curves, title)?,
        _ => bail!("{}: the plot file must end in .svg or .png", path.display()),
    }
    .with_context(|| format!("writing {}", path.display()))
}

/// Makes DejaVu Sans the "sans-serif" the plots use (once per process).
fn register_font() -> anyhow::Result<()> {
    static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let registered = *REGISTERED.get_or_init(|| {
        plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            dejavu::sans::regular(),
        )
        .is_ok()
    });
    anyhow::ensure!(registered, "the built-in font could not be loaded");
    Ok(())
}

/// Draws the plot on any backend; the outer result is drawing, the inner writing.
fn draw<DB>(
    root: plotters::drawing::DrawingArea<DB, plotters::coord::Shift>,
    curves: &[Curve],
    title: &str,
) -> anyhow::Result<anyhow::Result<()>>
where
    DB: plotters::prelude::DrawingBackend,
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let all = || curves.iter().flat_map(|c| c.points.iter());
    let x_max = all().map(|p| p.0).fold(10.0, f64::max) * 1.5;
    let y_max = (all().map(|p| p.1).fold(0.0, f64::max) * 1.1).max(1.0);
    let failed = |error: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing the plot: {error:?}");
    root.fill(&WHITE).map_err(failed)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d((1f64..x_max).log_scale(), 0f64..y_max)
        .map_err(failed)?;
    chart
        .configure_mesh()
        .x_desc("percentile (1/(1-p), log scale: 10 = p90, 100 = p99, 1000 = p99.9)")
        .y_desc("latency (µs)")
        .x_label_formatter(&|x| format!("{:.3}%", 100.0 * (1.0 - 1.0 / x)))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .draw()
        .map_err(failed)?;
    let colours = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (index, curve) in curves.iter().enumerate() {
        let colour = colours[index % colours.len()];
        let series =
            chart.draw_series(LineSeries::new(curve.points.iter().copied(), colour)).map_err(failed)?;
        if !curve.label.is_empty() {
            series
                .label(curve.label.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
        }
    }
    if curves.iter().any(|c| !c.label.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(failed)?;
    }
    Ok(root.present().map_err(|error| anyhow::anyhow!("{error:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        for n in 1..10_000u64 {
            histogram.record(100 + n % 500 + (n % 1000 == 0) as u64 * 5_000).unwrap();
        }
        histogram
    }

    #[test]
    fn png_plots_are_drawn_with_the_built_in_font() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latency.png");
        plot(&sample(), &path, "latency by percentile").unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
        assert_eq!(&bytes[12..16], b"IHDR");
        let width = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
        let height = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
        assert_eq!((width, height), (960, 540));
        // Axes, labels and a curve compress to more than a blank canvas does.
        assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    }

    #[test]
    fn hgrm_files_read_back_and_overlay() {
        let written = hgrm(&sample(), 5);
        let curve = Curve::from_hgrm(&written, "a").unwrap();
        let direct = Curve::of(&sample(), "a");
        assert_eq!(curve.points.len(), direct.points.len());
        for (read, recorded) in curve.points.iter().zip(&direct.points) {
            assert!((read.1 - recorded.1).abs() < 1.0, "{read:?} vs {recorded:?}");
        }
        assert!(Curve::from_hgrm("not a histogram", "x").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cmp.svg");
        plot_curves(&[curve, Curve { label: "b".into(), ..direct }], &path, "compare").unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .filter_map(|t| t.split_once('>')?.1.split('<').next())
            .map(str::trim)
            .collect();
        assert!(texts.contains(&"a") && texts.contains(&"b"), "both curves are in the legend: {texts:?}");
    }

    #[test]
    fn svg_plots_still_work_and_other_extensions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let svg = dir.path().join("latency.svg");
        plot(&sample(), &svg, "latency").unwrap();
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        let error = plot(&sample(), &dir.path().join("latency.jpg"), "latency").unwrap_err();
        assert!(error.to_string().contains(".svg or .png"), "{error}");
    }
}

/// HdrHistogram's sub-bucket count for `sigfig` significant digits, as its own
/// `.hgrm` footer reports it: the power of two that covers 2 × 10^sigfig.
fn sub_buckets(sigfig: u8) -> u64 {
    let single_unit_resolution = 2 * 10u64.pow(u32::from(sigfig));
    single_unit_resolution.next_power_of_two()
}

/// `12345` as `12,345`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

#[cfg(test)]
mod footer_tests {
    use super::*;

    #[test]
    fn sub_buckets_and_thousands_read_as_people_expect() {
        assert_eq!(sub_buckets(3), 2048, "HdrHistogram's count for 3 significant digits");
        assert_eq!(sub_buckets(2), 256);
        assert_eq!(thousands(10_000), "10,000");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
