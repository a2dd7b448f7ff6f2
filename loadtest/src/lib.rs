//! `herald-loadtest`: a load generator and benchmark for herald's `/v1/ws` dialect and its
//! peers (raw NATS over WebSocket, a reference of Forward Email's Node.js architecture).
//!
//! It opens many authenticated WebSocket sessions (spread over many aliases and several
//! `127.0.0.x` source addresses, so one process is not limited by one address's ephemeral
//! ports), publishes probe events over NATS at a target rate, and measures what a user
//! of herald would feel: connect rate, publish→receipt latency, lost and duplicated
//! events, and the server's memory and CPU (read from `/proc`).
//!
//! Every scenario is bounded in count and time and talks only to loopback addresses.
//!
//! Modules:
//! - [`spread`]: which alias and source address each session uses.
//! - [`session`]: one session (bound socket, upgrade, `connected`) and opening many.
//! - [`probe`]: the probe event published over NATS and read back from the socket.
//! - [`procfs`]: server RSS, CPU time and file-descriptor limits from `/proc`.
//! - [`idle`]: scenario "idle sessions": bytes per idle session, connect rate.
//! - [`cluster`]: scenario "idle-cluster": idle sessions over several server and
//!   generator processes (beyond one process's file descriptors).
//! - [`latency`]: scenario "latency": publish→receipt percentiles, lost, duplicated.
//! - [`limit`]: the `limit` system, the least a server can do (`limit-server`).
//! - [`nodeconfig`]: a herald config with many aliases and high limits.
//! - [`otlpsink`]: the OTLP receiver of the tracing runs (`otlp-sink`): counts spans.
//! - [`report`]: percentiles, JSON results, and the combined `report.md`/`report.json`.
//! - [`plots`]: the report's SVG charts.
//! - [`natsproto`]: the NATS text protocol of the raw-NATS peer sessions.
//! - [`publisher`]: probes published on NATS or Redis.
//! - [`bench`]: the whole benchmark — herald and its peers started, scenarios run, report.

pub mod bench;
pub mod cluster;
pub mod idle;
pub mod latency;
pub mod limit;
pub mod natsproto;
pub mod nodeconfig;
pub mod otlpsink;
pub mod plots;
pub mod probe;
pub mod procfs;
pub mod publisher;
pub mod report;
pub mod session;
pub mod spread;
