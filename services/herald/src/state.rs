//! What every request handler and session shares.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::HttpRequest;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::auth::Authenticator;
use crate::bus::Bus;
use crate::cluster_limits::{ClusterLimits, Verdict};
use crate::config::Settings;
use crate::dialect::Refusal;
use crate::directory::Directory;
use crate::limits::Limits;
use crate::metrics;
use crate::registry::SessionId;

/// Node-wide state handed to handlers (`web::Data`) and sessions.
pub struct AppState {
    /// The validated configuration.
    pub settings: Arc<Settings>,
    /// The bus events arrive on.
    pub bus: Bus,
    /// Finds or starts registries.
    pub directory: Directory,
    /// The auth providers with their cache.
    pub auth: Arc<Authenticator>,
    /// Connection limits of this node.
    pub limits: Arc<Limits>,
    /// Cluster-wide limits (NATS mode only).
    pub cluster: Option<Arc<ClusterLimits>>,
    /// `/ws` node state: Ack counts, offline queues, presence.
    pub realtime: Arc<crate::dialect::realtime::RealtimeNode>,
    /// Set on SIGTERM: readiness off, upgrades refused.
    pub draining: AtomicBool,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Revoked aliases, tokens and users; every authenticated session watches them and
    /// closes with 4001 on its own.
    pub revocations: Arc<crate::control::Revocations>,
    /// Raised when the node starts draining or receives revocations: every session then
    /// looks at `draining` and `revocations` (see `dialect::lifecycle::Vigil`).
    pub signal: Signal,
}

/// Wakes every session at once, each to look at the node state it watches. One
/// `Notify` for all: a session waits on it with a future held inline, where a watch channel
/// per session would allocate a boxed future and a receiver each.
#[derive(Default)]
pub struct Signal(Arc<tokio::sync::Notify>);

impl Signal {
    /// Wakes every session waiting now; a session not waiting looks before it waits.
    pub fn raise(&self) {
        self.0.notify_waiters();
    }

    /// A future that resolves at the next [`Signal::raise`] once polled (or enabled).
    pub fn listen(&self) -> tokio::sync::futures::OwnedNotified {
        Arc::clone(&self.0).notified_owned()
    }
}

static NEXT_SESSION_ID: AtomicU64 = AtomicU64::new(1);

/// A node-unique session id.
pub fn next_session_id() -> SessionId {
    NEXT_SESSION_ID.fetch_add(1, Ordering::Relaxed)
}

impl AppState {
    /// Starts the drain: readiness off, upgrades refused, every session told.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.signal.raise();
    }

    /// Records a revocation and tells every session to check it.
    pub fn revoke(&self, revocation: crate::control::Revocation) {
        self.revocations.revoke(revocation);
        self.signal.raise();
    }

    /// The checks every dialect makes before authenticating: draining, Origin,
    /// failed-login block and per-address connection rate.
    pub fn admit(&self, req: &HttpRequest, ip: IpAddr) -> Result<(), Refusal> {
        if self.draining.load(Ordering::SeqCst) {
            metrics::connection_refused("draining");
            return Err(Refusal::Unavailable {
                reason: "this node is shutting down; reconnect to another node".into(),
                retry_after: 1,
            });
        }
        let allowed = &self.settings.server.allowed_origins;
        if !allowed.is_empty() {
            let origin = req
                .headers()
                .get(actix_web::http::header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            if let Some(origin) = origin {
                if !allowed.iter().any(|a| a == origin) {
                    metrics::connection_refused("origin");
                    return Err(Refusal::Forbidden(format!(
                        "origin {origin:?} is not in server.allowed_origins"
                    )));
                }
            }
        }
        if let Some(block) = self.limits.blocked(ip) {
            metrics::connection_refused("blocked");
            return Err(Refusal::TooMany {
                reason: "too many failed logins from this address; try again later".into(),
                retry_after: block.as_secs().max(1),
            });
        }
        self.limits.check_rate(ip).map_err(|wait| {
            metrics::connection_refused("rate");
            Refusal::TooMany {
                reason:
                    "too many connections from this address (limits.connections_per_ip_per_minute)"
                        .into(),
                retry_after: wait.as_secs().max(1),
            }
        })
    }

    /// The per-address connection rate across the cluster (after [`AppState::admit`]),
    /// judged from the node's view of the cluster: no round trip.
    pub fn admit_cluster(&self, ip: IpAddr) -> Result<(), Refusal> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        let per_minute = self.limits.settings.connections_per_ip_per_minute.get();
        if cluster.connection_attempt(ip, per_minute) == Verdict::Refused {
            metrics::connection_refused("rate");
            return Err(Refusal::TooMany {
                reason: "too many connections from this address across the cluster (limits.connections_per_ip_per_minute)".into(),
                retry_after: u64::from(60u32.div_ceil(per_minute)).max(1),
            });
        }
        Ok(())
    }
}
