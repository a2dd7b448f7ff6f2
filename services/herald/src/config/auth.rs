//! `[auth]`: publish tokens, the providers every dialect asks, and each provider's settings.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use herald_protocol::Dialect;
use serde::{Deserialize, Serialize};

use super::{de, BusKind, ConfigError, Secret};

/// An auth provider herald can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", try_from = "String")]
pub enum ProviderKind {
    /// Aliases with argon2 hashes and API tokens from the config (`[auth.static]`).
    Static,
    /// JWTs checked against a key or JWKS (`[auth.jwt]`).
    Jwt,
    /// A NATS request to an auth backend (`[auth.callout]`).
    Callout,
}

impl TryFrom<String> for ProviderKind {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "static" => Ok(ProviderKind::Static),
            "jwt" => Ok(ProviderKind::Jwt),
            "callout" => Ok(ProviderKind::Callout),
            _ => Err(format!(
                "{name:?} is not one of \"static\", \"jwt\", \"callout\""
            )),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Static => "static",
            ProviderKind::Jwt => "jwt",
            ProviderKind::Callout => "callout",
        })
    }
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Bearer tokens accepted by `POST /v1/publish`.
    #[serde(deserialize_with = "de::non_empty_secrets")]
    pub publish_tokens: Vec<Secret>,
    /// Providers every dialect asks, in order: `static`, `jwt`, `callout`.
    pub providers: Vec<ProviderKind>,
    /// Per-dialect provider lists (each a subset of `providers`) replacing it there.
    pub dialects: DialectProviders,
    /// How long authenticating a client (whichever provider answers) may take before the
    /// client gets 504/1013. Every dialect reads it; `forwardemail.auth_backend_timeout`
    /// is its deprecated alias.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub backend_timeout: Duration,
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
            providers: vec![ProviderKind::Static],
            dialects: DialectProviders::default(),
            backend_timeout: Duration::from_secs(10),
            static_: StaticAuthSettings::default(),
            jwt: JwtSettings::default(),
            callout: CalloutSettings::default(),
            cache: AuthCacheSettings::default(),
        }
    }
}

impl AuthSettings {
    /// Whether `provider` is built (listed in `auth.providers`).
    pub fn uses(&self, provider: ProviderKind) -> bool {
        self.providers.contains(&provider)
    }

    /// What spans keys: the provider lists, and each used provider's required settings.
    pub(super) fn validate(&self, bus: BusKind) -> Result<(), ConfigError> {
        let invalid = |key: &str, reason: String| Err(ConfigError::invalid(key, reason));
        if self.providers.is_empty() {
            return invalid(
                "auth.providers",
                "list at least one of \"static\", \"jwt\", \"callout\"".into(),
            );
        }
        for (i, p) in self.providers.iter().enumerate() {
            if self.providers[..i].contains(p) {
                return invalid("auth.providers", format!("\"{p}\" is listed twice"));
            }
        }
        for (dialect, list) in self.dialects.all() {
            if let Some(p) = list.iter().find(|p| !self.uses(**p)) {
                return invalid(
                    &format!("auth.dialects.{dialect}"),
                    format!("\"{p}\" is not in auth.providers: list it there too so it is built"),
                );
            }
        }
        if self.uses(ProviderKind::Jwt) {
            let jwt = &self.jwt;
            if jwt.jwks_file.is_empty() {
                if jwt.algorithm == JwtAlgorithm::HS256 && jwt.secret.is_empty() {
                    return invalid(
                        "auth.jwt.secret",
                        "the jwt provider with HS256 needs a secret (or set auth.jwt.jwks_file)"
                            .into(),
                    );
                }
                if jwt.algorithm != JwtAlgorithm::HS256 && jwt.public_key_file.is_empty() {
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
        if self.uses(ProviderKind::Callout) {
            if bus != BusKind::Nats {
                return invalid(
                    "auth.providers",
                    "the callout provider needs bus.kind = \"nats\"".into(),
                );
            }
            if self.callout.timeout.is_zero() {
                return invalid("auth.callout.timeout", "must be more than 0".into());
            }
            let subject = &self.callout.subject;
            if subject.is_empty() || subject.contains([' ', '*', '>']) {
                return invalid(
                    "auth.callout.subject",
                    format!("{subject:?} is not a literal NATS subject"),
                );
            }
        }
        Ok(())
    }
}

/// `[auth.dialects]`: which providers a dialect asks, in order, keyed by its label
/// (`v1 = ["static"]`); a dialect not listed asks `auth.providers`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct DialectProviders(BTreeMap<Dialect, Vec<ProviderKind>>);

impl DialectProviders {
    /// The list configured for `dialect` (empty when none is).
    pub fn of(&self, dialect: Dialect) -> &[ProviderKind] {
        self.0.get(&dialect).map_or(&[], Vec::as_slice)
    }

    /// Every dialect's list, with its key under `auth.dialects`.
    pub fn all(&self) -> [(&'static str, &[ProviderKind]); 4] {
        Dialect::ALL.map(|dialect| (dialect.label(), self.of(dialect)))
    }
}

impl FromIterator<(Dialect, Vec<ProviderKind>)> for DialectProviders {
    fn from_iter<I: IntoIterator<Item = (Dialect, Vec<ProviderKind>)>>(lists: I) -> Self {
        DialectProviders(lists.into_iter().collect())
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
    #[serde(deserialize_with = "de::identifier")]
    pub id: String,
    /// argon2 PHC string (`herald hash-password`).
    #[serde(deserialize_with = "de::argon2_hash")]
    pub password_hash: Secret,
}

/// One API token.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenCredential {
    /// The token presented as the Basic username.
    #[serde(deserialize_with = "de::non_empty_secret")]
    pub token: Secret,
    /// Alias ids the token may connect as (`?alias_id=`).
    #[serde(deserialize_with = "de::identifiers")]
    pub alias_ids: Vec<String>,
}

/// A JWT signature algorithm herald verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(try_from = "String")]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.jwt.secret`.
    #[default]
    HS256,
    /// RSA-SHA256 with a public key or JWKS.
    RS256,
    /// ECDSA P-256 with a public key or JWKS.
    ES256,
}

impl TryFrom<String> for JwtAlgorithm {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match name.as_str() {
            "HS256" => Ok(JwtAlgorithm::HS256),
            "RS256" => Ok(JwtAlgorithm::RS256),
            "ES256" => Ok(JwtAlgorithm::ES256),
            _ => Err(format!("{name:?} is not one of HS256, RS256, ES256")),
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// `[auth.jwt]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtSettings {
    /// `HS256`, `RS256` or `ES256`.
    pub algorithm: JwtAlgorithm,
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
            algorithm: JwtAlgorithm::HS256,
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
