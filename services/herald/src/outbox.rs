//! A session's outbound queue: bounded by bytes, not by count, and drained by the
//! connection's writer task ([`crate::websocket`]), so a slow client never delays
//! the registry that fans out to it.
//!
//! The queue is a `VecDeque` behind a mutex holding the reader's waker, not a tokio
//! channel: an idle session then holds no queue memory at all (a tokio channel allocates a
//! 32-slot block up front, about 2.5 KiB a session — the loadtest's idle scenario), and a
//! push wakes the connection's writer directly, with no other task in between.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::websocket::CloseReason;
use bytes::Bytes;
use bytestring::ByteString;
use herald_protocol::WireFormat;
use herald_telemetry::TraceContext;

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

/// What the connection needs to know about a notification besides its bytes.
#[derive(Default)]
pub struct Delivery {
    /// Publish timestamp (ms since the epoch): the connection observes publish → socket write
    /// latency once the frame is written.
    pub published_ms: Option<u64>,
    /// Parent of a `herald.write` span around this socket write; set only for sampled,
    /// small fan-outs (see `registry::MAX_TRACED_WRITES`).
    pub trace: Option<TraceContext>,
}

/// One item of the queue, in the order the connection writes them.
pub enum Outbound {
    /// A data frame (counted against the byte budget until written).
    Frame(Frame, Delivery),
    /// A protocol ping.
    Ping,
    /// The answer to a client's ping.
    Pong(Bytes),
    /// A close frame: nothing is written after it.
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

/// The queue proper, whether either end is gone, and who to wake.
#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// The pong to write next, held apart from `items` and replaced by each newer ping's:
    /// a client that floods pings and never reads has one pong waiting, not one per ping
    /// (RFC 6455 §5.5.3 allows answering only the most recent ping).
    pong: Option<Bytes>,
    /// A protocol ping is due; a keepalive ping still unwritten is not queued twice.
    ping: bool,
    /// Whether the reader may take items yet (see [`Outbox::open`]).
    open: bool,
    /// Every [`Outbox`] was dropped: the reader ends once the queue is empty.
    senders_gone: bool,
    /// The [`OutboxReceiver`] was dropped: pushes fail with [`PushError::Closed`].
    receiver_gone: bool,
    /// The reader's task, waiting for an item.
    waker: Option<Waker>,
    /// The session's reader of client messages, waiting for the backlog to shrink
    /// (see [`Backlog`]).
    backlogged: Option<Waker>,
    /// The session's actor, waiting to hear of an overflow ([`Outbox::poll_overflowed`]).
    owner: Option<Waker>,
}

struct State {
    queue: Mutex<Queue>,
    buffered: AtomicUsize,
    limit: usize,
    overflowed: AtomicBool,
    /// Whether `backlogged` holds a waker: checked before taking the lock.
    backlog_waiting: AtomicBool,
    /// The close reason sent (with 1013) when the budget overflows.
    overflow_reason: &'static str,
    /// Live [`Outbox`] clones: when the last goes, the reader ends once the queue is empty.
    senders: AtomicUsize,
}

impl State {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        // A panic while holding the lock cannot leave the queue half-updated.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the queue, then wakes the reader (outside the lock).
    fn update<T>(&self, change: impl FnOnce(&mut Queue) -> T) -> T {
        let mut queue = self.queue();
        let result = change(&mut queue);
        let waker = queue.waker.take();
        drop(queue);
        if let Some(waker) = waker {
            waker.wake();
        }
        result
    }

    /// Gives `len` bytes back to the budget, waking a reader held back by the backlog
    /// once it is down to half.
    fn release(&self, len: usize) {
        let left = self.buffered.fetch_sub(len, Ordering::Relaxed) - len;
        if left <= self.limit / 2 && self.backlog_waiting.swap(false, Ordering::AcqRel) {
            let waker = self.queue().backlogged.take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn send(&self, out: Outbound) -> Result<(), PushError> {
        self.update(|queue| {
            if queue.receiver_gone {
                return Err(PushError::Closed);
            }
            queue.items.push_back(out);
            Ok(())
        })
    }
}

/// The sending half, cloned into every registry the session joins.
pub struct Outbox {
    state: Arc<State>,
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.state.senders.fetch_add(1, Ordering::Relaxed);
        Outbox {
            state: Arc::clone(&self.state),
        }
    }
}

/// The last clone gone marks the senders gone (one count in the shared state rather
/// than an `Arc` of its own: every registry a session joins holds a clone).
impl Drop for Outbox {
    fn drop(&mut self) {
        if self.state.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.update(|queue| queue.senders_gone = true);
        }
    }
}

/// Bytes charged to a session's budget by [`Outbox::charge`], given back on drop.
pub struct Charge {
    state: Arc<State>,
    len: usize,
}

impl std::fmt::Debug for Charge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Charge").field("len", &self.len).finish()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.state.release(self.len);
    }
}

/// The receiving half: the connection's writer task reads it ([`crate::websocket::Transport`]).
pub struct OutboxReceiver {
    state: Arc<State>,
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        let mut queue = self.state.queue();
        queue.receiver_gone = true;
        queue.items = VecDeque::new();
        queue.pong = None;
    }
}

impl OutboxReceiver {
    /// The next queued item once the queue is open; `Ready(None)` once every sender is gone
    /// and the queue is empty (what is queued then is written even if it was never opened).
    pub fn poll_item(&self, cx: &mut Context<'_>) -> Poll<Option<Outbound>> {
        let mut queue = self.state.queue();
        if queue.open || queue.senders_gone {
            if let Some(data) = queue.pong.take() {
                return Poll::Ready(Some(Outbound::Pong(data)));
            }
            if std::mem::take(&mut queue.ping) {
                return Poll::Ready(Some(Outbound::Ping));
            }
            if let Some(out) = queue.items.pop_front() {
                if queue.items.is_empty() {
                    // Given back whole: most sessions are idle between frames, and an
                    // emptied queue's slots would stay with each of them (~300 B).
                    queue.items = VecDeque::new();
                }
                return Poll::Ready(Some(out));
            }
            if queue.senders_gone {
                return Poll::Ready(None);
            }
        }
        if !queue
            .waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Gives a written frame's bytes back to the budget.
    pub fn written(&self, len: usize) {
        self.state.release(len);
    }

    /// What the connection's reader checks before reading more of the client's messages.
    pub fn backlog(&self) -> Backlog {
        Backlog {
            state: Arc::clone(&self.state),
        }
    }

    /// The close reason for an overflowed session, if it overflowed: queued frames are then
    /// abandoned, the session closes with 1013 and the client resumes where it left off.
    pub fn overflow_reason(&self) -> Option<&'static str> {
        self.state
            .overflowed
            .load(Ordering::Relaxed)
            .then_some(self.state.overflow_reason)
    }
}

/// Holds the reading of a client's messages back while its session's queue is more than
/// half full: the client's requests would only queue more answers. Without it a client that
/// floods requests outruns its own writer (which runs as a separate task, woken from other
/// threads) and is evicted as a slow consumer although it reads.
pub struct Backlog {
    state: Arc<State>,
}

impl Backlog {
    /// `Ready` while at most half the budget is queued; otherwise the task is woken once
    /// the writer has taken enough.
    pub fn poll_room(&self, cx: &mut Context<'_>) -> Poll<()> {
        let state = &self.state;
        if state.buffered.load(Ordering::Relaxed) <= state.limit / 2 {
            return Poll::Ready(());
        }
        state.queue().backlogged = Some(cx.waker().clone());
        state.backlog_waiting.store(true, Ordering::Release);
        // The writer may have taken enough between the check and the waker being stored.
        if state.buffered.load(Ordering::Relaxed) <= state.limit / 2 {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Outbox {
    /// A new queue that overflows past `limit` bytes, closing with `overflow_reason`.
    pub fn new(limit: usize, overflow_reason: &'static str) -> (Outbox, OutboxReceiver) {
        let state = Arc::new(State {
            queue: Mutex::new(Queue::default()),
            buffered: AtomicUsize::new(0),
            limit,
            overflowed: AtomicBool::new(false),
            backlog_waiting: AtomicBool::new(false),
            overflow_reason,
            senders: AtomicUsize::new(1),
        });
        (
            Outbox {
                state: Arc::clone(&state),
            },
            OutboxReceiver { state },
        )
    }

    /// Lets the connection write what is queued: a session queues its greeting and joins
    /// its registries first, so what they replay waits behind the greeting.
    pub fn open(&self) {
        self.state.update(|queue| queue.open = true);
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
            self.mark_slow();
            return Err(PushError::SlowConsumer);
        }
        self.state
            .send(Outbound::Frame(frame, delivery))
            .inspect_err(|_| {
                self.state.buffered.fetch_sub(len, Ordering::Relaxed);
            })
    }

    /// Charges `len` bytes held outside the queue (an event relayed to the session's
    /// actor) to the same budget as queued frames, until the returned [`Charge`] drops.
    pub fn charge(&self, len: usize) -> Result<Charge, PushError> {
        if self.state.overflowed.load(Ordering::Relaxed) {
            return Err(PushError::SlowConsumer);
        }
        if self.state.queue().receiver_gone {
            return Err(PushError::Closed);
        }
        let queued = self.state.buffered.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.state.limit {
            self.state.buffered.fetch_sub(len, Ordering::Relaxed);
            self.mark_slow();
            return Err(PushError::SlowConsumer);
        }
        Ok(Charge {
            state: Arc::clone(&self.state),
            len,
        })
    }

    /// Marks the session a slow consumer (its owner closes it with 1013), as if a push
    /// had overflowed; later pushes are refused.
    pub fn mark_slow(&self) {
        if !self.state.overflowed.swap(true, Ordering::Relaxed) {
            // Wake the connection (it abandons the queue and closes) and the session.
            let owner = self.state.update(|queue| queue.owner.take());
            if let Some(owner) = owner {
                owner.wake();
            }
        }
    }

    /// `Ready` once the session overflowed its budget; otherwise the task is woken when
    /// it does.
    pub fn poll_overflowed(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_overflowed() {
            return Poll::Ready(());
        }
        let mut queue = self.state.queue();
        if !queue
            .owner
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            queue.owner = Some(cx.waker().clone());
        }
        drop(queue);
        // An overflow between the first look and the waker being stored.
        if self.is_overflowed() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Whether the session overflowed its budget.
    pub fn is_overflowed(&self) -> bool {
        self.state.overflowed.load(Ordering::Relaxed)
    }

    /// Queues a protocol ping, ahead of data frames: at most one waits at a time.
    pub fn ping(&self) {
        self.state.update(|queue| queue.ping = !queue.receiver_gone);
    }

    /// Answers a client's ping, ahead of data frames: only the latest answer waits, so
    /// pings from a client that does not read hold at most 125 bytes.
    pub fn pong(&self, data: Bytes) {
        self.state.update(|queue| {
            if !queue.receiver_gone {
                queue.pong = Some(data);
            }
        });
    }

    /// Queues a close after what is already queued and opens the queue: the connection
    /// ends after writing it.
    pub fn close(&self, reason: Option<CloseReason>) {
        self.state.update(|queue| {
            queue.open = true;
            if !queue.receiver_gone {
                queue.items.push_back(Outbound::Close(reason));
            }
        });
    }
}

/// Helpers for tests of code that marks sessions slow.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};

    use super::Outbox;

    /// How many times a session's actor would have been told of its overflow.
    #[derive(Default)]
    pub(crate) struct Told(AtomicUsize);

    impl Told {
        /// The wakes so far.
        pub(crate) fn count(&self) -> usize {
            self.0.load(Ordering::Relaxed)
        }
    }

    impl Wake for Told {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Watches `outbox` for an overflow as a session's `Vigil` does.
    pub(crate) fn watch_overflow(outbox: &Outbox) -> Arc<Told> {
        let told = Arc::new(Told::default());
        let waker = Waker::from(Arc::clone(&told));
        assert!(outbox
            .poll_overflowed(&mut Context::from_waker(&waker))
            .is_pending());
        told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushing_past_the_budget_marks_a_slow_consumer_once() {
        let (outbox, _rx) = Outbox::new(10, "slow");
        let told = test_support::watch_overflow(&outbox);
        let frame = Frame::Binary(Bytes::from_static(b"123456"));
        assert_eq!(outbox.push(frame.clone()), Ok(()));
        assert_eq!(outbox.push(frame.clone()), Err(PushError::SlowConsumer));
        assert!(outbox.is_overflowed());
        assert_eq!(
            outbox.push(Frame::Binary(Bytes::new())),
            Err(PushError::SlowConsumer)
        );
        assert_eq!(outbox.push(frame), Err(PushError::SlowConsumer));
        assert_eq!(told.count(), 1, "the session is told once");
    }

    #[test]
    fn a_charge_counts_against_the_budget_until_dropped() {
        let (outbox, rx) = Outbox::new(100, "slow");
        let held = outbox.charge(60).unwrap();
        assert_eq!(
            outbox.push(Frame::Binary(Bytes::from(vec![0; 50]))),
            Err(PushError::SlowConsumer),
            "frames and charges share one budget"
        );
        drop(held);
        let (outbox, rx2) = Outbox::new(100, "slow");
        let held = outbox.charge(60).unwrap();
        drop(held);
        assert!(outbox.push(Frame::Binary(Bytes::from(vec![0; 90]))).is_ok());
        drop(rx2);
        assert_eq!(outbox.charge(1).unwrap_err(), PushError::Closed);
        drop(rx);
    }

    async fn recv(rx: &OutboxReceiver) -> Option<Outbound> {
        std::future::poll_fn(|cx| rx.poll_item(cx)).await
    }

    #[tokio::test]
    async fn the_reading_side_gets_items_in_order_then_ends_when_senders_are_gone() {
        let (outbox, rx) = Outbox::new(1 << 20, "slow");
        outbox.open();
        assert_eq!(
            rx.state.queue().items.capacity(),
            0,
            "idle: no queue memory"
        );
        let second = outbox.clone();
        let reader = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(out) = recv(&rx).await {
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

    #[tokio::test]
    async fn nothing_is_read_before_open_except_once_the_senders_are_gone() {
        let (outbox, rx) = Outbox::new(1 << 20, "slow");
        outbox
            .push(Frame::Binary(Bytes::from_static(b"a")))
            .unwrap();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_item(&mut cx).is_pending(), "closed gate");
        outbox.open();
        assert!(matches!(
            rx.poll_item(&mut cx),
            Poll::Ready(Some(Outbound::Frame(..)))
        ));

        let (outbox, rx) = Outbox::new(1 << 20, "slow");
        outbox
            .push(Frame::Binary(Bytes::from_static(b"b")))
            .unwrap();
        drop(outbox);
        assert!(matches!(recv(&rx).await, Some(Outbound::Frame(..))));
        assert!(recv(&rx).await.is_none());
    }

    #[tokio::test]
    async fn overflow_wakes_the_reader_with_the_reason() {
        let (outbox, rx) = Outbox::new(4, "too slow");
        outbox.open();
        let reader = tokio::spawn(async move {
            std::future::poll_fn(|cx| match rx.overflow_reason() {
                Some(reason) => Poll::Ready(reason),
                None => rx.poll_item(cx).map(|_| "read an item"),
            })
            .await
        });
        tokio::task::yield_now().await;
        assert!(outbox
            .push(Frame::Binary(Bytes::from_static(b"12345")))
            .is_err());
        assert_eq!(reader.await.unwrap(), "too slow");
    }

    #[test]
    fn only_the_latest_pong_and_one_ping_wait_ahead_of_data() {
        let (outbox, rx) = Outbox::new(1 << 20, "slow");
        outbox
            .push(Frame::Binary(Bytes::from_static(b"data")))
            .unwrap();
        for i in 0..10_000u32 {
            outbox.pong(Bytes::copy_from_slice(&i.to_be_bytes()));
            outbox.ping();
        }
        assert_eq!(
            rx.state.queue().items.len(),
            1,
            "control frames are not queued"
        );
        outbox.open();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut next = || match rx.poll_item(&mut cx) {
            Poll::Ready(Some(Outbound::Pong(data))) => format!("pong {data:?}"),
            Poll::Ready(Some(Outbound::Ping)) => "ping".to_owned(),
            Poll::Ready(Some(Outbound::Frame(..))) => "frame".to_owned(),
            Poll::Ready(Some(Outbound::Close(_))) => "close".to_owned(),
            Poll::Ready(None) => "end".to_owned(),
            Poll::Pending => "pending".to_owned(),
        };
        assert_eq!(
            [next(), next(), next(), next()],
            [
                format!("pong {:?}", Bytes::copy_from_slice(&9_999u32.to_be_bytes())),
                "ping".to_owned(),
                "frame".to_owned(),
                "pending".to_owned()
            ]
        );
    }

    #[test]
    fn a_dropped_receiver_reports_closed() {
        let (outbox, rx) = Outbox::new(10, "slow");
        drop(rx);
        assert_eq!(
            outbox.push(Frame::Binary(Bytes::from_static(b"x"))),
            Err(PushError::Closed)
        );
    }

    #[test]
    fn reading_waits_while_more_than_half_the_budget_is_queued() {
        use std::task::Wake;

        struct Flag(AtomicBool);
        impl Wake for Flag {
            fn wake(self: Arc<Self>) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let (outbox, rx) = Outbox::new(100, "slow");
        let backlog = rx.backlog();
        let woken = Arc::new(Flag(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&woken));
        let mut cx = Context::from_waker(&waker);
        outbox
            .push(Frame::Binary(Bytes::from(vec![0; 50])))
            .unwrap();
        assert!(backlog.poll_room(&mut cx).is_ready(), "half the budget");
        outbox
            .push(Frame::Binary(Bytes::from(vec![0; 20])))
            .unwrap();
        assert!(backlog.poll_room(&mut cx).is_pending(), "over half");
        rx.written(10);
        assert!(!woken.0.load(Ordering::SeqCst), "60 of 100 still queued");
        rx.written(50);
        assert!(
            woken.0.load(Ordering::SeqCst),
            "down to 10: the reader is woken"
        );
        assert!(backlog.poll_room(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_drained_queue_gives_its_memory_back() {
        let (outbox, rx) = Outbox::new(1 << 20, "slow");
        outbox.open();
        outbox
            .push(Frame::Binary(Bytes::from_static(b"connected")))
            .unwrap();
        assert!(rx.state.queue().items.capacity() > 0);
        assert!(matches!(recv(&rx).await, Some(Outbound::Frame(..))));
        assert_eq!(
            rx.state.queue().items.capacity(),
            0,
            "an idle session keeps no queue slots after its greeting"
        );
    }
}
