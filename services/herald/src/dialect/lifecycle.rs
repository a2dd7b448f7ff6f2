//! What every session actor watches besides its socket, whatever its dialect: the
//! revocation of its credentials and the node's drain. Sessions add these streams and
//! close the way their dialect says.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use crate::auth::Principal;
use crate::state::AppState;

/// The session's token or user was revoked (`herald.v1.control.revoke`): close with 4001.
#[derive(Debug, Clone, Copy)]
pub struct Revoked;

/// Fires once the credentials of `principal` are revoked on any node.
pub fn revocations(state: &AppState, principal: &Principal) -> impl Stream<Item = Revoked> {
    let token = principal.token;
    let user = principal.user_id.clone();
    let by_token = BroadcastStream::new(state.token_revocations.subscribe()).filter_map(move |r| {
        std::future::ready(r.ok().filter(|t| Some(*t) == token).map(|_| Revoked))
    });
    let by_user = BroadcastStream::new(state.user_revocations.subscribe()).filter_map(move |r| {
        let hit = r.ok().is_some_and(|u| user.as_deref() == Some(&*u));
        std::future::ready(hit.then_some(Revoked))
    });
    futures_util::stream::select(by_token, by_user)
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

/// Implements what every session actor does with [`draining`] and [`revocations`]:
/// close with 1001 at [`drain_delay`], and with 4001 when revoked. The actor needs a
/// `state: Arc<AppState>` field and a `close(&mut self, code, reason, ctx)` method.
macro_rules! closes_on_drain_and_revocation {
    ($session:ty) => {
        /// Node shutdown: close with 1001 within the drain window.
        impl actix::StreamHandler<bool> for $session {
            fn handle(&mut self, draining: bool, ctx: &mut Self::Context) {
                if draining {
                    actix::AsyncContext::run_later(
                        ctx,
                        $crate::dialect::lifecycle::drain_delay(&self.state),
                        |act, ctx| act.close(1001, "node shutting down; reconnect", ctx),
                    );
                }
            }

            fn finished(&mut self, _: &mut Self::Context) {}
        }

        impl actix::StreamHandler<$crate::dialect::lifecycle::Revoked> for $session {
            fn handle(&mut self, _: $crate::dialect::lifecycle::Revoked, ctx: &mut Self::Context) {
                self.close($crate::control::REVOKED, "credentials revoked", ctx);
            }

            fn finished(&mut self, _: &mut Self::Context) {}
        }
    };
}

pub(crate) use closes_on_drain_and_revocation;
