//! `POST /v1/publish` (SPEC §2): 202 with the notification id and seq, 401, 400.

use herald_tests::fixtures::{DEMO, PUBLISH_TOKEN};
use herald_tests::{Connect, Node, NodeConfig, Publisher};
use serde_json::{json, Value};

#[tokio::test]
async fn http_publish_answers_202_and_the_client_gets_that_notification() {
    let node = Node::start(NodeConfig::memory()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    Publisher::http(&node)
        .sync_alias(DEMO.id, &mut [&mut client])
        .await;

    let envelope = json!({"aliasId": DEMO.id, "payload": {"event": "newMessage", "n": 1}});
    let response = node
        .publish_raw(PUBLISH_TOKEN, serde_json::to_vec(&envelope).unwrap())
        .await;
    assert_eq!(response.status().as_u16(), 202);
    let answer: Value = response.json().await.expect("a JSON answer");
    let id = answer["notificationId"]
        .as_str()
        .expect("notificationId in the answer");
    assert!(answer["seq"].is_u64(), "seq in the answer: {answer}");

    let got = client.next_json().await;
    assert_eq!(got["n"], 1);
    assert_eq!(got["notificationId"], id);
    assert_eq!(
        got["seq"], answer["seq"],
        "the delivered seq is the one answered"
    );
}

#[tokio::test]
async fn http_publish_with_a_bad_token_is_401_and_publishes_nothing() {
    let node = Node::start(NodeConfig::memory()).await;
    let publisher = Publisher::http(&node);
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    let body = serde_json::to_vec(
        &json!({"aliasId": DEMO.id, "payload": {"event": "newMessage", "n": 1}}),
    )
    .unwrap();
    let response = node.publish_raw("not-the-token", body.clone()).await;
    assert_eq!(response.status().as_u16(), 401);
    let response = node
        .http()
        .post(node.http_url("/v1/publish"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 401, "no Authorization header");

    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 2}))
        .await;
    assert_eq!(
        client.next_json().await["n"],
        2,
        "the refused publishes delivered nothing"
    );
}

#[tokio::test]
async fn http_publish_with_a_bad_body_is_400_with_the_reason() {
    let node = Node::start(NodeConfig::memory()).await;
    let bad_bodies: [(&str, Vec<u8>); 5] = [
        ("not JSON", b"{not json".to_vec()),
        (
            "no payload",
            serde_json::to_vec(&json!({"aliasId": DEMO.id})).unwrap(),
        ),
        (
            "unknown event",
            serde_json::to_vec(&json!({"aliasId": DEMO.id, "payload": {"event": "noSuchEvent"}}))
                .unwrap(),
        ),
        (
            "aliasId not a subject token",
            serde_json::to_vec(&json!({"aliasId": "a.b>", "payload": {"event": "newMessage"}}))
                .unwrap(),
        ),
        (
            "payload not a map",
            serde_json::to_vec(&json!({"aliasId": DEMO.id, "payload": [1, 2]})).unwrap(),
        ),
    ];
    for (what, body) in bad_bodies {
        let response = node.publish_raw(PUBLISH_TOKEN, body).await;
        assert_eq!(response.status().as_u16(), 400, "{what}");
        let answer: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: body not JSON: {e}"));
        let reason = answer["error"].as_str().unwrap_or_default();
        assert!(!reason.is_empty(), "{what}: 400 must say why: {answer}");
    }
}

/// Publishes `envelope` with an `Idempotency-Key`, returning the JSON answer.
async fn publish_idempotent(node: &Node, envelope: &Value, key: &str) -> Value {
    let response = node
        .http()
        .post(node.http_url("/v1/publish"))
        .bearer_auth(PUBLISH_TOKEN)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(serde_json::to_vec(envelope).unwrap())
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status().as_u16(), 202);
    response.json().await.expect("a JSON answer")
}

async fn retried_publish_with_the_same_idempotency_key_is_delivered_once(node: Node) {
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    Publisher::http(&node)
        .sync_alias(DEMO.id, &mut [&mut client])
        .await;
    let envelope = json!({"aliasId": DEMO.id, "payload": {"event": "newMessage", "n": 1}});
    let first = publish_idempotent(&node, &envelope, "order-42").await;
    let retry = publish_idempotent(&node, &envelope, "order-42").await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(
        retry["seq"], first["seq"],
        "the retry answers the original seq"
    );
    assert_eq!(retry["notificationId"], first["notificationId"]);
    let other = publish_idempotent(&node, &envelope, "order-43").await;
    assert_eq!(
        other["duplicate"], false,
        "another key is another event: {other}"
    );

    let got = client.next_json().await;
    assert_eq!(got["notificationId"], first["notificationId"]);
    let next = client.next_json().await;
    assert_eq!(
        next["notificationId"], other["notificationId"],
        "the retry was not delivered: the next event is the other key's"
    );
}

#[tokio::test]
async fn retried_publish_with_the_same_idempotency_key_is_delivered_once_on_memory_bus() {
    retried_publish_with_the_same_idempotency_key_is_delivered_once(
        Node::start(NodeConfig::memory()).await,
    )
    .await;
}

#[tokio::test]
async fn retried_publish_with_the_same_idempotency_key_is_delivered_once_on_nats() {
    let nats = herald_tests::NatsServer::start();
    retried_publish_with_the_same_idempotency_key_is_delivered_once(
        Node::start(NodeConfig::nats(&[nats.url()])).await,
    )
    .await;
}
