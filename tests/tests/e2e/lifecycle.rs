//! Sessions and nodes over time (SPEC §5, §6): registries released when clients leave,
//! slow consumers cut off without delaying others, NATS restarts, graceful shutdown.

use std::time::Duration;

use herald_tests::client::basic_auth;
use herald_tests::fixtures::{DEMO, OTHER};
use herald_tests::raw::{opcode, RawFrame};
use herald_tests::{eventually, Connect, Node, NodeConfig, RawWs, PROMPT};
use serde_json::json;

use crate::nats_setup;

#[tokio::test]
async fn registry_count_returns_to_zero_after_every_client_leaves() {
    let s = nats_setup(|c| c).await;
    assert_eq!(
        s.node.metric("herald_registries").await,
        0.0,
        "no client, no registry"
    );
    let polite = Connect::v1(&s.node).alias(&DEMO).connect().await;
    let mut abrupt = Connect::v1(&s.node).alias(&DEMO).connect().await;
    let other = Connect::v1(&s.node).alias(&OTHER).msgpack().connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut abrupt]).await;

    s.node
        .wait_metric("herald_sessions", "3 sessions in /metrics", |v| v == 3.0)
        .await;
    let live = s.node.metric("herald_registries").await;
    assert!(
        live >= 1.0,
        "registries must exist while clients are connected, got {live}"
    );

    polite.close().await;
    other.close().await;
    drop(abrupt); // TCP closed without a close frame
    s.node
        .wait_metric("herald_registries", "herald_registries back to 0", |v| {
            v == 0.0
        })
        .await;
    s.node
        .wait_metric("herald_sessions", "herald_sessions back to 0", |v| v == 0.0)
        .await;
}

#[tokio::test]
async fn slow_consumer_is_disconnected_without_delaying_other_sessions() {
    let s = nats_setup(|c| c.max_buffered_bytes(512 * 1024)).await;
    let auth = basic_auth(DEMO.address, DEMO.password);
    let mut slow = RawWs::connect_slow(s.node.addr(), "/v1/ws", &[("Authorization", &auth)])
        .await
        .expect("upgrade");
    let mut healthy = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut healthy]).await;

    // 200 events of 32 KiB, in batches the healthy client keeps up with (at most
    // 320 KiB queued for it), while the slow one never reads: 6.4 MiB for it.
    const EVENTS: u64 = 200;
    const BATCH: u64 = 10;
    let filler = "x".repeat(32 * 1024);
    for batch in 0..EVENTS / BATCH {
        for n in batch * BATCH..(batch + 1) * BATCH {
            let payload = json!({"event": "newMessage", "n": n, "filler": filler});
            s.publisher.alias_event(DEMO.id, &payload).await;
        }
        for n in batch * BATCH..(batch + 1) * BATCH {
            let got = healthy.next_json().await;
            assert_eq!(got["n"], n, "the healthy session gets every event in order");
        }
    }

    s.node
        .wait_metric(
            "herald_slow_consumers_total",
            "a slow consumer counted",
            |v| v >= 1.0,
        )
        .await;
    // The slow client now reads what was buffered for it: the stream ends before all
    // events, with close 1013 when the server could still send a close frame.
    let mut data_frames = 0;
    let end = loop {
        match slow.read_frame(PROMPT).await {
            RawFrame::Frame {
                opcode: opcode::TEXT | opcode::BINARY,
                ..
            } => data_frames += 1,
            end @ RawFrame::Frame {
                opcode: opcode::CLOSE,
                ..
            } => break end,
            RawFrame::Frame { .. } => {}
            other => break other,
        }
    };
    assert!(
        matches!(end, RawFrame::Frame { .. } | RawFrame::Eof),
        "the slow consumer must be disconnected, got {end:?} after {data_frames} frames"
    );
    assert!(
        data_frames < EVENTS,
        "the slow consumer was cut off, not fed all {EVENTS} events"
    );
    if let Some(code) = end.close_code() {
        assert_eq!(code, 1013, "slow consumer close code (docs/INTERFACES.md)");
    }
}

#[tokio::test]
async fn delivery_resumes_after_nats_restarts() {
    let mut s = nats_setup(|c| c).await;
    let mut client = Connect::v1(&s.node).alias(&DEMO).connect().await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    s.publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    assert_eq!(client.next_json().await["n"], 1);

    s.nats.restart();
    eventually(
        Duration::from_secs(30),
        "/readyz 200 after the NATS restart",
        || async { (s.node.get_status("/readyz").await == 200).then_some(()) },
    )
    .await;
    // A fresh producer connection: the old one reconnects on its own schedule.
    s.publisher = herald_tests::Publisher::nats(&s.nats.url()).await;
    s.publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    s.publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 2}))
        .await;
    assert_eq!(client.next_json().await["n"], 2);
}

#[tokio::test]
async fn sigterm_drains_sessions_with_1001_refuses_new_ones_and_exits_0() {
    let mut node = Node::start(NodeConfig::memory().set("shutdown.drain_seconds", 3)).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    node.terminate();

    eventually(
        Duration::from_secs(3),
        "/readyz 503 while draining",
        || async {
            let status = node
                .http()
                .get(node.http_url("/readyz"))
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16());
            (status == Some(503)).then_some(())
        },
    )
    .await;
    let late = Connect::v1(&node).alias(&OTHER).try_open().await;
    assert!(
        !matches!(late, Ok(Ok(_))),
        "a new upgrade during the drain must be refused"
    );

    assert_eq!(
        client.expect_close_within(Duration::from_secs(8)).await,
        Some(1001)
    );
    let status = node.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "herald must exit 0 after the drain, got {status:?}"
    );
}

/// A drain window long enough that a node sleeping through it fails the tests below.
const LONG_DRAIN_SECONDS: i64 = 30;

#[tokio::test]
async fn a_node_without_sessions_exits_well_before_the_drain_window_ends() {
    let mut node =
        Node::start(NodeConfig::memory().set("shutdown.drain_seconds", LONG_DRAIN_SECONDS)).await;
    let asked = std::time::Instant::now();
    node.terminate();
    let status = node.wait_exit(PROMPT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "no session to drain: herald exits 0 at once, not after {LONG_DRAIN_SECONDS} s; got {status:?} after {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn a_node_whose_sessions_all_leave_exits_well_before_the_drain_window_ends() {
    let mut node =
        Node::start(NodeConfig::memory().set("shutdown.drain_seconds", LONG_DRAIN_SECONDS)).await;
    let v1 = Connect::v1(&node).alias(&DEMO).connect().await;
    let jmap = Connect::jmap(&node)
        .alias(&OTHER)
        .open()
        .await
        .expect("/jmap/ws upgrade");
    let asked = std::time::Instant::now();
    node.terminate();
    // Clients that reconnect elsewhere as soon as /readyz turns 503, as behind a balancer.
    v1.close().await;
    jmap.close().await;
    let status = node.wait_exit(PROMPT).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "every session left: herald exits 0 then, not after {LONG_DRAIN_SECONDS} s; got {status:?} after {:?}",
        asked.elapsed()
    );
}

#[tokio::test]
async fn malformed_frames_close_with_their_rfc_6455_codes() {
    let node = Node::start(NodeConfig::memory()).await;
    let auth = basic_auth(DEMO.address, DEMO.password);
    let open = || async {
        let mut ws = RawWs::connect(node.addr(), "/v1/ws", &[("Authorization", &auth)])
            .await
            .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
        let hello = match ws.read_frame(PROMPT).await {
            RawFrame::Frame {
                opcode: opcode::TEXT,
                payload,
            } => serde_json::from_slice::<serde_json::Value>(&payload).expect("JSON"),
            other => panic!("expected the connected frame, got {other:?}"),
        };
        assert_eq!(hello["event"], "connected", "{hello}");
        ws
    };
    let mut ws = open().await;
    ws.send_frame(opcode::TEXT, b"\xff\xfe not UTF-8").await;
    let close = ws.read_frame(PROMPT).await;
    assert_eq!(close.close_code(), Some(1007), "{close:?}");

    let mut ws = open().await;
    ws.send_unmasked(opcode::TEXT, b"{}").await;
    let close = ws.read_frame(PROMPT).await;
    assert_eq!(close.close_code(), Some(1002), "{close:?}");

    // The node is unharmed.
    let _ws = open().await;
}
