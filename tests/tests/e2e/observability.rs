//! `/metrics` (SPEC §7) moves as deliveries happen, and logs never carry secrets, even at
//! `log.level = "debug"`.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine;
use herald_protocol::Event;
use herald_tests::fixtures::{payload_for, DEMO};
use herald_tests::node::herald_binary;
use herald_tests::{Connect, Node, NodeConfig};
use serde_json::json;
use toml::{Table, Value};

use crate::memory_setup;

/// Every series SPEC §7 lists, present from the start (at zero).
const SPEC_SERIES: &[&str] = &[
    "herald_sessions",
    "herald_events_received_total",
    "herald_events_delivered_total",
    "herald_events_dropped_total",
    "herald_delivery_latency_seconds_count",
    "herald_slow_consumers_total",
    "herald_auth_failures_total",
    "herald_bus_connected",
    "herald_events_replayed_total",
];

#[tokio::test]
async fn metrics_count_receipts_deliveries_socket_write_latency_and_replays() {
    let (node, publisher) = memory_setup(|c| c).await;
    // The latency histogram appears with its first observation; the rest at once.
    let start = node.metrics().await;
    for name in SPEC_SERIES.iter().filter(|n| !n.contains("latency")) {
        assert!(
            start.has(name),
            "{name} missing from a fresh node's /metrics"
        );
    }
    let mut json_client = Connect::v1(&node).alias(&DEMO).connect().await;
    let mut msgpack_client = Connect::v1(&node).alias(&DEMO).msgpack().connect().await;
    publisher
        .sync_alias(DEMO.id, &mut [&mut json_client, &mut msgpack_client])
        .await;
    let before = node.metrics().await;

    const EVENTS: usize = 5;
    for n in 0..EVENTS {
        publisher
            .alias_event(DEMO.id, &payload_for(Event::NewMessage, n))
            .await;
    }
    let mut first_seq = None;
    for _ in 0..EVENTS {
        let event = json_client.next_json().await;
        first_seq = first_seq.or(event["seq"].as_u64());
        msgpack_client.next_msgpack().await;
    }
    let expect = |name: &str, delta: usize| {
        let target = before.sum(name) + delta as f64;
        let node = &node;
        let name = name.to_owned();
        async move {
            node.wait_metric(&name, &format!("{name} = {target}"), |v| v == target)
                .await
        }
    };
    expect("herald_events_received_total", EVENTS).await;
    expect("herald_events_delivered_total", 2 * EVENTS).await;
    // One latency observation per socket write: two sessions, five events.
    expect("herald_delivery_latency_seconds_count", 2 * EVENTS).await;
    // One bus-delay observation per live event reaching the alias's one registry.
    expect("herald_bus_delay_seconds_count", EVENTS).await;

    let since = first_seq.expect("events carry seq") - 1;
    let mut late = Connect::v1(&node)
        .alias(&DEMO)
        .query("since", &since.to_string())
        .connect()
        .await;
    for n in 0..EVENTS {
        assert_eq!(late.next_json().await["n"], n, "replayed in order");
    }
    expect("herald_events_replayed_total", EVENTS).await;
    node.wait_metric("herald_sessions", "3 sessions", |v| v == 3.0)
        .await;
    let sessions = node.metrics().await;
    assert_eq!(
        sessions.get("herald_sessions{dialect=\"v1\"}"),
        Some(3.0),
        "{sessions:?}"
    );
    assert_eq!(sessions.sum("herald_bus_connected"), 1.0);

    let refusal = Connect::v1(&node)
        .basic(DEMO.address, "not-the-password")
        .refused()
        .await;
    assert_eq!(refusal.status, 401);
    expect("herald_auth_failures_total", 1).await;
    let end = node.metrics().await;
    for name in SPEC_SERIES {
        assert!(end.has(name), "{name} missing from /metrics");
    }
}

/// Distinctive secrets: none may appear in the node's output, in any form.
const PASSWORD: &str = "pw-E2E-never-logged-7f3a";
const WRONG_PASSWORD: &str = "pw-E2E-wrong-never-logged-91c2";
const API_TOKEN: &str = "tok-E2E-never-logged-5d8e";
const PUBLISH_TOKEN: &str = "pub-E2E-never-logged-c4b0";
const JWT_SECRET: &str = "jwt-E2E-never-logged-2a6f";
const ALIAS: &str = "secret-test@herald.local";
const ALIAS_ID: &str = "5ec7e75ec7e75ec7e75ec7e7";

/// `herald hash-password` for `password`.
fn hash(password: &str) -> String {
    let mut child = Command::new(herald_binary())
        .arg("hash-password")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("herald hash-password starts");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write password");
    let output = child.wait_with_output().expect("hash-password exits");
    assert!(output.status.success(), "hash-password failed");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

fn table(pairs: &[(&str, Value)]) -> Value {
    Value::Table(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect::<Table>(),
    )
}

#[tokio::test]
async fn debug_logs_never_contain_passwords_or_tokens() {
    let alias = table(&[
        ("alias", ALIAS.into()),
        ("id", ALIAS_ID.into()),
        ("password_hash", hash(PASSWORD).into()),
    ]);
    let token = table(&[
        ("token", API_TOKEN.into()),
        ("alias_ids", Value::Array(vec![ALIAS_ID.into()])),
    ]);
    let config = NodeConfig::memory()
        .set("log.level", "debug")
        // RUST_LOG (if the developer has one) must not lower the level under test.
        .env("RUST_LOG", "")
        .set("auth.static.aliases", Value::Array(vec![alias]))
        .set("auth.static.tokens", Value::Array(vec![token]))
        .set(
            "auth.publish_tokens",
            Value::Array(vec![PUBLISH_TOKEN.into()]),
        )
        .set("auth.jwt.secret", JWT_SECRET);
    let node = Node::start(config).await;

    let refusal = Connect::v1(&node)
        .basic(ALIAS, WRONG_PASSWORD)
        .refused()
        .await;
    assert_eq!(refusal.status, 401);
    let mut by_password = Connect::v1(&node).basic(ALIAS, PASSWORD).connect().await;
    let mut by_token = Connect::v1(&node)
        .token(API_TOKEN, ALIAS_ID)
        .connect()
        .await;
    let mut by_frame = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    by_frame
        .send_json(&json!({"event": "auth", "username": ALIAS, "password": PASSWORD}))
        .await;
    assert_eq!(by_frame.next_json().await["event"], "connected");
    let mut bad_frame = Connect::v1(&node)
        .auth_message()
        .open()
        .await
        .expect("upgrade");
    bad_frame
        .send_json(&json!({"event": "auth", "username": ALIAS, "password": WRONG_PASSWORD}))
        .await;
    bad_frame.expect_close().await;

    let response = node
        .publish_raw(
            PUBLISH_TOKEN,
            serde_json::to_vec(
                &json!({"aliasId": ALIAS_ID, "payload": {"event": "newMessage", "uid": 1}}),
            )
            .expect("encodes"),
        )
        .await;
    assert_eq!(response.status().as_u16(), 202);
    for client in [&mut by_password, &mut by_token, &mut by_frame] {
        assert_eq!(client.next_json().await["uid"], 1);
    }
    // A refused publish token is logged (if at all) without its value.
    let response = node.publish_raw(WRONG_PASSWORD, b"{}".to_vec()).await;
    assert_eq!(response.status().as_u16(), 401);

    let logs = node.logs().join("\n");
    for line in ["login accepted", "login refused"] {
        assert!(
            logs.lines()
                .any(|l| l.contains("DEBUG") && l.contains(line)),
            "the node logs {line:?} at debug level (else this test proves little):\n{logs}"
        );
    }
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    let forms = [
        PASSWORD.to_owned(),
        WRONG_PASSWORD.to_owned(),
        API_TOKEN.to_owned(),
        PUBLISH_TOKEN.to_owned(),
        JWT_SECRET.to_owned(),
        b64(format!("{ALIAS}:{PASSWORD}")),
        b64(format!("{ALIAS}:{WRONG_PASSWORD}")),
        b64(format!("{API_TOKEN}:")),
    ];
    for secret in forms {
        assert!(
            !logs.contains(&secret),
            "a secret ({secret}) is in the node's logs:\n{logs}"
        );
    }
}
