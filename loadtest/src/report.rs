//! Percentiles from HdrHistograms, per-scenario JSON results, and the combined
//! `report.md` + `report.json` of a run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

/// Longest latency a histogram holds, microseconds (60 s); longer ones are clamped.
const MAX_MICROS: u64 = 60_000_000;
/// Significant decimal digits kept by the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;
/// Microseconds per millisecond.
const MICROS_PER_MS: f64 = 1_000.0;

/// An empty histogram of microseconds, 1 µs to 60 s at 3 significant digits.
pub fn micros_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, SIGNIFICANT_DIGITS)
        .expect("constant histogram bounds are valid")
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest value.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Percentiles of a histogram of microseconds, in milliseconds.
    pub fn from_micros(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / MICROS_PER_MS;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / MICROS_PER_MS,
        }
    }
}

/// Writes `value` as pretty JSON to `path`.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Reads the scenario results (`*.json` written with `--json`), and writes
/// `report.json` (`{"meta": …, "results": […]}`) and `report.md` into `out`.
pub fn combine(out: &Path, meta: Value, inputs: &[impl AsRef<Path>]) -> anyhow::Result<()> {
    let results = inputs
        .iter()
        .map(|p| {
            let p = p.as_ref();
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str::<Value>(&text)
                .with_context(|| format!("{} is not JSON", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_json(
        &out.join("report.json"),
        &serde_json::json!({"meta": meta, "results": results}),
    )?;
    let markdown = markdown(&meta, &results);
    std::fs::write(out.join("report.md"), markdown)
        .with_context(|| format!("writing {}/report.md", out.display()))
}

/// `value[path]` as a number formatted with `decimals`, or `-`.
fn num(value: &Value, path: &[&str], decimals: usize) -> String {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

/// Bytes as MiB with one decimal.
fn mib(value: &Value, path: &[&str]) -> String {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .map_or_else(|| "-".into(), |b| format!("{:.1}", b / (1024.0 * 1024.0)))
}

/// Appends a `## title` section with a right-aligned table, unless `rows` is empty.
fn table(md: &mut String, title: &str, headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "## {title}\n");
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let _ = writeln!(md, "|{}", "---:|".repeat(headers.len()));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
}

/// Failed connects: `0`, or the count per class.
fn failures(result: &Value) -> String {
    match result["failures"]["counts"].as_object() {
        Some(counts) if !counts.is_empty() => counts
            .iter()
            .map(|(class, n)| format!("{class}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "0".into(),
    }
}

/// The results of one scenario kind.
fn of<'a>(results: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> {
    results.iter().filter(move |r| r["scenario"] == kind)
}

/// The Markdown report: one table per scenario kind.
fn markdown(meta: &Value, results: &[Value]) -> String {
    let mut md = String::from("# herald load test\n\n");
    if let Some(meta) = meta.as_object() {
        for (key, value) in meta {
            let value = value
                .as_str()
                .map_or_else(|| value.to_string(), str::to_owned);
            let _ = writeln!(md, "- **{key}**: {value}");
        }
        md.push('\n');
    }
    let idle: Vec<Vec<String>> = of(results, "idle")
        .map(|r| {
            vec![
                num(r, &["sessions_requested"], 0),
                num(r, &["sessions_connected"], 0),
                num(r, &["connect_rate_per_sec"], 0),
                num(r, &["server_cpu_percent_connecting"], 0),
                num(r, &["generator_cpu_percent_connecting"], 0),
                mib(r, &["server", "rss_before_bytes"]),
                mib(r, &["server", "rss_after_bytes"]),
                num(r, &["bytes_per_session"], 0),
                failures(r),
            ]
        })
        .collect();
    table(
        &mut md,
        "Idle sessions",
        &[
            "sessions",
            "connected",
            "connect/s",
            "server CPU connecting %",
            "generator CPU %",
            "RSS before MiB",
            "RSS after MiB",
            "bytes/session",
            "failures",
        ],
        &idle,
    );
    let latency: Vec<Vec<String>> = of(results, "latency")
        .map(|r| {
            vec![
                num(r, &["sessions"], 0),
                num(r, &["aliases"], 0),
                num(r, &["eml_bytes"], 0),
                num(r, &["target_rate"], 0),
                num(r, &["achieved_rate"], 0),
                num(r, &["deliveries_per_sec"], 0),
                num(r, &["latency_ms", "p50"], 2),
                num(r, &["latency_ms", "p90"], 2),
                num(r, &["latency_ms", "p99"], 2),
                num(r, &["latency_ms", "p999"], 2),
                num(r, &["latency_ms", "max"], 2),
                num(r, &["lost"], 0),
                num(r, &["duplicated"], 0),
                num(r, &["reordered"], 0),
                num(r, &["server", "cpu_percent"], 0),
                mib(r, &["server", "rss_after_bytes"]),
                num(r, &["generator_cpu_percent"], 0),
            ]
        })
        .collect();
    table(
        &mut md,
        "Publish → receipt latency",
        &[
            "sessions",
            "aliases",
            "eml B",
            "rate target",
            "rate achieved",
            "deliveries/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost",
            "dup",
            "reordered",
            "server CPU %",
            "server RSS MiB",
            "generator CPU %",
        ],
        &latency,
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = micros_histogram();
        for us in 1..=1000 {
            h.record(us * 1000).unwrap();
        }
        let p = Percentiles::from_micros(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 500.0).abs() < 1.0, "{p:?}");
        assert!((p.max - 1000.0).abs() < 1.0, "{p:?}");
    }

    #[test]
    fn combine_writes_both_reports() {
        let dir =
            std::env::temp_dir().join(format!("herald-loadtest-report-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let input = dir.join("idle.json");
        std::fs::write(&input, r#"{"scenario":"idle","sessions_requested":10,"sessions_connected":10,"server":{"rss_before_bytes":1048576},"failures":{"counts":{}}}"#).unwrap();
        combine(&dir, serde_json::json!({"date": "today"}), &[&input]).unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("## Idle sessions"), "{md}");
        assert!(md.contains("| 10 | 10 |"), "{md}");
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["results"][0]["scenario"], "idle");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
