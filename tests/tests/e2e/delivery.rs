//! What a `/v1/ws` client receives: the catalog, intact payloads, enrichment, alias
//! isolation, delivery across nodes, UID-list splitting and resource truncation.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use herald_protocol::Event;
use herald_tests::fixtures::{assert_payload_intact, payload_for, DEMO, EML, ICAL, OTHER};
use herald_tests::{Connect, NatsServer, Node, NodeConfig, Publisher, WsClient};
use serde_json::{json, Value};

use crate::{is_uuid, nats_setup, now_ms};

/// Reads `count` events from `client` in its format, keyed by the payload's `n`.
async fn collect_by_n(client: &mut WsClient, count: usize) -> BTreeMap<u64, Value> {
    let mut got = BTreeMap::new();
    for _ in 0..count {
        let event = client.next_in_format().await;
        let n = event["n"]
            .as_u64()
            .unwrap_or_else(|| panic!("event without `n`: {event}"));
        assert!(
            got.insert(n, event).is_none(),
            "event n={n} delivered twice"
        );
    }
    got
}

#[tokio::test]
async fn every_catalog_event_arrives_intact_in_json_and_msgpack() {
    let s = nats_setup(|c| c).await;
    let mut json_client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    let mut msgpack_client = Connect::v1(&s.node).alias(&DEMO).msgpack().connect().await;
    let mut plain_client = Connect::v1(&s.node)
        .alias(&DEMO)
        .plain_msgpack()
        .connect()
        .await;
    assert_eq!(json_client.hello["aliasId"], DEMO.id);
    assert_eq!(msgpack_client.hello["aliasId"], DEMO.id);
    assert_eq!(plain_client.hello["aliasId"], DEMO.id);
    let clients = &mut [&mut json_client, &mut msgpack_client, &mut plain_client];
    s.publisher.sync_alias(DEMO.id, clients).await;
    s.publisher.sync_broadcast(clients).await;

    let sent: Vec<Value> = Event::ALL
        .iter()
        .enumerate()
        .map(|(n, event)| payload_for(*event, n))
        .collect();
    for (event, payload) in Event::ALL.iter().zip(&sent) {
        if event.is_broadcast() {
            s.publisher.broadcast(payload).await;
        } else {
            s.publisher.alias_event(DEMO.id, payload).await;
        }
    }

    for client in [&mut json_client, &mut msgpack_client, &mut plain_client] {
        let got = collect_by_n(client, sent.len()).await;
        for (n, payload) in sent.iter().enumerate() {
            let received = &got[&(n as u64)];
            assert_payload_intact(payload, received);
            assert_eq!(received["event"], payload["event"]);
            if payload["event"] != "newRelease" {
                assert_eq!(received["aliasId"], DEMO.id);
            }
        }
        let new_message = &got[&0];
        assert_eq!(new_message["event"], "newMessage");
        assert_eq!(
            new_message["message"]["eml"].as_str().map(str::as_bytes),
            Some(EML.as_bytes()),
            "the raw RFC 5322 message must arrive byte for byte"
        );
        client.expect_no_event(Duration::from_millis(300)).await;
    }
}

/// The raw bytes of the next notification (keepalive pings skipped).
async fn next_binary(client: &mut WsClient) -> Vec<u8> {
    match client.next_data_frame(herald_tests::PROMPT).await {
        Some(herald_tests::Frame::Binary(bytes)) => bytes.to_vec(),
        other => panic!("expected a binary frame, got {other:?}"),
    }
}

#[tokio::test]
async fn msgpackr_sends_records_and_msgpack_sends_plain_maps() {
    let s = nats_setup(|c| c).await;
    let mut records = Connect::v1(&s.node).alias(&DEMO).msgpack().connect().await;
    let mut plain = Connect::v1(&s.node)
        .alias(&DEMO)
        .plain_msgpack()
        .connect()
        .await;
    s.publisher
        .sync_alias(DEMO.id, &mut [&mut records, &mut plain])
        .await;
    let payload = json!({"event": "newMessage", "mailbox": "INBOX", "message": {"uid": 42}});
    s.publisher.alias_event(DEMO.id, &payload).await;
    let record = next_binary(&mut records).await;
    // `d4 72 40`: msgpackr's definition of record 0x40, which its default Decoder turns
    // into a plain object (a plain map would become a JavaScript Map).
    assert_eq!(&record[..3], &[0xd4, 0x72, 0x40], "{record:02x?}");
    let map = next_binary(&mut plain).await;
    assert!(
        (0x80..=0x8f).contains(&map[0]) || map[0] == 0xde,
        "?msgpack=true: a plain MessagePack map, got {map:02x?}"
    );
    let from_records = herald_protocol::msgpackr::decode(&record).unwrap();
    let from_map: Value = rmp_serde::from_slice(&map).unwrap();
    assert_eq!(
        from_records, from_map,
        "same notification in both encodings"
    );
    assert_eq!(from_map["message"]["uid"], 42);

    let both = Connect::v1(&s.node)
        .alias(&DEMO)
        .msgpack()
        .plain_msgpack()
        .refused()
        .await;
    assert_eq!(both.status, 400, "{both:?}");
    assert!(both.body.contains("mutually exclusive"), "{both:?}");
}

#[tokio::test]
async fn events_for_another_alias_never_reach_this_alias() {
    let s = nats_setup(|c| c).await;
    let mut demo = Connect::v1(&s.node).alias(&DEMO).connect().await;
    let mut other = Connect::v1(&s.node).alias(&OTHER).connect().await;
    assert_eq!(other.hello["aliasId"], OTHER.id);
    s.publisher.sync_alias(DEMO.id, &mut [&mut demo]).await;
    s.publisher.sync_alias(OTHER.id, &mut [&mut other]).await;

    let for_other = json!({"event": "newMessage", "n": 1, "secret": "for other only"});
    let for_demo = json!({"event": "newMessage", "n": 2});
    s.publisher.alias_event(OTHER.id, &for_other).await;
    s.publisher.alias_event(DEMO.id, &for_demo).await;

    let got = other.next_json().await;
    assert_eq!(got["n"], 1);
    assert_eq!(got["aliasId"], OTHER.id);
    let got = demo.next_json().await;
    assert_eq!(got["n"], 2, "demo's first event must be its own, got {got}");
    demo.expect_no_event(Duration::from_millis(300)).await;
    other.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn new_message_published_to_nats_reaches_clients_on_both_nodes_with_one_notification_id() {
    let nats = NatsServer::start();
    let node_a = Node::start(NodeConfig::nats(&[nats.url()])).await;
    let node_b = Node::start(NodeConfig::nats(&[nats.url()])).await;
    let publisher = Publisher::nats(&nats.url()).await;
    let mut on_a = Connect::v1(&node_a).alias(&DEMO).connect().await;
    let mut on_b = Connect::v1(&node_b).alias(&DEMO).msgpack().connect().await;
    publisher
        .sync_alias(DEMO.id, &mut [&mut on_a, &mut on_b])
        .await;

    let payload = payload_for(Event::NewMessage, 7);
    publisher.alias_event(DEMO.id, &payload).await;

    let got_a = on_a.next_json().await;
    let got_b = on_b.next_msgpack().await;
    assert_payload_intact(&payload, &got_a);
    assert_payload_intact(&payload, &got_b);
    let id = got_a["notificationId"].as_str().expect("notificationId");
    assert!(!id.is_empty());
    assert_eq!(
        got_b["notificationId"], id,
        "one event must carry the same notificationId on every node"
    );
}

#[tokio::test]
async fn http_publish_on_one_node_reaches_a_client_on_the_other_node() {
    let nats = NatsServer::start();
    let node_a = Node::start(NodeConfig::nats(&[nats.url()])).await;
    let node_b = Node::start(NodeConfig::nats(&[nats.url()])).await;
    let via_a = Publisher::http(&node_a);
    let mut on_b = Connect::v1(&node_b).alias(&DEMO).connect().await;
    via_a.sync_alias(DEMO.id, &mut [&mut on_b]).await;

    let payload = payload_for(Event::CalendarEventCreated, 3);
    via_a.alias_event(DEMO.id, &payload).await;
    let got = on_b.next_json().await;
    assert_payload_intact(&payload, &got);
    assert_eq!(got["ical"], ICAL);
}

#[tokio::test]
async fn herald_adds_event_timestamp_and_notification_id_and_keeps_the_producers() {
    let s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    let before = now_ms();
    s.publisher
        .alias_event(DEMO.id, &json!({"event": "flagsUpdated", "uids": [1]}))
        .await;
    let bare = client.next_json().await;
    let after = now_ms();
    assert_eq!(bare["event"], "flagsUpdated");
    assert_eq!(bare["aliasId"], DEMO.id);
    let id = bare["notificationId"]
        .as_str()
        .expect("a string notificationId");
    assert!(
        is_uuid(id),
        "generated notificationId must be a UUID, got {id:?}"
    );
    let timestamp = bare["timestamp"].as_u64().expect("timestamp in ms");
    assert!(
        (before..=after).contains(&timestamp),
        "timestamp {timestamp} must be the receive time, between {before} and {after}"
    );

    let producer_set = json!({
        "event": "flagsUpdated", "uids": [2],
        "notificationId": "producer-chose-this-id", "timestamp": 1_234_567_890_123_u64,
    });
    s.publisher.alias_event(DEMO.id, &producer_set).await;
    let kept = client.next_json().await;
    assert_eq!(kept["notificationId"], "producer-chose-this-id");
    assert_eq!(kept["timestamp"], 1_234_567_890_123_u64);
}

#[tokio::test]
async fn identical_events_get_distinct_notification_ids() {
    let s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    // A producer may well publish the same body twice (a flag set, cleared, set again):
    // without a producer notificationId or Nats-Msg-Id these are distinct events.
    let body = json!({"event": "flagsUpdated", "uids": [1], "flags": ["\\Seen"]});
    s.publisher.alias_event(DEMO.id, &body).await;
    s.publisher.alias_event(DEMO.id, &body).await;
    let first = client.next_json().await;
    let second = client.next_json().await;
    assert_ne!(
        first["notificationId"], second["notificationId"],
        "notificationId is unique per event (SPEC §3), even for identical bodies"
    );
}

#[tokio::test]
async fn uid_list_of_2500_is_split_into_three_events() {
    let s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    let uids: Vec<u64> = (1..=2500).collect();
    let destination: Vec<u64> = uids.iter().map(|u| u + 10_000).collect();
    s.publisher
        .alias_event(
            DEMO.id,
            &json!({"event": "flagsUpdated", "mailbox": "INBOX", "uids": uids, "flags": ["\\Seen"]}),
        )
        .await;
    s.publisher
        .alias_event(
            DEMO.id,
            &json!({"event": "messagesMoved", "sourceMailbox": "INBOX", "destinationMailbox": "Archive",
                    "sourceUid": uids, "destinationUid": destination}),
        )
        .await;

    let mut ids = HashSet::new();
    let mut joined = Vec::new();
    for expected_len in [1000, 1000, 500] {
        let part = client.next_json().await;
        assert_eq!(part["event"], "flagsUpdated");
        assert_eq!(
            part["mailbox"], "INBOX",
            "other fields are kept in every part"
        );
        assert_eq!(part["flags"], json!(["\\Seen"]));
        let list = part["uids"].as_array().expect("uids list");
        assert_eq!(list.len(), expected_len);
        joined.extend(list.iter().map(|v| v.as_u64().expect("uid")));
        assert!(
            ids.insert(part["notificationId"].to_string()),
            "parts need their own ids"
        );
    }
    assert_eq!(
        joined, uids,
        "the parts together are the original list, in order"
    );

    let mut joined = Vec::new();
    for expected_len in [1000, 1000, 500] {
        let part = client.next_json().await;
        assert_eq!(part["event"], "messagesMoved");
        let source = part["sourceUid"].as_array().expect("sourceUid");
        let dest = part["destinationUid"].as_array().expect("destinationUid");
        assert_eq!(source.len(), expected_len);
        assert_eq!(dest.len(), expected_len, "paired lists are cut together");
        for (s, d) in source.iter().zip(dest) {
            assert_eq!(
                s.as_u64().unwrap() + 10_000,
                d.as_u64().unwrap(),
                "pairs stay aligned"
            );
        }
        joined.extend(source.iter().map(|v| v.as_u64().expect("uid")));
        assert!(
            ids.insert(part["notificationId"].to_string()),
            "parts need their own ids"
        );
    }
    assert_eq!(joined, uids);
    client.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn oversize_resources_arrive_as_truncated_markers() {
    let s = nats_setup(|c| c.max_notification_bytes(4096)).await;
    let mut json_client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    let mut msgpack_client = Connect::v1(&s.node).alias(&DEMO).msgpack().connect().await;
    s.publisher
        .sync_alias(DEMO.id, &mut [&mut json_client, &mut msgpack_client])
        .await;

    let big_eml = EML.repeat(60);
    assert!(big_eml.len() > 8192);
    let big_ical = ICAL.repeat(60);
    s.publisher
        .alias_event(
            DEMO.id,
            &json!({"event": "newMessage", "n": 1, "message": {"subject": "big", "eml": big_eml}}),
        )
        .await;
    s.publisher
        .alias_event(
            DEMO.id,
            &json!({"event": "calendarEventCreated", "n": 2, "calendarId": "c", "ical": big_ical}),
        )
        .await;
    let small = json!({"event": "newMessage", "n": 3, "message": {"subject": "small", "eml": EML}});
    s.publisher.alias_event(DEMO.id, &small).await;

    for client in [&mut json_client, &mut msgpack_client] {
        let got = client.next_in_format().await;
        assert_eq!(got["message"]["eml"], json!({"truncated": true}));
        assert_eq!(
            got["message"]["subject"], "big",
            "only the resource is replaced"
        );
        let got = client.next_in_format().await;
        assert_eq!(got["ical"], json!({"truncated": true}));
        assert_eq!(got["calendarId"], "c");
        let got = client.next_in_format().await;
        assert_payload_intact(&small, &got);
    }
}
