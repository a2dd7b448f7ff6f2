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

use crate::bus::{Bus, BusMessage};
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

/// The registry actor of one routing key.
pub struct Registry {
    key: RoutingKey,
    bus: Bus,
    settings: Arc<RegistrySettings>,
    members: HashMap<SessionId, Member>,
    /// Members per format, so an event is encoded only in formats someone wants.
    per_format: [usize; 2],
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
        }
    }

    fn subscribe(&mut self, ctx: &mut Context<Self>) {
        let bus = self.bus.clone();
        let pattern = self.key.subject_pattern();
        // `wait` holds back Joins until the subscription exists, so a session's
        // `connected` frame means "events published from now on reach you".
        ctx.wait(
            async move { bus.subscribe(&pattern).await }
                .into_actor(self)
                .map(|result, act, ctx| match result {
                    Ok(stream) => {
                        ctx.add_stream(stream);
                    }
                    Err(error) => {
                        tracing::error!(key = ?act.key, %error, "subscription failed; retrying in 1s");
                        ctx.run_later(Duration::from_secs(1), |act, ctx| act.subscribe(ctx));
                    }
                }),
        );
    }

    /// Turns one bus message into encoded notifications, or says why it cannot.
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
            now_ms: now_ms(),
        };
        Ok(notification::prepare(envelope.payload, &info))
    }

    /// Encodes one notification in every wanted format, truncating resources if too big.
    fn encode(&self, mut notification: Map<String, Value>) -> [Option<Frame>; 2] {
        let mut json = serde_json::to_vec(&notification).unwrap_or_default();
        if json.len() > self.settings.max_notification_bytes
            && notification::truncate_resources(&mut notification)
        {
            json = serde_json::to_vec(&notification).unwrap_or_default();
        }
        let text = (self.per_format[WireFormat::Json.index()] > 0)
            .then(|| ByteString::try_from(json).ok().map(Frame::Text))
            .flatten();
        let binary = (self.per_format[WireFormat::MessagePack.index()] > 0)
            .then(|| {
                WireFormat::MessagePack
                    .encode(&notification)
                    .ok()
                    .map(Frame::Binary)
            })
            .flatten();
        [text, binary]
    }

    fn fan_out(&mut self, frames: &[Option<Frame>; 2], published_ms: Option<u64>) {
        let mut delivered = 0u64;
        for member in self.members.values() {
            let Some(frame) = &frames[member.format.index()] else {
                continue;
            };
            match member.outbox.push(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(PushError::SlowConsumer) => metrics::event_dropped("slow_consumer"),
                Err(PushError::Closed) => metrics::event_dropped("closed"),
            }
        }
        metrics::events_delivered(delivered);
        if let Some(ms) = published_ms {
            let latency = now_ms().saturating_sub(ms) as f64 / 1000.0;
            metrics::delivery_latency(latency);
        }
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
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::registry_delta(-1.0);
    }
}

impl StreamHandler<BusMessage> for Registry {
    fn handle(&mut self, message: BusMessage, _: &mut Self::Context) {
        let notifications = match self.notifications(&message) {
            Ok(n) => n,
            Err(reason) => {
                metrics::bus_decode_error();
                tracing::warn!(subject = %message.subject, %reason, "skipping undecodable bus message");
                return;
            }
        };
        metrics::event_received();
        for n in notifications {
            let published = n.get("timestamp").and_then(Value::as_u64);
            let frames = self.encode(n);
            self.fan_out(&frames, published);
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

impl Handler<Join> for Registry {
    type Result = ();

    fn handle(&mut self, join: Join, _: &mut Self::Context) {
        self.per_format[join.member.format.index()] += 1;
        if let Some(old) = self.members.insert(join.member.id, join.member) {
            self.per_format[old.format.index()] -= 1;
        }
    }
}

impl Handler<Leave> for Registry {
    type Result = ();

    fn handle(&mut self, leave: Leave, _: &mut Self::Context) {
        if let Some(old) = self.members.remove(&leave.id) {
            self.per_format[old.format.index()] -= 1;
        }
    }
}

impl Handler<Retire> for Registry {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Self::Context) {
        ctx.stop();
    }
}
