//! What every session watches besides its socket, whatever its dialect: its keepalive
//! round, the node's drain, the revocation of its credentials and the overflow of its
//! outbox ([`super::connection`] closes on them).
//!
//! One future per session watches them all ([`Vigil`]): an idle session is mostly what it
//! waits on, and a stream per concern (an interval, a watch channel each for drain and
//! revocations, a oneshot for eviction) cost five boxed items and their allocations.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use actix::{ActorContext, ActorFuture, AsyncContext, Context};
use tokio::sync::futures::OwnedNotified;

use super::connection::{Session, RECLAIMED, RECLAIMED_REASON};
use super::wheel::Deadline;
use crate::auth::Principal;
use crate::control::{Check, Revocation, REVOKED};
use crate::metrics;
use crate::state::AppState;

/// The credentials a session checks each revocation against, and the last it checked.
pub struct Revocable {
    alias: Option<Arc<str>>,
    /// Boxed: most sessions log in without a token, and every one holds a `Revocable`.
    token: Option<Box<crate::auth::TokenFingerprint>>,
    user: Option<Arc<str>>,
    /// The number of the last revocation checked ([`crate::control::Revocations`]).
    seen: u64,
}

impl Revocable {
    /// Watches `principal` from the node's latest revocation on.
    pub fn new(state: &AppState, principal: &Principal) -> Revocable {
        Revocable {
            alias: principal.alias_id.as_deref().map(Arc::from),
            token: principal.token.map(Box::new),
            user: principal.user_id.as_deref().map(Arc::from),
            seen: state.revocations.latest(),
        }
    }

    fn hits(&self, revocation: &Revocation) -> bool {
        match revocation {
            Revocation::Alias(id) => self.alias.as_deref() == Some(&**id),
            Revocation::Token(fingerprint) => self.token.as_deref() == Some(fingerprint),
            Revocation::User(id) => self.user.as_deref() == Some(&**id),
        }
    }

    /// Checks every revocation since the last look: 4001 for a hit, 1013 when some were
    /// dropped from the log unchecked (so the client re-authenticates), else none.
    fn check(&mut self, state: &AppState) -> Option<(u16, &'static str)> {
        let upto = state.revocations.latest();
        if upto == self.seen {
            return None;
        }
        let check = state.revocations.check(self.seen, upto, |r| self.hits(r));
        self.seen = upto;
        match check {
            Check::Clear => None,
            Check::Revoked => Some((REVOKED, "credentials revoked")),
            Check::Unknown => Some((
                1013,
                "too many revocations at once to re-check this session; reconnect",
            )),
        }
    }
}

pin_project_lite::pin_project! {
    /// A session's watcher of everything but its socket, spawned in its context.
    pub struct Vigil<S> {
        // The next keepalive round, on the worker's wheel.
        round: Deadline,
        // The keepalive period in wheel ticks.
        period: u32,
        // The node's `Signal`: drain or revocations.
        #[pin]
        signal: OwnedNotified,
        // The drain was seen (its close is scheduled).
        draining: bool,
        session: PhantomData<fn(S)>,
    }
}

impl<S: Session> Vigil<S> {
    /// Watches for a session of `state` with a keepalive round every `period`.
    pub fn new(state: &AppState, period: Duration) -> Vigil<S> {
        Vigil {
            round: Deadline::after(period),
            period: super::wheel::ticks(period),
            signal: state.signal.listen(),
            draining: false,
            session: PhantomData,
        }
    }
}

impl<S: Session> ActorFuture<S> for Vigil<S> {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut S,
        ctx: &mut Context<S>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let mut this = self.project();
        if act.conn().outbox.poll_overflowed(task).is_ready() {
            metrics::slow_consumer();
            act.conn().close(1013, super::closes(S::DIALECT).slow, ctx);
            return Poll::Ready(());
        }
        if let Some(reclaimed) = act.conn().reclaim.as_mut() {
            if let Poll::Ready(fired) = Pin::new(reclaimed).poll(task) {
                act.conn().reclaim = None;
                // An error is a sender gone: the place was given back, not reclaimed.
                if fired.is_ok() {
                    act.conn().close(RECLAIMED, RECLAIMED_REASON, ctx);
                    return Poll::Ready(());
                }
            }
        }
        while this.round.poll(task).is_ready() {
            *this.round = Deadline::after_ticks(*this.period);
            act.keepalive(ctx);
            if ctx.state().stopping() {
                return Poll::Ready(());
            }
        }
        // Re-armed before looking, so a signal raised after the look wakes us again.
        while this.signal.as_mut().poll(task).is_ready() {
            this.signal.set(act.conn().state.signal.listen());
        }
        let state = Arc::clone(&act.conn().state);
        if !*this.draining && state.draining.load(std::sync::atomic::Ordering::SeqCst) {
            *this.draining = true;
            // Close at a random moment of the window, so clients reconnect to other nodes
            // gradually.
            ctx.run_later(drain_delay(&state), |act, ctx| {
                act.conn().close(1001, "node shutting down; reconnect", ctx)
            });
        }
        if let Some((code, reason)) = act
            .conn()
            .revocable
            .as_mut()
            .and_then(|revocable| revocable.check(&state))
        {
            act.conn().close(code, reason, ctx);
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

/// When a draining node closes a session: a random moment of the drain window.
pub fn drain_delay(state: &AppState) -> Duration {
    let window = state.settings.shutdown.drain_seconds.max(1) * 1000;
    Duration::from_millis(rand::random_range(0..window))
}
