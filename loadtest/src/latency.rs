//! Scenario "latency" and its ramp ("fan-out"): sessions over one or more aliases (and
//! nodes), kept open across one or more *steps*. In each step probe events are published
//! open-loop at a target rate (round-robin over the aliases, on NATS or Redis); every
//! session records, per probe it receives, the time from publish to receipt. A ramp stops
//! at the first step whose p99 is above the limit or that lost probes; the highest
//! deliveries/s of a passing step is the maximum sustainable rate, and an optional last
//! step runs at half of it. Lost, duplicated, reordered and misrouted probes are counted
//! per step (all must be 0).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::probe::{self, Receipt};
use crate::procfs::{self, Process, Usage};
use crate::publisher::Publisher;
use crate::report::{cdf_ms, micros_histogram, Percentiles};
use crate::session::{self, Failures, Session, System, Target, MAX_SESSIONS};
use crate::spread::Placement;

/// Most probes one step may publish.
pub const MAX_EVENTS: u64 = 10_000_000;
/// Most steps in one run.
pub const MAX_STEPS: usize = 32;
/// Highest target rate, events per second (0 means "as fast as possible").
pub const MAX_RATE: f64 = 1_000_000.0;
/// How often the end of a step checks whether every probe has arrived.
const COMPLETION_POLL: Duration = Duration::from_millis(10);
/// Pause between steps (lets the previous step's last frames and timers settle).
const BETWEEN_STEPS: Duration = Duration::from_millis(300);
/// Descriptors the generator needs besides its sessions.
const SPARE_FDS: usize = 64;
/// Latency histograms per step, sharded by session to keep lock contention low.
const SHARDS: usize = 16;
/// Deadline for a session to send its close frame at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One step: `events` probes at `rate` per second (0 = as fast as possible).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    /// Target publish rate, events/s.
    pub rate: f64,
    /// Probes to publish.
    pub events: u64,
}

impl Step {
    /// A step of `secs` seconds at `rate`, at most `max_events` (and at least 1) probes.
    pub fn timed(rate: f64, secs: f64, max_events: u64) -> Step {
        Step {
            rate,
            events: ((rate * secs).round() as u64).clamp(1, max_events.max(1)),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Name of the scenario in the report (`latency`, `fanout`, `big-payload`, `two-nodes`).
    pub scenario: String,
    /// The nodes (one system); the sessions of each alias alternate over them.
    pub targets: Vec<Target>,
    /// `nats://…` or `redis://…` (loopback) where probes are published.
    pub publish_url: String,
    /// Aliases the probes are spread over (probe `n` goes to alias `n % len`).
    pub aliases: Vec<String>,
    /// Sessions per alias (each receives every probe of its alias).
    pub sessions_per_alias: usize,
    /// Loopback source addresses for the sessions.
    pub sources: Vec<IpAddr>,
    /// Sessions connecting at the same time.
    pub concurrency: usize,
    /// The steps, in order (one for a plain latency run, increasing rates for a ramp).
    pub steps: Vec<Step>,
    /// Stop after the first step whose p99 exceeds this (milliseconds) or that lost probes.
    pub stop_above_p99_ms: Option<f64>,
    /// End the ramp after a passing step whose server processes used at least this much
    /// CPU (percent of one core, summed): the server is saturated, a faster step would
    /// only queue. Meaningful only when they are pinned to one core.
    pub stop_at_server_cpu_percent: Option<f64>,
    /// After the steps, one more of this many seconds at half the best passing step's rate.
    pub half_step_secs: Option<f64>,
    /// Size of each probe's `message.eml`, bytes.
    pub eml_bytes: usize,
    /// Wait between the last `connected` and the first publish.
    pub settle: Duration,
    /// How long after a step's last publish its missing probes are still waited for.
    pub drain_timeout: Duration,
    /// The system's server processes (RSS and CPU).
    pub server_pids: Vec<u32>,
    /// The bus processes behind them (nats-server for herald, Redis for the Node reference).
    pub bus_pids: Vec<u32>,
}

/// One step's result.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// `ramp` (or a single step), `retry` (a failed ramp step, once more) or `half` (at
    /// 50% of the maximum sustainable rate).
    pub kind: &'static str,
    /// Target rate, events/s (0 = open-loop maximum).
    pub target_rate: f64,
    /// Probes published per second, measured.
    pub achieved_rate: f64,
    /// Deliveries per second offered: achieved rate × sessions per alias.
    pub offered_deliveries_per_sec: f64,
    /// Probes published.
    pub events_published: u64,
    /// Deliveries expected: every probe to every session of its alias.
    pub deliveries_expected: u64,
    /// Distinct probes received over all sessions by the end of the step.
    pub deliveries: u64,
    /// Deliveries per second, first publish to last receipt.
    pub deliveries_per_sec: f64,
    /// Expected but not received by the end of the step's drain time.
    pub lost: u64,
    /// Received more than once by the same session.
    pub duplicated: u64,
    /// Received after a later probe of the same alias (per-alias order is guaranteed).
    pub reordered: u64,
    /// Received by a session of another alias.
    pub misrouted: u64,
    /// Publish → receipt, milliseconds.
    pub latency_ms: Percentiles,
    /// `[milliseconds, quantile]` points of the latency distribution.
    pub latency_cdf: Vec<[f64; 2]>,
    /// How late the publisher was against its schedule, milliseconds.
    pub publish_lag_ms: Percentiles,
    /// Server processes (summed) from the first publish to the end of the step.
    pub server: Option<Usage>,
    /// Bus processes (summed) over the same time.
    pub bus: Option<Usage>,
    /// Deliveries per CPU-second of the server processes.
    pub deliveries_per_server_cpu_sec: Option<f64>,
    /// Deliveries per CPU-second of the server and bus processes together.
    pub deliveries_per_total_cpu_sec: Option<f64>,
    /// The load generator's CPU over the same time, percent of one core.
    pub generator_cpu_percent: f64,
    /// No loss, and p99 within the limit (when there is one).
    pub passed: bool,
}

/// The result, as written to `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Scenario name ([`LatencyOptions::scenario`]).
    pub scenario: String,
    /// The system under test.
    pub system: System,
    /// Nodes the sessions were spread over.
    pub nodes: usize,
    /// Sessions that connected.
    pub sessions: usize,
    /// Sessions per alias.
    pub sessions_per_alias: usize,
    /// Aliases the probes were spread over.
    pub aliases: usize,
    /// Bytes of `message.eml` per probe.
    pub eml_bytes: usize,
    /// Seconds to connect every session.
    pub connect_secs: f64,
    /// The p99 limit of the ramp, milliseconds.
    pub p99_limit_ms: Option<f64>,
    /// Every step run, in order.
    pub steps: Vec<StepReport>,
    /// Index in `steps` of the passing ramp step with the most deliveries/s.
    pub max_sustainable_step: Option<usize>,
    /// Index in `steps` of the step at half of the maximum sustainable rate.
    pub half_step: Option<usize>,
    /// Why the ramp ended: `p99 or loss over the limit`, `server CPU saturated`, or
    /// `last rate` (the rate list ran out: the maximum is at least the last rate).
    pub ramp_end: Option<&'static str>,
    /// Lost, duplicated, reordered, misrouted over all steps.
    pub lost: u64,
    /// See `lost`.
    pub duplicated: u64,
    /// See `lost`.
    pub reordered: u64,
    /// See `lost`.
    pub misrouted: u64,
    /// Sessions that closed or failed before the end.
    pub disconnected: usize,
    /// Failed connects.
    pub failures: Failures,
}

impl LatencyReport {
    /// No failed connect, disconnect, loss, duplicate, reorder or misroute in any step.
    /// (A ramp's last step may miss its p99 limit: that is how the ramp ends.)
    pub fn clean(&self) -> bool {
        self.failures.total() == 0
            && self.disconnected == 0
            && self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.misrouted == 0
    }
}

/// Shared state of one step, filled in by the session readers.
struct StepState {
    events: u64,
    aliases: usize,
    shards: Vec<Mutex<Histogram<u64>>>,
    unique: AtomicU64,
    last_receipt: AtomicU64,
    duplicated: AtomicU64,
    reordered: AtomicU64,
    misrouted: AtomicU64,
}

impl StepState {
    fn new(events: u64, aliases: usize) -> StepState {
        StepState {
            events,
            aliases,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(micros_histogram()))
                .collect(),
            unique: AtomicU64::new(0),
            last_receipt: AtomicU64::new(0),
            duplicated: AtomicU64::new(0),
            reordered: AtomicU64::new(0),
            misrouted: AtomicU64::new(0),
        }
    }

    fn histogram(&self) -> Histogram<u64> {
        let mut merged = micros_histogram();
        for shard in &self.shards {
            let shard = shard.lock().expect("histogram lock");
            merged.add(&*shard).expect("same bounds");
        }
        merged
    }
}

/// The steps published so far; probe run ids are `<run>.<step index>`.
struct Board {
    run: String,
    steps: RwLock<Vec<Arc<StepState>>>,
}

impl Board {
    fn step_of(&self, receipt: &Receipt) -> Option<(usize, Arc<StepState>)> {
        let run = receipt.loadtest_run.as_deref()?;
        let index: usize = run
            .strip_prefix(&self.run)?
            .strip_prefix('.')?
            .parse()
            .ok()?;
        let steps = self.steps.read().expect("board lock");
        Some((index, Arc::clone(steps.get(index)?)))
    }
}

/// Probes of alias index `alias` among `events` spread over `aliases`.
fn probes_for(alias: usize, aliases: usize, events: u64) -> u64 {
    let (alias, aliases) = (alias as u64, aliases as u64);
    if alias >= events {
        0
    } else {
        (events - alias).div_ceil(aliases)
    }
}

/// What one session has seen of one step.
struct SeenStep {
    state: Arc<StepState>,
    /// Times each of its alias's probes arrived, indexed by `n / aliases`.
    seen: Vec<u8>,
    highest: Option<u64>,
}

/// Reads one session until `stop`, recording every probe; `true` if it disconnected.
async fn read_probes(
    mut session: Session,
    placement: Placement,
    board: Arc<Board>,
    mut stop: watch::Receiver<bool>,
) -> bool {
    let mut steps: Vec<Option<SeenStep>> = Vec::new();
    let mut receipts = Vec::new();
    let shard = placement.session % SHARDS;
    let disconnected = loop {
        let open = tokio::select! {
            open = session.read(&mut receipts) => open,
            _ = stop.changed() => break false,
        };
        let received = probe::unix_micros();
        for receipt in receipts.drain(..) {
            let Some((index, state)) = board.step_of(&receipt) else {
                continue;
            };
            let (Some(n), Some(sent)) = (receipt.n, receipt.sent_at_micros) else {
                continue;
            };
            if receipt.event != probe::EVENT {
                continue;
            }
            if n >= state.events || (n % state.aliases as u64) as usize != placement.alias {
                state.misrouted.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if steps.len() <= index {
                steps.resize_with(index + 1, || None);
            }
            let step = steps[index].get_or_insert_with(|| SeenStep {
                seen: vec![0; probes_for(placement.alias, state.aliases, state.events) as usize],
                state,
                highest: None,
            });
            step.state.shards[shard]
                .lock()
                .expect("histogram lock")
                .saturating_record(received.saturating_sub(sent));
            if step.highest.is_some_and(|h| n < h) {
                step.state.reordered.fetch_add(1, Ordering::Relaxed);
            }
            step.highest = step.highest.max(Some(n));
            let count = &mut step.seen[(n / step.state.aliases as u64) as usize];
            *count = count.saturating_add(1);
            if *count == 1 {
                step.state.unique.fetch_add(1, Ordering::Relaxed);
                step.state
                    .last_receipt
                    .fetch_max(received, Ordering::Relaxed);
            } else {
                step.state.duplicated.fetch_add(1, Ordering::Relaxed);
            }
        }
        if !open {
            break true;
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, session.close()).await;
    disconnected
}

/// Waits (at most `timeout`) until a step's probes have all arrived.
async fn wait_for_backlog(state: &StepState, expected: u64, timeout: Duration) {
    let deadline = tokio::time::Instant::now() + timeout;
    while state.unique.load(Ordering::Relaxed) < expected && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(COMPLETION_POLL).await;
    }
}

/// What the publisher did in one step.
struct Published {
    count: u64,
    lag_us: Histogram<u64>,
    first_micros: u64,
    elapsed: Duration,
}

/// Publishes one step open-loop: probe `i` is due at `start + i / rate` whatever happened
/// to earlier ones; it carries the time it was actually sent, and how late that was is
/// recorded separately (so a stalled publisher shows up instead of hiding).
async fn publish(
    publisher: &mut Publisher,
    aliases: &[String],
    step: Step,
    run: &str,
    eml: &str,
) -> anyhow::Result<Published> {
    let period = (step.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / step.rate));
    let mut lag_us = micros_histogram();
    let start = tokio::time::Instant::now();
    let first_micros = probe::unix_micros();
    for n in 0..step.events {
        if let Some(period) = period {
            let due = start + period.mul_f64(n as f64);
            tokio::time::sleep_until(due).await;
            lag_us.saturating_record(due.elapsed().as_micros() as u64);
        }
        let alias = &aliases[(n % aliases.len() as u64) as usize];
        let body = probe::encode(alias, run, n, probe::unix_micros(), eml);
        publisher.publish(alias, body).await?;
    }
    publisher.flush().await?;
    Ok(Published {
        count: step.events,
        lag_us,
        first_micros,
        elapsed: start.elapsed(),
    })
}

/// Checks the options before anything is opened.
fn validate(options: &LatencyOptions) -> anyhow::Result<usize> {
    let sessions = options.aliases.len() * options.sessions_per_alias;
    if sessions == 0 || sessions > MAX_SESSIONS {
        bail!("aliases × sessions per alias must be 1..={MAX_SESSIONS}");
    }
    if options.targets.is_empty() {
        bail!("give at least one server URL");
    }
    if options.steps.is_empty() || options.steps.len() > MAX_STEPS {
        bail!("1..={MAX_STEPS} steps");
    }
    for step in &options.steps {
        if step.events == 0 || step.events > MAX_EVENTS {
            bail!("events per step must be 1..={MAX_EVENTS}");
        }
        if !(0.0..=MAX_RATE).contains(&step.rate) {
            bail!("rates must be 0 (as fast as possible) up to {MAX_RATE} events/s");
        }
    }
    Ok(sessions)
}

/// Runs the scenario; the sessions are closed before it returns.
pub async fn run(options: LatencyOptions) -> anyhow::Result<LatencyReport> {
    let sessions = validate(&options)?;
    procfs::ensure_fd_room(Process::Myself, sessions + SPARE_FDS, "the load generator")?;
    let mut publisher = Publisher::connect(&options.publish_url).await?;

    let board = Arc::new(Board {
        run: format!("r{}", probe::unix_micros()),
        steps: RwLock::new(Vec::new()),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Alias index of every session that connected.
    let connected_aliases = Mutex::new(Vec::with_capacity(sessions));
    let opened = session::open_sessions(
        &options.targets,
        &options.aliases,
        &options.sources,
        sessions,
        options.concurrency,
        |placement, session| {
            connected_aliases
                .lock()
                .expect("alias list lock")
                .push(placement.alias);
            read_probes(session, placement, Arc::clone(&board), stop_rx.clone())
        },
    )
    .await;
    if opened.handles.is_empty() {
        bail!("no session connected: {:?}", opened.failures.examples);
    }
    let connected_aliases = connected_aliases.into_inner().expect("alias list lock");
    tokio::time::sleep(options.settle).await;

    let eml = probe::eml(options.eml_bytes);
    let mut plan: Vec<(&'static str, Step)> = options.steps.iter().map(|&s| ("ramp", s)).collect();
    let mut reports: Vec<StepReport> = Vec::new();
    let mut states: Vec<Arc<StepState>> = Vec::new();
    let mut best: Option<usize> = None;
    let mut half = None;
    let mut ramp_end = None;
    let mut next = 0;
    while next < plan.len() {
        let (kind, step) = plan[next];
        let index = next;
        next += 1;
        let state = Arc::new(StepState::new(step.events, options.aliases.len()));
        board
            .steps
            .write()
            .expect("board lock")
            .push(Arc::clone(&state));
        states.push(Arc::clone(&state));
        let expected: u64 = connected_aliases
            .iter()
            .map(|&alias| probes_for(alias, options.aliases.len(), step.events))
            .sum();

        let server_before = procfs::sample_all(&options.server_pids)?;
        let bus_before = procfs::sample_all(&options.bus_pids)?;
        let generator_before = procfs::sample(Process::Myself)?;
        let run = format!("{}.{index}", board.run);
        let published = publish(&mut publisher, &options.aliases, step, &run, &eml).await?;
        let deadline = tokio::time::Instant::now() + options.drain_timeout;
        while state.unique.load(Ordering::Relaxed) < expected
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(COMPLETION_POLL).await;
        }
        let server = Usage::between(server_before, procfs::sample_all(&options.server_pids)?);
        let bus = Usage::between(bus_before, procfs::sample_all(&options.bus_pids)?);
        let generator = Usage::between(generator_before, procfs::sample(Process::Myself)?);

        let unique = state.unique.load(Ordering::Relaxed);
        let histogram = state.histogram();
        let latency = Percentiles::from_micros(&histogram);
        let span = state
            .last_receipt
            .load(Ordering::Relaxed)
            .saturating_sub(published.first_micros) as f64
            / 1e6;
        let achieved_rate =
            published.count as f64 / published.elapsed.as_secs_f64().max(f64::EPSILON);
        let lost = expected.saturating_sub(unique);
        let passed = lost == 0
            && options
                .stop_above_p99_ms
                .is_none_or(|limit| latency.p99 <= limit);
        let per_cpu = |cpu: f64| (cpu > 0.0).then(|| unique as f64 / cpu);
        let has_server = !options.server_pids.is_empty();
        let has_bus = !options.bus_pids.is_empty();
        reports.push(StepReport {
            kind,
            target_rate: step.rate,
            achieved_rate,
            offered_deliveries_per_sec: achieved_rate * options.sessions_per_alias as f64,
            events_published: published.count,
            deliveries_expected: expected,
            deliveries: unique,
            deliveries_per_sec: if span > 0.0 {
                unique as f64 / span
            } else {
                0.0
            },
            lost,
            duplicated: 0,
            reordered: 0,
            misrouted: 0,
            latency_ms: latency,
            latency_cdf: cdf_ms(&histogram),
            publish_lag_ms: Percentiles::from_micros(&published.lag_us),
            server: has_server.then_some(server),
            bus: has_bus.then_some(bus),
            deliveries_per_server_cpu_sec: if has_server {
                per_cpu(server.cpu_secs)
            } else {
                None
            },
            deliveries_per_total_cpu_sec: if has_server {
                per_cpu(server.cpu_secs + if has_bus { bus.cpu_secs } else { 0.0 })
            } else {
                None
            },
            generator_cpu_percent: generator.cpu_percent,
            passed,
        });
        if kind == "half" {
            half = Some(index);
            break;
        }
        if passed {
            let better = best.is_none_or(|b: usize| {
                reports[index].deliveries_per_sec > reports[b].deliveries_per_sec
            });
            if better {
                best = Some(index);
            }
        }
        // A ramp step that fails is repeated once (a transient stall — a GC pause, a disk
        // flush — should not end the ramp); failing again ends the ramp.
        let ramp_limit = options.stop_above_p99_ms.is_some();
        if !passed && ramp_limit && kind == "ramp" {
            wait_for_backlog(&state, expected, options.drain_timeout).await;
            plan.insert(next, ("retry", step));
            tokio::time::sleep(BETWEEN_STEPS).await;
            continue;
        }
        let saturated = passed
            && has_server
            && options
                .stop_at_server_cpu_percent
                .is_some_and(|limit| server.cpu_percent >= limit);
        let ramp_over = next == plan.len() || (!passed && ramp_limit) || saturated;
        if ramp_over && ramp_limit {
            ramp_end = Some(if !passed {
                "p99 or loss over the limit"
            } else if saturated {
                "server CPU saturated"
            } else {
                "last rate"
            });
        }
        if ramp_over {
            // Let a failed step's backlog drain before the half-rate step.
            wait_for_backlog(&state, expected, options.drain_timeout).await;
            if let (Some(secs), Some(b)) = (options.half_step_secs, best) {
                let rate = reports[b].target_rate / 2.0;
                plan.truncate(next);
                plan.push(("half", Step::timed(rate, secs, MAX_EVENTS)));
                next = plan.len() - 1;
            } else {
                break;
            }
        }
        tokio::time::sleep(BETWEEN_STEPS).await;
    }

    let _ = stop_tx.send(true);
    let mut disconnected = 0;
    for handle in opened.handles {
        disconnected += usize::from(handle.await.context("a session reader panicked")?);
    }
    for (report, state) in reports.iter_mut().zip(&states) {
        report.duplicated = state.duplicated.load(Ordering::Relaxed);
        report.reordered = state.reordered.load(Ordering::Relaxed);
        report.misrouted = state.misrouted.load(Ordering::Relaxed);
    }
    let sum = |f: fn(&StepReport) -> u64| reports.iter().map(f).sum::<u64>();
    // A ramp's failing last step ends the ramp; only the steps that count are judged.
    let judged: Vec<&StepReport> = reports
        .iter()
        .filter(|s| s.passed || options.stop_above_p99_ms.is_none() || s.kind == "half")
        .collect();
    Ok(LatencyReport {
        scenario: options.scenario.clone(),
        system: options.targets[0].system,
        nodes: options.targets.len(),
        sessions: sessions - opened.failures.total() as usize,
        sessions_per_alias: options.sessions_per_alias,
        aliases: options.aliases.len(),
        eml_bytes: options.eml_bytes,
        connect_secs: opened.elapsed.as_secs_f64(),
        p99_limit_ms: options.stop_above_p99_ms,
        max_sustainable_step: best,
        half_step: half,
        ramp_end,
        lost: judged.iter().map(|s| s.lost).sum(),
        duplicated: sum(|s| s.duplicated),
        reordered: sum(|s| s.reordered),
        misrouted: sum(|s| s.misrouted),
        disconnected,
        failures: opened.failures,
        steps: reports,
    })
}
