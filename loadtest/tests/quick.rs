//! The benchmark in miniature, so the generator cannot rot: herald (the debug binary),
//! raw NATS over WebSocket and the `limit` system (this crate's `limit-server`), every scenario at tiny sizes, through the same code as
//! `loadtest/run`; asserts no probe is lost, duplicated or reordered and that the report
//! (Markdown, JSON, plots) is written.
//!
//! Needs `$HERALD_BIN` (default `<workspace>/target/debug/herald`: `cargo build -p herald`)
//! and `$NATS_SERVER` (default `<workspace>/.venv/bin/nats-server`, as `scripts/test`
//! installs it). A missing binary fails the test; it never skips.

use std::path::PathBuf;
use std::time::Duration;

use herald_loadtest::bench::{self, BenchOptions, Scenario, Sizes, Tools};
use herald_loadtest::session::System;

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent directory")
        .to_path_buf()
}

/// `$var`, else `default`; panics with instructions when the file is missing.
fn binary(var: &str, default: PathBuf, hint: &str) -> PathBuf {
    let path = std::env::var_os(var).map_or(default, PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found (set {var}, or {hint}); the load generator's smoke test needs it",
        path.display()
    );
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_benchmark_of_herald_raw_nats_and_limit_is_clean_and_reported() {
    let root = workspace_root();
    let herald = binary(
        "HERALD_BIN",
        root.join("target/debug/herald"),
        "run `cargo build -p herald`",
    );
    let nats_server = binary(
        "NATS_SERVER",
        root.join(".venv/bin/nats-server"),
        "run scripts/test once: it installs .venv/bin/nats-server",
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let sizes = Sizes {
        runs: 1,
        idle_sessions: 50,
        concurrency: 16,
        fanout_aliases: 20,
        fanout_sessions_per_alias: 2,
        // 200 probes in the ramp's one step, then 100 at half rate.
        ramp_rates: vec![200.0],
        step_secs: 1.0,
        max_step_events: 1000,
        // Debug builds on a busy machine: the limit only decides whether the half step runs.
        p99_limit_ms: 1000.0,
        stop_at_server_cpu_percent: None,
        big_sessions: 5,
        big_eml_bytes: 100 * 1024,
        big_rate: 10.0,
        two_nodes_rate: 100.0,
        // 3 server processes (herald nodes on one NATS, a NATS cluster), 3 generator
        // processes (this crate's binary, `idle --hold`).
        cluster_idle_sessions: 90,
        cluster_nodes: 3,
        eml_bytes: 256,
        drain_timeout: Duration::from_secs(10),
        settle: Duration::from_millis(300),
    };
    let started = std::time::Instant::now();
    let outcome = bench::run(BenchOptions {
        tools: Tools {
            herald,
            nats_server,
            generator: Some(PathBuf::from(env!("CARGO_BIN_EXE_herald-loadtest"))),
            forwardemail: None,
        },
        sizes,
        systems: vec![System::Herald, System::NatsWs, System::Limit],
        scenarios: Scenario::ALL.to_vec(),
        out: dir.path().to_path_buf(),
        pin: None,
        tracing: true,
        meta: serde_json::Map::new(),
    })
    .await
    .expect("the quick benchmark runs");
    assert!(outcome.clean, "problems: {:#?}", outcome.problems);

    let md = std::fs::read_to_string(dir.path().join("report.md")).expect("report.md");
    assert!(md.contains("## Summary"), "{md}");
    assert!(md.contains("herald ÷ nats-ws"), "{md}");
    assert!(md.contains("herald ÷ limit"), "{md}");
    assert!(md.contains("## Fan-out ramps: where each ended"), "{md}");
    assert!(md.contains("## Tracing's price"), "{md}");
    assert!(
        md.contains("**Target: < 5 % fewer deliveries per server CPU-second at 1 % sampling**"),
        "{md}"
    );
    assert!(md.contains("(idle-cluster, every run)"), "{md}");
    for plot in ["latency-cdf.svg", "throughput.svg", "rss.svg"] {
        assert!(
            dir.path().join(plot).is_file(),
            "{plot} missing; report:\n{md}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("report.json")).expect("report.json"),
    )
    .expect("report.json is JSON");
    let results = report["results"].as_array().expect("results");
    let scenarios = |system: &str| -> Vec<&str> {
        results
            .iter()
            .filter(|r| r["system"] == system)
            .filter_map(|r| r["scenario"].as_str())
            .collect()
    };
    assert_eq!(
        scenarios("herald"),
        ["idle", "fanout", "big-payload", "two-nodes", "idle-cluster"]
    );
    for peer in ["nats-ws", "limit"] {
        assert_eq!(
            scenarios(peer),
            ["idle", "fanout", "big-payload", "idle-cluster"],
            "{peer}"
        );
    }
    for result in results {
        let what = format!("{} {}", result["system"], result["scenario"]);
        if result["scenario"] == "idle" {
            assert_eq!(result["sessions_connected"], 50, "{what}");
            continue;
        }
        if result["scenario"] == "idle-cluster" {
            assert_eq!(result["sessions_connected"], 90, "{what}");
            assert_eq!(result["sessions_alive_at_measure"], 90, "{what}");
            assert_eq!(result["nodes"], 3, "{what}");
            assert_eq!(result["parts"].as_array().map(Vec::len), Some(3), "{what}");
            continue;
        }
        for key in [
            "lost",
            "duplicated",
            "reordered",
            "misrouted",
            "disconnected",
        ] {
            assert_eq!(result[key], 0, "{what}: {key}");
        }
        let first = &result["steps"][0];
        assert!(first["deliveries"].as_u64().unwrap() > 0, "{what}");
        assert_eq!(first["deliveries"], first["deliveries_expected"], "{what}");
        for key in ["lost", "duplicated", "reordered"] {
            assert_eq!(first[key], 0, "{what}: step 0 {key}");
        }
    }
    // `tracing: true`: herald's fan-out again with span export on, every event (100 %) and
    // about one in a hundred (1 %) sampled; the sink counts what herald exported.
    for traced in ["herald-trace1", "herald-trace100"] {
        assert_eq!(scenarios(traced), ["fanout"], "{traced}");
    }
    let tracing_of = |system: &str| {
        &results
            .iter()
            .find(|r| r["system"] == system)
            .expect("a traced result")["tracing"]
    };
    let (all, some) = (tracing_of("herald-trace100"), tracing_of("herald-trace1"));
    let events = all["events_published"].as_u64().unwrap();
    assert!(events >= 300, "{all}");
    // 3 spans per event and one `herald.write` for each of its 2 sessions.
    assert_eq!(all["spans_received"].as_u64().unwrap(), 5 * events, "{all}");
    assert_eq!(all["malformed"], 0, "{all}");
    // 1 %: a few events of ~300 at most (ratio sampling on random trace ids).
    assert!(
        some["spans_received"].as_u64().unwrap() < events / 2,
        "{some}"
    );
    for system in ["herald", "limit", "herald-trace1", "herald-trace100"] {
        let fanout = results
            .iter()
            .find(|r| r["system"] == system && r["scenario"] == "fanout")
            .unwrap();
        assert_eq!(fanout["steps"][0]["events_published"], 200, "{system}");
        assert_eq!(fanout["steps"][0]["deliveries"], 400, "{system}");
        assert_eq!(fanout["ramp_end"], "last rate", "{system}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "the quick benchmark took {:?}",
        started.elapsed()
    );
}
