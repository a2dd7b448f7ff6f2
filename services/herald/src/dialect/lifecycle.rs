//! What every session actor watches besides its socket, whatever its dialect: the
//! revocation of its credentials and the node's drain. Sessions add these streams and
//! close the way their dialect says.

use std::time::Duration;

use actix::AsyncContext;
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::{BroadcastStream, WatchStream};

use crate::auth::Principal;
use crate::outbox::{Outbox, OutboxReceiver};
use crate::state::AppState;
use crate::websocket::{Inbound, Message, ProtocolError};

/// The session's token or user was revoked (`herald.v1.control.revoke`): close with 4001.
#[derive(Debug, Clone, Copy)]
pub struct Revoked;

/// Closes a session from outside: a slow consumer (1013, counted), an expired token, ...
#[derive(actix::Message)]
#[rtype(result = "()")]
pub struct Evict {
    /// WebSocket close code.
    pub code: u16,
    /// Close reason sent to the client.
    pub reason: &'static str,
}

/// Starts a session actor reading `inbound`, with an outbound queue bounded by
/// `limits.max_buffered_bytes` (overflowing it evicts the session with 1013 and
/// `slow_reason`, how the client resumes). `make` builds the actor around its queue; the
/// connection writes the returned receiving half ([`crate::websocket::Handshake::respond`]).
pub fn start_session<A>(
    state: &AppState,
    inbound: Inbound,
    slow_reason: &'static str,
    make: impl FnOnce(&mut actix::Context<A>, Outbox) -> A,
) -> OutboxReceiver
where
    A: actix::Actor<Context = actix::Context<A>>
        + actix::Handler<Evict>
        + actix::StreamHandler<Result<Message, ProtocolError>>,
{
    let mut receiver = None;
    A::create(|ctx| {
        ctx.add_stream(inbound);
        let session = ctx.address();
        let (outbox, rx) = Outbox::new(
            state.limits.settings.max_buffered_bytes,
            slow_reason,
            Box::new(move || {
                session.do_send(Evict {
                    code: 1013,
                    reason: slow_reason,
                })
            }),
        );
        receiver = Some(rx);
        make(ctx, outbox)
    });
    receiver.expect("Actor::create runs its closure before returning")
}

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

/// Implements how every session actor closes from outside: with 1001 at [`drain_delay`]
/// once [`draining`], with 4001 when [`revocations`] fires, and as an [`Evict`] says. The
/// actor needs a `state: Arc<AppState>` field and a `close(&mut self, code, reason, ctx)`
/// method.
macro_rules! session_closes {
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

        impl actix::Handler<$crate::dialect::lifecycle::Evict> for $session {
            type Result = ();

            fn handle(
                &mut self,
                evict: $crate::dialect::lifecycle::Evict,
                ctx: &mut Self::Context,
            ) {
                if evict.code == 1013 {
                    $crate::metrics::slow_consumer();
                }
                self.close(evict.code, evict.reason, ctx);
            }
        }
    };
}

pub(crate) use session_closes;
