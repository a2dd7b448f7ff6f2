//! The JWT provider: HS256/RS256/ES256 with a key from config or a JWKS file (re-read
//! when its modification time changes); `iss`/`aud`/`exp`/`nbf` checked with
//! `auth.jwt.leeway`; the alias ids come from `auth.jwt.alias_claim` and must all be
//! valid alias ids, or the token is refused.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::{check_alias_ids, choose_alias, AuthError, Credentials, Principal, Verdict};
use crate::config::{JwtAlgorithm, JwtSettings};

/// Where verification keys come from.
enum Keys {
    /// One key from config (secret or PEM file).
    Fixed(DecodingKey),
    /// A JWKS file, re-read when it changes.
    Jwks {
        path: String,
        loaded: Mutex<(Option<SystemTime>, JwkSet)>,
    },
}

/// Verifies bearer JWTs.
pub struct JwtProvider {
    keys: Keys,
    validation: Validation,
    alias_claim: String,
    user_claim: String,
    username_claim: String,
    max_ttl: Duration,
}

fn load_jwks(path: &str) -> anyhow::Result<(Option<SystemTime>, JwkSet)> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path)?;
    let set: JwkSet = serde_json::from_str(&text)?;
    Ok((modified, set))
}

impl JwtProvider {
    /// Loads the key (or JWKS file) named by validated settings.
    pub fn new(settings: &JwtSettings, max_ttl: Duration) -> anyhow::Result<JwtProvider> {
        let algorithm = match settings.algorithm {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::ES256 => Algorithm::ES256,
        };
        let keys = if !settings.jwks_file.is_empty() {
            let loaded = load_jwks(&settings.jwks_file).map_err(|e| {
                anyhow::anyhow!(
                    "config error at auth.jwt.jwks_file: cannot load {}: {e}",
                    settings.jwks_file
                )
            })?;
            Keys::Jwks {
                path: settings.jwks_file.clone(),
                loaded: Mutex::new(loaded),
            }
        } else if algorithm == Algorithm::HS256 {
            Keys::Fixed(DecodingKey::from_secret(
                settings.secret.expose().as_bytes(),
            ))
        } else {
            let pem = std::fs::read(&settings.public_key_file).map_err(|e| {
                anyhow::anyhow!(
                    "config error at auth.jwt.public_key_file: cannot read {}: {e}",
                    settings.public_key_file
                )
            })?;
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(&pem),
                _ => DecodingKey::from_ec_pem(&pem),
            }
            .map_err(|e| {
                anyhow::anyhow!(
                    "config error at auth.jwt.public_key_file: not a {} public key: {e}",
                    settings.algorithm
                )
            })?;
            Keys::Fixed(key)
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = settings.leeway.as_secs();
        validation.validate_nbf = true;
        if settings.issuer.is_empty() {
            validation.set_required_spec_claims(&["exp"]);
        } else {
            validation.set_issuer(&[&settings.issuer]);
            validation.set_required_spec_claims(&["exp", "iss"]);
        }
        if settings.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&settings.audience]);
        }
        Ok(JwtProvider {
            keys,
            validation,
            alias_claim: settings.alias_claim.clone(),
            user_claim: settings.user_claim.clone(),
            username_claim: settings.username_claim.clone(),
            max_ttl,
        })
    }

    /// The key for a token's `kid` (JWKS), re-reading the file if it changed.
    fn key_for(&self, kid: Option<&str>) -> Option<DecodingKey> {
        match &self.keys {
            Keys::Fixed(key) => Some(key.clone()),
            Keys::Jwks { path, loaded } => {
                let mut loaded = loaded.lock().unwrap_or_else(|e| e.into_inner());
                let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
                if modified != loaded.0 {
                    match load_jwks(path) {
                        Ok(fresh) => {
                            tracing::info!(path = %path, "JWKS file changed: reloaded");
                            *loaded = fresh;
                        }
                        Err(error) => {
                            tracing::warn!(path = %path, %error, "cannot reload the JWKS file; keeping the previous keys")
                        }
                    }
                }
                let set = &loaded.1;
                let jwk = match kid {
                    Some(kid) => set.find(kid),
                    None if set.keys.len() == 1 => set.keys.first(),
                    None => None,
                }?;
                DecodingKey::from_jwk(jwk).ok()
            }
        }
    }

    /// Verifies a bearer JWT; passwords and API tokens are not its business.
    pub fn check(&self, credentials: &Credentials) -> Verdict {
        let (token, alias_id) = match credentials {
            Credentials::Bearer { token, alias_id } => (token, Some(alias_id.as_deref())),
            Credentials::User { token } => (token, None),
            _ => {
                return Verdict {
                    result: Err(AuthError::InvalidCredentials),
                    ttl: None,
                }
            }
        };
        let (result, ttl) = match self.verify(token, alias_id) {
            Ok((principal, ttl)) => (Ok(principal), Some(ttl)),
            Err(e) => (Err(e), None),
        };
        Verdict { result, ttl }
    }

    /// Verifies `token`; `alias` is `Some(requested)` when the dialect needs an alias.
    fn verify(
        &self,
        token: &str,
        alias: Option<Option<&str>>,
    ) -> Result<(Principal, Duration), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|error| {
            tracing::debug!(%error, "bearer token is not a JWT");
            AuthError::InvalidCredentials
        })?;
        let key = self
            .key_for(header.kid.as_deref())
            .ok_or(AuthError::InvalidCredentials)?;
        let data =
            jsonwebtoken::decode::<Value>(token, &key, &self.validation).map_err(|error| {
                tracing::debug!(%error, "JWT refused");
                AuthError::InvalidCredentials
            })?;
        let claims = data.claims;
        let allowed: Vec<String> = match claims.get(&self.alias_claim) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        check_alias_ids("jwt", &allowed)?;
        let alias_id = alias
            .map(|requested| choose_alias(&allowed, requested))
            .transpose()?;
        let text = |claim: &str| match claims.get(claim) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let user_id = text(&self.user_claim);
        let username = text(&self.username_claim);
        // Never cache a login past the token's own expiry.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ttl = claims
            .get("exp")
            .and_then(Value::as_u64)
            .map_or(self.max_ttl, |exp| {
                Duration::from_secs(exp.saturating_sub(now)).min(self.max_ttl)
            });
        Ok((
            Principal {
                alias_id,
                token: None,
                user_id,
                username,
                claims: std::sync::Arc::new(claims.as_object().cloned().unwrap_or_default()),
            },
            ttl,
        ))
    }
}
