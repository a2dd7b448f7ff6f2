//! The session core every dialect embeds: a [`Connection`] owns what a session shares
//! whatever its dialect (id, node state, outbox, joined registries, liveness, admission
//! slot) and handles the transport (ping, close, protocol errors, keepalive, drain,
//! revocation, slow-consumer eviction); the dialect's actor implements [`Session`] for
//! its own messages.
//!
//! The session's streams are driven by [`Watch`], not `ctx.add_stream`: `add_stream` needs
//! the actor to implement `StreamHandler` for each item type, which a generic core cannot
//! provide for a dialect's type (orphan rule), and the macro that used to do it relied on
//! fields it could not name.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Poll};
use std::time::Duration;

use actix::{Actor, ActorContext, ActorFuture, AsyncContext, Context};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use super::lifecycle::{Revocable, Vigil};
use super::Dialect;
use crate::limits::Slot;
use crate::metrics;
use crate::outbox::{Frame, Outbox};
use crate::registry::{Join, RoutingKey, SessionId};
use crate::state::AppState;
use crate::websocket::{self, CloseCode, CloseReason, Message, ProtocolError, Transport};

/// Closed by the node when a client shows no life for a whole keepalive round.
pub const KEEPALIVE_TIMEOUT: u16 = 1008;
/// The reason sent with [`KEEPALIVE_TIMEOUT`].
const KEEPALIVE_REASON: &str = "keepalive timeout: no pong since the last ping";
/// Timers further away than this are not armed: the session will have reconnected long
/// before (and `run_later` with a huge delay overflows the timer wheel).
pub const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

/// A client's data message, once the transport has handled everything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// A text message (UTF-8 checked).
    Text(ByteString),
    /// A binary message.
    Binary(Bytes),
}

/// What a dialect's session actor adds to its [`Connection`].
pub trait Session: Actor<Context = Context<Self>> {
    /// The dialect (how it closes: [`super::closes`]).
    const DIALECT: Dialect;

    /// The session's connection core.
    fn conn(&mut self) -> &mut Connection;

    /// A text or binary message from the client.
    fn on_data(&mut self, data: Data, ctx: &mut Context<Self>);

    /// A keepalive round; dialects with an app-level ping, or sessions not yet live,
    /// override it.
    fn keepalive(&mut self, ctx: &mut Context<Self>) {
        self.conn().keepalive(ctx);
    }

    /// The answer to a data message over the session's inbound `rate`
    /// ([`Connection::limit_rate`]), which is dropped unread.
    fn rate_limited(&mut self, _rate: MessageRate) {}

    /// A frame queued ahead of the 1009 close of an oversized message (JMAP's
    /// `requestTooLarge`).
    fn overflow_notice(&self) -> Option<Frame> {
        None
    }
}

/// A session's inbound rate of data messages, and the settings section that set it.
#[derive(Debug, Clone, Copy)]
pub struct MessageRate {
    /// Sustained messages per second.
    pub per_second: u32,
    /// Messages allowed in a burst above the sustained rate.
    pub burst: u32,
    /// The settings section (`realtime`, `rooms`) whose `messages_per_second` and
    /// `burst` these are.
    pub section: &'static str,
}

impl MessageRate {
    /// `per_second` in bursts of `burst`, as set in settings `section`.
    pub fn new(section: &'static str, per_second: u32, burst: u32) -> MessageRate {
        MessageRate {
            per_second,
            burst,
            section,
        }
    }

    /// How long a client over the rate should wait before its next message.
    pub fn retry_after_ms(&self) -> u64 {
        1000 / u64::from(self.per_second.max(1))
    }
}

/// The rate as a client is told it, with the keys an operator changes it by.
impl std::fmt::Display for MessageRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let MessageRate {
            per_second,
            burst,
            section,
        } = self;
        write!(
            f,
            "at most {per_second} per second with bursts of {burst} ({section}.messages_per_second, {section}.burst)"
        )
    }
}

/// What every session holds, whatever its dialect.
pub struct Connection {
    /// Node-unique id of the session.
    pub id: SessionId,
    /// The node's shared state.
    pub state: Arc<AppState>,
    /// The outbound queue: the connection's writer task writes it.
    pub outbox: Outbox,
    /// The credentials checked at each revocation, once the session has some
    /// ([`Connection::watch_revocations`]).
    pub revocable: Option<Revocable>,
    /// Fires if reconciliation gives the session's place under a cluster-wide cap to an
    /// earlier session ([`Connection::watch_reclaim`]); the session's `Vigil` polls it.
    pub(super) reclaim: Option<crate::cluster_limits::Reclaimed>,
    /// Registries joined, left by [`Connection::leave_all`] (at the latest when dropped).
    joined: Vec<RoutingKey>,
    /// The inbound rate of data messages, for dialects whose messages cost bus work
    /// (boxed: most sessions, `/v1/ws` ones, have none).
    limiter: Option<Box<(DefaultDirectRateLimiter, MessageRate)>>,
    /// Whether the client showed life since the last keepalive round.
    alive: bool,
    /// Labels the session gauge.
    dialect: Dialect,
    /// The session's place under the node's connection cap.
    _node_slot: Slot<()>,
}

impl Connection {
    /// Starts a session actor on `transport` (an upgraded connection's
    /// [`websocket::Socket`]), with an outbound queue bounded by
    /// `limits.max_buffered_bytes` (overflowing it evicts the session with 1013 and
    /// the dialect's reason, [`super::closes`]), a keepalive every `ping_interval` and the node's drain
    /// watched. `make` builds the actor around its connection.
    pub fn start<S: Session>(
        state: Arc<AppState>,
        transport: impl Transport,
        node_slot: Slot<()>,
        ping_interval: Duration,
        make: impl FnOnce(Connection, &mut Context<S>) -> S,
    ) {
        // The session hears of an overflow through the outbox itself (its `Vigil` polls
        // it): no channel per session.
        let (outbox, receiver) = Outbox::new(
            state.limits.settings.max_buffered_bytes,
            super::closes(S::DIALECT).slow,
        );
        let inbound = transport.start(receiver);
        let conn = Connection::new(state, outbox, node_slot, S::DIALECT);
        S::create(move |ctx| {
            watch(ctx, inbound, receive::<S>, |_, ctx| ctx.stop());
            ctx.spawn(Vigil::<S>::new(&conn.state, ping_interval));
            make(conn, ctx)
        });
    }

    /// A connection around `outbox`, counted in the dialect's session gauge until dropped.
    fn new(
        state: Arc<AppState>,
        outbox: Outbox,
        node_slot: Slot<()>,
        dialect: Dialect,
    ) -> Connection {
        metrics::session_delta(dialect, 1.0);
        Connection {
            id: crate::state::next_session_id(),
            state,
            outbox,
            revocable: None,
            reclaim: None,
            limiter: None,
            joined: Vec::new(),
            alive: true,
            dialect,
            _node_slot: node_slot,
        }
    }

    /// Limits the client's data messages to `rate`; those over it go to
    /// [`Session::rate_limited`] instead of [`Session::on_data`].
    pub fn limit_rate(&mut self, rate: MessageRate) {
        // 0 counts as 1: a setting cannot stop a session from sending at all.
        let at_least_one = |n| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        let quota =
            Quota::per_second(at_least_one(rate.per_second)).allow_burst(at_least_one(rate.burst));
        self.limiter = Some(Box::new((RateLimiter::direct(quota), rate)));
    }

    /// Queues a close frame after what is queued and stops the actor. The reason is cut
    /// to what a close frame carries when it is written ([`websocket::cut_close_reason`]).
    pub fn close<A>(&mut self, code: u16, reason: &str, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        tracing::debug!(session = self.id, code, reason, "closing");
        self.outbox.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// One keepalive round: closes with 1008 if the client showed no life since the last
    /// round, else pings it. Returns whether the session is still open.
    pub fn keepalive<A>(&mut self, ctx: &mut Context<A>) -> bool
    where
        A: Actor<Context = Context<A>>,
    {
        if !self.alive {
            self.close(KEEPALIVE_TIMEOUT, KEEPALIVE_REASON, ctx);
            return false;
        }
        self.alive = false;
        self.outbox.ping();
        true
    }

    /// Handles a transport item: every item is a sign of life; pings are answered, a
    /// close is answered and stops the actor, a protocol error closes with its code.
    /// What is left is the client's data.
    pub fn inbound<S: Session>(
        &mut self,
        item: Result<Message, ProtocolError>,
        ctx: &mut Context<S>,
    ) -> Option<Data> {
        self.alive = true;
        match item {
            Ok(Message::Text(text)) => return Some(Data::Text(text)),
            Ok(Message::Binary(bytes)) => return Some(Data::Binary(bytes)),
            Ok(Message::Ping(data)) => self.outbox.pong(data),
            Ok(Message::Pong(_) | Message::Continuation(_) | Message::Nop) => {}
            Ok(Message::Close(reason)) => {
                self.outbox.close(if super::closes(S::DIALECT).echo {
                    reason
                } else {
                    None
                });
                ctx.stop();
            }
            // A single frame over the limit, or fragments adding up to more than it.
            Err(ProtocolError::Overflow) => {
                self.close(1009, super::closes(S::DIALECT).overflow, ctx)
            }
            Err(error) => {
                tracing::debug!(session = self.id, %error, "protocol error; closing");
                let (code, reason) = websocket::protocol_close(&error);
                self.close(code, reason, ctx);
            }
        }
        None
    }

    /// Joins a registry, remembered so it is left when the session ends; resolves once
    /// the registry's subscription is in place.
    pub fn join(&mut self, join: Join) -> impl Future<Output = ()> + 'static {
        // Exactly as many slots as keys: a session joins a few and keeps them for life.
        self.joined.reserve_exact(1);
        self.joined.push(join.key.clone());
        let directory = self.state.directory.clone();
        async move { directory.join(join).await }
    }

    /// Records a registry the session joins through `directory` itself, when the join
    /// must wait for other work first, so it is left with the rest.
    pub fn track(&mut self, key: RoutingKey) {
        self.joined.push(key);
    }

    /// Leaves one registry joined with [`Connection::join`] (no-op if not joined).
    pub fn leave(&mut self, key: &RoutingKey) {
        if let Some(at) = self.joined.iter().position(|joined| joined == key) {
            let key = self.joined.swap_remove(at);
            self.state.directory.leave(key, self.id);
        }
    }

    /// Leaves every registry joined.
    pub fn leave_all(&mut self) {
        for key in self.joined.drain(..) {
            self.state.directory.leave(key, self.id);
        }
    }

    /// Watches the revocation of `principal`'s credentials: the session closes with 4001
    /// (or 1013, see [`Revocable`]) when they are revoked on any node.
    pub fn watch_revocations(&mut self, principal: &crate::auth::Principal) {
        self.revocable = Some(Revocable::new(&self.state, principal));
    }

    /// Watches the session's place under a cluster-wide cap: if reconciliation gives it
    /// to a session admitted earlier on another node ([`crate::cluster_limits`]), the
    /// session closes with 4429, the code a refusal after the upgrade uses.
    pub fn watch_reclaim<S: Session>(
        &mut self,
        reclaimed: crate::cluster_limits::Reclaimed,
        ctx: &mut Context<S>,
    ) {
        self.reclaim = Some(reclaimed);
        // A new item has the context poll its items again in this pass, the `Vigil` among
        // them: it polls the receiver now, so the reclaim wakes the session.
        ctx.spawn(actix::fut::ready(()));
    }

    /// Closes with `code` and `reason` after `delay` (see [`later`]).
    pub fn close_after<S: Session>(
        &self,
        delay: Duration,
        code: u16,
        reason: &'static str,
        ctx: &mut Context<S>,
    ) {
        later(ctx, delay, move |act, ctx| {
            act.conn().close(code, reason, ctx)
        });
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.leave_all();
        metrics::session_delta(self.dialect, -1.0);
    }
}

/// The transport item handler every session gets: the connection first, then the
/// dialect with what is left.
fn receive<S: Session>(act: &mut S, item: Result<Message, ProtocolError>, ctx: &mut Context<S>) {
    if matches!(item, Err(ProtocolError::Overflow)) {
        if let Some(frame) = act.overflow_notice() {
            let _ = act.conn().outbox.push(frame);
        }
    }
    if let Some(data) = act.conn().inbound(item, ctx) {
        let conn = act.conn();
        let over = conn.limiter.as_deref().filter(|(l, _)| l.check().is_err());
        if let Some(&(_, rate)) = over {
            // Dropped before parsing: a flood costs the node one small answer per frame,
            // and the output budget closes a flooder that does not read them (1013).
            act.rate_limited(rate);
        } else {
            act.on_data(data, ctx);
        }
    }
}

/// Runs `f` after `delay`, unless `delay` is beyond [`MAX_TIMER`] (a token that expires
/// in a century): no timer is armed then.
pub fn later<A>(
    ctx: &mut Context<A>,
    delay: Duration,
    f: impl FnOnce(&mut A, &mut Context<A>) + 'static,
) where
    A: Actor<Context = Context<A>>,
{
    if delay <= MAX_TIMER {
        ctx.run_later(delay, f);
    }
}

/// Close code of a session whose place under a cluster-wide cap was reclaimed.
pub const RECLAIMED: u16 = 4429;

/// Close reason of a session whose place under a cluster-wide cap was reclaimed.
pub const RECLAIMED_REASON: &str = "over the session cap across the cluster: a session admitted at the same moment on another node keeps the place; retry later";

/// Drives `stream` within the actor's context as `ctx.add_stream` would: `on_item` for
/// each item, `on_end` at its end.
fn watch<A, St>(
    ctx: &mut Context<A>,
    stream: St,
    on_item: fn(&mut A, St::Item, &mut Context<A>),
    on_end: fn(&mut A, &mut Context<A>),
) where
    A: Actor<Context = Context<A>>,
    St: Stream + Unpin + 'static,
{
    ctx.spawn(Watch {
        stream,
        on_item,
        on_end,
    });
}

/// A stream driven within an actor's context.
struct Watch<A: Actor<Context = Context<A>>, St: Stream> {
    stream: St,
    on_item: fn(&mut A, St::Item, &mut Context<A>),
    on_end: fn(&mut A, &mut Context<A>),
}

impl<A, St> ActorFuture<A> for Watch<A, St>
where
    A: Actor<Context = Context<A>>,
    St: Stream + Unpin,
{
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut A,
        ctx: &mut Context<A>,
        task: &mut std::task::Context<'_>,
    ) -> Poll<()> {
        let this = self.get_mut();
        let mut polled = 0;
        while let Some(item) = ready!(Pin::new(&mut this.stream).poll_next(task)) {
            (this.on_item)(act, item, ctx);
            polled += 1;
            // What `ctx.wait` defers (an auth check, a join) holds later items back, as
            // it does for `add_stream`.
            if ctx.waiting() {
                return Poll::Pending;
            }
            if polled == 16 {
                // Let the actor's other work run between bursts.
                task.waker().wake_by_ref();
                return Poll::Pending;
            }
        }
        (this.on_end)(act, ctx);
        Poll::Ready(())
    }
}

#[cfg(test)]
mod tests {
    //! The core against a real directory, registry and memory bus; the client's side is a
    //! channel of transport items and the outbox's receiving half.

    use std::cell::RefCell;
    use std::future::poll_fn;
    use std::rc::Rc;

    use metrics_exporter_prometheus::PrometheusBuilder;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
    use tokio::time::timeout;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::*;
    use crate::auth::Authenticator;
    use crate::bus::{Bus, MemoryBus};
    use crate::codec::CodecSettings;
    use crate::config::Settings;
    use crate::dialect::codec::{Codec, ENCODERS};
    use crate::directory::Directory;
    use crate::limits::Limits;
    use crate::outbox::{Outbound, OutboxReceiver};
    use crate::registry::{Member, RegistrySettings};

    /// Far beyond any wait of a passing test.
    const PROMPT: Duration = Duration::from_secs(10);

    fn state(edit: impl FnOnce(&mut Settings)) -> Arc<AppState> {
        let mut settings = Settings::load(None).expect("the embedded dev config loads");
        edit(&mut settings);
        let settings = Arc::new(settings);
        let bus = Bus::Memory(MemoryBus::new(16, Duration::from_secs(60), Duration::ZERO));
        let registry = Arc::new(RegistrySettings {
            codec: CodecSettings {
                max_notification_bytes: 1 << 20,
            },
            node: "test".into(),
            max_buffered_bytes: 1 << 20,
            on_delivered: None,
            encoders: &ENCODERS,
        });
        Arc::new(AppState {
            realtime: crate::dialect::realtime::RealtimeNode::new(&settings, &bus, None),
            auth: Authenticator::new(&settings, &bus).expect("dev auth"),
            limits: Limits::new(&settings.limits),
            directory: Directory::start(1, bus.clone(), registry),
            cluster: None,
            settings,
            bus,
            draining: Default::default(),
            metrics: PrometheusBuilder::new().build_recorder().handle(),
            signal: Default::default(),
            revocations: Default::default(),
        })
    }

    /// A dialect that records its data and, on `"join"`, joins the broadcast registry.
    struct Probe<const ECHO: bool> {
        conn: Connection,
        data: UnboundedSender<Data>,
    }

    impl<const ECHO: bool> Actor for Probe<ECHO> {
        type Context = Context<Self>;
    }

    impl<const ECHO: bool> Session for Probe<ECHO> {
        // `/v1/ws` echoes a client's close, rooms does not.
        const DIALECT: Dialect = if ECHO {
            Dialect::ForwardEmail
        } else {
            Dialect::Rooms
        };

        fn conn(&mut self) -> &mut Connection {
            &mut self.conn
        }

        fn on_data(&mut self, data: Data, ctx: &mut Context<Self>) {
            match &data {
                Data::Text(text) if &**text == "join" => {
                    let join = self.conn.join(Join {
                        key: RoutingKey::Broadcast,
                        member: Member {
                            id: self.conn.id,
                            outbox: self.conn.outbox.clone(),
                            codec: Codec::V1Json,
                            relay: None,
                        },
                        since: None,
                        announces_resync: false,
                    });
                    ctx.wait(actix::fut::wrap_future(join));
                }
                Data::Text(text) if &**text == "flood" => {
                    let frame = Frame::Text("x".repeat(4096).into());
                    while self.conn.outbox.push(frame.clone()).is_ok() {}
                }
                _ => {}
            }
            let _ = self.data.send(data);
        }
    }

    /// A transport of channels: the test sends transport items and reads the outbox.
    struct Channel {
        inbound: UnboundedReceiverStream<Result<Message, ProtocolError>>,
        outbox: Rc<RefCell<Option<OutboxReceiver>>>,
    }

    impl Transport for Channel {
        type Inbound = UnboundedReceiverStream<Result<Message, ProtocolError>>;

        fn start(self, outbox: OutboxReceiver) -> Self::Inbound {
            *self.outbox.borrow_mut() = Some(outbox);
            self.inbound
        }
    }

    /// The client's end of a probe session.
    struct Client {
        send: UnboundedSender<Result<Message, ProtocolError>>,
        outbox: OutboxReceiver,
        data: tokio::sync::mpsc::UnboundedReceiver<Data>,
    }

    impl Client {
        fn start<const ECHO: bool>(state: Arc<AppState>, ping_interval: Duration) -> Client {
            let (send, inbound) = unbounded_channel();
            let (data_tx, data) = unbounded_channel();
            let slot = state
                .limits
                .total
                .try_acquire((), 1 << 20)
                .expect("a node slot");
            let receiver = Rc::new(RefCell::new(None));
            let transport = Channel {
                inbound: UnboundedReceiverStream::new(inbound),
                outbox: Rc::clone(&receiver),
            };
            Connection::start(state, transport, slot, ping_interval, |conn, _| {
                conn.outbox.open();
                Probe::<ECHO> {
                    conn,
                    data: data_tx,
                }
            });
            let outbox = receiver.take().expect("the session started its transport");
            Client { send, outbox, data }
        }

        fn send(&self, item: Result<Message, ProtocolError>) {
            self.send.send(item).expect("the session reads");
        }

        /// The next item written to the socket; `None` once the session is gone.
        async fn next(&self) -> Option<Outbound> {
            timeout(PROMPT, poll_fn(|cx| self.outbox.poll_item(cx)))
                .await
                .expect("an outbound item in time")
        }

        /// The close the session sent: its code and reason.
        async fn close(&self) -> (u16, String) {
            loop {
                match self.next().await {
                    Some(Outbound::Close(Some(reason))) => {
                        return (
                            u16::from(reason.code),
                            reason.description.unwrap_or_default(),
                        )
                    }
                    Some(Outbound::Close(None)) => return (1005, String::new()),
                    Some(_) => {}
                    None => panic!("the session ended without a close"),
                }
            }
        }
    }

    #[actix_web::test]
    async fn pings_are_answered_and_data_reaches_the_dialect() {
        let mut client = Client::start::<true>(state(|_| {}), Duration::from_secs(3600));
        client.send(Ok(Message::Ping(Bytes::from_static(b"hi"))));
        assert!(matches!(client.next().await, Some(Outbound::Pong(data)) if &data[..] == b"hi"));
        client.send(Ok(Message::Pong(Bytes::new())));
        client.send(Ok(Message::Text("hello".into())));
        client.send(Ok(Message::Binary(Bytes::from_static(&[1, 2]))));
        let data = timeout(PROMPT, client.data.recv()).await.unwrap();
        assert_eq!(data, Some(Data::Text("hello".into())), "pongs are not data");
        let data = timeout(PROMPT, client.data.recv()).await.unwrap();
        assert_eq!(data, Some(Data::Binary(Bytes::from_static(&[1, 2]))));
    }

    #[actix_web::test]
    async fn a_client_close_is_echoed_or_answered_empty_as_the_dialect_says() {
        let reason = CloseReason {
            code: CloseCode::from(4000),
            description: Some("bye".into()),
        };
        let echo = Client::start::<true>(state(|_| {}), Duration::from_secs(3600));
        echo.send(Ok(Message::Close(Some(reason.clone()))));
        assert_eq!(echo.close().await, (4000, "bye".into()));
        assert!(echo.next().await.is_none(), "the session stopped");
        let empty = Client::start::<false>(state(|_| {}), Duration::from_secs(3600));
        empty.send(Ok(Message::Close(Some(reason))));
        assert_eq!(empty.close().await.0, 1005, "a close without a status code");
        assert!(empty.next().await.is_none(), "the session stopped");
    }

    #[actix_web::test]
    async fn protocol_errors_close_with_their_code() {
        let st = state(|_| {});
        let not_utf8 = vec![0xC3, 0x28];
        let cases = [
            (
                ProtocolError::Overflow,
                1009,
                "frame too big (limits.max_client_frame_bytes)",
            ),
            (
                ProtocolError::InvalidOpcode(0xC1),
                1002,
                "protocol error: reserved bits set (no extension is negotiated)",
            ),
            (
                ProtocolError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    std::str::from_utf8(&not_utf8).unwrap_err(),
                )),
                1007,
                "a text message must be UTF-8",
            ),
        ];
        for (error, code, reason) in cases {
            let client = Client::start::<true>(Arc::clone(&st), Duration::from_secs(3600));
            client.send(Err(error));
            assert_eq!(client.close().await, (code, reason.into()));
            assert!(client.next().await.is_none(), "the session stopped");
        }
    }

    #[actix_web::test]
    async fn a_silent_client_is_closed_after_one_keepalive_round_a_live_one_is_not() {
        let round = Duration::from_millis(50);
        let live = Client::start::<true>(state(|_| {}), round);
        for _ in 0..3 {
            assert!(matches!(live.next().await, Some(Outbound::Ping)));
            live.send(Ok(Message::Pong(Bytes::new())));
        }
        let silent = Client::start::<true>(state(|_| {}), round);
        assert!(matches!(silent.next().await, Some(Outbound::Ping)));
        assert_eq!(
            silent.close().await,
            (KEEPALIVE_TIMEOUT, KEEPALIVE_REASON.into())
        );
        assert!(silent.next().await.is_none(), "the session stopped");
    }

    #[actix_web::test]
    async fn a_stopped_session_leaves_its_registries() {
        let client = Client::start::<false>(state(|_| {}), Duration::from_secs(3600));
        client.send(Ok(Message::Text("join".into())));
        client.send(Ok(Message::Close(None)));
        assert_eq!(client.close().await.0, 1005);
        // The receiver ends only once every sender is dropped: the registry's member too.
        assert!(
            client.next().await.is_none(),
            "the registry let the session go"
        );
    }

    #[actix_web::test]
    async fn a_slow_consumer_is_evicted_with_1013() {
        let st = state(|settings| settings.limits.max_buffered_bytes = 64 * 1024);
        let client = Client::start::<true>(st, Duration::from_secs(3600));
        client.send(Ok(Message::Text("flood".into())));
        assert_eq!(
            client.close().await,
            (
                1013,
                "slow consumer: reconnect with since=<last seq>".into()
            )
        );
    }

    #[actix_web::test]
    async fn a_drain_closes_with_1001_within_the_window() {
        let st = state(|settings| settings.shutdown.drain_seconds = 1);
        let client = Client::start::<true>(Arc::clone(&st), Duration::from_secs(3600));
        st.start_drain();
        assert_eq!(
            client.close().await,
            (1001, "node shutting down; reconnect".into())
        );
    }
}
