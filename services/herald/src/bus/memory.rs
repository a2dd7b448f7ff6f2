//! The in-process bus: one node, no NATS. Assigns a sequence per routing key the way
//! the JetStream stream does in NATS mode.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use herald_protocol::subject::matches;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{BusMessage, PublishAck, Subscription};

/// In-process publish/subscribe with NATS subject semantics.
#[derive(Clone, Default)]
pub struct MemoryBus {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Subscriptions by pattern; publish looks up the subject itself and its `parent.*`,
    /// so the common per-alias wildcard costs a hash lookup, not a scan.
    subscriptions: Mutex<HashMap<String, Vec<Subscriber>>>,
    /// Patterns that need a scan (`>` or an inner `*`).
    scanned: Mutex<Vec<String>>,
    /// Last sequence per key (see [`sequence_key`]).
    sequences: Mutex<HashMap<String, u64>>,
    next_id: AtomicU64,
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

impl MemoryBus {
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
        let seq = {
            let mut seqs = self.inner.sequences.lock().expect("bus lock");
            let seq = seqs
                .entry(sequence_key(&message.subject).to_owned())
                .or_insert(0);
            *seq += 1;
            *seq
        };
        message.seq = Some(seq);
        let subject = message.subject.clone();
        let subs = self.inner.subscriptions.lock().expect("bus lock");
        let send = |pattern: &str| {
            if let Some(list) = subs.get(pattern) {
                for s in list {
                    let _ = s.tx.send(message.clone());
                }
            }
        };
        send(&subject);
        if let Some((parent, _)) = subject.rsplit_once('.') {
            send(&format!("{parent}.*"));
        }
        for pattern in self.inner.scanned.lock().expect("bus lock").iter() {
            if matches(pattern, &subject) {
                send(pattern);
            }
        }
        PublishAck { seq: Some(seq) }
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

    fn msg(subject: &str) -> BusMessage {
        BusMessage {
            subject: subject.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn wildcards_route_and_sequences_are_per_alias() {
        let bus = MemoryBus::default();
        let mut a = bus.subscribe("herald.v1.alias.a.*");
        let mut all = bus.subscribe("herald.v1.>");
        bus.publish(msg("herald.v1.alias.a.newMessage"));
        bus.publish(msg("herald.v1.alias.b.newMessage"));
        bus.publish(msg("herald.v1.alias.a.flagsUpdated"));
        let first = a.next().await.unwrap();
        let second = a.next().await.unwrap();
        assert_eq!(first.subject, "herald.v1.alias.a.newMessage");
        assert_eq!((first.seq, second.seq), (Some(1), Some(2)));
        assert_eq!(second.subject, "herald.v1.alias.a.flagsUpdated");
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(all.next().await.unwrap().seq.unwrap());
        }
        assert_eq!(seen, [1, 1, 2]);
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
}
