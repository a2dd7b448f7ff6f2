//! A registry actor per routing key: it owns the key's bus subscription, turns each event
//! into notifications, encodes each once per wire format, and queues the shared bytes to
//! every member session. The directory stops it when its last session leaves, which drops
//! the subscription (unsubscribe).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use bytestring::ByteString;
use herald_protocol::notification::{self, Enrichment};
use herald_protocol::{Envelope, Subject, WireFormat};
use serde_json::{Map, Value};

use crate::bus::{Bus, BusMessage, Replay};
use crate::metrics;
use crate::outbox::{Frame, Outbox, PushError};

/// Unique id of a session on this node.
pub type SessionId = u64;

/// What a registry routes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RoutingKey {
    /// Every mail/calendar/contact event of one alias.
    Alias(String),
    /// Events for every `/v1/ws` session (`newRelease`).
    Broadcast,
}

impl RoutingKey {
    /// The bus subscription that carries this key's events.
    pub fn subject_pattern(&self) -> String {
        match self {
            RoutingKey::Alias(alias_id) => herald_protocol::subject::alias_wildcard(alias_id),
            RoutingKey::Broadcast => herald_protocol::subject::broadcast_wildcard(),
        }
    }
}

/// A session as a registry sees it: where to queue frames, and in which format.
#[derive(Clone)]
pub struct Member {
    /// The session's id.
    pub id: SessionId,
    /// Its outbound queue.
    pub outbox: Outbox,
    /// The format it wants.
    pub format: WireFormat,
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
    /// Whether this registry sends the session `resyncRequired` when the replay cannot
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

/// Settings every registry needs.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// Above this, resources are truncated (`limits.max_notification_bytes`).
    pub max_notification_bytes: usize,
}

/// One notification encoded per wire format (`None` where no member wants it), with its
/// publish timestamp for the latency histogram.
type Encoded = ([Option<Frame>; 2], Option<u64>);

/// A member and, while it catches up on a `since` replay, the live frames held for it.
struct MemberState {
    member: Member,
    /// `Some` while the member's replay runs: live frames (with their sequence) wait here.
    held: Option<Vec<(Option<u64>, Frame)>>,
    /// Highest sequence this member was sent by its own replay: later deliveries at or
    /// below it (a gap fill, a live event that raced the replay) are not sent again.
    sent_upto: Option<u64>,
}

/// The registry actor of one routing key.
pub struct Registry {
    key: RoutingKey,
    bus: Bus,
    settings: Arc<RegistrySettings>,
    members: HashMap<SessionId, MemberState>,
    /// Members per format, so an event is encoded only in formats someone wants.
    per_format: [usize; 2],
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
            per_format: [0; 2],
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

    /// Turns one bus message into notifications, or says why it cannot.
    fn notifications(&self, message: &BusMessage) -> Result<Vec<Map<String, Value>>, String> {
        let subject = Subject::parse(&message.subject).map_err(|e| e.to_string())?;
        let envelope =
            Envelope::decode(&message.payload, message.json).map_err(|e| e.to_string())?;
        let (event, alias_id) = match &subject {
            Subject::Alias { alias_id, event } => {
                if envelope
                    .alias_id
                    .as_deref()
                    .is_some_and(|id| id != alias_id)
                {
                    return Err(format!(
                        "envelope aliasId {:?} does not match the subject's alias {alias_id:?}",
                        envelope.alias_id.unwrap_or_default()
                    ));
                }
                (*event, Some(alias_id.as_str()))
            }
            Subject::Broadcast(event) => (*event, None),
            other => return Err(format!("{other} is not routed by a /v1/ws registry")),
        };
        let event = envelope
            .event_for_subject(event)
            .map_err(|e| e.to_string())?;
        let info = Enrichment {
            event,
            alias_id,
            seq: message.seq,
            fallback_id: notification::derive_notification_id(
                &message.subject,
                message.msg_id.as_deref(),
                message.seq,
                &message.payload,
            ),
            now_ms: message.stored_ms.unwrap_or_else(now_ms),
        };
        Ok(notification::prepare(envelope.payload, &info))
    }

    /// Encodes one notification in the wanted formats, truncating resources if too big.
    fn encode(
        &self,
        mut notification: Map<String, Value>,
        wanted: [bool; 2],
    ) -> [Option<Frame>; 2] {
        let mut json = serde_json::to_vec(&notification).unwrap_or_default();
        if json.len() > self.settings.max_notification_bytes
            && notification::truncate_resources(&mut notification)
        {
            json = serde_json::to_vec(&notification).unwrap_or_default();
        }
        let text = wanted[WireFormat::Json.index()]
            .then(|| ByteString::try_from(json).ok().map(Frame::Text))
            .flatten();
        let binary = wanted[WireFormat::MessagePack.index()]
            .then(|| {
                WireFormat::MessagePack
                    .encode_value(&Value::Object(notification))
                    .ok()
                    .map(Frame::Binary)
            })
            .flatten();
        [text, binary]
    }

    /// Decodes a bus message into frames for the formats in use; `None` if undecodable.
    fn frames(&self, message: &BusMessage, wanted: [bool; 2]) -> Option<Vec<Encoded>> {
        match self.notifications(message) {
            Ok(notifications) => Some(
                notifications
                    .into_iter()
                    .map(|n| {
                        let published = n.get("timestamp").and_then(Value::as_u64);
                        (self.encode(n, wanted), published)
                    })
                    .collect(),
            ),
            Err(reason) => {
                metrics::bus_decode_error();
                tracing::warn!(subject = %message.subject, %reason, "skipping undecodable bus message");
                None
            }
        }
    }

    /// Fans one live message out to every member (held for members still catching up).
    fn deliver(&mut self, message: BusMessage) {
        if let (Some(seq), Some(last)) = (message.seq, self.last_seq) {
            if seq <= last {
                return;
            }
        }
        if message.seq.is_some() {
            self.last_seq = message.seq;
        }
        let wanted = self.per_format.map(|n| n > 0);
        let Some(frames) = self.frames(&message, wanted) else {
            return;
        };
        metrics::event_received();
        let mut delivered = 0u64;
        for (frames, published_ms) in frames {
            for state in self.members.values_mut() {
                let Some(frame) = &frames[state.member.format.index()] else {
                    continue;
                };
                if let (Some(seq), Some(upto)) = (message.seq, state.sent_upto) {
                    if seq <= upto {
                        continue;
                    }
                }
                if let Some(held) = &mut state.held {
                    held.push((message.seq, frame.clone()));
                    continue;
                }
                match state.member.outbox.push(frame.clone()) {
                    Ok(()) => delivered += 1,
                    Err(PushError::SlowConsumer) => metrics::event_dropped("slow_consumer"),
                    Err(PushError::Closed) => metrics::event_dropped("closed"),
                }
            }
            if let Some(ms) = published_ms {
                metrics::delivery_latency(now_ms().saturating_sub(ms) as f64 / 1000.0);
            }
        }
        metrics::events_delivered(delivered);
    }

    /// The dialect's "you missed too much, refetch" frame.
    fn resync_frame(format: WireFormat) -> Option<Frame> {
        Frame::encode(format, &serde_json::json!({"event": "resyncRequired"}))
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
        let format = state.member.format;
        let mut wanted = [false; 2];
        wanted[format.index()] = true;
        let mut upto = since;
        let mut out: Vec<Frame> = Vec::new();
        match replay {
            Ok(Replay::Messages(missed)) => {
                metrics::events_replayed(missed.len() as u64);
                for message in &missed {
                    let seq = message.seq.unwrap_or(upto);
                    for (frames, _) in self.frames(message, wanted).unwrap_or_default() {
                        out.extend(frames[format.index()].clone());
                    }
                    upto = upto.max(seq);
                }
            }
            Ok(Replay::ResyncRequired) => {
                if announce {
                    out.extend(Self::resync_frame(format));
                }
            }
            Err(error) => {
                tracing::warn!(key = ?self.key, %error, "replay failed; asking the client to resync");
                if announce {
                    out.extend(Self::resync_frame(format));
                }
            }
        }
        let Some(state) = self.members.get_mut(&id) else {
            return;
        };
        state.sent_upto = Some(upto);
        let held = state.held.take().unwrap_or_default();
        out.extend(
            held.into_iter()
                .filter(|(seq, _)| seq.is_none_or(|s| s > upto))
                .map(|(_, frame)| frame),
        );
        for frame in out {
            if state.member.outbox.push(frame).is_err() {
                break;
            }
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
        let bus = self.bus.clone();
        let pattern = self.key.subject_pattern();
        ctx.spawn(
            async move { bus.replay(&pattern, since).await }
                .into_actor(self)
                .map(|result, act, _| {
                    match result {
                        Ok(Replay::Messages(missed)) => {
                            if !missed.is_empty() {
                                tracing::info!(key = ?act.key, count = missed.len(), "filled the gap left by a bus reconnect");
                            }
                            metrics::events_replayed(missed.len() as u64);
                            missed.into_iter().for_each(|m| act.deliver(m));
                        }
                        Ok(Replay::ResyncRequired) | Err(_) => {
                            tracing::warn!(key = ?act.key, "cannot fill the reconnect gap; asking clients to resync");
                            for state in act.members.values() {
                                if let Some(frame) = Self::resync_frame(state.member.format) {
                                    let _ = state.member.outbox.push(frame);
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
    fn handle(&mut self, message: BusMessage, _: &mut Self::Context) {
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
        self.per_format[join.member.format.index()] += 1;
        let held = join.since.map(|_| Vec::new());
        if let Some(old) = self.members.insert(
            id,
            MemberState {
                member: join.member,
                held,
                sent_upto: None,
            },
        ) {
            self.per_format[old.member.format.index()] -= 1;
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
            self.per_format[old.member.format.index()] -= 1;
        }
    }
}

impl Handler<CloseAll> for Registry {
    type Result = ();

    fn handle(&mut self, close: CloseAll, _: &mut Self::Context) {
        for state in self.members.values() {
            state.member.outbox.close(Some(actix_ws::CloseReason {
                code: actix_ws::CloseCode::from(close.code),
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
