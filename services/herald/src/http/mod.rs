//! Plain HTTP endpoints: health, readiness, metrics, publishing and the browser demo.

pub mod demo;
pub mod publish;

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};

use crate::state::AppState;

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

/// `GET /readyz`: the bus is connected (to a NATS server herald supports) and the node
/// is not draining.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.draining.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("draining");
    }
    if let Some(problem) = state.bus.unsupported_server() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(problem);
    }
    if !state.bus.is_connected() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("bus disconnected");
    }
    HttpResponse::Ok().content_type("text/plain").body("ready")
}

/// `GET /metrics`: Prometheus text.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    if let Some(cluster) = &state.cluster {
        // Counted when scraped: the view changes on every connect in the cluster.
        crate::metrics::cluster_remote_leases(cluster.remote_leases());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.metrics.render())
}
