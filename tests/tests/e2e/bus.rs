//! The NATS bus as producers see it (SPEC §3): envelopes in MessagePack or JSON, garbage
//! skipped and counted, readiness following the NATS connection.

use std::time::Duration;

use herald_protocol::Event;
use herald_tests::fixtures::{assert_payload_intact, payload_for, DEMO, EML};
use herald_tests::publisher::alias_subject;
use herald_tests::{eventually, Connect, NatsServer, Node, NodeConfig, Publisher};
use serde_json::json;

use crate::nats_setup;

#[tokio::test]
async fn json_envelope_with_content_type_header_is_delivered_like_msgpack() {
    let s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    let payload = payload_for(Event::NewMessage, 1);
    s.publisher.alias_event_json(DEMO.id, &payload).await;
    let got = client.next_json().await;
    assert_payload_intact(&payload, &got);
    assert_eq!(got["message"]["eml"], EML);
}

#[tokio::test]
async fn garbage_on_the_bus_is_counted_and_does_not_disturb_the_next_event() {
    let s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    let before = s.node.metric("herald_bus_decode_errors_total").await;

    let subject = alias_subject(DEMO.id, "newMessage");
    s.publisher
        .raw(&subject, b"\xc1\xc1 not msgpack".to_vec(), false)
        .await;
    s.publisher
        .raw(&subject, b"{\"aliasId\": ".to_vec(), true)
        .await;
    let wrong_shape = rmp_serde::to_vec_named(&json!([1, 2, 3])).expect("encodes");
    s.publisher.raw(&subject, wrong_shape, false).await;

    let good = json!({"event": "newMessage", "n": 1, "message": {"eml": EML}});
    s.publisher.alias_event(DEMO.id, &good).await;
    let got = client.next_json().await;
    assert_payload_intact(&good, &got);

    s.node
        .wait_metric(
            "herald_bus_decode_errors_total",
            "three more bus decode errors",
            |v| v >= before + 3.0,
        )
        .await;
    eventually(
        Duration::from_secs(5),
        "a log line naming the subject of the bad body",
        || async {
            s.node
                .logs()
                .iter()
                .any(|l| l.contains(&subject))
                .then_some(())
        },
    )
    .await;
    client.expect_no_event(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn readyz_is_503_until_nats_comes_up_then_200_and_events_flow() {
    let mut nats = NatsServer::new(); // port chosen, not started
    let node = Node::start(NodeConfig::nats(&[nats.url()])).await;
    assert_eq!(node.get_status("/healthz").await, 200, "alive without NATS");
    assert_eq!(
        node.get_status("/readyz").await,
        503,
        "not ready without NATS"
    );

    nats.run();
    eventually(
        Duration::from_secs(30),
        "/readyz 200 after NATS came up",
        || async { (node.get_status("/readyz").await == 200).then_some(()) },
    )
    .await;

    let publisher = Publisher::nats(&nats.url()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    let payload = payload_for(Event::ContactCreated, 1);
    publisher.alias_event(DEMO.id, &payload).await;
    assert_payload_intact(&payload, &client.next_json().await);
}

#[tokio::test]
async fn bus_connected_gauge_reads_0_while_nats_is_down_and_1_once_up() {
    let mut nats = NatsServer::new(); // port chosen, not started
    let node = Node::start(NodeConfig::nats(&[nats.url()])).await;
    let down = node.metrics().await.get("herald_bus_connected");
    assert_eq!(down, Some(0.0), "herald_bus_connected while NATS is down");
    nats.run();
    eventually(
        Duration::from_secs(30),
        "herald_bus_connected 1",
        || async { (node.metrics().await.get("herald_bus_connected") == Some(1.0)).then_some(()) },
    )
    .await;
}

/// A NATS server that speaks just enough of the protocol for a client to connect
/// (INFO, then PONG to every PING) and announces `version`; answers nothing else, as
/// herald must not get as far as asking.
async fn fake_nats(version: &str) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let info = format!(
        "INFO {}\r\n",
        json!({"server_id": "FAKE", "server_name": "fake", "version": version, "proto": 1,
               "go": "go1.19", "host": "127.0.0.1", "port": port, "headers": true,
               "max_payload": 1_048_576, "jetstream": true})
    );
    let task = tokio::spawn(async move {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                return;
            };
            let info = info.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                if write.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(read).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line == "PING" && write.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (format!("nats://127.0.0.1:{port}"), task)
}

#[tokio::test]
async fn a_nats_server_older_than_2_10_keeps_readyz_503_and_says_which_version() {
    let (url, server) = fake_nats("2.9.10").await;
    let node = Node::start(NodeConfig::nats(&[url.as_str()])).await;
    let needed = "needs nats-server 2.10.0 or newer";
    eventually(
        herald_tests::PROMPT,
        "the log naming the found and the needed version",
        || async {
            node.logs()
                .iter()
                .any(|l| l.contains("2.9.10") && l.contains(needed))
                .then_some(())
        },
    )
    .await;
    let response = node
        .http()
        .get(node.http_url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body = response.text().await.unwrap();
    assert!(body.contains("2.9.10") && body.contains(needed), "{body}");
    server.abort();
}
