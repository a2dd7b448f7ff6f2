//! `/jmap/ws` (SPEC §4.2, RFC 8887) with a client speaking RFC 8887 JSON: the `jmap`
//! subprotocol, push enable/disable, StateChange data types and filtering, coalescing,
//! `pushState` resumption on another node, `Request`/`Response` with `Core/echo`, and the
//! RequestErrors for bad input.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_tests::fixtures::DEMO;
use herald_tests::{Connect, Frame, NatsServer, Node, NodeConfig, Publisher, WsClient, PROMPT};
use serde_json::{json, Value};

use crate::{memory_setup, nats_setup};

/// Fast pushes for tests that do not measure coalescing.
fn quick(config: NodeConfig) -> NodeConfig {
    config.set("jmap.coalesce_window", "50ms")
}

/// Opens `/jmap/ws` as the demo alias (Basic auth).
async fn open(node: &Node) -> WsClient {
    Connect::jmap(node)
        .alias(&DEMO)
        .open()
        .await
        .unwrap_or_else(|r| panic!("/jmap/ws upgrade refused: {r:?}"))
}

/// The next JSON frame, or `None` within `timeout`; panics on a close.
async fn next(client: &mut WsClient, timeout: Duration) -> Option<Value> {
    match client.next_frame(timeout).await? {
        Frame::Text(text) => Some(serde_json::from_str(&text).expect("JMAP frames are JSON")),
        other => panic!("expected a JSON frame, got {other:?}"),
    }
}

/// The next StateChange's types for the demo account, and its pushState.
async fn next_change(client: &mut WsClient) -> (BTreeSet<String>, String) {
    let frame = next(client, PROMPT).await.expect("a StateChange in time");
    assert_eq!(frame["@type"], "StateChange", "{frame}");
    let changed = frame["changed"].as_object().expect("changed is an object");
    assert_eq!(changed.len(), 1, "one account: {frame}");
    let types = frame["changed"][DEMO.id]
        .as_object()
        .unwrap_or_else(|| panic!("the account id is the alias id: {frame}"));
    for state in types.values() {
        assert!(state.is_string(), "state strings are strings: {frame}");
    }
    let push_state = frame["pushState"]
        .as_str()
        .expect("pushState is a string")
        .to_owned();
    (types.keys().cloned().collect(), push_state)
}

fn set(types: &[&str]) -> BTreeSet<String> {
    types.iter().map(|t| (*t).to_owned()).collect()
}

/// Enables push and waits until a change published now reaches the session (the node's
/// subscription is in place), then lets the coalescing window pass.
async fn enable_synced(client: &mut WsClient, publisher: &Publisher, data_types: Value) {
    client
        .send_json(&json!({"@type": "WebSocketPushEnable", "dataTypes": data_types}))
        .await;
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        publisher
            .alias_event(
                DEMO.id,
                &json!({"event": "mailboxCreated", "heraldTestSync": true}),
            )
            .await;
        if next(client, Duration::from_millis(300)).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "push never started after WebSocketPushEnable"
        );
    }
    while next(client, Duration::from_millis(300)).await.is_some() {}
}

#[tokio::test]
async fn the_jmap_subprotocol_is_required_and_echoed() {
    let (node, _) = memory_setup(quick).await;
    let refusal = Connect::v1(&node)
        .path("/jmap/ws")
        .alias(&DEMO)
        .refused()
        .await;
    assert_eq!(refusal.status, 400);
    assert!(refusal.body.contains("jmap"), "{}", refusal.body);
    // tungstenite fails the handshake unless the server echoes the offered subprotocol.
    let mut client = open(&node).await;
    client
        .send_json(&json!({"@type": "Request", "using": [], "methodCalls": []}))
        .await;
    assert_eq!(
        next(&mut client, PROMPT).await.unwrap()["@type"],
        "Response"
    );
}

#[tokio::test]
async fn credentials_are_checked_at_the_upgrade() {
    let (node, _) = memory_setup(quick).await;
    assert_eq!(Connect::jmap(&node).refused().await.status, 401);
    assert_eq!(
        Connect::jmap(&node)
            .basic(DEMO.address, "wrong password")
            .refused()
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn new_message_pushes_email_mailbox_thread_and_email_delivery() {
    let setup = nats_setup(quick).await;
    let mut client = open(&setup.node).await;
    enable_synced(&mut client, &setup.publisher, Value::Null).await;
    setup
        .publisher
        .alias_event(
            DEMO.id,
            &json!({"event": "newMessage", "message": {"uid": 1}}),
        )
        .await;
    let (types, push_state) = next_change(&mut client).await;
    assert_eq!(types, set(&["Email", "EmailDelivery", "Mailbox", "Thread"]));
    assert!(push_state.parse::<u64>().is_ok(), "{push_state}");

    // Each type's state is monotonic: a later change gives a greater state.
    setup
        .publisher
        .alias_event(DEMO.id, &json!({"event": "flagsUpdated"}))
        .await;
    let later = next(&mut client, PROMPT).await.unwrap();
    assert!(
        later["changed"][DEMO.id].get("EmailDelivery").is_none(),
        "{later}"
    );
    let state = |v: &Value| v.as_str().unwrap().parse::<u64>().unwrap();
    assert!(state(&later["changed"][DEMO.id]["Email"]) > push_state.parse().unwrap());
}

#[tokio::test]
async fn data_types_filter_pushes_and_disable_stops_them() {
    let setup = nats_setup(quick).await;
    let mut client = open(&setup.node).await;
    enable_synced(&mut client, &setup.publisher, json!(["Mailbox"])).await;
    // labelsUpdated changes only Email: nothing for a Mailbox-only client.
    setup
        .publisher
        .alias_event(DEMO.id, &json!({"event": "labelsUpdated"}))
        .await;
    setup
        .publisher
        .alias_event(DEMO.id, &json!({"event": "contactCreated"}))
        .await;
    setup
        .publisher
        .alias_event(DEMO.id, &json!({"event": "messagesMoved"}))
        .await;
    let (types, _) = next_change(&mut client).await;
    assert_eq!(types, set(&["Mailbox"]));

    client
        .send_json(&json!({"@type": "WebSocketPushDisable"}))
        .await;
    // The echo answer proves the disable was handled before the next publish.
    client
        .send_json(
            &json!({"@type": "Request", "using": [], "methodCalls": [["Core/echo", {}, "c"]]}),
        )
        .await;
    assert_eq!(
        next(&mut client, PROMPT).await.unwrap()["@type"],
        "Response"
    );
    setup
        .publisher
        .alias_event(DEMO.id, &json!({"event": "mailboxRenamed"}))
        .await;
    assert_eq!(next(&mut client, Duration::from_secs(1)).await, None);
}

#[tokio::test]
async fn a_burst_of_flag_changes_is_coalesced_into_few_pushes() {
    let setup = nats_setup(|c| c.set("jmap.coalesce_window", "1s")).await;
    let mut client = open(&setup.node).await;
    enable_synced(&mut client, &setup.publisher, Value::Null).await;
    for uid in 0..100 {
        setup
            .publisher
            .alias_event(DEMO.id, &json!({"event": "flagsUpdated", "uids": [uid]}))
            .await;
    }
    let mut pushes = 0;
    while let Some(frame) = next(&mut client, Duration::from_millis(2_500)).await {
        assert_eq!(frame["@type"], "StateChange");
        pushes += 1;
    }
    assert!(
        (1..=5).contains(&pushes),
        "100 flag changes gave {pushes} pushes"
    );
}

#[tokio::test]
async fn push_state_resumes_on_another_node_with_one_state_change() {
    let nats = NatsServer::start();
    let a = Node::start(quick(NodeConfig::nats(&[nats.url()]))).await;
    let b = Node::start(quick(NodeConfig::nats(&[nats.url()]))).await;
    let publisher = Publisher::nats(&nats.url()).await;

    let mut first = open(&a).await;
    enable_synced(&mut first, &publisher, Value::Null).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage"}))
        .await;
    let (_, push_state) = next_change(&mut first).await;
    first.close().await;

    // Missed while disconnected: a mailbox and a contact change.
    publisher
        .alias_event(DEMO.id, &json!({"event": "mailboxCreated"}))
        .await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "contactUpdated"}))
        .await;

    let mut back = open(&b).await;
    back.send_json(&json!({
        "@type": "WebSocketPushEnable",
        "dataTypes": null,
        "pushState": push_state,
    }))
    .await;
    let (types, resumed) = next_change(&mut back).await;
    assert_eq!(types, set(&["ContactCard", "Mailbox"]));
    assert!(resumed.parse::<u64>().unwrap() > push_state.parse::<u64>().unwrap());
    assert_eq!(
        next(&mut back, Duration::from_millis(500)).await,
        None,
        "one StateChange covers everything missed"
    );
}

#[tokio::test]
async fn a_push_state_older_than_retention_reports_every_type_asked() {
    // A ring of 2 events per key: pushState "1" is gone after five more.
    let (node, publisher) = memory_setup(|c| quick(c).set("bus.memory.ring_size", 2)).await;
    for _ in 0..5 {
        publisher
            .alias_event(DEMO.id, &json!({"event": "flagsUpdated"}))
            .await;
    }
    let mut client = open(&node).await;
    client
        .send_json(&json!({
            "@type": "WebSocketPushEnable",
            "dataTypes": ["Email", "CalendarEvent"],
            "pushState": "1",
        }))
        .await;
    let (types, _) = next_change(&mut client).await;
    assert_eq!(types, set(&["CalendarEvent", "Email"]));

    // A pushState that is not one of ours is treated the same way.
    let mut other = open(&node).await;
    other
        .send_json(&json!({
            "@type": "WebSocketPushEnable",
            "dataTypes": ["AddressBook"],
            "pushState": "not-a-state",
        }))
        .await;
    let (types, _) = next_change(&mut other).await;
    assert_eq!(types, set(&["AddressBook"]));
}

#[tokio::test]
async fn requests_are_answered_and_bad_input_gets_request_errors() {
    let (node, _) = memory_setup(|c| quick(c).set("jmap.max_frame_bytes", 2048)).await;
    let mut client = open(&node).await;
    client
        .send_json(&json!({
            "@type": "Request",
            "id": "req-1",
            "using": ["urn:ietf:params:jmap:core"],
            "methodCalls": [["Core/echo", {"ping": [1, 2]}, "c1"], ["Mailbox/get", {}, "c2"]],
        }))
        .await;
    let response = next(&mut client, PROMPT).await.unwrap();
    assert_eq!(response["@type"], "Response");
    assert_eq!(response["requestId"], "req-1");
    assert_eq!(
        response["methodResponses"],
        json!([
            ["Core/echo", {"ping": [1, 2]}, "c1"],
            ["error", {"type": "unknownMethod"}, "c2"]
        ])
    );

    let error_type = |v: Value| {
        assert_eq!(v["@type"], "RequestError", "{v}");
        assert_eq!(v["status"], 400, "{v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{v}");
        v["type"].as_str().unwrap().to_owned()
    };
    client.send_text("{this is not json").await;
    assert_eq!(
        error_type(next(&mut client, PROMPT).await.unwrap()),
        "urn:ietf:params:jmap:error:notJSON"
    );
    client.send_json(&json!({"@type": "Request"})).await;
    assert_eq!(
        error_type(next(&mut client, PROMPT).await.unwrap()),
        "urn:ietf:params:jmap:error:notRequest"
    );
    let calls: Vec<Value> = (0..17)
        .map(|i| json!(["Core/echo", {}, i.to_string()]))
        .collect();
    client
        .send_json(&json!({"@type": "Request", "using": [], "methodCalls": calls}))
        .await;
    let limit = next(&mut client, PROMPT).await.unwrap();
    assert_eq!(limit["limit"], "maxCallsInRequest");
    assert_eq!(error_type(limit), "urn:ietf:params:jmap:error:limit");

    // Over maxSizeRequest: a limit error, then the socket closes with 1009.
    client.send_text(&format!("\"{}\"", "x".repeat(4096))).await;
    let too_big = next(&mut client, PROMPT).await.unwrap();
    assert_eq!(too_big["limit"], "maxSizeRequest");
    assert_eq!(client.expect_close().await, Some(1009));
}
