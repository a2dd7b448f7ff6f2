//! Unit tests of the registry and the directory on the memory bus, in actix's runtime.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;
use crate::bus::{Bus, MemoryBus, Replay};
use crate::codec::Codec;
use crate::outbox::test_support::watch_overflow;
use crate::outbox::Outbox;

#[test]
fn a_member_whose_held_frames_exceed_its_budget_becomes_a_slow_consumer() {
    let bus = Bus::Memory(MemoryBus::new(10, Duration::from_secs(60), Duration::ZERO));
    let settings = Arc::new(RegistrySettings {
        codec: CodecSettings {
            max_notification_bytes: 1 << 20,
        },
        encoders: &crate::dialect::codec::ENCODERS,
        node: "test".into(),
        max_buffered_bytes: 2_000,
        on_delivered: None,
    });
    let mut registry = Registry::new(RoutingKey::Alias("a1".into()), bus, settings);
    let (outbox, _rx) = Outbox::new(1 << 20, "slow");
    let evicted = watch_overflow(&outbox);
    let member = Member {
        id: 1,
        outbox: outbox.clone(),
        codec: Codec::V1Json,
        relay: None,
    };
    // A member still catching up on its `since` replay: live frames are held.
    registry
        .members
        .insert(1, MemberState::joining(member, true));
    registry.per_codec[Codec::V1Json.index()] += 1;
    let message = |seq: u64| {
        let envelope = serde_json::json!({
            "aliasId": "a1",
            "payload": {"event": "newMessage", "message": {"eml": "x".repeat(600)}},
        });
        BusMessage {
            subject: "herald.v1.alias.a1.newMessage".into(),
            payload: rmp_serde::to_vec_named(&envelope).unwrap().into(),
            seq: Some(seq),
            ..Default::default()
        }
    };
    registry.deliver(message(1));
    registry.deliver(message(2));
    assert!(registry.members[&1]
        .held
        .as_ref()
        .is_some_and(|h| h.items.len() == 2));
    assert_eq!(evicted.count(), 0, "under budget: still held");
    registry.deliver(message(3));
    registry.deliver(message(4));
    assert!(
        registry.members[&1].held.is_none(),
        "the held frames are dropped"
    );
    assert!(outbox.is_overflowed());
    assert_eq!(evicted.count(), 1, "the session is told once");
}

/// Helpers shared with the directory's tests.
pub(crate) mod support {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::bus::BusMessage;
    use crate::codec::{Codec, CodecSettings};
    use crate::outbox::test_support::{watch_overflow, Told};
    use crate::outbox::{Frame, Outbound, Outbox, OutboxReceiver};
    use crate::registry::{Member, RegistrySettings, SessionId};

    /// Registry settings with a per-session budget of `max_buffered_bytes`.
    pub fn settings(max_buffered_bytes: usize) -> Arc<RegistrySettings> {
        Arc::new(RegistrySettings {
            codec: CodecSettings {
                max_notification_bytes: 1 << 20,
            },
            encoders: &crate::dialect::codec::ENCODERS,
            node: "test".into(),
            max_buffered_bytes,
            on_delivered: None,
        })
    }

    /// A `newMessage` of alias `a1` carrying `uid` (and `pad` bytes of body).
    pub fn new_message(uid: u64, pad: usize) -> BusMessage {
        let envelope = serde_json::json!({
            "aliasId": "a1",
            "payload": {"event": "newMessage", "message": {"uid": uid, "eml": "x".repeat(pad)}},
        });
        BusMessage {
            subject: "herald.v1.alias.a1.newMessage".into(),
            payload: rmp_serde::to_vec_named(&envelope).unwrap().into(),
            ..Default::default()
        }
    }

    /// A `/v1/ws` JSON member with an open outbox of `budget` bytes, and how many times
    /// it was told it overflowed.
    pub fn member(id: SessionId, budget: usize) -> (Member, OutboxReceiver, Arc<Told>) {
        let (outbox, rx) = Outbox::new(budget, "slow");
        let evicted = watch_overflow(&outbox);
        outbox.open();
        let member = Member {
            id,
            outbox,
            codec: Codec::V1Json,
            relay: None,
        };
        (member, rx, evicted)
    }

    /// The next data frame's text, or `None` after `wait` without one.
    pub async fn next_text(rx: &OutboxReceiver, wait: Duration) -> Option<String> {
        loop {
            let item = tokio::time::timeout(wait, std::future::poll_fn(|cx| rx.poll_item(cx)))
                .await
                .ok()??;
            if let Outbound::Frame(Frame::Text(text), _) = item {
                rx.written(text.len());
                return Some(text.to_string());
            }
        }
    }

    /// The `message.uid` of the next frame, or `None` after `wait` without one.
    pub async fn next_uid(rx: &OutboxReceiver, wait: Duration) -> Option<u64> {
        let text = next_text(rx, wait).await?;
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        match value.pointer("/message/uid").and_then(|v| v.as_u64()) {
            Some(uid) => Some(uid),
            None => panic!("not a newMessage notification: {text}"),
        }
    }

    /// The `message.uid` of each frame received until none comes for a moment.
    pub async fn uids(rx: &OutboxReceiver) -> Vec<u64> {
        let mut uids = Vec::new();
        while let Some(uid) = next_uid(rx, Duration::from_millis(300)).await {
            uids.push(uid);
        }
        uids
    }
}

use support::{member, new_message, next_text, settings, uids};

fn memory_bus() -> MemoryBus {
    MemoryBus::new(100, Duration::from_secs(60), Duration::ZERO)
}

fn alias_a1() -> RoutingKey {
    RoutingKey::Alias("a1".into())
}

#[actix::test]
async fn a_since_join_replays_what_was_missed_then_goes_live_without_gap_or_duplicate() {
    let bus = memory_bus();
    for uid in 1..=3 {
        bus.publish(new_message(uid, 0));
    }
    let registry = Registry::new(alias_a1(), Bus::Memory(bus.clone()), settings(1 << 20)).start();
    let (joining, rx, _) = member(1, 1 << 20);
    registry
        .send(Join {
            key: alias_a1(),
            member: joining,
            since: Some(1),
            announces_resync: true,
        })
        .await
        .unwrap();
    // Races the replay: whichever lands first, the seam has no gap and no duplicate.
    bus.publish(new_message(4, 0));
    assert_eq!(uids(&rx).await, [2, 3, 4]);
}

#[actix::test]
async fn a_since_that_is_no_longer_retained_gets_the_resync_frame_then_live_events() {
    let bus = memory_bus();
    bus.publish(new_message(1, 0));
    let registry = Registry::new(alias_a1(), Bus::Memory(bus.clone()), settings(1 << 20)).start();
    let (joining, rx, _) = member(1, 1 << 20);
    registry
        .send(Join {
            key: alias_a1(),
            member: joining,
            since: Some(99),
            announces_resync: true,
        })
        .await
        .unwrap();
    let first = next_text(&rx, Duration::from_secs(5)).await;
    assert_eq!(first.as_deref(), Some(r#"{"event":"resyncRequired"}"#));
    bus.publish(new_message(2, 0));
    assert_eq!(uids(&rx).await, [2]);
}

#[actix::test]
async fn a_missed_live_event_is_filled_from_the_stream_once() {
    let bus = memory_bus();
    for uid in 1..=3 {
        bus.publish(new_message(uid, 0));
    }
    let Replay::Messages(stored) = bus.replay("herald.v1.alias.a1.*", 0) else {
        panic!("events 1..3 are retained");
    };
    let mut registry = Registry::new(alias_a1(), Bus::Memory(bus.clone()), settings(1 << 20));
    // The registry delivered event 1 before; events 2 and 3 never reached it live.
    registry.last_seq = Some(1);
    let (live, live_rx) = tokio::sync::mpsc::unbounded_channel::<BusMessage>();
    let registry = Registry::create(|ctx| {
        ctx.add_stream(tokio_stream::wrappers::UnboundedReceiverStream::new(
            live_rx,
        ));
        registry
    });
    let (joining, rx, _) = member(1, 1 << 20);
    registry
        .send(Join {
            key: alias_a1(),
            member: joining,
            since: None,
            announces_resync: true,
        })
        .await
        .unwrap();
    // Event 3 arrives saying the one before it on its subject was 2: 2 was missed.
    let mut third = stored[2].clone();
    third.prev_seq = Some(2);
    live.send(third.clone()).unwrap();
    assert_eq!(uids(&rx).await, [2, 3], "the gap is filled, then 3 once");
    live.send(third).unwrap();
    assert_eq!(
        uids(&rx).await,
        Vec::<u64>::new(),
        "a redelivery is a duplicate"
    );
}

#[actix::test]
async fn a_slow_consumer_is_told_once_and_does_not_hold_back_the_others() {
    let bus = memory_bus();
    let registry = Registry::new(alias_a1(), Bus::Memory(bus.clone()), settings(1 << 20)).start();
    // Room for one ~700-byte notification, not two.
    let (slow, _slow_rx, evicted) = member(1, 1_000);
    let (fast, fast_rx, _) = member(2, 1 << 20);
    for member in [slow.clone(), fast] {
        registry
            .send(Join {
                key: alias_a1(),
                member,
                since: None,
                announces_resync: false,
            })
            .await
            .unwrap();
    }
    for uid in 1..=3 {
        bus.publish(new_message(uid, 600));
    }
    assert_eq!(uids(&fast_rx).await, [1, 2, 3]);
    assert!(slow.outbox.is_overflowed());
    assert_eq!(evicted.count(), 1, "the session is told once");
}

/// A session actor that keeps (or drops at once) what it is relayed.
struct Relay {
    keep: bool,
    kept: Vec<Relayed>,
    changes: Arc<AtomicUsize>,
}

impl Actor for Relay {
    type Context = Context<Self>;
}

impl Handler<Relayed> for Relay {
    type Result = ();

    fn handle(&mut self, relayed: Relayed, _: &mut Self::Context) {
        if let Relayed::Change { event, seq, .. } = &relayed {
            assert_eq!(*event, herald_protocol::Event::NewMessage);
            assert!(seq.is_some());
            self.changes.fetch_add(1, Ordering::Relaxed);
        }
        if self.keep {
            self.kept.push(relayed);
        }
    }
}

async fn relay_member(
    keep: bool,
    budget: usize,
) -> (
    Addr<Registry>,
    MemoryBus,
    Outbox,
    Arc<AtomicUsize>,
    Arc<crate::outbox::test_support::Told>,
) {
    let bus = memory_bus();
    let registry = Registry::new(alias_a1(), Bus::Memory(bus.clone()), settings(1 << 20)).start();
    let changes = Arc::new(AtomicUsize::new(0));
    let actor = Relay {
        keep,
        kept: Vec::new(),
        changes: Arc::clone(&changes),
    }
    .start();
    let (mut joining, rx, evicted) = member(1, budget);
    // The receiver stays alive with the outbox: a dropped one means a closed session.
    std::mem::forget(rx);
    joining.codec = Codec::Jmap;
    joining.relay = Some(actor.recipient());
    let outbox = joining.outbox.clone();
    registry
        .send(Join {
            key: alias_a1(),
            member: joining,
            since: None,
            announces_resync: true,
        })
        .await
        .unwrap();
    (registry, bus, outbox, changes, evicted)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[actix::test]
async fn relayed_changes_are_charged_to_the_session_budget_until_handled() {
    let budget = 3 * crate::codec::RELAYED_BYTES;
    let (_registry, bus, outbox, changes, evicted) = relay_member(true, budget).await;
    for uid in 1..=3 {
        bus.publish(new_message(uid, 0));
    }
    until("three changes", || changes.load(Ordering::Relaxed) == 3).await;
    assert!(!outbox.is_overflowed(), "three fit the budget");
    bus.publish(new_message(4, 0));
    until("the overflow", || outbox.is_overflowed()).await;
    assert_eq!(evicted.count(), 1);
    assert_eq!(
        changes.load(Ordering::Relaxed),
        3,
        "the fourth is not relayed"
    );
}

#[actix::test]
async fn handled_relayed_changes_give_their_bytes_back() {
    let budget = 2 * crate::codec::RELAYED_BYTES;
    let (_registry, bus, outbox, changes, _) = relay_member(false, budget).await;
    for uid in 1..=20 {
        bus.publish(new_message(uid, 0));
        until("the change", || {
            changes.load(Ordering::Relaxed) == uid as usize
        })
        .await;
    }
    assert!(!outbox.is_overflowed());
}

#[test]
fn a_member_fits_in_40_bytes() {
    // A registry holds one per session (docs/performance.md, idle memory).
    assert!(std::mem::size_of::<MemberState>() <= 40);
}
