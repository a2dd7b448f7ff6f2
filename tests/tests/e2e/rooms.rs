//! The rooms dialect `/api/v1/ws/connect` (SPEC §4.4), cluster-wide: two herald nodes on
//! one NATS JetStream server, real WebSocket clients, backends publishing straight to
//! NATS on `herald.v1.room.<prefix>.<id>`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use herald_tests::rooms::{self, claims, sign, token, RoomsClient, ROOMS_SECRET};
use herald_tests::{eventually, NatsServer, Node, NodeConfig, Publisher, PROMPT};
use serde_json::{json, Value};

/// Two nodes on one NATS with rooms auth on, configured alike by `configure`.
async fn two_nodes(
    nats: &NatsServer,
    configure: impl Fn(NodeConfig) -> NodeConfig,
) -> (Node, Node) {
    let config = || configure(rooms::with_rooms_auth(NodeConfig::nats(&[nats.url()])));
    let (a, b) = tokio::join!(Node::start(config()), Node::start(config()));
    for node in [&a, &b] {
        eventually(PROMPT, "the node to be ready", || async {
            (node.get_status("/readyz").await == 200).then_some(())
        })
        .await;
    }
    (a, b)
}

/// A single node on the in-process bus with rooms auth on.
async fn memory_node(configure: impl FnOnce(NodeConfig) -> NodeConfig) -> Node {
    Node::start(configure(rooms::with_rooms_auth(NodeConfig::memory()))).await
}

/// The keys of a JSON object.
fn keys(value: &Value) -> BTreeSet<&str> {
    value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect()
}

/// Asserts `value` is an ISO-8601 UTC timestamp with microseconds (document 004's
/// `2025-11-13T12:00:00.000000Z`) within a minute of now.
fn assert_recent_iso8601(value: &Value) {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    assert!(
        text.len() == 27 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
        "timestamp {text:?} is not YYYY-MM-DDTHH:MM:SS.ffffffZ"
    );
    let at = humantime::parse_rfc3339(text)
        .unwrap_or_else(|e| panic!("timestamp {text:?} is not RFC 3339: {e}"));
    let skew = SystemTime::now()
        .duration_since(at)
        .unwrap_or_else(|e| e.duration());
    assert!(
        skew < Duration::from_secs(60),
        "timestamp {text} is {skew:?} off"
    );
}

/// Publishes a backend room event as a JSON envelope straight to NATS.
async fn publish_room_event(publisher: &Publisher, subject: &str, payload: &Value) {
    let body = serde_json::to_vec(&json!({ "payload": payload })).expect("JSON encodes");
    publisher.raw(subject, body, true).await;
}

#[tokio::test]
async fn welcome_ping_and_backend_events_reach_members_on_both_nodes() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c).await;
    let publisher = Publisher::nats(&nats.url()).await;

    let mut alice = RoomsClient::connect(&a, &token("42", "alice", Some(&["project:123"]))).await;
    let welcome = &alice.welcome;
    assert_eq!(keys(welcome), BTreeSet::from(["type", "data", "timestamp"]));
    assert_eq!(
        welcome["data"],
        json!({"message": "Connected successfully", "user_id": "42", "username": "alice"})
    );
    assert_recent_iso8601(&welcome["timestamp"]);

    alice.send("ping", None, Some(json!({"n": 1}))).await;
    let pong = alice.next().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["data"], json!({"n": 1}), "pong echoes data: {pong}");
    assert_recent_iso8601(&pong["timestamp"]);

    let mut bob = RoomsClient::connect(&b, &token("43", "bob", Some(&["project:*"]))).await;
    alice.join("project:123").await;
    bob.join("project:123").await;
    a.wait_metric("herald_sessions", "one rooms session on A", |v| v == 1.0)
        .await;
    assert_eq!(
        a.metrics().await.get("herald_sessions{dialect=\"rooms\"}"),
        Some(1.0),
        "sessions gauge labelled rooms"
    );

    // A type outside SPEC §4.4 is dropped (and counted); the next valid one arrives.
    let subject = "herald.v1.room.project.123";
    publish_room_event(&publisher, subject, &json!({"type": "bogus", "data": {}})).await;
    let payload = json!({
        "type": "task.created",
        "data": {"task_id": 7, "title": "Ship rooms"},
        "sender": {"user_id": "backend"},
    });
    publish_room_event(&publisher, subject, &payload).await;
    // MessagePack envelopes work too.
    let body = rmp_serde::to_vec_named(
        &json!({"payload": {"type": "project.updated", "data": {"name": "P"}}}),
    )
    .expect("msgpack encodes");
    publisher.raw(subject, body, false).await;

    let mut seen = Vec::new();
    for client in [&mut alice, &mut bob] {
        let event = client
            .next_matching("task.created", |e| e["type"] != "user_joined")
            .await;
        assert_eq!(
            keys(&event),
            BTreeSet::from(["type", "room", "data", "sender", "timestamp", "seq"]),
            "{event}"
        );
        assert_eq!(event["type"], "task.created");
        assert_eq!(event["room"], "project:123");
        assert_eq!(event["data"], payload["data"]);
        assert_eq!(event["sender"], payload["sender"]);
        assert_recent_iso8601(&event["timestamp"]);
        assert!(event["seq"].as_u64().is_some(), "{event}");
        let next = client.next().await;
        assert_eq!(next["type"], "project.updated", "{next}");
        assert_eq!(next["sender"], Value::Null, "no sender given: null");
        seen.push(event);
    }
    assert_eq!(
        seen[0], seen[1],
        "the same frame (timestamp and seq included) on both nodes"
    );
    a.wait_metric(
        "herald_bus_decode_errors_total",
        "the unknown type counted",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn send_message_from_node_a_reaches_a_member_on_node_b_in_order() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c).await;
    let mut alice = RoomsClient::connect(&a, &token("42", "alice", Some(&["channel:*"]))).await;
    let mut bob = RoomsClient::connect(&b, &token("43", "bob", Some(&["channel:9"]))).await;

    // Not joined yet: an error event, and the connection stays open.
    alice
        .send(
            "send_message",
            Some("channel:9"),
            Some(json!({"text": "early"})),
        )
        .await;
    let error = alice.next().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["room"], "channel:9");
    assert_eq!(error["data"]["code"], "not_joined");
    assert!(
        error["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("join")),
        "data.error says what to do: {error}"
    );

    bob.join("channel:9").await;
    alice.join("channel:9").await;
    for n in 0..20 {
        alice
            .send(
                "send_message",
                Some("channel:9"),
                Some(json!({"text": format!("hi {n}")})),
            )
            .await;
    }
    for client in [&mut bob, &mut alice] {
        for n in 0..20 {
            let message = client.next_of_type("message").await;
            assert_eq!(message["room"], "channel:9");
            assert_eq!(
                message["data"],
                json!({"text": format!("hi {n}")}),
                "in order"
            );
            assert_eq!(
                message["sender"], "alice",
                "the username, as in document 004"
            );
            assert_eq!(message["sender_id"], "42");
            assert_recent_iso8601(&message["timestamp"]);
        }
    }
    // A message with no data is refused, not published.
    alice.send("send_message", Some("channel:9"), None).await;
    let error = alice.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "missing_data", "{error}");
}

#[tokio::test]
async fn user_joined_and_user_left_reach_members_and_revocation_closes_with_4001() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c).await;
    let mut bob = RoomsClient::connect(&b, &token("43", "bob", Some(&["task:*"]))).await;
    bob.join("task:5").await;

    let mut alice = RoomsClient::connect(&a, &token("42", "alice", Some(&["task:5"]))).await;
    alice.join("task:5").await;
    let alice_user = json!({"user_id": "42", "username": "alice"});
    let joined = bob.next_of_type("user_joined").await;
    assert_eq!(joined["room"], "task:5");
    assert_eq!(joined["data"], alice_user);
    assert_eq!(joined["sender"], "alice");
    assert_eq!(joined["sender_id"], "42");

    alice.send("leave_room", Some("task:5"), None).await;
    let left = bob.next_of_type("user_left").await;
    assert_eq!(left["room"], "task:5");
    assert_eq!(left["data"], alice_user);
    // Leaving twice is an error event.
    alice.send("leave_room", Some("task:5"), None).await;
    let error = alice.next_of_type("error").await;
    assert_eq!(error["data"]["code"], "not_joined", "{error}");

    // Disconnecting leaves every room.
    alice.join("task:5").await;
    bob.next_of_type("user_joined").await;
    alice.ws.close().await;
    let left = bob.next_of_type("user_left").await;
    assert_eq!(left["data"], alice_user, "left on disconnect");

    // A revocation of the user on the bus closes their sessions on every node.
    let publisher = Publisher::nats(&nats.url()).await;
    publisher
        .raw(
            "herald.v1.control.revoke",
            serde_json::to_vec(&json!({"userId": "43"})).expect("JSON"),
            true,
        )
        .await;
    assert_eq!(bob.expect_close().await, Some(4001), "revoked user");
}

#[tokio::test]
async fn a_numeric_user_id_stays_a_number_and_sender_is_the_username() {
    let node = memory_node(|c| c).await;
    let mut numeric = claims("0", "alice", Some(&["project:*"]));
    numeric["sub"] = json!(12345);
    let mut alice = RoomsClient::connect(&node, &sign(&numeric, ROOMS_SECRET)).await;
    // Document 004's welcome, field by field (its user_id is the number 12345 too).
    assert_eq!(
        alice.welcome["data"],
        json!({"message": "Connected successfully", "user_id": 12345, "username": "alice"})
    );
    alice.join("user:12345").await;
    alice.join("project:1").await;
    alice
        .send(
            "send_message",
            Some("project:1"),
            Some(json!({"content": "Hello"})),
        )
        .await;
    let message = alice.next_of_type("message").await;
    assert_eq!(
        keys(&message),
        BTreeSet::from([
            "type",
            "room",
            "data",
            "sender",
            "sender_id",
            "timestamp",
            "seq"
        ]),
        "{message}"
    );
    assert_eq!(message["sender"], "alice");
    assert_eq!(message["sender_id"], 12345);
    assert_eq!(message["data"], json!({"content": "Hello"}));
    alice.send("leave_room", Some("project:1"), None).await;
    alice.send("join_room", Some("project:1"), None).await;
    let joined = alice.next_of_type("user_joined").await;
    assert_eq!(
        joined["data"],
        json!({"user_id": 12345, "username": "alice"})
    );

    // No username claim: the sender is the user id, as a string.
    let mut anonymous = claims("77", "x", Some(&["project:*"]));
    anonymous
        .as_object_mut()
        .expect("object")
        .remove("username");
    let mut bob = RoomsClient::connect(&node, &sign(&anonymous, ROOMS_SECRET)).await;
    assert_eq!(bob.welcome["data"]["username"], Value::Null);
    bob.join("project:1").await;
    bob.send(
        "send_message",
        Some("project:1"),
        Some(json!({"content": "hi"})),
    )
    .await;
    let message = bob.next_of_type("message").await;
    assert_eq!(
        (&message["sender"], &message["sender_id"]),
        (&json!("77"), &json!("77"))
    );
}

#[tokio::test]
async fn bad_room_format_gets_an_error_event_and_the_connection_stays_open() {
    let node = memory_node(|c| c).await;
    let mut alice = RoomsClient::connect(&node, &token("42", "alice", Some(&["*"]))).await;
    for (frame, code, mentions) in [
        (
            json!({"type": "join_room", "room": "team:1"}),
            "bad_room",
            "team:1",
        ),
        (
            json!({"type": "join_room", "room": "project:12a"}),
            "bad_room",
            "not a number",
        ),
        (
            json!({"type": "join_room", "room": "project"}),
            "bad_room",
            "':'",
        ),
        (json!({"type": "join_room"}), "bad_room", "\"room\""),
        (
            json!({"type": "join_room", "room": 5}),
            "bad_room",
            "string",
        ),
        (json!({"type": "dance"}), "unknown_type", "dance"),
        (json!({"room": "project:1"}), "bad_frame", "type"),
    ] {
        alice.ws.send_json(&frame).await;
        let error = alice.next().await;
        assert_eq!(error["type"], "error", "{frame} → {error}");
        assert_eq!(error["data"]["code"], code, "{frame} → {error}");
        let message = error["data"]["error"].as_str().expect("data.error");
        assert!(message.contains(mentions), "{frame} → {message}");
        assert_recent_iso8601(&error["timestamp"]);
    }
    alice.ws.send_text("not json").await;
    assert_eq!(alice.next().await["data"]["code"], "bad_frame");
    alice.send("ping", None, None).await;
    assert_eq!(alice.next().await["type"], "pong", "still open");
    alice.join("project:1").await;
}

#[tokio::test]
async fn room_access_follows_the_rooms_claim() {
    // The built-in default (any --config file): deny. Only the demo config opens rooms.
    let node = memory_node(|c| c.set("rooms.default_allow", false)).await;
    // `channel:*` allows every channel, nothing else. A join sent before the welcome
    // arrives waits for the token check, then counts.
    let mut ws = RoomsClient::open(&node, &token("42", "alice", Some(&["channel:*"]))).await;
    ws.send_json(&json!({"type": "join_room", "room": "channel:1"}))
        .await;
    let welcome = ws.next_json().await;
    assert_eq!(welcome["type"], "connected", "{welcome}");
    let mut alice = RoomsClient { ws, welcome };
    let joined = alice.next().await;
    assert_eq!(
        (joined["type"].as_str(), joined["room"].as_str()),
        (Some("user_joined"), Some("channel:1")),
        "{joined}"
    );
    alice.join("channel:77").await;
    alice.join("user:42").await;
    alice.send("join_room", Some("project:1"), None).await;
    assert_eq!(
        alice.expect_close().await,
        Some(4403),
        "project:1 is not in the claim"
    );

    // No claim and rooms.default_allow off (the built-in default): only the own user room.
    let mut carol = RoomsClient::connect(&node, &token("44", "carol", None)).await;
    carol.join("user:44").await;
    carol.send("join_room", Some("user:45"), None).await;
    assert_eq!(
        carol.expect_close().await,
        Some(4403),
        "someone else's user room"
    );

    let open = memory_node(|c| c.set("rooms.default_allow", true)).await;
    let mut dave = RoomsClient::connect(&open, &token("45", "dave", None)).await;
    dave.join("project:1").await;
    dave.join("task:9").await;
    // A claim, even with default_allow, is what counts.
    let mut erin = RoomsClient::connect(&open, &token("46", "erin", Some(&["task:1"]))).await;
    erin.join("user:46").await;
    erin.send("join_room", Some("task:2"), None).await;
    assert_eq!(erin.expect_close().await, Some(4403));
}

#[tokio::test]
async fn bad_or_expired_tokens_are_closed_with_4401_after_the_upgrade() {
    let node = memory_node(|c| c).await;
    let mut expired = claims("42", "alice", Some(&["*"]));
    expired["exp"] = json!(rooms::now_secs() - 120);
    let mut no_user = claims("42", "alice", Some(&["*"]));
    no_user.as_object_mut().expect("object").remove("sub");
    for (what, token) in [
        ("garbage", "not-a-jwt".to_owned()),
        (
            "wrong secret",
            sign(&claims("42", "alice", None), "not-the-secret"),
        ),
        ("expired", sign(&expired, ROOMS_SECRET)),
        ("no sub", sign(&no_user, ROOMS_SECRET)),
    ] {
        let mut ws = RoomsClient::open(&node, &token).await;
        match ws.next_frame(PROMPT).await {
            Some(herald_tests::Frame::Close(code, _)) => {
                assert_eq!(code, Some(4401), "{what}: nothing before the 4401 close")
            }
            other => panic!("{what}: expected a 4401 close first, got {other:?}"),
        }
    }
    // No token at all: the upgrade is accepted too, then 4401.
    let mut ws = match herald_tests::Connect::v1(&node)
        .path(rooms::ROOMS_PATH)
        .open()
        .await
    {
        Ok(ws) => ws,
        Err(refusal) => panic!("the upgrade must be accepted: {refusal:?}"),
    };
    assert_eq!(ws.expect_close().await, Some(4401), "no token");

    // A token that expires while connected closes the session with 4401 then.
    let mut short = claims("42", "alice", Some(&["*"]));
    short["exp"] = json!(rooms::now_secs() + 2);
    let mut alice = RoomsClient::connect(&node, &sign(&short, ROOMS_SECRET)).await;
    assert_eq!(
        alice.expect_close().await,
        Some(4401),
        "expired while connected"
    );
}

#[tokio::test]
async fn sixth_connection_of_a_user_across_two_nodes_closes_with_4429() {
    let nats = NatsServer::start();
    let (a, b) = two_nodes(&nats, |c| c).await;
    let alice = token("42", "alice", Some(&["*"]));
    let mut open = Vec::new();
    for node in [&a, &a, &a, &b, &b] {
        open.push(RoomsClient::connect(node, &alice).await);
    }
    // Each node counts the other's sessions before the sixth asks: a connect racing the
    // stream that feeds the views is admitted, then reclaimed with 4429 after its
    // `connected` frame (cluster_limits.rs, "Reconciliation"), which is not what this
    // test looks at.
    a.wait_remote_leases("node A counting B's 2 sessions", |n| n >= 2.0)
        .await;
    b.wait_remote_leases("node B counting A's 3 sessions", |n| n >= 3.0)
        .await;
    for node in [&a, &b] {
        let mut ws = RoomsClient::open(node, &alice).await;
        assert_eq!(
            ws.expect_close().await,
            Some(4429),
            "6th session of the user in the cluster"
        );
    }
    // The cap is per user.
    RoomsClient::connect(&b, &token("43", "bob", None)).await;

    // A session leaving on node B frees a place that node A can give out.
    open.pop().expect("a session on B").ws.close().await;
    eventually(PROMPT, "a place to free up across the cluster", || async {
        let mut ws = RoomsClient::open(&a, &alice).await;
        let first = ws.next_frame(PROMPT).await;
        match first.and_then(|f| f.decode()) {
            Some(event) if event["type"] == "connected" => Some(ws),
            _ => None,
        }
    })
    .await;
}

#[tokio::test]
async fn a_frame_over_one_mebibyte_closes_with_1009() {
    let node = memory_node(|c| c).await;
    let mut alice = RoomsClient::connect(&node, &token("42", "alice", Some(&["*"]))).await;
    // Big but under the limit: answered.
    let big = "x".repeat(512 * 1024);
    alice.send("ping", None, Some(json!(big))).await;
    assert_eq!(alice.next().await["type"], "pong");
    let too_big = format!("{{\"type\":\"ping\",\"data\":\"{}\"}}", "x".repeat(1 << 20));
    alice.ws.send_text(&too_big).await;
    assert_eq!(alice.expect_close().await, Some(1009));
}

#[tokio::test]
async fn admission_refusals_are_http_statuses_before_the_upgrade() {
    let node = memory_node(|c| {
        c.allowed_origins(&["https://app.example"])
            .max_sessions_total(1)
    })
    .await;
    let alice = token("42", "alice", Some(&["*"]));
    let refusal = rooms::connect(&node, &alice)
        .origin("https://evil.example")
        .refused()
        .await;
    assert_eq!(refusal.status, 403, "origin not allowed: {refusal:?}");
    let _first = RoomsClient::connect(&node, &alice).await;
    let refusal = rooms::connect(&node, &alice).refused().await;
    assert_eq!(refusal.status, 503, "node full: {refusal:?}");
    assert_eq!(refusal.retry_after(), Some(60), "{refusal:?}");
}

#[tokio::test]
async fn an_auth_backend_that_does_not_answer_closes_with_4500() {
    let nats = NatsServer::start();
    let list =
        |items: &[&str]| toml::Value::Array(items.iter().map(|s| toml::Value::from(*s)).collect());
    let node = Node::start(
        rooms::with_rooms_auth(NodeConfig::nats(&[nats.url()]))
            .set("auth.providers", list(&["static", "jwt", "callout"]))
            .set("auth.dialects.rooms", list(&["callout"]))
            .set("auth.callout.timeout", "300ms"),
    )
    .await;
    // Nobody answers on herald.v1.auth.request: never access, an internal-error close.
    let mut ws = RoomsClient::open(&node, &token("42", "alice", None)).await;
    assert_eq!(ws.expect_close().await, Some(4500));
}

#[tokio::test]
async fn fragmented_messages_are_put_together_and_count_whole_against_the_limit() {
    use herald_tests::raw::{opcode, RawFrame};
    use herald_tests::RawWs;

    let node = memory_node(|c| c).await;
    let path = format!("{}?token={}", rooms::ROOMS_PATH, token("42", "alice", None));
    let mut ws = RawWs::connect(node.addr(), &path, &[])
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let text = |frame: RawFrame| match frame {
        RawFrame::Frame {
            opcode: opcode::TEXT,
            payload,
        } => serde_json::from_slice::<Value>(&payload).expect("JSON"),
        other => panic!("expected a text frame, got {other:?}"),
    };
    assert_eq!(text(ws.read_frame(PROMPT).await)["type"], "connected");

    ws.send_fragment(opcode::TEXT, br#"{"type":"pi"#, false)
        .await;
    ws.send_fragment(opcode::CONTINUATION, br#"ng","data":7}"#, true)
        .await;
    let pong = text(ws.read_frame(PROMPT).await);
    assert_eq!(
        (pong["type"].as_str(), &pong["data"]),
        (Some("pong"), &json!(7))
    );

    // Each fragment is under 1 MiB; the message is not.
    let half = vec![b'x'; 600 * 1024];
    ws.send_fragment(opcode::TEXT, &half, false).await;
    ws.send_fragment(opcode::CONTINUATION, &half, true).await;
    let close = ws.read_frame(PROMPT).await;
    assert_eq!(close.close_code(), Some(1009), "{close:?}");
}

#[tokio::test]
async fn a_long_close_reason_is_cut_at_123_bytes_as_on_every_dialect() {
    // RFC 6455 leaves 123 bytes for the reason beside the code; rooms used to cut at 120.
    let node = memory_node(|c| c.set("rooms.max_connections_per_user", 1)).await;
    let token = token(&"7".repeat(150), "long", None);
    let _first = RoomsClient::connect(&node, &token).await;
    let mut second = RoomsClient::open(&node, &token).await;
    match second.next_frame(PROMPT).await {
        Some(herald_tests::Frame::Close(code, reason)) => {
            assert_eq!(code, Some(4429), "{reason}");
            assert!(reason.starts_with("user 777"), "{reason}");
            assert_eq!(reason.len(), 123, "cut at the RFC 6455 limit: {reason}");
        }
        other => panic!("expected the 4429 close, got {other:?}"),
    }
    assert_eq!(node.get_status("/readyz").await, 200);
}
