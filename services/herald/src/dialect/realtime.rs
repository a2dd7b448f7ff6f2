//! `/ws`: the generic realtime protocol (SPEC §4.3). Frames are `{type, data, id?,
//! timestamp?, metadata?}` JSON text frames.

use bytestring::ByteString;
use herald_protocol::Subject;
use serde_json::{json, Value};

use crate::dialect::codec::{Decoded, Encoded};
use crate::outbox::Frame;

/// The frame telling a client its `since` is older than retention: refetch.
pub fn resync_frame() -> Option<Frame> {
    Some(Frame::Text(ByteString::from_static(
        r#"{"type":"Status","data":{"status":"resync_required"}}"#,
    )))
}

/// A topic or user event as a `/ws` frame: the envelope's payload is the frame
/// (`{type, data, metadata?}`); a payload without `type` is broadcast as it is.
pub fn encode(decoded: &Decoded) -> Result<Encoded, String> {
    let payload = &decoded.envelope.payload;
    let frame = match &decoded.subject {
        Subject::Topic(topic) => match payload.get("type") {
            Some(Value::String(_)) => Value::Object(payload.clone()),
            _ => json!({
                "type": "Broadcast",
                "data": {"topic": topic, "payload": payload},
            }),
        },
        Subject::User(_) => Value::Object(payload.clone()),
        other => return Err(format!("{other} is not a /ws topic or user subject")),
    };
    let mut frame = frame;
    if let Some(map) = frame.as_object_mut() {
        let metadata = map.entry("metadata").or_insert_with(|| json!({}));
        if let Some(metadata) = metadata.as_object_mut() {
            metadata
                .entry("message_id")
                .or_insert_with(|| decoded.fallback_id.clone().into());
            metadata
                .entry("sent_at")
                .or_insert_with(|| decoded.timestamp_ms.into());
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
