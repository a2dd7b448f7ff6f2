//! `/api/v1/ws/connect`: the rooms API (SPEC §4.4). Server events are
//! `{type, room, data, sender, timestamp}` JSON text frames.

use bytestring::ByteString;
use herald_protocol::Subject;
use serde_json::{json, Value};

use crate::dialect::codec::{Decoded, Encoded};
use crate::outbox::Frame;

/// A backend event on `herald.v1.room.<prefix>.<id>` as a rooms frame: the envelope's
/// payload gives `type`, `data` and `sender`.
pub fn encode(decoded: &Decoded) -> Result<Encoded, String> {
    let Subject::Room { prefix, id } = &decoded.subject else {
        return Err(format!("{} is not a room subject", decoded.subject));
    };
    let payload = &decoded.envelope.payload;
    let kind = payload
        .get("type")
        .and_then(Value::as_str)
        .ok_or("a room event needs payload.type")?;
    let frame = json!({
        "type": kind,
        "room": format!("{prefix}:{id}"),
        "data": payload.get("data").cloned().unwrap_or(Value::Null),
        "sender": payload.get("sender").cloned().unwrap_or(Value::Null),
        "timestamp": iso8601(decoded.timestamp_ms),
        "seq": decoded.seq,
    });
    Ok((
        Frame::Text(ByteString::from(frame.to_string())),
        Some(decoded.timestamp_ms),
    ))
}

/// Milliseconds since the epoch as ISO-8601 UTC (`2026-11-23T15:04:05.123Z`).
pub fn iso8601(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(at).to_string()
}
