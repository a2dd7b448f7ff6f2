//! What every session actor watches besides its socket, whatever its dialect: the
//! revocation of its credentials and the node's drain. Sessions add these streams and
//! close the way their dialect says.

use std::time::Duration;

use actix::AsyncContext;
use futures_util::{Stream, StreamExt};
use std::sync::Arc;

use tokio_stream::wrappers::WatchStream;

use crate::auth::Principal;
use crate::control::{Check, Revocation};
use crate::outbox::{Outbox, OutboxReceiver};
use crate::state::AppState;
use crate::websocket::{Inbound, Message, ProtocolError};

/// Why a session closes on a revocation.
#[derive(Debug, Clone, Copy)]
pub enum Revoked {
    /// Its alias, token or user was revoked (`herald.v1.control.revoke`): close with 4001.
    Credentials,
    /// More revocations arrived at once than the node keeps, and some the session did not
    /// check: close with 1013, so the client re-authenticates.
    Unverifiable,
}

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

/// Implements how every session actor closes from outside: with 1001 at [`drain_delay`]
/// once [`draining`], with 4001 (or 1013, see [`Revoked`]) when [`revocations`] fires,
/// and as an [`Evict`] says. The actor needs a `state: Arc<AppState>` field and a
/// `close(&mut self, code, reason, ctx)` method.
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
            fn handle(
                &mut self,
                revoked: $crate::dialect::lifecycle::Revoked,
                ctx: &mut Self::Context,
            ) {
                match revoked {
                    $crate::dialect::lifecycle::Revoked::Credentials => {
                        self.close($crate::control::REVOKED, "credentials revoked", ctx)
                    }
                    $crate::dialect::lifecycle::Revoked::Unverifiable => self.close(
                        1013,
                        "too many revocations at once to re-check this session; reconnect",
                        ctx,
                    ),
                }
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
