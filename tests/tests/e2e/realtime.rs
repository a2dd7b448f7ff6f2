//! `/ws`, the generic realtime protocol (SPEC §4.3): auth transports, every client and
//! server message type, every error code, and the cluster-wide behaviours (Ack counts,
//! direct messages and presence across two nodes sharing one NATS JetStream server).

use std::time::Duration;

use futures_util::StreamExt;
use herald_tests::realtime::{configure, connect_to, now_secs, token, RtClient};
use herald_tests::{subscribe_live, NatsServer, Node, NodeConfig};
use serde_json::{json, Value};
use sha2::Digest;

/// A memory-bus node accepting `/ws` JWTs, with `extra` settings.
async fn memory_node(extra: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    Node::start(extra(configure(NodeConfig::memory()))).await
}

/// One NATS JetStream server and two nodes on it.
struct Cluster {
    a: Node,
    b: Node,
    nats: NatsServer,
}

async fn cluster(extra: impl Fn(NodeConfig) -> NodeConfig) -> Cluster {
    let nats = NatsServer::start();
    let config =
        || extra(configure(NodeConfig::nats(&[nats.url()])).set("realtime.ack_wait", "1s"));
    let a = Node::start(config()).await;
    let b = Node::start(config()).await;
    Cluster { a, b, nats }
}

/// Publishes a JSON envelope `{payload}` to `subject` straight to NATS (a backend).
async fn backend_publish(nats: &NatsServer, subject: &str, payload: Value) {
    let client = async_nats::connect(nats.url())
        .await
        .expect("NATS connects");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Content-Type", "application/json");
    async_nats::jetstream::new(client)
        .publish_with_headers(
            subject.to_owned(),
            headers,
            json!({"payload": payload}).to_string().into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
}

#[tokio::test]
async fn ws_accepts_a_jwt_in_the_query_a_bearer_header_or_a_subprotocol_and_refuses_bad_ones() {
    let node = memory_node(|c| c).await;
    let jwt = token("alice", json!({}));

    let by_query = RtClient::open(connect_to(&node).query("token", &jwt)).await;
    let details = &by_query.welcome["data"]["details"];
    assert_eq!(details["protocol_version"], "1.0");
    assert_eq!(
        details["features"],
        json!(["broadcast", "direct_message", "presence", "history"])
    );
    let server_time = details["server_time"].as_u64().expect("server_time");
    assert!(
        server_time.abs_diff(now_secs()) < 60,
        "server_time is in seconds, as document 003 shows it: {details}"
    );
    assert!(!by_query.connection_id().is_empty());

    let by_header =
        RtClient::open(connect_to(&node).header("authorization", &format!("Bearer {jwt}"))).await;
    assert_ne!(by_header.connection_id(), by_query.connection_id());

    let protocol = format!("access_token.{jwt}");
    let by_subprotocol =
        RtClient::open(connect_to(&node).header("sec-websocket-protocol", &protocol)).await;
    assert_eq!(
        by_subprotocol.ws.response_headers["sec-websocket-protocol"],
        protocol.as_str(),
        "the server echoes the access_token subprotocol"
    );

    let bad = RtClient::refused(connect_to(&node).query("token", "not-a-jwt")).await;
    assert_eq!(bad.status, 401, "{bad:?}");
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": herald_tests::realtime::now_secs() + 60}),
        &jsonwebtoken::EncodingKey::from_secret(b"another secret"),
    )
    .unwrap();
    let wrong_key = RtClient::refused(
        connect_to(&node).header("sec-websocket-protocol", &format!("access_token.{forged}")),
    )
    .await;
    assert_eq!(wrong_key.status, 401, "{wrong_key:?}");
    assert_eq!(
        node.metrics()
            .await
            .get(r#"herald_sessions{dialect="realtime"}"#),
        Some(3.0),
        "sessions are counted under the realtime dialect label"
    );
    let none = RtClient::refused(connect_to(&node)).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert!(none.body.contains("access_token"), "{}", none.body);
}

#[tokio::test]
async fn ws_ping_subscribe_wildcards_and_unsubscribe() {
    let node = memory_node(|c| c).await;
    let mut alice = RtClient::connect(&node, "alice").await;
    let mut bob = RtClient::connect(&node, "bob").await;

    // A Pong (the document's client answers JSON Pings with one) is accepted silently.
    alice.send("Pong", json!({"timestamp": 1})).await;
    let pong = alice.request("Ping", json!({"timestamp": 12345})).await;
    assert_eq!(pong["type"], "Pong");
    assert_eq!(pong["data"]["timestamp"], 12345);
    alice
        .expect_none_of_type("Error", Duration::from_millis(200))
        .await;
    alice
        .ws
        .send_json(&json!({"type": "Ping", "data": {}, "id": {"not": "echoable"}}))
        .await;
    let bad_id = alice.next_of_type("Error").await;
    assert_eq!(bad_id["data"]["code"], 400, "{bad_id}");
    assert!(
        bad_id["data"]["message"]
            .as_str()
            .unwrap()
            .contains("id must be a string"),
        "{bad_id}"
    );

    // Document 003: Status {status, details: {topics, active_subscriptions}}, then for a
    // request with an id an Ack whose message_id is that id (what its client awaits).
    alice
        .ws
        .send_json(&json!({"type": "Subscribe", "data": {"topics": ["updates.*", "all.>"]}, "id": "sub-1"}))
        .await;
    let status = alice.next().await;
    assert_eq!(status["type"], "Status", "{status}");
    assert_eq!(status["id"], "sub-1", "{status}");
    assert_eq!(
        status["data"],
        json!({"status": "subscribed", "details": {"topics": ["updates.*", "all.>"], "active_subscriptions": 2}})
    );
    let ack = alice.next().await;
    assert_eq!(ack["type"], "Ack", "{ack}");
    assert_eq!(ack["data"]["message_id"], "sub-1", "{ack}");
    assert_eq!(ack["data"]["status"], "subscribed", "{ack}");
    assert_eq!(ack["data"]["details"], status["data"]["details"], "{ack}");

    for (topic, recipients) in [
        ("other.a", 0),
        ("updates.a.b", 0),
        ("updates.a", 1),
        ("all.x.y", 1),
    ] {
        let ack = bob
            .request(
                "Broadcast",
                json!({"topic": topic, "payload": {"n": topic}}),
            )
            .await;
        assert_eq!(ack["type"], "Ack", "{ack}");
        assert_eq!(
            ack["data"]["message_id"], ack["id"],
            "the request's id: {ack}"
        );
        assert_eq!(ack["data"]["recipients"], recipients, "{topic}: {ack}");
    }
    let first = alice.next_of_type("Broadcast").await;
    assert_eq!(first["data"]["topic"], "updates.a", "{first}");
    assert_eq!(first["data"]["payload"], json!({"n": "updates.a"}));
    let metadata = &first["data"]["metadata"];
    assert!(metadata["message_id"].as_str().is_some(), "{first}");
    let sent_at = metadata["sent_at"].as_u64().expect("sent_at");
    assert!(
        sent_at.abs_diff(now_secs()) < 60,
        "sent_at in seconds: {first}"
    );
    assert!(
        first["timestamp"].as_u64().expect("timestamp") > sent_at * 999,
        "the frame's timestamp is in ms: {first}"
    );

    // Without an id, the Ack carries the server's message id.
    bob.send("Broadcast", json!({"topic": "updates.a", "payload": 0}))
        .await;
    let ack = bob.next_of_type("Ack").await;
    assert!(ack.get("id").is_none(), "{ack}");
    let server_id = ack["data"]["message_id"].as_str().expect("a server id");
    assert_eq!(server_id.len(), 36, "a UUID: {ack}");
    assert!(first["seq"].as_u64().is_some(), "{first}");
    let second = alice.next_of_type("Broadcast").await;
    assert_eq!(second["data"]["topic"], "all.x.y", "{second}");
    let third = alice.next_of_type("Broadcast").await;
    assert_eq!(third["data"]["metadata"]["message_id"], server_id);

    let status = alice
        .request("Unsubscribe", json!({"topics": ["updates.*"]}))
        .await;
    assert_eq!(
        status["data"],
        json!({"status": "unsubscribed", "details": {"topics": ["updates.*"], "active_subscriptions": 1}})
    );
    let ack = alice.next_of_type("Ack").await;
    assert_eq!(ack["data"]["message_id"], status["id"], "{ack}");
    bob.request("Broadcast", json!({"topic": "updates.b", "payload": 1}))
        .await;
    alice
        .expect_none_of_type("Broadcast", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn ws_broadcast_ack_counts_every_subscribed_session_on_both_nodes() {
    let c = cluster(|c| c).await;
    let mut a1 = RtClient::connect(&c.a, "a1").await;
    let mut a2 = RtClient::connect(&c.a, "a2").await;
    let mut b1 = RtClient::connect(&c.b, "b1").await;
    let mut idle = RtClient::connect(&c.b, "idle").await;
    a1.subscribe(&["scores.*"], None).await;
    a2.subscribe(&["scores.>"], None).await;
    b1.subscribe(&["scores.match1"], None).await;
    idle.subscribe(&["news.*"], None).await;
    let mut sender = RtClient::connect(&c.b, "sender").await;

    let ack = sender
        .request(
            "Broadcast",
            json!({"topic": "scores.match1", "payload": {"home": 1}}),
        )
        .await;
    assert_eq!(ack["type"], "Ack", "{ack}");
    assert_eq!(ack["data"]["status"], "delivered");
    assert_eq!(ack["data"]["recipients"], 3, "{ack}");
    let message_id = ack["data"]["message_id"].as_str().expect("message_id");
    for client in [&mut a1, &mut a2, &mut b1] {
        let got = client.next_of_type("Broadcast").await;
        assert_eq!(got["data"]["metadata"]["message_id"], message_id, "{got}");
        assert_eq!(got["data"]["payload"], json!({"home": 1}));
    }
    idle.expect_none_of_type("Broadcast", Duration::from_millis(300))
        .await;

    let nobody = sender
        .request("Broadcast", json!({"topic": "empty.room", "payload": 0}))
        .await;
    assert_eq!(nobody["data"]["recipients"], 0, "{nobody}");
}

#[tokio::test]
async fn ws_subscribe_since_replays_missed_broadcasts_without_gap_or_duplicate() {
    let c = cluster(|c| c).await;
    let mut sender = RtClient::connect(&c.a, "sender").await;
    let mut reader = RtClient::connect(&c.b, "reader").await;
    reader.subscribe(&["feed.*"], None).await;
    sender
        .request("Broadcast", json!({"topic": "feed.x", "payload": 0}))
        .await;
    let seen = reader.next_of_type("Broadcast").await;
    let last = seen["seq"].as_u64().expect("seq");
    reader.close().await;

    for n in 1..=3 {
        sender
            .request("Broadcast", json!({"topic": "feed.x", "payload": n}))
            .await;
    }
    let mut reader = RtClient::connect(&c.a, "reader").await;
    reader.subscribe(&["feed.*"], Some(last)).await;
    sender
        .request("Broadcast", json!({"topic": "feed.y", "payload": 4}))
        .await;
    let mut payloads = Vec::new();
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let frame = reader.next_of_type("Broadcast").await;
        payloads.push(frame["data"]["payload"].clone());
        seqs.push(frame["seq"].as_u64().expect("seq"));
    }
    assert_eq!(payloads, [json!(1), json!(2), json!(3), json!(4)]);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    reader
        .expect_none_of_type("Broadcast", Duration::from_millis(500))
        .await;

    let mut late = RtClient::connect(&c.b, "late").await;
    late.request(
        "Subscribe",
        json!({"topics": ["feed.*"], "since": 1_000_000_000u64}),
    )
    .await;
    let resync = late.next_of_type("Status").await;
    assert_eq!(resync["data"]["status"], "resync_required", "{resync}");
}

#[tokio::test]
async fn ws_backend_notifications_reach_users_and_topic_subscribers() {
    let c = cluster(|c| c).await;
    let mut carol = RtClient::connect(&c.b, "carol").await;
    carol.subscribe(&["alerts.>"], None).await;
    let notification = json!({
        "type": "Notification",
        "data": {"level": "warning", "title": "Disk", "message": "90% full", "actions": [{"label": "Open"}]},
    });
    backend_publish(&c.nats, "herald.v1.user.carol", notification.clone()).await;
    let got = carol.next_of_type("Notification").await;
    assert_eq!(got["data"]["level"], "warning");
    assert_eq!(got["data"]["title"], "Disk");
    assert_eq!(got["data"]["actions"][0]["label"], "Open");
    backend_publish(&c.nats, "herald.v1.topic.alerts.disk", notification).await;
    let got = carol.next_of_type("Notification").await;
    assert_eq!(got["data"]["message"], "90% full");
}

#[tokio::test]
async fn ws_direct_messages_reach_online_users_on_any_node_and_wait_for_offline_ones() {
    let c = cluster(|c| c).await;
    let mut alice = RtClient::connect(&c.a, "alice").await;
    let mut bob = RtClient::connect(&c.b, "bob").await;

    let ack = alice
        .request(
            "DirectMessage",
            json!({"target_user": "bob", "payload": {"hi": 1}}),
        )
        .await;
    assert_eq!(ack["type"], "Ack", "{ack}");
    assert_eq!(
        ack["data"]["message_id"], ack["id"],
        "the request's id: {ack}"
    );
    assert_eq!(ack["data"]["delivered_to"], json!([bob.connection_id()]));
    let dm = bob.next_of_type("DirectMessage").await;
    assert_eq!(dm["data"]["from_user"], "alice", "{dm}");
    assert_eq!(dm["data"]["payload"], json!({"hi": 1}));
    assert_eq!(dm["data"]["metadata"]["message_id"], ack["id"], "{dm}");

    // Sent back to back, answered concurrently: stored (and replayed) in sending order.
    for n in 1..=3 {
        alice
            .ws
            .send_json(&json!({"type": "DirectMessage", "data": {"target_user": "dave", "payload": n}, "id": format!("dm{n}")}))
            .await;
    }
    for n in 1..=3 {
        let id = format!("dm{n}");
        let answer = alice.take("the queued answer", |f| f["id"] == id).await;
        assert_eq!(answer["type"], "Error", "{answer}");
        assert_eq!(answer["data"]["code"], 404);
        assert_eq!(answer["data"]["details"]["queued"], true);
        assert_eq!(answer["data"]["details"]["message_id"], id.as_str());
        assert!(
            answer["data"]["message"]
                .as_str()
                .unwrap()
                .starts_with("User dave not found or not connected"),
            "{answer}"
        );
    }
    let mut dave = RtClient::connect(&c.b, "dave").await;
    for n in 1..=3 {
        let dm = dave.next_of_type("DirectMessage").await;
        assert_eq!(dm["data"]["payload"], n, "{dm}");
        assert_eq!(dm["data"]["from_user"], "alice", "{dm}");
        assert_eq!(dm["data"]["metadata"]["message_id"], format!("dm{n}"));
    }
    dave.expect_none_of_type("DirectMessage", Duration::from_millis(500))
        .await;
    dave.close().await;
    let mut dave = RtClient::connect(&c.a, "dave").await;
    dave.expect_none_of_type("DirectMessage", Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn ws_presence_follows_first_and_last_session_across_nodes_and_node_death() {
    let c = cluster(|c| c.set("limits.lease_ttl", "2s")).await;
    let mut watcher = RtClient::connect(&c.a, "watcher").await;
    watcher.subscribe(&["presence.*"], None).await;

    let bob1 = RtClient::connect(&c.b, "bob").await;
    let online = watcher.next_of_type("Presence").await;
    assert_eq!(online["data"]["user_id"], "bob");
    assert_eq!(online["data"]["status"], "online");
    let last_seen = online["data"]["last_seen"].as_u64().expect("last_seen");
    assert!(last_seen.abs_diff(now_secs()) < 60, "seconds: {online}");
    let bob2 = RtClient::connect(&c.a, "bob").await;
    bob1.close().await;
    watcher
        .expect_none_of_type("Presence", Duration::from_millis(800))
        .await;
    bob2.close().await;
    let offline = watcher.next_of_type("Presence").await;
    assert_eq!(offline["data"]["status"], "offline", "{offline}");
    assert_eq!(offline["data"]["user_id"], "bob");
    watcher
        .expect_none_of_type("Presence", Duration::from_secs(2))
        .await;

    let mut b = c.b;
    let _eve = RtClient::connect(&b, "eve").await;
    let online = watcher.next_of_type("Presence").await;
    assert_eq!(online["data"]["user_id"], "eve");
    assert_eq!(online["data"]["status"], "online");
    b.kill();
    let offline = watcher.next_of_type("Presence").await;
    assert_eq!(offline["data"]["user_id"], "eve");
    assert_eq!(offline["data"]["status"], "offline");
}

#[tokio::test]
async fn ws_warns_before_the_token_expires_and_closes_with_4401_at_expiry() {
    let node = memory_node(|c| {
        c.set("realtime.token_expiry_warning", "2s")
            .set("auth.jwt.leeway", "0s")
    })
    .await;
    let exp = now_secs() + 4;
    let jwt = token("alice", json!({"exp": exp}));
    let mut alice = RtClient::open(connect_to(&node).query("token", &jwt)).await;
    let warning = alice.next_of_type("AuthStatus").await;
    assert_eq!(warning["data"]["status"], "token_expiring");
    assert_eq!(warning["data"]["refresh_required"], true);
    assert_eq!(
        warning["data"]["expires_at"], exp,
        "the JWT's exp, in seconds"
    );
    assert!(now_secs() < exp, "the warning comes before expiry");
    assert_eq!(alice.expect_close().await, Some(4401));
}

#[tokio::test]
async fn ws_custom_types_are_nats_requests_answered_by_a_backend_and_503_without_one() {
    let c = cluster(|c| c).await;
    let responder = async_nats::connect(c.nats.url()).await.unwrap();
    let mut requests = subscribe_live(&responder, "herald.v1.custom.X-weather").await;
    let replier = responder.clone();
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let body: Value = serde_json::from_slice(&request.payload).unwrap();
            let reply = json!({"city": body["data"]["city"], "user": body["user_id"], "temp": 21});
            replier
                .publish(request.reply.unwrap(), reply.to_string().into())
                .await
                .unwrap();
        }
    });
    let mut alice = RtClient::connect(&c.b, "alice").await;
    let answer = alice.request("X-weather", json!({"city": "Oslo"})).await;
    assert_eq!(answer["type"], "X-weather", "{answer}");
    assert_eq!(
        answer["data"],
        json!({"city": "Oslo", "user": "alice", "temp": 21})
    );

    let none = alice.request("X-nobody", json!({})).await;
    assert_eq!(none["type"], "Error", "{none}");
    assert_eq!(none["data"]["code"], 503);

    let memory = memory_node(|c| c).await;
    let mut local = RtClient::connect(&memory, "alice").await;
    let none = local.request("X-weather", json!({})).await;
    assert_eq!(none["data"]["code"], 503, "{none}");
    assert!(
        none["data"]["message"].as_str().unwrap().contains("memory"),
        "{none}"
    );
}

#[tokio::test]
async fn ws_binary_frames_are_checksummed_and_bad_lengths_get_400() {
    let node = memory_node(|c| c).await;
    let mut alice = RtClient::connect(&node, "alice").await;
    let target = b"updates.a";
    let mut payload = vec![target.len() as u8];
    payload.extend_from_slice(target);
    payload.extend_from_slice(b"\x00\x01binary body");
    let mut frame = vec![0x01];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    alice.ws.send_binary(frame).await;
    let status = alice.next_of_type("Status").await;
    assert_eq!(status["data"]["status"], "binary_received", "{status}");
    let details = &status["data"]["details"];
    assert_eq!(details["size"], payload.len());
    assert_eq!(details["type"], "broadcast");
    assert_eq!(details["target"], "updates.a");
    let digest: String = sha2::Sha256::digest(&payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(details["checksum"], format!("sha256:{digest}"));

    // Document 003's names for the other types.
    for (kind, name, body) in [
        (0x02u8, "direct_message", &b"\x03bobhi"[..]),
        (0x03, "file_transfer", b"file"),
        (0x04, "stream_data", b"chunk"),
    ] {
        let mut frame = vec![kind];
        frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
        frame.extend_from_slice(body);
        alice.ws.send_binary(frame).await;
        let status = alice.next_of_type("Status").await;
        assert_eq!(status["data"]["details"]["type"], name, "{status}");
        assert_eq!(status["data"]["details"]["size"], body.len(), "{status}");
    }

    let mut file = vec![0x03];
    file.extend_from_slice(&100u32.to_be_bytes());
    file.extend_from_slice(b"only a few bytes");
    alice.ws.send_binary(file).await;
    let error = alice.next_of_type("Error").await;
    assert_eq!(error["data"]["code"], 400, "{error}");
    assert!(
        error["data"]["message"]
            .as_str()
            .unwrap()
            .contains("length"),
        "{error}"
    );
}

#[tokio::test]
async fn ws_refuses_oversize_unknown_and_forbidden_messages_and_rate_limits() {
    let node = memory_node(|c| {
        c.set("realtime.max_message_bytes", 1024)
            .set("realtime.messages_per_second", 5)
            .set("realtime.burst", 5)
    })
    .await;
    let limited = token(
        "limited",
        json!({"topics": {"subscribe": ["public.*"], "publish": ["public.chat"]}}),
    );
    let mut client = RtClient::open(connect_to(&node).query("token", &limited)).await;

    // Oversize messages are not parsed, so the error carries no request id.
    client
        .send(
            "Broadcast",
            json!({"topic": "public.chat", "payload": "x".repeat(2000)}),
        )
        .await;
    let huge = client.next_of_type("Error").await;
    assert_eq!(huge["data"]["code"], 400, "{huge}");
    assert!(
        huge["data"]["message"]
            .as_str()
            .unwrap()
            .contains("realtime.max_message_bytes"),
        "{huge}"
    );
    let forbidden = client
        .request("Subscribe", json!({"topics": ["private.*"]}))
        .await;
    assert_eq!(forbidden["type"], "Error");
    assert_eq!(forbidden["data"]["code"], 403, "{forbidden}");
    let forbidden = client
        .request("Broadcast", json!({"topic": "public.other", "payload": 1}))
        .await;
    assert_eq!(forbidden["data"]["code"], 403, "{forbidden}");
    let mut open = RtClient::connect(&node, "open").await;
    let spoof = open
        .request("Broadcast", json!({"topic": "presence.bob", "payload": 1}))
        .await;
    assert_eq!(spoof["data"]["code"], 403, "{spoof}");
    let unknown = client.request("Dance", json!({})).await;
    assert_eq!(unknown["data"]["code"], 400, "{unknown}");
    client.ws.send_text("not json").await;
    let bad = client.next_of_type("Error").await;
    assert_eq!(bad["data"]["code"], 400, "{bad}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        client.send("Ping", json!({})).await;
    }
    let limited = client
        .take("a 429 error", |f| {
            f["type"] == "Error" && f["data"]["code"] == 429
        })
        .await;
    assert!(
        limited["data"]["message"]
            .as_str()
            .unwrap()
            .contains("realtime.messages_per_second"),
        "{limited}"
    );
}

#[tokio::test]
async fn ws_sessions_close_with_4001_on_revocation_and_1001_on_shutdown() {
    let c = cluster(|c| c).await;
    let mut mallory = RtClient::connect(&c.a, "mallory").await;
    let mut other = RtClient::connect(&c.b, "other").await;
    let client = async_nats::connect(c.nats.url()).await.unwrap();
    client
        .publish(
            "herald.v1.control.revoke",
            json!({"userId": "mallory"}).to_string().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
    assert_eq!(mallory.expect_close().await, Some(4001));

    c.b.terminate();
    assert_eq!(other.expect_close().await, Some(1001));
}

#[tokio::test]
async fn ws_on_the_memory_bus_replays_wildcard_since_and_queues_direct_messages() {
    let node = memory_node(|c| c.set("realtime.ack_wait", "200ms")).await;
    let mut sender = RtClient::connect(&node, "sender").await;
    let mut reader = RtClient::connect(&node, "reader").await;
    reader.subscribe(&["feed.*"], None).await;
    sender
        .request("Broadcast", json!({"topic": "feed.a", "payload": 0}))
        .await;
    let last = reader.next_of_type("Broadcast").await["seq"]
        .as_u64()
        .expect("seq");
    reader.close().await;
    for (topic, n) in [("feed.a", 1), ("other.a", 99), ("feed.b", 2)] {
        sender
            .request("Broadcast", json!({"topic": topic, "payload": n}))
            .await;
    }
    let queued = sender
        .request(
            "DirectMessage",
            json!({"target_user": "reader", "payload": "later"}),
        )
        .await;
    assert_eq!(queued["data"]["code"], 404, "{queued}");
    assert_eq!(queued["data"]["details"]["queued"], true);

    let mut reader = RtClient::connect(&node, "reader").await;
    let dm = reader.next_of_type("DirectMessage").await;
    assert_eq!(dm["data"]["payload"], "later");
    reader.subscribe(&["feed.*"], Some(last)).await;
    let payloads = [
        reader.next_of_type("Broadcast").await["data"]["payload"].clone(),
        reader.next_of_type("Broadcast").await["data"]["payload"].clone(),
    ];
    assert_eq!(payloads, [json!(1), json!(2)]);
    reader
        .expect_none_of_type("Broadcast", Duration::from_millis(400))
        .await;
}
