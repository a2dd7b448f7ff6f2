//! A registry actor per routing key: it owns the key's bus subscription, turns each event
//! into notifications, encodes each once per wire format, and queues the shared bytes to
//! every member session. The directory stops it when its last session leaves, which drops
//! the subscription (unsubscribe).
//!
//! - [`fanout`]: one live event to every member.
//! - [`replay`]: a joining member's `since` replay, and gap fills after a bus reconnect.
//! - [`sink`]: where a member's items go (its socket, or its actor), on one byte budget.

mod fanout;
mod replay;
mod sink;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use herald_protocol::subject::{self, Subject};

use crate::bus::{Bus, BusMessage};
use crate::codec::{CodecSettings, Decoded, Encoders, Item, CODECS};
use crate::metrics;

pub use fanout::MAX_TRACED_WRITES;
use sink::Sink;
pub use sink::{Member, Relayed};

/// Unique id of a session on this node.
pub type SessionId = u64;

/// What a registry routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoutingKey {
    /// Every mail/calendar/contact event of one alias.
    Alias(String),
    /// Events for every `/v1/ws` session (`newRelease`).
    Broadcast,
    /// A `/ws` topic pattern (`*` one token, `>` the rest, as in NATS).
    Topic(String),
    /// A `/ws` user's direct messages and notifications.
    User(String),
    /// A `/api/v1/ws/connect` room (`prefix`, numeric `id`).
    Room(String, String),
}

impl std::fmt::Display for RoutingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RoutingKey::Alias(alias_id) => write!(f, "alias.{alias_id}"),
            RoutingKey::Broadcast => f.write_str("broadcast"),
            RoutingKey::Topic(pattern) => write!(f, "topic.{pattern}"),
            RoutingKey::User(user_id) => write!(f, "user.{user_id}"),
            RoutingKey::Room(prefix, id) => write!(f, "room.{prefix}.{id}"),
        }
    }
}

impl RoutingKey {
    /// The bus subscription that carries this key's events.
    pub fn subject_pattern(&self) -> String {
        match self {
            RoutingKey::Alias(alias_id) => subject::alias_wildcard(alias_id),
            RoutingKey::Broadcast => subject::broadcast_wildcard(),
            RoutingKey::Topic(pattern) => subject::topic_pattern(pattern),
            RoutingKey::User(user_id) => Subject::User(user_id.clone()).to_string(),
            RoutingKey::Room(prefix, id) => Subject::Room {
                prefix: prefix.clone(),
                id: id.clone(),
            }
            .to_string(),
        }
    }
}

/// Adds a member; answered once the registry's subscription is in place.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Join {
    /// The key to join.
    pub key: RoutingKey,
    /// The joining session.
    pub member: Member,
    /// Replay what the session missed after this sequence before going live.
    pub since: Option<u64>,
    /// Whether this registry sends the session its resync frame when the replay cannot
    /// be served (one of a session's registries does, so the client gets it once).
    pub announces_resync: bool,
}

/// Removes a member.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Leave {
    /// The key to leave.
    pub key: RoutingKey,
    /// The leaving session.
    pub id: SessionId,
}

/// Closes every member session (credential revocation: 4001).
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct CloseAll {
    /// The key whose sessions close.
    pub key: RoutingKey,
    /// WebSocket close code.
    pub code: u16,
    /// Close reason sent to the client.
    pub reason: &'static str,
}

/// Tells a registry it has no members left: stop and unsubscribe.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

/// Told, after a live fan-out of an event it asked about, which sessions of this node the
/// event was queued (or held) for: `/ws` reports Broadcast and DirectMessage recipients to
/// the sender with it.
pub trait DeliveryObserver: Send + Sync + std::fmt::Debug {
    /// Whether this event's recipients are wanted (so other fan-outs collect nothing).
    fn wants(&self, decoded: &Decoded) -> bool;
    /// The sessions `decoded` was queued or held for.
    fn delivered(&self, decoded: &Decoded, sessions: &[SessionId]);
}

/// Settings every registry needs.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// What codecs need (`limits.max_notification_bytes`).
    pub codec: CodecSettings,
    /// Each codec's encoder (the dialects' `ENCODERS`).
    pub encoders: &'static Encoders,
    /// This node's name, on every `herald.receive` span.
    pub node: String,
    /// A session's output budget (`limits.max_buffered_bytes`), also for frames held
    /// while its `since` replay runs.
    pub max_buffered_bytes: usize,
    /// Told who received the live fan-outs it wants (`/ws` Ack counts).
    pub on_delivered: Option<Arc<dyn DeliveryObserver>>,
}

/// A member and, while it catches up on a `since` replay, the live frames held for it.
struct MemberState {
    sink: Sink,
    /// `Some` while the member's replay runs: live items wait here (boxed: members
    /// catching up are few, and every idle member would carry the room otherwise).
    held: Option<Box<Held>>,
    /// Highest sequence this member was sent by its own replay (0 when none: stream
    /// sequences start at 1): later deliveries at or below it (a gap fill, a live event
    /// that raced the replay) are not sent again.
    sent_upto: u64,
}

impl MemberState {
    /// A member joining, its live frames held if it `catches_up` on a replay.
    fn joining(member: Member, catches_up: bool) -> MemberState {
        MemberState {
            sink: Sink::from(member),
            held: catches_up.then(Box::default),
            sent_upto: 0,
        }
    }
}

/// The live items held behind a member's replay.
#[derive(Default)]
struct Held {
    /// The items, with their sequence.
    items: Vec<(Option<u64>, Item)>,
    /// Their bytes: past `limits.max_buffered_bytes` the member is a slow consumer.
    bytes: usize,
}

/// The registry actor of one routing key.
pub struct Registry {
    key: RoutingKey,
    bus: Bus,
    settings: Arc<RegistrySettings>,
    members: HashMap<SessionId, MemberState>,
    /// Members per codec, so an event is encoded only by codecs someone wants.
    per_codec: [usize; CODECS],
    /// Highest sequence fanned out; a live or replayed event at or below it is a duplicate.
    last_seq: Option<u64>,
    /// Stream sequence when the subscription started: gaps are filled from here at least.
    floor: Option<u64>,
    /// `Some` while a gap fill after a bus reconnect runs: live messages wait here.
    held_live: Option<Vec<BusMessage>>,
}

impl Registry {
    /// A registry for `key`; it subscribes when started.
    pub fn new(key: RoutingKey, bus: Bus, settings: Arc<RegistrySettings>) -> Self {
        Registry {
            key,
            bus,
            settings,
            members: HashMap::new(),
            per_codec: [0; CODECS],
            last_seq: None,
            floor: None,
            held_live: None,
        }
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let pattern = self.key.subject_pattern();
        // `wait` holds back Joins until the subscription exists, so a session's
        // `connected` frame means "events published from now on reach you".
        ctx.wait(
            async move {
                let stream = bus.subscribe(&pattern).await?;
                let floor = bus.last_sequence().await.ok().flatten();
                Ok::<_, crate::bus::BusError>((stream, floor))
            }
            .into_actor(self)
            .map(|result, act, ctx| match result {
                Ok((stream, floor)) => {
                    act.floor = floor;
                    ctx.add_stream(stream);
                }
                Err(error) => {
                    tracing::error!(key = ?act.key, %error, "subscription failed; retrying in 1s");
                    ctx.run_later(Duration::from_secs(1), |act, ctx| act.subscribe(ctx));
                }
            }),
        );
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::registry_delta(1.0);
        self.subscribe(ctx);
        if let Some(reconnects) = self.bus.reconnects() {
            ctx.add_stream(tokio_stream::wrappers::WatchStream::from_changes(
                reconnects,
            ));
        }
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::registry_delta(-1.0);
    }
}

impl StreamHandler<BusMessage> for Registry {
    fn handle(&mut self, message: BusMessage, ctx: &mut Self::Context) {
        if let Some(stored_ms) = message.stored_ms {
            let now = herald_protocol::now_ms();
            metrics::bus_delay(now.saturating_sub(stored_ms) as f64 / 1000.0);
        }
        if self.held_live.is_none() && self.missed_one(&message) {
            // Live delivery is at-most-once (a stream leader can die between storing and
            // republishing): fetch what was skipped from the stream, then this one.
            tracing::info!(key = ?self.key, subject = %message.subject, "a live event was missed; filling the gap");
            self.fill_gap(ctx);
        }
        match &mut self.held_live {
            Some(held) => held.push(message),
            None => self.deliver(message),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        // The bus closed the subscription (NATS client shut down): resubscribe.
        if !self.members.is_empty() {
            tracing::warn!(key = ?self.key, "bus subscription ended; resubscribing");
            self.subscribe(ctx);
        }
    }
}

/// A bus reconnection.
impl StreamHandler<u64> for Registry {
    fn handle(&mut self, _: u64, ctx: &mut Self::Context) {
        self.fill_gap(ctx);
    }

    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<Join> for Registry {
    type Result = ();

    fn handle(&mut self, join: Join, ctx: &mut Self::Context) {
        let id = join.member.id;
        self.per_codec[join.member.codec.index()] += 1;
        let state = MemberState::joining(join.member, join.since.is_some());
        if let Some(old) = self.members.insert(id, state) {
            self.per_codec[old.sink.codec().index()] -= 1;
        }
        if let Some(since) = join.since {
            let announce = join.announces_resync;
            let bus = self.bus.clone();
            let pattern = self.key.subject_pattern();
            ctx.spawn(
                async move { bus.replay(&pattern, since).await }
                    .into_actor(self)
                    .map(move |result, act, _| act.finish_catch_up(id, (since, announce), result)),
            );
        }
    }
}

impl Handler<Leave> for Registry {
    type Result = ();

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) {
        if let Some(old) = self.members.remove(&leave.id) {
            self.per_codec[old.sink.codec().index()] -= 1;
        }
    }
}

impl Handler<CloseAll> for Registry {
    type Result = ();

    fn handle(&mut self, close: CloseAll, _: &mut Self::Context) {
        for state in self.members.values() {
            state
                .sink
                .outbox()
                .close(Some(crate::websocket::CloseReason {
                    code: crate::websocket::CloseCode::from(close.code),
                    description: Some(close.reason.to_owned()),
                }));
        }
    }
}

impl Handler<Retire> for Registry {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
