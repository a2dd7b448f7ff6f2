//! `[bus]`: where events come from (the in-process bus or NATS with JetStream).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{de, ConfigError};

/// Which bus implementation carries events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// In-process bus: one node, no NATS.
    #[default]
    Memory,
    /// NATS (and JetStream): a cluster of nodes.
    Nats,
}

/// `[bus]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusSettings {
    /// `memory` or `nats`.
    pub kind: BusKind,
    /// How long events stay available for `since` replay.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub retention: Duration,
    /// Window in which a repeated `Nats-Msg-Id` is delivered once.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// In-process bus settings.
    pub memory: MemoryBusSettings,
    /// NATS connection settings.
    pub nats: NatsSettings,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            kind: BusKind::Memory,
            retention: Duration::from_secs(24 * 3600),
            dedup_window: Duration::from_secs(120),
            memory: MemoryBusSettings::default(),
            nats: NatsSettings::default(),
        }
    }
}

impl BusSettings {
    /// What depends on `kind`: the NATS URLs are only checked when NATS is used.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.kind != BusKind::Nats {
            return Ok(());
        }
        if self.nats.urls.is_empty() {
            return Err(ConfigError::invalid(
                "bus.nats.urls",
                "bus.kind is \"nats\" but no URL is set",
            ));
        }
        for url in &self.nats.urls {
            let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                .iter()
                .any(|s| url.starts_with(s));
            if !scheme_ok {
                return Err(ConfigError::invalid(
                    "bus.nats.urls",
                    format!("{url:?} must start with nats://, tls://, ws:// or wss://"),
                ));
            }
        }
        Ok(())
    }
}

/// `[bus.memory]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryBusSettings {
    /// Events kept per routing key for replay.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub ring_size: usize,
    /// Bytes the in-process bus may hold across every key (events kept for replay and
    /// dedup ids); past it the oldest are dropped first. At least [`MIN_MEMORY_BUS_BYTES`].
    #[serde(deserialize_with = "de::at_least::<{ MIN_MEMORY_BUS_BYTES as u64 }, _, _>")]
    pub max_bytes: usize,
}

/// The smallest `bus.memory.max_bytes` accepted: room for a notification at the default limit.
pub const MIN_MEMORY_BUS_BYTES: usize = 1 << 20;

impl Default for MemoryBusSettings {
    fn default() -> Self {
        MemoryBusSettings {
            ring_size: 10_000,
            max_bytes: 64 << 20,
        }
    }
}

/// `[bus.nats]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URLs; any one reachable is enough.
    pub urls: Vec<String>,
    /// User for user/password auth.
    pub user: String,
    /// Password for user/password auth.
    pub password: super::Secret,
    /// Token auth.
    pub token: super::Secret,
    /// NKey seed.
    pub nkey_seed: super::Secret,
    /// Path of a `.creds` file (JWT + NKey).
    pub creds_file: String,
    /// CA bundle for TLS to NATS.
    pub tls_ca_file: String,
    /// Client certificate for mutual TLS.
    pub tls_cert_file: String,
    /// Client key for mutual TLS.
    pub tls_key_file: String,
    /// Require TLS even if the server does not ask for it.
    pub tls_required: bool,
    /// JetStream stream holding every routed event (created or updated at start).
    #[serde(deserialize_with = "de::stream_name")]
    pub stream_name: String,
    /// Stream replicas (3 on a 3-node NATS cluster).
    #[serde(deserialize_with = "de::between::<1, 5, _, _>")]
    pub stream_replicas: usize,
    /// `file` or `memory`.
    pub stream_storage: StreamStorage,
}

/// Where JetStream keeps the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamStorage {
    /// On disk: survives a NATS restart.
    #[default]
    File,
    /// In memory: faster, lost on restart.
    Memory,
}

impl Default for NatsSettings {
    fn default() -> Self {
        NatsSettings {
            urls: vec!["nats://127.0.0.1:4222".into()],
            user: String::new(),
            password: Default::default(),
            token: Default::default(),
            nkey_seed: Default::default(),
            creds_file: String::new(),
            tls_ca_file: String::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_required: false,
            stream_name: "HERALD".into(),
            stream_replicas: 1,
            stream_storage: StreamStorage::File,
        }
    }
}
