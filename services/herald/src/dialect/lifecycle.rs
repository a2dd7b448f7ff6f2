//! What every session watches besides its socket, whatever its dialect: the revocation
//! of its credentials and the node's drain ([`super::connection`] closes on them).

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use std::sync::Arc;

use tokio_stream::wrappers::WatchStream;

use crate::auth::Principal;
use crate::control::{Check, Revocation};
use crate::state::AppState;

/// Why a session closes on a revocation.
#[derive(Debug, Clone, Copy)]
pub enum Revoked {
    /// Its alias, token or user was revoked (`herald.v1.control.revoke`): close with 4001.
    Credentials,
    /// More revocations arrived at once than the node keeps, and some the session did not
    /// check: close with 1013, so the client re-authenticates.
    Unverifiable,
}

/// Fires once the credentials of `principal` are revoked on any node: each time
/// revocations arrive, the session checks every one since it last looked
/// ([`crate::control::Revocations`]), so a burst cannot skip it.
pub fn revocations(state: &AppState, principal: &Principal) -> impl Stream<Item = Revoked> {
    let log = Arc::clone(&state.revocations);
    let mut latest = log.subscribe();
    let mut seen = *latest.borrow_and_update();
    let alias = principal.alias_id.clone();
    let token = principal.token;
    let user = principal.user_id.clone();
    let hits = move |revocation: &Revocation| match revocation {
        Revocation::Alias(id) => alias.as_deref() == Some(&**id),
        Revocation::Token(fingerprint) => token == Some(*fingerprint),
        Revocation::User(id) => user.as_deref() == Some(&**id),
    };
    WatchStream::from_changes(latest).filter_map(move |upto| {
        let check = log.check(seen, upto, &hits);
        seen = upto;
        std::future::ready(match check {
            Check::Clear => None,
            Check::Revoked => Some(Revoked::Credentials),
            Check::Unknown => Some(Revoked::Unverifiable),
        })
    })
}

/// The node's drain flag (`true` from SIGTERM on).
pub fn draining(state: &AppState) -> WatchStream<bool> {
    WatchStream::new(state.shutdown.subscribe())
}

/// When, within the drain window, a session closes with 1001: at a random moment, so
/// clients reconnect to other nodes gradually rather than all at once.
pub fn drain_delay(state: &AppState) -> Duration {
    let window = state.settings.shutdown.drain_seconds.max(1) * 1000;
    Duration::from_millis(rand::random_range(0..window))
}
