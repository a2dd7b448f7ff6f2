//! Authentication of `/v1/ws` clients by the providers `auth.providers` lists, in order:
//! the static file (aliases with argon2 hashes, API tokens with their aliases), JWTs
//! (HS256/RS256/ES256, keys from config or a JWKS file) and the NATS auth callout.
//! Results are cached in moka (positive and negative TTLs, a size bound), keyed by a
//! salted hash so no password or token is kept in memory.

mod callout;
mod jwt;
mod static_file;

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache;

pub use static_file::{hash_password, verify_password};

use crate::bus::Bus;
use crate::config::Settings;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Principal {
    /// The alias id events are routed by (`None` for the user dialects, `/ws` and rooms).
    pub alias_id: Option<String>,
    /// Fingerprint of the API token (or JWT) used, if any, so a token revocation finds
    /// the session.
    pub token: Option<TokenFingerprint>,
    /// The user behind the session (JWT `auth.jwt.user_claim`, callout `user`), so a
    /// `{"userId": ...}` revocation finds it.
    pub user_id: Option<String>,
    /// A display name (JWT `auth.jwt.username_claim`, callout `claims.username`).
    pub username: Option<String>,
    /// The token's claims (JWT payload, callout `claims`): topic and room permissions,
    /// `exp` for `/ws`'s expiry warning.
    pub claims: Arc<serde_json::Map<String, serde_json::Value>>,
}

/// A stable, non-reversible stand-in for an API token (sessions never keep the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFingerprint(u64);

impl TokenFingerprint {
    /// The fingerprint of `token` (the same on every call within a process).
    pub fn of(token: &str) -> Self {
        use std::hash::{DefaultHasher, Hash, Hasher};
        let mut hasher = DefaultHasher::new();
        token.hash(&mut hasher);
        TokenFingerprint(hasher.finish())
    }
}

/// What a client presented.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// `alias@domain` and its password.
    Password {
        /// The alias login.
        username: String,
        /// The password.
        password: String,
    },
    /// An API token acting for one of its aliases.
    Token {
        /// The token.
        token: String,
        /// The alias to connect as.
        alias_id: String,
    },
    /// `Authorization: Bearer <JWT>`, with `?alias_id=` when the token lists several.
    Bearer {
        /// The JWT.
        token: String,
        /// The alias to connect as, if the client said.
        alias_id: Option<String>,
    },
    /// A user's JWT on a user dialect (`/ws`, rooms): no alias is chosen.
    User {
        /// The JWT.
        token: String,
    },
}

impl Credentials {
    /// The token presented, if any (what a token revocation names).
    fn token(&self) -> Option<&str> {
        match self {
            Credentials::Password { .. } => None,
            Credentials::Token { token, .. }
            | Credentials::Bearer { token, .. }
            | Credentials::User { token } => Some(token),
        }
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown alias, wrong password, unknown token, or a JWT that does not verify.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// Valid credentials that may not act for the requested alias.
    #[error("these credentials may not connect as alias {0}")]
    AliasNotAllowed(String),
    /// Valid credentials that allow no alias at all.
    #[error("these credentials allow no alias")]
    NoAlias,
    /// Valid credentials for several aliases, and the client did not pick one.
    #[error("these credentials allow several aliases: add ?alias_id=<alias id>")]
    AliasRequired,
    /// The auth backend did not answer in time (never treated as allow).
    #[error("the authentication backend did not answer in time; retry later")]
    Timeout,
}

/// Picks the alias to connect as from those the credentials allow.
fn choose_alias(allowed: &[String], requested: Option<&str>) -> Result<String, AuthError> {
    match (requested, allowed) {
        (_, []) => Err(AuthError::NoAlias),
        (Some(id), _) if allowed.iter().any(|a| a == id) => Ok(id.to_owned()),
        (Some(id), _) => Err(AuthError::AliasNotAllowed(id.to_owned())),
        (None, [only]) => Ok(only.clone()),
        (None, _) => Err(AuthError::AliasRequired),
    }
}

/// One way of checking credentials.
enum Provider {
    Static(static_file::StaticProvider),
    Jwt(jwt::JwtProvider),
    Callout(callout::CalloutProvider),
}

/// A provider's verdict and how long it may be cached (`None`: the default TTL).
struct Verdict {
    result: Result<Principal, AuthError>,
    ttl: Option<Duration>,
}

impl Provider {
    async fn check(&self, credentials: &Credentials, ip: IpAddr, dialect: &'static str) -> Verdict {
        match self {
            Provider::Static(p) => Verdict {
                result: p.check(credentials).await,
                ttl: None,
            },
            Provider::Jwt(p) => p.check(credentials),
            Provider::Callout(p) => p.check(credentials, ip, dialect).await,
        }
    }
}

/// A cached verdict with its own lifetime.
#[derive(Clone)]
struct Cached {
    result: Result<Principal, AuthError>,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<u64, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _: &u64, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// The configured providers, in order, behind one cache.
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Which providers (indices into `providers`) each dialect asks, in order.
    dialects: std::collections::HashMap<&'static str, Vec<usize>>,
    cache: Cache<u64, Cached>,
    ttl: Duration,
    negative_ttl: Duration,
    hasher: RandomState,
}

impl Authenticator {
    /// Builds the providers `auth.providers` lists from validated settings (a JWT key or
    /// JWKS file that does not load fails here, at start).
    pub fn new(settings: &Settings, bus: &Bus) -> anyhow::Result<Arc<Authenticator>> {
        let auth = &settings.auth;
        let mut providers = Vec::new();
        for name in &auth.providers {
            providers.push(match name.as_str() {
                "static" => Provider::Static(static_file::StaticProvider::new(auth)),
                "jwt" => Provider::Jwt(jwt::JwtProvider::new(&auth.jwt, auth.cache.ttl)?),
                "callout" => match bus {
                    Bus::Nats(nats) => Provider::Callout(callout::CalloutProvider::new(
                        nats.client().clone(),
                        &auth.callout,
                    )),
                    Bus::Memory(_) => {
                        anyhow::bail!(
                            "config error at auth.providers: callout needs bus.kind = \"nats\""
                        )
                    }
                },
                other => {
                    anyhow::bail!("config error at auth.providers: unknown provider {other:?}")
                }
            });
        }
        let cache = &auth.cache;
        let dialects = ["v1", "jmap", "realtime", "rooms"]
            .into_iter()
            .map(|dialect| {
                let names = match auth.dialects.of(dialect) {
                    [] => &auth.providers[..],
                    names => names,
                };
                let order = names
                    .iter()
                    .filter_map(|n| auth.providers.iter().position(|p| p == n))
                    .collect();
                (dialect, order)
            })
            .collect();
        Ok(Arc::new(Authenticator {
            providers,
            dialects,
            cache: Cache::builder()
                .max_capacity(cache.max_entries)
                .expire_after(PerEntryTtl)
                .support_invalidation_closures()
                .build(),
            ttl: cache.ttl,
            negative_ttl: cache.negative_ttl,
            hasher: RandomState::new(),
        }))
    }

    /// Drops cached logins of a revoked alias, so its next connection is checked afresh.
    pub fn forget_alias(&self, alias_id: &str) {
        let alias_id = alias_id.to_owned();
        if let Err(error) = self.cache.invalidate_entries_if(
            move |_, cached| matches!(&cached.result, Ok(p) if p.alias_id.as_ref() == Some(&alias_id)),
        ) {
            tracing::error!(%error, "cannot drop cached logins of a revoked alias");
        }
    }

    /// Drops cached logins made with a revoked token.
    pub fn forget_token(&self, token: TokenFingerprint) {
        if let Err(error) = self.cache.invalidate_entries_if(
            move |_, cached| matches!(&cached.result, Ok(p) if p.token == Some(token)),
        ) {
            tracing::error!(%error, "cannot drop cached logins of a revoked token");
        }
    }

    /// Drops cached logins of a revoked user.
    pub fn forget_user(&self, user_id: &str) {
        let user_id = user_id.to_owned();
        if let Err(error) = self.cache.invalidate_entries_if(move |_, cached| {
            matches!(&cached.result, Ok(p) if p.user_id.as_deref() == Some(user_id.as_str()))
        }) {
            tracing::error!(%error, "cannot drop cached logins of a revoked user");
        }
    }

    /// Checks credentials, from cache when possible, else with each of `dialect`'s
    /// providers in order: a provider that does not know the credentials lets the next
    /// one try; any other answer is final. A timeout is returned as such and never cached.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        ip: IpAddr,
        dialect: &str,
    ) -> Result<Principal, AuthError> {
        let (dialect, order) = self
            .dialects
            .get_key_value(dialect)
            .map_or(("v1", &[][..]), |(d, o)| (*d, o.as_slice()));
        let key = match credentials {
            Credentials::Password { username, password } => {
                self.hasher
                    .hash_one((0u8, username.to_lowercase(), password, order))
            }
            Credentials::Token { token, alias_id } => {
                self.hasher.hash_one((1u8, token, alias_id, order))
            }
            Credentials::Bearer { token, alias_id } => {
                self.hasher.hash_one((2u8, token, alias_id, order))
            }
            Credentials::User { token } => self.hasher.hash_one((3u8, token, order)),
        };
        // Concurrent logins with the same credentials (a reconnect storm) share one check.
        let cached = self
            .cache
            .try_get_with(key, async {
                let verdict = self.check(credentials, ip, (dialect, order)).await;
                let default_ttl = match verdict.result {
                    Ok(_) => self.ttl,
                    Err(AuthError::Timeout) => return Err(AuthError::Timeout),
                    Err(_) => self.negative_ttl,
                };
                Ok(Cached {
                    ttl: verdict.ttl.map_or(default_ttl, |t| t.min(default_ttl)),
                    result: verdict.result,
                })
            })
            .await;
        match cached {
            Ok(cached) => cached.result,
            Err(error) => Err((*error).clone()),
        }
    }

    /// Asks each provider in order until one gives a definitive answer.
    async fn check(
        &self,
        credentials: &Credentials,
        ip: IpAddr,
        (dialect, order): (&'static str, &[usize]),
    ) -> Verdict {
        let mut verdict = Verdict {
            result: Err(AuthError::InvalidCredentials),
            ttl: None,
        };
        for provider in order.iter().map(|&i| &self.providers[i]) {
            verdict = provider.check(credentials, ip, dialect).await;
            if verdict.result != Err(AuthError::InvalidCredentials) {
                break;
            }
        }
        if let Ok(principal) = &mut verdict.result {
            if let Some(token) = credentials.token() {
                principal.token = Some(TokenFingerprint::of(token));
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_choice() {
        let two = ["a".to_owned(), "b".to_owned()];
        assert_eq!(choose_alias(&two, Some("b")), Ok("b".into()));
        assert_eq!(
            choose_alias(&two, Some("c")),
            Err(AuthError::AliasNotAllowed("c".into()))
        );
        assert_eq!(choose_alias(&two, None), Err(AuthError::AliasRequired));
        assert_eq!(choose_alias(&two[..1], None), Ok("a".into()));
        assert_eq!(choose_alias(&[], None), Err(AuthError::NoAlias));
    }
}
