//! Limits and session lifecycle (SPEC §4.1, §6): caps, rates, frame size, keepalive,
//! and registries released when clients leave.

use std::time::{Duration, Instant};

use herald_tests::client::basic_auth;
use herald_tests::fixtures::{DEMO, OTHER};
use herald_tests::raw::{opcode, RawFrame};
use herald_tests::{eventually, Connect, Frame, Node, NodeConfig, RawWs, PROMPT};
use serde_json::json;

use crate::memory_setup;

#[tokio::test]
async fn alias_at_its_session_cap_is_refused_with_429_and_retry_after() {
    let node = Node::start(NodeConfig::memory().max_sessions_per_alias(2)).await;
    let first = Connect::v1(&node).alias(&DEMO).connect().await;
    let _second = Connect::v1(&node).alias(&DEMO).connect().await;

    let refusal = Connect::v1(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 429, "{refusal:?}");
    assert!(
        refusal.retry_after().is_some_and(|s| s > 0),
        "429 needs Retry-After: {refusal:?}"
    );

    let mut by_frame = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    by_frame
        .send_json(&json!({"event": "auth", "username": DEMO.address, "password": DEMO.password}))
        .await;
    assert_eq!(
        by_frame.expect_close().await,
        Some(4429),
        "?auth=message at the cap"
    );

    let other = Connect::v1(&node).alias(&OTHER).connect().await;
    assert_eq!(other.hello["aliasId"], OTHER.id, "the cap is per alias");

    first.close().await;
    eventually(
        PROMPT,
        "a session slot to free up after a client left",
        || async { Connect::v1(&node).alias(&DEMO).open().await.ok() },
    )
    .await;
}

#[tokio::test]
async fn full_node_refuses_upgrades_with_503_and_retry_after_60() {
    let node = Node::start(NodeConfig::memory().max_sessions_total(2)).await;
    let _a = Connect::v1(&node).alias(&DEMO).connect().await;
    let _b = Connect::v1(&node).alias(&OTHER).connect().await;
    let refusal = Connect::v1(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 503, "{refusal:?}");
    assert_eq!(refusal.retry_after(), Some(60), "{refusal:?}");
}

#[tokio::test]
async fn connection_rate_per_ip_is_limited_with_429() {
    let node = Node::start(NodeConfig::memory().connections_per_ip_per_minute(3)).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Connect::v1(&node).alias(&DEMO).connect().await);
    }
    let refusal = Connect::v1(&node).alias(&OTHER).refused().await;
    assert_eq!(
        refusal.status, 429,
        "4th connection in a minute: {refusal:?}"
    );
    assert!(
        refusal.retry_after().is_some_and(|s| s > 0),
        "429 needs Retry-After: {refusal:?}"
    );
}

#[tokio::test]
async fn sixth_pending_auth_frame_session_per_ip_is_refused_with_429() {
    let node = Node::start(NodeConfig::memory()).await;
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(
            Connect::v1(&node)
                .auth_message()
                .open()
                .await
                .expect("upgrade"),
        );
    }
    let refusal = Connect::v1(&node).auth_message().refused().await;
    assert_eq!(refusal.status, 429, "{refusal:?}");
}

#[tokio::test]
async fn client_frames_are_ignored_but_one_over_1_kib_closes_with_1009() {
    let (node, publisher) = memory_setup(|c| c).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    client.send_text("hello, herald").await;
    client
        .send_json(&json!({"event": "newMessage", "n": 99}))
        .await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    assert_eq!(
        client.next_json().await["n"],
        1,
        "small client frames are ignored"
    );

    client.send_text(&"x".repeat(2048)).await;
    assert_eq!(client.expect_close().await, Some(1009));
}

#[tokio::test]
async fn keepalive_closes_a_client_that_stops_answering_pings() {
    let node = Node::start(NodeConfig::memory().ping_interval("1s")).await;
    let auth = basic_auth(DEMO.address, DEMO.password);
    let mut raw = RawWs::connect(node.addr(), "/v1/ws", &[("Authorization", &auth)])
        .await
        .expect("upgrade");

    let started = Instant::now();
    let mut protocol_pings = 0;
    let mut app_pings = 0;
    let deadline = started + Duration::from_secs(8);
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match raw.read_frame(left).await {
            RawFrame::Frame {
                opcode: opcode::PING,
                ..
            } => protocol_pings += 1,
            RawFrame::Frame {
                opcode: opcode::TEXT,
                payload,
            } => {
                let event: serde_json::Value = serde_json::from_slice(&payload).expect("JSON");
                if event["event"] == "ping" {
                    app_pings += 1;
                }
            }
            end @ RawFrame::Frame {
                opcode: opcode::CLOSE,
                ..
            } => break end,
            RawFrame::Frame { .. } => {}
            other => break other,
        }
    };
    let elapsed = started.elapsed();
    assert!(
        matches!(end, RawFrame::Frame { opcode: opcode::CLOSE, .. } | RawFrame::Eof),
        "a silent client must be disconnected within a few ping intervals, got {end:?} after {elapsed:?}"
    );
    assert!(protocol_pings >= 1, "the server sends protocol pings");
    assert!(
        app_pings >= 1,
        "the server sends {{\"event\":\"ping\"}} frames"
    );
    assert!(
        elapsed >= Duration::from_millis(900),
        "closed too early: {elapsed:?}"
    );
    if let Some(code) = end.close_code() {
        assert_eq!(
            code, 1008,
            "keepalive timeout close code (docs/INTERFACES.md)"
        );
    }
}

#[tokio::test]
async fn keepalive_keeps_a_client_that_answers_pings() {
    let (node, publisher) = memory_setup(|c| c.ping_interval("1s")).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    let started = Instant::now();
    let mut app_pings = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        let left = Duration::from_millis(3500).saturating_sub(started.elapsed());
        match client.next_frame(left).await {
            None => break,
            Some(Frame::Text(text)) => {
                let event: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                assert_eq!(
                    event["event"], "ping",
                    "only keepalives expected, got {event}"
                );
                app_pings += 1;
            }
            Some(other) => panic!("an answering client must stay connected, got {other:?}"),
        }
    }
    assert!(
        app_pings >= 2,
        "expected a ping per second, got {app_pings} in 3.5 s"
    );
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    assert_eq!(client.next_json().await["n"], 1);
}
