//! `/api/v1/ws/connect`: the rooms API (SPEC §4.4). Clients join rooms
//! (`channel|project|task|user:<number>`) and get every event published to a room as a
//! `{type, room, data, sender, timestamp}` JSON text frame.
//!
//! This module holds the protocol: rooms, who may join them, the frames; [`session`] is
//! the WebSocket session that speaks it.

pub mod session;

use bytestring::ByteString;
use herald_protocol::Subject;
use serde_json::{json, Map, Value};

use crate::codec::{Decoded, EncodeError, Encoded};
use crate::outbox::Frame;
use crate::registry::RoutingKey;

pub use session::upgrade;

/// Event types a room carries (SPEC §4.4). A bus event of any other type is dropped,
/// logged and counted in `herald_bus_decode_errors_total`: clients only ever see the
/// documented types, and a producer's typo shows up on the node instead of in browsers.
pub const EVENT_TYPES: &[&str] = &[
    "message",
    "message.edited",
    "message.deleted",
    "task.created",
    "task.updated",
    "task.status_changed",
    "task.assigned",
    "task.deleted",
    "project.updated",
    "project.archived",
    "user_joined",
    "user_left",
    "notification.new",
    "error",
];

/// A backend event on `herald.v1.room.<prefix>.<id>` as a rooms frame: the envelope's
/// payload gives `type`, `data`, `sender` (and `sender_id` when it has one); herald adds
/// `room`, `timestamp` (when the bus stored the event, the same on every node) and `seq`
/// (SPEC §5).
pub fn encode(decoded: &Decoded) -> Result<Encoded, EncodeError> {
    let Subject::Room { prefix, id } = &decoded.subject else {
        return Err(EncodeError::Unfit(format!(
            "{} is not a room subject",
            decoded.subject
        )));
    };
    let payload = &decoded.envelope.payload;
    let kind = payload
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| EncodeError::Unfit("a room event needs payload.type (a string)".into()))?;
    if !EVENT_TYPES.contains(&kind) {
        return Err(EncodeError::Unfit(format!(
            "room event type {kind:?} is not one of {}; dropped",
            EVENT_TYPES.join(", ")
        )));
    }
    let mut frame = json!({
        "type": kind,
        "room": format!("{prefix}:{id}"),
        "data": payload.get("data").cloned().unwrap_or(Value::Null),
        "sender": payload.get("sender").cloned().unwrap_or(Value::Null),
        "timestamp": iso8601(decoded.timestamp_ms),
        "seq": decoded.seq,
    });
    if let Some(sender_id) = payload.get(SENDER_ID) {
        frame[SENDER_ID] = sender_id.clone();
    }
    Ok((
        Frame::Text(ByteString::from(frame.to_string())),
        Some(decoded.timestamp_ms),
    ))
}

/// The field beside `sender` (the username, as document 004 shows) that carries the
/// sender's user id, so clients can tell apart two users of the same name.
pub const SENDER_ID: &str = "sender_id";

/// Milliseconds since the epoch in document 004's timestamp format: ISO-8601 UTC with
/// six fractional digits (`2025-11-13T12:00:00.123000Z`, what Python's `isoformat`
/// writes).
pub fn iso8601(ms: u64) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_micros(at).to_string()
}

/// A frame the session itself sends (`connected`, `pong`, `error`), stamped now.
pub fn server_frame(mut frame: Map<String, Value>) -> Frame {
    let now = humantime::format_rfc3339_micros(std::time::SystemTime::now());
    frame.insert("timestamp".into(), Value::String(now.to_string()));
    Frame::Text(ByteString::from(Value::Object(frame).to_string()))
}

/// An `error` event about a client frame, in document 004's shape: `data.error` says what
/// was wrong and what to do; `data.code` is machine-readable (herald's addition), `room`
/// the room the frame named, if any.
pub fn error_frame(room: Option<&str>, code: &str, error: &str) -> Frame {
    let Value::Object(frame) = json!({
        "type": "error",
        "room": room,
        "data": {"error": error, "code": code},
        "sender": null,
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    server_frame(frame)
}

/// A room: its kind and numeric id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Room {
    /// `channel`, `project`, `task` or `user`.
    pub prefix: String,
    /// Decimal digits.
    pub id: String,
}

/// Why a client's `room` is not a room.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// No `room` field.
    #[error("this frame needs \"room\": \"<channel|project|task|user>:<number>\"")]
    Missing,
    /// `room` is not a string.
    #[error("\"room\" must be a string like \"project:123\", not {0}")]
    NotAString(String),
    /// `room` does not match `^(channel|project|task|user):[0-9]+$`.
    #[error("room {room:?} {reason}: rooms look like channel:1, project:2, task:3 or user:4")]
    Format {
        /// What the client sent.
        room: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Room {
    /// Parses `<prefix>:<digits>` (SPEC: `^(channel|project|task|user):[0-9]+$`), saying
    /// what is wrong when it does not match.
    pub fn parse(text: &str) -> Result<Room, RoomError> {
        let bad = |reason| RoomError::Format {
            room: text.to_owned(),
            reason,
        };
        let (prefix, id) = text.split_once(':').ok_or_else(|| bad("has no ':'"))?;
        if !herald_protocol::subject::ROOM_PREFIXES.contains(&prefix) {
            return Err(bad("has an unknown kind (channel, project, task or user)"));
        }
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("has an id that is not a number"));
        }
        // Subject::room also bounds the id's length, so every room is a valid subject.
        match Subject::room(prefix, id) {
            Ok(_) => Ok(Room {
                prefix: prefix.to_owned(),
                id: id.to_owned(),
            }),
            Err(_) => Err(bad("has an id longer than 20 digits")),
        }
    }

    /// Reads the `room` field of a client frame.
    pub fn from_field(field: Option<&Value>) -> Result<Room, RoomError> {
        match field {
            None | Some(Value::Null) => Err(RoomError::Missing),
            Some(Value::String(text)) => Room::parse(text),
            Some(other) => Err(RoomError::NotAString(other.to_string())),
        }
    }

    /// The registry key whose members get this room's events.
    pub fn key(&self) -> RoutingKey {
        RoutingKey::Room(self.prefix.clone(), self.id.clone())
    }

    /// The bus subject events of this room are published on.
    pub fn subject(&self) -> String {
        Subject::Room {
            prefix: self.prefix.clone(),
            id: self.id.clone(),
        }
        .to_string()
    }
}

impl std::fmt::Display for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.prefix, self.id)
    }
}

/// The JWT claim listing the rooms a token may join.
pub const ROOMS_CLAIM: &str = "rooms";

/// Which rooms a session may join, from its token's `rooms` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    /// The claim's patterns: `project:123` (that room), `project:*` (every room of the
    /// kind) or `*` (every room).
    Patterns(Vec<String>),
    /// No claim: every room when `rooms.default_allow`, else none.
    Default(bool),
}

impl Access {
    /// Reads the `rooms` claim: a list of patterns or a single pattern string. A claim
    /// of any other type grants nothing (never falls back to the default).
    pub fn from_claims(claims: &Map<String, Value>, default_allow: bool) -> Access {
        match claims.get(ROOMS_CLAIM) {
            None | Some(Value::Null) => Access::Default(default_allow),
            Some(Value::String(pattern)) => Access::Patterns(vec![pattern.clone()]),
            Some(Value::Array(items)) => Access::Patterns(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(_) => Access::Patterns(Vec::new()),
        }
    }

    /// Whether `user_id` may join `room`: `user:<own id>` always, else as the claim says.
    pub fn allows(&self, room: &Room, user_id: &str) -> bool {
        if room.prefix == "user" && room.id == user_id {
            return true;
        }
        match self {
            Access::Default(allow) => *allow,
            Access::Patterns(patterns) => patterns.iter().any(|p| pattern_matches(p, room)),
        }
    }
}

/// `*`, `<prefix>:*` or `<prefix>:<id>` against a room.
fn pattern_matches(pattern: &str, room: &Room) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once(':') {
        Some((prefix, id)) => prefix == room.prefix && (id == "*" || id == room.id),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(text: &str) -> Room {
        Room::parse(text).unwrap()
    }

    #[test]
    fn rooms_are_a_kind_and_a_number() {
        assert_eq!(room("project:123").subject(), "herald.v1.room.project.123");
        assert_eq!(room("user:7").to_string(), "user:7");
        for bad in [
            "project",
            "team:1",
            "project:",
            "project:12a",
            "project:-1",
            "Project:1",
            "project:1:2",
            "project: 1",
            &format!("task:{}", "9".repeat(21)),
        ] {
            let error = Room::parse(bad).unwrap_err();
            assert!(error.to_string().contains(bad), "{error}");
        }
        assert_eq!(Room::from_field(None), Err(RoomError::Missing));
        assert!(matches!(
            Room::from_field(Some(&json!(5))),
            Err(RoomError::NotAString(_))
        ));
    }

    #[test]
    fn access_follows_the_claim_and_always_allows_the_own_user_room() {
        let claims = |v: Value| v.as_object().unwrap().clone();
        let access = Access::from_claims(
            &claims(json!({"rooms": ["project:123", "channel:*"]})),
            true,
        );
        assert!(access.allows(&room("project:123"), "1"));
        assert!(!access.allows(&room("project:124"), "1"));
        assert!(access.allows(&room("channel:9"), "1"));
        assert!(!access.allows(&room("task:1"), "1"));
        assert!(access.allows(&room("user:1"), "1"), "own user room");
        assert!(!access.allows(&room("user:2"), "1"));

        let none = Access::from_claims(&claims(json!({})), false);
        assert!(!none.allows(&room("project:1"), "1"));
        assert!(none.allows(&room("user:1"), "1"));
        let open = Access::from_claims(&claims(json!({})), true);
        assert!(open.allows(&room("project:1"), "1"));
        let star = Access::from_claims(&claims(json!({"rooms": "*"})), false);
        assert!(star.allows(&room("task:5"), "1"));
        let junk = Access::from_claims(&claims(json!({"rooms": 5})), true);
        assert!(
            !junk.allows(&room("task:5"), "1"),
            "a malformed claim grants nothing"
        );
    }

    #[test]
    fn error_events_carry_data_error_as_in_the_document() {
        let Frame::Text(text) = error_frame(Some("team:1"), "bad_room", "rooms look like x:1")
        else {
            panic!("a text frame")
        };
        let event: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(event["type"], "error");
        assert_eq!(
            event["data"],
            json!({"error": "rooms look like x:1", "code": "bad_room"})
        );
        assert_eq!(event["room"], "team:1");
        assert_eq!(event["timestamp"].as_str().map(str::len), Some(27));
    }

    #[test]
    fn timestamps_are_iso8601_utc_with_microseconds_as_in_the_document() {
        assert_eq!(iso8601(1_700_000_000_123), "2023-11-14T22:13:20.123000Z");
    }
}
