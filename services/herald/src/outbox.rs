//! A session's outbound queue: bounded by bytes, not by count, and drained by one writer
//! task per socket so a slow client never delays the registry that fans out to it.
//!
//! The queue is a `VecDeque` behind a mutex with a `Notify`, not a tokio channel: an idle
//! session then holds no queue memory at all (a tokio unbounded channel allocates a
//! 32-slot block up front, about 2.5 KiB a session — the loadtest's idle scenario).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use actix_ws::CloseReason;
use bytes::Bytes;
use bytestring::ByteString;
use herald_protocol::WireFormat;
use herald_telemetry::TraceContext;
use tokio::sync::Notify;

use crate::metrics;

/// One encoded frame, shared by every session that receives it.
#[derive(Debug, Clone)]
pub enum Frame {
    /// A JSON text frame.
    Text(ByteString),
    /// A MessagePack (or other binary) frame.
    Binary(Bytes),
}

impl Frame {
    /// Encodes a control frame (`connected`, `ping`, `resyncRequired`, ...) in `format`.
    pub fn encode(format: WireFormat, value: &serde_json::Value) -> Option<Frame> {
        match format {
            WireFormat::Json => Some(Frame::Text(ByteString::from(value.to_string()))),
            WireFormat::MessagePack => format.encode_value(value).ok().map(Frame::Binary),
        }
    }

    /// Payload size, counted against `limits.max_buffered_bytes`.
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(s) => s.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    /// Whether the frame is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the writer needs to know about a notification besides its bytes.
#[derive(Default)]
pub struct Delivery {
    /// Publish timestamp (ms since the epoch): the writer observes publish → socket write
    /// latency once the frame is written.
    pub published_ms: Option<u64>,
    /// Parent of a `herald.write` span around this socket write; set only for sampled,
    /// small fan-outs (see `registry::MAX_TRACED_WRITES`).
    pub trace: Option<TraceContext>,
}

enum Outbound {
    Frame(Frame, Delivery),
    Ping,
    Pong(Bytes),
    Close(Option<CloseReason>),
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The session has more than its byte budget queued: it is being disconnected.
    SlowConsumer,
    /// The session is gone.
    Closed,
}

/// Called once when a session first overflows, so its actor can close it at once.
pub type OnOverflow = Box<dyn Fn() + Send + Sync>;

/// Queue capacity kept after a burst drains; more is given back.
const KEPT_CAPACITY: usize = 16;

/// The queue proper and whether either end is gone.
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// Every [`Outbox`] was dropped: the writer ends once the queue is empty.
    senders_gone: bool,
    /// The [`OutboxReceiver`] was dropped: pushes fail with [`PushError::Closed`].
    receiver_gone: bool,
}

struct State {
    queue: Mutex<Queue>,
    /// Wakes the writer; `notify_one` keeps a permit when the writer is not waiting yet.
    wake: Notify,
    buffered: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    on_overflow: OnOverflow,
}

impl State {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, out: Outbound) -> Result<(), PushError> {
        let mut queue = self.queue();
        if queue.receiver_gone {
            return Err(PushError::Closed);
        }
        queue.items.push_back(out);
        drop(queue);
        self.wake.notify_one();
        Ok(())
    }
}

/// Marks the senders gone when the last [`Outbox`] clone is dropped.
struct Senders(Arc<State>);

impl Drop for Senders {
    fn drop(&mut self) {
        self.0.queue().senders_gone = true;
        self.0.wake.notify_one();
    }
}

/// The sending half, cloned into every registry the session joins.
#[derive(Clone)]
pub struct Outbox {
    state: Arc<State>,
    _senders: Arc<Senders>,
}

/// The receiving half, consumed by [`Outbox::run_writer`].
pub struct OutboxReceiver {
    state: Arc<State>,
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.state.queue();
        queue.receiver_gone = true;
        queue.items = VecDeque::new();
    }
}

impl OutboxReceiver {
    /// The next queued item; `None` once every sender is gone and the queue is empty.
    async fn recv(&self) -> Option<Outbound> {
        loop {
            {
                let mut queue = self.state.queue();
                if let Some(out) = queue.items.pop_front() {
                    if queue.items.is_empty() && queue.items.capacity() > KEPT_CAPACITY {
                        queue.items.shrink_to(KEPT_CAPACITY);
                    }
                    return Some(out);
                }
                if queue.senders_gone {
                    return None;
                }
            }
            self.state.wake.notified().await;
        }
    }
}

impl Outbox {
    /// A new queue that overflows past `limit` bytes.
    pub fn new(limit: usize, on_overflow: OnOverflow) -> (Outbox, OutboxReceiver) {
        let state = Arc::new(State {
            queue: Mutex::new(Queue::default()),
            wake: Notify::new(),
            buffered: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            on_overflow,
        });
        (
            Outbox {
                state: Arc::clone(&state),
                _senders: Arc::new(Senders(Arc::clone(&state))),
            },
            OutboxReceiver { state },
        )
    }

    /// Queues a data frame; past the byte budget the session is marked a slow consumer.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        self.push_delivery(frame, Delivery::default())
    }

    /// Like [`Outbox::push`] for a notification: its latency is observed, and its write
    /// traced, as `delivery` says.
    pub fn push_delivery(&self, frame: Frame, delivery: Delivery) -> Result<(), PushError> {
        if self.state.overflowed.load(Ordering::Relaxed) {
            return Err(PushError::SlowConsumer);
        }
        let len = frame.len();
        let queued = self.state.buffered.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.state.limit {
            self.state.buffered.fetch_sub(len, Ordering::Relaxed);
            if !self.state.overflowed.swap(true, Ordering::Relaxed) {
                (self.state.on_overflow)();
            }
            return Err(PushError::SlowConsumer);
        }
        self.state
            .send(Outbound::Frame(frame, delivery))
            .inspect_err(|_| {
                self.state.buffered.fetch_sub(len, Ordering::Relaxed);
            })
    }

    /// Marks the session a slow consumer (its owner closes it with 1013), as if a push
    /// had overflowed; later pushes are refused.
    pub fn mark_slow(&self) {
        if !self.state.overflowed.swap(true, Ordering::Relaxed) {
            (self.state.on_overflow)();
        }
    }

    /// Whether the session overflowed its budget.
    pub fn is_overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Relaxed)
    }

    /// Queues a protocol ping (not counted: it is tiny and must not starve).
    pub fn ping(&self) {
        let _ = self.state.send(Outbound::Ping);
    }

    /// Answers a client's ping.
    pub fn pong(&self, data: Bytes) {
        let _ = self.state.send(Outbound::Pong(data));
    }

    /// Queues a close after what is already queued; the writer stops after it.
    pub fn close(&self, reason: Option<CloseReason>) {
        let _ = self.state.send(Outbound::Close(reason));
    }
}

impl OutboxReceiver {
    /// Writes queued frames to the socket until a close, an error, or every sender is gone.
    /// An overflowed queue is abandoned: the session closes with 1013 and the client resumes
    /// with `since`.
    pub async fn run_writer(self, mut socket: actix_ws::Session) {
        while let Some(out) = self.recv().await {
            if self.state.overflowed.load(Ordering::Relaxed) {
                let _ = socket
                    .close(Some(CloseReason {
                        code: actix_ws::CloseCode::Again,
                        description: Some("slow consumer: reconnect with since=<last seq>".into()),
                    }))
                    .await;
                return;
            }
            let result = match out {
                Outbound::Frame(frame, delivery) => {
                    let len = frame.len();
                    let span = delivery.trace.map(|parent| {
                        let format = match frame {
                            Frame::Text(_) => "json",
                            Frame::Binary(_) => "msgpack",
                        };
                        let span = tracing::debug_span!(
                            "herald.write",
                            format,
                            bytes = len,
                            outcome = tracing::field::Empty
                        );
                        herald_telemetry::propagation::set_parent(&span, parent);
                        span
                    });
                    let r = match frame {
                        Frame::Text(text) => socket.text(text).await,
                        Frame::Binary(bin) => socket.binary(bin).await,
                    };
                    self.state.buffered.fetch_sub(len, Ordering::Relaxed);
                    if let (Ok(()), Some(ms)) = (&r, delivery.published_ms) {
                        let now = crate::registry::now_ms();
                        metrics::delivery_latency(now.saturating_sub(ms) as f64 / 1000.0);
                    }
                    if let Some(span) = span {
                        span.record("outcome", if r.is_ok() { "written" } else { "closed" });
                    }
                    r
                }
                Outbound::Ping => socket.ping(b"").await,
                Outbound::Pong(data) => socket.pong(&data).await,
                Outbound::Close(reason) => {
                    let _ = socket.close(reason).await;
                    return;
                }
            };
            if result.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushing_past_the_budget_marks_a_slow_consumer_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&calls);
        let (outbox, _rx) = Outbox::new(
            10,
            Box::new(move || {
                counter.fetch_add(1, Ordering::Relaxed);
            }),
        );
        let frame = Frame::Binary(Bytes::from_static(b"123456"));
        assert_eq!(outbox.push(frame.clone()), Ok(()));
        assert_eq!(outbox.push(frame.clone()), Err(PushError::SlowConsumer));
        assert!(outbox.is_overflowed());
        assert_eq!(
            outbox.push(Frame::Binary(Bytes::new())),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(outbox.push(frame), Err(PushError::SlowConsumer));
        assert_eq!(calls.load(Ordering::Relaxed), 1, "the session is told once");
    }

    #[tokio::test]
    async fn the_writer_side_gets_items_in_order_then_ends_when_senders_are_gone() {
        let (outbox, rx) = Outbox::new(1 << 20, Box::new(|| {}));
        assert_eq!(
            rx.state.queue().items.capacity(),
            0,
            "idle: no queue memory"
        );
        let second = outbox.clone();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(out) = rx.recv().await {
                if let Outbound::Frame(Frame::Binary(b), _) = out {
                    seen.push(b[0]);
                }
            }
            seen
        });
        for i in 0..100u8 {
            let sender = if i % 2 == 0 { &outbox } else { &second };
            sender
                .push(Frame::Binary(Bytes::copy_from_slice(&[i])))
                .unwrap();
            if i % 10 == 0 {
                tokio::task::yield_now().await;
            }
        }
        drop(outbox);
        drop(second);
        let seen = reader.await.unwrap();
        assert_eq!(seen, (0..100).collect::<Vec<u8>>());
    }

    #[test]
    fn a_dropped_receiver_reports_closed() {
        let (outbox, rx) = Outbox::new(10, Box::new(|| {}));
        drop(rx);
        assert_eq!(
            outbox.push(Frame::Binary(Bytes::from_static(b"x"))),
            Err(PushError::Closed)
        );
    }
}
