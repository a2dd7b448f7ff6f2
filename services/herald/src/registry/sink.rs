//! Where a member's items go: frames to its socket's outbox, typed events to its actor.
//! Both are charged to the one byte budget of the session (`limits.max_buffered_bytes`),
//! so an actor that falls behind is a slow consumer like a socket that does.

use actix::prelude::*;

use super::SessionId;
use crate::codec::{Codec, Item, RELAYED_BYTES};
use crate::outbox::{Charge, Delivery, Outbox, PushError};

/// A session as a registry sees it: how it wants events and where they go.
#[derive(Clone)]
pub struct Member {
    /// The session's id.
    pub id: SessionId,
    /// Its outbound queue: frames, closing, slow-consumer marking, and the byte budget
    /// relayed events are charged to.
    pub outbox: Outbox,
    /// The dialect codec it wants.
    pub codec: Codec,
    /// Set when the session works on each event itself (`/jmap/ws` filters and
    /// coalesces): its codec's typed events go to this actor.
    pub relay: Option<Recipient<Relayed>>,
}

/// A typed event relayed to a session actor rather than a frame queued to its socket.
#[derive(Message, Debug)]
#[rtype(result = "()")]
pub enum Relayed {
    /// An event of the member's key changed something, at this stream sequence.
    Change {
        /// The catalog event.
        event: herald_protocol::Event,
        /// The event's stream sequence.
        seq: Option<u64>,
        /// The event's share of the session's byte budget, given back once handled.
        charge: Charge,
    },
    /// The member missed events that can no longer be replayed: it must refetch.
    Resync {
        /// The event's share of the session's byte budget, given back once handled.
        charge: Charge,
    },
}

/// A member as its registry holds it: a [`Member`] without the id that keys the
/// registry's map, its rarely set relay boxed (a registry holds one per session).
pub(super) struct Sink {
    outbox: Outbox,
    relay: Option<Box<Recipient<Relayed>>>,
    codec: Codec,
}

impl From<Member> for Sink {
    fn from(member: Member) -> Sink {
        Sink {
            outbox: member.outbox,
            relay: member.relay.map(Box::new),
            codec: member.codec,
        }
    }
}

impl Sink {
    /// The dialect codec the member wants.
    pub(super) fn codec(&self) -> Codec {
        self.codec
    }

    /// The member's outbound queue.
    pub(super) fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Hands an item to the session: frames to its socket queue, typed events to its
    /// actor. An event for a member without an actor is a codec/member mismatch: dropped.
    pub(super) fn push(
        &self,
        item: Item,
        seq: Option<u64>,
        delivery: Delivery,
    ) -> Result<(), PushError> {
        let relayed = match item {
            Item::Frame(frame) => return self.outbox.push_delivery(frame, delivery),
            Item::Change(event) => Relayed::Change {
                event,
                seq,
                charge: self.outbox.charge(RELAYED_BYTES)?,
            },
            Item::Resync => Relayed::Resync {
                charge: self.outbox.charge(RELAYED_BYTES)?,
            },
        };
        match &self.relay {
            Some(relay) if relay.connected() => {
                relay.do_send(relayed);
                Ok(())
            }
            Some(_) => Err(PushError::Closed),
            None => {
                debug_assert!(false, "{relayed:?} for a member without an actor");
                Err(PushError::Closed)
            }
        }
    }
}
