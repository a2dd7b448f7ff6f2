//! Abuse of the rooms dialect (see the module doc of `abuse`).

use std::time::{Duration, Instant};

use herald_tests::rooms::{self, token, RoomsClient};
use herald_tests::{Frame, Node, NodeConfig, WsClient};
use serde_json::{json, Value};

use super::MIB;

/// The built-in `rooms.messages_per_second` and `rooms.burst` the flood is held to.
const RATE: u64 = 20;
const BURST: u64 = 40;

/// Messages the flooder sends, and the size of each one's `data`: 62.5 MiB in all.
const FLOOD: u64 = 2000;
const MESSAGE_BYTES: usize = 32 * 1024;

/// RSS growth allowed for the whole flood: what the rate lets through, kept by the memory
/// bus (40 + 20 a second of 32 KiB: about 5 MiB for a 5 s flood, 11 MiB if a loaded
/// machine stretches it to 15 s), plus allocator slack. Without the limit the node kept
/// all 62.5 MiB (+76 MiB measured).
const RSS_BOUND: u64 = 24 * MIB;

/// What one client got: `message` events, `rate_limited` errors, and how it ended.
#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    rate_limited: u64,
    closed: Option<String>,
}

/// Reads `ws` until it is quiet for `quiet` (or closes), tallying what arrives.
async fn drain(ws: &mut WsClient, quiet: Duration, tally: &mut Tally) {
    while tally.closed.is_none() {
        match ws.next_frame(quiet).await {
            None => return,
            Some(Frame::Close(code, reason)) => tally.closed = Some(format!("{code:?} {reason}")),
            Some(Frame::Ended(why)) => tally.closed = Some(why),
            Some(frame) => {
                let event = frame.decode().unwrap_or(Value::Null);
                match event["type"].as_str() {
                    Some("message") => tally.messages += 1,
                    Some("error") if event["data"]["code"] == "rate_limited" => {
                        tally.rate_limited += 1
                    }
                    _ => {}
                }
            }
        }
    }
}

#[tokio::test]
async fn a_send_message_flood_is_held_to_the_rate_and_costs_the_node_little_memory() {
    let node = Node::start(rooms::with_rooms_auth(NodeConfig::memory())).await;
    let mut alice = RoomsClient::connect(&node, &token("42", "alice", Some(&["channel:*"]))).await;
    let mut bob = RoomsClient::connect(&node, &token("43", "bob", Some(&["channel:*"]))).await;
    bob.join("channel:1").await;
    alice.join("channel:1").await;
    bob.next_of_type("user_joined").await;
    // Let the joins' tokens refill, so the whole burst is the flood's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_before = node.rss_bytes();

    // Bob reads everything the room gets, until it has been quiet for 3 s.
    let received = tokio::spawn(async move {
        let mut tally = Tally::default();
        drain(&mut bob.ws, Duration::from_secs(3), &mut tally).await;
        tally
    });

    let body = "x".repeat(MESSAGE_BYTES);
    let started = Instant::now();
    let mut answers = Tally::default();
    for n in 0..FLOOD {
        let frame =
            json!({"type": "send_message", "room": "channel:1", "data": {"n": n, "body": body}});
        alice.ws.send_json(&frame).await;
        // Alice reads her answers as she goes, as a client would.
        if n % 50 == 49 {
            drain(&mut alice.ws, Duration::from_millis(2), &mut answers).await;
        }
    }
    let flood_secs = started.elapsed().as_secs_f64();
    drain(&mut alice.ws, Duration::from_secs(3), &mut answers).await;
    let received = received.await.expect("bob's reader");
    let rss_growth = node.rss_bytes().saturating_sub(rss_before);
    eprintln!(
        "rooms flood: {FLOOD} × {} KiB in {flood_secs:.1} s; bob received {}, alice got {} rate_limited errors; RSS +{:.1} MiB",
        MESSAGE_BYTES / 1024,
        received.messages,
        answers.rate_limited,
        rss_growth as f64 / MIB as f64,
    );

    assert_eq!(received.closed, None, "bob keeps up with the room");
    assert_eq!(answers.closed, None, "alice read her answers");
    // Tokens: the burst, then RATE a second over the flood, one more second of margin.
    let allowed = BURST + RATE * (flood_secs.ceil() as u64 + 1);
    assert!(
        received.messages <= allowed,
        "bob received {} messages in {flood_secs:.1} s; the rate allows at most {allowed}",
        received.messages
    );
    assert!(received.messages >= BURST, "the burst gets through");
    assert_eq!(
        answers.messages + answers.rate_limited,
        FLOOD,
        "every frame is answered: published (alice gets her own message) or refused"
    );
    assert!(
        rss_growth < RSS_BOUND,
        "RSS grew {} MiB (bound {} MiB)",
        rss_growth / MIB,
        RSS_BOUND / MIB
    );
    assert_eq!(
        node.get_status("/readyz").await,
        200,
        "the node is still ready"
    );
}
