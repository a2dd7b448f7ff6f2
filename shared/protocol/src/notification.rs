//! From one envelope to the notifications clients receive: enrichment (`event`,
//! `aliasId`, `timestamp`, `notificationId`, `seq`), UID-list splitting and resource
//! truncation.

use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::Event;

/// Longest UID list one notification carries; longer lists are split across notifications.
pub const MAX_UIDS_PER_NOTIFICATION: usize = 1_000;
/// UID lists that are split; `sourceUid`/`destinationUid` are cut together.
pub const UID_LIST_FIELDS: &[&str] = &["uids", "sourceUid", "destinationUid"];
/// Resource fields replaced by `{"truncated": true}` in an oversized notification.
pub const RESOURCE_FIELDS: &[&str] = &["eml", "ical", "content"];
/// How deep into the payload resources are looked for.
pub const TRUNCATE_DEPTH: usize = 4;

/// Namespace of the notification ids herald derives (UUID v5), so every node derives the same one.
const NOTIFICATION_NAMESPACE: Uuid = Uuid::from_u128(0x6865_7261_6c64_4e6f_7469_6669_6361_7469);

/// What herald knows about one received event, used to enrich it.
#[derive(Debug, Clone)]
pub struct Enrichment<'a> {
    /// The catalog event.
    pub event: Event,
    /// The alias it is for, if any.
    pub alias_id: Option<&'a str>,
    /// Stream sequence of the event (monotonic per key), if the bus has one.
    pub seq: Option<u64>,
    /// Id used when the producer did not set `notificationId`; see [`derive_notification_id`].
    pub fallback_id: String,
    /// Milliseconds since the epoch, used when the producer did not set `timestamp`.
    pub now_ms: u64,
}

/// A notification id that every node derives the same way for the same event:
/// from the producer's `Nats-Msg-Id`, else the stream sequence, else the subject and body.
pub fn derive_notification_id(
    subject: &str,
    msg_id: Option<&str>,
    seq: Option<u64>,
    body: &[u8],
) -> String {
    let name = match (msg_id, seq) {
        (Some(id), _) => format!("msg-id\0{id}").into_bytes(),
        (None, Some(seq)) => format!("seq\0{subject}\0{seq}").into_bytes(),
        (None, None) => [subject.as_bytes(), b"\0", body].concat(),
    };
    Uuid::new_v5(&NOTIFICATION_NAMESPACE, &name).to_string()
}

/// Builds the notifications for one event payload: split by UID lists, then enriched.
pub fn prepare(payload: Map<String, Value>, info: &Enrichment<'_>) -> Vec<Map<String, Value>> {
    let base_id = match payload.get("notificationId") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => info.fallback_id.clone(),
    };
    let parts = split_uid_lists(payload);
    let many = parts.len() > 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, mut part)| {
            let id = if many && i > 0 {
                Uuid::new_v5(
                    &NOTIFICATION_NAMESPACE,
                    format!("{base_id}\0{i}").as_bytes(),
                )
                .to_string()
            } else {
                base_id.clone()
            };
            part.insert("event".into(), Value::from(info.event.as_str()));
            if let Some(alias_id) = info.alias_id {
                part.entry("aliasId")
                    .or_insert_with(|| Value::from(alias_id));
            }
            part.entry("timestamp")
                .or_insert_with(|| Value::from(info.now_ms));
            part.insert("notificationId".into(), Value::from(id));
            if let Some(seq) = info.seq {
                part.insert("seq".into(), Value::from(seq));
            }
            part
        })
        .collect()
}

/// Splits a payload whose UID lists hold more than [`MAX_UIDS_PER_NOTIFICATION`]
/// entries into payloads of at most that many, cutting every list at the same indices.
pub fn split_uid_lists(payload: Map<String, Value>) -> Vec<Map<String, Value>> {
    let longest = UID_LIST_FIELDS
        .iter()
        .filter_map(|f| payload.get(*f).and_then(Value::as_array).map(Vec::len))
        .max()
        .unwrap_or(0);
    if longest <= MAX_UIDS_PER_NOTIFICATION {
        return vec![payload];
    }
    let chunks = longest.div_ceil(MAX_UIDS_PER_NOTIFICATION);
    (0..chunks)
        .map(|chunk| {
            let range = chunk * MAX_UIDS_PER_NOTIFICATION..(chunk + 1) * MAX_UIDS_PER_NOTIFICATION;
            let mut part = payload.clone();
            for field in UID_LIST_FIELDS {
                if let Some(Value::Array(list)) = payload.get(*field) {
                    let start = range.start.min(list.len());
                    let end = range.end.min(list.len());
                    part.insert((*field).into(), Value::Array(list[start..end].to_vec()));
                }
            }
            part
        })
        .collect()
}

/// Replaces every `eml`, `ical` and `content` string up to [`TRUNCATE_DEPTH`] levels
/// deep by `{"truncated": true}`; returns whether anything was replaced.
pub fn truncate_resources(payload: &mut Map<String, Value>) -> bool {
    fn walk(map: &mut Map<String, Value>, depth: usize) -> bool {
        let mut changed = false;
        for (key, value) in map.iter_mut() {
            if value.is_string() && RESOURCE_FIELDS.contains(&key.as_str()) {
                *value = serde_json::json!({ "truncated": true });
                changed = true;
            } else if depth < TRUNCATE_DEPTH {
                changed |= match value {
                    Value::Object(inner) => walk(inner, depth + 1),
                    Value::Array(items) => items
                        .iter_mut()
                        .filter_map(Value::as_object_mut)
                        .fold(false, |acc, inner| walk(inner, depth + 1) | acc),
                    _ => false,
                };
            }
        }
        changed
    }
    walk(payload, 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn info() -> Enrichment<'static> {
        Enrichment {
            event: Event::MessagesMoved,
            alias_id: Some("abc"),
            seq: Some(7),
            fallback_id: "fallback".into(),
            now_ms: 1_700_000_000_000,
        }
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn enrichment_adds_fields_and_keeps_the_producers() {
        let out = prepare(obj(json!({"mailbox": "INBOX", "timestamp": 5})), &info());
        assert_eq!(out.len(), 1);
        let n = &out[0];
        assert_eq!(n["event"], "messagesMoved");
        assert_eq!(n["aliasId"], "abc");
        assert_eq!(n["timestamp"], 5);
        assert_eq!(n["notificationId"], "fallback");
        assert_eq!(n["seq"], 7);
        assert_eq!(n["mailbox"], "INBOX");
        let out = prepare(obj(json!({"notificationId": "mine"})), &info());
        assert_eq!(out[0]["notificationId"], "mine");
        assert_eq!(out[0]["timestamp"], 1_700_000_000_000u64);
    }

    #[test]
    fn paired_uid_lists_are_cut_together_with_distinct_ids() {
        let src: Vec<u32> = (0..2500).collect();
        let dst: Vec<u32> = (10_000..12_500).collect();
        let out = prepare(
            obj(json!({"sourceUid": src, "destinationUid": dst})),
            &info(),
        );
        assert_eq!(out.len(), 3);
        let lens: Vec<usize> = out
            .iter()
            .map(|n| n["sourceUid"].as_array().unwrap().len())
            .collect();
        assert_eq!(lens, [1000, 1000, 500]);
        assert_eq!(out[2]["sourceUid"][0], 2000);
        assert_eq!(out[2]["destinationUid"][0], 12_000);
        let ids: std::collections::HashSet<_> =
            out.iter().map(|n| n["notificationId"].clone()).collect();
        assert_eq!(ids.len(), 3);
        let again = prepare(
            obj(json!({"sourceUid": (0..2500).collect::<Vec<_>>()})),
            &info(),
        );
        assert_eq!(
            again[1]["notificationId"], out[1]["notificationId"],
            "ids are deterministic"
        );
    }

    #[test]
    fn exactly_one_thousand_uids_is_not_split() {
        let out = prepare(obj(json!({"uids": (0..1000).collect::<Vec<_>>()})), &info());
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn truncation_reaches_four_levels_and_no_further() {
        let mut p = obj(json!({
            "message": {"eml": "x", "nested": {"ical": "y", "deeper": {"content": "z"}}},
            "items": [{"content": "v"}],
            "eml": {"not": "a string"}
        }));
        assert!(truncate_resources(&mut p));
        assert_eq!(p["message"]["eml"], json!({"truncated": true}));
        assert_eq!(p["message"]["nested"]["ical"], json!({"truncated": true}));
        assert_eq!(
            p["message"]["nested"]["deeper"]["content"],
            json!({"truncated": true})
        );
        assert_eq!(p["items"][0]["content"], json!({"truncated": true}));
        assert_eq!(p["eml"], json!({"not": "a string"}));
        let mut five = obj(json!({"a": {"b": {"c": {"d": {"eml": "deep"}}}}}));
        assert!(!truncate_resources(&mut five));
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = derive_notification_id("s", None, None, b"body");
        assert_eq!(a, derive_notification_id("s", None, None, b"body"));
        assert_ne!(a, derive_notification_id("s", None, None, b"other"));
        assert_ne!(
            derive_notification_id("s", None, Some(1), b""),
            derive_notification_id("s", None, Some(2), b"")
        );
        assert_eq!(
            derive_notification_id("s", Some("id"), Some(1), b"x"),
            derive_notification_id("t", Some("id"), Some(2), b"y")
        );
    }
}
