//! The demo credentials of `config/dev.toml` (SPEC §2) and payloads for every event.

use herald_protocol::{Event, EventFamily};
use serde_json::{json, Value};

/// An alias users log in as.
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    /// The address (Basic username).
    pub address: &'static str,
    /// The password.
    pub password: &'static str,
    /// The alias id (subject token, `aliasId`).
    pub id: &'static str,
}

/// `demo@herald.local` / `demo`.
pub const DEMO: Alias = Alias {
    address: "demo@herald.local",
    password: "demo",
    id: "64b7f0c2a1b2c3d4e5f60718",
};

/// `other@herald.local` / `other`.
pub const OTHER: Alias = Alias {
    address: "other@herald.local",
    password: "other",
    id: "64b7f0c2a1b2c3d4e5f60719",
};

/// The API token valid for both demo aliases.
pub const API_TOKEN: &str = "herald-demo-token";

/// The bearer token of `POST /v1/publish`.
pub const PUBLISH_TOKEN: &str = "herald-dev-admin";

/// Fields herald adds to a producer's payload.
pub const ENRICHED_FIELDS: &[&str] = &["event", "aliasId", "timestamp", "notificationId", "seq"];

/// A raw RFC 5322 message with CRLF line endings and non-ASCII text (header and body),
/// which must arrive byte for byte.
pub const EML: &str = "From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.com>\r\n\
To: demo@herald.local\r\n\
Subject: =?UTF-8?B?R3LDvMOfZSDinJM=?=\r\n\
Message-ID: <e2e-1@herald.local>\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 8bit\r\n\
\r\n\
Grüße aus Köln — 日本語のテキスト, emoji 📬.\r\n\
Line two ends with CRLF.\r\n\
\r\n\
.\r\n";

/// A small iCalendar object.
pub const ICAL: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//herald//e2e//EN\r\n\
BEGIN:VEVENT\r\nUID:e2e-1@herald.local\r\nDTSTART:20250101T100000Z\r\n\
SUMMARY:Réunion d'équipe\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

/// A small vCard.
pub const VCARD: &str =
    "BEGIN:VCARD\r\nVERSION:4.0\r\nFN:Zoë Ångström\r\nEMAIL:zoe@example.com\r\nEND:VCARD\r\n";

/// A payload for `event` shaped like Forward Email's, carrying the family's resource
/// (`message.eml`, `ical`, `content`) and values of every JSON type; `n` makes it unique.
pub fn payload_for(event: Event, n: usize) -> Value {
    let mut payload = json!({
        "event": event.as_str(),
        "n": n,
        "mailbox": "INBOX/Ünïcødé",
        "nested": {"list": [1, "two", true, null, 2.5, {"deep": [-7]}], "empty": {}},
        "big": 9_007_199_254_740_993_u64,
    });
    let extra = match (event, event.family()) {
        (Event::NewMessage, _) => json!({
            "uid": 42,
            "message": {"id": "m-1", "subject": "Grüße ✓", "eml": EML, "flags": ["\\Seen"]},
        }),
        (Event::MessagesMoved | Event::MessagesCopied, _) => json!({
            "sourceMailbox": "INBOX", "destinationMailbox": "Archive",
            "sourceUid": [1, 2, 3], "destinationUid": [11, 12, 13],
        }),
        (Event::FlagsUpdated | Event::MessagesExpunged | Event::LabelsUpdated, _) => {
            json!({"uids": [5, 6, 7], "flags": ["\\Flagged"], "labels": ["work"]})
        }
        (_, EventFamily::Calendar) => json!({"calendarId": "cal-1", "ical": ICAL}),
        (_, EventFamily::Contacts) => json!({"addressBookId": "ab-1", "content": VCARD}),
        (_, EventFamily::Broadcast) => json!({"version": "1.2.3", "notes": "Änderungen"}),
        (_, EventFamily::Mail) => json!({"mailboxId": "mb-1", "path": "Projects/2025"}),
    };
    let map = payload.as_object_mut().expect("object");
    map.extend(extra.as_object().expect("object").clone());
    payload
}

/// Asserts that `received` carries every field of `sent` with the same value, and that
/// anything else it carries is one of the [`ENRICHED_FIELDS`].
pub fn assert_payload_intact(sent: &Value, received: &Value) {
    let sent = sent.as_object().expect("sent payload is an object");
    let received_map = received
        .as_object()
        .unwrap_or_else(|| panic!("received notification is not an object: {received}"));
    for (key, value) in sent {
        assert_eq!(
            received_map.get(key),
            Some(value),
            "field {key:?} changed in transit (event {})",
            sent["event"]
        );
    }
    for key in received_map.keys() {
        assert!(
            sent.contains_key(key) || ENRICHED_FIELDS.contains(&key.as_str()),
            "unexpected field {key:?} added to {}",
            sent["event"]
        );
    }
}
