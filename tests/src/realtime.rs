//! `/ws` clients (the generic realtime protocol): JWTs for test users, node configs that
//! accept them, and a client that speaks `{type, data, id}` frames.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use toml::Value as Toml;

use crate::client::{Connect, Frame, Refusal, WsClient};
use crate::node::{Node, NodeConfig};
use crate::PROMPT;

/// The HS256 secret test nodes verify `/ws` tokens with.
pub const SECRET: &str = "realtime-test-secret";

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A JWT for `user` valid for an hour, with `extra` claims merged in (e.g. `topics`, `exp`).
pub fn token(user: &str, extra: Value) -> String {
    let mut claims =
        json!({"sub": user, "username": format!("{user} name"), "exp": now_secs() + 3600});
    if let (Some(claims), Value::Object(extra)) = (claims.as_object_mut(), extra) {
        claims.extend(extra);
    }
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("HS256 signs")
}

/// `config` with the JWT provider on for `/ws` (secret [`SECRET`]).
pub fn configure(config: NodeConfig) -> NodeConfig {
    let list = |items: &[&str]| Toml::Array(items.iter().map(|s| Toml::from(*s)).collect());
    config
        .set("auth.providers", list(&["static", "jwt"]))
        .set("auth.dialects.realtime", list(&["jwt"]))
        .set("auth.jwt.secret", SECRET)
}

/// A `/ws` upgrade on `node` without credentials (add them with [`Connect`]'s methods).
pub fn connect_to(node: &Node) -> Connect {
    Connect::v1_at(&node.ws_url("")).path("/ws")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One `/ws` connection.
pub struct RtClient {
    /// The socket.
    pub ws: WsClient,
    /// The `Status connected` welcome.
    pub welcome: Value,
    /// Frames read while looking for another one, handed out first by later reads.
    backlog: VecDeque<Value>,
}

impl RtClient {
    /// Connects to `node` as `user` (token in `?token=`) and reads the welcome.
    pub async fn connect(node: &Node, user: &str) -> RtClient {
        Self::open(connect_to(node).query("token", &token(user, json!({})))).await
    }

    /// Upgrades with `connect` and reads the welcome; panics if refused.
    pub async fn open(connect: Connect) -> RtClient {
        let url = connect.url();
        let mut ws = match connect.open().await {
            Ok(ws) => ws,
            Err(refusal) => panic!("upgrade to {url} refused: {refusal:?}"),
        };
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "Status", "first frame: {welcome}");
        assert_eq!(
            welcome["data"]["status"], "connected",
            "first frame: {welcome}"
        );
        RtClient {
            ws,
            welcome,
            backlog: VecDeque::new(),
        }
    }

    /// Expects the upgrade to be refused; returns how.
    pub async fn refused(connect: Connect) -> Refusal {
        connect.refused().await
    }

    /// This connection's id (from the welcome).
    pub fn connection_id(&self) -> String {
        self.welcome["data"]["details"]["connection_id"]
            .as_str()
            .expect("welcome has details.connection_id")
            .to_owned()
    }

    /// Sends `{type, data}` without an id.
    pub async fn send(&mut self, kind: &str, data: Value) {
        self.ws
            .send_json(&json!({"type": kind, "data": data}))
            .await;
    }

    /// Sends `{type, data, id}` and returns the answer carrying the same id (frames read
    /// meanwhile stay queued for later reads).
    pub async fn request(&mut self, kind: &str, data: Value) -> Value {
        let id = format!("req-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
        self.ws
            .send_json(&json!({"type": kind, "data": data, "id": id}))
            .await;
        self.take(&format!("the answer to {kind} {id}"), |f| f["id"] == id)
            .await
    }

    /// The first frame (queued or new) that satisfies `pred`; others stay queued.
    pub async fn take(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.backlog.iter().position(&pred) {
            return self.backlog.remove(i).expect("index in range");
        }
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.ws.next_data_frame(remaining).await {
                None => panic!("no frame matching {what} within {PROMPT:?}"),
                Some(Frame::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    if pred(&frame) {
                        return frame;
                    }
                    self.backlog.push_back(frame);
                }
                Some(other) => {
                    panic!("socket closed or non-JSON while waiting for {what}: {other:?}")
                }
            }
        }
    }

    /// `Subscribe {topics, since?, id}` → the `Status subscribed` answer (the `Ack` that
    /// follows it for the request's id is read and checked too).
    pub async fn subscribe(&mut self, topics: &[&str], since: Option<u64>) -> Value {
        let mut data = json!({"topics": topics});
        if let Some(since) = since {
            data["since"] = since.into();
        }
        let answer = self.request("Subscribe", data).await;
        assert_eq!(answer["type"], "Status", "{answer}");
        assert_eq!(answer["data"]["status"], "subscribed", "{answer}");
        let id = answer["id"].clone();
        let ack = self
            .take("the Subscribe Ack", |f| f["type"] == "Ack" && f["id"] == id)
            .await;
        assert_eq!(ack["data"]["message_id"], id, "{ack}");
        assert_eq!(ack["data"]["details"], answer["data"]["details"], "{ack}");
        answer
    }

    /// The next frame of type `kind` (others skipped).
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        self.take(&format!("a {kind} frame"), |f| f["type"] == kind)
            .await
    }

    /// The next JSON frame, whatever it is.
    pub async fn next(&mut self) -> Value {
        match self.backlog.pop_front() {
            Some(frame) => frame,
            None => self.ws.next_json().await,
        }
    }

    /// Asserts that no frame of type `kind` arrives within `period` (others are skipped).
    pub async fn expect_none_of_type(&mut self, kind: &str, period: Duration) {
        if let Some(frame) = self.backlog.iter().find(|f| f["type"] == kind) {
            panic!("unexpected {kind} frame: {frame}");
        }
        let deadline = tokio::time::Instant::now() + period;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.ws.next_data_frame(remaining).await {
                None => return,
                Some(Frame::Text(text)) => {
                    let frame: Value = serde_json::from_str(&text).expect("JSON frame");
                    assert_ne!(frame["type"], kind, "unexpected {kind} frame: {frame}");
                }
                Some(other) => panic!("unexpected frame while expecting no {kind}: {other:?}"),
            }
        }
    }

    /// Expects the server to close the socket; returns the close code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + PROMPT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.ws.next_data_frame(remaining).await {
                None => panic!("the server did not close the socket within {PROMPT:?}"),
                Some(Frame::Close(code, _)) => return code,
                Some(Frame::Ended(reason)) => {
                    panic!("connection ended without a close frame: {reason}")
                }
                Some(_) => continue,
            }
        }
    }

    /// Closes politely.
    pub async fn close(self) {
        self.ws.close().await;
    }
}
