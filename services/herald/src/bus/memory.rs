//! The in-process bus: one node, no NATS. It gives the same guarantees as the JetStream
//! stream in NATS mode: a sequence per routing key, a ring buffer per key for `since`
//! replay (bounded by `bus.memory.ring_size` and `bus.retention`), and `Nats-Msg-Id`
//! dedup inside `bus.dedup_window`. Everything it keeps (events and dedup ids, across
//! every key) fits `bus.memory.max_bytes`: past it the oldest go first, as a JetStream
//! stream with `max_bytes` discards old messages, and a `since` older than what is left
//! gets `ResyncRequired`. A key whose events are all gone is forgotten.

use std::collections::{HashMap, VecDeque};
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use herald_protocol::subject::matches;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{BusMessage, PublishAck, Replay, Subscription, MAX_REPLAY};

/// In-process publish/subscribe with NATS subject semantics.
#[derive(Clone)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

struct Inner {
    /// Subscriptions by pattern; publish looks up the subject itself and its `parent.*`,
    /// so the common per-alias wildcard costs a hash lookup, not a scan.
    subscriptions: Mutex<HashMap<String, Vec<Subscriber>>>,
    /// Patterns that need a scan (`>` or an inner `*`).
    scanned: Mutex<Vec<String>>,
    /// Retained events per key (see [`sequence_key`]) and the last sequence. Publish holds
    /// this lock while it delivers, so sequence order is delivery order and a replay sees a
    /// clean cut. Sequences are node-wide, like a JetStream stream's, so one client cursor
    /// covers its alias and broadcast events alike.
    streams: Mutex<Streams>,
    next_id: AtomicU64,
    limits: Limits,
}

/// What the bus may keep.
#[derive(Clone, Copy)]
struct Limits {
    ring_size: usize,
    retention: Duration,
    dedup_window: Duration,
    max_bytes: usize,
}

/// Bookkeeping of one retained event in [`Streams::order`]. Its allocation is charged
/// apart from the event's because it outlives an event its key's ring already dropped.
const ORDER_COST: usize = size_of::<Stored>() + 16;
/// What one routing key costs besides its name: the map slot and the ring's header.
const KEY_COST: usize = size_of::<(Arc<str>, KeyStream)>() + 64;
/// What one dedup id costs besides its text: a map slot and a queue slot.
const SEEN_COST: usize =
    size_of::<(Arc<str>, (Instant, u64))>() + size_of::<(Instant, Arc<str>)>() + 48;

/// Bytes an event costs while retained: its fields' heap and its ring slot, with
/// allocator slack (so the budget errs towards less memory, not more).
fn message_cost(message: &BusMessage) -> usize {
    let text = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    size_of::<(Instant, BusMessage)>()
        + 64
        + message.payload.len()
        + message.subject.len()
        + text(&message.msg_id)
        + text(&message.traceparent)
        + text(&message.tracestate)
}

#[derive(Default)]
struct Streams {
    last_seq: u64,
    /// Highest sequence dropped by age or by the byte budget, which drop oldest first
    /// across keys: JetStream's first sequence minus one. A `since` below it may have
    /// missed events of a key that is gone, so it must resync.
    evicted_upto: u64,
    /// What everything below costs (see the `*_COST` constants), held to `max_bytes`.
    bytes: usize,
    keys: HashMap<Arc<str>, KeyStream>,
    /// Every retained event in sequence (hence time) order, for eviction across keys.
    order: VecDeque<Stored>,
    /// `Nats-Msg-Id` → (first seen, sequence), for dedup.
    seen: HashMap<Arc<str>, (Instant, u64)>,
    /// The ids of `seen`, oldest first.
    seen_order: VecDeque<(Instant, Arc<str>)>,
}

/// One retained event in [`Streams::order`].
struct Stored {
    seq: u64,
    at: Instant,
    key: Arc<str>,
}

#[derive(Default)]
struct KeyStream {
    /// Highest sequence of this key no longer retained.
    evicted_upto: u64,
    ring: VecDeque<(Instant, BusMessage)>,
}

impl Streams {
    /// Drops dedup ids past the window and events past retention, then the oldest of
    /// either until the bus fits its byte budget.
    fn evict(&mut self, limits: &Limits) {
        loop {
            let event_at = self.order.front().map(|s| s.at);
            let id_at = self.seen_order.front().map(|(at, _)| *at);
            let drop_id = if id_at.is_some_and(|at| at.elapsed() > limits.dedup_window) {
                true
            } else if event_at.is_some_and(|at| at.elapsed() > limits.retention) {
                false
            } else if self.bytes <= limits.max_bytes {
                break;
            } else {
                match (event_at, id_at) {
                    (Some(event), Some(id)) => id <= event,
                    (None, Some(_)) => true,
                    (Some(_), None) => false,
                    (None, None) => break,
                }
            };
            if drop_id {
                self.drop_oldest_id();
            } else {
                self.drop_oldest_event();
            }
        }
    }

    fn drop_oldest_id(&mut self) {
        if let Some((_, id)) = self.seen_order.pop_front() {
            self.seen.remove(&id);
            self.bytes = self.bytes.saturating_sub(SEEN_COST + id.len());
        }
    }

    fn drop_oldest_event(&mut self) {
        let Some(stored) = self.order.pop_front() else {
            return;
        };
        self.bytes = self.bytes.saturating_sub(ORDER_COST);
        self.evicted_upto = self.evicted_upto.max(stored.seq);
        let Some(stream) = self.keys.get_mut(&stored.key) else {
            return;
        };
        // Not at the front: the key's ring already dropped it (ring_size).
        if stream
            .ring
            .front()
            .is_some_and(|(_, m)| m.seq == Some(stored.seq))
        {
            if let Some((_, message)) = stream.ring.pop_front() {
                self.bytes = self.bytes.saturating_sub(message_cost(&message));
            }
            stream.evicted_upto = stored.seq;
        }
        if stream.ring.is_empty() {
            self.keys.remove(&stored.key);
            self.bytes = self.bytes.saturating_sub(KEY_COST + stored.key.len());
        }
    }

    /// Returns the earlier sequence if `msg_id` was published inside the dedup window,
    /// else records it with `seq`.
    fn duplicate_of(&mut self, msg_id: &str, seq: u64, window: Duration) -> Option<u64> {
        match self.seen.get(msg_id) {
            Some((at, old)) if at.elapsed() <= window => Some(*old),
            Some(_) => None,
            None => {
                let id: Arc<str> = msg_id.into();
                let now = Instant::now();
                self.bytes += SEEN_COST + id.len();
                self.seen.insert(Arc::clone(&id), (now, seq));
                self.seen_order.push_back((now, id));
                None
            }
        }
    }

    /// Gives back the capacity a burst left behind (maps and queues keep their peak).
    fn shrink(&mut self) {
        fn roomy(len: usize, capacity: usize) -> bool {
            capacity > 1024 && capacity > 4 * len
        }
        if roomy(self.keys.len(), self.keys.capacity()) {
            self.keys.shrink_to_fit();
        }
        if roomy(self.order.len(), self.order.capacity()) {
            self.order.shrink_to_fit();
        }
        if roomy(self.seen.len(), self.seen.capacity()) {
            self.seen.shrink_to_fit();
        }
        if roomy(self.seen_order.len(), self.seen_order.capacity()) {
            self.seen_order.shrink_to_fit();
        }
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::UnboundedSender<BusMessage>,
}

/// The key a sequence is monotonic for: the alias for alias events, else the subject.
pub fn sequence_key(subject: &str) -> &str {
    if herald_protocol::subject::is_alias(subject) {
        subject.rsplit_once('.').map_or(subject, |(key, _)| key)
    } else {
        subject
    }
}

/// Whether `pattern` can be found by exact lookup of a subject or its `parent.*`.
fn is_indexed(pattern: &str) -> bool {
    !pattern.contains('>')
        && !pattern
            .rsplit_once('.')
            .is_some_and(|(head, _)| head.contains('*'))
}

impl Default for MemoryBus {
    fn default() -> Self {
        MemoryBus::new(
            10_000,
            Duration::from_secs(24 * 3600),
            Duration::from_secs(120),
        )
    }
}

impl MemoryBus {
    /// A bus keeping `ring_size` events per key for at most `retention`, within the
    /// default byte budget (64 MiB).
    pub fn new(ring_size: usize, retention: Duration, dedup_window: Duration) -> MemoryBus {
        MemoryBus::with_max_bytes(ring_size, retention, dedup_window, 64 << 20)
    }

    /// A bus keeping `ring_size` events per key for at most `retention`, and at most
    /// `max_bytes` of events and dedup ids in all.
    pub fn with_max_bytes(
        ring_size: usize,
        retention: Duration,
        dedup_window: Duration,
        max_bytes: usize,
    ) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                subscriptions: Mutex::default(),
                scanned: Mutex::default(),
                streams: Mutex::default(),
                next_id: AtomicU64::new(0),
                limits: Limits {
                    ring_size,
                    retention,
                    dedup_window,
                    max_bytes,
                },
            }),
        }
    }

    /// Subscribes to `pattern`; the returned stream unsubscribes when dropped.
    pub fn subscribe(&self, pattern: &str) -> Subscription {
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let mut subs = self.inner.subscriptions.lock().expect("bus lock");
        let list = subs.entry(pattern.to_owned()).or_default();
        if list.is_empty() && !is_indexed(pattern) {
            self.inner
                .scanned
                .lock()
                .expect("bus lock")
                .push(pattern.to_owned());
        }
        list.push(Subscriber { id, tx });
        drop(subs);
        let guard = Unsubscribe {
            inner: Arc::clone(&self.inner),
            pattern: pattern.to_owned(),
            id,
        };
        UnboundedReceiverStream::new(rx)
            .map(move |m| {
                let _keep = &guard;
                m
            })
            .boxed()
    }

    /// Publishes to every matching subscription, assigning the next sequence of the key.
    pub fn publish(&self, mut message: BusMessage) -> PublishAck {
        if !super::is_streamed(&message.subject) {
            self.send(&message);
            return PublishAck::default();
        }
        let limits = &self.inner.limits;
        let mut guard = self.inner.streams.lock().expect("bus lock");
        let streams = &mut *guard;
        streams.evict(limits);
        let seq = streams.last_seq + 1;
        if let Some(id) = &message.msg_id {
            if let Some(old) = streams.duplicate_of(id, seq, limits.dedup_window) {
                return PublishAck {
                    seq: Some(old),
                    duplicate: true,
                };
            }
        }
        streams.last_seq = seq;
        message.seq = Some(seq);
        message.stored_ms = Some(herald_protocol::now_ms());
        let name = sequence_key(&message.subject);
        let key = match streams.keys.get_key_value(name) {
            Some((key, _)) => Arc::clone(key),
            None => {
                let key: Arc<str> = name.into();
                streams.bytes += KEY_COST + key.len();
                streams.keys.insert(Arc::clone(&key), KeyStream::default());
                key
            }
        };
        let now = Instant::now();
        streams.bytes += ORDER_COST + message_cost(&message);
        let stream = streams.keys.get_mut(&key).expect("key inserted above");
        stream.ring.push_back((now, message.clone()));
        if stream.ring.len() > limits.ring_size {
            if let Some((_, old)) = stream.ring.pop_front() {
                stream.evicted_upto = old.seq.unwrap_or(stream.evicted_upto);
                streams.bytes = streams.bytes.saturating_sub(message_cost(&old));
            }
        }
        streams.order.push_back(Stored { seq, at: now, key });
        // An event larger than the whole budget is delivered but not kept.
        streams.evict(limits);
        crate::metrics::bus_memory_bytes(streams.bytes);
        // Deliver under the streams lock: sequence order is delivery order.
        self.send(&message);
        PublishAck {
            seq: Some(seq),
            duplicate: false,
        }
    }

    /// Drops what has outlived retention or the dedup window and gives back spare
    /// capacity; the node calls it periodically so an idle bus lets go too.
    pub fn sweep(&self) {
        let mut streams = self.inner.streams.lock().expect("bus lock");
        streams.evict(&self.inner.limits);
        streams.shrink();
        crate::metrics::bus_memory_bytes(streams.bytes);
    }

    /// Bytes the bus holds now (its own estimate, the figure held to `max_bytes`).
    pub fn held_bytes(&self) -> usize {
        self.inner.streams.lock().expect("bus lock").bytes
    }

    /// Live subscriptions of `pattern`: the directory's tests watch registries unsubscribe.
    #[cfg(test)]
    pub(crate) fn subscribers(&self, pattern: &str) -> usize {
        let subs = self.inner.subscriptions.lock().expect("bus lock");
        subs.get(pattern).map_or(0, Vec::len)
    }

    /// Hands `message` to every matching subscription.
    fn send(&self, message: &BusMessage) {
        let subject = &message.subject;
        let subs = self.inner.subscriptions.lock().expect("bus lock");
        let send = |pattern: &str| {
            if let Some(list) = subs.get(pattern) {
                for s in list {
                    let _ = s.tx.send(message.clone());
                }
            }
        };
        send(subject);
        if let Some((parent, _)) = subject.rsplit_once('.') {
            send(&format!("{parent}.*"));
        }
        for pattern in self.inner.scanned.lock().expect("bus lock").iter() {
            if matches(pattern, subject) {
                send(pattern);
            }
        }
    }

    /// Retained events of the key `pattern` subscribes to, after `since`.
    pub fn replay(&self, pattern: &str, since: u64) -> Replay {
        let key = pattern
            .strip_suffix(".*")
            .filter(|_| herald_protocol::subject::is_alias(pattern))
            .unwrap_or(pattern);
        let mut guard = self.inner.streams.lock().expect("bus lock");
        let streams = &mut *guard;
        streams.evict(&self.inner.limits);
        // Past the last sequence: another stream's cursor. Below the evicted floor: some
        // of what was missed may be gone with a key that is forgotten.
        if since > streams.last_seq || since < streams.evicted_upto {
            return Replay::ResyncRequired;
        }
        // A wildcard pattern (a `/ws` topic subscription such as `updates.*`) covers
        // several keys: their retained events, merged in sequence order.
        let wildcard = key.split('.').any(|t| t == "*" || t == ">");
        let mut missed: Vec<BusMessage> = Vec::new();
        let matching: Vec<&KeyStream> = if wildcard {
            streams
                .keys
                .iter()
                .filter(|(name, _)| matches(key, name))
                .map(|(_, stream)| stream)
                .collect()
        } else {
            streams.keys.get(key).into_iter().collect()
        };
        for stream in matching {
            if since < stream.evicted_upto {
                return Replay::ResyncRequired;
            }
            missed.extend(
                stream
                    .ring
                    .iter()
                    .filter(|(_, m)| m.seq.is_some_and(|s| s > since))
                    .map(|(_, m)| m.clone()),
            );
        }
        missed.sort_by_key(|m| m.seq);
        if missed.len() > MAX_REPLAY {
            return Replay::ResyncRequired;
        }
        Replay::Messages(missed)
    }
}

struct Unsubscribe {
    inner: Arc<Inner>,
    pattern: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let mut subs = self.inner.subscriptions.lock().expect("bus lock");
        if let Some(list) = subs.get_mut(&self.pattern) {
            list.retain(|s| s.id != self.id);
            if list.is_empty() {
                subs.remove(&self.pattern);
                self.inner
                    .scanned
                    .lock()
                    .expect("bus lock")
                    .retain(|p| p != &self.pattern);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    fn msg(subject: &str) -> BusMessage {
        BusMessage {
            subject: subject.into(),
            ..Default::default()
        }
    }

    #[test]
    fn wildcard_topic_replay_merges_matching_keys_in_order() {
        let bus = MemoryBus::default();
        for subject in [
            "herald.v1.topic.updates.a",
            "herald.v1.topic.other.a",
            "herald.v1.topic.updates.b",
        ] {
            bus.publish(msg(subject));
        }
        let Replay::Messages(missed) = bus.replay("herald.v1.topic.updates.*", 0) else {
            panic!("expected messages");
        };
        let seqs: Vec<_> = missed.iter().map(|m| m.seq.unwrap()).collect();
        assert_eq!(seqs, [1, 3]);
    }

    #[tokio::test]
    async fn wildcards_route_and_sequences_are_monotonic() {
        let bus = MemoryBus::default();
        let mut a = bus.subscribe("herald.v1.alias.a.*");
        let mut all = bus.subscribe("herald.v1.>");
        bus.publish(msg("herald.v1.alias.a.newMessage"));
        bus.publish(msg("herald.v1.alias.b.newMessage"));
        bus.publish(msg("herald.v1.alias.a.flagsUpdated"));
        let first = a.next().await.unwrap();
        let second = a.next().await.unwrap();
        assert_eq!(first.subject, "herald.v1.alias.a.newMessage");
        assert_eq!((first.seq, second.seq), (Some(1), Some(3)));
        assert_eq!(second.subject, "herald.v1.alias.a.flagsUpdated");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(all.next().await.unwrap().seq.unwrap());
        }
        assert_eq!(seen, [1, 2, 3]);
    }

    #[tokio::test]
    async fn dropping_the_stream_unsubscribes() {
        let bus = MemoryBus::default();
        let s = bus.subscribe("herald.v1.alias.a.*");
        let t = bus.subscribe("x.>");
        drop(s);
        drop(t);
        assert!(bus.inner.subscriptions.lock().unwrap().is_empty());
        assert!(bus.inner.scanned.lock().unwrap().is_empty());
    }

    fn seqs(replay: Replay) -> Vec<u64> {
        match replay {
            Replay::Messages(m) => m.iter().map(|m| m.seq.unwrap()).collect(),
            Replay::ResyncRequired => panic!("unexpected resync"),
        }
    }

    #[test]
    fn replay_returns_what_was_missed_and_resyncs_past_the_ring() {
        let bus = MemoryBus::new(3, Duration::from_secs(60), Duration::from_secs(60));
        for _ in 0..5 {
            bus.publish(msg("herald.v1.alias.a.newMessage"));
        }
        bus.publish(msg("herald.v1.alias.b.newMessage"));
        assert_eq!(seqs(bus.replay("herald.v1.alias.a.*", 3)), [4, 5]);
        assert_eq!(
            seqs(bus.replay("herald.v1.alias.a.*", 5)),
            Vec::<u64>::new()
        );
        assert!(matches!(
            bus.replay("herald.v1.alias.a.*", 1),
            Replay::ResyncRequired
        ));
        assert!(matches!(
            bus.replay("herald.v1.alias.a.*", 9),
            Replay::ResyncRequired
        ));
        assert_eq!(seqs(bus.replay("herald.v1.alias.b.*", 0)), [6]);
        assert_eq!(
            seqs(bus.replay("herald.v1.alias.z.*", 0)),
            Vec::<u64>::new()
        );
    }

    #[test]
    fn a_repeated_msg_id_is_delivered_once() {
        let bus = MemoryBus::default();
        let mut sub = bus.subscribe("herald.v1.alias.a.*");
        let with_id = |id: &str| BusMessage {
            msg_id: Some(id.into()),
            ..msg("herald.v1.alias.a.newMessage")
        };
        let first = bus.publish(with_id("x"));
        let again = bus.publish(with_id("x"));
        assert!(!first.duplicate && again.duplicate);
        assert_eq!(first.seq, again.seq);
        bus.publish(with_id("y"));
        assert_eq!(sub.next().now_or_never().flatten().unwrap().seq, Some(1));
        assert_eq!(sub.next().now_or_never().flatten().unwrap().seq, Some(2));
        assert!(
            sub.next().now_or_never().is_none(),
            "the duplicate was not delivered"
        );
    }

    fn sized(subject: &str, bytes: usize) -> BusMessage {
        BusMessage {
            payload: vec![b'x'; bytes].into(),
            ..msg(subject)
        }
    }

    #[test]
    fn the_byte_budget_evicts_oldest_first_across_keys_and_forgets_empty_keys() {
        let budget = 1 << 20;
        let bus = MemoryBus::with_max_bytes(
            100,
            Duration::from_secs(60),
            Duration::from_secs(60),
            budget,
        );
        for n in 0..200 {
            bus.publish(sized(&format!("herald.v1.topic.t{n}"), 60 * 1024));
        }
        assert!(bus.held_bytes() <= budget, "{} held", bus.held_bytes());
        let streams = bus.inner.streams.lock().unwrap();
        assert!(
            streams.keys.len() < 20,
            "{} keys kept: emptied keys are forgotten",
            streams.keys.len()
        );
        assert!(streams.keys.contains_key("herald.v1.topic.t199"));
        let floor = streams.evicted_upto;
        drop(streams);
        assert!(floor > 180);
        assert!(matches!(
            bus.replay("herald.v1.topic.t0", 0),
            Replay::ResyncRequired
        ));
        assert!(
            matches!(
                bus.replay("herald.v1.topic.never", floor - 1),
                Replay::ResyncRequired
            ),
            "below the floor, a forgotten key may have had events"
        );
        assert_eq!(seqs(bus.replay("herald.v1.topic.t199", floor)), [200]);
    }

    #[test]
    fn an_event_larger_than_the_budget_is_delivered_not_kept() {
        let bus = MemoryBus::with_max_bytes(
            10,
            Duration::from_secs(60),
            Duration::from_secs(60),
            1 << 20,
        );
        let mut sub = bus.subscribe("herald.v1.user.u");
        bus.publish(sized("herald.v1.user.u", 2 << 20));
        assert_eq!(sub.next().now_or_never().flatten().unwrap().seq, Some(1));
        assert_eq!(bus.held_bytes(), 0);
        assert!(bus.inner.streams.lock().unwrap().keys.is_empty());
    }

    #[test]
    fn dedup_ids_count_against_the_budget_and_expired_events_are_swept() {
        let bus = MemoryBus::with_max_bytes(
            10,
            Duration::from_millis(50),
            Duration::from_secs(60),
            1 << 20,
        );
        for n in 0..50_000 {
            bus.publish(BusMessage {
                msg_id: Some(format!("id-{n}")),
                ..msg(&format!("herald.v1.user.u{n}"))
            });
        }
        assert!(bus.held_bytes() <= 1 << 20, "{} held", bus.held_bytes());
        std::thread::sleep(Duration::from_millis(100));
        bus.sweep();
        let streams = bus.inner.streams.lock().unwrap();
        assert!(streams.keys.is_empty() && streams.order.is_empty());
        assert_eq!(
            streams.bytes,
            streams.seen.len() * SEEN_COST + streams.seen.keys().map(|k| k.len()).sum::<usize>()
        );
    }
}
