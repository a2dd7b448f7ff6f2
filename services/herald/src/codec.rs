//! Events as every dialect sees them: a registry decodes each bus event once into a
//! [`Decoded`], then asks the [`Encode`] of each [`Codec`] its members use for that codec's
//! [`Item`]s, so an event is encoded once per codec however many sessions receive it.
//!
//! The registry knows codecs only through this module; the dialects implement [`Encode`]
//! (`dialect::codec::ENCODERS`) and the node hands the table to the registries.

use std::sync::Arc;

use herald_protocol::notification::{self, Enrichment};
use herald_protocol::Dialect;
use herald_protocol::{Envelope, EnvelopeError, Event, Subject, SubjectError};
use serde_json::{Map, Value};

use crate::bus::BusMessage;
use crate::outbox::Frame;

/// Number of codecs, the size of per-codec arrays.
pub const CODECS: usize = 6;

/// How a member wants events: the dialect's frame shape (and, for `/v1/ws`, encoding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// `/v1/ws` notifications as JSON text frames.
    V1Json,
    /// `/v1/ws` notifications as plain MessagePack maps in binary frames (`?msgpack=true`).
    V1MsgPack,
    /// `/v1/ws` notifications as msgpackr records in binary frames (`?msgpackr=true`).
    V1Msgpackr,
    /// `/jmap/ws`: a StateChange per event, which the session filters and coalesces.
    Jmap,
    /// `/ws`: `Broadcast`, `DirectMessage` and `Notification` frames.
    Realtime,
    /// `/api/v1/ws/connect`: `{type, room, data, sender, timestamp}` events.
    Rooms,
}

impl Codec {
    /// Every codec, in [`Codec::index`] order.
    pub const ALL: [Codec; CODECS] = [
        Codec::V1Json,
        Codec::V1MsgPack,
        Codec::V1Msgpackr,
        Codec::Jmap,
        Codec::Realtime,
        Codec::Rooms,
    ];

    /// Position in per-codec arrays.
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The dialect whose frames these are.
    pub fn dialect(self) -> Dialect {
        match self {
            Codec::V1Json | Codec::V1MsgPack | Codec::V1Msgpackr => Dialect::ForwardEmail,
            Codec::Jmap => Dialect::Jmap,
            Codec::Realtime => Dialect::Realtime,
            Codec::Rooms => Dialect::Rooms,
        }
    }

    /// The encoding, as named in span attributes.
    pub fn format_name(self) -> &'static str {
        match self {
            Codec::V1MsgPack => "msgpack",
            Codec::V1Msgpackr => "msgpackr",
            _ => "json",
        }
    }
}

/// A dialect's encoding of events for the members of one [`Codec`].
pub trait Encode: Send + Sync + std::fmt::Debug {
    /// This codec's items for one event (several when `/v1/ws` splits it), each with its
    /// publish timestamp for the latency histogram; `Err` says why the event does not
    /// fit this dialect.
    fn encode(
        &self,
        decoded: &Decoded,
        settings: &CodecSettings,
    ) -> Result<Vec<(Item, Option<u64>)>, EncodeError>;

    /// The dialect's "you missed too much, refetch" item, if it has one.
    fn resync(&self) -> Option<Item>;
}

/// One [`Encode`] per codec, in [`Codec::index`] order.
pub type Encoders = [&'static dyn Encode; CODECS];

/// One encoded frame and its publish timestamp (ms since the epoch).
pub type Encoded = (Frame, Option<u64>);

/// What a codec makes of an event for one member: a frame for its socket, or a typed
/// event for a session actor that works on each event itself (`/jmap/ws` filters and
/// coalesces), so nothing is encoded only to be parsed again.
#[derive(Debug, Clone)]
pub enum Item {
    /// A frame, written to the socket as is.
    Frame(Frame),
    /// A catalog event of the member's alias changed something.
    Change(Event),
    /// The member missed events that can no longer be replayed: it must refetch.
    Resync,
}

/// What a relayed event is charged against `limits.max_buffered_bytes` while it waits in
/// the session actor's mailbox: about what the mailbox holds for it (envelope, message).
pub const RELAYED_BYTES: usize = 64;

impl Item {
    /// Bytes the item holds while queued, counted against `limits.max_buffered_bytes`.
    pub fn len(&self) -> usize {
        match self {
            Item::Frame(frame) => frame.len(),
            Item::Change(_) | Item::Resync => RELAYED_BYTES,
        }
    }

    /// Whether the item holds no bytes (an empty frame).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an event does not become a dialect's frames. Logged and counted in
/// `herald_bus_decode_errors_total`; the event is skipped for that dialect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EncodeError {
    /// The subject is not a herald subject.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The body is not a valid envelope (or names an event its subject does not).
    #[error(transparent)]
    Envelope(Arc<EnvelopeError>),
    /// The event is valid but not one this dialect carries, as the text says.
    #[error("{0}")]
    Unfit(String),
}

impl From<EnvelopeError> for EncodeError {
    fn from(error: EnvelopeError) -> Self {
        EncodeError::Envelope(Arc::new(error))
    }
}

/// What codecs need besides the event.
#[derive(Debug, Clone)]
pub struct CodecSettings {
    /// Above this, `/v1/ws` resources are truncated (`limits.max_notification_bytes`).
    pub max_notification_bytes: usize,
}

/// Enriched notifications (`herald_protocol::notification`), shared by every encoding of them.
pub type Notifications = Arc<[Map<String, Value>]>;

/// A bus event decoded once for every codec: its subject, envelope and stream facts.
pub struct Decoded {
    /// The parsed subject.
    pub subject: Subject,
    /// The decoded envelope.
    pub envelope: Envelope,
    /// Stream sequence, when the bus has one.
    pub seq: Option<u64>,
    /// When the event was stored (ms since the epoch), else now.
    pub timestamp_ms: u64,
    /// A notification id that is the same on every node (`Nats-Msg-Id`, else derived).
    pub fallback_id: String,
    /// The enriched notifications of this event, built once for every encoding of them.
    notifications: std::sync::OnceLock<Result<Notifications, EncodeError>>,
}

impl Decoded {
    /// Decodes a bus message, or says why it cannot be.
    pub fn new(message: &BusMessage) -> Result<Decoded, EncodeError> {
        let subject = Subject::parse(&message.subject)?;
        let envelope = Envelope::decode(&message.payload, message.json)?;
        Ok(Decoded {
            subject,
            envelope,
            seq: message.seq,
            timestamp_ms: message.stored_ms.unwrap_or_else(herald_protocol::now_ms),
            fallback_id: notification::derive_notification_id(
                &message.subject,
                message.msg_id.as_deref(),
                message.seq,
                &message.payload,
            ),
            notifications: std::sync::OnceLock::new(),
        })
    }

    /// The catalog event and alias of an alias or broadcast event, checking that the
    /// envelope agrees with its subject.
    pub fn catalog_event(&self) -> Result<(Event, Option<&str>), EncodeError> {
        let (event, alias_id) = match &self.subject {
            Subject::Alias { alias_id, event } => {
                if let Some(id) = self
                    .envelope
                    .alias_id
                    .as_deref()
                    .filter(|id| id != alias_id)
                {
                    return Err(EncodeError::Unfit(format!(
                        "envelope aliasId {id:?} does not match the subject's alias {alias_id:?}"
                    )));
                }
                (*event, Some(alias_id.as_str()))
            }
            Subject::Broadcast(event) => (*event, None),
            other => {
                return Err(EncodeError::Unfit(format!(
                    "{other} carries no mailbox event"
                )))
            }
        };
        let event = self.envelope.event_for_subject(event)?;
        Ok((event, alias_id))
    }

    /// The enriched notifications of this event (split when UID lists are long), as
    /// `/v1/ws` sends them.
    pub fn notifications(&self) -> Result<Notifications, EncodeError> {
        self.notifications
            .get_or_init(|| {
                let (event, alias_id) = self.catalog_event()?;
                let info = Enrichment {
                    event,
                    alias_id,
                    seq: self.seq,
                    fallback_id: self.fallback_id.clone(),
                    now_ms: self.timestamp_ms,
                };
                Ok(notification::prepare(self.envelope.payload.clone(), &info).into())
            })
            .clone()
    }
}
