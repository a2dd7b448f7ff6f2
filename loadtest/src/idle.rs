//! Scenario "idle" (and "connect storm"): open N authenticated sessions, wait until every
//! one has its `connected` frame (raw NATS: its subscription confirmed), and report the
//! rate at which sessions were accepted, the server's resident memory per idle session
//! (ΔRSS / N), and RSS at every tenth of N on the way.
//!
//! [`run_with`] also lets the caller see the progress and hold the sessions open after
//! the measurement: that is how one generator process of [`crate::cluster`] runs
//! (`idle --hold`), so a parent can measure several servers while every generator holds
//! its share.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::procfs::{self, Process, Usage};
use crate::session::{self, Failures, Session, System, Target, MAX_SESSIONS};

/// How long a session may take to send its close frame at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors the generator needs besides its sessions (runtime, stdio, NATS).
const SPARE_FDS: usize = 64;
/// Points of the RSS-vs-sessions curve.
const CURVE_POINTS: usize = 10;

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// The server (one node).
    pub target: Target,
    /// Alias ids the sessions authenticate as (round-robin).
    pub aliases: Vec<String>,
    /// Loopback source addresses (round-robin).
    pub sources: Vec<IpAddr>,
    /// Sessions to open.
    pub sessions: usize,
    /// Sessions connecting at the same time.
    pub concurrency: usize,
    /// Wait after the last `connected` before reading RSS (lets allocations settle).
    pub settle: Duration,
    /// The server's pid, for RSS and CPU.
    pub server_pid: u32,
    /// Scenario name in the report (`idle`).
    pub scenario: String,
}

/// The result, as written to `report.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdleReport {
    /// `idle` (or the name given).
    pub scenario: String,
    /// The system under test.
    pub system: System,
    /// Sessions asked for.
    pub sessions_requested: usize,
    /// Sessions that got `connected`.
    pub sessions_connected: usize,
    /// Sessions still open when RSS was read after the settle time.
    pub sessions_alive_at_measure: usize,
    /// Aliases the sessions were spread over.
    pub aliases: usize,
    /// Source addresses the sessions were spread over.
    pub sources: usize,
    /// Connects in flight at once.
    pub concurrency: usize,
    /// Seconds from the first connect to the last `connected`.
    pub connect_secs: f64,
    /// Sessions connected per second.
    pub connect_rate_per_sec: f64,
    /// Server memory and CPU from before the first connect to after the settle time.
    pub server: Usage,
    /// Server CPU while connecting, percent of one core.
    pub server_cpu_percent_connecting: f64,
    /// The load generator's CPU while connecting, percent of one core (near 100 on its
    /// pinned core means the generator, not the server, set the connect rate).
    pub generator_cpu_percent_connecting: f64,
    /// Server file descriptors after the settle time.
    pub server_open_fds: usize,
    /// (RSS after − RSS before) / sessions connected.
    pub bytes_per_session: f64,
    /// `[sessions connected, server RSS bytes]` while connecting, and after the settle time.
    pub rss_curve: Vec<[u64; 2]>,
    /// Failed connects.
    pub failures: Failures,
}

/// Keeps a session open, answering pings, until `stop`; then closes it.
async fn hold(mut session: Session, mut stop: watch::Receiver<bool>, alive: Arc<AtomicUsize>) {
    let mut ignored = Vec::new();
    loop {
        tokio::select! {
            open = session.read(&mut ignored) => {
                ignored.clear();
                if !open {
                    break;
                }
            }
            _ = stop.changed() => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
                break;
            }
        }
    }
    alive.fetch_sub(1, Ordering::SeqCst);
}

/// Runs the scenario; the sessions are closed before it returns.
pub async fn run(options: IdleOptions) -> anyhow::Result<IdleReport> {
    run_with(options, |_| {}, |_| async {}).await
}

/// [`run`], calling `progress(sessions connected)` at every point of the RSS curve, and
/// awaiting `held(sessions open)` after the measurement, before the sessions are closed.
/// `sessions_alive_at_measure` is read once `held` is done: with a hold, it counts the
/// sessions that were still open when they were released.
pub async fn run_with<F: std::future::Future<Output = ()>>(
    options: IdleOptions,
    progress: impl Fn(usize),
    held: impl FnOnce(usize) -> F,
) -> anyhow::Result<IdleReport> {
    if options.sessions == 0 || options.sessions > MAX_SESSIONS {
        bail!("--sessions must be 1..={MAX_SESSIONS} (one file descriptor each)");
    }
    let server = Process::Pid(options.server_pid);
    procfs::ensure_fd_room(
        Process::Myself,
        options.sessions + SPARE_FDS,
        "the load generator",
    )?;
    procfs::ensure_fd_room(server, options.sessions, "the server")?;

    let before = procfs::sample(server)?;
    let generator_before = procfs::sample(Process::Myself)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let alive = Arc::new(AtomicUsize::new(0));
    let every = options.sessions.div_ceil(CURVE_POINTS).max(1);
    let curve = Mutex::new(vec![[0, before.rss]]);
    let opened = session::open_sessions(
        std::slice::from_ref(&options.target),
        &options.aliases,
        &options.sources,
        options.sessions,
        options.concurrency,
        |_placement, session| {
            let count = alive.fetch_add(1, Ordering::SeqCst) + 1;
            if count.is_multiple_of(every) {
                if let Ok(rss) = procfs::rss_bytes(server) {
                    curve.lock().expect("curve lock").push([count as u64, rss]);
                }
                progress(count);
            }
            hold(session, stop_rx.clone(), Arc::clone(&alive))
        },
    )
    .await;
    let connected_at = procfs::sample(server)?;
    let generator_connected_at = procfs::sample(Process::Myself)?;
    tokio::time::sleep(options.settle).await;
    let after = procfs::sample(server)?;
    let server_open_fds = procfs::open_fds(server).unwrap_or(0);
    let mut rss_curve = curve.into_inner().expect("curve lock");
    let alive_after = alive.load(Ordering::SeqCst);
    rss_curve.push([alive_after as u64, after.rss]);
    held(alive_after).await;
    let alive_at_measure = alive.load(Ordering::SeqCst);

    // Bounded: every holder closes within 2 × CLOSE_TIMEOUT of the stop signal.
    let _ = stop_tx.send(true);
    futures_util::future::join_all(opened.handles).await;

    let connected = options.sessions - opened.failures.total() as usize;
    let connect_secs = opened.elapsed.as_secs_f64();
    Ok(IdleReport {
        scenario: options.scenario.clone(),
        system: options.target.system,
        sessions_requested: options.sessions,
        sessions_connected: connected,
        sessions_alive_at_measure: alive_at_measure,
        aliases: options.aliases.len(),
        sources: options.sources.len(),
        concurrency: options.concurrency,
        connect_secs,
        connect_rate_per_sec: if connect_secs > 0.0 {
            connected as f64 / connect_secs
        } else {
            0.0
        },
        server: Usage::between(before, after),
        server_cpu_percent_connecting: Usage::between(before, connected_at).cpu_percent,
        generator_cpu_percent_connecting: Usage::between(generator_before, generator_connected_at)
            .cpu_percent,
        server_open_fds,
        bytes_per_session: if connected > 0 {
            (after.rss as f64 - before.rss as f64) / connected as f64
        } else {
            0.0
        },
        rss_curve,
        failures: opened.failures,
    })
}
