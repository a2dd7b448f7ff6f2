//! `herald-loadtest`: see the crate docs (`src/lib.rs`) and `loadtest/README.md`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use herald_loadtest::idle::{self, IdleOptions, IdleReport};
use herald_loadtest::latency::{self, LatencyOptions, LatencyReport};
use herald_loadtest::nodeconfig::NodeConfig;
use herald_loadtest::report;
use herald_loadtest::session::Target;
use herald_loadtest::spread;

/// Load generator for herald's `/v1/ws` dialect (loopback only, bounded in count and time).
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
    /// Publish probes over NATS; report publish→receipt latency, lost and duplicated.
    Latency(LatencyArgs),
    /// Print a herald config (TOML) with one token over many aliases and high limits.
    NodeConfig(NodeConfigArgs),
    /// Combine scenario results (`--json` files) into report.md + report.json.
    Report(ReportArgs),
}

/// How sessions reach the server.
#[derive(Args)]
struct SessionArgs {
    /// `/v1/ws` URL of the node (loopback IP).
    #[arg(long)]
    url: String,
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
    fn target(&self) -> anyhow::Result<Target> {
        Target::new(
            &self.url,
            &self.token,
            Duration::from_secs(self.connect_timeout_secs),
        )
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
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    session: SessionArgs,
    /// NATS URL the node listens to (loopback).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Probes to publish.
    #[arg(long, default_value_t = 1000)]
    events: u64,
    /// Target publish rate, events/s; 0 = as fast as possible (open-loop max).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
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
    /// The herald process (for RSS and CPU), optional.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the result as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
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
    let l = &r.latency_ms;
    println!(
        "latency: {} probes at {:.0}/s (target {}) to {} sessions over {} aliases; {}/{} deliveries ({:.0}/s)",
        r.events_published,
        r.achieved_rate,
        r.target_rate,
        r.sessions,
        r.aliases,
        r.deliveries,
        r.deliveries_expected,
        r.deliveries_per_sec,
    );
    println!(
        "latency: publish->receipt ms p50 {:.3} p90 {:.3} p99 {:.3} p99.9 {:.3} max {:.3} (mean {:.3})",
        l.p50, l.p90, l.p99, l.p999, l.max, l.mean
    );
    println!(
        "latency: lost {} duplicated {} reordered {} misrouted {} disconnected {}; publisher lag p99 {:.3} ms max {:.3} ms",
        r.lost, r.duplicated, r.reordered, r.misrouted, r.disconnected, r.publish_lag_ms.p99, r.publish_lag_ms.max
    );
    if let Some(s) = &r.server {
        println!(
            "latency: server CPU {:.0}% of a core, RSS {:.1} MiB; generator CPU {:.0}%",
            s.cpu_percent,
            s.rss_after_bytes as f64 / 1048576.0,
            r.generator_cpu_percent
        );
    }
    if r.failures.total() > 0 {
        println!(
            "latency: failures {:?}, e.g. {:?}",
            r.failures.counts, r.failures.examples
        );
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    match cli.command {
        Command::Idle(args) => {
            let aliases = args.session.aliases(1000);
            let report = idle::run(IdleOptions {
                target: args.session.target()?,
                sources: args.session.sources(args.sessions)?,
                aliases,
                sessions: args.sessions,
                concurrency: args.session.concurrency,
                settle: Duration::from_secs(args.settle_secs),
                server_pid: args.server_pid,
            })
            .await?;
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
            let report = latency::run(LatencyOptions {
                target: args.session.target()?,
                nats_url: args.nats,
                sources: args.session.sources(sessions)?,
                aliases,
                sessions_per_alias: args.sessions_per_alias,
                concurrency: args.session.concurrency,
                events: args.events,
                rate: args.rate,
                eml_bytes: args.eml_bytes,
                settle: Duration::from_millis(args.settle_ms),
                drain_timeout: Duration::from_secs(args.drain_timeout_secs),
                server_pid: args.server_pid,
            })
            .await?;
            print_latency(&report);
            if let Some(path) = &args.json {
                report::write_json(path, &report)?;
            }
            Ok(report.failures.total() == 0
                && report.lost == 0
                && report.duplicated == 0
                && report.reordered == 0
                && report.misrouted == 0)
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
        Command::Report(args) => {
            let mut meta = serde_json::Map::new();
            for pair in &args.meta {
                let (key, value) = pair
                    .split_once('=')
                    .with_context(|| format!("--meta {pair:?} must be key=value"))?;
                meta.insert(key.to_owned(), value.into());
            }
            report::combine(&args.out, meta.into(), &args.inputs)?;
            println!(
                "wrote {0}/report.md and {0}/report.json",
                args.out.display()
            );
            Ok(true)
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
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
