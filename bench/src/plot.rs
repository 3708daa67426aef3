//! SVG plots with plotters' SVG backend.
//!
//! The backend writes text as SVG `<text>` elements and lays it out with plotters'
//! built-in size estimate, so building needs no system fonts (the `ttf` feature, which
//! needs fontconfig, is off); whatever displays the SVG draws the text.

use std::path::Path;

use plotters::prelude::*;

use crate::compare::Sweep;
use crate::record::Record;

/// Plot size in pixels.
const SIZE: (u32, u32) = (960, 600);

/// Why a plot could not be drawn.
#[derive(Debug, thiserror::Error)]
#[error("plot {file}: {message}")]
pub struct PlotError {
    /// The file.
    pub file: String,
    /// What went wrong.
    pub message: String,
}

fn err<E: std::fmt::Display>(path: &Path) -> impl Fn(E) -> PlotError + '_ {
    move |e| PlotError { file: path.display().to_string(), message: e.to_string() }
}

/// A stable colour per strategy name.
fn color(name: &str, i: usize) -> RGBColor {
    match name {
        "legacy" => RGBColor(214, 39, 40),
        "dynamic" => RGBColor(31, 119, 180),
        "magazine" => RGBColor(44, 160, 44),
        "memcpy" => RGBColor(90, 90, 90),
        _ => [RGBColor(148, 103, 189), RGBColor(255, 127, 14), RGBColor(140, 86, 75), RGBColor(23, 190, 207)][i % 4],
    }
}

fn size_label(v: f64) -> String {
    if v >= 1024.0 {
        format!("{:.0} KiB", v / 1024.0)
    } else {
        format!("{v:.0} B")
    }
}

fn ns_label(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1} ms", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0} µs", v / 1e3)
    } else if v >= 1e3 {
        format!("{:.1} µs", v / 1e3)
    } else {
        format!("{v:.0} ns")
    }
}

/// Axis labels on a log axis: 1, 10, 100 ... only.
fn decade_label(v: f64, f: fn(f64) -> String) -> String {
    let l = v.log10();
    if (l - l.round()).abs() < 1e-6 {
        f(v).replace(".0 ", " ")
    } else {
        String::new()
    }
}

/// Throughput (GiB/s bounced) against request size, one line per strategy and the bare
/// `memcpy` of the same bytes as the physical limit.
///
/// # Errors
/// [`PlotError`] when the file cannot be drawn.
pub fn throughput_vs_size(path: &Path, sweeps: &[Sweep], platform: &str) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    // x is log2(size): labels fall on powers of two.
    let pts = |s: &Sweep| {
        s.points.iter().map(|p| (f64::from(p.size).log2(), p.bytes_per_sec / f64::from(1u32 << 30))).collect::<Vec<_>>()
    };
    let xs = sweeps.iter().flat_map(|s| s.points.iter().map(|p| f64::from(p.size).log2()));
    let (xmin, xmax) = xs.fold((f64::MAX, 0.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (xmin, xmax) = if xmin > xmax { (6.0, 18.0) } else { (xmin.floor() - 0.3, xmax.ceil() + 0.3) };
    let ymax = sweeps.iter().flat_map(pts).map(|p| p.1).fold(0.1, f64::max) * 1.1;
    let threads = sweeps.first().map_or(1, |s| s.threads);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Bounce throughput vs request size ({platform}, {threads} threads)"), ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(xmin..xmax, 0.0..ymax)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("request size (log scale)")
        .y_desc("GiB/s copied into bounce buffers")
        .x_labels(24)
        .x_label_formatter(&|v| {
            if (v - v.round()).abs() < 1e-6 {
                size_label(2f64.powf(v.round()))
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(&e)?;
    for (i, s) in sweeps.iter().enumerate() {
        let c = color(&s.strategy, i);
        let data = pts(s);
        let label = if s.strategy == "memcpy" { "bare memcpy (limit)".to_string() } else { s.strategy.clone() };
        if s.strategy == "memcpy" {
            chart
                .draw_series(DashedLineSeries::new(data.clone(), 8, 6, c.stroke_width(2)))
                .map_err(&e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(2)));
        } else {
            chart
                .draw_series(LineSeries::new(data.clone(), c.stroke_width(3)))
                .map_err(&e)?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        }
        chart.draw_series(data.iter().map(|&p| Circle::new(p, 4, c.filled()))).map_err(&e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 18))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)
}

/// Map+unmap latency CDF of one workload, one line per strategy (log time axis).
///
/// # Errors
/// [`PlotError`] when the file cannot be drawn.
pub fn latency_cdf(path: &Path, workload: &str, records: &[&Record]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let all = records.iter().flat_map(|r| r.latency_cdf.iter().map(|p| p.0 as f64));
    let (lo, hi) = all.fold((f64::INFINITY, 1.0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let lo = if lo.is_finite() { (lo * 0.8).max(1.0) } else { 1.0 };
    let threads = records.first().map_or(1, |r| r.threads);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Map+unmap latency CDF: {workload} ({threads} threads)"), ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d((lo..hi * 1.25).log_scale(), 0.0..1.0)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("map+unmap latency (log scale)")
        .y_desc("fraction of pairs at or below")
        .x_label_formatter(&|v| decade_label(*v, ns_label))
        .y_label_formatter(&|v| format!("{v:.1}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(&e)?;
    for (i, r) in records.iter().enumerate() {
        let c = color(&r.strategy, i);
        // A step function: each point holds until the next value.
        let mut data = Vec::new();
        let mut prev_q = 0.0;
        for &(v, q) in &r.latency_cdf {
            let v = (v as f64).max(lo);
            data.push((v, prev_q));
            data.push((v, q));
            prev_q = q;
        }
        chart
            .draw_series(LineSeries::new(data, c.stroke_width(3)))
            .map_err(&e)?
            .label(format!(
                "{} (p50 {}, p99 {})",
                r.strategy,
                ns_label(r.map_unmap_ns_p50 as f64),
                ns_label(r.map_unmap_ns_p99 as f64)
            ))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 18))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)
}

/// Shared memory committed over time (solid, thick) and bytes in flight (dashed) of one
/// workload, one colour per strategy.
///
/// # Errors
/// [`PlotError`] when the file cannot be drawn.
pub fn shared_over_time(path: &Path, workload: &str, records: &[&Record]) -> Result<(), PlotError> {
    let e = err(path);
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(&e)?;
    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let tmax = records.iter().flat_map(|r| r.timeline.iter().map(|s| s.t_ms)).fold(1.0, f64::max);
    let ymax = records
        .iter()
        .flat_map(|r| r.timeline.iter().map(|s| mib(s.shared_bytes.max(s.inflight_bytes))))
        .fold(1.0, f64::max)
        * 1.6; // headroom for the legend above the lines
    let threads = records.first().map_or(1, |r| r.threads);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("Shared memory over time: {workload} ({threads} threads)"), ("sans-serif", 26))
        .margin(20)
        .x_label_area_size(55)
        .y_label_area_size(75)
        .build_cartesian_2d(0.0..tmax, 0.0..ymax)
        .map_err(&e)?;
    chart
        .configure_mesh()
        .x_desc("time since the workload started (ms)")
        .y_desc("MiB")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()
        .map_err(&e)?;
    for (i, r) in records.iter().enumerate() {
        let c = color(&r.strategy, i);
        let shared: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_ms, mib(s.shared_bytes))).collect();
        let infl: Vec<(f64, f64)> = r.timeline.iter().map(|s| (s.t_ms, mib(s.inflight_bytes))).collect();
        chart
            .draw_series(LineSeries::new(shared, c.stroke_width(3)))
            .map_err(&e)?
            .label(format!("{} shared (peak {:.1} MiB)", r.strategy, mib(r.shared_bytes_peak)))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 24, y)], c.stroke_width(3)));
        chart
            .draw_series(DashedLineSeries::new(infl, 6, 4, c.stroke_width(2)))
            .map_err(&e)?
            .label(format!("{} in flight (peak {:.1} MiB)", r.strategy, mib(r.inflight_bytes_peak)))
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(0, 0), (8, 0)], c.stroke_width(2))
                    + PathElement::new(vec![(14, 0), (22, 0)], c.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()
        .map_err(&e)?;
    root.present().map_err(&e)
}
