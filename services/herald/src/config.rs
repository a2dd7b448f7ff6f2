//! herald's configuration: one typed tree, layered defaults < file < `HERALD__…` env,
//! validated at start so a bad value fails with its key path, never at first use.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize, Serializer};

/// The configuration embedded in the binary and used when no file is given: demo data.
pub const DEV_CONFIG: &str = include_str!("../../../config/dev.toml");
/// Alias ids of the demo credentials, used to warn loudly when they are in use.
const DEMO_ALIAS_IDS: &[&str] = &["64b7f0c2a1b2c3d4e5f60718", "64b7f0c2a1b2c3d4e5f60719"];
/// Keys whose env values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "bus.nats.urls",
    "server.allowed_origins",
    "auth.publish_tokens",
    "auth.providers",
    "auth.dialects.v1",
    "auth.dialects.jmap",
    "auth.dialects.realtime",
    "auth.dialects.rooms",
    "realtime.default_subscribe",
    "realtime.default_publish",
];

/// A bad configuration: which key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed into the typed tree.
    #[error("config error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value parsed but is not acceptable.
    #[error("config error at {key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `bus.nats.urls`.
        key: &'static str,
        /// What is wrong and what to do.
        reason: String,
    },
    /// The static credentials file could not be read.
    #[error("config error at auth.static.file: cannot read {path}: {reason}")]
    CredentialsFile {
        /// The file named by `auth.static.file`.
        path: PathBuf,
        /// Why it could not be read or parsed.
        reason: String,
    },
}

/// A secret string: never printed, logged or serialised in clear.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no secret was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "[redacted]"
        })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "[redacted]" })
    }
}

/// The whole configuration tree.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// HTTP listener and client-address handling.
    pub server: ServerSettings,
    /// Where events come from.
    pub bus: BusSettings,
    /// Credentials and providers.
    pub auth: AuthSettings,
    /// Per-IP, per-alias and per-node limits.
    pub limits: LimitSettings,
    /// The `/v1/ws` dialect.
    pub forwardemail: ForwardEmailSettings,
    /// The `/jmap/ws` dialect.
    pub jmap: JmapSettings,
    /// The `/api/v1/ws/connect` rooms dialect.
    pub rooms: RoomsSettings,
    /// The `/ws` dialect (generic realtime protocol).
    pub realtime: RealtimeSettings,
    /// Graceful shutdown.
    pub shutdown: ShutdownSettings,
    /// Logging.
    pub log: LogSettings,
}

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP/WebSocket listener binds (port 0 picks a free port).
    pub listen: String,
    /// Optional second listener for `/metrics` only; empty serves it on `listen`.
    pub metrics_listen: String,
    /// Trust the last `X-Forwarded-For` entry as the client address (behind a proxy only).
    pub trust_proxy: bool,
    /// `Origin` values allowed to open WebSockets; empty allows any.
    pub allowed_origins: Vec<String>,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: String::new(),
            trust_proxy: false,
            allowed_origins: Vec::new(),
        }
    }
}

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
    #[serde(with = "humantime_serde")]
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

/// `[bus.memory]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryBusSettings {
    /// Events kept per routing key for replay.
    pub ring_size: usize,
    /// Bytes the in-process bus may hold across every key (events kept for replay and
    /// dedup ids); past it the oldest are dropped first.
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
    pub password: Secret,
    /// Token auth.
    pub token: Secret,
    /// NKey seed.
    pub nkey_seed: Secret,
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
    pub stream_name: String,
    /// Stream replicas (3 on a 3-node NATS cluster).
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
            password: Secret::default(),
            token: Secret::default(),
            nkey_seed: Secret::default(),
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

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Bearer tokens accepted by `POST /v1/publish`.
    pub publish_tokens: Vec<Secret>,
    /// Providers every dialect asks, in order: `static`, `jwt`, `callout`.
    pub providers: Vec<String>,
    /// Per-dialect provider lists (each a subset of `providers`) replacing it there.
    pub dialects: DialectProviders,
    /// Static credentials (aliases with argon2 hashes, API tokens).
    #[serde(rename = "static")]
    pub static_: StaticAuthSettings,
    /// JWT validation for the JWT dialects.
    pub jwt: JwtSettings,
    /// NATS auth callout on `herald.v1.auth.request`.
    pub callout: CalloutSettings,
    /// Auth result cache.
    pub cache: AuthCacheSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            publish_tokens: Vec::new(),
            providers: vec!["static".into()],
            dialects: DialectProviders::default(),
            static_: StaticAuthSettings::default(),
            jwt: JwtSettings::default(),
            callout: CalloutSettings::default(),
            cache: AuthCacheSettings::default(),
        }
    }
}

/// `[auth.dialects]`: which providers a dialect asks, in order; empty means
/// `auth.providers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialectProviders {
    /// `/v1/ws`.
    pub v1: Vec<String>,
    /// `/jmap/ws`.
    pub jmap: Vec<String>,
    /// `/ws`.
    pub realtime: Vec<String>,
    /// `/api/v1/ws/connect`.
    pub rooms: Vec<String>,
}

impl DialectProviders {
    /// The list configured for `dialect` (keyed by its label: `v1`, `jmap`, ...).
    pub fn of(&self, dialect: crate::dialect::Dialect) -> &[String] {
        use crate::dialect::Dialect;
        match dialect {
            Dialect::ForwardEmail => &self.v1,
            Dialect::Jmap => &self.jmap,
            Dialect::Realtime => &self.realtime,
            Dialect::Rooms => &self.rooms,
        }
    }
}

/// `[auth.callout]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalloutSettings {
    /// Request subject the auth backend answers on.
    pub subject: String,
    /// How long the backend may take; then the client gets 504/1013, never access.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for CalloutSettings {
    fn default() -> Self {
        CalloutSettings {
            subject: "herald.v1.auth.request".into(),
            timeout: Duration::from_secs(10),
        }
    }
}

/// `[auth.static]`
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaticAuthSettings {
    /// Optional TOML file with more `[[aliases]]` and `[[tokens]]`.
    pub file: String,
    /// Aliases allowed to log in with a password.
    pub aliases: Vec<AliasCredential>,
    /// API tokens and the aliases each may act for.
    pub tokens: Vec<TokenCredential>,
}

/// One alias login.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AliasCredential {
    /// The login name, `alias@domain`.
    pub alias: String,
    /// The alias id used in subjects.
    pub id: String,
    /// argon2 PHC string (`herald hash-password`).
    pub password_hash: Secret,
}

/// One API token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCredential {
    /// The token presented as the Basic username.
    pub token: Secret,
    /// Alias ids the token may connect as (`?alias_id=`).
    pub alias_ids: Vec<String>,
}

/// `[auth.jwt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: String,
    /// HS256 shared secret.
    pub secret: Secret,
    /// PEM public key for RS256/ES256.
    pub public_key_file: String,
    /// JWKS file, reloaded on change.
    pub jwks_file: String,
    /// Expected `iss`, if set.
    pub issuer: String,
    /// Expected `aud`, if set.
    pub audience: String,
    /// Clock skew allowed on `exp`/`nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// Claim holding the alias ids the token may connect as (a string or a list).
    pub alias_claim: String,
    /// Claim holding the user id.
    pub user_claim: String,
    /// Claim holding the display name (rooms' `connected` frame).
    pub username_claim: String,
}

impl Default for JwtSettings {
    fn default() -> Self {
        JwtSettings {
            algorithm: "HS256".into(),
            secret: Secret::default(),
            public_key_file: String::new(),
            jwks_file: String::new(),
            issuer: String::new(),
            audience: String::new(),
            leeway: Duration::from_secs(30),
            alias_claim: "aliases".into(),
            user_claim: "sub".into(),
            username_claim: "username".into(),
        }
    }
}

/// `[auth.cache]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthCacheSettings {
    /// How long a successful login is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// How long a failed login is remembered.
    #[serde(with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Most entries kept.
    pub max_entries: u64,
}

impl Default for AuthCacheSettings {
    fn default() -> Self {
        AuthCacheSettings {
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(10),
            max_entries: 100_000,
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest notification sent whole; larger ones have resources truncated.
    pub max_notification_bytes: usize,
    /// Output a session may have queued before it is disconnected as a slow consumer.
    pub max_buffered_bytes: usize,
    /// Largest frame a `/v1/ws` client may send (1009 above it).
    pub max_client_frame_bytes: usize,
    /// New connections per client address per minute.
    pub connections_per_ip_per_minute: u32,
    /// Sessions per alias.
    pub max_sessions_per_alias: usize,
    /// Sessions per node.
    pub max_sessions_total: usize,
    /// Sessions per address waiting for their `?auth=message` frame.
    pub max_pending_auth_per_ip: usize,
    /// Anonymous (broadcast-only) sessions per address.
    pub max_anonymous_per_ip: usize,
    /// Failed logins per address before it is blocked.
    pub failed_logins_per_ip: u32,
    /// How long a blocked address stays blocked.
    #[serde(with = "humantime_serde")]
    pub failed_login_block: Duration,
    /// Logins one address may have being checked at once (more → 429).
    pub max_logins_in_flight_per_ip: usize,
    /// argon2 password checks running at once on the node (~19 MiB each); 0 means one
    /// per CPU core. A login waits up to 1 s for one, then gets 503/1013.
    pub max_password_checks: usize,
    /// How long a cluster-wide session lease (alias caps, `/ws` presence) lives without a
    /// refresh: a node killed without a goodbye stops counting within this time.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long `POST /v1/publish` waits for the whole body before answering 408.
    #[serde(with = "humantime_serde")]
    pub publish_body_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_notification_bytes: 1 << 20,
            max_buffered_bytes: 1 << 20,
            max_client_frame_bytes: 1024,
            connections_per_ip_per_minute: 30,
            max_sessions_per_alias: 10,
            max_sessions_total: 10_000,
            max_pending_auth_per_ip: 5,
            max_anonymous_per_ip: 3,
            failed_logins_per_ip: 10,
            failed_login_block: Duration::from_secs(600),
            max_logins_in_flight_per_ip: 4,
            max_password_checks: 0,
            lease_ttl: Duration::from_secs(30),
            publish_body_timeout: Duration::from_secs(10),
        }
    }
}

/// `[forwardemail]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardEmailSettings {
    /// Accept sessions without credentials (broadcast events only).
    pub allow_anonymous: bool,
    /// Keepalive round: protocol ping + `{"event":"ping"}`.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// How long an `?auth=message` session may take to send its auth frame.
    #[serde(with = "humantime_serde")]
    pub auth_frame_timeout: Duration,
    /// How long an auth backend may take before the client gets 504/1013.
    #[serde(with = "humantime_serde")]
    pub auth_backend_timeout: Duration,
}

impl Default for ForwardEmailSettings {
    fn default() -> Self {
        ForwardEmailSettings {
            allow_anonymous: false,
            ping_interval: Duration::from_secs(30),
            auth_frame_timeout: Duration::from_secs(5),
            auth_backend_timeout: Duration::from_secs(10),
        }
    }
}

/// `[jmap]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JmapSettings {
    /// Protocol ping round; a client that has not answered by the next one is closed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Changes arriving within this window after the first are pushed as one StateChange
    /// (RFC 8620 §7.1 lets servers coalesce).
    #[serde(with = "humantime_serde")]
    pub coalesce_window: Duration,
    /// Largest client frame (`maxSizeRequest`); above it: RequestError `limit`, close 1009.
    pub max_frame_bytes: usize,
    /// Most method calls in one Request (`maxCallsInRequest`).
    pub max_calls_in_request: usize,
}

impl Default for JmapSettings {
    fn default() -> Self {
        JmapSettings {
            ping_interval: Duration::from_secs(30),
            coalesce_window: Duration::from_millis(200),
            max_frame_bytes: 1 << 20,
            max_calls_in_request: 16,
        }
    }
}

/// `[rooms]`: the `/api/v1/ws/connect` dialect (SPEC §4.4).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsSettings {
    /// Whether a token without a `rooms` claim may join any room. Off by default: such a
    /// token may join only `user:<own id>`, so a token minted for another purpose never
    /// opens every room.
    pub default_allow: bool,
    /// Sessions one user may have open across the cluster (the next one closes with 4429).
    pub max_connections_per_user: usize,
    /// Largest frame a client may send (1009 above it).
    pub max_frame_bytes: usize,
    /// Rooms one session may be in at once (the next `join_room` gets an `error` event).
    pub max_rooms_per_connection: usize,
    /// Protocol ping round; a session that sent nothing since the last round is closed.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// Client frames per second a connection may send (sustained); more get an `error`
    /// event and are dropped, so one client cannot flood the bus.
    pub messages_per_second: u32,
    /// Client frames a connection may send in a burst above the sustained rate.
    pub burst: u32,
}

/// `[realtime]`: the `/ws` dialect (SPEC §4.3).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSettings {
    /// Largest client message (text or binary) answered normally; bigger ones get `Error 400`.
    pub max_message_bytes: usize,
    /// Client messages per second a connection may send (sustained); more get `Error 429`.
    pub messages_per_second: u32,
    /// Client messages a connection may send in a burst above the sustained rate.
    pub burst: u32,
    /// Topic patterns a token without a `topics.subscribe` claim may subscribe to.
    pub default_subscribe: Vec<String>,
    /// Topics a token without a `topics.publish` claim may broadcast to.
    pub default_publish: Vec<String>,
    /// Most topic subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// How long a Broadcast/DirectMessage waits for every node's delivery report before
    /// answering `Ack` (the count is the sum of the reports received in this window).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// How long a direct message to an offline user stays queued.
    #[serde(with = "humantime_serde")]
    pub dm_queue_ttl: Duration,
    /// Most direct messages queued for one offline user; more get `Error 429`.
    pub dm_queue_max: usize,
    /// Most offline users with queued direct messages on a memory-bus node; a message to
    /// one more gets `Error 429`.
    pub dm_queue_users_max: usize,
    /// How long before the JWT's `exp` the session gets `AuthStatus token_expiring`.
    #[serde(with = "humantime_serde")]
    pub token_expiry_warning: Duration,
    /// How long an `X-` custom request waits for its NATS responder.
    #[serde(with = "humantime_serde")]
    pub custom_timeout: Duration,
    /// Keepalive: a protocol ping every interval; no answer by the next one closes.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
}

impl Default for RoomsSettings {
    fn default() -> Self {
        RoomsSettings {
            default_allow: false,
            max_connections_per_user: 5,
            max_frame_bytes: 1 << 20,
            max_rooms_per_connection: 100,
            ping_interval: Duration::from_secs(30),
            messages_per_second: 20,
            burst: 40,
        }
    }
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        RealtimeSettings {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 100,
            default_subscribe: vec![">".into()],
            default_publish: vec![">".into()],
            max_subscriptions: 100,
            ack_wait: Duration::from_millis(300),
            dm_queue_ttl: Duration::from_secs(24 * 3600),
            dm_queue_max: 1000,
            dm_queue_users_max: 100_000,
            token_expiry_warning: Duration::from_secs(60),
            custom_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// Seconds over which sessions are closed on SIGTERM.
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

/// The extra credentials file named by `auth.static.file`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct CredentialsFile {
    aliases: Vec<AliasCredential>,
    tokens: Vec<TokenCredential>,
}

impl Settings {
    /// Loads defaults < `file` (or the embedded dev config when `None`) < `HERALD__…` env, then validates.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        let mut builder = config::Config::builder();
        builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => {
                builder.add_source(config::File::from_str(DEV_CONFIG, config::FileFormat::Toml))
            }
        };
        let mut env = config::Environment::with_prefix("HERALD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.load_credentials_file()?;
        settings.validate()?;
        Ok(settings)
    }

    fn load_credentials_file(&mut self) -> Result<(), ConfigError> {
        if self.auth.static_.file.is_empty() {
            return Ok(());
        }
        let path = PathBuf::from(&self.auth.static_.file);
        let err = |reason: String| ConfigError::CredentialsFile {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| err(e.to_string()))?;
        let extra: CredentialsFile = toml_from_str(&text).map_err(err)?;
        self.auth.static_.aliases.extend(extra.aliases);
        self.auth.static_.tokens.extend(extra.tokens);
        Ok(())
    }

    /// Checks every value that parsed but could still be wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return invalid(
                "server.listen",
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.server.listen
                ),
            );
        }
        if !self.server.metrics_listen.is_empty()
            && self.server.metrics_listen.parse::<SocketAddr>().is_err()
        {
            return invalid(
                "server.metrics_listen",
                format!(
                    "{:?} is not an address like 0.0.0.0:9090 (or leave it empty)",
                    self.server.metrics_listen
                ),
            );
        }
        if self.bus.kind == BusKind::Nats {
            if self.bus.nats.urls.is_empty() {
                return invalid(
                    "bus.nats.urls",
                    "bus.kind is \"nats\" but no URL is set".into(),
                );
            }
            for url in &self.bus.nats.urls {
                let scheme_ok = ["nats://", "tls://", "ws://", "wss://"]
                    .iter()
                    .any(|s| url.starts_with(s));
                if !scheme_ok {
                    return invalid(
                        "bus.nats.urls",
                        format!("{url:?} must start with nats://, tls://, ws:// or wss://"),
                    );
                }
            }
        }
        let stream = &self.bus.nats.stream_name;
        if stream.is_empty() || stream.contains(['.', ' ', '*', '>', '/', '\\']) {
            return invalid(
                "bus.nats.stream_name",
                format!("{stream:?} must be non-empty without spaces, dots, wildcards or slashes"),
            );
        }
        if !(1..=5).contains(&self.bus.nats.stream_replicas) {
            return invalid("bus.nats.stream_replicas", "must be between 1 and 5".into());
        }
        if self.bus.retention.is_zero() {
            return invalid(
                "bus.retention",
                "must be greater than 0 (e.g. \"24h\")".into(),
            );
        }
        if self.bus.memory.ring_size == 0 {
            return invalid("bus.memory.ring_size", "must be at least 1".into());
        }
        if self.bus.memory.max_bytes < MIN_MEMORY_BUS_BYTES {
            return invalid(
                "bus.memory.max_bytes",
                format!("must be at least {MIN_MEMORY_BUS_BYTES} (1 MiB; default 64 MiB)"),
            );
        }
        let limits = &self.limits;
        for (key, value) in [
            (
                "limits.max_notification_bytes",
                limits.max_notification_bytes,
            ),
            ("limits.max_buffered_bytes", limits.max_buffered_bytes),
            (
                "limits.max_client_frame_bytes",
                limits.max_client_frame_bytes,
            ),
            (
                "limits.max_sessions_per_alias",
                limits.max_sessions_per_alias,
            ),
            ("limits.max_sessions_total", limits.max_sessions_total),
            (
                "limits.max_pending_auth_per_ip",
                limits.max_pending_auth_per_ip,
            ),
            (
                "limits.max_logins_in_flight_per_ip",
                limits.max_logins_in_flight_per_ip,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if limits.connections_per_ip_per_minute == 0 {
            return invalid(
                "limits.connections_per_ip_per_minute",
                "must be greater than 0".into(),
            );
        }
        if limits.failed_logins_per_ip == 0 {
            return invalid(
                "limits.failed_logins_per_ip",
                "must be greater than 0".into(),
            );
        }
        if self.forwardemail.ping_interval < Duration::from_millis(100) {
            return invalid(
                "forwardemail.ping_interval",
                "must be at least 100ms".into(),
            );
        }
        if self.jmap.ping_interval < Duration::from_millis(100) {
            return invalid("jmap.ping_interval", "must be at least 100ms".into());
        }
        if self.jmap.coalesce_window > Duration::from_secs(10) {
            return invalid(
                "jmap.coalesce_window",
                "must be at most 10s: clients wait that long for a push".into(),
            );
        }
        if self.jmap.max_frame_bytes < 1024 {
            return invalid("jmap.max_frame_bytes", "must be at least 1024".into());
        }
        if self.jmap.max_calls_in_request == 0 {
            return invalid("jmap.max_calls_in_request", "must be at least 1".into());
        }
        let rooms = &self.rooms;
        for (key, value) in [
            (
                "rooms.max_connections_per_user",
                rooms.max_connections_per_user,
            ),
            ("rooms.max_frame_bytes", rooms.max_frame_bytes),
            (
                "rooms.max_rooms_per_connection",
                rooms.max_rooms_per_connection,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0".into());
            }
        }
        if rooms.ping_interval < Duration::from_millis(100) {
            return invalid("rooms.ping_interval", "must be at least 100ms".into());
        }
        if rooms.messages_per_second == 0 || rooms.burst == 0 {
            return invalid(
                "rooms.messages_per_second",
                "messages_per_second and burst must be at least 1".into(),
            );
        }
        if self.forwardemail.auth_frame_timeout.is_zero() {
            return invalid(
                "forwardemail.auth_frame_timeout",
                "must be greater than 0".into(),
            );
        }
        for (i, alias) in self.auth.static_.aliases.iter().enumerate() {
            if herald_protocol::subject::validate_identifier(&alias.id).is_err() {
                return invalid(
                    "auth.static.aliases",
                    format!(
                        "entry {i} ({}): id {:?} must match [A-Za-z0-9_-]{{1,128}}",
                        alias.alias, alias.id
                    ),
                );
            }
            if argon2::PasswordHash::new(alias.password_hash.expose()).is_err() {
                return invalid(
                    "auth.static.aliases",
                    format!("entry {i} ({}): password_hash is not an argon2 PHC string (make one with `herald hash-password`)", alias.alias),
                );
            }
        }
        for (i, token) in self.auth.static_.tokens.iter().enumerate() {
            if token.token.is_empty() {
                return invalid("auth.static.tokens", format!("entry {i}: token is empty"));
            }
            if let Some(bad) = token
                .alias_ids
                .iter()
                .find(|id| herald_protocol::subject::validate_identifier(id).is_err())
            {
                return invalid(
                    "auth.static.tokens",
                    format!("entry {i}: alias id {bad:?} must match [A-Za-z0-9_-]{{1,128}}"),
                );
            }
        }
        if self.auth.publish_tokens.iter().any(Secret::is_empty) {
            return invalid(
                "auth.publish_tokens",
                "an empty token would accept anyone: remove it".into(),
            );
        }
        if !["HS256", "RS256", "ES256"].contains(&self.auth.jwt.algorithm.as_str()) {
            return invalid(
                "auth.jwt.algorithm",
                format!(
                    "{:?} is not one of HS256, RS256, ES256",
                    self.auth.jwt.algorithm
                ),
            );
        }
        self.validate_providers()?;
        if self.limits.lease_ttl < Duration::from_secs(1) {
            return invalid(
                "limits.lease_ttl",
                "must be at least 1s (default 30s)".into(),
            );
        }
        if self.limits.publish_body_timeout.is_zero() {
            return invalid(
                "limits.publish_body_timeout",
                "must be greater than 0 (default 10s)".into(),
            );
        }
        self.validate_realtime()?;
        if let Err(e) = herald_telemetry::validate_level(&self.log.level) {
            return invalid("log.level", e.to_string());
        }
        Ok(())
    }

    fn validate_realtime(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let rt = &self.realtime;
        if rt.max_message_bytes < 64 {
            return invalid(
                "realtime.max_message_bytes",
                "must be at least 64 bytes (default 65536)".into(),
            );
        }
        if rt.messages_per_second == 0 || rt.burst == 0 {
            return invalid(
                "realtime.messages_per_second",
                "messages_per_second and burst must be at least 1".into(),
            );
        }
        for (key, list) in [
            ("realtime.default_subscribe", &rt.default_subscribe),
            ("realtime.default_publish", &rt.default_publish),
        ] {
            if let Some(bad) = list
                .iter()
                .find(|p| crate::dialect::realtime::validate_pattern(p).is_err())
            {
                return invalid(
                    key,
                    format!("{bad:?} is not a topic pattern (dot-separated [A-Za-z0-9_-] tokens, `*`, or a final `>`)"),
                );
            }
        }
        if rt.ack_wait.is_zero() || rt.ack_wait > Duration::from_secs(10) {
            return invalid(
                "realtime.ack_wait",
                "must be between 1ms and 10s (default 300ms)".into(),
            );
        }
        if rt.dm_queue_max == 0 || rt.dm_queue_ttl.is_zero() {
            return invalid(
                "realtime.dm_queue_max",
                "dm_queue_max and dm_queue_ttl must be greater than 0".into(),
            );
        }
        if rt.dm_queue_users_max == 0 {
            return invalid(
                "realtime.dm_queue_users_max",
                "must be at least 1 (default 100000)".into(),
            );
        }
        if rt.custom_timeout.is_zero() || rt.ping_interval.is_zero() {
            return invalid(
                "realtime.ping_interval",
                "ping_interval and custom_timeout must be greater than 0".into(),
            );
        }
        Ok(())
    }

    fn validate_providers(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        let auth = &self.auth;
        if auth.providers.is_empty() {
            return invalid(
                "auth.providers",
                "list at least one of \"static\", \"jwt\", \"callout\"".into(),
            );
        }
        for (i, p) in auth.providers.iter().enumerate() {
            if !["static", "jwt", "callout"].contains(&p.as_str()) {
                return invalid(
                    "auth.providers",
                    format!("{p:?} is not one of \"static\", \"jwt\", \"callout\""),
                );
            }
            if auth.providers[..i].contains(p) {
                return invalid("auth.providers", format!("{p:?} is listed twice"));
            }
        }
        let uses = |p: &str| auth.providers.iter().any(|x| x == p);
        for (key, list) in [
            ("auth.dialects.v1", &auth.dialects.v1),
            ("auth.dialects.jmap", &auth.dialects.jmap),
            ("auth.dialects.realtime", &auth.dialects.realtime),
            ("auth.dialects.rooms", &auth.dialects.rooms),
        ] {
            if let Some(p) = list.iter().find(|p| !uses(p)) {
                return invalid(
                    key,
                    format!("{p:?} is not in auth.providers: list it there too so it is built"),
                );
            }
        }
        if uses("jwt") {
            let jwt = &auth.jwt;
            if jwt.jwks_file.is_empty() {
                if jwt.algorithm == "HS256" && jwt.secret.is_empty() {
                    return invalid(
                        "auth.jwt.secret",
                        "the jwt provider with HS256 needs a secret (or set auth.jwt.jwks_file)"
                            .into(),
                    );
                }
                if jwt.algorithm != "HS256" && jwt.public_key_file.is_empty() {
                    return invalid(
                        "auth.jwt.public_key_file",
                        format!(
                            "the jwt provider with {} needs a PEM public key or auth.jwt.jwks_file",
                            jwt.algorithm
                        ),
                    );
                }
            }
            if jwt.alias_claim.is_empty() {
                return invalid("auth.jwt.alias_claim", "must name a claim".into());
            }
            if jwt.user_claim.is_empty() {
                return invalid("auth.jwt.user_claim", "must name a claim".into());
            }
        }
        if uses("callout") {
            if self.bus.kind != BusKind::Nats {
                return invalid(
                    "auth.providers",
                    "the callout provider needs bus.kind = \"nats\"".into(),
                );
            }
            if auth.callout.timeout.is_zero() {
                return invalid("auth.callout.timeout", "must be more than 0".into());
            }
            let subject = &auth.callout.subject;
            if subject.is_empty() || subject.contains([' ', '*', '>']) {
                return invalid(
                    "auth.callout.subject",
                    format!("{subject:?} is not a literal NATS subject"),
                );
            }
        }
        Ok(())
    }

    /// Whether the demo credentials of `config/dev.toml` are active (herald warns loudly).
    pub fn uses_demo_credentials(&self) -> bool {
        self.auth
            .static_
            .aliases
            .iter()
            .any(|a| DEMO_ALIAS_IDS.contains(&a.id.as_str()))
            || self
                .auth
                .publish_tokens
                .iter()
                .any(|t| t.expose() == "herald-dev-admin")
    }

    /// What `herald serve` warns about at start: settings that are valid but unsafe on a
    /// node reachable from other machines (each a sentence naming the key and the fix).
    pub fn security_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let jwt = &self.auth.jwt;
        let secret_len = jwt.secret.expose().len();
        if self.auth.providers.iter().any(|p| p == "jwt")
            && jwt.algorithm == "HS256"
            && jwt.jwks_file.is_empty()
            && secret_len < MIN_HS256_SECRET_BYTES
        {
            warnings.push(format!(
                "auth.jwt.secret is {secret_len} bytes: an HS256 secret under {MIN_HS256_SECRET_BYTES} bytes can be guessed offline from a single token; use {MIN_HS256_SECRET_BYTES}+ random bytes (e.g. `openssl rand -base64 48`)"
            ));
        }
        if self.server.allowed_origins.is_empty() && !listens_on_loopback(&self.server.listen) {
            warnings.push(format!(
                "server.allowed_origins is empty and server.listen ({}) is not loopback: any web page can open WebSockets to this node from its visitors' browsers; list your web app's origins (e.g. allowed_origins = [\"https://app.example.com\"])",
                self.server.listen
            ));
        }
        warnings
    }

    /// The effective configuration as TOML, secrets redacted (`herald config check`).
    pub fn to_redacted_toml(&self) -> String {
        toml_to_string(self)
    }
}

/// Shortest HS256 secret herald does not warn about: 256 bits, the size of the HMAC.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Whether `listen` (`host:port`) only accepts connections from this machine.
fn listens_on_loopback(listen: &str) -> bool {
    match listen.parse::<SocketAddr>() {
        Ok(addr) => addr.ip().is_loopback(),
        Err(_) => listen
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.eq_ignore_ascii_case("localhost")),
    }
}

fn toml_from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string())
}

fn toml_to_string<T: Serialize>(value: &T) -> String {
    toml::to_string_pretty(value).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_dev_config_is_valid_and_has_the_demo_data() {
        let s = Settings::load(None).unwrap();
        assert_eq!(s.server.listen, "127.0.0.1:8080");
        assert_eq!(s.bus.kind, BusKind::Memory);
        assert!(s.uses_demo_credentials());
        assert_eq!(s.auth.static_.aliases[0].alias, "demo@herald.local");
        assert_eq!(s.auth.static_.tokens[0].token.expose(), "herald-demo-token");
        assert_eq!(s.auth.jwt.secret.expose(), "herald-dev-jwt-secret");
    }

    #[test]
    fn unsafe_settings_are_warned_about_at_start() {
        let mut s = Settings::default();
        assert!(s.security_warnings().is_empty(), "loopback, no JWT");
        s.server.listen = "0.0.0.0:8080".into();
        let warnings = s.security_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("server.allowed_origins is empty"));
        s.server.allowed_origins = vec!["https://app.example.com".into()];
        assert!(s.security_warnings().is_empty());
        for (listen, loopback) in [
            ("127.0.0.1:0", true),
            ("[::1]:8080", true),
            ("localhost:8080", true),
            ("[::]:8080", false),
            ("herald.internal:8080", false),
        ] {
            assert_eq!(listens_on_loopback(listen), loopback, "{listen}");
        }

        s.auth.providers = vec!["static".into(), "jwt".into()];
        s.auth.jwt.secret = Secret::from("short");
        let warnings = s.security_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("auth.jwt.secret is 5 bytes"),
            "{warnings:?}"
        );
        s.auth.jwt.secret = Secret::from("0123456789abcdef0123456789abcdef");
        assert!(s.security_warnings().is_empty(), "32 bytes is enough");
        s.auth.jwt.secret = Secret::from("short");
        s.auth.jwt.algorithm = "RS256".into();
        assert!(
            s.security_warnings().is_empty(),
            "no shared secret in RS256"
        );
    }

    #[test]
    fn defaults_are_the_contracts_numbers() {
        // SPEC §3–§6: these are promises to operators, not tuning knobs to drift.
        for s in [Settings::default(), Settings::load(None).unwrap()] {
            let l = &s.limits;
            assert_eq!(l.max_notification_bytes, 1024 * 1024);
            assert_eq!(l.max_buffered_bytes, 1024 * 1024);
            assert_eq!(l.max_client_frame_bytes, 1024);
            assert_eq!(l.connections_per_ip_per_minute, 30);
            assert_eq!(l.max_sessions_per_alias, 10);
            assert_eq!(l.max_sessions_total, 10_000);
            assert_eq!(l.max_pending_auth_per_ip, 5);
            assert_eq!(l.max_logins_in_flight_per_ip, 4);
            assert_eq!(l.max_password_checks, 0);
            assert_eq!(l.max_anonymous_per_ip, 3);
            assert_eq!(l.failed_logins_per_ip, 10);
            assert_eq!(l.failed_login_block, Duration::from_secs(600));
            let fe = &s.forwardemail;
            assert!(!fe.allow_anonymous);
            assert_eq!(fe.ping_interval, Duration::from_secs(30));
            assert_eq!(fe.auth_frame_timeout, Duration::from_secs(5));
            assert_eq!(fe.auth_backend_timeout, Duration::from_secs(10));
            assert_eq!(s.bus.retention, Duration::from_secs(24 * 3600));
            assert_eq!(s.bus.dedup_window, Duration::from_secs(120));
            assert_eq!(s.bus.memory.max_bytes, 64 << 20);
            assert_eq!(l.publish_body_timeout, Duration::from_secs(10));
            assert_eq!(s.realtime.dm_queue_users_max, 100_000);
            assert_eq!(s.server.listen, "127.0.0.1:8080");
            assert_eq!(s.auth.callout.subject, "herald.v1.auth.request");
            assert_eq!(s.auth.callout.timeout, Duration::from_secs(10));
            let rooms = &s.rooms;
            assert_eq!(rooms.max_connections_per_user, 5);
            assert_eq!(rooms.max_frame_bytes, 1024 * 1024);
            assert_eq!(rooms.max_rooms_per_connection, 100);
            assert_eq!(rooms.ping_interval, Duration::from_secs(30));
            assert_eq!((rooms.messages_per_second, rooms.burst), (20, 40));
            assert_eq!(s.realtime.max_message_bytes, 64 * 1024);
            assert_eq!(s.limits.lease_ttl, Duration::from_secs(30));
        }
        // Production (any --config file) denies by default; only the demo opens every
        // room, so the rooms document's flow runs with a plain demo JWT.
        assert!(
            !Settings::default().rooms.default_allow,
            "a token without a rooms claim is not an open door"
        );
        assert!(Settings::load(None).unwrap().rooms.default_allow);
        // Likewise the demo takes demo JWTs on every dialect; production starts static-only.
        assert_eq!(Settings::default().auth.providers, ["static"]);
        assert_eq!(
            Settings::load(None).unwrap().auth.providers,
            ["static", "jwt"]
        );
    }

    #[test]
    fn bad_realtime_settings_name_their_key() {
        let key_of = |edit: &dyn Fn(&mut Settings)| {
            let mut s = Settings::load(None).unwrap();
            edit(&mut s);
            match s.validate() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("expected a config error, got {other:?}"),
            }
        };
        assert_eq!(
            key_of(&|s| s.realtime.default_subscribe = vec!["a.>.b".into()]),
            "realtime.default_subscribe"
        );
        assert_eq!(
            key_of(&|s| s.realtime.max_message_bytes = 0),
            "realtime.max_message_bytes"
        );
        assert_eq!(
            key_of(&|s| s.limits.lease_ttl = Duration::ZERO),
            "limits.lease_ttl"
        );
        assert_eq!(key_of(&|s| s.rooms.burst = 0), "rooms.messages_per_second");
        assert_eq!(
            key_of(&|s| s.limits.publish_body_timeout = Duration::ZERO),
            "limits.publish_body_timeout"
        );
        assert_eq!(
            key_of(&|s| s.bus.memory.max_bytes = 1024),
            "bus.memory.max_bytes"
        );
        assert_eq!(
            key_of(&|s| s.realtime.dm_queue_users_max = 0),
            "realtime.dm_queue_users_max"
        );
    }

    #[test]
    fn bad_provider_settings_name_their_key() {
        let key_of = |edit: &dyn Fn(&mut Settings)| {
            let mut s = Settings::load(None).unwrap();
            edit(&mut s);
            match s.validate() {
                Err(ConfigError::Invalid { key, .. }) => key,
                other => panic!("expected a config error, got {other:?}"),
            }
        };
        assert_eq!(
            key_of(&|s| s.auth.providers = vec!["ldap".into()]),
            "auth.providers"
        );
        assert_eq!(key_of(&|s| s.auth.providers.clear()), "auth.providers");
        assert_eq!(
            key_of(&|s| s.auth.providers = vec!["jwt".into(), "jwt".into()]),
            "auth.providers"
        );
        assert_eq!(
            key_of(&|s| s.auth.dialects.jmap = vec!["callout".into()]),
            "auth.dialects.jmap"
        );
        assert_eq!(
            key_of(&|s| s.jmap.max_calls_in_request = 0),
            "jmap.max_calls_in_request"
        );
        assert_eq!(
            key_of(&|s| s.auth.providers = vec!["callout".into()]),
            "auth.providers",
            "callout needs NATS"
        );
        assert_eq!(
            key_of(&|s| {
                s.auth.providers = vec!["jwt".into()];
                s.auth.jwt.secret = Secret::default();
            }),
            "auth.jwt.secret"
        );
        assert_eq!(
            key_of(&|s| {
                s.auth.providers = vec!["jwt".into()];
                s.auth.jwt.algorithm = "RS256".into();
            }),
            "auth.jwt.public_key_file"
        );
        assert_eq!(
            key_of(&|s| {
                s.bus.kind = BusKind::Nats;
                s.auth.providers = vec!["callout".into()];
                s.auth.callout.timeout = Duration::ZERO;
            }),
            "auth.callout.timeout"
        );
    }

    #[test]
    fn redacted_output_hides_every_secret() {
        let s = Settings::load(None).unwrap();
        let out = s.to_redacted_toml();
        for secret in [
            "herald-dev-admin",
            "herald-demo-token",
            "herald-dev-jwt-secret",
            "$argon2id",
        ] {
            assert!(!out.contains(secret), "{secret} leaked");
        }
        assert!(out.contains("[redacted]"));
    }

    #[test]
    fn a_bad_value_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(
            &file,
            "[bus]\nkind = \"nats\"\n[bus.nats]\nurls = [\"http://x\"]\n",
        )
        .unwrap();
        let err = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("bus.nats.urls"), "{err}");
        std::fs::write(&file, "[server]\nlisten = \"nope\"\n").unwrap();
        let err = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("server.listen"), "{err}");
        std::fs::write(&file, "[server]\nlisten_typo = \"x\"\n").unwrap();
        let err = Settings::load(Some(&file)).unwrap_err().to_string();
        assert!(err.contains("listen_typo"), "{err}");
    }
}
