//! `/ws` frames: the client's `{type, data, id?}`, the server's `{type, data, id?,
//! timestamp}` and `Error`, and binary frames `[type][len][payload]`.

use bytestring::ByteString;
use serde_json::{json, Map, Value};

use crate::outbox::Frame;
use herald_protocol::now_ms;

/// Seconds since the epoch: the unit of every time field inside `data` (`server_time`,
/// `sent_at`, `last_seen`, `expires_at`), as document 003's examples show them.
pub(super) fn now_secs() -> u64 {
    now_ms() / 1000
}

/// A client frame `{type, data, id?}`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct ClientFrame {
    /// `type`.
    #[serde(rename = "type")]
    pub(super) kind: String,
    /// `data` (null when absent).
    #[serde(default)]
    pub(super) data: Value,
    /// `id`, echoed on the answers.
    #[serde(default)]
    pub(super) id: Option<Value>,
}

/// A server frame `{type, data, id?, timestamp}` (the client's `id` echoed on answers).
pub(super) fn frame(kind: &str, data: Value, id: Option<&Value>) -> Frame {
    let mut map = Map::new();
    map.insert("type".into(), kind.into());
    map.insert("data".into(), data);
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("timestamp".into(), now_ms().into());
    Frame::Text(ByteString::from(Value::Object(map).to_string()))
}

/// `Error {code, message, details}`.
pub(super) fn error(
    code: u16,
    message: impl Into<String>,
    details: Value,
    id: Option<&Value>,
) -> Frame {
    frame(
        "Error",
        json!({"code": code, "message": message.into(), "details": details}),
        id,
    )
}

/// A binary client frame, checked.
pub(super) struct BinaryFrame<'a> {
    /// The document's name of the type: `broadcast`, `direct_message`, `file_transfer` or
    /// `stream_data`.
    pub(super) kind: &'static str,
    /// The target of a broadcast (topic) or direct (user) frame.
    pub(super) target: Option<String>,
    /// Everything after the 5-byte header.
    pub(super) payload: &'a [u8],
}

/// Checks a binary frame `[1 B type][4 B big-endian length][payload]` (broadcast and direct
/// payloads start with a 1-byte target length and the target).
pub(super) fn parse_binary(bytes: &[u8]) -> Result<BinaryFrame<'_>, String> {
    let Some((&kind, rest)) = bytes.split_first() else {
        return Err(
            "empty binary frame: expected [1 B type][4 B big-endian length][payload]".into(),
        );
    };
    let kind = match kind {
        0x01 => "broadcast",
        0x02 => "direct_message",
        0x03 => "file_transfer",
        0x04 => "stream_data",
        other => {
            return Err(format!(
                "binary type 0x{other:02x} is unknown: 0x01 broadcast, 0x02 direct_message, 0x03 file_transfer, 0x04 stream_data"
            ))
        }
    };
    let Some((length, payload)) = rest.split_first_chunk::<4>() else {
        return Err("binary frame shorter than its 5-byte header [type][4 B length]".into());
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length != payload.len() {
        return Err(format!(
            "binary length mismatch: the header says {length} bytes but {} follow",
            payload.len()
        ));
    }
    let target = if matches!(kind, "broadcast" | "direct_message") {
        let Some((&len, rest)) = payload.split_first() else {
            return Err(format!(
                "a {kind} binary payload starts with a 1-byte target length and the UTF-8 target"
            ));
        };
        let target = rest
            .get(..usize::from(len))
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or_else(|| format!("the {kind} target (length {len}) is missing or not UTF-8"))?;
        Some(target.to_owned())
    } else {
        None
    };
    Ok(BinaryFrame {
        kind,
        target,
        payload,
    })
}

/// Lowercase hex, for checksums.
pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_check_their_length_and_target() {
        let mut good = vec![0x01, 0, 0, 0, 4, 3];
        good.extend_from_slice(b"a.b");
        let parsed = parse_binary(&good).unwrap();
        assert_eq!(parsed.kind, "broadcast");
        assert_eq!(parsed.target.as_deref(), Some("a.b"));
        assert_eq!(parsed.payload.len(), 4);
        assert_eq!(
            parse_binary(&[0x03, 0, 0, 0, 0]).unwrap().kind,
            "file_transfer"
        );
        assert_eq!(
            parse_binary(&[0x04, 0, 0, 0, 0]).unwrap().kind,
            "stream_data"
        );
        assert!(parse_binary(&[0x03, 0, 0, 0, 9, 1, 2]).is_err());
        assert!(parse_binary(&[0x09, 0, 0, 0, 0]).is_err());
        assert!(parse_binary(&[0x03, 0, 0]).is_err());
        assert!(parse_binary(&[0x03, 0, 0, 0, 0]).is_ok());
    }
}
