//! The probe event: a `newMessage` published on NATS with its send time and sequence
//! number in the payload, and what the load generator reads back from each session.
//!
//! herald passes payload fields through flat, so the notification a session receives is
//! `{"event":"newMessage","aliasId":…,"loadtestRun":…,"n":…,"sentAtMicros":…,"message":{…},
//! "timestamp":…,"notificationId":…}`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The event published (Forward Email's mail event).
pub const EVENT: &str = "newMessage";
/// Headers of the probe message; the body is padded after them.
const EML_HEADERS: &str =
    "From: loadtest@herald.local\r\nTo: alias@herald.local\r\nSubject: herald load test\r\n\r\n";

/// NATS subject of an alias event (SPEC §3).
pub fn subject(alias_id: &str) -> String {
    format!("herald.v1.alias.{alias_id}.{EVENT}")
}

/// Microseconds since the Unix epoch, the clock both ends of a measurement read (a
/// safe integer for JavaScript peers, unlike nanoseconds).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A raw RFC 5322 message of `bytes` bytes (at least its headers).
pub fn eml(bytes: usize) -> String {
    let mut eml = String::with_capacity(bytes.max(EML_HEADERS.len()));
    eml.push_str(EML_HEADERS);
    while eml.len() < bytes {
        eml.push(if eml.len() % 78 == 76 {
            '\r'
        } else if eml.len() % 78 == 77 {
            '\n'
        } else {
            'x'
        });
    }
    eml
}

/// The envelope herald reads from NATS: `{"aliasId", "payload"}`.
#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "aliasId")]
    alias_id: &'a str,
    payload: Payload<'a>,
}

/// The producer's payload.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload<'a> {
    event: &'static str,
    /// Which run published it (events of other runs are ignored).
    loadtest_run: &'a str,
    /// Sequence number of the event in the run.
    n: u64,
    /// When it was published, Unix microseconds.
    sent_at_micros: u64,
    message: MailMessage<'a>,
}

/// `message` of a `newMessage` event.
#[derive(Serialize)]
struct MailMessage<'a> {
    uid: u64,
    mailbox: &'static str,
    eml: &'a str,
}

/// The MessagePack body (string-keyed maps, as producers send) of probe `n`.
pub fn encode(alias_id: &str, run: &str, n: u64, sent_at_micros: u64, eml: &str) -> Vec<u8> {
    let envelope = Envelope {
        alias_id,
        payload: Payload {
            event: EVENT,
            loadtest_run: run,
            n,
            sent_at_micros,
            message: MailMessage {
                uid: n + 1,
                mailbox: "INBOX",
                eml,
            },
        },
    };
    rmp_serde::to_vec_named(&envelope).expect("a probe always encodes")
}

/// The fields of a received frame the generator needs; everything else is skipped.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Receipt {
    /// `newMessage`, `connected`, `ping`, …
    pub event: String,
    /// Set on probes.
    pub loadtest_run: Option<String>,
    /// Set on probes.
    pub n: Option<u64>,
    /// Set on probes.
    pub sent_at_micros: Option<u64>,
}

/// The probe in a raw envelope as published (what a raw-NATS session receives).
pub fn receipt_of_envelope(body: &[u8]) -> Option<Receipt> {
    #[derive(Deserialize)]
    struct Envelope {
        payload: Receipt,
    }
    rmp_serde::from_slice::<Envelope>(body)
        .ok()
        .map(|e| e.payload)
}

impl Receipt {
    /// Parses a JSON text frame; `None` when it is not JSON.
    pub fn parse(text: &str) -> Option<Receipt> {
        serde_json::from_str(text).ok()
    }

    /// `(n, sent_at_micros)` when this is a probe of `run`.
    pub fn probe_of(&self, run: &str) -> Option<(u64, u64)> {
        if self.event != EVENT || self.loadtest_run.as_deref() != Some(run) {
            return None;
        }
        Some((self.n?, self.sent_at_micros?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trips_through_herald_shape() {
        let body = encode("a0001", "run1", 7, 123, &eml(10));
        let value: serde_json::Value = rmp_serde::from_slice(&body).unwrap();
        assert_eq!(value["aliasId"], "a0001");
        assert_eq!(value["payload"]["event"], EVENT);
        // herald flattens the payload and adds fields.
        let mut notification = value["payload"].clone();
        notification["aliasId"] = "a0001".into();
        notification["seq"] = 3.into();
        let receipt = Receipt::parse(&notification.to_string()).unwrap();
        assert_eq!(receipt.probe_of("run1"), Some((7, 123)));
        assert_eq!(receipt.probe_of("other"), None);
    }

    #[test]
    fn eml_has_the_requested_size() {
        assert_eq!(eml(100 * 1024).len(), 100 * 1024);
        assert!(eml(0).starts_with("From:"));
    }
}
