//! Test harness: starts real nats-server and herald processes on free ports and talks to
//! them like users do (WebSocket clients, NATS producers, HTTP).
//!
//! In the spirit of nats.rs's test harness and zero-to-production's `spawn_app`:
//!
//! - [`nats`]: [`NatsServer`] (single JetStream server, restartable) and [`NatsCluster`].
//! - [`node`]: [`Node`], a real `herald serve` process started from a [`NodeConfig`].
//! - [`client`]: `/v1/ws` WebSocket clients over tokio-tungstenite, and refusals.
//! - [`realtime`]: `/ws` clients, test JWTs and node configs for the realtime protocol.
//! - [`raw`]: a hand-rolled WebSocket client that never answers pings (dead clients).
//! - [`rooms`]: `/api/v1/ws/connect` clients and their JWTs.
//! - [`publisher`]: a foreign producer publishing envelopes to NATS or `POST /v1/publish`.
//! - [`metrics`]: a Prometheus text scrape.
//! - [`fixtures`]: the demo credentials and payload builders.
//!
//! Every process is killed when its handle is dropped, so a panicking test leaves nothing
//! behind.

pub mod client;
pub mod fixtures;
pub mod metrics;
pub mod nats;
pub mod node;
pub mod otlp;
pub mod publisher;
pub mod raw;
pub mod realtime;
pub mod rooms;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

pub use client::{Connect, Frame, Refusal, WsClient};
pub use metrics::Metrics;
pub use nats::{subscribe_live, NatsCluster, NatsServer};
pub use node::{Node, NodeConfig};
pub use otlp::{OtlpReceiver, ReceivedSpan};
pub use publisher::Publisher;
pub use raw::RawWs;

/// How long a test waits for something that should happen promptly (a frame, a close, a
/// process becoming ready). Generous: debug builds on a loaded 2-core machine are slow,
/// and a wait only lasts this long when the test is failing anyway.
pub const PROMPT: Duration = Duration::from_secs(10);

/// The workspace root (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent directory")
        .to_path_buf()
}

/// A TCP port on 127.0.0.1 that was free a moment ago, outside the kernel's range of
/// ephemeral ports (port 0's picks came from there, and a nats-server of a cluster test
/// once found its port taken by a connection's source port).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::LazyLock;
    // Below the kernel's ephemeral range (32768 and up by default): a port handed out
    // there could become an outgoing connection's source port before the server binds
    // it, and the server then fails to start. A counter from a per-process start keeps
    // one run's picks apart; the bind checks nobody else holds the port.
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: LazyLock<AtomicU32> =
        LazyLock::new(|| AtomicU32::new(std::process::id().wrapping_mul(7919) % SPAN));
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        let port = u16::try_from(FIRST + offset).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!(
        "no free port on 127.0.0.1 between {FIRST} and {}",
        FIRST + SPAN
    )
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
