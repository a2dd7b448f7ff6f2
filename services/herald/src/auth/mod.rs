//! Authentication of `/v1/ws` clients by the providers `auth.providers` lists, in order:
//! the static file (aliases with argon2 hashes, API tokens with their aliases), JWTs
//! (HS256/RS256/ES256, keys from config or a JWKS file) and the NATS auth callout.
//! Results are cached in moka (positive and negative TTLs, a size bound), keyed by a
//! salted SHA-256 digest so no password or token is kept in memory and no two credentials
//! share an entry. Every alias id a provider returns must be a subject token
//! (`[A-Za-z0-9_-]{1,128}`): anything else (`*`, `>`, `a.b`) would subscribe the session to
//! a NATS wildcard, so the credentials are refused.

mod callout;
mod jwt;
mod static_file;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::subject::validate_identifier;
use moka::future::Cache;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use static_file::{hash_password, verify_password};

use crate::bus::Bus;
use crate::config::{ProviderKind, Secret, Settings};
use crate::dialect::Dialect;

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
/// SHA-256, so a revocation can only ever match the token it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenFingerprint([u8; 32]);

impl TokenFingerprint {
    /// The fingerprint of `token` (the same on every call and every node).
    pub fn of(token: &str) -> Self {
        TokenFingerprint(Sha256::digest(token.as_bytes()).into())
    }

    /// The digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// Whether `presented` is one of `tokens`, in time that depends neither on how much of a
/// token it matches nor on which one: every token is compared, digest against digest, so
/// lengths do not leak either.
pub fn token_in(tokens: &[Secret], presented: &str) -> bool {
    let presented = TokenFingerprint::of(presented);
    tokens
        .iter()
        .fold(subtle::Choice::from(0), |found, token| {
            found
                | TokenFingerprint::of(token.expose())
                    .as_bytes()
                    .ct_eq(presented.as_bytes())
        })
        .into()
}

/// Longest part of a refused identifier echoed into refusals and logs.
const ECHO_LIMIT: usize = 64;

/// `id` cut to [`ECHO_LIMIT`] characters, so a huge claim does not flood the log.
fn echo(id: &str) -> String {
    match id.char_indices().nth(ECHO_LIMIT) {
        Some((cut, _)) => format!("{}…", &id[..cut]),
        None => id.to_owned(),
    }
}

/// Refuses credentials whose provider (`provider`) names an alias id that cannot be one
/// subject token: the session would otherwise subscribe to whatever the id spells.
fn check_alias_ids(provider: &'static str, ids: &[String]) -> Result<(), AuthError> {
    match ids.iter().find(|id| validate_identifier(id).is_err()) {
        None => Ok(()),
        Some(bad) => {
            tracing::warn!(
                provider,
                alias_id = %echo(bad),
                "credentials refused: they name an alias id that is not a valid alias id ([A-Za-z0-9_-]{{1,128}})"
            );
            Err(AuthError::InvalidAliasId(echo(bad)))
        }
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
    /// Valid credentials naming an alias id that is not `[A-Za-z0-9_-]{1,128}`.
    #[error("these credentials name alias id {0:?}, which is not a valid alias id ([A-Za-z0-9_-]{{1,128}}): ask their issuer for credentials with valid alias ids")]
    InvalidAliasId(String),
    /// Every password check of the node was busy for longer than a client should wait
    /// (`limits.max_password_checks`); never cached.
    #[error("this node is busy checking other passwords (limits.max_password_checks); retry in a second")]
    Busy,
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

impl moka::Expiry<CacheKey, Cached> for PerEntryTtl {
    fn expire_after_create(&self, _: &CacheKey, value: &Cached, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// A cache key: SHA-256 over a per-process salt and the credentials, so the cache holds
/// nothing a memory dump could check passwords against offline without the salt, and two
/// credentials never share a verdict (a 64-bit hash could be made to collide).
type CacheKey = [u8; 32];

/// Builds [`CacheKey`]s: each field is length-prefixed, so `("ab", "c")` and `("a", "bc")`
/// differ.
struct KeyDigest(Sha256);

impl KeyDigest {
    fn new(salt: &[u8; 32], kind: u8, order: &[usize]) -> Self {
        let mut digest = Sha256::new();
        digest.update(salt);
        digest.update([kind]);
        digest.update((order.len() as u64).to_le_bytes());
        for &i in order {
            digest.update((i as u64).to_le_bytes());
        }
        KeyDigest(digest)
    }

    fn field(mut self, value: Option<&str>) -> Self {
        match value {
            None => self.0.update([0]),
            Some(value) => {
                self.0.update([1]);
                self.0.update((value.len() as u64).to_le_bytes());
                self.0.update(value.as_bytes());
            }
        }
        self
    }

    fn finish(self) -> CacheKey {
        self.0.finalize().into()
    }
}

/// The cache key of `credentials` for a dialect asking providers `order`.
fn cache_key(salt: &[u8; 32], credentials: &Credentials, order: &[usize]) -> CacheKey {
    match credentials {
        Credentials::Password { username, password } => KeyDigest::new(salt, 0, order)
            .field(Some(&username.to_lowercase()))
            .field(Some(password)),
        Credentials::Token { token, alias_id } => KeyDigest::new(salt, 1, order)
            .field(Some(token))
            .field(Some(alias_id)),
        Credentials::Bearer { token, alias_id } => KeyDigest::new(salt, 2, order)
            .field(Some(token))
            .field(alias_id.as_deref()),
        Credentials::User { token } => KeyDigest::new(salt, 3, order).field(Some(token)),
    }
    .finish()
}

/// The configured providers, in order, behind one cache.
pub struct Authenticator {
    providers: Vec<Provider>,
    /// Which providers (indices into `providers`) each dialect asks, in order.
    dialects: [Vec<usize>; Dialect::ALL.len()],
    cache: Cache<CacheKey, Cached>,
    ttl: Duration,
    negative_ttl: Duration,
    salt: [u8; 32],
}

impl Authenticator {
    /// Builds the providers `auth.providers` lists from validated settings (a JWT key or
    /// JWKS file that does not load fails here, at start).
    pub fn new(settings: &Settings, bus: &Bus) -> anyhow::Result<Arc<Authenticator>> {
        let auth = &settings.auth;
        let mut providers = Vec::new();
        for kind in &auth.providers {
            providers.push(match kind {
                ProviderKind::Static => Provider::Static(static_file::StaticProvider::new(
                    auth,
                    settings.limits.max_password_checks,
                )),
                ProviderKind::Jwt => {
                    Provider::Jwt(jwt::JwtProvider::new(&auth.jwt, auth.cache.ttl)?)
                }
                ProviderKind::Callout => match bus {
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
            });
        }
        let cache = &auth.cache;
        let dialects = Dialect::ALL.map(|dialect| {
            let names = match auth.dialects.of(dialect) {
                [] => &auth.providers[..],
                names => names,
            };
            names
                .iter()
                .filter_map(|n| auth.providers.iter().position(|p| p == n))
                .collect()
        });
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
            salt: rand::random(),
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
        dialect: Dialect,
    ) -> Result<Principal, AuthError> {
        let order = self.dialects[dialect.index()].as_slice();
        let key = cache_key(&self.salt, credentials, order);
        // Concurrent logins with the same credentials (a reconnect storm) share one check.
        let cached = self
            .cache
            .try_get_with(key, async {
                let verdict = self.check(credentials, ip, (dialect.label(), order)).await;
                let default_ttl = match verdict.result {
                    Ok(_) => self.ttl,
                    // Says nothing about the credentials: the next try must check again.
                    Err(AuthError::Timeout) => return Err(AuthError::Timeout),
                    Err(AuthError::Busy) => return Err(AuthError::Busy),
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

    #[test]
    fn alias_ids_must_be_subject_tokens() {
        let ok = ["64b7f0c2a1b2c3d4e5f60718".to_owned(), "a_b-C".to_owned()];
        assert_eq!(check_alias_ids("jwt", &ok), Ok(()));
        for bad in ["*", ">", "a.b", "", "x y", &"a".repeat(129)] {
            let ids = [ok[0].clone(), bad.to_owned()];
            assert!(
                matches!(
                    check_alias_ids("jwt", &ids),
                    Err(AuthError::InvalidAliasId(_))
                ),
                "{bad:?}"
            );
        }
        let Err(AuthError::InvalidAliasId(echoed)) = check_alias_ids("jwt", &["*".repeat(10_000)])
        else {
            panic!("refused")
        };
        assert!(echoed.chars().count() <= ECHO_LIMIT + 1, "a huge id is cut");
    }

    #[test]
    fn tokens_are_found_whatever_their_length_and_position() {
        let tokens = [Secret::from("first-token"), Secret::from("second")];
        assert!(token_in(&tokens, "second"));
        assert!(token_in(&tokens, "first-token"));
        for wrong in ["", "secon", "second!", "first-tokeN", "x"] {
            assert!(!token_in(&tokens, wrong), "{wrong:?}");
        }
        assert!(!token_in(&[], "anything"));
    }

    #[test]
    fn cache_keys_are_salted_and_keep_fields_apart() {
        let salt = [7; 32];
        let password = |u: &str, p: &str| Credentials::Password {
            username: u.into(),
            password: p.into(),
        };
        let key = |c: &Credentials| cache_key(&salt, c, &[0, 1]);
        assert_eq!(key(&password("A@x", "pw")), key(&password("a@x", "pw")));
        assert_ne!(key(&password("a@x", "pw")), key(&password("a@x", "pW")));
        assert_ne!(key(&password("a@xp", "w")), key(&password("a@x", "pw")));
        assert_ne!(
            cache_key(&[8; 32], &password("a@x", "pw"), &[0, 1]),
            key(&password("a@x", "pw")),
            "another process, another key"
        );
        assert_ne!(
            cache_key(&salt, &password("a@x", "pw"), &[1]),
            key(&password("a@x", "pw")),
            "another provider list, another key"
        );
        let bearer = |alias_id: Option<&str>| Credentials::Bearer {
            token: "t".into(),
            alias_id: alias_id.map(str::to_owned),
        };
        assert_ne!(key(&bearer(None)), key(&bearer(Some(""))));
        assert_ne!(
            key(&bearer(Some("a"))),
            key(&Credentials::Token {
                token: "t".into(),
                alias_id: "a".into()
            })
        );
    }
}
