//! A registry actor per routing key: it owns the key's bus subscription, turns each event
//! into notifications, encodes each once per wire format, and queues the shared bytes to
//! every member session. The directory stops it when its last session leaves, which drops
//! the subscription (unsubscribe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use herald_telemetry::{propagation, TraceContext};
use tracing::field::Empty;

use crate::bus::{Bus, BusMessage, Replay};
use crate::dialect::codec::{Codec, CodecSettings, Decoded, Encoded, CODECS};
use crate::metrics;
use crate::outbox::{Delivery, Frame, Outbox, PushError};

/// Fan-outs to at most this many sessions get one `herald.write` span per socket write
/// (when sampled); larger ones only their `herald.deliver` span with counts, so tracing a
/// broadcast to thousands costs a few spans, not thousands.
pub const MAX_TRACED_WRITES: usize = 16;

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
            RoutingKey::Alias(alias_id) => herald_protocol::subject::alias_wildcard(alias_id),
            RoutingKey::Broadcast => herald_protocol::subject::broadcast_wildcard(),
            other => format!("{}.{other}", herald_protocol::subject::PREFIX),
        }
    }
}

/// A session as a registry sees it: how it wants events and where they go.
#[derive(Clone)]
pub struct Member {
    /// The session's id.
    pub id: SessionId,
    /// Its outbound queue (closing, slow-consumer marking, and frames unless `relay`).
    pub outbox: Outbox,
    /// The dialect codec it wants.
    pub codec: Codec,
    /// Set when the session works on each event itself (`/jmap/ws` filters and
    /// coalesces): frames go to its actor instead of straight to the socket.
    pub relay: Option<Recipient<Relayed>>,
}

/// A frame relayed to a session actor rather than queued to its socket.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Relayed {
    /// The codec's frame (or its resync frame).
    pub frame: Frame,
    /// The event's stream sequence.
    pub seq: Option<u64>,
}

impl Member {
    /// Hands a frame to the session: its socket queue, or its actor.
    fn push(&self, frame: Frame, seq: Option<u64>, delivery: Delivery) -> Result<(), PushError> {
        match &self.relay {
            None => self.outbox.push_delivery(frame, delivery),
            Some(relay) if relay.connected() => {
                relay.do_send(Relayed { frame, seq });
                Ok(())
            }
            Some(_) => Err(PushError::Closed),
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
    /// This node's name, on every `herald.receive` span.
    pub node: String,
    /// A session's output budget (`limits.max_buffered_bytes`), also for frames held
    /// while its `since` replay runs.
    pub max_buffered_bytes: usize,
    /// Told who received the live fan-outs it wants (`/ws` Ack counts).
    pub on_delivered: Option<Arc<dyn DeliveryObserver>>,
}

/// What became of one fan-out's frames for the sessions of one codec.
#[derive(Debug, Default, Clone, Copy)]
struct DeliverCounts {
    /// Queued for the session's connection.
    queued: u64,
    /// Held for a session still catching up on its `since` replay.
    held: u64,
    /// Not queued: slow consumer or closed session.
    dropped: u64,
}

impl DeliverCounts {
    fn outcome(&self) -> &'static str {
        match (self.dropped, self.queued + self.held) {
            (0, _) => "queued",
            (_, 0) => "dropped",
            _ => "partial",
        }
    }
}

/// Gap-fill attempts after a reconnect before clients are told to resync (with
/// [`GAP_FILL_RETRY`] between them: about half a minute of NATS trouble).
const GAP_FILL_ATTEMPTS: u32 = 30;
/// Pause between two gap-fill attempts.
const GAP_FILL_RETRY: Duration = Duration::from_secs(1);

/// A member and, while it catches up on a `since` replay, the live frames held for it.
struct MemberState {
    member: Member,
    /// `Some` while the member's replay runs: live frames (with their sequence) wait here.
    held: Option<Vec<(Option<u64>, Frame)>>,
    /// Highest sequence this member was sent by its own replay: later deliveries at or
    /// below it (a gap fill, a live event that raced the replay) are not sent again.
    sent_upto: Option<u64>,
    /// Bytes in `held`: past `limits.max_buffered_bytes` the member is a slow consumer.
    held_bytes: usize,
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

    /// Encodes a bus message once per wanted codec; `None` if it does not decode.
    fn frames(
        &self,
        message: &BusMessage,
        wanted: [bool; CODECS],
    ) -> Option<(Decoded, [Vec<Encoded>; CODECS])> {
        let decoded = match Decoded::new(message) {
            Ok(decoded) => decoded,
            Err(reason) => {
                metrics::bus_decode_error();
                tracing::warn!(subject = %message.subject, %reason, "skipping undecodable bus message");
                return None;
            }
        };
        let mut failed = false;
        let frames = std::array::from_fn(|i| {
            if !wanted[i] {
                return Vec::new();
            }
            let codec = Codec::ALL[i];
            codec.encode(&decoded, &self.settings.codec).unwrap_or_else(|reason| {
                failed = true;
                tracing::warn!(subject = %message.subject, dialect = codec.dialect().label(), %reason, "skipping undecodable bus message");
                Vec::new()
            })
        });
        if failed {
            metrics::bus_decode_error();
        }
        Some((decoded, frames))
    }

    /// Fans one live message out to every member (held for members still catching up).
    ///
    /// Traced as `herald.receive` (child of the publisher's `traceparent`) →
    /// `herald.fanout` → one `herald.deliver` per codec in use → `herald.write` per
    /// socket write for fan-outs of at most [`MAX_TRACED_WRITES`] sessions.
    fn deliver(&mut self, message: BusMessage) {
        if let (Some(seq), Some(last)) = (message.seq, self.last_seq) {
            if seq <= last {
                return;
            }
        }
        if message.seq.is_some() {
            self.last_seq = message.seq;
        }
        let receive = tracing::debug_span!(
            "herald.receive",
            otel.kind = "consumer",
            node = %self.settings.node,
            subject = %message.subject,
            event = message.subject.rsplit('.').next().unwrap_or_default(),
            seq = message.seq,
        );
        if herald_telemetry::tracing_enabled() {
            propagation::set_parent(
                &receive,
                propagation::extract(
                    message.traceparent.as_deref(),
                    message.tracestate.as_deref(),
                ),
            );
        }
        let _receive = receive.enter();
        let wanted = self.per_codec.map(|n| n > 0);
        let Some((decoded, frames)) = self.frames(&message, wanted) else {
            return;
        };
        let observed = self
            .settings
            .on_delivered
            .as_ref()
            .filter(|o| o.wants(&decoded));
        let mut delivered_to = Vec::new();
        metrics::event_received();
        let bytes = frames
            .each_ref()
            .map(|f| f.iter().map(|(f, _)| f.len()).sum::<usize>());
        let fanout = tracing::debug_span!(
            "herald.fanout",
            key = %self.key,
            recipients = self.members.len(),
            notifications = frames.iter().map(Vec::len).max().unwrap_or_default(),
            bytes.json = bytes[Codec::V1Json.index()],
            bytes.msgpack = bytes[Codec::V1MsgPack.index()],
            bytes.msgpackr = bytes[Codec::V1Msgpackr.index()],
        );
        let _fanout = fanout.enter();
        let deliver_spans: [Option<tracing::Span>; CODECS] = std::array::from_fn(|i| {
            (self.per_codec[i] > 0).then(|| {
                tracing::debug_span!(
                    "herald.deliver",
                    dialect = Codec::ALL[i].dialect().label(),
                    format = Codec::ALL[i].format_name(),
                    recipients = self.per_codec[i],
                    bytes = bytes[i],
                    queued = Empty,
                    held = Empty,
                    dropped = Empty,
                    outcome = Empty,
                )
            })
        });
        let write_parents: [Option<TraceContext>; CODECS] =
            if herald_telemetry::tracing_enabled() && self.members.len() <= MAX_TRACED_WRITES {
                std::array::from_fn(|i| {
                    deliver_spans[i]
                        .as_ref()
                        .map(propagation::context_of)
                        .filter(propagation::is_sampled)
                })
            } else {
                Default::default()
            };
        let mut counts = [DeliverCounts::default(); CODECS];
        let max_buffered = self.settings.max_buffered_bytes;
        for state in self.members.values_mut() {
            let codec = state.member.codec.index();
            if let (Some(seq), Some(upto)) = (message.seq, state.sent_upto) {
                if seq <= upto {
                    continue;
                }
            }
            for (frame, published_ms) in &frames[codec] {
                if state.held.is_some() {
                    state.held_bytes += frame.len();
                    if state.held_bytes > max_buffered {
                        // Too far behind to catch up in memory: the slow-consumer path
                        // closes it with 1013, and it resumes with `since`.
                        state.held = None;
                        state.member.outbox.mark_slow();
                        counts[codec].dropped += 1;
                        break;
                    }
                }
                if let Some(held) = &mut state.held {
                    held.push((message.seq, frame.clone()));
                    counts[codec].held += 1;
                    if observed.is_some() {
                        delivered_to.push(state.member.id);
                    }
                    continue;
                }
                let delivery = Delivery {
                    published_ms: *published_ms,
                    trace: write_parents[codec].clone(),
                };
                match state.member.push(frame.clone(), message.seq, delivery) {
                    Ok(()) => {
                        counts[codec].queued += 1;
                        if observed.is_some() {
                            delivered_to.push(state.member.id);
                        }
                    }
                    Err(error) => {
                        counts[codec].dropped += 1;
                        metrics::event_dropped(match error {
                            PushError::SlowConsumer => "slow_consumer",
                            PushError::Closed => "closed",
                        });
                        break;
                    }
                }
            }
        }
        for (span, counts) in deliver_spans.iter().zip(&counts) {
            if let Some(span) = span {
                span.record("queued", counts.queued);
                span.record("held", counts.held);
                span.record("dropped", counts.dropped);
                span.record("outcome", counts.outcome());
            }
        }
        metrics::events_delivered(counts.iter().map(|c| c.queued).sum());
        if let Some(observer) = observed {
            delivered_to.dedup();
            observer.delivered(&decoded, &delivered_to);
        }
    }

    /// Ends a member's catch-up: replayed events, then the live frames held meanwhile that
    /// come after them — no gap, no duplicate at the seam.
    fn finish_catch_up(
        &mut self,
        id: SessionId,
        (since, announce): (u64, bool),
        replay: Result<Replay, crate::bus::BusError>,
    ) {
        let Some(state) = self.members.get(&id) else {
            return;
        };
        let codec = state.member.codec;
        let mut wanted = [false; CODECS];
        wanted[codec.index()] = true;
        let mut upto = since;
        let mut out: Vec<(Option<u64>, Frame)> = Vec::new();
        let resync = |out: &mut Vec<_>| {
            if announce {
                out.extend(codec.resync_frame().map(|f| (None, f)));
            }
        };
        match replay {
            Ok(Replay::Messages(missed)) => {
                metrics::events_replayed(missed.len() as u64);
                for message in &missed {
                    let seq = message.seq.unwrap_or(upto);
                    if let Some((_, mut frames)) = self.frames(message, wanted) {
                        let frames = std::mem::take(&mut frames[codec.index()]);
                        out.extend(frames.into_iter().map(|(f, _)| (message.seq, f)));
                    }
                    upto = upto.max(seq);
                }
            }
            Ok(Replay::ResyncRequired) => resync(&mut out),
            Err(error) => {
                tracing::warn!(key = ?self.key, %error, "replay failed; asking the client to resync");
                resync(&mut out);
            }
        }
        let Some(state) = self.members.get_mut(&id) else {
            return;
        };
        state.sent_upto = Some(upto);
        let held = state.held.take().unwrap_or_default();
        out.extend(
            held.into_iter()
                .filter(|(seq, _)| seq.is_none_or(|s| s > upto)),
        );
        for (seq, frame) in out {
            if state.member.push(frame, seq, Delivery::default()).is_err() {
                break;
            }
        }
    }

    /// Whether the event stored just before `message` on its subject is newer than
    /// everything this registry delivered and than its subscription: it never arrived.
    fn missed_one(&self, message: &BusMessage) -> bool {
        match (message.prev_seq, self.last_seq.max(self.floor)) {
            (Some(prev), Some(known)) => prev > known,
            _ => false,
        }
    }

    /// After a bus reconnect: replay what the subscription missed while it was down.
    fn fill_gap(&mut self, ctx: &mut Context<Self>) {
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
                                if let Some(frame) = state.member.codec.resync_frame() {
                                    let _ = state.member.push(frame, None, Delivery::default());
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

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
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
        let held = join.since.map(|_| Vec::new());
        if let Some(old) = self.members.insert(
            id,
            MemberState {
                member: join.member,
                held,
                sent_upto: None,
                held_bytes: 0,
            },
        ) {
            self.per_codec[old.member.codec.index()] -= 1;
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
            self.per_codec[old.member.codec.index()] -= 1;
        }
    }
}

impl Handler<CloseAll> for Registry {
    type Result = ();

    fn handle(&mut self, close: CloseAll, _: &mut Self::Context) {
        for state in self.members.values() {
            state
                .member
                .outbox
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

#[cfg(test)]
mod bench {
    //! Fan-out cost with and without span export (README "Tracing"). Run each mode in its
    //! own process, since the subscriber is global:
    //! `cargo test -p herald --lib fanout_overhead -- --ignored --nocapture` (export off) and
    //! the same with `HERALD_BENCH_TRACING=1` (export on, every event sampled).

    use std::time::{Duration, Instant};

    use super::*;
    use crate::bus::MemoryBus;

    fn registry(members: usize) -> (Registry, Vec<crate::outbox::OutboxReceiver>) {
        let bus = Bus::Memory(MemoryBus::new(10, Duration::from_secs(60), Duration::ZERO));
        let settings = Arc::new(RegistrySettings {
            codec: CodecSettings {
                max_notification_bytes: 1 << 20,
            },
            node: "bench".into(),
            max_buffered_bytes: 1 << 20,
            on_delivered: None,
        });
        let mut registry = Registry::new(RoutingKey::Alias("a1".into()), bus, settings);
        let mut receivers = Vec::with_capacity(members);
        for id in 0..members as SessionId {
            let (outbox, rx) = Outbox::new(usize::MAX, "slow", Box::new(|| {}));
            let member = Member {
                id,
                outbox,
                codec: Codec::V1Json,
                relay: None,
            };
            registry.members.insert(
                id,
                MemberState {
                    member,
                    held: None,
                    sent_upto: None,
                    held_bytes: 0,
                },
            );
            registry.per_codec[Codec::V1Json.index()] += 1;
            receivers.push(rx);
        }
        (registry, receivers)
    }

    fn message(seq: u64) -> BusMessage {
        let envelope = serde_json::json!({
            "aliasId": "a1",
            "payload": {"event": "newMessage", "message": {"uid": seq, "mailbox": "INBOX", "eml": "x".repeat(256)}},
        });
        BusMessage {
            subject: "herald.v1.alias.a1.newMessage".into(),
            payload: rmp_serde::to_vec_named(&envelope).unwrap().into(),
            traceparent: Some("00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01".into()),
            seq: Some(seq),
            ..Default::default()
        }
    }

    #[test]
    #[ignore = "benchmark; see the module docs"]
    fn fanout_overhead() {
        let tracing = std::env::var_os("HERALD_BENCH_TRACING").is_some();
        if tracing {
            // Nothing listens there: export fails off the hot path, as a down collector would.
            std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
        } else {
            std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        let telemetry =
            herald_telemetry::init("info", herald_telemetry::LogFormat::Json, "bench").unwrap();
        assert_eq!(telemetry.exporting(), tracing);
        println!("export {}", if tracing { "on" } else { "off" });
        for members in [1usize, 10, 16, 100, 1_000, 10_000] {
            let (mut registry, receivers) = registry(members);
            let rounds = (200_000 / members).clamp(20, 2_000) as u64;
            for seq in 1..=5 {
                registry.deliver(message(seq));
            }
            let messages: Vec<_> = (6..6 + rounds).map(message).collect();
            let start = Instant::now();
            for m in messages {
                registry.deliver(m);
            }
            let per_fanout = start.elapsed() / rounds as u32;
            println!(
                "recipients {members:>6}: {:>9.1} µs per fan-out, {:>7.0} ns per recipient",
                per_fanout.as_secs_f64() * 1e6,
                per_fanout.as_secs_f64() * 1e9 / members as f64
            );
            drop(receivers);
        }
        // Per-write span cost (recipients ≤ MAX_TRACED_WRITES, sampled): create, parent, close.
        let parent = propagation::extract(
            Some("00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"),
            None,
        );
        let rounds = 20_000u32;
        let start = Instant::now();
        for _ in 0..rounds {
            let span = tracing::debug_span!(
                "herald.write",
                format = "json",
                bytes = 300usize,
                outcome = Empty
            );
            propagation::set_parent(&span, parent.clone());
            span.record("outcome", "written");
        }
        println!(
            "herald.write span: {:.0} ns each",
            start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds)
        );
        telemetry.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::bus::MemoryBus;

    #[test]
    fn a_member_whose_held_frames_exceed_its_budget_becomes_a_slow_consumer() {
        let bus = Bus::Memory(MemoryBus::new(10, Duration::from_secs(60), Duration::ZERO));
        let settings = Arc::new(RegistrySettings {
            codec: CodecSettings {
                max_notification_bytes: 1 << 20,
            },
            node: "test".into(),
            max_buffered_bytes: 2_000,
            on_delivered: None,
        });
        let mut registry = Registry::new(RoutingKey::Alias("a1".into()), bus, settings);
        let evicted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&evicted);
        let (outbox, _rx) = Outbox::new(
            1 << 20,
            "slow",
            Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let member = Member {
            id: 1,
            outbox: outbox.clone(),
            codec: Codec::V1Json,
            relay: None,
        };
        // A member still catching up on its `since` replay: live frames are held.
        registry.members.insert(
            1,
            MemberState {
                member,
                held: Some(Vec::new()),
                sent_upto: None,
                held_bytes: 0,
            },
        );
        registry.per_codec[Codec::V1Json.index()] += 1;
        let message = |seq: u64| {
            let envelope = serde_json::json!({
                "aliasId": "a1",
                "payload": {"event": "newMessage", "message": {"eml": "x".repeat(600)}},
            });
            BusMessage {
                subject: "herald.v1.alias.a1.newMessage".into(),
                payload: rmp_serde::to_vec_named(&envelope).unwrap().into(),
                seq: Some(seq),
                ..Default::default()
            }
        };
        registry.deliver(message(1));
        registry.deliver(message(2));
        assert!(registry.members[&1]
            .held
            .as_ref()
            .is_some_and(|h| h.len() == 2));
        assert_eq!(
            evicted.load(Ordering::Relaxed),
            0,
            "under budget: still held"
        );
        registry.deliver(message(3));
        registry.deliver(message(4));
        assert!(
            registry.members[&1].held.is_none(),
            "the held frames are dropped"
        );
        assert!(outbox.is_overflowed());
        assert_eq!(
            evicted.load(Ordering::Relaxed),
            1,
            "the session is told once"
        );
    }
}
