//! The in-process bus: one node, no NATS. It gives the same guarantees as the JetStream
//! stream in NATS mode: a sequence per routing key, a ring buffer per key for `since`
//! replay (bounded by `bus.memory.ring_size` and `bus.retention`), and `Nats-Msg-Id`
//! dedup inside `bus.dedup_window`.

use std::collections::{HashMap, VecDeque};
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
    /// `Nats-Msg-Id` → (first seen, sequence), for dedup.
    seen_ids: Mutex<HashMap<String, (Instant, u64)>>,
    next_id: AtomicU64,
    ring_size: usize,
    retention: Duration,
    dedup_window: Duration,
}

#[derive(Default)]
struct Streams {
    last_seq: u64,
    keys: HashMap<String, KeyStream>,
}

#[derive(Default)]
struct KeyStream {
    /// Highest sequence no longer retained.
    evicted_upto: u64,
    ring: VecDeque<(Instant, BusMessage)>,
}

impl KeyStream {
    fn expire(&mut self, retention: Duration, ring_size: usize) {
        while let Some((at, message)) = self.ring.front() {
            if self.ring.len() <= ring_size && at.elapsed() <= retention {
                break;
            }
            self.evicted_upto = message.seq.unwrap_or(self.evicted_upto);
            self.ring.pop_front();
        }
    }
}

struct Subscriber {
    id: u64,
    tx: mpsc::UnboundedSender<BusMessage>,
}

/// The key a sequence is monotonic for: the alias for alias events, else the subject.
pub fn sequence_key(subject: &str) -> &str {
    if subject.starts_with("herald.v1.alias.") {
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
    /// A bus keeping `ring_size` events per key for at most `retention`.
    pub fn new(ring_size: usize, retention: Duration, dedup_window: Duration) -> MemoryBus {
        MemoryBus {
            inner: Arc::new(Inner {
                subscriptions: Mutex::default(),
                scanned: Mutex::default(),
                streams: Mutex::default(),
                seen_ids: Mutex::default(),
                next_id: AtomicU64::new(0),
                ring_size,
                retention,
                dedup_window,
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

    /// Returns the earlier sequence if `msg_id` was published inside the dedup window.
    fn duplicate_of(&self, msg_id: &str, seq: u64) -> Option<u64> {
        let mut seen = self.inner.seen_ids.lock().expect("bus lock");
        let window = self.inner.dedup_window;
        if seen.len() > 100_000 {
            seen.retain(|_, (at, _)| at.elapsed() <= window);
        }
        match seen.get(msg_id) {
            Some((at, old)) if at.elapsed() <= window => Some(*old),
            _ => {
                seen.insert(msg_id.to_owned(), (Instant::now(), seq));
                None
            }
        }
    }

    /// Publishes to every matching subscription, assigning the next sequence of the key.
    pub fn publish(&self, mut message: BusMessage) -> PublishAck {
        if !super::is_streamed(&message.subject) {
            self.send(&message);
            return PublishAck::default();
        }
        let mut streams = self.inner.streams.lock().expect("bus lock");
        let seq = streams.last_seq + 1;
        if let Some(id) = &message.msg_id {
            if let Some(old) = self.duplicate_of(id, seq) {
                return PublishAck {
                    seq: Some(old),
                    duplicate: true,
                };
            }
        }
        streams.last_seq = seq;
        message.seq = Some(seq);
        message.stored_ms = Some(crate::registry::now_ms());
        let stream = streams
            .keys
            .entry(sequence_key(&message.subject).to_owned())
            .or_default();
        stream.ring.push_back((Instant::now(), message.clone()));
        stream.expire(self.inner.retention, self.inner.ring_size);
        // Deliver under the streams lock: sequence order is delivery order.
        self.send(&message);
        PublishAck {
            seq: Some(seq),
            duplicate: false,
        }
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
            .filter(|_| pattern.starts_with("herald.v1.alias."))
            .unwrap_or(pattern);
        let mut streams = self.inner.streams.lock().expect("bus lock");
        if since > streams.last_seq {
            return Replay::ResyncRequired;
        }
        let (retention, ring_size) = (self.inner.retention, self.inner.ring_size);
        // A wildcard pattern (a `/ws` topic subscription such as `updates.*`) covers
        // several keys: their retained events, merged in sequence order.
        let wildcard = key.split('.').any(|t| t == "*" || t == ">");
        let mut missed: Vec<BusMessage> = Vec::new();
        let streams: Vec<&mut KeyStream> = if wildcard {
            streams
                .keys
                .iter_mut()
                .filter(|(name, _)| matches(key, name))
                .map(|(_, stream)| stream)
                .collect()
        } else {
            streams.keys.get_mut(key).into_iter().collect()
        };
        for stream in streams {
            stream.expire(retention, ring_size);
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
}
