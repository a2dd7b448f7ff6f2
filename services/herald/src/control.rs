//! Node-wide control messages on `herald.v1.control.revoke`: `{"aliasId": "..."}` closes
//! that alias's sessions on every node with 4001, `{"token": "..."}` the sessions opened
//! with that API token (or JWT), `{"userId": "..."}` the sessions of that user (JWT
//! `sub` or callout `user`); each drops the matching cached logins.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;

use futures_util::StreamExt;
use herald_protocol::subject::CONTROL_REVOKE;
use serde::Deserialize;

use crate::auth::TokenFingerprint;
use crate::bus::{Bus, BusMessage};
use crate::registry::{CloseAll, RoutingKey};
use crate::state::AppState;

/// Close code for sessions whose credentials were revoked.
pub const REVOKED: u16 = 4001;

/// A revocation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoke {
    /// The alias whose sessions close.
    pub alias_id: Option<String>,
    /// The API token whose sessions close.
    pub token: Option<String>,
    /// The user whose sessions close.
    pub user_id: Option<String>,
}

/// Revocations kept for sessions to check: a session that falls behind a burst checks
/// every one it has not seen yet, so the burst has to outrun this many before a session
/// cannot tell (it then closes with 1013 and re-authenticates).
const KEPT_REVOCATIONS: usize = 4096;

/// Bytes of alias and user ids the kept revocations may hold (ids come from the bus,
/// whose messages may be large).
const KEPT_ID_BYTES: usize = 1 << 20;

/// One revocation, as sessions match it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// Every session of this alias.
    Alias(Box<str>),
    /// Every session opened with this API token or JWT.
    Token(TokenFingerprint),
    /// Every session of this user.
    User(Box<str>),
}

impl Revocation {
    /// Bytes counted against [`KEPT_ID_BYTES`].
    fn id_bytes(&self) -> usize {
        match self {
            Revocation::Alias(id) | Revocation::User(id) => id.len(),
            Revocation::Token(_) => 0,
        }
    }
}

/// What a session learns from [`Revocations::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// None of the revocations checked is the session's.
    Clear,
    /// One of them is: close with [`REVOKED`].
    Revoked,
    /// Some were dropped before the session checked them: it cannot tell.
    Unknown,
}

/// The revocations this node received, numbered from 1, the latest number watched by every
/// session. A broadcast channel of fixed capacity dropped what a session had not read in
/// time, leaving revoked sessions open; here a session checks all it has not seen, from
/// the log, however many arrived since it last looked.
pub struct Revocations {
    /// Read by every session at once when a revocation arrives; written by one task.
    log: RwLock<Log>,
    /// The latest revocation's number, compared by each session with the last it checked.
    latest: AtomicU64,
}

/// The last [`KEPT_REVOCATIONS`] revocations.
struct Log {
    /// Oldest first.
    entries: VecDeque<Revocation>,
    /// The number of `entries[0]`.
    first: u64,
    /// Bytes of ids in `entries`.
    id_bytes: usize,
}

impl Default for Revocations {
    fn default() -> Self {
        Revocations {
            log: RwLock::new(Log {
                entries: VecDeque::new(),
                first: 1,
                id_bytes: 0,
            }),
            latest: AtomicU64::new(0),
        }
    }
}

impl Revocations {
    fn log(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        // Every update leaves the log consistent, so a panic elsewhere cannot corrupt it.
        self.log.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a revocation and tells every session.
    pub fn revoke(&self, revocation: Revocation) {
        let mut log = self.log.write().unwrap_or_else(|e| e.into_inner());
        log.id_bytes += revocation.id_bytes();
        log.entries.push_back(revocation);
        while log.entries.len() > KEPT_REVOCATIONS || log.id_bytes > KEPT_ID_BYTES {
            let Some(dropped) = log.entries.pop_front() else {
                break;
            };
            log.id_bytes -= dropped.id_bytes();
            log.first += 1;
        }
        let latest = log.first + log.entries.len() as u64 - 1;
        // Stored under the lock, so the number sessions see only grows.
        self.latest.store(latest, Ordering::Release);
    }

    /// The number of the latest revocation (0 before the first).
    pub fn latest(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// Whether a revocation numbered after `seen`, up to `upto`, is one `hits`.
    pub fn check(&self, seen: u64, upto: u64, hits: impl Fn(&Revocation) -> bool) -> Check {
        let log = self.log();
        if seen + 1 < log.first {
            return Check::Unknown;
        }
        let start = usize::try_from(seen + 1 - log.first).unwrap_or(usize::MAX);
        let end = usize::try_from((upto + 1).saturating_sub(log.first))
            .unwrap_or(usize::MAX)
            .min(log.entries.len());
        if start < end && log.entries.range(start..end).any(hits) {
            Check::Revoked
        } else {
            Check::Clear
        }
    }
}

/// A revocation body that is neither JSON nor MessagePack of the expected shape.
#[derive(Debug, thiserror::Error)]
#[error("revocation body must be {{\"aliasId\": \"...\"}}, {{\"token\": \"...\"}} or {{\"userId\": \"...\"}}: {source}")]
pub struct DecodeError {
    /// Why the MessagePack reading failed (tried after JSON).
    #[source]
    source: rmp_serde::decode::Error,
}

/// Decodes a revocation body (JSON, or MessagePack like every other bus body).
pub fn decode(message: &BusMessage) -> Result<Revoke, DecodeError> {
    serde_json::from_slice(&message.payload)
        .or_else(|_| rmp_serde::from_slice(&message.payload))
        .map_err(|source| DecodeError { source })
}

/// Listens for revocations until the bus goes away (resubscribing if the stream ends).
pub async fn run(bus: Bus, state: actix_web::web::Data<AppState>) {
    loop {
        let mut messages = match bus.subscribe(CONTROL_REVOKE).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to revocations; retrying in 1s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            match decode(&message) {
                Ok(Revoke {
                    token: Some(token), ..
                }) => {
                    let fingerprint = TokenFingerprint::of(&token);
                    tracing::info!("API token revoked: closing its sessions");
                    state.auth.forget_token(fingerprint);
                    state.revoke(Revocation::Token(fingerprint));
                }
                Ok(Revoke {
                    alias_id: Some(alias_id),
                    ..
                }) => {
                    tracing::info!(alias_id = %alias_id, "credentials revoked: closing sessions");
                    state.auth.forget_alias(&alias_id);
                    // Also through the log: a session authenticated but not yet in its
                    // alias's registry is found there.
                    state.revoke(Revocation::Alias(alias_id.as_str().into()));
                    state.directory.close_all(CloseAll {
                        key: RoutingKey::Alias(alias_id),
                        code: REVOKED,
                        reason: "credentials revoked",
                    });
                }
                Ok(Revoke {
                    user_id: Some(user_id),
                    ..
                }) => {
                    tracing::info!(user_id = %user_id, "user revoked: closing sessions");
                    state.auth.forget_user(&user_id);
                    state.revoke(Revocation::User(user_id.into()));
                }
                Ok(Revoke { .. }) => {
                    tracing::warn!("revocation without aliasId, token or userId ignored")
                }
                Err(reason) => {
                    crate::metrics::bus_decode_error();
                    tracing::warn!(subject = CONTROL_REVOKE, %reason, "skipping undecodable revocation");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(n: usize) -> Revocation {
        Revocation::User(format!("user-{n}").into())
    }

    #[test]
    fn a_session_checks_every_revocation_since_it_last_looked() {
        let revocations = Revocations::default();
        let seen = revocations.latest();
        for n in 0..1000 {
            revocations.revoke(user(n));
        }
        let upto = revocations.latest();
        assert_eq!(upto, 1000);
        let is = |n| move |r: &Revocation| *r == user(n);
        assert_eq!(revocations.check(seen, upto, is(0)), Check::Revoked);
        assert_eq!(revocations.check(seen, upto, is(999)), Check::Revoked);
        assert_eq!(revocations.check(1, upto, is(0)), Check::Clear, "seen");
        assert_eq!(revocations.check(seen, upto, is(1000)), Check::Clear);
    }

    #[test]
    fn a_session_further_behind_than_the_log_cannot_tell() {
        let revocations = Revocations::default();
        for n in 0..KEPT_REVOCATIONS + 10 {
            revocations.revoke(user(n));
        }
        let upto = revocations.latest();
        assert_eq!(revocations.check(0, upto, |_| false), Check::Unknown);
        assert_eq!(revocations.check(10, upto, |_| false), Check::Clear);
        // Long ids are bounded by bytes as well as by count.
        revocations.revoke(Revocation::Alias("a".repeat(KEPT_ID_BYTES).into()));
        assert_eq!(revocations.log().entries.len(), 1);
        revocations.revoke(Revocation::Alias("b".repeat(KEPT_ID_BYTES + 1).into()));
        assert!(revocations.log().entries.is_empty());
        let upto = revocations.latest();
        assert_eq!(revocations.check(upto - 1, upto, |_| true), Check::Unknown);
    }
}
