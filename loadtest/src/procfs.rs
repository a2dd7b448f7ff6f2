//! The server's resident memory, CPU time and file-descriptor limit, read from `/proc`.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// Kernel clock ticks per second (`getconf CLK_TCK`); 100 on every Linux this runs on.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;
/// Bytes per kB in `/proc/PID/status`.
const KIB: u64 = 1024;
/// Fields of `/proc/PID/stat` after the `(comm)` field: utime is the 12th, stime the 13th.
const UTIME_AFTER_COMM: usize = 11;
const STIME_AFTER_COMM: usize = 12;

/// A process to observe: a pid, or this process.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    /// `/proc/PID`.
    Pid(u32),
    /// `/proc/self`.
    Myself,
}

impl Process {
    fn path(self, file: &str) -> String {
        match self {
            Process::Pid(pid) => format!("/proc/{pid}/{file}"),
            Process::Myself => format!("/proc/self/{file}"),
        }
    }
}

/// Resident set size in bytes (`VmRSS`).
pub fn rss_bytes(process: Process) -> anyhow::Result<u64> {
    let path = process.path("status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .with_context(|| format!("no VmRSS line in {path}"))
}

/// A machine-wide `/proc/meminfo` field in bytes, e.g. `Slab` (kernel objects, among
/// them every socket's buffers and state).
pub fn meminfo_bytes(field: &str) -> anyhow::Result<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("reading /proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .with_context(|| format!("no {field} line in /proc/meminfo"))
}

/// User + system CPU time in seconds.
pub fn cpu_seconds(process: Process) -> anyhow::Result<f64> {
    let path = process.path("stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no (comm) field"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("{path}: field {index} after comm is not a number"))
    };
    let total = ticks(UTIME_AFTER_COMM)? + ticks(STIME_AFTER_COMM)?;
    Ok(total as f64 / CLOCK_TICKS_PER_SECOND)
}

/// Open file descriptors of the process (entries of `/proc/PID/fd`).
pub fn open_fds(process: Process) -> anyhow::Result<usize> {
    let path = process.path("fd");
    Ok(std::fs::read_dir(&path)
        .with_context(|| format!("listing {path}"))?
        .count())
}

/// The soft limit on open files (`Max open files` in `/proc/PID/limits`).
pub fn open_files_limit(process: Process) -> anyhow::Result<u64> {
    let path = process.path("limits");
    let limits = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no `Max open files` line in {path}"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .unwrap_or_default();
    if soft == "unlimited" {
        return Ok(u64::MAX);
    }
    soft.parse()
        .with_context(|| format!("{path}: `{line}` has no numeric soft limit"))
}

/// Fails early when `process` may not open `needed` more descriptors.
pub fn ensure_fd_room(process: Process, needed: usize, who: &str) -> anyhow::Result<()> {
    let limit = open_files_limit(process)?;
    let in_use = open_fds(process).unwrap_or(0) as u64;
    if in_use + needed as u64 > limit {
        bail!(
            "{who} may open {limit} files and has {in_use} open: {needed} more sessions do not fit \
             (raise `ulimit -n`, at most the hard limit, or use fewer sessions)"
        );
    }
    Ok(())
}

/// One reading of a process's memory and CPU.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it was taken.
    pub at: Instant,
    /// Resident set size, bytes.
    pub rss: u64,
    /// CPU seconds used so far.
    pub cpu: f64,
}

/// Reads RSS and CPU time now.
pub fn sample(process: Process) -> anyhow::Result<Sample> {
    Ok(Sample {
        at: Instant::now(),
        rss: rss_bytes(process)?,
        cpu: cpu_seconds(process)?,
    })
}

/// RSS and CPU time summed over several processes (the nodes of one system).
pub fn sample_all(pids: &[u32]) -> anyhow::Result<Sample> {
    let mut total = Sample {
        at: Instant::now(),
        rss: 0,
        cpu: 0.0,
    };
    for &pid in pids {
        let one = sample(Process::Pid(pid))?;
        total.rss += one.rss;
        total.cpu += one.cpu;
    }
    Ok(total)
}

/// The server between two samples, as reported.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Usage {
    /// RSS at the first sample, bytes.
    pub rss_before_bytes: u64,
    /// RSS at the second sample, bytes.
    pub rss_after_bytes: u64,
    /// CPU used between the samples, percent of one core.
    pub cpu_percent: f64,
    /// CPU seconds used between the samples (user + system).
    pub cpu_secs: f64,
    /// Seconds between the samples.
    pub wall_secs: f64,
}

impl Usage {
    /// Usage from `before` to `after`.
    pub fn between(before: Sample, after: Sample) -> Usage {
        let wall = after.at.duration_since(before.at).as_secs_f64();
        Usage {
            rss_before_bytes: before.rss,
            rss_after_bytes: after.rss,
            cpu_percent: if wall > 0.0 {
                100.0 * (after.cpu - before.cpu) / wall
            } else {
                0.0
            },
            cpu_secs: after.cpu - before.cpu,
            wall_secs: wall,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(rss_bytes(Process::Myself).unwrap() > 0);
        assert!(cpu_seconds(Process::Myself).unwrap() >= 0.0);
        assert!(open_files_limit(Process::Myself).unwrap() > 0);
        assert!(open_fds(Process::Myself).unwrap() > 0);
        assert!(meminfo_bytes("Slab").unwrap() > 0);
        assert!(meminfo_bytes("Sla").is_err());
    }
}
