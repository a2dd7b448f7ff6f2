//! End-to-end tests: real `nats-server` and `herald` processes on free ports, real
//! WebSocket clients and NATS producers. One binary, so the suite compiles once.
//!
//! Run with `cargo build -p herald && cargo test -p herald-tests`. Needs `nats-server`
//! (`$NATS_SERVER`, `.venv/bin/nats-server` or `PATH`); a missing one fails the run.

mod abuse;
mod auth;
mod bus;
mod cli;
mod cluster;
mod cluster_limits;
mod delivery;
mod faults;
mod harness;
mod jmap;
mod lifecycle;
mod limits;
mod observability;
mod providers;
mod publish;
mod realtime;
mod replay;
mod rooms;
mod tracing;

use herald_tests::{NatsServer, Node, NodeConfig, Publisher};

/// One NATS server, one node on it, and a producer publishing straight to NATS.
pub struct NatsSetup {
    /// The node (dropped first).
    pub node: Node,
    /// A foreign producer connected to `nats`.
    pub publisher: Publisher,
    /// The NATS server.
    pub nats: NatsServer,
}

/// Starts NATS and one node on it, configured by `configure` from the NATS test defaults.
pub async fn nats_setup(configure: impl FnOnce(NodeConfig) -> NodeConfig) -> NatsSetup {
    let nats = NatsServer::start();
    let node = Node::start(configure(NodeConfig::nats(&[nats.url()]))).await;
    let publisher = Publisher::nats(&nats.url()).await;
    NatsSetup {
        node,
        publisher,
        nats,
    }
}

/// A node on the memory bus and a producer using its `POST /v1/publish`.
pub async fn memory_setup(configure: impl FnOnce(NodeConfig) -> NodeConfig) -> (Node, Publisher) {
    let node = Node::start(configure(NodeConfig::memory())).await;
    let publisher = Publisher::http(&node);
    (node, publisher)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_millis()).expect("ms fit in u64")
}

/// Whether `s` looks like a UUID (8-4-4-4-12 hex digits).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
