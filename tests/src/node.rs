//! Real `herald serve` processes, configured through a complete TOML file.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tempfile::TempDir;
use toml::{Table, Value};

use crate::metrics::Metrics;
use crate::{workspace_root, PROMPT};

/// The embedded defaults of the node, the base of every test config.
const DEV_CONFIG: &str = include_str!("../../config/dev.toml");

/// The stdout line herald prints once its socket is bound.
const LISTENING_PREFIX: &str = "herald listening on http://";

/// The `herald` binary the tests run: `$HERALD_BIN` when set (scripts/test, CI, a binary
/// built elsewhere), else the one `cargo build -p herald` produces, built once per test
/// process so `cargo test` alone never runs a stale binary.
pub fn herald_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| match std::env::var_os("HERALD_BIN") {
            Some(path) => {
                let path = PathBuf::from(path);
                assert!(
                    path.is_file(),
                    "HERALD_BIN names {}, which is not a file: build it or unset HERALD_BIN",
                    path.display()
                );
                path
            }
            None => build_herald(),
        })
        .clone()
}

/// Runs `cargo build -p herald` (the cargo that runs the tests, same target dir and
/// profile as a contributor's own build) and returns the executable it reports.
///
/// Why not `CARGO_BIN_EXE_herald`: cargo only sets it for tests inside the `herald`
/// package, and moving the e2e suite there would make every unit-test run link it too.
fn build_herald() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "herald",
            "--bin",
            "herald",
            "--message-format=json-render-diagnostics",
        ])
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo runs (set HERALD_BIN to use a prebuilt herald instead)");
    assert!(
        output.status.success(),
        "`cargo build -p herald` failed ({}): fix the build above, or set HERALD_BIN",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "herald")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .expect("`cargo build -p herald` reports the herald executable")
}

/// A complete node configuration: `config/dev.toml` with test defaults, plus overrides.
///
/// Test defaults: listen on `127.0.0.1:0`, memory bus, generous per-IP connection and
/// failed-login limits (every test client comes from 127.0.0.1), a 1 s drain, `warn` logs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The whole config file, as a TOML table.
    table: Table,
    /// Extra environment variables for the process (`HERALD__SECTION__KEY`).
    env: Vec<(String, String)>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self::memory()
    }
}

impl NodeConfig {
    /// A node on the in-process bus.
    pub fn memory() -> Self {
        let table: Table = DEV_CONFIG.parse().expect("config/dev.toml is valid TOML");
        NodeConfig {
            table,
            env: Vec::new(),
        }
        .set("server.listen", "127.0.0.1:0")
        .set("bus.kind", "memory")
        .set("limits.connections_per_ip_per_minute", 1_000_000)
        .set("limits.failed_logins_per_ip", 1_000_000)
        .set("shutdown.drain_seconds", 1)
        .set("log.level", log_level())
    }

    /// A node on a NATS bus at `urls`.
    pub fn nats<S: AsRef<str>>(urls: &[S]) -> Self {
        let urls: Vec<Value> = urls.iter().map(|u| Value::from(u.as_ref())).collect();
        Self::memory()
            .set("bus.kind", "nats")
            .set("bus.nats.urls", Value::Array(urls))
    }

    /// Sets any key by its dotted path (`"limits.max_sessions_per_alias"`), creating tables
    /// on the way.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> Self {
        let mut keys: Vec<&str> = path.split('.').collect();
        let last = keys.pop().expect("a non-empty key path");
        let mut table = &mut self.table;
        for key in keys {
            let entry = table
                .entry(key.to_owned())
                .or_insert_with(|| Value::Table(Table::new()));
            table = entry
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key} in {path} is not a table in the config"));
        }
        table.insert(last.to_owned(), value.into());
        self
    }

    /// Sets an environment variable for the process (e.g. `HERALD__LOG__LEVEL`).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// `limits.max_sessions_per_alias`.
    pub fn max_sessions_per_alias(self, n: i64) -> Self {
        self.set("limits.max_sessions_per_alias", n)
    }

    /// `limits.max_sessions_total` (per node).
    pub fn max_sessions_total(self, n: i64) -> Self {
        self.set("limits.max_sessions_total", n)
    }

    /// `limits.connections_per_ip_per_minute`.
    pub fn connections_per_ip_per_minute(self, n: i64) -> Self {
        self.set("limits.connections_per_ip_per_minute", n)
    }

    /// `limits.max_client_frame_bytes`.
    pub fn max_client_frame_bytes(self, n: i64) -> Self {
        self.set("limits.max_client_frame_bytes", n)
    }

    /// `limits.max_buffered_bytes`.
    pub fn max_buffered_bytes(self, n: i64) -> Self {
        self.set("limits.max_buffered_bytes", n)
    }

    /// `limits.max_notification_bytes`.
    pub fn max_notification_bytes(self, n: i64) -> Self {
        self.set("limits.max_notification_bytes", n)
    }

    /// `limits.failed_logins_per_ip`.
    pub fn failed_logins_per_ip(self, n: i64) -> Self {
        self.set("limits.failed_logins_per_ip", n)
    }

    /// `forwardemail.ping_interval` (humantime, e.g. `"1s"`).
    pub fn ping_interval(self, interval: &str) -> Self {
        self.set("forwardemail.ping_interval", interval)
    }

    /// `forwardemail.auth_frame_timeout` (humantime, e.g. `"1s"`).
    pub fn auth_frame_timeout(self, timeout: &str) -> Self {
        self.set("forwardemail.auth_frame_timeout", timeout)
    }

    /// `forwardemail.allow_anonymous`.
    pub fn allow_anonymous(self, allow: bool) -> Self {
        self.set("forwardemail.allow_anonymous", allow)
    }

    /// `server.allowed_origins`.
    pub fn allowed_origins(self, origins: &[&str]) -> Self {
        let origins: Vec<Value> = origins.iter().map(|o| Value::from(*o)).collect();
        self.set("server.allowed_origins", Value::Array(origins))
    }

    /// The TOML text written to the node's config file.
    pub fn to_toml(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table always serialises")
    }
}

/// `log.level` for test nodes: `$HERALD_TEST_LOG_LEVEL`, else `info`.
fn log_level() -> String {
    std::env::var("HERALD_TEST_LOG_LEVEL").unwrap_or_else(|_| "info".to_owned())
}

/// A running `herald serve --config FILE` process, killed (SIGKILL) on drop.
///
/// Its stderr is echoed through `eprintln!` (so libtest shows it only for failing tests)
/// and kept in memory for [`Node::logs`].
pub struct Node {
    /// The process.
    child: Child,
    /// Where it listens (learnt from its stdout line).
    addr: SocketAddr,
    /// Holds the config file; removed on drop.
    _dir: TempDir,
    /// Every stderr line so far.
    logs: Arc<Mutex<Vec<String>>>,
    /// HTTP client for /metrics, /readyz, /v1/publish.
    http: reqwest::Client,
}

impl Node {
    /// Writes `config` to a temporary file, starts `herald serve --config FILE` and waits
    /// for its `herald listening on http://127.0.0.1:PORT` line.
    pub async fn start(config: NodeConfig) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("herald-node-")
            .tempdir()
            .expect("cannot create a temp dir for the node config");
        let path = dir.path().join("herald.toml");
        std::fs::write(&path, config.to_toml()).expect("cannot write the node config");

        let mut command = Command::new(herald_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .env_remove("HERALD_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Only this config applies: no HERALD__* overrides leak in from the developer's shell.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HERALD__") {
                command.env_remove(key);
            }
        }
        for (key, value) in &config.env {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", herald_binary().display()));

        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&logs);
        // std::thread::spawn inherits libtest's output capture, so these lines are shown
        // with a failing test and hidden otherwise.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("[herald] {line}");
                sink.lock().expect("log lock").push(line);
            }
        });

        let stdout = child.stdout.take().expect("piped stdout");
        let (port_tx, port_rx) = tokio::sync::oneshot::channel::<SocketAddr>();
        std::thread::spawn(move || {
            let mut port_tx = Some(port_tx);
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                    let addr = rest.trim_end_matches('/').parse::<SocketAddr>();
                    if let (Some(tx), Ok(addr)) = (port_tx.take(), addr) {
                        let _ = tx.send(addr);
                    }
                } else {
                    eprintln!("[herald stdout] {line}");
                }
            }
        });

        let addr = match tokio::time::timeout(PROMPT, port_rx).await {
            Ok(Ok(addr)) => addr,
            outcome => {
                let _ = child.kill();
                let status = child.wait().ok();
                let logs = logs.lock().expect("log lock").join("\n");
                panic!(
                    "herald did not print `{LISTENING_PREFIX}127.0.0.1:PORT` ({}; exit: {status:?}).\n\
                     config:\n{}\nstderr:\n{logs}",
                    if outcome.is_err() { "timed out" } else { "stdout closed" },
                    config.to_toml()
                );
            }
        };
        Node {
            child,
            addr,
            _dir: dir,
            logs,
            http: reqwest::Client::new(),
        }
    }

    /// The address herald listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `ws://127.0.0.1:PORT` + `path_and_query`.
    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{path_and_query}", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident set size in bytes (`VmRSS` in `/proc/<pid>/status`), the
    /// figure the abuse tests bound.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status of the node");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line in /proc/<pid>/status");
        kib * 1024
    }

    /// Every stderr line so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().expect("log lock").clone()
    }

    /// An HTTP client for this node.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// `GET path` → status code.
    pub async fn get_status(&self, path: &str) -> u16 {
        self.http
            .get(self.http_url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path} failed: {e}"))
            .status()
            .as_u16()
    }

    /// Scrapes `GET /metrics`.
    pub async fn metrics(&self) -> Metrics {
        let response = self
            .http
            .get(self.http_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics failed");
        assert_eq!(response.status().as_u16(), 200, "GET /metrics status");
        Metrics::parse(&response.text().await.expect("GET /metrics body"))
    }

    /// The sum of every series of `name` in /metrics (0 when absent).
    pub async fn metric(&self, name: &str) -> f64 {
        self.metrics().await.sum(name)
    }

    /// Waits until the sum of `name`'s series satisfies `ok`; returns the value.
    pub async fn wait_metric(&self, name: &str, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        crate::eventually(PROMPT, what, || async {
            let value = self.metric(name).await;
            ok(value).then_some(value)
        })
        .await
    }

    /// Waits until `ok` holds for the other nodes' session leases in this node's view of
    /// the cluster (`herald_cluster_remote_leases`): what it counts against the caps.
    pub async fn wait_remote_leases(&self, what: &str, ok: impl Fn(f64) -> bool) -> f64 {
        self.wait_metric("herald_cluster_remote_leases", what, ok)
            .await
    }

    /// `POST /v1/publish` with `Authorization: Bearer token` and a raw body.
    pub async fn publish_raw(&self, token: &str, body: Vec<u8>) -> reqwest::Response {
        self.http
            .post(self.http_url("/v1/publish"))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("POST /v1/publish failed")
    }

    /// Sends SIGKILL and waits for the exit.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (graceful shutdown); see [`Node::wait_exit`].
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("cannot run kill");
        assert!(status.success(), "kill -TERM {} failed", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
