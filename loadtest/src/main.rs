//! `herald-loadtest`: see the crate docs (`src/lib.rs`) and `loadtest/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_loadtest::bench::{self, BenchOptions, NodeTools, Pinning, Scenario, Sizes, Tools};
use herald_loadtest::idle::{self, IdleOptions, IdleReport};
use herald_loadtest::latency::{self, LatencyOptions, LatencyReport, Step};
use herald_loadtest::limit;
use herald_loadtest::nodeconfig::NodeConfig;
use herald_loadtest::otlpsink;
use herald_loadtest::report;
use herald_loadtest::session::{System, Target};
use herald_loadtest::spread;

/// Load generator and benchmark for herald's `/v1/ws` dialect and its peers (loopback
/// only, bounded in count and time).
#[derive(Parser)]
#[command(name = "herald-loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Open N idle sessions; report connect rate and server bytes per session.
    Idle(IdleArgs),
    /// Publish probes (NATS or Redis); report publish→receipt latency, lost and duplicated;
    /// with `--ramp`, find the maximum sustainable rate.
    Latency(LatencyArgs),
    /// The whole benchmark: start herald and its peers, run every scenario, write the report.
    Bench(BenchArgs),
    /// Print a herald config (TOML) with one token over many aliases and high limits.
    NodeConfig(NodeConfigArgs),
    /// Combine scenario results (`--json` files) into report.md + report.json.
    Report(ReportArgs),
    /// The `limit` system: the least a server can do (one thread, one NATS subscription,
    /// the same frame written to every socket of the alias); runs until killed.
    LimitServer(LimitServerArgs),
    /// The OTLP receiver of the tracing runs: answers `POST /v1/traces` and counts
    /// requests, spans and bytes (`GET /stats`); runs until killed.
    OtlpSink(OtlpSinkArgs),
}

#[derive(Args)]
struct OtlpSinkArgs {
    /// Address to accept OTLP/HTTP on (loopback).
    #[arg(long)]
    listen: std::net::SocketAddr,
}

#[derive(Args)]
struct LimitServerArgs {
    /// Address to accept `/v1/ws` upgrades on (loopback).
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// nats-server the probes are published to.
    #[arg(long)]
    nats: String,
}

/// How sessions reach the server.
#[derive(Args)]
struct SessionArgs {
    /// The system the URL points at (decides the handshake).
    #[arg(long, value_enum, default_value_t = System::Herald)]
    system: System,
    /// WebSocket URL of the node (loopback IP): herald / reference `…/v1/ws`, raw NATS the
    /// WebSocket listener. Repeatable for `latency`: the sessions of every alias alternate
    /// over the nodes.
    #[arg(long = "url", required = true)]
    url: Vec<String>,
    /// API token (Basic `token:`) covering every alias used.
    #[arg(long, default_value = "herald-demo-token")]
    token: String,
    /// Alias ids to use (repeatable); default: `--aliases` generated ids.
    #[arg(long = "alias")]
    alias: Vec<String>,
    /// Generated alias ids `{prefix}0000`… (as `node-config` writes); default 1000 for
    /// `idle`, 1 for `latency`.
    #[arg(long)]
    aliases: Option<usize>,
    /// Prefix of generated alias ids.
    #[arg(long, default_value = "a")]
    alias_prefix: String,
    /// Loopback source addresses, comma-separated; default 127.0.0.2, … one per 1,000 sessions.
    #[arg(long)]
    sources: Option<String>,
    /// Sessions connecting at the same time.
    #[arg(long, default_value_t = 128)]
    concurrency: usize,
    /// Deadline per session for TCP connect + upgrade + `connected`, seconds.
    #[arg(long, default_value_t = 10)]
    connect_timeout_secs: u64,
}

impl SessionArgs {
    fn targets(&self) -> anyhow::Result<Vec<Target>> {
        self.url
            .iter()
            .map(|url| {
                Target::new(
                    self.system,
                    url,
                    &self.token,
                    Duration::from_secs(self.connect_timeout_secs),
                )
            })
            .collect()
    }

    fn aliases(&self, default_count: usize) -> Vec<String> {
        if self.alias.is_empty() {
            spread::alias_ids(&self.alias_prefix, self.aliases.unwrap_or(default_count))
        } else {
            self.alias.clone()
        }
    }

    fn sources(&self, sessions: usize) -> anyhow::Result<Vec<std::net::IpAddr>> {
        self.sources
            .as_deref()
            .map_or_else(|| Ok(spread::auto_sources(sessions)), spread::parse_sources)
    }
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Sessions to open.
    #[arg(long)]
    sessions: usize,
    /// The herald process (for RSS and CPU).
    #[arg(long)]
    server_pid: u32,
    /// Seconds to wait after the last `connected` before reading RSS.
    #[arg(long, default_value_t = 2)]
    settle_secs: u64,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Be one generator of `bench`'s idle-cluster scenario: print `progress N` lines while
    /// connecting, `ready N` once connected and measured, then hold the sessions until
    /// stdin closes.
    #[arg(long)]
    hold: bool,
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// Where probes are published: `nats://…` (herald, raw NATS) or `redis://…` (the
    /// Forward Email reference, channel `herald:loadtest:ws`); loopback only.
    #[arg(long, alias = "nats", default_value = "nats://127.0.0.1:4222")]
    publish: String,
    /// Probes to publish (single step).
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Target publish rate, events/s; 0 = as fast as possible (open-loop max).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// A ramp instead of one step: comma-separated rates (events/s), each for
    /// `--step-secs`; stops above `--stop-p99-ms`, then runs one step at half the best.
    #[arg(long, value_delimiter = ',')]
    ramp: Vec<f64>,
    /// Seconds per ramp step.
    #[arg(long, default_value_t = 4.0)]
    step_secs: f64,
    /// The ramp stops after the first step with p99 above this (or with loss).
    #[arg(long, default_value_t = 100.0)]
    stop_p99_ms: f64,
    /// The ramp also stops after a passing step whose server processes (`--server-pid`)
    /// used this much CPU, percent of one core (for a server pinned to one core).
    #[arg(long)]
    stop_server_cpu_percent: Option<f64>,
    /// Sessions per alias.
    #[arg(long, default_value_t = 1)]
    sessions_per_alias: usize,
    /// Bytes of `message.eml` in each probe.
    #[arg(long, default_value_t = 256)]
    eml_bytes: usize,
    /// Milliseconds between the last `connected` and the first publish.
    #[arg(long, default_value_t = 500)]
    settle_ms: u64,
    /// Seconds to wait for missing probes after the last publish.
    #[arg(long, default_value_t = 10)]
    drain_timeout_secs: u64,
    /// The server processes (for RSS and CPU; repeatable), optional.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// The bus processes behind them (NATS, Redis; repeatable), optional.
    #[arg(long)]
    bus_pid: Vec<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args)]
struct BenchArgs {
    /// Output directory (report.md, report.json, *.svg, logs/, raw/).
    #[arg(long)]
    out: PathBuf,
    /// The herald binary.
    #[arg(long, env = "HERALD_BIN")]
    herald: PathBuf,
    /// nats-server.
    #[arg(long, env = "NATS_SERVER")]
    nats_server: PathBuf,
    /// node (for the Forward Email reference).
    #[arg(long, default_value = "node")]
    node: PathBuf,
    /// loadtest/baselines/forwardemail-node with `npm ci` done; without it that peer is skipped.
    #[arg(long)]
    forwardemail_dir: Option<PathBuf>,
    /// redis-server (for the Forward Email reference).
    #[arg(long, default_value = "redis-server")]
    redis_server: PathBuf,
    /// Systems to run (comma-separated); default every one whose tools are given.
    #[arg(long, value_enum, value_delimiter = ',')]
    systems: Vec<System>,
    /// Quick sizes: one run, fewer sessions and steps (< 3 minutes).
    #[arg(long)]
    quick: bool,
    /// Runs per system (default 3, quick 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Scenarios to run (comma-separated); default all (idle-cluster is sized 0, so
    /// skipped, with `--quick` unless `--idle-cluster-sessions` is given).
    #[arg(long, value_enum, value_delimiter = ',')]
    scenarios: Vec<Scenario>,
    /// Idle sessions (default 10,000, quick 2,000).
    #[arg(long)]
    idle_sessions: Option<usize>,
    /// Idle-cluster sessions over `--cluster-nodes` server processes (default 50,000;
    /// quick 0 = skipped).
    #[arg(long)]
    idle_cluster_sessions: Option<usize>,
    /// Server processes (and generator processes) of idle-cluster.
    #[arg(long, default_value_t = 3)]
    cluster_nodes: usize,
    /// Pin server processes to this CPU and bus processes to `--bus-cpu` (taskset).
    #[arg(long)]
    server_cpu: Option<usize>,
    /// CPU of the bus processes (with `--server-cpu`).
    #[arg(long, default_value_t = 1)]
    bus_cpu: usize,
    /// Also run herald's fan-out with OTLP span export on, at 1 % and 100 % sampling
    /// (systems `herald-trace1`, `herald-trace100`, each with its own OTLP sink), and
    /// report tracing's price beside tracing off.
    #[arg(long)]
    tracing: bool,
    /// `key=value` lines for the report header (repeatable).
    #[arg(long = "meta")]
    meta: Vec<String>,
}

#[derive(Args)]
struct NodeConfigArgs {
    /// `server.listen`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// NATS URL (bus.kind = nats); without it the in-process bus.
    #[arg(long)]
    nats: Option<String>,
    /// API token covering every alias.
    #[arg(long, default_value = "herald-demo-token")]
    token: String,
    /// Aliases `{prefix}0000`… the token covers.
    #[arg(long, default_value_t = 1000)]
    aliases: usize,
    /// Prefix of alias ids.
    #[arg(long, default_value = "a")]
    alias_prefix: String,
    /// `log.level` of the node.
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Write here instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct ReportArgs {
    /// Directory for report.md and report.json.
    #[arg(long)]
    out: PathBuf,
    /// `key=value` lines for the report header (repeatable).
    #[arg(long = "meta")]
    meta: Vec<String>,
    /// Scenario results written with `--json`.
    inputs: Vec<PathBuf>,
}

fn print_idle(r: &IdleReport) {
    println!(
        "idle: {}/{} sessions connected in {:.2}s ({:.0}/s; CPU while connecting: server {:.0}%, \
         generator {:.0}%), {} alive at measure",
        r.sessions_connected,
        r.sessions_requested,
        r.connect_secs,
        r.connect_rate_per_sec,
        r.server_cpu_percent_connecting,
        r.generator_cpu_percent_connecting,
        r.sessions_alive_at_measure,
    );
    println!(
        "idle: server RSS {:.1} MiB -> {:.1} MiB = {:.0} bytes per idle session; {} fds open",
        r.server.rss_before_bytes as f64 / 1048576.0,
        r.server.rss_after_bytes as f64 / 1048576.0,
        r.bytes_per_session,
        r.server_open_fds,
    );
    if r.failures.total() > 0 {
        println!(
            "idle: failures {:?}, e.g. {:?}",
            r.failures.counts, r.failures.examples
        );
    }
}

fn print_latency(r: &LatencyReport) {
    println!(
        "{} ({}): {} sessions over {} aliases on {} node(s), connected in {:.2}s",
        r.scenario, r.system, r.sessions, r.aliases, r.nodes, r.connect_secs
    );
    for (i, s) in r.steps.iter().enumerate() {
        let l = &s.latency_ms;
        println!(
            "  step {i} ({}{}): {} probes at {:.0}/s (target {}); {}/{} deliveries ({:.0}/s); \
             ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; lost {} dup {} reordered {} misrouted {}; \
             server CPU {}; generator CPU {:.0}%{}",
            s.kind,
            if r.max_sustainable_step == Some(i) { ", max" } else { "" },
            s.events_published,
            s.achieved_rate,
            s.target_rate,
            s.deliveries,
            s.deliveries_expected,
            s.deliveries_per_sec,
            l.p50,
            l.p99,
            l.p999,
            l.max,
            s.lost,
            s.duplicated,
            s.reordered,
            s.misrouted,
            s.server.map_or("-".into(), |u| format!("{:.0}%", u.cpu_percent)),
            s.generator_cpu_percent,
            if s.passed { "" } else { " [over the limit]" },
        );
    }
    if r.failures.total() > 0 {
        println!(
            "latency: failures {:?}, e.g. {:?}",
            r.failures.counts, r.failures.examples
        );
    }
}

/// `idle --hold`: says `ready N` (N sessions open), then waits until stdin closes.
async fn hold_until_stdin_closes(open: usize) {
    use tokio::io::AsyncReadExt;
    println!("ready {open}");
    let mut sink = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut sink).await;
}

/// `key=value` pairs.
fn parse_meta(pairs: &[String]) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut meta = serde_json::Map::new();
    for pair in pairs {
        let (key, value) = pair
            .split_once('=')
            .with_context(|| format!("--meta {pair:?} must be key=value"))?;
        meta.insert(key.to_owned(), value.into());
    }
    Ok(meta)
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Idle(args) => {
            let aliases = args.session.aliases(1000);
            let options = IdleOptions {
                target: args.session.targets()?.remove(0),
                sources: args.session.sources(args.sessions)?,
                aliases,
                sessions: args.sessions,
                concurrency: args.session.concurrency,
                settle: Duration::from_secs(args.settle_secs),
                server_pid: args.server_pid,
                scenario: "idle".into(),
            };
            let report = if args.hold {
                idle::run_with(
                    options,
                    |n| println!("progress {n}"),
                    hold_until_stdin_closes,
                )
                .await?
            } else {
                idle::run(options).await?
            };
            print_idle(&report);
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.failures.total() == 0
                && report.sessions_alive_at_measure == report.sessions_connected)
        }
        Command::Latency(args) => {
            let aliases = args.session.aliases(1);
            let sessions = aliases.len() * args.sessions_per_alias;
            let ramp = !args.ramp.is_empty();
            let steps = if ramp {
                args.ramp
                    .iter()
                    .map(|&rate| Step::timed(rate, args.step_secs, latency::MAX_EVENTS))
                    .collect()
            } else {
                vec![Step {
                    rate: args.rate,
                    events: args.events,
                }]
            };
            let report = latency::run(LatencyOptions {
                scenario: if ramp { "fanout" } else { "latency" }.into(),
                targets: args.session.targets()?,
                publish_url: args.publish,
                sources: args.session.sources(sessions)?,
                aliases,
                sessions_per_alias: args.sessions_per_alias,
                concurrency: args.session.concurrency,
                steps,
                stop_above_p99_ms: ramp.then_some(args.stop_p99_ms),
                stop_at_server_cpu_percent: args.stop_server_cpu_percent.filter(|_| ramp),
                half_step_secs: ramp.then_some(args.step_secs),
                eml_bytes: args.eml_bytes,
                settle: Duration::from_millis(args.settle_ms),
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                server_pids: args.server_pid,
                bus_pids: args.bus_pid,
            })
            .await?;
            print_latency(&report);
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.clean())
        }
        Command::Bench(args) => {
            let mut sizes = if args.quick {
                Sizes::quick()
            } else {
                Sizes::full()
            };
            if let Some(runs) = args.runs {
                sizes.runs = runs;
            }
            if let Some(n) = args.idle_sessions {
                sizes.idle_sessions = n;
            }
            if let Some(n) = args.idle_cluster_sessions {
                sizes.cluster_idle_sessions = n;
            }
            sizes.cluster_nodes = args.cluster_nodes;
            let forwardemail = args.forwardemail_dir.map(|dir| NodeTools {
                node: args.node,
                dir,
                redis_server: args.redis_server,
            });
            let systems = if args.systems.is_empty() {
                System::ALL
                    .into_iter()
                    .filter(|s| *s != System::ForwardemailNode || forwardemail.is_some())
                    .collect()
            } else {
                args.systems
            };
            let outcome = bench::run(BenchOptions {
                tools: Tools {
                    herald: args.herald,
                    nats_server: args.nats_server,
                    generator: Some(
                        std::env::current_exe().context("locating herald-loadtest itself")?,
                    ),
                    forwardemail,
                },
                sizes,
                systems,
                scenarios: if args.scenarios.is_empty() {
                    Scenario::ALL.to_vec()
                } else {
                    args.scenarios
                },
                out: args.out,
                pin: args.server_cpu.map(|server_cpu| Pinning {
                    server_cpu,
                    bus_cpu: args.bus_cpu,
                }),
                tracing: args.tracing,
                meta: parse_meta(&args.meta)?,
            })
            .await?;
            println!("wrote {}", outcome.report_md.display());
            for problem in &outcome.problems {
                println!("problem: {problem}");
            }
            Ok(outcome.clean)
        }
        Command::NodeConfig(args) => {
            let toml = NodeConfig {
                listen: args.listen,
                nats_url: args.nats,
                token: args.token,
                alias_prefix: args.alias_prefix,
                aliases: args.aliases,
                log_level: args.log_level,
            }
            .to_toml();
            match &args.out {
                Some(path) => std::fs::write(path, toml)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => print!("{toml}"),
            }
            Ok(true)
        }
        Command::LimitServer(_) => unreachable!("limit-server runs on its own runtime"),
        Command::OtlpSink(_) => unreachable!("otlp-sink runs on its own runtime"),
        Command::Report(args) => {
            let meta = parse_meta(&args.meta)?;
            report::combine(&args.out, meta.into(), &args.inputs)?;
            println!(
                "wrote {0}/report.md and {0}/report.json",
                args.out.display()
            );
            Ok(true)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::LimitServer(args) = &cli.command {
        if let Err(error) = limit::run_blocking(args.listen, &args.nats) {
            eprintln!("herald-loadtest limit-server: {error:#}");
            return ExitCode::from(2);
        }
        return ExitCode::SUCCESS;
    }
    if let Command::OtlpSink(args) = &cli.command {
        if let Err(error) = otlpsink::run_blocking(args.listen) {
            eprintln!("herald-loadtest otlp-sink: {error:#}");
            return ExitCode::from(2);
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("herald-loadtest: starting the runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("herald-loadtest: the run completed with failures (see above)");
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("herald-loadtest: {error:#}");
            ExitCode::from(2)
        }
    }
}
