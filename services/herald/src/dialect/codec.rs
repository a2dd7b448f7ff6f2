//! Each dialect's [`Encode`] of events, in [`Codec`] order ([`ENCODERS`]): the table the
//! node hands to its registries, which know codecs only by that trait.

use bytestring::ByteString;
use herald_protocol::notification;
use herald_protocol::WireFormat;
use serde_json::{json, Map, Value};

use crate::codec::{CodecSettings, Decoded, Encode, EncodeError, Encoded, Encoders, Item};
use crate::outbox::Frame;

pub use crate::codec::Codec;

/// Every codec's encoder, in [`Codec::index`] order.
pub static ENCODERS: Encoders = [
    &V1(Codec::V1Json),
    &V1(Codec::V1MsgPack),
    &V1(Codec::V1Msgpackr),
    &Jmap,
    &Realtime,
    &Rooms,
];

/// `/v1/ws` in one of its three encodings.
#[derive(Debug)]
struct V1(Codec);

impl Encode for V1 {
    fn encode(
        &self,
        decoded: &Decoded,
        settings: &CodecSettings,
    ) -> Result<Vec<(Item, Option<u64>)>, EncodeError> {
        Ok(decoded
            .notifications()?
            .iter()
            .filter_map(|n| v1_frame(self.0, n, settings))
            .map(|(frame, published)| (Item::Frame(frame), published))
            .collect())
    }

    fn resync(&self) -> Option<Item> {
        let resync = json!({"event": "resyncRequired"});
        match self.0 {
            Codec::V1MsgPack => Frame::encode(WireFormat::MessagePack, &resync).map(Item::Frame),
            Codec::V1Msgpackr => Some(Item::Frame(msgpackr_frame(&resync))),
            _ => Frame::encode(WireFormat::Json, &resync).map(Item::Frame),
        }
    }
}

/// `/jmap/ws`: typed changes for the session actor, which filters and coalesces them.
#[derive(Debug)]
struct Jmap;

impl Encode for Jmap {
    fn encode(
        &self,
        decoded: &Decoded,
        _: &CodecSettings,
    ) -> Result<Vec<(Item, Option<u64>)>, EncodeError> {
        crate::dialect::jmap::encode(decoded)
            .map(|change| vec![(change, Some(decoded.timestamp_ms))])
    }

    fn resync(&self) -> Option<Item> {
        Some(Item::Resync)
    }
}

/// `/ws`: `Broadcast`, `DirectMessage` and `Notification` frames.
#[derive(Debug)]
struct Realtime;

impl Encode for Realtime {
    fn encode(
        &self,
        decoded: &Decoded,
        _: &CodecSettings,
    ) -> Result<Vec<(Item, Option<u64>)>, EncodeError> {
        crate::dialect::realtime::encode(decoded).map(frame)
    }

    fn resync(&self) -> Option<Item> {
        crate::dialect::realtime::resync_frame().map(Item::Frame)
    }
}

/// `/api/v1/ws/connect`: room events; rooms have no resync frame.
#[derive(Debug)]
struct Rooms;

impl Encode for Rooms {
    fn encode(
        &self,
        decoded: &Decoded,
        _: &CodecSettings,
    ) -> Result<Vec<(Item, Option<u64>)>, EncodeError> {
        crate::dialect::rooms::encode(decoded).map(frame)
    }

    fn resync(&self) -> Option<Item> {
        None
    }
}

/// One frame as the only item of an event.
fn frame((frame, published): Encoded) -> Vec<(Item, Option<u64>)> {
    vec![(Item::Frame(frame), published)]
}

/// One `/v1/ws` notification in the codec's encoding, its resources truncated if the
/// notification is over `limits.max_notification_bytes`.
fn v1_frame(
    codec: Codec,
    notification: &Map<String, Value>,
    settings: &CodecSettings,
) -> Option<Encoded> {
    let published = notification.get("timestamp").and_then(Value::as_u64);
    let mut json = serde_json::to_vec(notification).ok()?;
    let mut truncated = None;
    if json.len() > settings.max_notification_bytes {
        let mut copy = notification.clone();
        if notification::truncate_resources(&mut copy) {
            json = serde_json::to_vec(&copy).ok()?;
            truncated = Some(copy);
        }
    }
    let frame = match codec {
        Codec::V1MsgPack => {
            let value = Value::Object(truncated.unwrap_or_else(|| notification.clone()));
            Frame::Binary(WireFormat::MessagePack.encode_value(&value).ok()?)
        }
        Codec::V1Msgpackr => msgpackr_frame(&Value::Object(
            truncated.unwrap_or_else(|| notification.clone()),
        )),
        _ => Frame::Text(ByteString::try_from(json).ok()?),
    };
    Some((frame, published))
}

/// A binary frame as msgpackr's default `Encoder` writes `value` (Forward Email's
/// `?msgpackr=true`: records, which a default `Decoder` turns into plain objects).
pub fn msgpackr_frame(value: &Value) -> Frame {
    Frame::Binary(herald_protocol::msgpackr::encode(value).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgpackr_resync_frame_is_what_msgpackr_writes() {
        // `new (require("msgpackr").Encoder)().pack({event: "resyncRequired"})`, 2.1.3.
        let expected: &[u8] = b"\xd4\x72\x40\x91\xa5event\xaeresyncRequired";
        match ENCODERS[Codec::V1Msgpackr.index()].resync() {
            Some(Item::Frame(Frame::Binary(bytes))) => assert_eq!(&bytes[..], expected),
            other => panic!("expected a binary frame, got {other:?}"),
        }
        match ENCODERS[Codec::V1MsgPack.index()].resync() {
            Some(Item::Frame(Frame::Binary(bytes))) => {
                assert_eq!(bytes[0], 0x81, "a plain one-entry map")
            }
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }
}
