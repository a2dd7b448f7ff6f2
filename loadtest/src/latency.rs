//! Scenario "latency": sessions over one or more aliases; probe events published on NATS
//! open-loop at a target rate (round-robin over the aliases); every session records, per
//! probe it receives, the time from publish to receipt. Reports percentiles, deliveries
//! per second, and lost, duplicated, reordered and misrouted probes (all must be 0).

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::probe::{self, Receipt};
use crate::procfs::{self, Process, Usage};
use crate::report::{micros_histogram, Percentiles};
use crate::session::{self, Failures, Target, WsStream, MAX_SESSIONS};
use crate::spread::Placement;

/// Most probes one run may publish.
pub const MAX_EVENTS: u64 = 10_000_000;
/// Highest target rate, events per second (0 means "as fast as possible").
pub const MAX_RATE: f64 = 1_000_000.0;
/// How often the end of the run checks whether every probe has arrived.
const COMPLETION_POLL: Duration = Duration::from_millis(10);
/// Deadline for connecting to NATS.
const NATS_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Descriptors the generator needs besides its sessions.
const SPARE_FDS: usize = 64;

/// What to run.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// The server.
    pub target: Target,
    /// `nats://127.0.0.1:PORT` (loopback).
    pub nats_url: String,
    /// Aliases the probes are spread over (probe `n` goes to alias `n % len`).
    pub aliases: Vec<String>,
    /// Sessions per alias (each receives every probe of its alias).
    pub sessions_per_alias: usize,
    /// Loopback source addresses for the sessions.
    pub sources: Vec<IpAddr>,
    /// Sessions connecting at the same time.
    pub concurrency: usize,
    /// Probes to publish.
    pub events: u64,
    /// Target publish rate, events/s; 0 = as fast as the publisher can.
    pub rate: f64,
    /// Size of each probe's `message.eml`, bytes.
    pub eml_bytes: usize,
    /// Wait between the last `connected` and the first publish.
    pub settle: Duration,
    /// How long after the last publish missing probes are still waited for.
    pub drain_timeout: Duration,
    /// The server's pid, for RSS and CPU (optional).
    pub server_pid: Option<u32>,
}

/// The result, as written to `report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyReport {
    /// Always `"latency"`.
    pub scenario: &'static str,
    /// Sessions that connected.
    pub sessions: usize,
    /// Aliases the probes were spread over.
    pub aliases: usize,
    /// Bytes of `message.eml` per probe.
    pub eml_bytes: usize,
    /// Probes published.
    pub events_published: u64,
    /// Target rate, events/s (0 = open-loop maximum).
    pub target_rate: f64,
    /// Probes published per second, measured.
    pub achieved_rate: f64,
    /// Deliveries expected: every probe to every session of its alias.
    pub deliveries_expected: u64,
    /// Distinct probes received over all sessions.
    pub deliveries: u64,
    /// Deliveries per second, first publish to last receipt.
    pub deliveries_per_sec: f64,
    /// Expected but never received.
    pub lost: u64,
    /// Received more than once by the same session.
    pub duplicated: u64,
    /// Received after a later probe of the same alias (per-alias order is guaranteed).
    pub reordered: u64,
    /// Received by a session of another alias.
    pub misrouted: u64,
    /// Sessions that closed or failed before the end.
    pub disconnected: usize,
    /// Publish → receipt, milliseconds.
    pub latency_ms: Percentiles,
    /// How late the publisher was against its schedule, milliseconds.
    pub publish_lag_ms: Percentiles,
    /// Server memory and CPU from the first publish to the end of the wait for receipts.
    pub server: Option<Usage>,
    /// The load generator's CPU over the same time, percent of one core.
    pub generator_cpu_percent: f64,
    /// Failed connects.
    pub failures: Failures,
}

/// What one session saw.
struct Tally {
    latency_us: Histogram<u64>,
    /// Times each of its alias's probes arrived, indexed by `n / aliases`.
    seen: Vec<u8>,
    duplicated: u64,
    reordered: u64,
    misrouted: u64,
    disconnected: bool,
}

/// Shared between the session readers and the run.
struct Progress {
    /// Distinct (session, probe) deliveries so far.
    unique: AtomicU64,
    /// Unix microseconds of the latest receipt.
    last_receipt: AtomicU64,
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

/// Reads one session until `stop`, recording every probe of `run`.
async fn read_probes(
    mut ws: WsStream,
    placement: Placement,
    (aliases, events): (usize, u64),
    run: Arc<str>,
    progress: Arc<Progress>,
    mut stop: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally {
        latency_us: micros_histogram(),
        seen: vec![0; probes_for(placement.alias, aliases, events) as usize],
        duplicated: 0,
        reordered: 0,
        misrouted: 0,
        disconnected: false,
    };
    let mut highest: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            frame = ws.next() => frame,
            _ = stop.changed() => break,
        };
        let received = probe::unix_micros();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                tally.disconnected = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let Some((n, sent)) = Receipt::parse(text.as_str()).and_then(|r| r.probe_of(&run)) else {
            continue;
        };
        if n >= events || (n % aliases as u64) as usize != placement.alias {
            tally.misrouted += 1;
            continue;
        }
        tally
            .latency_us
            .saturating_record(received.saturating_sub(sent));
        if highest.is_some_and(|h| n < h) {
            tally.reordered += 1;
        }
        highest = highest.max(Some(n));
        let count = &mut tally.seen[(n / aliases as u64) as usize];
        *count = count.saturating_add(1);
        if *count == 1 {
            progress.unique.fetch_add(1, Ordering::Relaxed);
            progress.last_receipt.fetch_max(received, Ordering::Relaxed);
        } else {
            tally.duplicated += 1;
        }
    }
    let _ = ws.close(None).await;
    tally
}

/// What the publisher did.
struct Published {
    count: u64,
    lag_us: Histogram<u64>,
    first_micros: u64,
    elapsed: Duration,
}

/// Publishes the probes open-loop: probe `i` is due at `start + i / rate` whatever
/// happened to earlier ones; it carries the time it was actually sent, and how late that
/// was is recorded separately (so a stalled publisher shows up instead of hiding).
async fn publish(
    client: &async_nats::Client,
    options: &LatencyOptions,
    run: &str,
) -> anyhow::Result<Published> {
    let eml = probe::eml(options.eml_bytes);
    let subjects: Vec<String> = options.aliases.iter().map(|a| probe::subject(a)).collect();
    let period = (options.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / options.rate));
    let mut lag_us = micros_histogram();
    let start = tokio::time::Instant::now();
    let first_micros = probe::unix_micros();
    for n in 0..options.events {
        if let Some(period) = period {
            let due = start + period.mul_f64(n as f64);
            tokio::time::sleep_until(due).await;
            lag_us.saturating_record(due.elapsed().as_micros() as u64);
        }
        let alias = (n % options.aliases.len() as u64) as usize;
        let body = probe::encode(&options.aliases[alias], run, n, probe::unix_micros(), &eml);
        client
            .publish(subjects[alias].clone(), body.into())
            .await
            .context("publishing to NATS")?;
    }
    client.flush().await.context("flushing NATS")?;
    Ok(Published {
        count: options.events,
        lag_us,
        first_micros,
        elapsed: start.elapsed(),
    })
}

/// Runs the scenario; the sessions are closed before it returns.
pub async fn run(options: LatencyOptions) -> anyhow::Result<LatencyReport> {
    let sessions = options.aliases.len() * options.sessions_per_alias;
    if sessions == 0 || sessions > MAX_SESSIONS {
        bail!("aliases × sessions per alias must be 1..={MAX_SESSIONS}");
    }
    if options.events == 0 || options.events > MAX_EVENTS {
        bail!("--events must be 1..={MAX_EVENTS}");
    }
    if !(0.0..=MAX_RATE).contains(&options.rate) {
        bail!("--rate must be 0 (as fast as possible) up to {MAX_RATE} events/s");
    }
    ensure_loopback_nats(&options.nats_url)?;
    procfs::ensure_fd_room(Process::Myself, sessions + SPARE_FDS, "the load generator")?;
    let client = tokio::time::timeout(NATS_CONNECT_TIMEOUT, async_nats::connect(&options.nats_url))
        .await
        .context("NATS did not answer in time")?
        .with_context(|| format!("connecting to {}", options.nats_url))?;

    let run: Arc<str> = format!("r{}", probe::unix_micros()).into();
    let progress = Arc::new(Progress {
        unique: AtomicU64::new(0),
        last_receipt: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    // Deliveries expected: every probe of its alias, for every session that connects.
    let expected = AtomicU64::new(0);
    let opened = session::open_sessions(
        &options.target,
        &options.aliases,
        &options.sources,
        sessions,
        options.concurrency,
        |placement, ws| {
            expected.fetch_add(
                probes_for(placement.alias, options.aliases.len(), options.events),
                Ordering::Relaxed,
            );
            read_probes(
                ws,
                placement,
                (options.aliases.len(), options.events),
                Arc::clone(&run),
                Arc::clone(&progress),
                stop_rx.clone(),
            )
        },
    )
    .await;
    if opened.handles.is_empty() {
        bail!("no session connected: {:?}", opened.failures.examples);
    }
    tokio::time::sleep(options.settle).await;

    let server = options.server_pid.map(Process::Pid);
    let before = server.map(procfs::sample).transpose()?;
    let generator_before = procfs::sample(Process::Myself)?;
    let expected = expected.load(Ordering::Relaxed);
    let published = publish(&client, &options, &run).await?;
    let deadline = tokio::time::Instant::now() + options.drain_timeout;
    while progress.unique.load(Ordering::Relaxed) < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(COMPLETION_POLL).await;
    }
    let after = server.map(procfs::sample).transpose()?;
    let generator = Usage::between(generator_before, procfs::sample(Process::Myself)?);
    let _ = stop_tx.send(true);

    let mut latency_us = micros_histogram();
    let (mut duplicated, mut reordered, mut misrouted, mut disconnected, mut unique) =
        (0, 0, 0, 0, 0u64);
    for handle in opened.handles {
        let tally = handle.await.context("a session reader panicked")?;
        latency_us
            .add(&tally.latency_us)
            .context("merging histograms")?;
        unique += tally.seen.iter().filter(|&&c| c > 0).count() as u64;
        duplicated += tally.duplicated;
        reordered += tally.reordered;
        misrouted += tally.misrouted;
        disconnected += usize::from(tally.disconnected);
    }
    let last = progress.last_receipt.load(Ordering::Relaxed);
    let span = last.saturating_sub(published.first_micros) as f64 / 1e6;
    Ok(LatencyReport {
        scenario: "latency",
        sessions: sessions - opened.failures.total() as usize,
        aliases: options.aliases.len(),
        eml_bytes: options.eml_bytes,
        events_published: published.count,
        target_rate: options.rate,
        achieved_rate: published.count as f64 / published.elapsed.as_secs_f64().max(f64::EPSILON),
        deliveries_expected: expected,
        deliveries: unique,
        deliveries_per_sec: if span > 0.0 {
            unique as f64 / span
        } else {
            0.0
        },
        lost: expected.saturating_sub(unique),
        duplicated,
        reordered,
        misrouted,
        disconnected,
        latency_ms: Percentiles::from_micros(&latency_us),
        publish_lag_ms: Percentiles::from_micros(&published.lag_us),
        server: before.zip(after).map(|(b, a)| Usage::between(b, a)),
        generator_cpu_percent: generator.cpu_percent,
        failures: opened.failures,
    })
}

/// Refuses a NATS URL that is not on loopback.
fn ensure_loopback_nats(nats_url: &str) -> anyhow::Result<()> {
    let url =
        url::Url::parse(nats_url).with_context(|| format!("--nats {nats_url:?} is not a URL"))?;
    let host = url.host_str().unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "nats" || !loopback {
        bail!("--nats must be nats://<loopback address>:PORT (got {nats_url})");
    }
    Ok(())
}
