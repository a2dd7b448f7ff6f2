//! Catching up: a joining member's `since` replay, and the gap a bus reconnect (or a
//! missed live event) leaves in the registry's own stream.

use std::time::Duration;

use actix::prelude::*;

use super::{Registry, SessionId, CODECS};
use crate::bus::{BusError, BusMessage, Replay};
use crate::codec::Item;
use crate::metrics;
use crate::outbox::Delivery;

/// Gap-fill attempts after a reconnect before clients are told to resync (with
/// [`GAP_FILL_RETRY`] between them: about half a minute of NATS trouble).
const GAP_FILL_ATTEMPTS: u32 = 30;
/// Pause between two gap-fill attempts.
const GAP_FILL_RETRY: Duration = Duration::from_secs(1);

impl Registry {
    /// Ends a member's catch-up: replayed events, then the live frames held meanwhile that
    /// come after them — no gap, no duplicate at the seam.
    pub(super) fn finish_catch_up(
        &mut self,
        id: SessionId,
        (since, announce): (u64, bool),
        replay: Result<Replay, BusError>,
    ) {
        let Some(state) = self.members.get(&id) else {
            return;
        };
        let codec = state.sink.codec();
        let encoder = self.settings.encoders[codec.index()];
        let mut wanted = [false; CODECS];
        wanted[codec.index()] = true;
        let mut upto = since;
        let mut out: Vec<(Option<u64>, Item)> = Vec::new();
        let resync = |out: &mut Vec<_>| {
            if announce {
                out.extend(encoder.resync().map(|item| (None, item)));
            }
        };
        match replay {
            Ok(Replay::Messages(missed)) => {
                metrics::events_replayed(missed.len() as u64);
                for message in &missed {
                    let seq = message.seq.unwrap_or(upto);
                    if let Some((_, mut frames)) = self.items(message, wanted) {
                        let frames = std::mem::take(&mut frames[codec.index()]);
                        out.extend(frames.into_iter().map(|(f, _)| (message.seq, f)));
                    }
                    upto = upto.max(seq);
                }
            }
            Ok(Replay::ResyncRequired) => {
                // `since` may be another stream's cursor, beyond every sequence here: it
                // must not hide the live events that follow the resync.
                upto = 0;
                resync(&mut out);
            }
            Err(error) => {
                tracing::warn!(key = ?self.key, %error, "replay failed; asking the client to resync");
                resync(&mut out);
            }
        }
        let Some(state) = self.members.get_mut(&id) else {
            return;
        };
        state.sent_upto = upto;
        let held = state.held.take().map(|held| held.items).unwrap_or_default();
        out.extend(
            held.into_iter()
                .filter(|(seq, _)| seq.is_none_or(|s| s > upto)),
        );
        for (seq, frame) in out {
            if state.sink.push(frame, seq, Delivery::default()).is_err() {
                break;
            }
        }
    }

    /// Whether the event stored just before `message` on its subject is newer than
    /// everything this registry delivered and than its subscription: it never arrived.
    pub(super) fn missed_one(&self, message: &BusMessage) -> bool {
        match (message.prev_seq, self.last_seq.max(self.floor)) {
            (Some(prev), Some(known)) => prev > known,
            _ => false,
        }
    }

    /// After a bus reconnect: replay what the subscription missed while it was down.
    pub(super) fn fill_gap(&mut self, ctx: &mut Context<Self>) {
        let Some(since) = self.last_seq.max(self.floor) else {
            return;
        };
        if self.held_live.is_some() {
            return;
        }
        self.held_live = Some(Vec::new());
        self.try_fill_gap(since, 1, ctx);
    }

    /// One gap-fill attempt. A transient error (a stream leader election after a cluster
    /// member died, say) is retried while live events stay held; only a stream that no
    /// longer has the events, or one that stays unreachable, makes clients resync.
    fn try_fill_gap(&mut self, since: u64, attempt: u32, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let pattern = self.key.subject_pattern();
        ctx.spawn(
            async move { bus.replay(&pattern, since).await }
                .into_actor(self)
                .map(move |result, act, ctx| {
                    match result {
                        Ok(Replay::Messages(missed)) => {
                            if !missed.is_empty() {
                                tracing::info!(key = ?act.key, count = missed.len(), "filled the gap left by a bus reconnect");
                            }
                            metrics::events_replayed(missed.len() as u64);
                            missed.into_iter().for_each(|m| act.deliver(m));
                        }
                        Err(error) if attempt < GAP_FILL_ATTEMPTS => {
                            tracing::info!(key = ?act.key, %error, attempt, "gap fill failed; retrying");
                            ctx.run_later(GAP_FILL_RETRY, move |act, ctx| {
                                act.try_fill_gap(since, attempt + 1, ctx)
                            });
                            return;
                        }
                        Ok(Replay::ResyncRequired) | Err(_) => {
                            tracing::warn!(key = ?act.key, "cannot fill the reconnect gap; asking clients to resync");
                            for state in act.members.values() {
                                let encoder = act.settings.encoders[state.sink.codec().index()];
                                if let Some(item) = encoder.resync() {
                                    let _ = state.sink.push(item, None, Delivery::default());
                                }
                            }
                        }
                    }
                    for message in act.held_live.take().unwrap_or_default() {
                        act.deliver(message);
                    }
                }),
        );
    }
}
