//! Every metric herald exports, named in one place (`GET /metrics`, Prometheus text).

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::dialect::Dialect;

/// Reasons a notification is dropped (`herald_events_dropped_total{reason}`).
const DROP_REASONS: &[&str] = &["slow_consumer", "closed"];

/// Installs the global recorder and registers every series at zero (each dialect's too), so dashboards and
/// alerts see them before the first event; returns the handle `/metrics` renders from.
pub fn install() -> PrometheusHandle {
    let handle = build();
    describe();
    for dialect in Dialect::ALL {
        session_delta(dialect, 0.0);
        counter!("herald_auth_failures_total", "dialect" => dialect.label()).absolute(0);
    }
    for reason in DROP_REASONS {
        counter!("herald_events_dropped_total", "reason" => *reason).absolute(0);
    }
    for outcome in ["allow", "deny", "timeout", "error"] {
        counter!("herald_auth_callouts_total", "outcome" => outcome).absolute(0);
    }
    registry_delta(0.0);
    for name in [
        "herald_events_received_total",
        "herald_events_delivered_total",
        "herald_events_replayed_total",
        "herald_bus_decode_errors_total",
        "herald_slow_consumers_total",
    ] {
        counter!(name).absolute(0);
    }
    handle
}

/// HELP lines.
fn describe() {
    describe_gauge!("herald_sessions", "Open WebSocket sessions, by dialect.");
    describe_gauge!(
        "herald_registries",
        "Registry actors (routing keys with sessions on this node)."
    );
    describe_gauge!(
        "herald_cluster_remote_leases",
        "Other nodes' session leases in this node's view of the cluster (NATS mode; counted when scraped)."
    );
    describe_counter!(
        "herald_auth_callouts_total",
        "Auth callout requests, by outcome (allow, deny, timeout, error)."
    );
    describe_counter!(
        "herald_events_received_total",
        "Events received from the bus and decoded."
    );
    describe_counter!(
        "herald_events_delivered_total",
        "Notifications queued to sessions (one per session per event)."
    );
    describe_counter!(
        "herald_events_dropped_total",
        "Notifications not queued to a session, by reason."
    );
    describe_histogram!(
        "herald_delivery_latency_seconds",
        metrics::Unit::Seconds,
        "Publish timestamp to socket write, per notification written."
    );
    describe_histogram!(
        "herald_bus_delay_seconds",
        metrics::Unit::Seconds,
        "Stream store timestamp to the registry's receipt, per live event: the bus's share of herald_delivery_latency_seconds (millisecond resolution)."
    );
    describe_counter!(
        "herald_events_replayed_total",
        "Events sent again from the stream (since catch-up, reconnect gap fill)."
    );
    describe_counter!(
        "herald_bus_decode_errors_total",
        "Bus messages that did not decode and were skipped."
    );
    describe_counter!(
        "herald_auth_failures_total",
        "Refused credentials, by dialect."
    );
    describe_counter!(
        "herald_connections_refused_total",
        "Refused connections, by reason."
    );
    describe_counter!(
        "herald_slow_consumers_total",
        "Sessions closed for buffering more than limits.max_buffered_bytes."
    );
    describe_gauge!(
        "herald_bus_connected",
        "Bus connection state: 1 connected, 0 not."
    );
    describe_gauge!(
        "herald_bus_memory_bytes",
        "Bytes the in-process bus holds (events kept for replay, dedup ids), held to bus.memory.max_bytes."
    );
}

/// Buckets of the latency histograms, in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn build() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herald_delivery_latency_seconds".into()),
            LATENCY_BUCKETS,
        )
        .expect("static bucket list is valid")
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herald_bus_delay_seconds".into()),
            LATENCY_BUCKETS,
        )
        .expect("static bucket list is valid")
        .install_recorder()
        .expect("the metrics recorder is installed once, at start")
}

/// A session opened (`delta` = 1) or closed (`delta` = -1) on `dialect`.
pub fn session_delta(dialect: Dialect, delta: f64) {
    gauge!("herald_sessions", "dialect" => dialect.label()).increment(delta);
}

/// A registry actor started (1) or stopped (-1).
pub fn registry_delta(delta: f64) {
    gauge!("herald_registries").increment(delta);
}

/// Other nodes' session leases in this node's view of the cluster (NATS mode).
pub fn cluster_remote_leases(count: usize) {
    gauge!("herald_cluster_remote_leases").set(count as f64);
}

/// An event arrived from the bus and decoded.
pub fn event_received() {
    counter!("herald_events_received_total").increment(1);
}

/// `n` notifications were queued to sessions.
pub fn events_delivered(n: u64) {
    counter!("herald_events_delivered_total").increment(n);
}

/// A notification could not be queued to a session (slow consumer or closed).
pub fn event_dropped(reason: &'static str) {
    counter!("herald_events_dropped_total", "reason" => reason).increment(1);
}

/// Publish timestamp → socket write, for one notification.
pub fn delivery_latency(seconds: f64) {
    histogram!("herald_delivery_latency_seconds").record(seconds);
}

/// Stream store → registry receipt, for one live event.
pub fn bus_delay(seconds: f64) {
    histogram!("herald_bus_delay_seconds").record(seconds);
}

/// Events sent again from the stream (`since` catch-up or reconnect gap fill).
pub fn events_replayed(n: u64) {
    counter!("herald_events_replayed_total").increment(n);
}

/// A bus body that did not decode.
pub fn bus_decode_error() {
    counter!("herald_bus_decode_errors_total").increment(1);
}

/// A refused credential.
pub fn auth_failure(dialect: Dialect) {
    counter!("herald_auth_failures_total", "dialect" => dialect.label()).increment(1);
}

/// An auth callout's outcome: `allow`, `deny`, `timeout` or `error`.
pub fn auth_callout(outcome: &'static str) {
    counter!("herald_auth_callouts_total", "outcome" => outcome).increment(1);
}

/// A refused connection, by reason (rate, alias cap, node full, ...).
pub fn connection_refused(reason: &'static str) {
    counter!("herald_connections_refused_total", "reason" => reason).increment(1);
}

/// A session disconnected for buffering too much.
pub fn slow_consumer() {
    counter!("herald_slow_consumers_total").increment(1);
}

/// NATS connection state (1 connected, 0 not).
pub fn bus_connected(up: bool) {
    gauge!("herald_bus_connected").set(if up { 1.0 } else { 0.0 });
}

/// Bytes the in-process bus holds now.
pub fn bus_memory_bytes(bytes: usize) {
    gauge!("herald_bus_memory_bytes").set(bytes as f64);
}
