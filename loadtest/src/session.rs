//! One session of the system under test — a TCP socket bound to a chosen loopback source
//! address, the WebSocket upgrade, and the system's own handshake (herald and the
//! Forward Email reference: API-token Basic auth + `?alias_id=`, then `{"event":"connected"}`;
//! raw NATS: `INFO`, then `CONNECT` with the token + `SUB` to the alias subject + `PING`,
//! then `PONG`) — and opening many of them with bounded concurrency.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use base64::Engine;
use futures_util::{stream, SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{HeaderValue, AUTHORIZATION};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::natsproto::{self, Op, Parser};
use crate::probe::{self, Receipt};
use crate::spread::{place, Placement};

/// The system a session talks to.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum System {
    /// herald's `/v1/ws`.
    Herald,
    /// nats-server's WebSocket listener, subscribing to the alias subject directly (the
    /// raw-NATS ceiling).
    NatsWs,
    /// `loadtest/baselines/forwardemail-node`: Forward Email's published architecture
    /// (Node.js `ws` + Redis pub/sub + msgpackr).
    ForwardemailNode,
    /// `herald-loadtest limit-server` ([`crate::limit`]): the least a server can do, the
    /// physical limit herald is measured against.
    Limit,
}

impl System {
    /// Every system, in report order.
    pub const ALL: [System; 4] = [
        System::Herald,
        System::NatsWs,
        System::ForwardemailNode,
        System::Limit,
    ];

    /// The name used in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            System::Herald => "herald",
            System::NatsWs => "nats-ws",
            System::ForwardemailNode => "forwardemail-node",
            System::Limit => "limit",
        }
    }
}

impl fmt::Display for System {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A connected client WebSocket.
pub type WsStream = WebSocketStream<TcpStream>;

/// A connected session: its WebSocket, and for raw NATS the protocol parser (bytes of an
/// operation may span frames).
pub struct Session {
    ws: WsStream,
    nats: Option<Parser>,
}

impl Session {
    /// Reads the next frame and appends the probe-shaped notifications it carries to
    /// `out`; answers NATS `PING`s. `false` once the session is closed or failed.
    pub async fn read(&mut self, out: &mut Vec<Receipt>) -> bool {
        let frame = match self.ws.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(_)) | None => return false,
        };
        let bytes = match frame {
            Message::Text(text) if self.nats.is_none() => {
                out.extend(Receipt::parse(text.as_str()));
                return true;
            }
            Message::Binary(bytes) if self.nats.is_none() => {
                out.extend(rmp_serde::from_slice::<Receipt>(&bytes).ok());
                return true;
            }
            Message::Text(text) => bytes::Bytes::copy_from_slice(text.as_bytes()),
            Message::Binary(bytes) => bytes,
            Message::Close(_) => return false,
            _ => return true,
        };
        let parser = self.nats.as_mut().expect("only NATS sessions get here");
        parser.push(&bytes);
        loop {
            match parser.next_op() {
                Ok(Some(Op::Msg { payload, .. })) => {
                    out.extend(probe::receipt_of_envelope(&payload))
                }
                Ok(Some(Op::Ping)) => {
                    if self
                        .ws
                        .send(Message::binary(natsproto::PONG))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                Ok(Some(Op::Err(_))) | Err(_) => return false,
                Ok(Some(_)) => {}
                Ok(None) => return true,
            }
        }
    }

    /// Sends a close frame (bounded by the caller).
    pub async fn close(&mut self) {
        let _ = self.ws.close(None).await;
        let _ = self.ws.flush().await;
    }
}

/// Most sessions one run may open: the generator holds one file descriptor per session
/// and this machine allows 20,000 per process.
pub const MAX_SESSIONS: usize = 19_000;
/// Characters of a refusal body kept in error messages.
const MAX_BODY_CHARS: usize = 200;

/// The server every session connects to, and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// Which system (decides the handshake).
    pub system: System,
    /// `ws://127.0.0.1:PORT/v1/ws`; `alias_id` is appended per session.
    pub url: url::Url,
    /// The server's socket address (loopback).
    pub addr: SocketAddr,
    /// API token sent as `Basic base64(token:)`; it must cover every alias used.
    pub token: String,
    /// Deadline for TCP connect + upgrade + the `connected` frame.
    pub timeout: Duration,
}

impl Target {
    /// Parses a `ws://` URL whose host is a loopback IP address.
    pub fn new(
        system: System,
        url: &str,
        token: &str,
        timeout: Duration,
    ) -> anyhow::Result<Target> {
        let url = url::Url::parse(url).with_context(|| format!("--url {url:?} is not a URL"))?;
        if url.scheme() != "ws" {
            bail!("--url must start with ws:// (got {url}); TLS is not part of the load test");
        }
        let ip: IpAddr = url
            .host_str()
            .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
            .and_then(|h| h.parse().ok())
            .with_context(|| format!("--url {url} must name the server by IP address"))?;
        if !ip.is_loopback() {
            bail!("--url {url} is not loopback: the load generator only talks to this machine");
        }
        let port = url.port_or_known_default().context("--url has no port")?;
        Ok(Target {
            system,
            addr: SocketAddr::new(ip, port),
            url,
            token: token.to_owned(),
            timeout,
        })
    }
}

/// Why one session did not get to `connected`.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with an HTTP status (429, 503, …).
    Refused {
        /// HTTP status.
        status: u16,
        /// Start of the body (the server's reason).
        body: String,
    },
    /// No `connected` frame within [`Target::timeout`].
    Timeout,
    /// Socket error (bind, connect, reset).
    Io(std::io::Error),
    /// WebSocket error, or a first frame that is not `connected`.
    Protocol(String),
}

impl ConnectError {
    /// A short class for counting failures: `http 429`, `timeout`, `io`, `protocol`.
    pub fn class(&self) -> String {
        match self {
            ConnectError::Refused { status: 0, .. } => "nats -ERR".into(),
            ConnectError::Refused { status, .. } => format!("http {status}"),
            ConnectError::Timeout => "timeout".into(),
            ConnectError::Io(_) => "io".into(),
            ConnectError::Protocol(_) => "protocol".into(),
        }
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::Refused { status, body } => {
                write!(f, "refused with HTTP {status}: {body}")
            }
            ConnectError::Timeout => write!(f, "no `connected` frame in time"),
            ConnectError::Io(e) => write!(f, "socket error: {e}"),
            ConnectError::Protocol(e) => write!(f, "websocket error: {e}"),
        }
    }
}

impl From<tungstenite::Error> for ConnectError {
    fn from(error: tungstenite::Error) -> Self {
        match error {
            tungstenite::Error::Http(response) => ConnectError::Refused {
                status: response.status().as_u16(),
                body: response
                    .body()
                    .as_deref()
                    .map(|b| {
                        String::from_utf8_lossy(b)
                            .chars()
                            .take(MAX_BODY_CHARS)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            tungstenite::Error::Io(e) => ConnectError::Io(e),
            other => ConnectError::Protocol(other.to_string()),
        }
    }
}

/// Opens one session as `alias_id` from `source` and waits for `{"event":"connected"}`
/// (raw NATS: for the `PONG` that confirms the subscription).
pub async fn connect(
    target: &Target,
    source: IpAddr,
    alias_id: &str,
) -> Result<Session, ConnectError> {
    tokio::time::timeout(target.timeout, connect_inner(target, source, alias_id))
        .await
        .unwrap_or(Err(ConnectError::Timeout))
}

async fn connect_inner(
    target: &Target,
    source: IpAddr,
    alias_id: &str,
) -> Result<Session, ConnectError> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4(),
        IpAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnectError::Io)?;
    // Ports of earlier runs may still be in TIME_WAIT; binding needs to reuse them.
    socket.set_reuseaddr(true).map_err(ConnectError::Io)?;
    socket
        .bind(SocketAddr::new(source, 0))
        .map_err(ConnectError::Io)?;
    let tcp = socket
        .connect(target.addr)
        .await
        .map_err(ConnectError::Io)?;
    tcp.set_nodelay(true).map_err(ConnectError::Io)?;

    if target.system == System::NatsWs {
        let request = target.url.as_str().into_client_request()?;
        let (ws, _response) = tokio_tungstenite::client_async(request, tcp).await?;
        return nats_handshake(ws, &target.token, alias_id).await;
    }
    let mut url = target.url.clone();
    url.query_pairs_mut().append_pair("alias_id", alias_id);
    let mut request = url.as_str().into_client_request()?;
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", target.token));
    let header = HeaderValue::from_str(&format!("Basic {credentials}"))
        .map_err(|e| ConnectError::Protocol(e.to_string()))?;
    request.headers_mut().insert(AUTHORIZATION, header);
    let (mut ws, _response) = tokio_tungstenite::client_async(request, tcp).await?;

    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                let frame: serde_json::Value = serde_json::from_str(text.as_str())
                    .map_err(|e| ConnectError::Protocol(format!("first frame is not JSON: {e}")))?;
                if frame["event"] == "connected" {
                    return Ok(Session { ws, nats: None });
                }
                return Err(ConnectError::Protocol(format!(
                    "first frame is not `connected`: {text}"
                )));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(other)) => {
                return Err(ConnectError::Protocol(format!(
                    "unexpected first frame {other:?}"
                )))
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Err(ConnectError::Protocol("closed before `connected`".into())),
        }
    }
}

/// Raw NATS over WebSocket: after `INFO`, subscribe to the alias subject and wait for the
/// `PONG` that follows the subscription.
async fn nats_handshake(
    mut ws: WsStream,
    token: &str,
    alias_id: &str,
) -> Result<Session, ConnectError> {
    let mut parser = Parser::default();
    let mut sent = false;
    loop {
        loop {
            match parser.next_op().map_err(ConnectError::Protocol)? {
                Some(Op::Info(_)) if !sent => {
                    let hello = natsproto::handshake(token, &probe::subject(alias_id));
                    ws.send(Message::binary(hello)).await?;
                    sent = true;
                }
                Some(Op::Pong) if sent => {
                    return Ok(Session {
                        ws,
                        nats: Some(parser),
                    })
                }
                Some(Op::Ping) => ws.send(Message::binary(natsproto::PONG)).await?,
                Some(Op::Err(reason)) => {
                    return Err(ConnectError::Refused {
                        status: 0,
                        body: format!("NATS -ERR {reason}"),
                    })
                }
                Some(_) => {}
                None => break,
            }
        }
        match ws.next().await {
            Some(Ok(Message::Binary(bytes))) => parser.push(&bytes),
            Some(Ok(Message::Text(text))) => parser.push(text.as_bytes()),
            Some(Ok(Message::Close(_))) | None => {
                return Err(ConnectError::Protocol(
                    "closed during the NATS handshake".into(),
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Failed connects by class, with one example message per class.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Failures {
    /// Count per class (`http 429`, `timeout`, …).
    pub counts: BTreeMap<String, u64>,
    /// The first error seen of each class.
    pub examples: BTreeMap<String, String>,
}

impl Failures {
    /// Counts one failure.
    pub fn add(&mut self, error: &ConnectError) {
        let class = error.class();
        *self.counts.entry(class.clone()).or_default() += 1;
        self.examples
            .entry(class)
            .or_insert_with(|| error.to_string());
    }

    /// Adds the failures of another run (e.g. another generator process).
    pub fn merge(&mut self, other: Failures) {
        for (class, n) in other.counts {
            *self.counts.entry(class).or_default() += n;
        }
        for (class, example) in other.examples {
            self.examples.entry(class).or_insert(example);
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// What [`open_sessions`] did.
pub struct Opened<T> {
    /// One handle per connected session, from the `spawn` callback.
    pub handles: Vec<JoinHandle<T>>,
    /// Sessions that did not connect.
    pub failures: Failures,
    /// From the first connect attempt to the last `connected` frame or failure.
    pub elapsed: Duration,
}

/// Opens `count` sessions, at most `concurrency` connecting at a time, placed by
/// [`place`] over `aliases`, `sources` and `targets` (several nodes of one cluster). Each
/// connected session is handed at once to `spawn` (which must start reading it, so
/// keepalive pings are answered).
pub async fn open_sessions<T, F, Fut>(
    targets: &[Target],
    aliases: &[String],
    sources: &[IpAddr],
    count: usize,
    concurrency: usize,
    spawn: F,
) -> Opened<T>
where
    F: Fn(Placement, Session) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let started = Instant::now();
    let mut attempts = stream::iter(0..count)
        .map(|i| {
            let placement = place(i, aliases.len(), sources.len(), targets.len());
            let alias = &aliases[placement.alias];
            let source = sources[placement.source];
            let target = &targets[placement.target];
            async move { (placement, connect(target, source, alias).await) }
        })
        .buffer_unordered(concurrency.max(1));
    let mut handles = Vec::with_capacity(count);
    let mut failures = Failures::default();
    while let Some((placement, outcome)) = attempts.next().await {
        match outcome {
            Ok(ws) => handles.push(tokio::spawn(spawn(placement, ws))),
            Err(error) => failures.add(&error),
        }
    }
    Opened {
        handles,
        failures,
        elapsed: started.elapsed(),
    }
}
