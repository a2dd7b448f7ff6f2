//! `/ws`: the generic realtime protocol (SPEC §4.3). Frames are `{type, data, id?,
//! timestamp?, metadata?}` JSON text frames; binary frames are `[type][len][payload]`.
//!
//! A session authenticates with a JWT before the upgrade, joins its user's registry
//! (`RoutingKey::User`: direct messages, notifications, queued messages) and one topic
//! registry per subscription pattern (`RoutingKey::Topic`: NATS does the wildcard
//! matching). Broadcasts and direct messages go through the bus like any producer's
//! event; [`node::RealtimeNode`] counts their recipients across the cluster.

mod acks;
mod commands;
mod frames;
mod node;
mod session;
mod upgrade;

use bytestring::ByteString;
use herald_protocol::Subject;
use serde_json::{json, Value};

pub use node::RealtimeNode;
pub use upgrade::upgrade;

use crate::codec::{Decoded, EncodeError, Encoded};
use crate::outbox::Frame;

/// The frame telling a client its `since` is older than retention: refetch.
pub fn resync_frame() -> Option<Frame> {
    Some(Frame::Text(ByteString::from_static(
        r#"{"type":"Status","data":{"status":"resync_required","message":"events after your since are no longer retained: refetch state, then subscribe without since"}}"#,
    )))
}

/// Checks a subscription pattern (defined with [`herald_protocol::TopicPattern`]).
pub use herald_protocol::topic::validate_pattern;

/// Whether the permission pattern `allowed` covers everything `requested` (a topic or a
/// pattern) can match: `>` covers the rest, `*` covers one token (not `>`).
pub fn covers(allowed: &str, requested: &str) -> bool {
    let mut requested = requested.split('.');
    for a in allowed.split('.') {
        match (a, requested.next()) {
            (">", Some(_)) => return true,
            ("*", Some(r)) if r != ">" => {}
            (a, Some(r)) if a == r && a != "*" && a != ">" => {}
            _ => return false,
        }
    }
    requested.next().is_none()
}

/// A topic or user event as a `/ws` frame. The envelope's payload is the frame when it has
/// a `type` (`Broadcast`, `DirectMessage`, `Notification`, `Presence`, ...); a topic payload
/// without one is delivered as `Broadcast {topic, payload}`, a user payload without one as
/// `Notification`. `data.metadata` gets `message_id`, `sent_at` (seconds, as document 003
/// shows it) and `seq`, and the frame a top-level `seq` to resume from with
/// `Subscribe.since` and `timestamp` (ms, like the document client's `Date.now()`).
pub fn encode(decoded: &Decoded) -> Result<Encoded, EncodeError> {
    let payload = &decoded.envelope.payload;
    let typed = matches!(payload.get("type"), Some(Value::String(_)));
    let mut frame = match (&decoded.subject, typed) {
        (Subject::Topic(_) | Subject::User(_), true) => {
            let mut map = payload.clone();
            map.remove(acks::ACK_FIELD);
            Value::Object(map)
        }
        (Subject::Topic(topic), false) => json!({
            "type": "Broadcast",
            "data": {"topic": topic, "payload": payload},
        }),
        (Subject::User(_), false) => json!({"type": "Notification", "data": payload}),
        (other, _) => {
            return Err(EncodeError::Unfit(format!(
                "{other} is not a /ws topic or user subject"
            )))
        }
    };
    let Some(map) = frame.as_object_mut() else {
        return Err(EncodeError::Unfit("a /ws frame is a JSON object".into()));
    };
    if let Some(seq) = decoded.seq {
        map.insert("seq".into(), seq.into());
    }
    map.entry("timestamp")
        .or_insert_with(|| decoded.timestamp_ms.into());
    let data = map.entry("data").or_insert_with(|| json!({}));
    if let Some(data) = data.as_object_mut() {
        let metadata = data.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata
                .entry("message_id")
                .or_insert_with(|| decoded.fallback_id.clone().into());
            metadata
                .entry("sent_at")
                .or_insert_with(|| (decoded.timestamp_ms / 1000).into());
            if let Some(seq) = decoded.seq {
                metadata.insert("seq".into(), seq.into());
            }
        }
    }
    Ok((
        Frame::Text(ByteString::from(frame.to_string())),
        Some(decoded.timestamp_ms),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_patterns_cover_topics_and_narrower_patterns() {
        assert!(covers(">", "a.b"));
        assert!(covers(">", "a.>"));
        assert!(covers("updates.>", "updates.a.b"));
        assert!(covers("updates.*", "updates.a"));
        assert!(covers("updates.*", "updates.*"));
        assert!(!covers("updates.*", "updates.>"));
        assert!(!covers("updates.*", "updates.a.b"));
        assert!(!covers("updates.a", "updates.*"));
        assert!(!covers("updates.>", "updates"));
        assert!(!covers("other.>", "updates.a"));
        assert!(covers("chat.room1", "chat.room1"));
    }

    #[test]
    fn patterns_allow_wildcards_only_as_whole_tokens() {
        assert!(validate_pattern("updates.*").is_ok());
        assert!(validate_pattern("updates.>").is_ok());
        assert!(validate_pattern(">").is_ok());
        assert!(validate_pattern("a.>.b").is_err());
        assert!(validate_pattern("a.b*").is_err());
        assert!(validate_pattern("a..b").is_err());
        assert!(validate_pattern("").is_err());
    }
}
