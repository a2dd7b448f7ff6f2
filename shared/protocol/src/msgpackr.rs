//! The bytes msgpackr's default `Encoder` writes, for `/v1/ws?msgpackr=true`.
//!
//! Forward Email's clients decode with a default msgpackr `Decoder`, which turns a plain
//! MessagePack map into a JavaScript `Map` (so `notification.event` is `undefined`) and
//! only a msgpackr *record* into a plain object. msgpackr's record extension (type
//! `0x72`) is MessagePack with two additions: `d4 72 <id>` followed by the array of keys
//! defines record `<id>` (0x40..=0x7f) and starts an instance of it (the values follow),
//! and a lone byte `<id>` later in the same message starts another instance. Without
//! shared structures the default encoder forgets its records after every message, so
//! each frame is self-contained and a long-lived `Decoder` reads every frame alike.
//!
//! [`encode`] reproduces the default encoder byte for byte for JSON values (checked
//! against the real package by `tests/conformance/test/doc000_forwardemail.test.mjs`):
//! the value is first seen as JavaScript sees the JSON text frame (numbers are doubles,
//! array-index keys come first), then written with msgpackr's choices (fixints only
//! below 0x40 since 0x40..=0x7f are record ids, integers outside 32 bits as float64),
//! except integers beyond 2^53, which a double would round: those are written as
//! msgpackr writes a `BigInt`, so no payload changes in transit.
//! [`decode`] reads those frames, and plain MessagePack, back into JSON for herald's own
//! tools.

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Number, Value};

/// msgpackr's extension type for a record definition (`'r'`).
const RECORD_EXT: u8 = 0x72;
/// First record id; the default encoder owns ids 0x40..=0x7f.
const FIRST_RECORD: u8 = 0x40;
/// Largest integer a JavaScript number holds exactly (2^53 - 1).
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;
/// How many records the default encoder keeps in one message before reusing ids.
const MAX_OWN_RECORDS: usize = 64;

/// Encodes `value` exactly as `new Encoder().pack(JSON.parse(json))` does in msgpackr,
/// where `json` is `value`'s JSON text.
pub fn encode(value: &Value) -> Vec<u8> {
    let mut encoder = Encoder {
        out: Vec::with_capacity(256),
        records: HashMap::new(),
        order: VecDeque::new(),
        defined: 0,
    };
    encoder.value(value);
    encoder.out
}

/// Records of one message, as msgpackr's encoder tracks them.
struct Encoder<'a> {
    out: Vec<u8>,
    /// Key sequence → record id.
    records: HashMap<Vec<&'a str>, u8>,
    /// Key sequences in definition order: when ids run out the oldest is forgotten.
    order: VecDeque<Vec<&'a str>>,
    /// Records defined so far in this message.
    defined: usize,
}

impl<'a> Encoder<'a> {
    fn value(&mut self, value: &'a Value) {
        match value {
            Value::Null => self.out.push(0xc0),
            Value::Bool(b) => self.out.push(if *b { 0xc3 } else { 0xc2 }),
            Value::Number(n) => self.number(n),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.length(items.len(), 0x90, 0x0f, 0xdc, 0xdd);
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.record(map),
        }
    }

    /// A JavaScript number: JSON numbers are doubles there, whatever serde_json kept.
    /// Integers a double cannot hold exactly are written as msgpackr writes a `BigInt`
    /// (int64, else uint64) rather than rounded: herald never changes a payload.
    fn number(&mut self, n: &Number) {
        match (n.as_i64(), n.as_u64()) {
            (Some(i), _) if i.unsigned_abs() > MAX_SAFE_INTEGER => {
                self.out.push(0xd3);
                self.out.extend_from_slice(&i.to_be_bytes());
                return;
            }
            (None, Some(u)) => {
                self.out.push(0xcf);
                self.out.extend_from_slice(&u.to_be_bytes());
                return;
            }
            _ => {}
        }
        let f = n.as_f64().unwrap_or(f64::NAN);
        let integral = f.fract() == 0.0;
        if integral && (0.0..=f64::from(u32::MAX)).contains(&f) {
            let u = f as u32;
            if u < 0x40 {
                self.out.push(u as u8);
            } else if u < 0x100 {
                self.out.extend_from_slice(&[0xcc, u as u8]);
            } else if u < 0x1_0000 {
                self.out.push(0xcd);
                self.out.extend_from_slice(&(u as u16).to_be_bytes());
            } else {
                self.out.push(0xce);
                self.out.extend_from_slice(&u.to_be_bytes());
            }
        } else if integral && (f64::from(i32::MIN)..0.0).contains(&f) {
            let i = f as i32;
            if i >= -0x20 {
                self.out.push(i as u8);
            } else if i >= -0x80 {
                self.out.extend_from_slice(&[0xd0, i as u8]);
            } else if i >= -0x8000 {
                self.out.push(0xd1);
                self.out.extend_from_slice(&(i as i16).to_be_bytes());
            } else {
                self.out.push(0xd2);
                self.out.extend_from_slice(&i.to_be_bytes());
            }
        } else {
            self.out.push(0xcb);
            self.out.extend_from_slice(&f.to_be_bytes());
        }
    }

    fn string(&mut self, s: &str) {
        let len = s.len();
        if len < 0x20 {
            self.out.push(0xa0 | len as u8);
        } else if len < 0x100 {
            self.out.extend_from_slice(&[0xd9, len as u8]);
        } else if len < 0x1_0000 {
            self.out.push(0xda);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(0xdb);
            self.out.extend_from_slice(&(len as u32).to_be_bytes());
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    /// A length header: the fix form below `fix_max + 1`, else 16 or 32 bits.
    fn length(&mut self, len: usize, fix: u8, fix_max: usize, m16: u8, m32: u8) {
        if len <= fix_max {
            self.out.push(fix | len as u8);
        } else if len < 0x1_0000 {
            self.out.push(m16);
            self.out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            self.out.push(m32);
            self.out.extend_from_slice(&(len as u32).to_be_bytes());
        }
    }

    /// An object as a record instance, defining the record the first time its key
    /// sequence appears (again after its id was reused).
    fn record(&mut self, map: &'a Map<String, Value>) {
        let entries = js_order(map);
        let keys: Vec<&'a str> = entries.iter().map(|(k, _)| *k).collect();
        if let Some(&id) = self.records.get(&keys) {
            self.out.push(id);
        } else {
            let id = FIRST_RECORD + (self.defined % MAX_OWN_RECORDS) as u8;
            if self.order.len() == MAX_OWN_RECORDS {
                if let Some(oldest) = self.order.pop_front() {
                    self.records.remove(&oldest);
                }
            }
            self.defined += 1;
            self.records.insert(keys.clone(), id);
            self.order.push_back(keys.clone());
            self.out.extend_from_slice(&[0xd4, RECORD_EXT, id]);
            self.length(keys.len(), 0x90, 0x0f, 0xdc, 0xdd);
            for key in &keys {
                self.string(key);
            }
        }
        for (_, value) in entries {
            self.value(value);
        }
    }
}

/// An object's entries in JavaScript property order: array-index keys ascending, then
/// the others in the order the JSON text has them.
fn js_order(map: &Map<String, Value>) -> Vec<(&str, &Value)> {
    let index = |key: &str| -> Option<u32> {
        let canonical =
            key == "0" || (!key.starts_with('0') && key.bytes().all(|b| b.is_ascii_digit()));
        key.parse::<u32>()
            .ok()
            .filter(|&i| canonical && i != u32::MAX)
    };
    let mut indexed: Vec<(u32, &str, &Value)> = Vec::new();
    let mut named = Vec::with_capacity(map.len());
    for (key, value) in map {
        match index(key) {
            Some(i) => indexed.push((i, key, value)),
            None => named.push((key.as_str(), value)),
        }
    }
    indexed.sort_by_key(|(i, _, _)| *i);
    indexed
        .into_iter()
        .map(|(_, k, v)| (k, v))
        .chain(named)
        .collect()
}

/// A frame that is not msgpackr or MessagePack this module reads.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes ended inside a value.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A marker JSON has no value for (binary, extensions other than records).
    #[error("unsupported MessagePack marker 0x{0:02x} at byte {1}")]
    Unsupported(u8, usize),
    /// A record definition whose keys are not an array of strings.
    #[error("record definition at byte {0} does not list string keys")]
    BadRecord(usize),
    /// A map key that is not a string.
    #[error("map key at byte {0} is not a string")]
    BadKey(usize),
    /// Bytes left after the value.
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

/// Decodes one msgpackr frame (records or plain MessagePack maps) into JSON.
pub fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut decoder = Decoder {
        bytes,
        at: 0,
        records: vec![None; MAX_OWN_RECORDS],
    };
    let value = decoder.value()?;
    match bytes.len() - decoder.at {
        0 => Ok(value),
        n => Err(DecodeError::Trailing(n)),
    }
}

/// A cursor over one frame and the records it defined so far.
struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
    records: Vec<Option<Vec<String>>>,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or(DecodeError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn value(&mut self) -> Result<Value, DecodeError> {
        let start = self.at;
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x3f => Value::from(marker),
            0x40..=0x7f => match self.records[usize::from(marker - FIRST_RECORD)].clone() {
                Some(keys) => self.instance(&keys)?,
                None => Value::from(marker),
            },
            0x80..=0x8f => self.map(usize::from(marker & 0x0f))?,
            0x90..=0x9f => self.array(usize::from(marker & 0x0f))?,
            0xa0..=0xbf => self.string(usize::from(marker & 0x1f))?,
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xca => Value::from(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Value::from(f64::from_bits(self.be(8)?)),
            0xcc => Value::from(self.be(1)?),
            0xcd => Value::from(self.be(2)?),
            0xce => Value::from(self.be(4)?),
            0xcf => Value::from(self.be(8)?),
            0xd0 => Value::from(self.be(1)? as u8 as i8),
            0xd1 => Value::from(self.be(2)? as u16 as i16),
            0xd2 => Value::from(self.be(4)? as u32 as i32),
            0xd3 => Value::from(self.be(8)? as i64),
            0xd4 if self.bytes.get(self.at) == Some(&RECORD_EXT) => {
                self.at += 1;
                let id = self.take(1)?[0];
                let keys = match self.value()? {
                    Value::Array(keys) => keys
                        .into_iter()
                        .map(|k| match k {
                            Value::String(s) => Ok(s),
                            _ => Err(DecodeError::BadRecord(start)),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => return Err(DecodeError::BadRecord(start)),
                };
                let slot = usize::from(id & 0x3f);
                self.records[slot] = Some(keys.clone());
                self.instance(&keys)?
            }
            0xd9 => {
                let n = self.be(1)? as usize;
                self.string(n)?
            }
            0xda => {
                let n = self.be(2)? as usize;
                self.string(n)?
            }
            0xdb => {
                let n = self.be(4)? as usize;
                self.string(n)?
            }
            0xdc => {
                let n = self.be(2)? as usize;
                self.array(n)?
            }
            0xdd => {
                let n = self.be(4)? as usize;
                self.array(n)?
            }
            0xde => {
                let n = self.be(2)? as usize;
                self.map(n)?
            }
            0xdf => {
                let n = self.be(4)? as usize;
                self.map(n)?
            }
            0xe0..=0xff => Value::from(marker as i8),
            other => return Err(DecodeError::Unsupported(other, start)),
        })
    }

    fn string(&mut self, n: usize) -> Result<Value, DecodeError> {
        let start = self.at;
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(|s| Value::String(s.to_owned()))
            .map_err(|_| DecodeError::Unsupported(0xa0, start))
    }

    fn array(&mut self, n: usize) -> Result<Value, DecodeError> {
        // Each element takes at least a byte: a bogus length fails at the end, not in
        // the allocator.
        let mut items = Vec::with_capacity(n.min(self.bytes.len() - self.at));
        for _ in 0..n {
            items.push(self.value()?);
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, n: usize) -> Result<Value, DecodeError> {
        let mut map = Map::new();
        for _ in 0..n {
            let at = self.at;
            let Value::String(key) = self.value()? else {
                return Err(DecodeError::BadKey(at));
            };
            let value = self.value()?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    fn instance(&mut self, keys: &[String]) -> Result<Value, DecodeError> {
        let mut map = Map::new();
        for key in keys {
            let value = self.value()?;
            map.insert(key.clone(), value);
        }
        Ok(Value::Object(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Bytes `require("msgpackr").pack(value)` (msgpackr 2.1.3, default options) returns.
    fn golden(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_msgpackr_default_encoder() {
        for (value, hex) in GOLDEN.iter() {
            let value: Value = serde_json::from_str(value).unwrap();
            assert_eq!(encode(&value), golden(hex), "{value}");
            let back = decode(&golden(hex)).unwrap();
            assert_eq!(encode(&back), golden(hex), "decode then encode: {back}");
        }
    }

    #[test]
    fn decodes_plain_maps_too() {
        let plain = rmp_serde::to_vec_named(&json!({"event": "ping", "n": 70})).unwrap();
        assert_eq!(decode(&plain).unwrap(), json!({"event": "ping", "n": 70}));
        assert!(matches!(
            decode(&[0x92, 0x01]),
            Err(DecodeError::Truncated(_))
        ));
        assert!(matches!(
            decode(&[0x01, 0x02]),
            Err(DecodeError::Trailing(1))
        ));
    }

    /// JSON text → hex of msgpackr's `pack(JSON.parse(text))`, generated by
    /// `node -e` against the package in tests/conformance/node_modules.
    const GOLDEN: &[(&str, &str)] = &[
    (
        r#"{"event":"ping"}"#,
        "d4724091a56576656e74a470696e67",
    ),
    (
        r#"{"aliasId":"64b7f0c2a1b2c3d4e5f60718","event":"connected"}"#,
        "d4724092a7616c6961734964a56576656e74b8363462376630633261316232633364346535663630373138a9636f6e6e6563746564",
    ),
    (
        r#"{"event":"newMessage","mailbox":"67abcdef1234567890abcdef","message":{"eml":"From: sender@example.com\r\nTo: recipient@example.com\r\n...","id":"67abcdef1234567890abcdef","size":1234,"subject":"Hello World","uid":42},"seq":7,"timestamp":1739347200000}"#,
        "d4724095a56576656e74a76d61696c626f78a76d657373616765a3736571a974696d657374616d70aa6e65774d657373616765b8363761626364656631323334353637383930616263646566d4724195a3656d6ca26964a473697a65a77375626a656374a3756964d93846726f6d3a2073656e646572406578616d706c652e636f6d0d0a546f3a20726563697069656e74406578616d706c652e636f6d0d0a2e2e2eb8363761626364656631323334353637383930616263646566cd04d2ab48656c6c6f20576f726c642a07cb42794f92c0800000",
    ),
    (
        r#"{"a":0,"b":63,"c":64,"d":255,"e":256,"f":65536,"g":-1,"h":-33,"i":-200,"j":-40000,"k":1.5,"l":4294967296,"m":-2147483649,"n":3.0,"o":-0.0,"p":9007199254740991,"q":4294967295}"#,
        "d47240dc0011a161a162a163a164a165a166a167a168a169a16aa16ba16ca16da16ea16fa170a171003fcc40ccffcd0100ce00010000ffd0dfd1ff38d2ffff63c0cb3ff8000000000000cb41f0000000000000cbc1e00000002000000300cb433fffffffffffffceffffffff",
    ),
    // Beyond 2^53 JSON.parse would round; msgpackr's bytes for the same values as BigInts.
    (
        r#"{"big":9007199254740993,"max":18446744073709551615,"neg":-9007199254740993}"#,
        "d4724093a3626967a36d6178a36e6567d30020000000000001cfffffffffffffffffd3ffdfffffffffffff",
    ),
    (
        r#"{"list":[{"a":1,"b":2},{"a":3,"b":{"a":5,"b":6}}],"x":{},"y":[],"z":[null,true,false]}"#,
        "d4724094a46c697374a178a179a17a92d4724192a161a16201024103410506d47242909093c0c3c2",
    ),
    (
        r#"{"10":2,"2":3,"a":{"01":1,"1":2,"4294967295":3,"4294967294":4},"b":1}"#,
        "d4724094a132a23130a161a1620302d4724194a131aa34323934393637323934a23031aa343239343936373239350204010301",
    ),
    (
        r#"{"arr16":[1,1,1,1,1,1,1,1,1,1,1,1,1,1,1,1],"s255":"yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy","s256":"zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz","s31":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","s32":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx","u":"éééééééééééééééééééé"}"#,
        "d4724096a56172723136a473323535a473323536a3733331a3733332a175dc001001010101010101010101010101010101d9ff797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979797979da01007a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7a7abf78787878787878787878787878787878787878787878787878787878787878d9207878787878787878787878787878787878787878787878787878787878787878d928c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9",
    ),
    (
        r#"[{"k0":0},{"k1":0},{"k2":0},{"k3":0},{"k4":0},{"k5":0},{"k6":0},{"k7":0},{"k8":0},{"k9":0},{"k10":0},{"k11":0},{"k12":0},{"k13":0},{"k14":0},{"k15":0},{"k16":0},{"k17":0},{"k18":0},{"k19":0},{"k20":0},{"k21":0},{"k22":0},{"k23":0},{"k24":0},{"k25":0},{"k26":0},{"k27":0},{"k28":0},{"k29":0},{"k30":0},{"k31":0},{"k32":0},{"k33":0},{"k34":0},{"k35":0},{"k36":0},{"k37":0},{"k38":0},{"k39":0},{"k40":0},{"k41":0},{"k42":0},{"k43":0},{"k44":0},{"k45":0},{"k46":0},{"k47":0},{"k48":0},{"k49":0},{"k50":0},{"k51":0},{"k52":0},{"k53":0},{"k54":0},{"k55":0},{"k56":0},{"k57":0},{"k58":0},{"k59":0},{"k60":0},{"k61":0},{"k62":0},{"k63":0},{"k64":0},{"k65":0},{"k66":0},{"k67":0},{"k68":0},{"k69":0},{"k0":1},{"k69":2}]"#,
        "dc0048d4724091a26b3000d4724191a26b3100d4724291a26b3200d4724391a26b3300d4724491a26b3400d4724591a26b3500d4724691a26b3600d4724791a26b3700d4724891a26b3800d4724991a26b3900d4724a91a36b313000d4724b91a36b313100d4724c91a36b313200d4724d91a36b313300d4724e91a36b313400d4724f91a36b313500d4725091a36b313600d4725191a36b313700d4725291a36b313800d4725391a36b313900d4725491a36b323000d4725591a36b323100d4725691a36b323200d4725791a36b323300d4725891a36b323400d4725991a36b323500d4725a91a36b323600d4725b91a36b323700d4725c91a36b323800d4725d91a36b323900d4725e91a36b333000d4725f91a36b333100d4726091a36b333200d4726191a36b333300d4726291a36b333400d4726391a36b333500d4726491a36b333600d4726591a36b333700d4726691a36b333800d4726791a36b333900d4726891a36b343000d4726991a36b343100d4726a91a36b343200d4726b91a36b343300d4726c91a36b343400d4726d91a36b343500d4726e91a36b343600d4726f91a36b343700d4727091a36b343800d4727191a36b343900d4727291a36b353000d4727391a36b353100d4727491a36b353200d4727591a36b353300d4727691a36b353400d4727791a36b353500d4727891a36b353600d4727991a36b353700d4727a91a36b353800d4727b91a36b353900d4727c91a36b363000d4727d91a36b363100d4727e91a36b363200d4727f91a36b363300d4724091a36b363400d4724191a36b363500d4724291a36b363600d4724391a36b363700d4724491a36b363800d4724591a36b363900d4724691a26b30014502",
    ),
];
}
