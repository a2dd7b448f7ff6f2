//! Wire encodings of frames: JSON text frames or MessagePack binary frames.

use bytes::Bytes;
use serde::Serialize;

/// How a session wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireFormat {
    /// JSON in WebSocket text frames.
    Json,
    /// MessagePack (string-keyed maps) in WebSocket binary frames.
    MessagePack,
}

/// A value that could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// JSON encoding failed.
    #[error("cannot encode frame as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack encoding failed.
    #[error("cannot encode frame as MessagePack: {0}")]
    MessagePack(#[from] rmp_serde::encode::Error),
}

impl WireFormat {
    /// Both formats, for encoders that fill one slot per format.
    pub const ALL: [WireFormat; 2] = [WireFormat::Json, WireFormat::MessagePack];

    /// Encodes `value` in this format.
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, CodecError> {
        Ok(match self {
            WireFormat::Json => Bytes::from(serde_json::to_vec(value)?),
            WireFormat::MessagePack => Bytes::from(rmp_serde::to_vec_named(value)?),
        })
    }

    /// Index into per-format arrays.
    pub const fn index(self) -> usize {
        match self {
            WireFormat::Json => 0,
            WireFormat::MessagePack => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn msgpack_writes_string_keyed_maps() {
        let bytes = WireFormat::MessagePack
            .encode(&json!({"event": "ping"}))
            .unwrap();
        assert_eq!(bytes[0], 0x81, "a one-entry fixmap, not an array");
        let back: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, json!({"event": "ping"}));
        assert_eq!(
            &WireFormat::Json.encode(&json!({"a": 1})).unwrap()[..],
            br#"{"a":1}"#
        );
    }
}
