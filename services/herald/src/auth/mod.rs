//! Authentication of `/v1/ws` clients against the static credentials (aliases with argon2
//! hashes, API tokens with their aliases). Results are cached in moka, positive and
//! negative separately, keyed by a salted hash so no password is kept in memory.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use moka::future::Cache;

use crate::config::AuthSettings;

/// Who a session is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The alias id events are routed by.
    pub alias_id: String,
    /// Fingerprint of the API token used, if any, so a token revocation finds the session.
    pub token: Option<TokenFingerprint>,
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
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Unknown alias, wrong password, or unknown token.
    #[error("invalid credentials")]
    InvalidCredentials,
    /// A valid token that may not act for the requested alias.
    #[error("this API token may not connect as alias {0}")]
    AliasNotAllowed(String),
    /// The auth backend did not answer in time.
    #[error("the authentication backend did not answer in time; retry later")]
    Timeout,
}

/// The static-file provider with its cache.
pub struct StaticAuth {
    /// Login name → (alias id, PHC hash).
    aliases: HashMap<String, (String, String)>,
    /// Token → alias ids it may act for.
    tokens: HashMap<String, HashSet<String>>,
    positive: Cache<u64, Principal>,
    negative: Cache<u64, AuthError>,
    hasher: RandomState,
}

/// Hash verified when the alias is unknown, so unknown and known aliases take equally long.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$+td4yWjMyDuiwbSPrRE3VQ$I2qM2Iy+I3V09y+5oJiB7NV+l/om0pcpqV3x+wo7xh4";

impl StaticAuth {
    /// Builds the provider from validated settings.
    pub fn new(settings: &AuthSettings) -> Arc<StaticAuth> {
        let aliases = settings
            .static_
            .aliases
            .iter()
            .map(|a| {
                (
                    a.alias.to_lowercase(),
                    (a.id.clone(), a.password_hash.expose().to_owned()),
                )
            })
            .collect();
        let mut tokens: HashMap<String, HashSet<String>> = HashMap::new();
        for t in &settings.static_.tokens {
            tokens
                .entry(t.token.expose().to_owned())
                .or_default()
                .extend(t.alias_ids.iter().cloned());
        }
        let cache = &settings.cache;
        Arc::new(StaticAuth {
            aliases,
            tokens,
            positive: Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.ttl)
                .support_invalidation_closures()
                .build(),
            negative: Cache::builder()
                .max_capacity(cache.max_entries)
                .time_to_live(cache.negative_ttl)
                .build(),
            hasher: RandomState::new(),
        })
    }

    /// Drops cached logins of a revoked alias, so its next connection is checked afresh.
    pub fn forget_alias(&self, alias_id: &str) {
        let alias_id = alias_id.to_owned();
        if let Err(error) = self
            .positive
            .invalidate_entries_if(move |_, principal| principal.alias_id == alias_id)
        {
            tracing::error!(%error, "cannot drop cached logins of a revoked alias");
        }
    }

    /// Drops cached logins made with a revoked token.
    pub fn forget_token(&self, token: TokenFingerprint) {
        if let Err(error) = self
            .positive
            .invalidate_entries_if(move |_, principal| principal.token == Some(token))
        {
            tracing::error!(%error, "cannot drop cached logins of a revoked token");
        }
    }

    /// Checks credentials, from cache when possible.
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        let key = match credentials {
            Credentials::Password { username, password } => {
                self.hasher
                    .hash_one((0u8, username.to_lowercase(), password))
            }
            Credentials::Token { token, alias_id } => self.hasher.hash_one((1u8, token, alias_id)),
        };
        if let Some(principal) = self.positive.get(&key).await {
            return Ok(principal);
        }
        if let Some(error) = self.negative.get(&key).await {
            return Err(error);
        }
        let result = self.check(credentials).await;
        match &result {
            Ok(principal) => self.positive.insert(key, principal.clone()).await,
            Err(error) => self.negative.insert(key, error.clone()).await,
        }
        result
    }

    async fn check(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Password { username, password } => {
                let entry = self.aliases.get(&username.to_lowercase()).cloned();
                let hash = entry
                    .as_ref()
                    .map_or(DUMMY_HASH.to_owned(), |(_, h)| h.clone());
                let password = password.clone();
                let ok = actix_web::web::block(move || verify_password(&hash, &password))
                    .await
                    .unwrap_or(false);
                match entry {
                    Some((alias_id, _)) if ok => Ok(Principal {
                        alias_id,
                        token: None,
                    }),
                    _ => Err(AuthError::InvalidCredentials),
                }
            }
            Credentials::Token { token, alias_id } => match self.tokens.get(token) {
                None => Err(AuthError::InvalidCredentials),
                Some(ids) if ids.contains(alias_id) => Ok(Principal {
                    alias_id: alias_id.clone(),
                    token: Some(TokenFingerprint::of(token)),
                }),
                Some(_) => Err(AuthError::AliasNotAllowed(alias_id.clone())),
            },
        }
    }
}

/// Verifies a password against a PHC hash (argon2).
pub fn verify_password(phc: &str, password: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// Hashes a password for the static credentials file (`herald hash-password`).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default()
        .hash_password(password.as_bytes())?
        .to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let phc = hash_password("s3cret").unwrap();
        assert!(verify_password(&phc, "s3cret"));
        assert!(!verify_password(&phc, "s3cres"));
        assert!(
            verify_password(DUMMY_HASH, "demo"),
            "the dummy is the demo hash"
        );
        assert!(!verify_password("not a hash", "x"));
    }
}
