//! The bus events arrive on: in-process ([`memory`]) for a single node, NATS ([`nats`]) for a cluster.
//! A registry subscribes to one subject pattern; dropping the stream unsubscribes.

pub mod memory;
pub mod nats;

use bytes::Bytes;
use futures_util::stream::BoxStream;

pub use memory::MemoryBus;
pub use nats::NatsBus;

/// One message on the bus, as published or as received.
#[derive(Debug, Clone, Default)]
pub struct BusMessage {
    /// Full subject, e.g. `herald.v1.alias.<id>.newMessage`.
    pub subject: String,
    /// The envelope body (MessagePack unless `json`).
    pub payload: Bytes,
    /// `Content-Type: application/json` was set.
    pub json: bool,
    /// `Nats-Msg-Id`: duplicates inside the dedup window are delivered once.
    pub msg_id: Option<String>,
    /// W3C `traceparent` of the publisher.
    pub traceparent: Option<String>,
    /// W3C `tracestate` of the publisher.
    pub tracestate: Option<String>,
    /// Sequence of the event in its key's stream, when the bus assigns one.
    pub seq: Option<u64>,
    /// Sequence of the previous stored event on the same subject (RePublish's
    /// `Nats-Last-Sequence`), so a receiver can tell it missed one.
    pub prev_seq: Option<u64>,
    /// When the bus stored the event (ms since the epoch): the same on every node, so it
    /// is the `timestamp` herald adds when the producer set none.
    pub stored_ms: Option<u64>,
}

/// What the bus says after a publish.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishAck {
    /// Sequence assigned to the event, when the bus assigns one.
    pub seq: Option<u64>,
    /// The `Nats-Msg-Id` was seen inside the dedup window: not delivered again.
    pub duplicate: bool,
}

/// Most events one `since` replay returns; a client further behind must resync.
pub const MAX_REPLAY: usize = 100_000;

/// The answer to "what did I miss since `seq`?".
#[derive(Debug, Clone)]
pub enum Replay {
    /// Every retained event after `since`, in order (possibly none).
    Messages(Vec<BusMessage>),
    /// Events after `since` are no longer retained (or `since` is from another stream):
    /// the client must refetch.
    ResyncRequired,
}

/// The underlying error of a bus operation (an `async_nats` error, an I/O error, ...).
pub type Source = Box<dyn std::error::Error + Send + Sync>;

/// A bus operation that failed. Each keeps the client's error as its source; the message
/// repeats it so a log line or a 503 body says what went wrong without walking the chain.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// Could not subscribe (NATS unreachable and the request could not be queued).
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// Subject pattern.
        subject: String,
        /// Underlying error.
        source: Source,
    },
    /// Could not read the stream for a replay.
    #[error("cannot replay {subject}: {source}")]
    Replay {
        /// Subject pattern.
        subject: String,
        /// Underlying error.
        source: Source,
    },
    /// Could not publish.
    #[error("cannot publish to {subject}: {source} (is NATS reachable? see /readyz)")]
    Publish {
        /// Subject.
        subject: String,
        /// Underlying error.
        source: Source,
    },
    /// The NATS connection options are unusable.
    #[error("cannot set up the NATS connection: {context}: {source}")]
    Connect {
        /// Which setting or step failed.
        context: String,
        /// Underlying error.
        source: Source,
    },
}

/// Why a request-reply ([`Bus::request`]) got no answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The in-process bus: no service can subscribe to it, so nothing ever answers.
    #[error("the in-process bus has no responders")]
    InProcess,
    /// Nothing subscribes to the subject.
    #[error("no responders")]
    NoResponders,
    /// No answer within the timeout.
    #[error("no answer in time")]
    TimedOut,
    /// The request failed otherwise.
    #[error(transparent)]
    Failed(async_nats::RequestError),
}

pub use herald_protocol::subject::is_streamed;

/// A stream of messages matching one subscription; unsubscribes when dropped.
pub type Subscription = BoxStream<'static, BusMessage>;

/// The bus a node is configured with.
#[derive(Clone)]
pub enum Bus {
    /// In-process.
    Memory(MemoryBus),
    /// NATS.
    Nats(Box<NatsBus>),
}

impl Bus {
    /// Subscribes to `pattern` (NATS wildcards `*` and `>` allowed).
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.subscribe(pattern)),
            Bus::Nats(bus) => bus.subscribe(pattern).await,
        }
    }

    /// Publishes one message.
    pub async fn publish(&self, message: BusMessage) -> Result<PublishAck, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.publish(message)),
            Bus::Nats(bus) => bus.publish(message).await,
        }
    }

    /// Every retained event matching `pattern` with a sequence after `since`.
    pub async fn replay(&self, pattern: &str, since: u64) -> Result<Replay, BusError> {
        match self {
            Bus::Memory(bus) => Ok(bus.replay(pattern, since)),
            Bus::Nats(bus) => bus.replay(pattern, since).await,
        }
    }

    /// The stream's last sequence now (NATS), the floor from which a registry fills gaps.
    pub async fn last_sequence(&self) -> Result<Option<u64>, BusError> {
        match self {
            Bus::Memory(_) => Ok(None),
            Bus::Nats(bus) => bus.last_sequence().await,
        }
    }

    /// Sends `body` to whatever answers `subject` and waits up to `timeout` for its reply
    /// (NATS request-reply; the in-process bus has no responders).
    pub async fn request(
        &self,
        subject: String,
        body: Bytes,
        timeout: std::time::Duration,
    ) -> Result<Bytes, RequestError> {
        let Bus::Nats(bus) = self else {
            return Err(RequestError::InProcess);
        };
        match tokio::time::timeout(timeout, bus.client().request(subject, body)).await {
            Ok(Ok(reply)) => Ok(reply.payload),
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(RequestError::NoResponders)
            }
            Ok(Err(e)) => Err(RequestError::Failed(e)),
            Err(_) => Err(RequestError::TimedOut),
        }
    }

    /// Fires after every reconnection (never, for the in-process bus).
    pub fn reconnects(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match self {
            Bus::Memory(_) => None,
            Bus::Nats(bus) => Some(bus.reconnects()),
        }
    }

    /// Why the bus is not ready although connected: a NATS server herald does not support.
    pub fn unsupported_server(&self) -> Option<String> {
        match self {
            Bus::Memory(_) => None,
            Bus::Nats(bus) => bus.unsupported_server(),
        }
    }

    /// Whether the bus can carry events right now (`/readyz`).
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Memory(_) => true,
            Bus::Nats(bus) => bus.is_connected(),
        }
    }
}
