//! A `/api/v1/ws/connect` (rooms) client: HS256 tokens with `sub`, `username` and an
//! optional `rooms` claim, the client frames `{type, room?, data?}`, and waits for server
//! events by type.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use toml::Value as Toml;

use crate::client::{Connect, Frame, WsClient};
use crate::node::{Node, NodeConfig};
use crate::PROMPT;

/// The HS256 secret rooms test nodes verify tokens with.
pub const ROOMS_SECRET: &str = "rooms-test-secret";

/// The rooms endpoint.
pub const ROOMS_PATH: &str = "/api/v1/ws/connect";

/// Seconds since the epoch.
pub fn now_secs() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit")
}

/// `config` with the JWT provider on (HS256 with [`ROOMS_SECRET`]) for the rooms dialect.
pub fn with_rooms_auth(config: NodeConfig) -> NodeConfig {
    let list = |items: &[&str]| Toml::Array(items.iter().map(|s| Toml::from(*s)).collect());
    config
        .set("auth.providers", list(&["static", "jwt"]))
        .set("auth.dialects.rooms", list(&["jwt"]))
        .set("auth.jwt.secret", ROOMS_SECRET)
}

/// Claims of user `sub` called `username`, expiring in an hour, with `rooms` if given.
pub fn claims(sub: &str, username: &str, rooms: Option<&[&str]>) -> Value {
    let mut claims = json!({
        "sub": sub,
        "username": username,
        "iat": now_secs(),
        "exp": now_secs() + 3600,
    });
    if let Some(rooms) = rooms {
        claims["rooms"] = json!(rooms);
    }
    claims
}

/// Signs `claims` with `secret` (HS256).
pub fn sign(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signs")
}

/// A token for user `sub` signed with [`ROOMS_SECRET`].
pub fn token(sub: &str, username: &str, rooms: Option<&[&str]>) -> String {
    sign(&claims(sub, username, rooms), ROOMS_SECRET)
}

/// The upgrade request of a rooms client on `node` with `?token=`.
pub fn connect(node: &Node, token: &str) -> Connect {
    Connect::v1(node).path(ROOMS_PATH).query("token", token)
}

/// One rooms client.
pub struct RoomsClient {
    /// The socket.
    pub ws: WsClient,
    /// The `connected` frame.
    pub welcome: Value,
}

impl RoomsClient {
    /// Connects with `token` and reads the `connected` frame (panics if it is anything else).
    pub async fn connect(node: &Node, token: &str) -> RoomsClient {
        let mut ws = match connect(node, token).open().await {
            Ok(ws) => ws,
            Err(refusal) => panic!("rooms upgrade refused: {refusal:?}"),
        };
        let welcome = ws.next_json().await;
        assert_eq!(welcome["type"], "connected", "first frame: {welcome}");
        RoomsClient { ws, welcome }
    }

    /// Opens the socket without reading anything (for sessions that are closed at once).
    pub async fn open(node: &Node, token: &str) -> WsClient {
        match connect(node, token).open().await {
            Ok(ws) => ws,
            Err(refusal) => panic!("rooms upgrade refused (it must be accepted): {refusal:?}"),
        }
    }

    /// Sends `{type, room?, data?}`.
    pub async fn send(&mut self, kind: &str, room: Option<&str>, data: Option<Value>) {
        let mut frame = json!({"type": kind});
        if let Some(room) = room {
            frame["room"] = json!(room);
        }
        if let Some(data) = data {
            frame["data"] = data;
        }
        self.ws.send_json(&frame).await;
    }

    /// Joins `room` and waits for its own `user_joined` (the sign it is in).
    pub async fn join(&mut self, room: &str) {
        self.send("join_room", Some(room), None).await;
        let user_id = self.welcome["data"]["user_id"].clone();
        self.next_matching(&format!("own user_joined in {room}"), |e| {
            e["type"] == "user_joined" && e["room"] == room && e["data"]["user_id"] == user_id
        })
        .await;
    }

    /// The next event of type `kind` (others skipped).
    pub async fn next_of_type(&mut self, kind: &str) -> Value {
        self.next_matching(kind, |e| e["type"] == kind).await
    }

    /// The next event satisfying `pred` (others skipped).
    pub async fn next_matching(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.ws.next_matching(what, pred).await
    }

    /// The next event, whatever it is.
    pub async fn next(&mut self) -> Value {
        self.ws.next_json().await
    }

    /// Expects a close within [`PROMPT`] (events before it skipped); returns its code.
    pub async fn expect_close(&mut self) -> Option<u16> {
        expect_close_skipping_events(&mut self.ws, PROMPT).await
    }
}

/// Reads until the server closes, skipping data frames; the close code.
pub async fn expect_close_skipping_events(ws: &mut WsClient, timeout: Duration) -> Option<u16> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_frame(remaining).await {
            None => panic!("the server did not close the socket within {timeout:?}"),
            Some(Frame::Close(code, _)) => return code,
            Some(Frame::Ended(why)) => panic!("the connection ended without a close frame: {why}"),
            Some(_) => continue,
        }
    }
}
