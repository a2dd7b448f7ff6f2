//! Scenario "idle-cluster": idle sessions beyond what one process may hold (50,000 in the
//! full benchmark; one process may hold ~19,990 file descriptors here). The sessions are
//! split over several server processes (herald nodes on one NATS, a NATS cluster, Node
//! processes on one Redis) and driven by several generator processes, each a child
//! `herald-loadtest idle --hold` with its own slice of the sessions and of the source
//! addresses, connecting to one server process.
//!
//! Protocol with a generator (stdout lines, stdin): it prints `progress N` while
//! connecting (at every tenth of its share), then `ready N` once its sessions are
//! connected and it has measured its own server, and holds them until its stdin closes;
//! then it closes them and writes its [`IdleReport`] as JSON. This process measures the
//! servers (ΣRSS, CPU, descriptors) and the kernel's `Slab` before the first generator
//! starts and `settle` after the last one is ready, while every session is held, and
//! combines the generators' reports into one.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::idle::IdleReport;
use crate::procfs::{self, Process, Usage};
use crate::session::{Failures, System, MAX_SESSIONS};

/// The scenario's name in results and the report.
pub const SCENARIO: &str = "idle-cluster";
/// Connecting may take this long, plus [`MIN_CONNECT_RATE`]'s time for the largest share.
const CONNECT_GRACE: Duration = Duration::from_secs(30);
/// Sessions per second a generator must at least sustain before the run is abandoned.
const MIN_CONNECT_RATE: f64 = 100.0;
/// How long generators may take to close their sessions and write their results.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterIdleOptions {
    /// The `herald-loadtest` binary the generators run.
    pub generator: PathBuf,
    /// The system the servers are.
    pub system: System,
    /// WebSocket URL of every server process.
    pub urls: Vec<String>,
    /// Pid of every server process, in the order of `urls`.
    pub server_pids: Vec<u32>,
    /// The bus behind them (herald's nats-server, Redis), for its CPU; may be empty.
    pub bus_pids: Vec<u32>,
    /// Sessions in all.
    pub sessions: usize,
    /// Aliases every generator spreads its sessions over (`a0000`…).
    pub aliases: usize,
    /// Loopback source addresses, split between the generators.
    pub sources: Vec<IpAddr>,
    /// Sessions connecting at the same time, per generator.
    pub concurrency: usize,
    /// Deadline per session for connect + handshake.
    pub connect_timeout: Duration,
    /// Wait after the last generator is ready before measuring.
    pub settle: Duration,
    /// Pin the generators to this CPU (`taskset -c`).
    pub cpu: Option<usize>,
    /// Where each generator's log goes (`{name}-gen{g}.log`).
    pub logs: PathBuf,
    /// Where each generator's JSON result goes (`{name}-gen{g}.json`).
    pub raw: PathBuf,
    /// Prefix of those files.
    pub name: String,
}

/// The combined result: an [`IdleReport`] over every server process (`server` is summed
/// over them, `bytes_per_session` = ΣΔRSS / sessions) plus what only this scenario has.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterIdleReport {
    /// The sums; `connect_secs` runs from starting the generators to the last one ready.
    #[serde(flatten)]
    pub idle: IdleReport,
    /// Server processes.
    pub nodes: usize,
    /// Generator processes.
    pub generators: usize,
    /// The bus's CPU while connecting (herald: its nats-server, which answers every
    /// node's cluster-wide limit checks), percent of one core; `None` without a bus.
    pub bus_cpu_percent_connecting: Option<f64>,
    /// RSS of each server process after the settle time, bytes.
    pub node_rss_after_bytes: Vec<u64>,
    /// `Slab` of `/proc/meminfo` before the first connect (machine-wide), bytes.
    pub kernel_slab_before_bytes: u64,
    /// `Slab` after the settle time, bytes.
    pub kernel_slab_after_bytes: u64,
    /// (ΣΔRSS + ΔSlab) / sessions connected. ΔSlab holds both ends of every loopback
    /// connection (the generators' sockets too) and whatever else the machine did.
    pub bytes_per_session_with_kernel: f64,
    /// Each generator's own report (its one server process, its share of the sessions).
    pub parts: Vec<IdleReport>,
}

/// One generator's share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    /// Sessions it opens.
    pub sessions: usize,
    /// Index of the server process it connects to.
    pub node: usize,
    /// Its source addresses.
    pub sources: Vec<IpAddr>,
}

/// Splits `sessions` over generators: as many as the per-process limit needs, at least one
/// per server process and a multiple of their number (every server gets the same load);
/// sessions as evenly as possible, sources in contiguous slices (shared round-robin when
/// there are fewer sources than generators).
pub fn shares(sessions: usize, nodes: usize, sources: &[IpAddr]) -> Vec<Share> {
    let nodes = nodes.max(1);
    let generators = sessions.div_ceil(MAX_SESSIONS).div_ceil(nodes).max(1) * nodes;
    (0..generators)
        .map(|g| {
            let slice = if sources.len() >= generators {
                let per = sources.len() / generators;
                sources[g * per..(g + 1) * per].to_vec()
            } else {
                vec![sources[g % sources.len()]]
            };
            Share {
                sessions: sessions / generators + usize::from(g < sessions % generators),
                node: g % nodes,
                sources: slice,
            }
        })
        .collect()
}

/// What a generator's reader task saw.
enum Event {
    Progress { generator: usize, connected: usize },
    Ready { generator: usize, connected: usize },
    Ended { generator: usize },
}

/// A started generator.
struct Generator {
    child: Child,
    stdin: Option<ChildStdin>,
    json: PathBuf,
    log: PathBuf,
}

/// Starts generator `g` with its share; its stdout lines go to `events` and its log.
fn spawn_generator(
    options: &ClusterIdleOptions,
    g: usize,
    share: &Share,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<Generator> {
    let log = options.logs.join(format!("{}-gen{g}.log", options.name));
    let json = options.raw.join(format!("{}-gen{g}.json", options.name));
    let log_file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let sources = share
        .sources
        .iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut command = match options.cpu {
        Some(cpu) => {
            let mut c = Command::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&options.generator);
            c
        }
        None => Command::new(&options.generator),
    };
    command
        .arg("idle")
        .args(["--system", options.system.name()])
        .args(["--url", &options.urls[share.node]])
        .args(["--server-pid", &options.server_pids[share.node].to_string()])
        .args(["--sessions", &share.sessions.to_string()])
        .args(["--aliases", &options.aliases.to_string()])
        .args(["--sources", &sources])
        .args(["--concurrency", &options.concurrency.to_string()])
        .args([
            "--connect-timeout-secs",
            &options.connect_timeout.as_secs().max(1).to_string(),
        ])
        .args(["--settle-secs", "0", "--hold", "--json"])
        .arg(&json)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log_file.try_clone()?)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {}", options.generator.display()))?;
    let stdout = child.stdout.take().context("generator stdout")?;
    let stdin = child.stdin.take();
    tokio::spawn(async move {
        let mut log_file = log_file;
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = writeln!(log_file, "{line}");
            let mut words = line.split_whitespace();
            let (word, count) = (words.next(), words.next().and_then(|n| n.parse().ok()));
            let event = match (word, count) {
                (Some("progress"), Some(connected)) => Event::Progress {
                    generator: g,
                    connected,
                },
                (Some("ready"), Some(connected)) => Event::Ready {
                    generator: g,
                    connected,
                },
                _ => continue,
            };
            let _ = events.send(event);
        }
        let _ = events.send(Event::Ended { generator: g });
    });
    Ok(Generator {
        child,
        stdin,
        json,
        log,
    })
}

/// Reads a generator's result once it has exited.
fn read_part(json: &Path, log: &Path) -> anyhow::Result<IdleReport> {
    let text = std::fs::read_to_string(json).with_context(|| {
        format!(
            "a generator wrote no result ({}); see {}",
            json.display(),
            log.display()
        )
    })?;
    serde_json::from_str(&text).with_context(|| format!("{} is not an idle result", json.display()))
}

/// Runs the scenario; every generator has exited when it returns.
pub async fn run(options: ClusterIdleOptions) -> anyhow::Result<ClusterIdleReport> {
    if options.urls.is_empty() || options.urls.len() != options.server_pids.len() {
        bail!("one URL and one pid per server process");
    }
    if options.sessions == 0 || options.sources.is_empty() {
        bail!("idle-cluster needs sessions and source addresses");
    }
    let nodes = options.urls.len();
    let shares = shares(options.sessions, nodes, &options.sources);
    let largest = shares.iter().map(|s| s.sessions).max().unwrap_or(0);
    let deadline = CONNECT_GRACE + Duration::from_secs_f64(largest as f64 / MIN_CONNECT_RATE);

    let slab_before = procfs::meminfo_bytes("Slab")?;
    let before = procfs::sample_all(&options.server_pids)?;
    let bus_before = procfs::sample_all(&options.bus_pids)?;
    let started = Instant::now();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut generators = Vec::with_capacity(shares.len());
    for (g, share) in shares.iter().enumerate() {
        generators.push(spawn_generator(&options, g, share, events_tx.clone())?);
    }
    drop(events_tx);

    // Until every generator is ready (or gone): the ΣRSS curve at every progress line.
    let mut progress = vec![0usize; shares.len()];
    let mut done = vec![false; shares.len()];
    let mut rss_curve = vec![[0, before.rss]];
    let mut timed_out = false;
    while done.contains(&false) {
        let Ok(event) = tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + deadline),
            events.recv(),
        )
        .await
        else {
            timed_out = true;
            break;
        };
        match event {
            Some(Event::Progress {
                generator,
                connected,
            }) => {
                progress[generator] = connected;
                if let Ok(rss) = procfs::sample_all(&options.server_pids) {
                    rss_curve.push([progress.iter().sum::<usize>() as u64, rss.rss]);
                }
            }
            Some(Event::Ready {
                generator,
                connected,
            }) => {
                progress[generator] = connected;
                done[generator] = true;
            }
            // A generator that ends before `ready` failed; its log says why.
            Some(Event::Ended { generator }) => done[generator] = true,
            None => break,
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected_at = procfs::sample_all(&options.server_pids)?;
    let bus_cpu_percent_connecting = (!options.bus_pids.is_empty())
        .then(|| procfs::sample_all(&options.bus_pids))
        .transpose()?
        .map(|bus| Usage::between(bus_before, bus).cpu_percent);
    tokio::time::sleep(options.settle).await;
    let after = procfs::sample_all(&options.server_pids)?;
    let slab_after = procfs::meminfo_bytes("Slab")?;
    let node_rss_after_bytes = options
        .server_pids
        .iter()
        .map(|&pid| procfs::rss_bytes(Process::Pid(pid)).unwrap_or(0))
        .collect();
    let server_open_fds = options
        .server_pids
        .iter()
        .map(|&pid| procfs::open_fds(Process::Pid(pid)).unwrap_or(0))
        .sum();
    rss_curve.push([progress.iter().sum::<usize>() as u64, after.rss]);

    // Release: every generator closes its sessions when its stdin closes.
    for generator in &mut generators {
        generator.stdin = None;
    }
    if timed_out {
        for generator in &mut generators {
            let _ = generator.child.kill().await;
        }
        bail!(
            "the generators were not all ready within {deadline:?} (connected so far: {}); see {}",
            progress.iter().sum::<usize>(),
            options.logs.display()
        );
    }
    let mut parts = Vec::with_capacity(generators.len());
    for generator in &mut generators {
        if tokio::time::timeout(EXIT_TIMEOUT, generator.child.wait())
            .await
            .is_err()
        {
            let _ = generator.child.kill().await;
        }
        parts.push(read_part(&generator.json, &generator.log)?);
    }
    Ok(combine(
        &options,
        parts,
        Combined {
            before,
            connected_at,
            after,
            connect_secs,
            bus_cpu_percent_connecting,
            server_open_fds,
            node_rss_after_bytes,
            slab: (slab_before, slab_after),
            rss_curve,
        },
    ))
}

/// What this process measured.
struct Combined {
    before: procfs::Sample,
    connected_at: procfs::Sample,
    after: procfs::Sample,
    connect_secs: f64,
    bus_cpu_percent_connecting: Option<f64>,
    server_open_fds: usize,
    node_rss_after_bytes: Vec<u64>,
    slab: (u64, u64),
    rss_curve: Vec<[u64; 2]>,
}

/// The generators' reports and this process's measurements as one result.
fn combine(options: &ClusterIdleOptions, parts: Vec<IdleReport>, m: Combined) -> ClusterIdleReport {
    let sum = |f: fn(&IdleReport) -> usize| parts.iter().map(f).sum::<usize>();
    let connected = sum(|p| p.sessions_connected);
    let mut failures = Failures::default();
    for part in &parts {
        failures.merge(part.failures.clone());
    }
    let per_session = |bytes: f64| {
        if connected > 0 {
            bytes / connected as f64
        } else {
            0.0
        }
    };
    let delta_rss = m.after.rss as f64 - m.before.rss as f64;
    let delta_slab = m.slab.1 as f64 - m.slab.0 as f64;
    let idle = IdleReport {
        scenario: SCENARIO.into(),
        system: options.system,
        sessions_requested: options.sessions,
        sessions_connected: connected,
        sessions_alive_at_measure: sum(|p| p.sessions_alive_at_measure),
        aliases: options.aliases,
        sources: sum(|p| p.sources),
        concurrency: sum(|p| p.concurrency),
        connect_secs: m.connect_secs,
        connect_rate_per_sec: if m.connect_secs > 0.0 {
            connected as f64 / m.connect_secs
        } else {
            0.0
        },
        server: Usage::between(m.before, m.after),
        server_cpu_percent_connecting: Usage::between(m.before, m.connected_at).cpu_percent,
        generator_cpu_percent_connecting: parts
            .iter()
            .map(|p| p.generator_cpu_percent_connecting)
            .sum(),
        server_open_fds: m.server_open_fds,
        bytes_per_session: per_session(delta_rss),
        rss_curve: m.rss_curve,
        failures,
    };
    ClusterIdleReport {
        idle,
        nodes: options.urls.len(),
        generators: parts.len(),
        bus_cpu_percent_connecting: m.bus_cpu_percent_connecting,
        node_rss_after_bytes: m.node_rss_after_bytes,
        kernel_slab_before_bytes: m.slab.0,
        kernel_slab_after_bytes: m.slab.1,
        bytes_per_session_with_kernel: per_session(delta_rss + delta_slab),
        parts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spread::auto_sources;

    #[test]
    fn fifty_thousand_sessions_take_three_generators_one_per_node() {
        let sources = auto_sources(50_000);
        let shares = shares(50_000, 3, &sources);
        assert_eq!(shares.len(), 3);
        assert_eq!(shares.iter().map(|s| s.sessions).sum::<usize>(), 50_000);
        assert!(shares.iter().all(|s| s.sessions <= MAX_SESSIONS));
        assert_eq!(shares.iter().map(|s| s.node).collect::<Vec<_>>(), [0, 1, 2]);
        // 50 sources, 16 each, none shared.
        assert!(shares.iter().all(|s| s.sources.len() == 16));
        assert_ne!(shares[0].sources[0], shares[1].sources[0]);
    }

    #[test]
    fn more_sessions_than_three_generators_hold_take_a_multiple_of_the_nodes() {
        let shares = shares(60_000, 3, &auto_sources(60_000));
        assert_eq!(shares.len(), 6);
        assert!(shares.iter().all(|s| s.sessions == 10_000));
        assert_eq!(shares[4].node, 1);
    }

    #[test]
    fn few_sources_are_shared() {
        let one = auto_sources(90);
        let shares = shares(91, 3, &one);
        assert_eq!(
            shares.iter().map(|s| s.sessions).collect::<Vec<_>>(),
            [31, 30, 30]
        );
        assert!(shares.iter().all(|s| s.sources == one));
    }
}
