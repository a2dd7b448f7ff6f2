//! herald's configuration: one typed tree, layered defaults < file < `HERALD__…` env.
//!
//! Each `[section]` lives in its own module. A value that is wrong on its own (a bad
//! address, provider, algorithm, topic pattern, a zero where a count is needed) is
//! rejected while it is parsed, by its type or a [`de`] deserializer, so the error names
//! its key path; [`Settings::validate`] keeps only the checks that span keys.

mod auth;
mod bus;
pub mod de;
mod forwardemail;
mod jmap;
mod limits;
mod realtime;
mod rooms;
mod server;
#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};

use herald_protocol::Dialect;
use serde::{Deserialize, Serialize, Serializer};

pub use auth::{
    AliasCredential, AuthCacheSettings, AuthSettings, CalloutSettings, DialectProviders,
    JwtAlgorithm, JwtSettings, ProviderKind, StaticAuthSettings, TokenCredential,
};
pub use bus::{
    BusKind, BusSettings, MemoryBusSettings, NatsSettings, StreamStorage, MIN_MEMORY_BUS_BYTES,
};
pub use forwardemail::ForwardEmailSettings;
pub use jmap::JmapSettings;
pub use limits::LimitSettings;
pub use realtime::RealtimeSettings;
pub use rooms::RoomsSettings;
pub use server::{LogFormatSetting, LogSettings, ServerSettings, ShutdownSettings};

/// The configuration embedded in the binary and used when no file is given: demo data.
pub const DEV_CONFIG: &str = include_str!("../../../../config/dev.toml");
/// Alias ids of the demo credentials, used to warn loudly when they are in use.
const DEMO_ALIAS_IDS: &[&str] = &["64b7f0c2a1b2c3d4e5f60718", "64b7f0c2a1b2c3d4e5f60719"];
/// Keys whose env values are comma-separated lists.
const LIST_KEYS: &[&str] = &[
    "bus.nats.urls",
    "server.allowed_origins",
    "auth.publish_tokens",
    "auth.providers",
    "realtime.default_subscribe",
    "realtime.default_publish",
];
/// Shortest HS256 secret herald does not warn about: 256 bits, the size of the HMAC.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// A bad configuration: which key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or environment could not be read or parsed into the typed tree.
    #[error("config error: {0}")]
    Load(#[from] config::ConfigError),
    /// A value is not acceptable.
    #[error("config error at {key}: {reason}")]
    Invalid {
        /// Dotted key path, e.g. `bus.nats.urls` (`auth.providers[0]` inside a list).
        key: String,
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

impl ConfigError {
    /// A value at `key` that is not acceptable, and why.
    pub fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Puts the key path the `config` crate found in front, as every other error has it.
    fn from_parse(error: config::ConfigError) -> ConfigError {
        match error {
            config::ConfigError::At {
                error,
                key: Some(key),
                ..
            } => ConfigError::Invalid {
                key: dotted(&key),
                reason: error.to_string(),
            },
            config::ConfigError::Type {
                unexpected,
                expected,
                key: Some(key),
                ..
            } => ConfigError::Invalid {
                key: dotted(&key),
                reason: format!("invalid type: {unexpected}, expected {expected}"),
            },
            other => ConfigError::Load(other),
        }
    }
}

/// `a[0]b` → `a[0].b`: the `config` crate joins a list index and the next key without
/// a dot.
fn dotted(key: &str) -> String {
    key.replace("]", "].")
        .replace("]..", "].")
        .replace("].[", "][")
        .trim_end_matches('.')
        .to_owned()
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
    /// Deprecated keys found while loading, each a sentence naming its replacement.
    #[serde(skip)]
    deprecations: Vec<String>,
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
        let builder = config::Config::builder();
        let builder = match file {
            Some(path) => builder.add_source(config::File::from(path).required(true)),
            None => {
                builder.add_source(config::File::from_str(DEV_CONFIG, config::FileFormat::Toml))
            }
        };
        Settings::from_builder(builder)
    }

    /// Adds the `HERALD__…` environment on top of `builder`, then parses and validates.
    fn from_builder(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
    ) -> Result<Settings, ConfigError> {
        let mut env = config::Environment::with_prefix("HERALD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",");
        for key in LIST_KEYS {
            env = env.with_list_parse_key(key);
        }
        for dialect in Dialect::ALL {
            env = env.with_list_parse_key(&format!("auth.dialects.{dialect}"));
        }
        let raw = builder.add_source(env).build()?;
        let backend_timeout_set = raw.get::<config::Value>("auth.backend_timeout").is_ok();
        let mut settings: Settings = raw.try_deserialize().map_err(ConfigError::from_parse)?;
        settings.resolve_aliases(backend_timeout_set)?;
        settings.load_credentials_file()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Moves deprecated keys to their new home, noting a warning for each.
    ///
    /// The old key wins over the new one: in a layered config (a chart's or dev.toml's
    /// defaults, then an operator's overrides) it is the value someone set on purpose.
    fn resolve_aliases(&mut self, backend_timeout_set: bool) -> Result<(), ConfigError> {
        const OLD: &str = "forwardemail.auth_backend_timeout";
        if let Some(timeout) = self.forwardemail.auth_backend_timeout.take() {
            if timeout.is_zero() {
                return Err(ConfigError::invalid(
                    OLD,
                    "must be greater than 0 (e.g. \"10s\")",
                ));
            }
            let overrides = if backend_timeout_set && timeout != self.auth.backend_timeout {
                format!(
                    "; its {} overrides auth.backend_timeout = {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(self.auth.backend_timeout)
                )
            } else {
                String::new()
            };
            self.auth.backend_timeout = timeout;
            self.deprecations.push(format!(
                "{OLD} is deprecated: set auth.backend_timeout instead (same meaning, read by every dialect){overrides}"
            ));
        }
        Ok(())
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
        let extra: CredentialsFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        self.auth.static_.aliases.extend(extra.aliases);
        self.auth.static_.tokens.extend(extra.tokens);
        Ok(())
    }

    /// Checks what spans keys; each value on its own was checked while parsing.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.bus.validate()?;
        self.auth.validate(self.bus.kind)
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
        if self.auth.uses(ProviderKind::Jwt)
            && jwt.algorithm == JwtAlgorithm::HS256
            && jwt.jwks_file.is_empty()
            && secret_len < MIN_HS256_SECRET_BYTES
        {
            warnings.push(format!(
                "auth.jwt.secret is {secret_len} bytes: an HS256 secret under {MIN_HS256_SECRET_BYTES} bytes can be guessed offline from a single token; use {MIN_HS256_SECRET_BYTES}+ random bytes (e.g. `openssl rand -base64 48`)"
            ));
        }
        if self.server.allowed_origins.is_empty() && !self.server.listen.ip().is_loopback() {
            warnings.push(format!(
                "server.allowed_origins is empty and server.listen ({}) is not loopback: any web page can open WebSockets to this node from its visitors' browsers; list your web app's origins (e.g. allowed_origins = [\"https://app.example.com\"])",
                self.server.listen
            ));
        }
        warnings
    }

    /// Deprecated keys this configuration uses, each a sentence naming the new key
    /// (`herald serve` and `herald config check` print them).
    pub fn deprecation_warnings(&self) -> &[String] {
        &self.deprecations
    }

    /// The effective configuration as TOML, secrets redacted (`herald config check`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("<unprintable config: {e}>"))
    }
}
