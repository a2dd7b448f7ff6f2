//! The static-file provider: aliases with argon2 hashes, API tokens with their aliases.
//!
//! An argon2 check takes ~19 MiB and tens of milliseconds of a core, so at most
//! `limits.max_password_checks` run at once (default: one per core); a login that cannot
//! start one within [`CHECK_WAIT`] is told to retry ([`AuthError::Busy`]) instead of
//! queueing memory and threads without bound. Each running check borrows its working
//! memory from a pool of at most that many buffers: allocated afresh on whichever blocking
//! thread runs it, the 19 MiB would stay behind in that thread's malloc arena, and a
//! flood left ~160 MiB of them even one check at a time.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::{
    Algorithm, Argon2, Block, Params, PasswordHash, PasswordHasher, PasswordVerifier, Version,
};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

use super::{AuthError, Credentials, Principal, TokenFingerprint};
use crate::config::AuthSettings;

/// How long a login waits for a free password check before it is told to retry: long
/// enough to ride out a burst of reconnects, short enough that a flood is answered.
pub const CHECK_WAIT: Duration = Duration::from_secs(1);

/// Static credentials, indexed.
pub struct StaticProvider {
    /// Login name → (alias id, PHC hash).
    aliases: HashMap<String, (String, String)>,
    /// Token digest → alias ids it may act for; searched in full, in constant time.
    tokens: Vec<(TokenFingerprint, HashSet<String>)>,
    /// One permit per password check allowed to run.
    checks: Arc<Semaphore>,
    /// Working memory of finished checks, reused by the next ones (never more buffers
    /// than permits).
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
}

/// Hash verified when the alias is unknown, so unknown and known aliases take equally long.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$+td4yWjMyDuiwbSPrRE3VQ$I2qM2Iy+I3V09y+5oJiB7NV+l/om0pcpqV3x+wo7xh4";

impl StaticProvider {
    /// Indexes the validated settings; `max_checks` password checks may run at once (0:
    /// one per core).
    pub fn new(settings: &AuthSettings, max_checks: usize) -> StaticProvider {
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
        let mut by_token: HashMap<TokenFingerprint, HashSet<String>> = HashMap::new();
        for t in &settings.static_.tokens {
            by_token
                .entry(TokenFingerprint::of(t.token.expose()))
                .or_default()
                .extend(t.alias_ids.iter().cloned());
        }
        let max_checks = match max_checks {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        StaticProvider {
            aliases,
            tokens: by_token.into_iter().collect(),
            checks: Arc::new(Semaphore::new(max_checks)),
            memory: Arc::default(),
        }
    }

    /// The alias ids `token` may act for, comparing it with every token in constant time
    /// (a map lookup would leak, through timing, how much of a guess was right).
    fn token_aliases(&self, token: &str) -> Option<&HashSet<String>> {
        let presented = TokenFingerprint::of(token);
        let mut found = None;
        for (fingerprint, ids) in &self.tokens {
            if bool::from(fingerprint.as_bytes().ct_eq(presented.as_bytes())) {
                found = Some(ids);
            }
        }
        found
    }

    /// Verifies `password` against `hash` on a blocking thread, once one of the node's
    /// password checks is free (within [`CHECK_WAIT`], else [`AuthError::Busy`]). The
    /// permit travels with the check, so a client that gives up does not free it early.
    async fn verify(&self, hash: String, password: String) -> Result<bool, AuthError> {
        let permit = tokio::time::timeout(CHECK_WAIT, Arc::clone(&self.checks).acquire_owned())
            .await
            .map_err(|_| {
                tracing::debug!("no free password check within {CHECK_WAIT:?}");
                AuthError::Busy
            })?
            .map_err(|_| AuthError::Busy)?;
        let pool = Arc::clone(&self.memory);
        Ok(actix_web::web::block(move || {
            let _permit = permit;
            let mut memory = pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            let ok = verify_with_memory(&mut memory, &hash, &password);
            pool.lock().unwrap_or_else(|e| e.into_inner()).push(memory);
            ok
        })
        .await
        .unwrap_or(false))
    }

    /// Checks an alias password or an API token; a bearer JWT is not its business.
    pub async fn check(&self, credentials: &Credentials) -> Result<Principal, AuthError> {
        match credentials {
            Credentials::Password { username, password } => {
                let entry = self.aliases.get(&username.to_lowercase()).cloned();
                let hash = entry
                    .as_ref()
                    .map_or(DUMMY_HASH.to_owned(), |(_, h)| h.clone());
                let ok = self.verify(hash, password.clone()).await?;
                match entry {
                    Some((alias_id, _)) if ok => Ok(Principal {
                        alias_id: Some(alias_id),
                        ..Principal::default()
                    }),
                    _ => Err(AuthError::InvalidCredentials),
                }
            }
            Credentials::Token { token, alias_id } => match self.token_aliases(token) {
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

/// Verifies a password against a PHC hash (argon2) as [`verify_password`] does, but with
/// `memory` as argon2's working memory (grown to the hash's cost and kept for the next
/// check).
fn verify_with_memory(memory: &mut Vec<Block>, phc: &str, password: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(hash.algorithm.as_str()) else {
        return false;
    };
    let Ok(version) = hash.version.map(Version::try_from).transpose() else {
        return false;
    };
    let Ok(params) = Params::try_from(&hash) else {
        return false;
    };
    let blocks = params.block_count();
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    let mut out = vec![0u8; expected.len()];
    Argon2::new(algorithm, version.unwrap_or_default(), params)
        .hash_password_into_with_memory(password.as_bytes(), salt, &mut out, &mut memory[..blocks])
        .is_ok()
        && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
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

    #[test]
    fn pooled_memory_verifies_like_the_crate_and_is_reused_across_costs() {
        let cheap = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        )
        .hash_password(b"small")
        .unwrap()
        .to_string();
        let mut memory = Vec::new();
        assert!(verify_with_memory(&mut memory, &cheap, "small"));
        assert!(!verify_with_memory(&mut memory, &cheap, "smalL"));
        assert!(verify_with_memory(&mut memory, DUMMY_HASH, "demo"));
        assert_eq!(memory.len(), 19 * 1024, "grown to the default cost");
        assert!(!verify_with_memory(&mut memory, DUMMY_HASH, "demO"));
        assert!(
            verify_with_memory(&mut memory, &cheap, "small"),
            "a bigger buffer serves a cheaper hash"
        );
        assert_eq!(memory.len(), 19 * 1024);
        assert!(!verify_with_memory(&mut memory, "not a hash", "x"));
        let argon2i = hash_password("p").unwrap().replace("argon2id", "argon2i");
        assert!(
            !verify_with_memory(&mut memory, &argon2i, "p"),
            "another variant, another hash"
        );
    }
}
