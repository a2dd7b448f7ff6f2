//! Abuse of the transport layer (see the module doc of `abuse`): frames declaring more
//! than a dialect takes, pings from a client that never reads, reserved bits, and a burst
//! of revocations.

use std::time::Duration;

use futures_util::future::join_all;
use herald_tests::client::basic_auth;
use herald_tests::fixtures::DEMO;
use herald_tests::raw::{frame_header, masked_frame, opcode, RawFrame};
use herald_tests::realtime::{self, RtClient, SECRET};
use herald_tests::rooms::{self, ROOMS_PATH};
use herald_tests::{Frame, Node, NodeConfig, RawWs, PROMPT};
use serde_json::json;
use toml::Value as Toml;

use super::MIB;

/// A node whose every dialect takes the test JWTs ([`SECRET`]) besides the demo aliases,
/// with time for a client to flood before its `?auth=message` frame.
fn every_dialect(config: NodeConfig) -> NodeConfig {
    let list = |items: &[&str]| Toml::Array(items.iter().map(|s| Toml::from(*s)).collect());
    realtime::configure(config)
        .set("auth.dialects.rooms", list(&["jwt"]))
        .auth_frame_timeout("120s")
}

/// A dialect to attack: its name, path and query, and upgrade headers.
type Target<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);

/// The close code the server sends, skipping pongs and data; `None` on EOF or timeout.
async fn close_code(ws: &mut RawWs) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + PROMPT;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.read_frame(remaining).await {
            frame @ RawFrame::Frame {
                opcode: opcode::CLOSE,
                ..
            } => return frame.close_code(),
            RawFrame::Frame { .. } => continue,
            RawFrame::Eof | RawFrame::Timeout => return None,
        }
    }
}

/// Streams up to `total` bytes after a frame header, in 64 KiB chunks, until the server
/// closes or stops reading.
async fn stream_body(ws: &mut RawWs, total: usize) -> usize {
    let chunk = vec![0x5Au8; 64 * 1024];
    let mut sent = 0;
    while sent < total && !ws.saw_close() {
        if !ws.write_raw(&chunk, Duration::from_secs(2)).await {
            break;
        }
        sent += chunk.len();
    }
    sent
}

/// Logs in once with the demo password. A password check borrows argon2's 19 MiB from a
/// pool filled on first use; a test that measures RSS from after this call does not count
/// that pool as its flood's growth.
async fn warm_password_pool(node: &Node) {
    let basic = basic_auth(DEMO.address, DEMO.password);
    RawWs::connect(node.addr(), "/v1/ws", &[("Authorization", basic.as_str())])
        .await
        .expect("warm-up login with the demo password");
}

/// RSS growth of `node` since `baseline`, in MiB.
fn growth_mib(node: &Node, baseline: u64) -> f64 {
    node.rss_bytes().saturating_sub(baseline) as f64 / MIB as f64
}

#[tokio::test]
async fn a_frame_declaring_a_tebibyte_is_refused_at_its_header_on_every_dialect() {
    const STREAMED: usize = 24 * MIB as usize;
    const BOUND_MIB: f64 = 16.0;
    let node = Node::start(every_dialect(NodeConfig::memory())).await;
    let basic = basic_auth(DEMO.address, DEMO.password);
    let rt_token = realtime::token("flooder", json!({}));
    let rooms_token = rooms::sign(&rooms::claims("flooder", "Flooder", None), SECRET);
    let targets: Vec<Target> = vec![
        ("/v1/ws before auth", "/v1/ws?auth=message".into(), vec![]),
        (
            "/v1/ws",
            "/v1/ws".into(),
            vec![("Authorization", basic.as_str())],
        ),
        (
            "/jmap/ws",
            "/jmap/ws".into(),
            vec![
                ("Authorization", basic.as_str()),
                ("Sec-WebSocket-Protocol", "jmap"),
            ],
        ),
        ("/ws", format!("/ws?token={rt_token}"), vec![]),
        ("rooms", format!("{ROOMS_PATH}?token={rooms_token}"), vec![]),
    ];
    warm_password_pool(&node).await;
    let baseline = node.rss_bytes();
    let mut outcomes = Vec::new();
    // Kept open until RSS is read, so whatever the node buffered for them still counts.
    let mut sockets = Vec::new();
    for (name, path, headers) in &targets {
        let mut ws = RawWs::connect(node.addr(), path, headers)
            .await
            .unwrap_or_else(|status| panic!("{name}: upgrade refused with {status}"));
        assert!(
            ws.write_raw(&frame_header(0x82, 1 << 40), PROMPT).await,
            "{name}: header"
        );
        let sent = stream_body(&mut ws, STREAMED).await;
        outcomes.push((name, sent, close_code(&mut ws).await));
        sockets.push(ws);
    }
    // The running total of a fragmented message counts too: a first fragment within the
    // limit, then a continuation declaring a tebibyte.
    let mut ws = RawWs::connect(node.addr(), &format!("/ws?token={rt_token}"), &[])
        .await
        .expect("/ws upgrade");
    ws.write_raw(&masked_frame(opcode::BINARY, &[1; 1000]), PROMPT)
        .await;
    ws.write_raw(&frame_header(opcode::CONTINUATION, 1 << 40), PROMPT)
        .await;
    let sent = stream_body(&mut ws, STREAMED).await;
    outcomes.push((&"/ws fragmented", sent, close_code(&mut ws).await));
    sockets.push(ws);

    let growth = growth_mib(&node, baseline);
    eprintln!("RSS growth {growth:.1} MiB; (target, bytes streamed, close code): {outcomes:?}");
    for (name, sent, code) in &outcomes {
        assert_eq!(*code, Some(1009), "{name}: closed at the header");
        // What was sent before the close arrived sat in socket buffers, not in the node.
        assert!(
            *sent < 8 * MIB as usize,
            "{name}: the close came only after {sent} bytes"
        );
    }
    assert!(
        growth <= BOUND_MIB,
        "RSS grew {growth:.1} MiB (bound {BOUND_MIB} MiB)"
    );
    drop(sockets);
    assert_eq!(node.get_status("/readyz").await, 200, "node still ready");
}

/// Up to 100 MiB of 125-byte pings, sent without ever reading, until the node stops
/// taking them for [`PROMPT`].
async fn flood_pings(ws: &mut RawWs) -> usize {
    let ping = masked_frame(0x80 | opcode::PING, &[7; 125]);
    let chunk: Vec<u8> = ping.repeat(MIB as usize / ping.len());
    let mut sent = 0;
    while sent < 100 * MIB as usize {
        if !ws.write_raw(&chunk, PROMPT).await {
            break;
        }
        sent += chunk.len();
    }
    sent
}

#[tokio::test]
async fn pings_from_a_client_that_never_reads_queue_one_pong_before_and_after_auth() {
    const BOUND_MIB: f64 = 24.0;
    let node = Node::start(every_dialect(NodeConfig::memory()).ping_interval("120s")).await;
    let basic = basic_auth(DEMO.address, DEMO.password);
    let auth = json!({"event": "auth", "username": DEMO.address, "password": DEMO.password});
    warm_password_pool(&node).await;
    let baseline = node.rss_bytes();
    let mut sockets = Vec::new();
    let mut figures = Vec::new();
    for (name, path, headers, auth_frame) in [
        ("/v1/ws before auth", "/v1/ws?auth=message", vec![], None),
        (
            "/v1/ws after auth",
            "/v1/ws?auth=message",
            vec![],
            Some(&auth),
        ),
        (
            "/jmap/ws",
            "/jmap/ws",
            vec![
                ("Authorization", basic.as_str()),
                ("Sec-WebSocket-Protocol", "jmap"),
            ],
            None,
        ),
    ] {
        let mut ws = RawWs::connect_slow(node.addr(), path, &headers)
            .await
            .unwrap_or_else(|status| panic!("{name}: upgrade refused with {status}"));
        if let Some(auth) = auth_frame {
            ws.send_frame(opcode::TEXT, auth.to_string().as_bytes())
                .await;
        }
        let sent = flood_pings(&mut ws).await;
        let growth = growth_mib(&node, baseline);
        figures.push((name, sent / MIB as usize, growth));
        eprintln!(
            "{name}: {} MiB of pings, RSS growth {growth:.1} MiB",
            sent / MIB as usize
        );
        sockets.push(ws);
    }
    for (name, sent_mib, growth) in figures {
        // The node may stop reading once the client's unread pongs fill the socket
        // buffers (TCP backpressure, which bounds it too), but only after taking more
        // pings than the RSS bound: had it queued a pong for each, the bound would break.
        assert!(
            sent_mib as f64 > BOUND_MIB,
            "{name}: the node read only {sent_mib} MiB of pings, too few to tell"
        );
        assert!(
            growth <= BOUND_MIB,
            "{name}: RSS grew {growth:.1} MiB (bound {BOUND_MIB} MiB)"
        );
    }
    // The sessions are still served: a reader gets its pong.
    let last = sockets.last_mut().expect("a socket");
    let pong = loop {
        match last.read_frame(PROMPT).await {
            RawFrame::Frame {
                opcode: opcode::PONG,
                payload,
            } => break payload,
            RawFrame::Frame { .. } => continue,
            other => panic!("no pong: {other:?}"),
        }
    };
    assert_eq!(pong, vec![7; 125]);
    assert_eq!(node.get_status("/readyz").await, 200, "node still ready");
}

#[tokio::test]
async fn a_text_frame_with_rsv1_set_is_a_protocol_error() {
    let node = Node::start(NodeConfig::memory()).await;
    let basic = basic_auth(DEMO.address, DEMO.password);
    let mut ws = RawWs::connect(node.addr(), "/v1/ws", &[("Authorization", &basic)])
        .await
        .expect("upgrade");
    // RSV1 without a negotiated extension (permessage-deflate is not offered).
    ws.write_raw(&masked_frame(0x80 | 0x40 | opcode::TEXT, b"{}"), PROMPT)
        .await;
    assert_eq!(close_code(&mut ws).await, Some(1002));
    assert_eq!(node.get_status("/readyz").await, 200, "node still ready");
}

#[tokio::test]
async fn a_burst_of_a_thousand_revocations_closes_every_revoked_session() {
    const SESSIONS: usize = 100;
    const REVOCATIONS: usize = 1000;
    let setup = crate::nats_setup(|c| realtime::configure(c).max_sessions_total(10_000)).await;
    let node = &setup.node;
    let tokens: Vec<String> = (0..SESSIONS)
        .map(|i| realtime::token(&format!("burst-{i}"), json!({})))
        .collect();
    let mut sessions = join_all(
        tokens
            .iter()
            .map(|token| RtClient::open(realtime::connect_to(node).query("token", token))),
    )
    .await;
    let mut bystander = RtClient::connect(node, "bystander").await;

    // Every tenth revocation is a session's; half by user id, half by token, spread over
    // the whole burst so that a session that falls behind misses some.
    let bodies = (0..REVOCATIONS).map(|n| {
        let i = n / (REVOCATIONS / SESSIONS);
        match (n % (REVOCATIONS / SESSIONS), i % 2) {
            (0, 0) => json!({"userId": format!("burst-{i}")}),
            (0, _) => json!({"token": tokens[i]}),
            (_, 0) => json!({"userId": format!("nobody-{n}")}),
            _ => json!({"token": format!("not-a-token-{n}")}),
        }
    });
    let nats = setup.nats.client().await;
    for body in bodies {
        nats.publish("herald.v1.control.revoke", body.to_string().into())
            .await
            .expect("publish a revocation");
    }
    nats.flush().await.expect("flush the revocations");

    // Read concurrently: a session left open shows as `None` rather than a panic, so the
    // count of missed revocations is reported.
    let codes = join_all(sessions.iter_mut().map(|s| async {
        loop {
            match s.ws.next_data_frame(PROMPT).await {
                Some(Frame::Close(code, _)) => return code,
                Some(Frame::Text(_) | Frame::Binary(_)) => continue,
                Some(Frame::Ended(_)) | None => return None,
            }
        }
    }))
    .await;
    let open = codes.iter().filter(|c| c.is_none()).count();
    eprintln!("{open} of {SESSIONS} revoked sessions not closed; codes: {codes:?}");
    assert_eq!(open, 0, "every revoked session closes");
    assert!(
        codes.iter().all(|c| *c == Some(4001)),
        "each with 4001: {codes:?}"
    );
    bystander
        .expect_none_of_type("Status", Duration::from_millis(500))
        .await;
    assert_eq!(node.get_status("/readyz").await, 200, "node still ready");
}

#[tokio::test]
async fn a_client_stuck_mid_frame_is_closed_by_the_keepalive() {
    // A header within the limit, then a byte at a time: the node holds at most the limit
    // for it (a header over it is refused at once, above), and no longer than the
    // keepalive allows, since a client mid-frame cannot answer a ping.
    let node = Node::start(NodeConfig::memory().set("jmap.ping_interval", "1s")).await;
    let basic = basic_auth(DEMO.address, DEMO.password);
    let headers = [
        ("Authorization", basic.as_str()),
        ("Sec-WebSocket-Protocol", "jmap"),
    ];
    let mut ws = RawWs::connect(node.addr(), "/jmap/ws", &headers)
        .await
        .expect("upgrade");
    ws.write_raw(&frame_header(opcode::TEXT | 0x80, 1 << 20), PROMPT)
        .await;
    let started = tokio::time::Instant::now();
    while !ws.saw_close() && started.elapsed() < PROMPT {
        if !ws.write_raw(b"{", PROMPT).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(close_code(&mut ws).await, Some(1008), "keepalive timeout");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
    assert_eq!(node.get_status("/readyz").await, 200, "node still ready");
}
