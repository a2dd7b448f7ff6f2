//! SVG line charts of the report (plotters, SVG backend, no font files: text is left to
//! the viewer).

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// `(x, y)` points, in drawing order.
    pub points: Vec<(f64, f64)>,
}

/// Axis of a chart.
#[derive(Debug, Clone, Copy)]
pub struct Axis<'a> {
    /// Label.
    pub label: &'a str,
    /// Logarithmic (base 10): values must be > 0.
    pub log: bool,
}

/// Width × height of every chart, pixels.
const SIZE: (u32, u32) = (900, 540);

fn transform(value: f64, log: bool) -> Option<f64> {
    if log {
        (value > 0.0).then(|| value.log10())
    } else {
        value.is_finite().then_some(value)
    }
}

fn tick(value: f64, log: bool) -> String {
    let v = if log { 10f64.powf(value) } else { value };
    if v.abs() >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v.abs() >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 0.1 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// Draws `series` as lines with markers into an SVG file at `path`.
pub fn line_chart(
    path: &Path,
    title: &str,
    x: Axis<'_>,
    y: Axis<'_>,
    series: &[Series],
) -> anyhow::Result<()> {
    let lines: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|s| {
            let points = s
                .points
                .iter()
                .filter_map(|&(px, py)| Some((transform(px, x.log)?, transform(py, y.log)?)))
                .collect();
            (s.name.clone(), points)
        })
        .collect();
    let all = lines.iter().flat_map(|(_, p)| p.iter().copied());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (px, py) in all {
        x0 = x0.min(px);
        x1 = x1.max(px);
        y0 = y0.min(py);
        y1 = y1.max(py);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if !y.log {
        y0 = y0.min(0.0);
    }
    let pad = |lo: f64, hi: f64| {
        let span = (hi - lo).abs().max(1e-9);
        (lo - span * 0.03, hi + span * 0.05)
    };
    let (x0, x1) = pad(x0, x1);
    let (y0, y1) = pad(y0, y1);

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| anyhow!("drawing {}: {e}", path.display());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(|e| err(&e))?;
    let x_fmt = |v: &f64| tick(*v, x.log);
    let y_fmt = |v: &f64| tick(*v, y.log);
    chart
        .configure_mesh()
        .x_desc(x.label)
        .y_desc(y.label)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .draw()
        .map_err(|e| err(&e))?;
    for (i, (name, points)) in lines.into_iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(name)
            .legend(move |(lx, ly)| {
                PathElement::new(vec![(lx, ly), (lx + 20, ly)], color.stroke_width(2))
            });
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| err(&e))?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_an_svg_with_log_axes() {
        let path = std::env::temp_dir().join(format!("herald-plot-{}.svg", std::process::id()));
        line_chart(
            &path,
            "t",
            Axis {
                label: "ms",
                log: true,
            },
            Axis {
                label: "q",
                log: false,
            },
            &[Series {
                name: "a".into(),
                points: vec![(0.1, 0.0), (1.0, 0.5), (100.0, 1.0)],
            }],
        )
        .unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
        std::fs::remove_file(&path).unwrap();
    }
}
