//! The envelope producers publish: Forward Email's `{"aliasId": "...", "payload": {...}}`,
//! as a MessagePack map (the default) or as JSON (`Content-Type: application/json`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::event::Event;
use crate::subject::{validate_identifier, SubjectError};

/// One published event before herald enriches it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The alias the event is for; absent for broadcast and topic/user/room events.
    #[serde(rename = "aliasId", default, skip_serializing_if = "Option::is_none")]
    pub alias_id: Option<String>,
    /// The full subject, used by `POST /v1/publish` for the non-alias dialects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The producer's fields, passed through as sent; `payload.event` names the event.
    pub payload: Map<String, Value>,
}

/// Why a body is not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The MessagePack body did not decode.
    #[error("body is not valid MessagePack: {0}")]
    MessagePack(String),
    /// The JSON body did not decode.
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The body decoded but is not the `{aliasId, payload}` shape.
    #[error("envelope must be a map {{\"aliasId\": string, \"payload\": map}}: {0}")]
    Shape(String),
    /// `payload.event` is missing or not in the catalog.
    #[error("payload.event {0:?} is not a catalog event name")]
    UnknownEvent(String),
    /// The payload's event and the subject's event disagree.
    #[error("payload.event {payload:?} does not match the subject's event {subject:?}")]
    EventMismatch {
        /// Event named in the payload.
        payload: String,
        /// Event named by the subject.
        subject: String,
    },
    /// `aliasId` is not a valid subject token.
    #[error(transparent)]
    Identifier(#[from] SubjectError),
}

impl Envelope {
    /// A new envelope for one alias.
    pub fn for_alias(alias_id: impl Into<String>, payload: Map<String, Value>) -> Self {
        Envelope {
            alias_id: Some(alias_id.into()),
            subject: None,
            payload,
        }
    }

    /// Decodes a bus body: JSON when `json` (the `Content-Type: application/json` header), else MessagePack.
    pub fn decode(body: &[u8], json: bool) -> Result<Self, EnvelopeError> {
        let value = if json {
            serde_json::from_slice::<Value>(body)?
        } else {
            decode_msgpack(body)?
        };
        let envelope: Envelope =
            serde_json::from_value(value).map_err(|e| EnvelopeError::Shape(e.to_string()))?;
        if let Some(alias_id) = &envelope.alias_id {
            validate_identifier(alias_id)?;
        }
        Ok(envelope)
    }

    /// The catalog event named by `payload.event`, if any.
    pub fn event(&self) -> Result<Option<Event>, EnvelopeError> {
        match self.payload.get("event") {
            None => Ok(None),
            Some(Value::String(name)) => name
                .parse()
                .map(Some)
                .map_err(|_| EnvelopeError::UnknownEvent(name.clone())),
            Some(other) => Err(EnvelopeError::UnknownEvent(other.to_string())),
        }
    }

    /// The event of a message received on an alias/broadcast subject naming `subject_event`:
    /// `payload.event` must agree with it when present.
    pub fn event_for_subject(&self, subject_event: Event) -> Result<Event, EnvelopeError> {
        match self.event()? {
            Some(event) if event != subject_event => Err(EnvelopeError::EventMismatch {
                payload: event.as_str().to_owned(),
                subject: subject_event.as_str().to_owned(),
            }),
            _ => Ok(subject_event),
        }
    }

    /// The MessagePack body (string-keyed maps, as msgpackr and Python's msgpack write).
    pub fn to_msgpack(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("a JSON-shaped envelope always encodes")
    }

    /// The JSON body.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a JSON-shaped envelope always encodes")
    }
}

/// Decodes one MessagePack value (a body or a frame) into JSON, refusing trailing bytes.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Value, EnvelopeError> {
    let mut cursor = bytes;
    let value = rmpv::decode::read_value(&mut cursor)
        .map_err(|e| EnvelopeError::MessagePack(e.to_string()))?;
    if !cursor.is_empty() {
        return Err(EnvelopeError::MessagePack(format!(
            "{} trailing bytes after the value",
            cursor.len()
        )));
    }
    msgpack_to_json(value)
}

/// Converts a MessagePack value to JSON: binary that is UTF-8 becomes a string
/// (producers such as msgpackr pack Node Buffers as `bin`), other binary an array of bytes.
fn msgpack_to_json(value: rmpv::Value) -> Result<Value, EnvelopeError> {
    use rmpv::Value as M;
    Ok(match value {
        M::Nil => Value::Null,
        M::Boolean(b) => Value::Bool(b),
        M::Integer(i) => {
            if let Some(u) = i.as_u64() {
                Value::from(u)
            } else {
                Value::from(i.as_i64().unwrap_or_default())
            }
        }
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        M::String(s) => match s.into_str() {
            Some(s) => Value::String(s),
            None => {
                return Err(EnvelopeError::MessagePack(
                    "string is not valid UTF-8".into(),
                ))
            }
        },
        M::Binary(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Value::String(s),
            Err(e) => Value::Array(e.into_bytes().into_iter().map(Value::from).collect()),
        },
        M::Array(items) => Value::Array(
            items
                .into_iter()
                .map(msgpack_to_json)
                .collect::<Result<_, _>>()?,
        ),
        M::Map(entries) => {
            let mut map = Map::with_capacity(entries.len());
            for (k, v) in entries {
                let key = match k {
                    M::String(s) => s.into_str().ok_or_else(|| {
                        EnvelopeError::MessagePack("map key is not valid UTF-8".into())
                    })?,
                    M::Integer(i) => i.to_string(),
                    other => {
                        return Err(EnvelopeError::Shape(format!(
                            "map keys must be strings, found {other}"
                        )))
                    }
                };
                map.insert(key, msgpack_to_json(v)?);
            }
            Value::Object(map)
        }
        M::Ext(kind, _) => {
            return Err(EnvelopeError::MessagePack(format!(
                "extension type {kind} is not supported (pack with msgpackr useRecords: false)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn msgpack_and_json_bodies_decode_to_the_same_envelope() {
        let env = Envelope::for_alias("abc", payload(json!({"event": "newMessage", "n": 1})));
        assert_eq!(Envelope::decode(&env.to_msgpack(), false).unwrap(), env);
        assert_eq!(Envelope::decode(&env.to_json(), true).unwrap(), env);
    }

    #[test]
    fn msgpack_binary_eml_becomes_a_string() {
        let raw = rmpv::Value::Map(vec![
            ("aliasId".into(), "abc".into()),
            (
                "payload".into(),
                rmpv::Value::Map(vec![
                    ("event".into(), "newMessage".into()),
                    (
                        "eml".into(),
                        rmpv::Value::Binary(b"Subject: hi\r\n".to_vec()),
                    ),
                ]),
            ),
        ]);
        let mut body = Vec::new();
        rmpv::encode::write_value(&mut body, &raw).unwrap();
        let env = Envelope::decode(&body, false).unwrap();
        assert_eq!(env.payload["eml"], json!("Subject: hi\r\n"));
    }

    #[test]
    fn garbage_and_wrong_shapes_are_errors() {
        assert!(Envelope::decode(b"\xc1\xc1", false).is_err());
        assert!(Envelope::decode(b"{", true).is_err());
        assert!(Envelope::decode(br#"{"aliasId":"a"}"#, true).is_err());
        assert!(Envelope::decode(br#"{"aliasId":"a.b","payload":{}}"#, true).is_err());
        let env = Envelope::decode(br#"{"aliasId":"a","payload":{"event":"nope"}}"#, true).unwrap();
        assert!(env.event().is_err());
        let env =
            Envelope::decode(br#"{"aliasId":"a","payload":{"event":"newMessage"}}"#, true).unwrap();
        assert!(env.event_for_subject(Event::FlagsUpdated).is_err());
        assert_eq!(
            env.event_for_subject(Event::NewMessage).unwrap(),
            Event::NewMessage
        );
    }
}
