//! `/v1/ws` authentication (SPEC §4.1): during the upgrade, by auth frame, anonymous,
//! origins and failed-login blocking.

use std::time::{Duration, Instant};

use herald_tests::fixtures::{API_TOKEN, DEMO, OTHER};
use herald_tests::{Connect, Node, NodeConfig};
use serde_json::json;

use crate::nats_setup;

#[tokio::test]
async fn wrong_password_or_unknown_alias_is_refused_with_401() {
    let node = Node::start(NodeConfig::memory()).await;
    let refusal = Connect::v1(&node)
        .basic(DEMO.address, "not-the-password")
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
    let refusal = Connect::v1(&node)
        .basic("nobody@herald.local", "demo")
        .refused()
        .await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
    // The right password still works afterwards.
    let client = Connect::v1(&node).alias(&DEMO).connect().await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
}

#[tokio::test]
async fn credentials_in_the_query_string_are_refused_with_400() {
    let node = Node::start(NodeConfig::memory()).await;
    for key in ["token", "password", "username"] {
        let refusal = Connect::v1(&node)
            .alias(&DEMO)
            .query(key, "demo")
            .refused()
            .await;
        assert_eq!(refusal.status, 400, "?{key}= must be refused: {refusal:?}");
    }
}

#[tokio::test]
async fn auth_message_with_an_authorization_header_or_an_unknown_auth_mode_is_refused_with_400() {
    let node = Node::start(NodeConfig::memory()).await;
    let refusal = Connect::v1(&node)
        .alias(&DEMO)
        .auth_message()
        .refused()
        .await;
    assert_eq!(refusal.status, 400, "{refusal:?}");
    let refusal = Connect::v1(&node).query("auth", "cookie").refused().await;
    assert_eq!(refusal.status, 400, "{refusal:?}");
}

#[tokio::test]
async fn api_token_connects_only_with_a_valid_alias_id() {
    let node = Node::start(NodeConfig::memory()).await;
    let refusal = Connect::v1(&node).basic(API_TOKEN, "").refused().await;
    assert_eq!(refusal.status, 400, "token without alias_id: {refusal:?}");
    let refusal = Connect::v1(&node).token(API_TOKEN, "").refused().await;
    assert_eq!(
        refusal.status, 400,
        "token with an empty alias_id: {refusal:?}"
    );
    let refusal = Connect::v1(&node)
        .token(API_TOKEN, "not a valid id!")
        .refused()
        .await;
    assert_eq!(
        refusal.status, 400,
        "token with a malformed alias_id: {refusal:?}"
    );

    let client = Connect::v1(&node)
        .token(API_TOKEN, OTHER.id)
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], OTHER.id);
}

#[tokio::test]
async fn a_fragmented_auth_frame_is_put_together() {
    use herald_tests::raw::{opcode, RawFrame};
    use herald_tests::{RawWs, PROMPT};

    let node = Node::start(NodeConfig::memory()).await;
    let mut ws = RawWs::connect(node.addr(), "/v1/ws?auth=message", &[])
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let auth =
        json!({"event": "auth", "username": DEMO.address, "password": DEMO.password}).to_string();
    let (first, rest) = auth.as_bytes().split_at(10);
    let (middle, last) = rest.split_at(10);
    ws.send_fragment(opcode::TEXT, first, false).await;
    ws.send_fragment(opcode::CONTINUATION, middle, false).await;
    // A control frame may come between fragments (RFC 6455 §5.4).
    ws.send_frame(opcode::PING, b"p").await;
    ws.send_fragment(opcode::CONTINUATION, last, true).await;
    let mut frames = Vec::new();
    for _ in 0..2 {
        frames.push(ws.read_frame(PROMPT).await);
    }
    assert!(
        frames.contains(&RawFrame::Frame {
            opcode: opcode::PONG,
            payload: b"p".to_vec()
        }),
        "{frames:?}"
    );
    let hello = frames
        .iter()
        .find_map(|frame| match frame {
            RawFrame::Frame {
                opcode: opcode::TEXT,
                payload,
            } => serde_json::from_slice::<serde_json::Value>(payload).ok(),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no text frame in {frames:?}"));
    assert_eq!(
        (hello["event"].as_str(), &hello["aliasId"]),
        (Some("connected"), &json!(DEMO.id))
    );
}

#[tokio::test]
async fn an_auth_frame_sent_with_the_upgrade_request_is_read_after_the_handshake() {
    use herald_tests::raw::{masked_frame, opcode, RawFrame};
    use herald_tests::{RawWs, PROMPT};

    // One write carries the upgrade request and the auth frame: the node has read the frame
    // with the request's head, before its `101`, and must not lose it in the hand-over.
    let node = Node::start(NodeConfig::memory()).await;
    let auth =
        json!({"event": "auth", "username": DEMO.address, "password": DEMO.password}).to_string();
    let early = masked_frame(0x80 | opcode::TEXT, auth.as_bytes());
    let mut ws = RawWs::connect_with_early_frames(node.addr(), "/v1/ws?auth=message", &[], &early)
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let RawFrame::Frame {
        opcode: kind,
        payload,
    } = ws.read_frame(PROMPT).await
    else {
        panic!("no frame after the handshake");
    };
    assert_eq!(kind, opcode::TEXT);
    let hello: serde_json::Value = serde_json::from_slice(&payload).expect("a JSON frame");
    assert_eq!(
        (hello["event"].as_str(), &hello["aliasId"]),
        (Some("connected"), &json!(DEMO.id))
    );
}

#[tokio::test]
async fn auth_frame_with_good_credentials_connects() {
    let (node, publisher) = crate::memory_setup(|c| c).await;
    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(&json!({"event": "auth", "username": DEMO.address, "password": DEMO.password}))
        .await;
    let hello = client.next_json().await;
    assert_eq!(hello["event"], "connected");
    assert_eq!(hello["aliasId"], DEMO.id);
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    assert_eq!(client.next_json().await["n"], 1);

    let mut by_token = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    by_token
        .send_json(
            &json!({"event": "auth", "username": API_TOKEN, "password": "", "alias_id": OTHER.id}),
        )
        .await;
    let hello = by_token.next_json().await;
    assert_eq!(hello["event"], "connected");
    assert_eq!(hello["aliasId"], OTHER.id);
}

#[tokio::test]
async fn malformed_auth_frame_closes_with_4400() {
    let node = Node::start(NodeConfig::memory()).await;
    for frame in [
        "this is not json",
        r#"{"event":"auth","username":42}"#,
        r#"{"event":"hello"}"#,
    ] {
        let mut client = Connect::v1(&node)
            .auth_message()
            .open()
            .await
            .expect("upgrade");
        client.send_text(frame).await;
        assert_eq!(
            client.expect_close().await,
            Some(4400),
            "auth frame {frame:?}"
        );
    }
}

#[tokio::test]
async fn wrong_password_in_the_auth_frame_closes_with_4401() {
    let node = Node::start(NodeConfig::memory()).await;
    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    client
        .send_json(&json!({"event": "auth", "username": DEMO.address, "password": "wrong"}))
        .await;
    assert_eq!(client.expect_close().await, Some(4401));
}

#[tokio::test]
async fn missing_auth_frame_closes_with_4408_after_the_timeout_and_nothing_before() {
    let node = Node::start(NodeConfig::memory().auth_frame_timeout("1s")).await;
    let started = Instant::now();
    let mut client = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    // expect_close fails on any data frame first: nothing is sent before auth succeeds.
    assert_eq!(
        client.expect_close_within(Duration::from_secs(6)).await,
        Some(4408)
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the 1 s auth_frame_timeout",
        started.elapsed()
    );
}

#[tokio::test]
async fn anonymous_connection_is_refused_with_401_by_default() {
    let node = Node::start(NodeConfig::memory()).await;
    let refusal = Connect::v1(&node).refused().await;
    assert_eq!(refusal.status, 401, "{refusal:?}");
}

#[tokio::test]
async fn anonymous_session_receives_only_broadcasts_when_allowed() {
    let s = nats_setup(|c| c.allow_anonymous(true)).await;
    let mut anonymous = Connect::v1(&s.node).connect().await;
    assert_eq!(
        anonymous.hello["broadcastOnly"], true,
        "hello: {}",
        anonymous.hello
    );
    let mut demo = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut demo]).await;
    s.publisher
        .sync_broadcast(&mut [&mut anonymous, &mut demo])
        .await;

    s.publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    s.publisher
        .broadcast(&json!({"event": "newRelease", "n": 2, "version": "9.9.9"}))
        .await;

    let got = anonymous.next_json().await;
    assert_eq!(got["event"], "newRelease", "anonymous got {got}");
    assert_eq!(got["version"], "9.9.9");
    anonymous.expect_no_event(Duration::from_millis(300)).await;

    let mut seen: Vec<String> = Vec::new();
    for _ in 0..2 {
        seen.push(
            demo.next_json().await["event"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    seen.sort();
    assert_eq!(
        seen,
        ["newMessage", "newRelease"],
        "authenticated sessions get both"
    );
}

#[tokio::test]
async fn origin_outside_the_allow_list_is_refused_with_403() {
    let node = Node::start(NodeConfig::memory().allowed_origins(&["https://app.example"])).await;
    let refusal = Connect::v1(&node)
        .alias(&DEMO)
        .origin("https://evil.example")
        .refused()
        .await;
    assert_eq!(refusal.status, 403, "{refusal:?}");
    let client = Connect::v1(&node)
        .alias(&DEMO)
        .origin("https://app.example")
        .connect()
        .await;
    assert_eq!(client.hello["aliasId"], DEMO.id);
}

#[tokio::test]
async fn repeated_failed_logins_block_the_ip_even_with_the_right_password() {
    let node = Node::start(NodeConfig::memory().failed_logins_per_ip(3)).await;
    for attempt in 1..=3 {
        let refusal = Connect::v1(&node)
            .basic(DEMO.address, "wrong")
            .refused()
            .await;
        assert_eq!(refusal.status, 401, "failed attempt {attempt}: {refusal:?}");
    }
    let refusal = Connect::v1(&node).alias(&DEMO).refused().await;
    assert_eq!(refusal.status, 429, "the IP is blocked: {refusal:?}");
    assert!(
        refusal.retry_after().is_some_and(|s| s > 0),
        "429 needs Retry-After: {refusal:?}"
    );
}
