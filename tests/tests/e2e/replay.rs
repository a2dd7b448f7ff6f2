//! Delivery guarantees (SPEC §5): every event carries `seq`; reconnecting with
//! `?since=<seq>` replays what was missed, then goes live, without gap or duplicate.

use herald_tests::fixtures::DEMO;
use herald_tests::{Connect, Node, Publisher, WsClient};
use serde_json::json;

use crate::{memory_setup, nats_setup};

/// Receives the next event and returns its `(n, seq)`.
async fn next_n_seq(client: &mut WsClient) -> (u64, u64) {
    let event = client.next_json().await;
    let n = event["n"]
        .as_u64()
        .unwrap_or_else(|| panic!("no n: {event}"));
    let seq = event["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("every delivered event carries seq: {event}"));
    (n, seq)
}

/// One client sees n=1, leaves, misses n=2 and n=3, comes back with `since`.
async fn missed_events_are_replayed_then_live(node: &Node, publisher: &Publisher) {
    let mut first = Connect::v1(node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut first]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    let (n, seen) = next_n_seq(&mut first).await;
    assert_eq!(n, 1);
    first.close().await;

    for n in [2, 3] {
        publisher
            .alias_event(DEMO.id, &json!({"event": "newMessage", "n": n}))
            .await;
    }
    let mut back = Connect::v1(node)
        .alias(&DEMO)
        .query("since", &seen.to_string())
        .connect()
        .await;
    let (n2, seq2) = next_n_seq(&mut back).await;
    let (n3, seq3) = next_n_seq(&mut back).await;
    assert_eq!(
        (n2, n3),
        (2, 3),
        "the missed events, in order, nothing before them"
    );
    assert!(
        seen < seq2 && seq2 < seq3,
        "seq grows: {seen} < {seq2} < {seq3}"
    );

    // No subscription wait here: going live after the replay must not leave a gap.
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 4}))
        .await;
    let (n4, seq4) = next_n_seq(&mut back).await;
    assert_eq!(n4, 4, "live after the replay, no duplicate");
    assert!(seq3 < seq4);
}

#[tokio::test]
async fn reconnecting_with_since_replays_missed_events_then_goes_live_on_memory_bus() {
    let (node, publisher) = memory_setup(|c| c).await;
    missed_events_are_replayed_then_live(&node, &publisher).await;
}

#[tokio::test]
async fn reconnecting_with_since_replays_missed_events_then_goes_live_on_nats() {
    let s = nats_setup(|c| c).await;
    missed_events_are_replayed_then_live(&s.node, &s.publisher).await;
}

#[tokio::test]
async fn since_older_than_what_is_kept_asks_the_client_to_resync() {
    let (node, publisher) = memory_setup(|c| c.set("bus.memory.ring_size", 3)).await;
    let mut first = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut first]).await;
    publisher
        .alias_event(DEMO.id, &json!({"event": "newMessage", "n": 1}))
        .await;
    let (_, seen) = next_n_seq(&mut first).await;
    first.close().await;
    for n in 2..=8 {
        publisher
            .alias_event(DEMO.id, &json!({"event": "newMessage", "n": n}))
            .await;
    }
    let mut back = Connect::v1(&node)
        .alias(&DEMO)
        .query("since", &seen.to_string())
        .connect()
        .await;
    let event = back.next_json().await;
    assert_eq!(
        event["event"], "resyncRequired",
        "4 of the missed events fell out of a ring of 3: {event}"
    );
}
