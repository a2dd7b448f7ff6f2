//! Abuse of the bus layer (see the module doc of `abuse`): what a client can make the
//! in-process bus keep, and what `POST /v1/publish` reads, from whom, and where it lets
//! a publisher speak.

use std::time::{Duration, Instant};

use herald_tests::fixtures::{DEMO, PUBLISH_TOKEN};
use herald_tests::realtime::{configure, RtClient};
use herald_tests::{Connect, Metrics, Node, NodeConfig, Publisher, WsClient};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::MIB;

/// The in-process bus's default byte budget (`bus.memory.max_bytes`).
const BUDGET_MIB: u64 = 64;
/// What the node may grow by besides the bus's budget: the flood's frames in flight and
/// glibc's per-thread arenas, which keep freed chunks (a debug build measured +108 MiB
/// in all after one flood, +132 MiB after two; +89 / +99 MiB with `MALLOC_ARENA_MAX=1`).
const MARGIN_MIB: u64 = 96;
/// The largest publish body: `limits.max_notification_bytes` (1 MiB) + 64 KiB of envelope.
const PUBLISH_LIMIT: u64 = (1 << 20) + 64 * 1024;

/// A memory-bus node taking `/ws` JWTs, its `/ws` rate limit opened wide so a few
/// connections can flood it (the attack is the bus's memory, not the rate limit).
async fn flood_node() -> Node {
    Node::start(
        configure(NodeConfig::memory())
            .set("realtime.ack_wait", "1ms")
            .set("realtime.messages_per_second", 100_000)
            .set("realtime.burst", 100_000),
    )
    .await
}

/// `herald_bus_memory_bytes`: what the in-process bus says it holds.
async fn bus_bytes(node: &Node) -> u64 {
    let text = node
        .http()
        .get(node.http_url("/metrics"))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text");
    Metrics::parse(&text)
        .get("herald_bus_memory_bytes")
        .expect("herald_bus_memory_bytes in /metrics") as u64
}

async fn assert_ready(node: &Node) {
    let ready = node
        .http()
        .get(node.http_url("/readyz"))
        .send()
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status().as_u16(), 200, "the node is still ready");
}

/// `connections` `/ws` sessions each broadcast `per_connection` messages of 60 KiB, each
/// to a topic nobody else uses, then wait until the node has stored them all.
async fn flood_unique_topics(node: &Node, connections: usize, per_connection: usize) {
    let payload = "x".repeat(60 * 1024);
    // Every connection first: a node busy with a flood is slow to answer upgrades.
    let mut clients = Vec::new();
    for c in 0..connections {
        clients.push(RtClient::connect(node, &format!("flooder{c}")).await);
    }
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_connection {
                client
                    .send(
                        "Broadcast",
                        json!({"topic": format!("flood.c{c}.t{i}"), "payload": payload}),
                    )
                    .await;
            }
            // The session handles its messages in order: the Pong means every
            // Broadcast before it was stored.
            let pong = client.request("Ping", json!({})).await;
            assert_eq!(pong["type"], "Pong", "{pong}");
            client.close().await;
        }));
    }
    for task in tasks {
        task.await.expect("flooding client");
    }
}

#[tokio::test]
async fn ws_broadcasts_to_unique_topics_keep_the_memory_bus_within_its_budget() {
    let node = flood_node().await;
    // Warm up the allocator and the session path before the baseline.
    flood_unique_topics(&node, 2, 20).await;
    let before = node.rss_bytes();

    // 8 × 480 × 60 KiB = 225 MiB of events to 3,840 routing keys.
    flood_unique_topics(&node, 8, 480).await;
    let after_flood = node.rss_bytes();
    let grown = after_flood.saturating_sub(before) / MIB;
    eprintln!(
        "RSS {} MiB → {} MiB (+{grown} MiB)",
        before / MIB,
        after_flood / MIB
    );
    assert!(
        grown <= BUDGET_MIB + MARGIN_MIB,
        "225 MiB of broadcasts grew the node by {grown} MiB: more than the bus's \
         {BUDGET_MIB} MiB budget + {MARGIN_MIB} MiB"
    );
    let held = bus_bytes(&node).await;
    assert!(
        held <= BUDGET_MIB * MIB,
        "the bus holds {held} bytes, over its {BUDGET_MIB} MiB budget"
    );

    // The sessions are gone; a second flood finds the budget already full and evicts.
    flood_unique_topics(&node, 8, 480).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_second = node.rss_bytes();
    let grown = after_second.saturating_sub(before) / MIB;
    eprintln!(
        "after a second flood: {} MiB (+{grown} MiB)",
        after_second / MIB
    );
    assert!(
        grown <= BUDGET_MIB + MARGIN_MIB,
        "a second flood grew the node to +{grown} MiB: memory is not bounded"
    );
    let held = bus_bytes(&node).await;
    assert!(
        held <= BUDGET_MIB * MIB,
        "the bus holds {held} bytes, over its {BUDGET_MIB} MiB budget"
    );
    assert_ready(&node).await;
}

#[tokio::test]
async fn since_for_an_event_the_budget_evicted_answers_resync_required() {
    let node = Node::start(NodeConfig::memory()).await;
    let publisher = Publisher::http(&node);
    let mut first = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut first]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    let event = first.next_json().await;
    let seen = event["seq"].as_u64().expect("seq");
    first.close().await;

    // 320 × 240 KiB ≈ 75 MiB to other routing keys: past the 64 MiB budget, so the
    // oldest events (the alias's among them) are evicted.
    let data = "y".repeat(240 * 1024);
    for n in 0..320 {
        let body =
            json!({"subject": format!("herald.v1.topic.filler.t{n}"), "payload": {"data": data}});
        let response = node
            .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(response.status().as_u16(), 202, "filler {n}");
    }

    let mut back = Connect::v1(&node)
        .alias(&DEMO)
        .query("since", &seen.to_string())
        .connect()
        .await;
    let event = back.next_json().await;
    assert_eq!(
        event["event"], "resyncRequired",
        "the events after {seen} may have been evicted: {event}"
    );
    assert_ready(&node).await;
}

#[tokio::test]
async fn direct_messages_to_made_up_users_are_bounded_by_dm_queue_users_max() {
    let node = Node::start(
        configure(NodeConfig::memory())
            .set("realtime.ack_wait", "1ms")
            .set("realtime.dm_queue_users_max", 50),
    )
    .await;
    let mut sender = RtClient::connect(&node, "sender").await;
    for n in 0..50 {
        let answer = sender
            .request(
                "DirectMessage",
                json!({"target_user": format!("ghost{n}"), "payload": n}),
            )
            .await;
        assert_eq!(
            answer["data"]["details"]["queued"], true,
            "ghost{n}: {answer}"
        );
    }
    let refused = sender
        .request(
            "DirectMessage",
            json!({"target_user": "ghost50", "payload": 50}),
        )
        .await;
    assert_eq!(refused["type"], "Error", "{refused}");
    assert_eq!(refused["data"]["code"], 429, "{refused}");
    let message = refused["data"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("realtime.dm_queue_users_max"),
        "the refusal names the limit: {refused}"
    );
    assert_eq!(refused["data"]["details"]["queued"], false, "{refused}");

    // A user who already has a queue still gets more, up to their own limit.
    let more = sender
        .request(
            "DirectMessage",
            json!({"target_user": "ghost0", "payload": "again"}),
        )
        .await;
    assert_eq!(more["data"]["details"]["queued"], true, "{more}");
    assert_ready(&node).await;
}

/// Sends `head` on a fresh connection (plus `body`, if any) and returns the status line
/// and the rest of what the node answered within `wait`.
async fn raw_http(node: &Node, head: &str, body: &[u8], wait: Duration) -> (u16, String) {
    let stream = TcpStream::connect(node.addr()).await.expect("connect");
    let (mut stream, mut writer) = stream.into_split();
    writer.write_all(head.as_bytes()).await.expect("send head");
    // The node may answer and close before it has read the body: sent aside, errors ignored.
    let body = body.to_vec();
    let sending = tokio::spawn(async move {
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&answer);
                // Head and a JSON body that closed: enough to judge.
                if let Some((_, rest)) = text.split_once("\r\n\r\n") {
                    if rest.trim_end().ends_with('}') {
                        break;
                    }
                }
            }
            Ok(Err(e)) => panic!("reading the answer: {e}"),
        }
    }
    sending.abort();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer within {wait:?}: {text:?}"));
    (status, text)
}

fn publish_head(authorization: Option<&str>, content_length: u64) -> String {
    let auth = authorization
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         {auth}Content-Length: {content_length}\r\n\r\n"
    )
}

#[tokio::test]
async fn unauthenticated_publish_gets_401_before_its_body_is_read() {
    let node = Node::start(NodeConfig::memory()).await;
    let before = node.rss_bytes();
    // A declared terabyte, and a body that has only begun: the answer must not wait for it.
    for (auth, declared) in [
        (None, 1u64 << 40),
        (Some("Bearer not-the-token"), 1 << 40),
        (None, 200_000),
    ] {
        let started = Instant::now();
        let (status, text) = raw_http(
            &node,
            &publish_head(auth, declared),
            &[b'{'; 1024],
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(status, 401, "{auth:?}, {declared} bytes declared: {text}");
        assert!(text.contains("publish token"), "{text}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "answered without waiting for the body ({:?})",
            started.elapsed()
        );
    }
    assert!(node.rss_bytes().saturating_sub(before) < 8 * MIB);
    assert_ready(&node).await;
}

#[tokio::test]
async fn a_publish_body_that_trickles_hits_the_deadline_with_408() {
    let node = Node::start(NodeConfig::memory()).await;
    let started = Instant::now();
    let (status, text) = raw_http(
        &node,
        &publish_head(Some(&format!("Bearer {PUBLISH_TOKEN}")), 10_000),
        b"{\"aliasId\":",
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(status, 408, "{text}");
    assert!(
        text.contains("limits.publish_body_timeout"),
        "the answer names the setting: {text}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(9) && waited < Duration::from_secs(15),
        "the default deadline is 10 s; answered after {waited:?}"
    );
    assert_ready(&node).await;
}

#[tokio::test]
async fn publish_bodies_up_to_the_notification_limit_are_taken_and_larger_get_a_json_413() {
    let node = Node::start(NodeConfig::memory()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    Publisher::http(&node)
        .sync_alias(DEMO.id, &mut [&mut client])
        .await;

    // A 1 MiB notification (the documented limit), envelope included.
    let big = "z".repeat((1 << 20) - 1024);
    let body = json!({"aliasId": DEMO.id, "payload": {"event": "newMessage", "data": big}});
    let response = node
        .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(response.status().as_u16(), 202, "a 1 MiB notification");
    let got = next_with_data(&mut client).await;
    assert_eq!(got["data"].as_str().map(str::len), Some(big.len()));

    let two_mib = json!({"aliasId": DEMO.id, "payload": {"event": "newMessage", "data": "z".repeat(2 << 20)}});
    let response = node
        .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&two_mib).unwrap())
        .await;
    assert_eq!(response.status().as_u16(), 413);
    let answer: Value = response.json().await.expect("a JSON 413");
    assert_eq!(answer["limit"], PUBLISH_LIMIT, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains(&PUBLISH_LIMIT.to_string())),
        "{answer}"
    );

    // Chunked, without a Content-Length: cut off at the limit all the same.
    let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {PUBLISH_TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let (status, text) = raw_http(
        &node,
        &head,
        chunk.repeat(40).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(status, 413, "{text}");
    assert_ready(&node).await;
}

/// The next event that carries `data` (sync events skipped).
async fn next_with_data(client: &mut WsClient) -> Value {
    client
        .next_matching("the big event", |e| e.get("data").is_some())
        .await
}

#[tokio::test]
async fn publish_to_control_auth_or_custom_subjects_is_400() {
    let node = Node::start(NodeConfig::memory()).await;
    for subject in [
        "herald.v1.control.revoke",
        "herald.v1.auth.request",
        "herald.v1.custom.x",
    ] {
        let body = json!({"subject": subject, "payload": {"token": "herald-demo-token"}});
        let response = node
            .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&body).unwrap())
            .await;
        assert_eq!(response.status().as_u16(), 400, "{subject}");
        let answer: Value = response.json().await.expect("a JSON 400");
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(subject) && error.contains("herald.v1.alias.<aliasId>.<event>"),
            "says which subjects are allowed: {answer}"
        );
    }
    // Event subjects still go through.
    let body = json!({"subject": "herald.v1.topic.news", "payload": {"type": "Notification"}});
    let response = node
        .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&body).unwrap())
        .await;
    assert_eq!(response.status().as_u16(), 202);
    assert_ready(&node).await;
}

#[tokio::test]
async fn revocation_has_its_own_authenticated_route_on_a_node_without_nats() {
    let node = Node::start(NodeConfig::memory()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    let revoke = |token: &str, body: Value| {
        node.http()
            .post(node.http_url("/v1/revoke"))
            .bearer_auth(token)
            .json(&body)
            .send()
    };
    let response = revoke("not-the-token", json!({"aliasId": DEMO.id}))
        .await
        .expect("POST /v1/revoke");
    assert_eq!(response.status().as_u16(), 401);
    for bad in [json!({}), json!({"aliasId": DEMO.id, "userId": "u"})] {
        let response = revoke(PUBLISH_TOKEN, bad.clone())
            .await
            .expect("POST /v1/revoke");
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        let answer: Value = response.json().await.expect("a JSON 400");
        assert!(
            answer["error"]
                .as_str()
                .is_some_and(|e| e.contains("exactly one")),
            "{answer}"
        );
    }
    let response = revoke(PUBLISH_TOKEN, json!({"aliasId": DEMO.id}))
        .await
        .expect("POST /v1/revoke");
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(client.expect_close().await, Some(4001), "revoked alias");
    assert_ready(&node).await;
}

#[tokio::test]
async fn a_refused_publish_closes_the_connection_instead_of_draining_an_endless_body() {
    let node = Node::start(NodeConfig::memory()).await;
    for auth in [None, Some(format!("Bearer {PUBLISH_TOKEN}"))] {
        let mut stream = TcpStream::connect(node.addr()).await.expect("connect");
        let auth_line = auth
            .as_ref()
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: herald\r\nContent-Type: application/json\r\n\
             {auth_line}Transfer-Encoding: chunked\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.expect("head");
        // Keep sending 64 KiB chunks, 100 a second (past the publish limit when
        // authenticated), and watch for the node hanging up.
        let chunk = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
        let started = Instant::now();
        let mut sent = 0usize;
        let closed = loop {
            if started.elapsed() > Duration::from_secs(6) {
                break false;
            }
            match tokio::time::timeout(
                Duration::from_millis(200),
                stream.write_all(chunk.as_bytes()),
            )
            .await
            {
                Ok(Ok(())) => sent += chunk.len(),
                Ok(Err(_)) => break true,
                Err(_) => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            closed,
            "{auth:?}: the node kept reading a refused body ({} MiB sent)",
            sent >> 20
        );
    }
    assert_ready(&node).await;
}
