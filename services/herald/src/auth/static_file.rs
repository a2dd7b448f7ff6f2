//! The static-file provider: aliases with argon2 hashes, API tokens with their aliases.

use std::collections::{HashMap, HashSet};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use super::{AuthError, Credentials, Principal, TokenFingerprint};
use crate::config::AuthSettings;

/// Static credentials, indexed.
pub struct StaticProvider {
    /// Login name → (alias id, PHC hash).
    aliases: HashMap<String, (String, String)>,
    /// Token → alias ids it may act for.
    tokens: HashMap<String, HashSet<String>>,
}

/// Hash verified when the alias is unknown, so unknown and known aliases take equally long.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$+td4yWjMyDuiwbSPrRE3VQ$I2qM2Iy+I3V09y+5oJiB7NV+l/om0pcpqV3x+wo7xh4";

impl StaticProvider {
    /// Indexes the validated settings.
    pub fn new(settings: &AuthSettings) -> StaticProvider {
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
        StaticProvider { aliases, tokens }
    }

    /// Checks an alias password or an API token; a bearer JWT is not its business.
    pub async fn check(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
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
                        alias_id: Some(alias_id),
                        ..Principal::default()
                    }),
                    _ => Err(AuthError::InvalidCredentials),
                }
            }
            Credentials::Token { token, alias_id } => match self.tokens.get(token) {
                None => Err(AuthError::InvalidCredentials),
                Some(ids) if ids.contains(alias_id) => Ok(Principal {
                    alias_id: Some(alias_id.clone()),
                    token: Some(TokenFingerprint::of(token)),
                    ..Principal::default()
                }),
                Some(_) => Err(AuthError::AliasNotAllowed(alias_id.clone())),
            },
            Credentials::Bearer { .. } | Credentials::User { .. } => {
                Err(AuthError::InvalidCredentials)
            }
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
