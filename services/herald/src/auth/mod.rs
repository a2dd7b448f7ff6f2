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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The alias id events are routed by.
    pub alias_id: String,
    /// Fingerprint of the API token (or JWT) used, if any, so a token revocation finds
    /// the session.
    pub token: Option<TokenFingerprint>,
    /// The user behind the session (JWT `auth.jwt.user_claim`, callout `user`), so a
    /// `{"userId": ...}` revocation finds it.
    pub user_id: Option<String>,
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
}

impl Credentials {
    /// The token presented, if any (what a token revocation names).
    fn token(&self) -> Option<&str> {
        match self {
            Credentials::Password { .. } => None,
            Credentials::Token { token, .. } | Credentials::Bearer { token, .. } => Some(token),
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
    async fn check(&self, credentials: &Credentials, ip: IpAddr) -> Verdict {
        match self {
            Provider::Static(p) => Verdict {
                result: p.check(credentials).await,
                ttl: None,
            },
            Provider::Jwt(p) => p.check(credentials),
            Provider::Callout(p) => p.check(credentials, ip).await,
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
        Ok(Arc::new(Authenticator {
            providers,
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
            move |_, cached| matches!(&cached.result, Ok(p) if p.alias_id == alias_id),
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

    /// Checks credentials, from cache when possible, else with each provider in order:
    /// a provider that does not know the credentials lets the next one try; any other
    /// answer is final. A timeout is returned as such and never cached.
    pub async fn authenticate(
        &self,
        credentials: &Credentials,
        ip: IpAddr,
    ) -> Result<Principal, AuthError> {
        let key = match credentials {
            Credentials::Password { username, password } => {
                self.hasher
                    .hash_one((0u8, username.to_lowercase(), password))
            }
            Credentials::Token { token, alias_id } => self.hasher.hash_one((1u8, token, alias_id)),
            Credentials::Bearer { token, alias_id } => self.hasher.hash_one((2u8, token, alias_id)),
        };
        // Concurrent logins with the same credentials (a reconnect storm) share one check.
        let cached = self
            .cache
            .try_get_with(key, async {
                let verdict = self.check(credentials, ip).await;
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
    async fn check(&self, credentials: &Credentials, ip: IpAddr) -> Verdict {
        let mut verdict = Verdict {
            result: Err(AuthError::InvalidCredentials),
            ttl: None,
        };
        for provider in &self.providers {
            verdict = provider.check(credentials, ip).await;
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
