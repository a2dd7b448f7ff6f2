//! `[server]`, `[shutdown]` and `[log]`: how the process listens, stops and logs.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize, Serializer};

use super::de;

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket listener binds (port 0 picks a free port).
    #[serde(deserialize_with = "de::address")]
    pub listen: SocketAddr,
    /// Optional second listener for `/metrics` only; empty (`None`) serves it on `listen`.
    #[serde(
        deserialize_with = "de::optional_address",
        serialize_with = "empty_when_none"
    )]
    pub metrics_listen: Option<SocketAddr>,
    /// Trust the last `X-Forwarded-For` entry as the client address (behind a proxy only).
    pub trust_proxy: bool,
    /// `Origin` values allowed to open WebSockets; empty allows any.
    pub allowed_origins: Vec<String>,
}

/// Prints an unset address as `""`, the spelling an operator writes for "none".
fn empty_when_none<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
    match addr {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_str(""),
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            metrics_listen: None,
            trust_proxy: false,
            allowed_origins: Vec::new(),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Seconds over which sessions are closed on SIGTERM; herald exits sooner once the
    /// last session is gone.
    pub drain_seconds: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { drain_seconds: 10 }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatSetting {
    /// Human-readable.
    #[default]
    Pretty,
    /// JSON lines.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// Level or EnvFilter directive.
    #[serde(deserialize_with = "de::log_level")]
    pub level: String,
    /// `pretty` or `json`.
    pub format: LogFormatSetting,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            level: "info".into(),
            format: LogFormatSetting::Pretty,
        }
    }
}
