//! `/v1/ws` clients over tokio-tungstenite: how a user's client connects, what it receives,
//! and how a refused upgrade or a closed socket looks.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::fixtures::Alias;
use crate::node::Node;
use crate::PROMPT;

/// The `Authorization` header value for Basic auth: `Basic base64(user:password)`.
pub fn basic_auth(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

/// Builder for one WebSocket upgrade: path, query, headers (auth, origin).
#[derive(Debug, Clone)]
pub struct Connect {
    /// `ws://127.0.0.1:PORT`.
    base: String,
    /// `/v1/ws` unless changed.
    path: String,
    /// Query parameters, in order.
    query: Vec<(String, String)>,
    /// Extra request headers.
    headers: Vec<(String, String)>,
}

impl Connect {
    /// An upgrade to `/v1/ws` on `node`, without credentials.
    pub fn v1(node: &Node) -> Self {
        Connect {
            base: node.ws_url(""),
            path: "/v1/ws".to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// An upgrade to `/jmap/ws` on `node` offering the `jmap` subprotocol (RFC 8887),
    /// without credentials.
    pub fn jmap(node: &Node) -> Self {
        Connect::v1(node)
            .path("/jmap/ws")
            .header("Sec-WebSocket-Protocol", "jmap")
    }

    /// An upgrade to `/v1/ws` on the node at `ws_base` (e.g. `ws://127.0.0.1:PORT`), for
    /// clients that reconnect to whichever node is alive.
    pub fn v1_at(ws_base: &str) -> Self {
        Connect {
            base: ws_base.to_owned(),
            path: "/v1/ws".to_owned(),
            query: Vec::new(),
            headers: Vec::new(),
        }
    }

    /// Replaces the path (`/v1/ws` by default).
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    /// `Authorization: Basic base64(user:password)`.
    pub fn basic(self, user: &str, password: &str) -> Self {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        self.header("authorization", &format!("Basic {encoded}"))
    }

    /// Basic auth with an alias's address and password.
    pub fn alias(self, alias: &Alias) -> Self {
        self.basic(alias.address, alias.password)
    }

    /// An API token as the Basic username (empty password) plus `?alias_id=`.
    pub fn token(self, token: &str, alias_id: &str) -> Self {
        self.basic(token, "").query("alias_id", alias_id)
    }

    /// `?auth=message`: credentials come in the first frame.
    pub fn auth_message(self) -> Self {
        self.query("auth", "message")
    }

    /// `?msgpackr=true`: msgpackr records in binary frames (Forward Email's encoding).
    pub fn msgpack(self) -> Self {
        self.query("msgpackr", "true")
    }

    /// `?msgpack=true`: plain MessagePack maps in binary frames.
    pub fn plain_msgpack(self) -> Self {
        self.query("msgpack", "true")
    }

    /// Adds a query parameter.
    pub fn query(mut self, key: &str, value: &str) -> Self {
        self.query.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `Origin: origin`, as a browser sends it.
    pub fn origin(self, origin: &str) -> Self {
        self.header("origin", origin)
    }

    /// The full URL with the query string encoded.
    pub fn url(&self) -> String {
        let mut url =
            url::Url::parse(&format!("{}{}", self.base, self.path)).expect("valid ws url");
        if !self.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&self.query);
        }
        url.to_string()
    }

    fn wants_msgpack(&self) -> bool {
        self.query
            .iter()
            .any(|(k, v)| (k == "msgpackr" || k == "msgpack") && v == "true")
    }

    /// Performs the upgrade: the socket, or how the server refused it. Panics when there
    /// is no HTTP answer at all (see [`Connect::try_open`]).
    pub async fn open(self) -> Result<WsClient, Refusal> {
        let url = self.url();
        match self.try_open().await {
            Ok(outcome) => outcome,
            Err(e) => panic!("upgrade to {url} failed: {e}"),
        }
    }

    /// Performs the upgrade: the socket, how the server refused it, or (outer `Err`) why
    /// there was no HTTP answer (connection refused or reset, timeout).
    pub async fn try_open(self) -> Result<Result<WsClient, Refusal>, String> {
        let msgpack = self.wants_msgpack();
        let mut request = self
            .url()
            .into_client_request()
            .expect("a valid client request");
        for (name, value) in &self.headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes()).expect("valid header name"),
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        let outcome = tokio::time::timeout(PROMPT, tokio_tungstenite::connect_async(request)).await;
        match outcome {
            Err(_) => Err(format!("no answer within {PROMPT:?}")),
            Ok(Ok((stream, response))) => Ok(Ok(WsClient {
                stream,
                msgpack,
                hello: Value::Null,
                response_headers: response.headers().clone(),
            })),
            Ok(Err(tungstenite::Error::Http(response))) => Ok(Err(Refusal {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            })),
            Ok(Err(other)) => Err(other.to_string()),
        }
    }

    /// Upgrades and reads the `connected` frame; panics if refused or if the first frame
    /// is anything else. The frame is kept in [`WsClient::hello`].
    pub async fn connect(self) -> WsClient {
        let url = self.url();
        let mut client = match self.open().await {
            Ok(client) => client,
            Err(refusal) => panic!("upgrade to {url} refused: {refusal:?}"),
        };
        let hello = client.next_event().await;
        assert_eq!(
            hello["event"], "connected",
            "the first frame on {url} must be `connected`, got {hello}"
        );
        client.hello = hello;
        client
    }

    /// Expects the upgrade to be refused with an HTTP status; panics if it succeeds.
    pub async fn refused(self) -> Refusal {
        let url = self.url();
        match self.open().await {
            Ok(mut client) => {
                let frame = client.next_frame(Duration::from_millis(500)).await;
                panic!(
                    "upgrade to {url} was accepted but should be refused (first frame: {frame:?})"
                )
            }
            Err(refusal) => refusal,
        }
    }
}

/// An upgrade the server answered with something other than `101 Switching Protocols`.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// Response body, lossily decoded.
    pub body: String,
}

impl Refusal {
    /// `Retry-After` in seconds, if present and numeric.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }
}

/// What a client reads from its socket (pings and pongs are answered and hidden).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A text data frame.
    Text(String),
    /// A binary data frame.
    Binary(Bytes),
    /// A close frame: code and reason (no code when the frame had no payload).
    Close(Option<u16>, String),
    /// The connection ended without a close frame (reset, EOF, protocol error).
    Ended(String),
}

impl Frame {
    /// Decodes a data frame: text as JSON, binary as msgpackr records or plain MessagePack; `None` for a close or an
    /// ended connection. Panics when a data frame does not decode.
    pub fn decode(&self) -> Option<Value> {
        match self {
            Frame::Text(text) => Some(
                serde_json::from_str(text)
                    .unwrap_or_else(|e| panic!("text frame is not JSON ({e}): {text}")),
            ),
            Frame::Binary(bytes) => Some(
                herald_protocol::msgpackr::decode(bytes)
                    .unwrap_or_else(|e| panic!("binary frame is not msgpackr ({e}): {bytes:?}")),
            ),
            _ => None,
        }
    }
}

/// One WebSocket client connection.
pub struct WsClient {
    /// The socket.
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Whether `?msgpackr=true` was asked for (events come as binary MessagePack).
    msgpack: bool,
    /// The `connected` frame, when opened with [`Connect::connect`].
    pub hello: Value,
    /// Headers of the `101 Switching Protocols` answer (e.g. `Sec-WebSocket-Protocol`).
    pub response_headers: HeaderMap,
}

impl std::fmt::Debug for WsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsClient")
            .field("msgpack", &self.msgpack)
            .field("hello", &self.hello)
            .finish()
    }
}

/// Whether a decoded frame is the app-level keepalive `{"event":"ping"}`.
pub fn is_app_ping(event: &Value) -> bool {
    event.get("event").and_then(Value::as_str) == Some("ping")
}

impl WsClient {
    /// The next frame within `timeout`, or `None` on timeout.
    pub async fn next_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .ok()?;
            return Some(match next {
                None => Frame::Ended("stream ended".to_owned()),
                Some(Err(e)) => Frame::Ended(e.to_string()),
                Some(Ok(Message::Text(text))) => Frame::Text(text.as_str().to_owned()),
                Some(Ok(Message::Binary(bytes))) => Frame::Binary(bytes),
                Some(Ok(Message::Close(frame))) => match frame {
                    Some(f) => Frame::Close(Some(u16::from(f.code)), f.reason.as_str().to_owned()),
                    None => Frame::Close(None, String::new()),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next data frame other than the keepalive `{"event":"ping"}`, within `timeout`.
    pub async fn next_data_frame(&mut self, timeout: Duration) -> Option<Frame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let frame = self.next_frame(remaining).await?;
            match frame.decode() {
                Some(event) if is_app_ping(&event) => continue,
                _ => return Some(frame),
            }
        }
    }

    /// The next event (keepalive pings skipped), decoded from JSON text or MessagePack
    /// binary, whichever arrives. Panics on timeout or close.
    pub async fn next_event(&mut self) -> Value {
        match self.next_data_frame(PROMPT).await {
            None => panic!("no event within {PROMPT:?}"),
            Some(frame) => frame
                .decode()
                .unwrap_or_else(|| panic!("expected an event, the socket closed: {frame:?}")),
        }
    }

    /// The next event, which must be a JSON text frame.
    pub async fn next_json(&mut self) -> Value {
        match self.next_data_frame(PROMPT).await {
            Some(frame @ Frame::Text(_)) => frame.decode().expect("text decodes"),
            other => panic!("expected a JSON text frame within {PROMPT:?}, got {other:?}"),
        }
    }

    /// The next event, which must be a MessagePack binary frame.
    pub async fn next_msgpack(&mut self) -> Value {
        match self.next_data_frame(PROMPT).await {
            Some(frame @ Frame::Binary(_)) => frame.decode().expect("binary decodes"),
            other => panic!("expected a MessagePack binary frame within {PROMPT:?}, got {other:?}"),
        }
    }

    /// The next event in this client's format (MessagePack with `?msgpackr=true`, else JSON).
    pub async fn next_in_format(&mut self) -> Value {
        if self.msgpack {
            self.next_msgpack().await
        } else {
            self.next_json().await
        }
    }

    /// Reads events until one satisfies `pred`; returns it. Panics on timeout or close.
    pub async fn next_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_data_frame(remaining).await {
                None => panic!("no event matching {what} within {PROMPT:?}"),
                Some(frame) => match frame.decode() {
                    Some(event) if pred(&event) => return event,
                    Some(_) => continue,
                    None => panic!("socket closed while waiting for {what}: {frame:?}"),
                },
            }
        }
    }

    /// Expects the server to close the socket within `timeout`, with no data frame first
    /// (keepalive pings aside). Returns the close code (`None` for a close frame without
    /// one). Panics if the connection merely ended without a close frame.
    pub async fn expect_close_within(&mut self, timeout: Duration) -> Option<u16> {
        match self.next_data_frame(timeout).await {
            None => panic!("the server did not close the socket within {timeout:?}"),
            Some(Frame::Close(code, _)) => code,
            Some(other) => panic!("expected a close frame, got {other:?}"),
        }
    }

    /// [`WsClient::expect_close_within`] with the default timeout.
    pub async fn expect_close(&mut self) -> Option<u16> {
        self.expect_close_within(PROMPT).await
    }

    /// Asserts that no event (keepalive pings aside) arrives within `period`.
    pub async fn expect_no_event(&mut self, period: Duration) {
        if let Some(frame) = self.next_data_frame(period).await {
            let decoded = frame.decode();
            panic!("expected no event for {period:?}, got {frame:?} ({decoded:?})");
        }
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.stream
            .send(Message::text(text))
            .await
            .expect("cannot send a text frame");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.stream
            .send(Message::binary(bytes))
            .await
            .expect("cannot send a binary frame");
    }

    /// Closes the socket politely (close frame, then waits briefly for the server's).
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(Some(Ok(_))) = tokio::time::timeout_at(deadline, self.stream.next()).await {}
    }
}
