//! Every metric herald exports, named in one place (`GET /metrics`, Prometheus text).

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the global recorder; returns the handle `/metrics` renders from.
pub fn install() -> PrometheusHandle {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("herald_delivery_latency_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ],
        )
        .expect("static bucket list is valid")
        .install_recorder()
        .expect("the metrics recorder is installed once, at start")
}

/// A session opened (`delta` = 1) or closed (`delta` = -1) on `dialect`.
pub fn session_delta(dialect: &'static str, delta: f64) {
    gauge!("herald_sessions", "dialect" => dialect).increment(delta);
}

/// A registry actor started (1) or stopped (-1).
pub fn registry_delta(delta: f64) {
    gauge!("herald_registries").increment(delta);
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

/// Events sent again from the stream (`since` catch-up or reconnect gap fill).
pub fn events_replayed(n: u64) {
    counter!("herald_events_replayed_total").increment(n);
}

/// A bus body that did not decode.
pub fn bus_decode_error() {
    counter!("herald_bus_decode_errors_total").increment(1);
}

/// A refused credential.
pub fn auth_failure(dialect: &'static str) {
    counter!("herald_auth_failures_total", "dialect" => dialect).increment(1);
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
