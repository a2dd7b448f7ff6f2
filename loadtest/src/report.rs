//! Percentiles from HdrHistograms, per-scenario JSON results, and the combined
//! `report.md` + `report.json` of a run.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;

use crate::plots;

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

/// Quantiles at which [`cdf_ms`] reads a histogram.
const CDF_QUANTILES: [f64; 27] = [
    0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8,
    0.85, 0.9, 0.925, 0.95, 0.975, 0.99, 0.995, 0.999, 0.9999, 1.0,
];

/// `[milliseconds, quantile]` points of a histogram of microseconds (empty if it is).
pub fn cdf_ms(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&q| [h.value_at_quantile(q) as f64 / MICROS_PER_MS, q])
        .collect()
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

/// Reads scenario results (`*.json` written with `--json`: one result or an array of
/// them) and writes the report into `out` (see [`bench_report`]).
pub fn combine(out: &Path, meta: Value, inputs: &[impl AsRef<Path>]) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for p in inputs {
        let p = p.as_ref();
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        match serde_json::from_str::<Value>(&text)
            .with_context(|| format!("{} is not JSON", p.display()))?
        {
            Value::Array(items) => results.extend(items),
            one => results.push(one),
        }
    }
    bench_report(out, meta, &results)
}

/// Writes `report.json` (`{"meta": …, "results": […]}`), `report.md` (medians over runs,
/// herald/peer ratios, every run and step) and the plots (`latency-cdf.svg`,
/// `throughput.svg`, `rss.svg`) into `out`.
pub fn bench_report(out: &Path, meta: Value, results: &[Value]) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_json(
        &out.join("report.json"),
        &serde_json::json!({"meta": meta, "results": results}),
    )?;
    let plots = write_plots(out, results)?;
    let markdown = markdown(&meta, results, &plots);
    std::fs::write(out.join("report.md"), markdown)
        .with_context(|| format!("writing {}/report.md", out.display()))
}

/// `value[path]` (`null` when absent).
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    let mut v = value;
    for key in path {
        v = &v[*key];
    }
    v
}

/// `value[path]` as a number formatted with `decimals`, or `-`.
fn num(value: &Value, path: &[&str], decimals: usize) -> String {
    fmt(at(value, path).as_f64(), decimals)
}

fn fmt(x: Option<f64>, decimals: usize) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.decimals$}"))
}

/// Bytes as MiB with one decimal.
fn mib(value: &Value, path: &[&str]) -> String {
    at(value, path)
        .as_f64()
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

/// Systems in the results, herald first, then in order of appearance.
fn systems(results: &[Value]) -> Vec<String> {
    let mut systems: Vec<String> = Vec::new();
    for r in results {
        let s = r["system"].as_str().unwrap_or("herald").to_owned();
        if !systems.contains(&s) {
            systems.push(s);
        }
    }
    systems.sort_by_key(|s| s != "herald");
    systems
}

/// Median of the values present (`None` when there are none).
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The step at `index_key` (`max_sustainable_step`, `half_step`) of a ramp result.
fn step_at<'a>(result: &'a Value, index_key: &str) -> Option<&'a Value> {
    let index = result[index_key].as_u64()? as usize;
    result["steps"].get(index)
}

/// One summary line: a metric per system, median over runs.
struct Metric {
    name: &'static str,
    scenario: &'static str,
    decimals: usize,
    /// The value of one run's result.
    get: fn(&Value) -> Option<f64>,
}

const IDLE_BYTES: Metric = Metric {
    name: "memory per idle session (ΔRSS / sessions, bytes)",
    scenario: "idle",
    decimals: 0,
    get: |r| r["bytes_per_session"].as_f64(),
};

const CONNECT_RATE: Metric = Metric {
    name: "connect storm: sessions/s accepted (with auth)",
    scenario: "idle",
    decimals: 0,
    get: |r| r["connect_rate_per_sec"].as_f64(),
};

const HALF_P50: Metric = Metric {
    name: "p50 at 50% of max (ms)",
    scenario: "fanout",
    decimals: 2,
    get: |r| step_at(r, "half_step")?["latency_ms"]["p50"].as_f64(),
};

const HALF_P99: Metric = Metric {
    name: "p99 at 50% of max (ms)",
    scenario: "fanout",
    decimals: 2,
    get: |r| step_at(r, "half_step")?["latency_ms"]["p99"].as_f64(),
};

const HALF_P999: Metric = Metric {
    name: "p99.9 at 50% of max (ms)",
    scenario: "fanout",
    decimals: 2,
    get: |r| step_at(r, "half_step")?["latency_ms"]["p999"].as_f64(),
};

const PER_CPU: Metric = Metric {
    name: "deliveries per server CPU-second (at max)",
    scenario: "fanout",
    decimals: 0,
    get: |r| step_at(r, "max_sustainable_step")?["deliveries_per_server_cpu_sec"].as_f64(),
};

const MAX_RATE: Metric = Metric {
    name: "max sustainable deliveries/s (p99 ≤ limit, no loss)",
    scenario: "fanout",
    decimals: 0,
    get: |r| {
        Some(
            step_at(r, "max_sustainable_step")
                .map_or(0.0, |s| s["deliveries_per_sec"].as_f64().unwrap_or(0.0)),
        )
    },
};

const IDLE_CLUSTER_BYTES: Metric = Metric {
    name: "idle-cluster (sizes above): memory per idle session (ΣΔRSS of the processes / sessions, bytes)",
    scenario: "idle-cluster",
    decimals: 0,
    get: |r| r["bytes_per_session"].as_f64(),
};

const PER_TOTAL_CPU: Metric = Metric {
    name: "deliveries per server+bus CPU-second (at max)",
    scenario: "fanout",
    decimals: 0,
    get: |r| step_at(r, "max_sustainable_step")?["deliveries_per_total_cpu_sec"].as_f64(),
};

const BIG_P99: Metric = Metric {
    name: "big payload: p99 (ms)",
    scenario: "big-payload",
    decimals: 2,
    get: |r| r["steps"][0]["latency_ms"]["p99"].as_f64(),
};

const METRICS: &[Metric] = &[
    IDLE_BYTES,
    CONNECT_RATE,
    IDLE_CLUSTER_BYTES,
    Metric {
        name: "idle-cluster: same + Δ kernel Slab (both socket ends, machine-wide; bytes)",
        scenario: "idle-cluster",
        decimals: 0,
        get: |r| r["bytes_per_session_with_kernel"].as_f64(),
    },
    Metric {
        name: "idle-cluster: sessions/s accepted (all generators)",
        scenario: "idle-cluster",
        decimals: 0,
        get: |r| r["connect_rate_per_sec"].as_f64(),
    },
    MAX_RATE,
    Metric {
        name: "p99 at max sustainable (ms)",
        scenario: "fanout",
        decimals: 2,
        get: |r| step_at(r, "max_sustainable_step")?["latency_ms"]["p99"].as_f64(),
    },
    HALF_P99,
    HALF_P999,
    HALF_P50,
    PER_CPU,
    PER_TOTAL_CPU,
    BIG_P99,
    Metric {
        name: "big payload: deliveries per server CPU-second",
        scenario: "big-payload",
        decimals: 0,
        get: |r| r["steps"][0]["deliveries_per_server_cpu_sec"].as_f64(),
    },
    Metric {
        name: "two nodes on one NATS: p99 (ms)",
        scenario: "two-nodes",
        decimals: 2,
        get: |r| r["steps"][0]["latency_ms"]["p99"].as_f64(),
    },
    Metric {
        name: "two nodes on one NATS: lost + duplicated + reordered",
        scenario: "two-nodes",
        decimals: 0,
        get: |r| {
            Some(
                r["lost"].as_f64().unwrap_or(0.0)
                    + r["duplicated"].as_f64().unwrap_or(0.0)
                    + r["reordered"].as_f64().unwrap_or(0.0),
            )
        },
    },
];

/// Median of `metric` for `system` over its runs.
fn metric_median(results: &[Value], system: &str, metric: &Metric) -> Option<f64> {
    median(
        of(results, metric.scenario)
            .filter(|r| r["system"].as_str().unwrap_or("herald") == system)
            .filter_map(metric.get)
            .collect(),
    )
}

/// The summary table: medians per system, then herald ÷ each peer.
fn summary(md: &mut String, results: &[Value]) {
    let systems = systems(results);
    let peers: Vec<&String> = systems.iter().filter(|s| *s != "herald").collect();
    let has_herald = systems.iter().any(|s| s == "herald");
    let mut headers: Vec<String> = vec!["metric (median of runs)".into()];
    headers.extend(systems.iter().cloned());
    if has_herald {
        headers.extend(peers.iter().map(|p| format!("herald ÷ {p}")));
    }
    let mut rows = Vec::new();
    for metric in METRICS {
        let values: Vec<Option<f64>> = systems
            .iter()
            .map(|s| metric_median(results, s, metric))
            .collect();
        if values.iter().all(Option::is_none) {
            continue;
        }
        let mut row = vec![metric.name.to_owned()];
        row.extend(values.iter().map(|v| fmt(*v, metric.decimals)));
        if has_herald {
            let herald = values[0];
            for peer in &peers {
                let i = systems.iter().position(|s| s == *peer).unwrap_or(0);
                let ratio = herald
                    .zip(values[i])
                    .and_then(|(h, p)| (p != 0.0).then(|| h / p));
                row.push(fmt(ratio, 2));
            }
        }
        rows.push(row);
    }
    let _ = writeln!(md, "## Summary\n");
    let _ = writeln!(
        md,
        "Medians over the runs of each system. Ratios are herald ÷ peer: above 1 is better for \
         rates and deliveries per CPU-second, below 1 is better for memory and latency.\n"
    );
    let _ = writeln!(md, "| {} |", headers.join(" | "));
    let _ = writeln!(md, "|---|{}", "---:|".repeat(headers.len() - 1));
    for row in rows {
        let _ = writeln!(md, "| {} |", row.join(" | "));
    }
    md.push('\n');
}

/// A goal of the benchmark issue, checked against herald's medians.
struct Target {
    goal: &'static str,
    metric: &'static Metric,
    /// Compare herald's median ÷ this peer's, not herald's median itself.
    ratio_to: Option<&'static str>,
    /// The measured value must be at most (`true`) or at least (`false`) `bound`.
    at_most: bool,
    bound: f64,
}

const TARGETS: &[Target] = &[
    Target {
        goal: "≤ 4 KiB RSS per idle session (bytes; issue 17)",
        metric: &IDLE_BYTES,
        ratio_to: None,
        at_most: true,
        bound: 4096.0,
    },
    Target {
        goal: "below the Node reference per idle session in the idle-cluster (ratio; issue 17)",
        metric: &IDLE_CLUSTER_BYTES,
        ratio_to: Some("forwardemail-node"),
        at_most: true,
        bound: 1.0,
    },
    Target {
        goal: "connect storm ≥ 2× the Node reference (ratio; issue 17)",
        metric: &CONNECT_RATE,
        ratio_to: Some("forwardemail-node"),
        at_most: false,
        bound: 2.0,
    },
    Target {
        goal: "≥ 1.5× the Node reference per server+bus CPU-second (ratio; issue 18)",
        metric: &PER_TOTAL_CPU,
        ratio_to: Some("forwardemail-node"),
        at_most: false,
        bound: 1.5,
    },
    Target {
        goal: "p99 at 50% of max ≤ the Node reference's (ratio; issue 18)",
        metric: &HALF_P99,
        ratio_to: Some("forwardemail-node"),
        at_most: true,
        bound: 1.0,
    },
    Target {
        goal: "100 KiB payload p99 ≤ the Node reference's (ratio; issue 18)",
        metric: &BIG_P99,
        ratio_to: Some("forwardemail-node"),
        at_most: true,
        bound: 1.0,
    },
    Target {
        goal: "≥ 50,000 deliveries per server CPU-second",
        metric: &PER_CPU,
        ratio_to: None,
        at_most: false,
        bound: 50_000.0,
    },
    Target {
        goal: "p50 ≤ 0.3 ms at 50% of max",
        metric: &HALF_P50,
        ratio_to: None,
        at_most: true,
        bound: 0.3,
    },
    Target {
        goal: "p99 ≤ 2 ms at 50% of max",
        metric: &HALF_P99,
        ratio_to: None,
        at_most: true,
        bound: 2.0,
    },
    Target {
        goal: "p99.9 ≤ 10 ms at 50% of max",
        metric: &HALF_P999,
        ratio_to: None,
        at_most: true,
        bound: 10.0,
    },
    Target {
        goal: "≥ 5,000 authenticated upgrades/s (one server core)",
        metric: &CONNECT_RATE,
        ratio_to: None,
        at_most: false,
        bound: 5000.0,
    },
    Target {
        goal: "≥ 2× the Node reference (deliveries per server CPU-second, ratio)",
        metric: &PER_CPU,
        ratio_to: Some("forwardemail-node"),
        at_most: false,
        bound: 2.0,
    },
    Target {
        goal: "≥ 70% of the `limit` system (deliveries per server CPU-second, ratio)",
        metric: &PER_CPU,
        ratio_to: Some("limit"),
        at_most: false,
        bound: 0.7,
    },
    Target {
        goal: "≥ 70% of the `limit` system (max sustainable deliveries/s, ratio)",
        metric: &MAX_RATE,
        ratio_to: Some("limit"),
        at_most: false,
        bound: 0.7,
    },
    Target {
        goal: "within 1.5× of raw NATS WebSocket (deliveries per server CPU-second, ratio ≥ 0.67)",
        metric: &PER_CPU,
        ratio_to: Some("nats-ws"),
        at_most: false,
        bound: 1.0 / 1.5,
    },
];

/// herald's medians against the goals, and where to find out why a goal is missed.
fn targets(md: &mut String, results: &[Value]) {
    let mut rows = Vec::new();
    for target in TARGETS {
        let herald = metric_median(results, "herald", target.metric);
        let measured = match target.ratio_to {
            None => herald,
            Some(peer) => herald
                .zip(metric_median(results, peer, target.metric))
                .and_then(|(h, p)| (p != 0.0).then(|| h / p)),
        };
        let Some(value) = measured else { continue };
        // What the least a server can do reaches on the same machine: a goal `limit`
        // misses too is out of reach here, whatever herald does.
        let floor = match target.ratio_to {
            None => fmt(
                metric_median(results, "limit", target.metric),
                target.metric.decimals,
            ),
            Some(_) => "-".to_owned(),
        };
        let met = if target.at_most {
            value <= target.bound
        } else {
            value >= target.bound
        };
        let decimals = if target.ratio_to.is_some() {
            2
        } else {
            target.metric.decimals
        };
        rows.push(vec![
            target.goal.to_owned(),
            fmt(Some(value), decimals),
            (if met { "met" } else { "**missed**" }).to_owned(),
            floor,
        ]);
    }
    if rows.is_empty() {
        return;
    }
    table(
        md,
        "Against the targets",
        &["target", "herald (median)", "", "`limit` (median)"],
        &rows,
    );
    let _ = writeln!(
        md,
        "Where a target is missed, `loadtest/profile cpu [RATE]` (perf) and \
         `loadtest/profile memory [SESSIONS]` (heaptrack) show where herald's time and memory \
         go; docs/performance.md (\"Where the memory and the CPU go\") keeps the \
         latest breakdown.\n"
    );
}

/// The Markdown report.
fn markdown(meta: &Value, results: &[Value], plots: &[(String, String)]) -> String {
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
    summary(&mut md, results);
    targets(&mut md, results);
    tracing_price(&mut md, results);
    ramp_ends(&mut md, results);
    for (file, title) in plots {
        let _ = writeln!(md, "### {title}\n\n![{title}]({file})\n");
    }
    let run = |r: &Value| num(r, &["run"], 0);
    let system = |r: &Value| r["system"].as_str().unwrap_or("herald").to_owned();
    idle_table(
        &mut md,
        "Idle sessions and connect storm (every run)",
        results,
        "idle",
    );
    idle_table(
        &mut md,
        "Idle sessions over several server and generator processes (idle-cluster, every run)",
        results,
        "idle-cluster",
    );
    let mut steps = Vec::new();
    for r in results.iter().filter(|r| r["steps"].is_array()) {
        let best = r["max_sustainable_step"].as_u64();
        for (i, s) in r["steps"].as_array().into_iter().flatten().enumerate() {
            let mark = if best == Some(i as u64) { " (max)" } else { "" };
            steps.push(vec![
                system(r),
                run(r),
                format!("{}", r["scenario"].as_str().unwrap_or("-")),
                format!(
                    "{} × {} × {} B",
                    num(r, &["aliases"], 0),
                    num(r, &["sessions_per_alias"], 0),
                    num(r, &["eml_bytes"], 0)
                ),
                format!("{}{mark}", s["kind"].as_str().unwrap_or("-")),
                num(s, &["target_rate"], 0),
                num(s, &["offered_deliveries_per_sec"], 0),
                num(s, &["deliveries_per_sec"], 0),
                num(s, &["latency_ms", "p50"], 2),
                num(s, &["latency_ms", "p90"], 2),
                num(s, &["latency_ms", "p99"], 2),
                num(s, &["latency_ms", "p999"], 2),
                num(s, &["latency_ms", "max"], 2),
                format!(
                    "{}/{}/{}",
                    num(s, &["lost"], 0),
                    num(s, &["duplicated"], 0),
                    num(s, &["reordered"], 0)
                ),
                num(s, &["server", "cpu_percent"], 0),
                num(s, &["bus", "cpu_percent"], 0),
                num(s, &["deliveries_per_server_cpu_sec"], 0),
                num(s, &["deliveries_per_total_cpu_sec"], 0),
                num(s, &["generator_cpu_percent"], 0),
                if s["passed"].as_bool() == Some(true) {
                    "yes".into()
                } else {
                    "no".into()
                },
            ]);
        }
    }
    table(
        &mut md,
        "Publish → receipt, every step of every run",
        &[
            "system",
            "run",
            "scenario",
            "aliases × sessions × eml",
            "step",
            "events/s target",
            "deliveries/s offered",
            "deliveries/s",
            "p50 ms",
            "p90 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost/dup/reord",
            "server CPU %",
            "bus CPU %",
            "deliv./server CPU-s",
            "deliv./(server+bus) CPU-s",
            "generator CPU %",
            "passed",
        ],
        &steps,
    );
    md
}

/// The tracing settings of `--tracing`, tracing off first: system name and sampling.
const TRACING_SETTINGS: [(&str, &str); 3] = [
    ("herald", "off"),
    ("herald-trace1", "1 %"),
    ("herald-trace100", "100 %"),
];
/// Issue 18's bound on tracing's price at 1 % sampling: deliveries per server CPU-second
/// at least this fraction of tracing off's.
const TRACE1_MIN_RATIO: f64 = 0.95;

/// A fan-out ramp's passed step (ramp or retry) at `rate` events/s.
fn passed_at(result: &Value, rate: f64) -> Option<&Value> {
    result["steps"].as_array()?.iter().find(|s| {
        s["passed"].as_bool() == Some(true)
            && s["kind"] != "half"
            && s["target_rate"].as_f64() == Some(rate)
    })
}

/// The fixed rate a tracing setting is compared with tracing off at: the highest ramp
/// rate both passed, at most tracing off's half-load rate (below saturation, so the
/// CPU-seconds are those of the same work at the same pace); the highest common one when
/// none is that low. Pairwise, so one setting's short ramp does not lower the others'.
fn common_rate(off: &Value, traced: &Value) -> Option<f64> {
    let mut rates: Vec<f64> = off["steps"]
        .as_array()?
        .iter()
        .filter(|s| s["passed"].as_bool() == Some(true) && s["kind"] != "half")
        .filter_map(|s| s["target_rate"].as_f64())
        .filter(|&rate| passed_at(traced, rate).is_some())
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    let half = step_at(off, "half_step").and_then(|s| s["target_rate"].as_f64());
    rates
        .iter()
        .rev()
        .find(|&&rate| half.is_none_or(|h| rate <= h))
        .or(rates.last())
        .copied()
}

/// "Tracing's price" (`bench --tracing`): herald's fan-out with span export off, at 1 %
/// and at 100 % sampling, run by run, each as a ratio to tracing off in the same run, and
/// whether 1 % costs less than issue 18's 5 % of deliveries per server CPU-second (median
/// ratio at the fixed rate).
fn tracing_price(md: &mut String, results: &[Value]) {
    let fanouts: Vec<&Value> = of(results, "fanout").collect();
    if !fanouts.iter().any(|r| {
        r["system"]
            .as_str()
            .is_some_and(|s| s.starts_with("herald-trace"))
    }) {
        return;
    }
    let mut runs: Vec<u64> = fanouts.iter().filter_map(|r| r["run"].as_u64()).collect();
    runs.sort_unstable();
    runs.dedup();
    let per_cpu = |s: Option<&Value>| s.and_then(|s| s["deliveries_per_server_cpu_sec"].as_f64());
    let ratio =
        |a: Option<f64>, b: Option<f64>| a.zip(b).and_then(|(a, b)| (b > 0.0).then(|| a / b));
    let pair = |s: Option<&Value>| {
        s.map_or("-".into(), |s| {
            format!(
                "{} / {}",
                num(s, &["latency_ms", "p50"], 2),
                num(s, &["latency_ms", "p99"], 2)
            )
        })
    };
    let mut rows = Vec::new();
    // Ratios to tracing off per setting, at max and at the fixed rate, over the runs.
    let mut ratios: Vec<(Vec<f64>, Vec<f64>)> = vec![Default::default(); TRACING_SETTINGS.len()];
    for run in runs {
        let of_run: Vec<&Value> = TRACING_SETTINGS
            .iter()
            .filter_map(|(system, _)| {
                fanouts
                    .iter()
                    .find(|r| r["system"] == *system && r["run"].as_u64() == Some(run))
                    .copied()
            })
            .collect();
        let Some(off) = of_run.first().filter(|r| r["system"] == "herald") else {
            continue;
        };
        let off_max = per_cpu(step_at(off, "max_sustainable_step"));
        for (i, (system, sampling)) in TRACING_SETTINGS.iter().enumerate() {
            let Some(r) = of_run.iter().find(|r| r["system"] == *system) else {
                continue;
            };
            let fixed = common_rate(off, r);
            let off_fixed = per_cpu(fixed.and_then(|rate| passed_at(off, rate)));
            let max = step_at(r, "max_sustainable_step");
            let at_fixed = fixed.and_then(|rate| passed_at(r, rate));
            let (max_ratio, fixed_ratio) = (
                ratio(per_cpu(max), off_max),
                ratio(per_cpu(at_fixed), off_fixed),
            );
            ratios[i].0.extend(max_ratio);
            ratios[i].1.extend(fixed_ratio);
            let tracing = &r["tracing"];
            let spans_per_event = tracing["spans_received"]
                .as_f64()
                .zip(tracing["events_published"].as_f64())
                .and_then(|(spans, events)| (events > 0.0).then(|| spans / events));
            rows.push(vec![
                (*system).to_owned(),
                (*sampling).to_owned(),
                run.to_string(),
                max.map_or("-".into(), |s| num(s, &["deliveries_per_sec"], 0)),
                fmt(per_cpu(max), 0),
                fmt(max_ratio, 3),
                pair(max),
                fmt(fixed, 0),
                fmt(per_cpu(at_fixed), 0),
                fmt(fixed_ratio, 3),
                pair(at_fixed),
                step_at(r, "half_step").map_or("-".into(), |s| num(s, &["latency_ms", "p99"], 2)),
                fmt(spans_per_event, 3),
                num(tracing, &["sink_cpu_secs"], 2),
            ]);
        }
    }
    table(
        md,
        "Tracing's price (herald's fan-out, span export off / 1 % / 100 % sampled)",
        &[
            "system",
            "sampling",
            "run",
            "max deliveries/s",
            "deliv./server CPU-s at max",
            "÷ off",
            "p50 / p99 ms at max",
            "fixed events/s",
            "deliv./server CPU-s at fixed",
            "÷ off",
            "p50 / p99 ms at fixed",
            "p99 ms at 50 % of max",
            "spans received per event",
            "OTLP sink CPU s",
        ],
        &rows,
    );
    let (at_max, at_fixed) = &ratios[1];
    let (at_max, at_fixed) = (median(at_max.clone()), median(at_fixed.clone()));
    // Judged at the fixed rate: "at max" compares different rates whenever the ramps end
    // at different steps, and a core delivers more per CPU-second at a higher rate (more
    // deliveries per wake-up), so that ratio says more about where a ramp stopped.
    let verdict = match at_fixed {
        Some(r) if r >= TRACE1_MIN_RATIO => "met",
        Some(_) => "**missed**",
        None => "not measured",
    };
    let _ = writeln!(
        md,
        "Same ramp, fresh processes, run right after tracing off; herald exports OTLP/HTTP \
         (protobuf, batch span processor defaults) to `herald-loadtest otlp-sink` (pinned \
         with the bus), `OTEL_TRACES_SAMPLER=parentbased_traceidratio` (the probes carry no \
         `traceparent`: each event is a root, sampled at `herald.receive`). The fixed rate is \
         per setting, the highest ramp rate both it and tracing off passed, at most tracing \
         off's half-load rate; its ÷ off is against tracing off at that same rate. \
         Spans per event: 3 (`herald.receive`, `herald.fanout`, `herald.deliver`) + one \
         `herald.write` per session for fan-outs of ≤ 16 sessions, times the sampled \
         fraction, less what the batch processor dropped when its queue was full.\n"
    );
    let _ = writeln!(
        md,
        "**Target: < 5 % fewer deliveries per server CPU-second at 1 % sampling**: {verdict} \
         (median ÷ off at the fixed rate: {}; at max: {}, where the ramps may have ended at \
         different rates).\n",
        fmt(at_fixed, 3),
        fmt(at_max, 3)
    );
}

/// Where each fan-out ramp ended and why: a ramp that ran out of rates, or whose
/// generator was near a full core, bounds the measure rather than the server.
fn ramp_ends(md: &mut String, results: &[Value]) {
    let rows: Vec<Vec<String>> = of(results, "fanout")
        .map(|r| {
            let best = step_at(r, "max_sustainable_step");
            let last = r["steps"]
                .as_array()
                .and_then(|steps| steps.iter().rfind(|s| s["kind"] != "half"));
            vec![
                r["system"].as_str().unwrap_or("herald").to_owned(),
                num(r, &["run"], 0),
                best.map_or("-".into(), |s| num(s, &["target_rate"], 0)),
                best.map_or("-".into(), |s| num(s, &["deliveries_per_sec"], 0)),
                best.map_or("-".into(), |s| num(s, &["server", "cpu_percent"], 0)),
                best.map_or("-".into(), |s| num(s, &["generator_cpu_percent"], 0)),
                last.map_or("-".into(), |s| num(s, &["target_rate"], 0)),
                r["ramp_end"].as_str().unwrap_or("-").to_owned(),
            ]
        })
        .collect();
    table(
        md,
        "Fan-out ramps: where each ended",
        &[
            "system",
            "run",
            "max step events/s",
            "deliveries/s at max",
            "server CPU % at max",
            "generator CPU % at max",
            "last step events/s",
            "ended by",
        ],
        &rows,
    );
}

/// The rows of an idle scenario (`idle`, or `idle-cluster` with its process counts and
/// kernel memory).
fn idle_table(md: &mut String, title: &str, results: &[Value], scenario: &str) {
    let cluster = scenario == "idle-cluster";
    let rows: Vec<Vec<String>> = of(results, scenario)
        .map(|r| {
            let mut row = vec![
                r["system"].as_str().unwrap_or("herald").to_owned(),
                num(r, &["run"], 0),
            ];
            if cluster {
                row.push(num(r, &["nodes"], 0));
                row.push(num(r, &["generators"], 0));
            }
            row.extend([
                num(r, &["sessions_requested"], 0),
                num(r, &["sessions_connected"], 0),
                num(r, &["connect_rate_per_sec"], 0),
                num(r, &["server_cpu_percent_connecting"], 0),
            ]);
            if cluster {
                row.push(num(r, &["bus_cpu_percent_connecting"], 0));
            }
            row.extend([
                num(r, &["generator_cpu_percent_connecting"], 0),
                mib(r, &["server", "rss_before_bytes"]),
                mib(r, &["server", "rss_after_bytes"]),
                num(r, &["bytes_per_session"], 0),
            ]);
            if cluster {
                let slab = at(r, &["kernel_slab_after_bytes"])
                    .as_f64()
                    .zip(at(r, &["kernel_slab_before_bytes"]).as_f64())
                    .map(|(after, before)| (after - before) / (1024.0 * 1024.0));
                row.push(fmt(slab, 1));
                row.push(num(r, &["bytes_per_session_with_kernel"], 0));
            }
            row.push(failures(r));
            row
        })
        .collect();
    let mut headers = vec!["system", "run"];
    if cluster {
        headers.extend(["server processes", "generators"]);
    }
    headers.extend([
        "sessions",
        "connected",
        "connect/s",
        "server CPU connecting %",
    ]);
    if cluster {
        headers.push("bus CPU connecting %");
    }
    headers.extend([
        "generator CPU %",
        "RSS before MiB",
        "RSS after MiB",
        "bytes/session",
    ]);
    if cluster {
        headers.extend(["Δ Slab MiB", "bytes/session + Slab"]);
    }
    headers.push("failed connects");
    table(md, title, &headers, &rows);
}

/// Draws the plots; returns `(file, title)` of each one written.
fn write_plots(out: &Path, results: &[Value]) -> anyhow::Result<Vec<(String, String)>> {
    let systems = systems(results);
    let mut written = Vec::new();
    let fanouts = |system: &str| -> Vec<&Value> {
        of(results, "fanout")
            .filter(|r| r["system"].as_str().unwrap_or("herald") == system)
            .collect()
    };
    // Latency CDF at the highest ramp rate every system passed (same offered load for all).
    let passed_rates = |r: &Value| -> Vec<f64> {
        r["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["kind"] != "half" && s["passed"] == true)
            .filter_map(|s| s["target_rate"].as_f64())
            .collect()
    };
    let common = systems
        .iter()
        .filter_map(|s| fanouts(s).first().map(|r| passed_rates(r)))
        .reduce(|a, b| a.into_iter().filter(|x| b.contains(x)).collect());
    if let Some(rate) = common.and_then(|c| c.into_iter().reduce(f64::max)) {
        let series: Vec<plots::Series> = systems
            .iter()
            .filter_map(|s| {
                let r = *fanouts(s).first()?;
                let step = r["steps"].as_array()?.iter().find(|st| {
                    st["kind"] != "half"
                        && st["passed"] == true
                        && st["target_rate"].as_f64() == Some(rate)
                })?;
                let points = step["latency_cdf"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| Some((p[0].as_f64()?.max(0.001), p[1].as_f64()?)))
                    .collect();
                Some(plots::Series {
                    name: s.clone(),
                    points,
                })
            })
            .collect();
        let title = format!("Latency CDF, fan-out at {rate:.0} events/s (run 1)");
        plots::line_chart(
            &out.join("latency-cdf.svg"),
            &title,
            plots::Axis {
                label: "publish → receipt, ms (log)",
                log: true,
            },
            plots::Axis {
                label: "fraction of deliveries",
                log: false,
            },
            &series,
        )?;
        written.push(("latency-cdf.svg".into(), title));
    }
    // Deliveries/s vs offered, median over runs per ramp rate.
    let series: Vec<plots::Series> = systems
        .iter()
        .filter_map(|s| {
            let runs = fanouts(s);
            let mut rates: Vec<f64> = runs
                .iter()
                .flat_map(|r| r["steps"].as_array().into_iter().flatten())
                .filter(|st| st["kind"] != "half")
                .filter_map(|st| st["target_rate"].as_f64())
                .collect();
            rates.sort_by(f64::total_cmp);
            rates.dedup();
            let points: Vec<(f64, f64)> = rates
                .into_iter()
                .filter_map(|rate| {
                    let steps: Vec<&Value> = runs
                        .iter()
                        .flat_map(|r| r["steps"].as_array().into_iter().flatten())
                        .filter(|st| {
                            st["kind"] != "half" && st["target_rate"].as_f64() == Some(rate)
                        })
                        .collect();
                    let offered = median(
                        steps
                            .iter()
                            .filter_map(|st| st["offered_deliveries_per_sec"].as_f64())
                            .collect(),
                    )?;
                    let delivered = median(
                        steps
                            .iter()
                            .filter_map(|st| st["deliveries_per_sec"].as_f64())
                            .collect(),
                    )?;
                    Some((offered, delivered))
                })
                .collect();
            (!points.is_empty()).then(|| plots::Series {
                name: s.clone(),
                points,
            })
        })
        .collect();
    if !series.is_empty() {
        let title = "Deliveries/s vs offered (fan-out ramp, median of runs)".to_owned();
        plots::line_chart(
            &out.join("throughput.svg"),
            &title,
            plots::Axis {
                label: "offered deliveries/s (log)",
                log: true,
            },
            plots::Axis {
                label: "delivered deliveries/s (log)",
                log: true,
            },
            &series,
        )?;
        written.push(("throughput.svg".into(), title));
    }
    // Server RSS vs idle sessions (run 1); idle-cluster: the sum over its processes.
    let series: Vec<plots::Series> = ["idle", "idle-cluster"]
        .into_iter()
        .flat_map(|scenario| systems.iter().map(move |s| (scenario, s)))
        .filter_map(|(scenario, s)| {
            let r =
                of(results, scenario).find(|r| r["system"].as_str().unwrap_or("herald") == s)?;
            let points: Vec<(f64, f64)> = r["rss_curve"]
                .as_array()?
                .iter()
                .filter_map(|p| Some((p[0].as_f64()?, p[1].as_f64()? / (1024.0 * 1024.0))))
                .collect();
            let name = match scenario {
                "idle" => s.clone(),
                _ => format!("{s}, {} processes (Σ)", num(r, &["nodes"], 0)),
            };
            (!points.is_empty()).then_some(plots::Series { name, points })
        })
        .collect();
    if !series.is_empty() {
        let title = "Server RSS vs idle sessions (run 1)".to_owned();
        plots::line_chart(
            &out.join("rss.svg"),
            &title,
            plots::Axis {
                label: "sessions",
                log: false,
            },
            plots::Axis {
                label: "RSS, MiB",
                log: false,
            },
            &series,
        )?;
        written.push(("rss.svg".into(), title));
    }
    Ok(written)
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
        std::fs::write(&input, r#"{"scenario":"idle","system":"herald","sessions_requested":10,"sessions_connected":10,"server":{"rss_before_bytes":1048576},"rss_curve":[[0,1048576],[10,2097152]],"failures":{"counts":{}}}"#).unwrap();
        combine(&dir, serde_json::json!({"date": "today"}), &[&input]).unwrap();
        let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(md.contains("## Idle sessions"), "{md}");
        assert!(md.contains("## Summary"), "{md}");
        assert!(md.contains("| 10 | 10 |"), "{md}");
        assert!(dir.join("rss.svg").exists());
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        assert_eq!(json["results"][0]["scenario"], "idle");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn targets_compare_herald_with_the_goals_and_the_peers() {
        let fanout = |system: &str, per_cpu: f64, p50: f64| {
            serde_json::json!({
                "scenario": "fanout", "system": system,
                "max_sustainable_step": 0, "half_step": 1,
                "steps": [
                    {"deliveries_per_server_cpu_sec": per_cpu, "latency_ms": {"p50": 1.0, "p99": 3.0, "p999": 5.0}},
                    {"latency_ms": {"p50": p50, "p99": 1.5, "p999": 12.0}},
                ],
            })
        };
        let idle = serde_json::json!({"scenario": "idle", "system": "herald", "bytes_per_session": 7000.0, "connect_rate_per_sec": 4000.0});
        let results = [
            fanout("herald", 60_000.0, 0.2),
            fanout("forwardemail-node", 30_000.0, 0.5),
            fanout("nats-ws", 100_000.0, 0.1),
            fanout("limit", 80_000.0, 0.1),
            idle,
        ];
        let mut md = String::new();
        targets(&mut md, &results);
        let verdict = |goal: &str| {
            md.lines()
                .find(|line| line.starts_with(&format!("| {goal}")))
                .unwrap_or_else(|| panic!("no row for {goal} in {md}"))
                .to_owned()
        };
        // Each goal's row ends with herald's value, the verdict and `limit`'s value.
        let expected = [
            ("≤ 4 KiB", "| 7000 | **missed** | - |"),
            ("≥ 50,000", "| 60000 | met | 80000 |"),
            ("p50", "| 0.20 | met | 0.10 |"),
            ("p99 ≤", "| 1.50 | met | 1.50 |"),
            ("p99 at 50% of max ≤ the Node", "| 1.00 | met | - |"),
            // `limit` misses it too: the floor column says so.
            ("p99.9", "| 12.00 | **missed** | 12.00 |"),
            ("≥ 5,000", "| 4000 | **missed** | - |"),
            ("≥ 2×", "| 2.00 | met | - |"),
            ("within 1.5×", "| 0.60 | **missed** | - |"),
            (
                "≥ 70% of the `limit` system (deliveries",
                "| 0.75 | met | - |",
            ),
        ];
        for (goal, row) in expected {
            assert!(verdict(goal).ends_with(row), "{goal}: {md}");
        }
        assert!(md.contains("loadtest/profile cpu"), "{md}");
    }
}
