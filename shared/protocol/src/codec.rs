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

/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// A JSON value serialised for JavaScript MessagePack decoders: integers outside the
/// 32-bit range that a double holds exactly are written as float64, as msgpackr itself
/// writes them, so msgpackr's default decoder yields a `number` (a millisecond
/// `timestamp`, say) rather than a `BigInt`.
pub struct JsCompatible<'a>(pub &'a serde_json::Value);

impl Serialize for JsCompatible<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        use serde_json::Value;
        match self.0 {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(u), _) if u > u64::from(u32::MAX) && u <= MAX_SAFE_INTEGER => {
                    s.serialize_f64(u as f64)
                }
                (None, Some(i))
                    if i < i64::from(i32::MIN) && i.unsigned_abs() <= MAX_SAFE_INTEGER =>
                {
                    s.serialize_f64(i as f64)
                }
                _ => n.serialize(s),
            },
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&JsCompatible(item))?;
                }
                seq.end()
            }
            Value::Object(map) => {
                let mut out = s.serialize_map(Some(map.len()))?;
                for (k, v) in map {
                    out.serialize_entry(k, &JsCompatible(v))?;
                }
                out.end()
            }
            other => other.serialize(s),
        }
    }
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

    /// Encodes a JSON value; MessagePack numbers are made [`JsCompatible`].
    pub fn encode_value(self, value: &serde_json::Value) -> Result<Bytes, CodecError> {
        match self {
            WireFormat::Json => self.encode(value),
            WireFormat::MessagePack => self.encode(&JsCompatible(value)),
        }
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

    #[test]
    fn large_integers_become_float64_in_msgpack_only() {
        let value = json!({"timestamp": 1_795_439_464_867u64, "seq": 7, "neg": -5_000_000_000i64, "huge": u64::MAX});
        let bytes = WireFormat::MessagePack.encode_value(&value).unwrap();
        let back = rmpv::decode::read_value(&mut &bytes[..]).unwrap();
        let field = |name: &str| {
            back.as_map()
                .unwrap()
                .iter()
                .find(|(k, _)| k.as_str() == Some(name))
                .unwrap()
                .1
                .clone()
        };
        assert_eq!(field("timestamp"), rmpv::Value::F64(1_795_439_464_867.0));
        assert_eq!(field("seq"), rmpv::Value::from(7));
        assert_eq!(field("neg"), rmpv::Value::F64(-5_000_000_000.0));
        assert_eq!(
            field("huge"),
            rmpv::Value::from(u64::MAX),
            "not exactly representable: kept"
        );
        let json = WireFormat::Json.encode_value(&value).unwrap();
        assert!(std::str::from_utf8(&json)
            .unwrap()
            .contains("1795439464867"));
    }
}
