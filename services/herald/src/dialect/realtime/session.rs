//! One `/ws` session: the upgrade (JWT from `?token=`, `Authorization: Bearer` or the
//! `access_token.<JWT>` subprotocol), then the actor that answers client frames.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::websocket::{self, CloseCode, CloseReason, Inbound, Message, ProtocolError};
use actix::prelude::*;
use actix_web::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::join_all;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use herald_protocol::subject::{validate_identifier, validate_topic};
use herald_protocol::TopicPattern;
use serde_json::{json, Map, Value};
use sha2::Digest;

use super::node::PresenceLease;
use super::{covers, validate_pattern, DIALECT};
use crate::auth::{Credentials, Principal};
use crate::bus::{Bus, BusMessage};
use crate::dialect::admission::{admit, authenticate, bearer, Admitted};
use crate::dialect::codec::Codec;
use crate::dialect::lifecycle;
use crate::dialect::Refusal;
use crate::limits::Slot;
use crate::metrics;
use crate::outbox::{Frame, Outbox, OutboxReceiver};
use crate::registry::{now_ms, Join, Member, RoutingKey, SessionId};

/// Seconds since the epoch: the unit of every time field inside `data` (`server_time`,
/// `sent_at`, `last_seen`, `expires_at`), as document 003's examples show them.
fn now_secs() -> u64 {
    now_ms() / 1000
}
use crate::state::AppState;

/// The `/ws` protocol version announced in the welcome.
const PROTOCOL_VERSION: &str = "1.0";
/// What the welcome says this server does.
const FEATURES: [&str; 4] = ["broadcast", "direct_message", "presence", "history"];
/// The subprotocol prefix that carries a JWT (browsers cannot set `Authorization`).
const SUBPROTOCOL_PREFIX: &str = "access_token.";
/// Close code at JWT expiry.
const TOKEN_EXPIRED: u16 = 4401;
/// Topics the server publishes Presence on; clients may subscribe, never broadcast.
const PRESENCE_PREFIX: &str = "presence.";
/// The JWT claim with topic permissions: `{"subscribe": [patterns], "publish": [patterns]}`.
const TOPICS_CLAIM: &str = "topics";

/// The JWT a client presented, and the subprotocol to echo when it came as one.
fn token_of(req: &HttpRequest) -> Result<(String, Option<String>), Refusal> {
    let query = url::form_urlencoded::parse(req.query_string().as_bytes());
    if let Some((_, token)) = query.into_iter().find(|(k, _)| k == "token") {
        return Ok((token.into_owned(), None));
    }
    if let Some(header) = req.headers().get(AUTHORIZATION) {
        let header = header
            .to_str()
            .map_err(|_| Refusal::BadRequest("Authorization header is not ASCII".into()))?;
        return match bearer(header) {
            Some(token) if !token.is_empty() => Ok((token.to_owned(), None)),
            _ => Err(Refusal::Unauthorized(
                "/ws takes Authorization: Bearer <JWT> (not Basic)".into(),
            )),
        };
    }
    let offered = req
        .headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| p.starts_with(SUBPROTOCOL_PREFIX));
    if let Some(protocol) = offered {
        let token = &protocol[SUBPROTOCOL_PREFIX.len()..];
        if !token.is_empty() {
            return Ok((token.to_owned(), Some(protocol.to_owned())));
        }
    }
    metrics::auth_failure(DIALECT);
    Err(Refusal::Unauthorized(
        "a JWT is required: ?token=<JWT>, Authorization: Bearer <JWT>, or subprotocol access_token.<JWT>".into(),
    ))
}

/// Topic patterns the principal may use for `action` (`subscribe` or `publish`): the JWT's
/// `topics.<action>` list, else the configured default.
fn permissions(principal: &Principal, action: &str, default: &[TopicPattern]) -> Vec<String> {
    principal
        .claims
        .get(TOPICS_CLAIM)
        .and_then(|t| t.get(action))
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(Value::as_str)
                .filter(|p| validate_pattern(p).is_ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_else(|| default.iter().map(|p| p.as_str().to_owned()).collect())
}

/// `GET /ws`: authenticates before the upgrade (401 on a bad token), then upgrades.
pub async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (token, echo) = token_of(&req)?;
    let Admitted { ip, node_slot } = admit(&req, &state).await?;
    let principal = authenticate(&state, DIALECT, &Credentials::User { token }, ip).await?;
    let user_id = principal
        .user_id
        .clone()
        .filter(|id| validate_identifier(id).is_ok())
        .ok_or_else(|| {
            tracing::warn!(%ip, "credentials refused: the token's user is not a valid user id ([A-Za-z0-9_-]{{1,128}})");
            Refusal::Forbidden(
                "the token's user claim (auth.jwt.user_claim, default sub) must be a [A-Za-z0-9_-]{1,128} id".into(),
            )
        })?;
    let protocols: Vec<&str> = echo.as_deref().into_iter().collect();
    let frame_cap = state.settings.realtime.max_message_bytes.saturating_mul(4);
    let (handshake, inbound) = websocket::accept(&req, body, &protocols, frame_cap)?;
    let outbox = RtSession::start_with(
        state.into_inner(),
        (ip, user_id, principal),
        node_slot,
        inbound,
    );
    handshake.respond(outbox)
}

/// A client frame `{type, data, id?}`.
#[derive(Debug, serde::Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    id: Option<Value>,
}

/// A server frame `{type, data, id?, timestamp}` (the client's `id` echoed on answers).
fn frame(kind: &str, data: Value, id: Option<&Value>) -> Frame {
    let mut map = Map::new();
    map.insert("type".into(), kind.into());
    map.insert("data".into(), data);
    if let Some(id) = id {
        map.insert("id".into(), id.clone());
    }
    map.insert("timestamp".into(), now_ms().into());
    Frame::Text(ByteString::from(Value::Object(map).to_string()))
}

/// `Error {code, message, details}`.
fn error(code: u16, message: impl Into<String>, details: Value, id: Option<&Value>) -> Frame {
    frame(
        "Error",
        json!({"code": code, "message": message.into(), "details": details}),
        id,
    )
}

/// One `/ws` session.
pub struct RtSession {
    id: SessionId,
    /// Cluster-unique id shown to clients (`connection_id`, `delivered_to`).
    connection_id: String,
    state: Arc<AppState>,
    ip: IpAddr,
    user_id: String,
    principal: Principal,
    /// Patterns this session may subscribe to / broadcast on.
    may_subscribe: Vec<String>,
    may_publish: Vec<String>,
    outbox: Outbox,
    /// Topic patterns joined.
    topics: BTreeSet<String>,
    /// Whether the user registry was joined (left once on stop).
    joined_user: bool,
    /// Presence lease, released when the session stops.
    presence: Option<PresenceLease>,
    /// Inbound message rate (`realtime.messages_per_second`, `realtime.burst`).
    limiter: DefaultDirectRateLimiter,
    alive: bool,
    _node_slot: Slot<()>,
}

impl RtSession {
    fn start_with(
        state: Arc<AppState>,
        (ip, user_id, principal): (IpAddr, String, Principal),
        node_slot: Slot<()>,
        inbound: Inbound,
    ) -> OutboxReceiver {
        lifecycle::start_session(
            &state.clone(),
            inbound,
            "slow consumer: reconnect and Subscribe with since=<last seq>",
            |_, outbox| {
                let rt = &state.settings.realtime;
                let quota = Quota::per_second(
                    std::num::NonZeroU32::new(rt.messages_per_second)
                        .unwrap_or(std::num::NonZeroU32::MIN),
                )
                .allow_burst(
                    std::num::NonZeroU32::new(rt.burst).unwrap_or(std::num::NonZeroU32::MIN),
                );
                let id = crate::state::next_session_id();
                RtSession {
                    id,
                    connection_id: state.realtime.connection_id(id),
                    may_subscribe: permissions(&principal, "subscribe", &rt.default_subscribe),
                    may_publish: permissions(&principal, "publish", &rt.default_publish),
                    limiter: RateLimiter::direct(quota),
                    state,
                    ip,
                    user_id,
                    principal,
                    outbox,
                    topics: BTreeSet::new(),
                    joined_user: false,
                    presence: None,
                    alive: true,
                    _node_slot: node_slot,
                }
            },
        )
    }

    fn member(&self) -> Member {
        Member {
            id: self.id,
            outbox: self.outbox.clone(),
            codec: Codec::Realtime,
            relay: None,
        }
    }

    fn send(&self, frame: Frame) {
        let _ = self.outbox.push(frame);
    }

    /// Queues a close frame and stops the actor.
    fn close(&mut self, code: u16, reason: &str, ctx: &mut Context<Self>) {
        self.outbox.close(Some(CloseReason {
            code: CloseCode::from(code),
            description: Some(reason.to_owned()),
        }));
        ctx.stop();
    }

    /// Welcome, presence, the user registry (with the offline queue's replay), then writing.
    fn go_live(&mut self, ctx: &mut Context<Self>) {
        self.send(frame(
            "Status",
            json!({
                "status": "connected",
                "details": {
                    "connection_id": self.connection_id,
                    "user_id": self.user_id,
                    "server_time": now_secs(),
                    "protocol_version": PROTOCOL_VERSION,
                    "features": FEATURES,
                },
            }),
            None,
        ));
        let state = Arc::clone(&self.state);
        let user_id = self.user_id.clone();
        let member = self.member();
        let setup = async move {
            let since = state.realtime.take_queue(&user_id).await;
            state
                .directory
                .join(Join {
                    key: RoutingKey::User(user_id.clone()),
                    member,
                    since,
                    announces_resync: true,
                })
                .await;
            let (lease, online) = state.realtime.session_opened(&user_id).await;
            if let Some(dedup) = online {
                state.realtime.publish_presence(&user_id, true, dedup).await;
            }
            lease
        };
        self.joined_user = true;
        ctx.wait(setup.into_actor(self).map(|lease, act, _| {
            act.presence = Some(lease);
            act.outbox.open();
        }));
    }

    fn keepalive(&mut self, ctx: &mut Context<Self>) {
        if !self.alive {
            return self.close(1008, "keepalive timeout: no pong since the last ping", ctx);
        }
        self.alive = false;
        self.outbox.ping();
    }

    /// Schedules `AuthStatus token_expiring` ahead of the JWT's `exp` and the 4401 close at it.
    fn watch_expiry(&mut self, ctx: &mut Context<Self>) {
        let Some(exp) = self.principal.claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let exp_ms = exp.saturating_mul(1000);
        let now = now_ms();
        let lead = self
            .state
            .settings
            .realtime
            .token_expiry_warning
            .as_millis() as u64;
        let warn_in = Duration::from_millis(exp_ms.saturating_sub(lead).saturating_sub(now));
        ctx.run_later(warn_in, move |act, _| {
            act.send(frame(
                "AuthStatus",
                json!({
                    "status": "token_expiring",
                    "expires_at": exp,
                    "refresh_required": true,
                    "message": "the token expires soon: reconnect with a fresh token before expires_at",
                }),
                None,
            ));
        });
        ctx.run_later(
            Duration::from_millis(exp_ms.saturating_sub(now)),
            |act, ctx| {
                act.close(
                    TOKEN_EXPIRED,
                    "token expired; reconnect with a fresh token",
                    ctx,
                )
            },
        );
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let max = self.state.settings.realtime.max_message_bytes;
        if text.len() > max {
            return self.send(error(
                400,
                format!(
                    "message is {} bytes; the limit is {max} (realtime.max_message_bytes): split it or send a reference",
                    text.len()
                ),
                json!({"size": text.len(), "max": max}),
                None,
            ));
        }
        let request: ClientFrame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return self.send(error(
                    400,
                    format!("frames are JSON objects {{\"type\", \"data\", \"id\"?}}: {e}"),
                    json!({}),
                    None,
                ))
            }
        };
        if let Some(bad) = request
            .id
            .as_ref()
            .filter(|id| !(id.is_string() || id.is_number()))
        {
            return self.send(error(
                400,
                format!("id must be a string (or a number) the answer can echo, not {bad}"),
                json!({"id": bad}),
                None,
            ));
        }
        let id = request.id.as_ref();
        match request.kind.as_str() {
            "Ping" => self.send(frame(
                "Pong",
                json!({"timestamp": request.data.get("timestamp").cloned().unwrap_or(Value::Null), "server_time": now_secs()}),
                id,
            )),
            // The document's client answers a JSON `Ping` with `Pong`; any frame already
            // counts as liveness, so there is nothing to answer.
            "Pong" => {}
            "Subscribe" => self.on_subscribe(&request, ctx),
            "Unsubscribe" => self.on_unsubscribe(&request),
            "Broadcast" => self.on_broadcast(&request, ctx),
            "DirectMessage" => self.on_direct(&request, ctx),
            kind if kind.starts_with("X-") => self.on_custom(request, ctx),
            other => self.send(error(
                400,
                format!("unknown type {other:?}: use Ping, Pong, Subscribe, Unsubscribe, Broadcast, DirectMessage or an X- custom type"),
                json!({"type": other}),
                id,
            )),
        }
    }

    /// `data.topics` as a list of strings (a single `data.topic` string also works).
    fn topics_of(request: &ClientFrame) -> Result<Vec<String>, Frame> {
        let id = request.id.as_ref();
        let list = match (request.data.get("topics"), request.data.get("topic")) {
            (Some(Value::Array(list)), _) => list
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>(),
            (None, Some(Value::String(t))) => Some(vec![t.clone()]),
            _ => None,
        };
        match list {
            Some(list) if !list.is_empty() => Ok(list),
            _ => Err(error(
                400,
                format!(
                    "{} needs data.topics: a non-empty list of topic patterns",
                    request.kind
                ),
                json!({}),
                id,
            )),
        }
    }

    fn on_subscribe(&mut self, request: &ClientFrame, ctx: &mut Context<Self>) {
        let id = request.id.clone();
        let topics = match Self::topics_of(request) {
            Ok(t) => t,
            Err(frame) => return self.send(frame),
        };
        if let Some(bad) = topics.iter().find_map(|t| validate_pattern(t).err()) {
            return self.send(error(400, bad, json!({"topics": topics}), id.as_ref()));
        }
        let since = match request.data.get("since") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(s) => Some(s),
                None => {
                    return self.send(error(
                        400,
                        "since must be the last seq you received (a non-negative integer)",
                        json!({"since": v}),
                        id.as_ref(),
                    ))
                }
            },
        };
        let denied: Vec<&String> = topics
            .iter()
            .filter(|t| !self.may_subscribe.iter().any(|a| covers(a, t)))
            .collect();
        if !denied.is_empty() {
            return self.send(error(
                403,
                "the token does not allow subscribing to these topics (JWT claim topics.subscribe)",
                json!({"denied": denied, "allowed": self.may_subscribe}),
                id.as_ref(),
            ));
        }
        let new: Vec<String> = topics
            .iter()
            .filter(|t| !self.topics.contains(*t))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let max = self.state.settings.realtime.max_subscriptions;
        if self.topics.len() + new.len() > max {
            return self.send(error(
                429,
                format!("a connection may hold at most {max} subscriptions (realtime.max_subscriptions): unsubscribe first"),
                json!({"active_subscriptions": self.topics.len(), "max": max}),
                id.as_ref(),
            ));
        }
        self.topics.extend(new.iter().cloned());
        let directory = self.state.directory.clone();
        let member = self.member();
        let joins = new.into_iter().map(move |topic| {
            let directory = directory.clone();
            let join = Join {
                key: RoutingKey::Topic(topic),
                member: member.clone(),
                since,
                announces_resync: true,
            };
            async move { directory.join(join).await }
        });
        let joins = join_all(joins.collect::<Vec<_>>());
        ctx.wait(joins.into_actor(self).map(move |_, act, _| {
            let active = act.topics.len();
            act.answer_status("subscribed", topics, active, id.as_ref());
        }));
    }

    /// `Status {status, details: {topics, active_subscriptions}}` as document 003 shows it,
    /// then, for a request with an `id`, `Ack {message_id: id, status, details}`: the
    /// document's client resolves a pending request only on an `Ack` whose `message_id` is
    /// the request's `id`, and otherwise times out after 30 s.
    fn answer_status(&self, status: &str, topics: Vec<String>, active: usize, id: Option<&Value>) {
        let details = json!({"topics": topics, "active_subscriptions": active});
        self.send(frame(
            "Status",
            json!({"status": status, "details": details}),
            id,
        ));
        if let Some(id) = id {
            self.send(frame(
                "Ack",
                json!({"message_id": id, "status": status, "details": details}),
                Some(id),
            ));
        }
    }

    fn on_unsubscribe(&mut self, request: &ClientFrame) {
        let topics = match Self::topics_of(request) {
            Ok(t) => t,
            Err(frame) => return self.send(frame),
        };
        for topic in &topics {
            if self.topics.remove(topic) {
                self.state
                    .directory
                    .leave(RoutingKey::Topic(topic.clone()), self.id);
            }
        }
        self.answer_status(
            "unsubscribed",
            topics,
            self.topics.len(),
            request.id.as_ref(),
        );
    }

    /// Who sent a message, as stored with it.
    fn sender(&self) -> Value {
        json!({
            "user_id": self.user_id,
            "username": self.principal.username,
            "connection_id": self.connection_id,
        })
    }

    fn on_broadcast(&mut self, request: &ClientFrame, ctx: &mut Context<Self>) {
        let id = request.id.clone();
        let Some(topic) = request.data.get("topic").and_then(Value::as_str) else {
            return self.send(error(
                400,
                "Broadcast needs data.topic (a topic such as updates.a) and data.payload",
                json!({}),
                id.as_ref(),
            ));
        };
        if validate_topic(topic).is_err() {
            return self.send(error(
                400,
                format!(
                    "{topic:?} is not a topic: dot-separated [A-Za-z0-9_-] tokens, no wildcards"
                ),
                json!({"topic": topic}),
                id.as_ref(),
            ));
        }
        if topic.starts_with(PRESENCE_PREFIX) {
            return self.send(error(
                403,
                format!(
                    "{topic:?} is reserved: presence.<user_id> topics are published by the server"
                ),
                json!({"topic": topic}),
                id.as_ref(),
            ));
        }
        if !self.may_publish.iter().any(|a| covers(a, topic)) {
            return self.send(error(
                403,
                format!(
                    "the token does not allow broadcasting to {topic:?} (JWT claim topics.publish)"
                ),
                json!({"topic": topic, "allowed": self.may_publish}),
                id.as_ref(),
            ));
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        let public_id = request
            .id
            .clone()
            .unwrap_or_else(|| message_id.clone().into());
        let payload = json!({
            "type": "Broadcast",
            "data": {
                "topic": topic,
                "payload": request.data.get("payload").cloned().unwrap_or(Value::Null),
                "metadata": {"message_id": public_id, "sent_at": now_secs(), "sender": self.sender()},
            },
        });
        let subject = format!("herald.v1.topic.{topic}");
        self.publish_counted(
            (subject, message_id, payload),
            id,
            ctx,
            |message_id, seq, connections| {
                Ok(json!({
                    "message_id": message_id,
                    "status": "delivered",
                    "recipients": connections.len(),
                    "seq": seq,
                }))
            },
        );
    }

    fn on_direct(&mut self, request: &ClientFrame, ctx: &mut Context<Self>) {
        let id = request.id.clone();
        let Some(target) = request.data.get("target_user").and_then(Value::as_str) else {
            return self.send(error(
                400,
                "DirectMessage needs data.target_user (a user id) and data.payload",
                json!({}),
                id.as_ref(),
            ));
        };
        if validate_identifier(target).is_err() {
            return self.send(error(
                400,
                format!("{target:?} is not a user id ([A-Za-z0-9_-]{{1,128}})"),
                json!({"target_user": target}),
                id.as_ref(),
            ));
        }
        let message_id = uuid::Uuid::new_v4().to_string();
        let public_id = request
            .id
            .clone()
            .unwrap_or_else(|| message_id.clone().into());
        let payload = json!({
            "type": "DirectMessage",
            "data": {
                "from_user": self.user_id,
                "target_user": target,
                "payload": request.data.get("payload").cloned().unwrap_or(Value::Null),
                "metadata": {"message_id": public_id, "sent_at": now_secs(), "sender": self.sender()},
            },
        });
        let subject = format!("herald.v1.user.{target}");
        let target = target.to_owned();
        let state = Arc::clone(&self.state);
        let max = state.settings.realtime.dm_queue_max;
        // An offline user's full queue is refused before anything is stored.
        let check = async move {
            if state.realtime.user_sessions(&target).await == Some(0) {
                match state.realtime.queued(&target).await {
                    Ok(n) if n >= max => return Err((429, format!("{target}'s offline queue holds {max} messages (realtime.dm_queue_max): retry when they are back online"))),
                    Err(e) => return Err((503, format!("cannot read the offline queue: {e}; retry"))),
                    Ok(_) => {}
                }
                if !state.realtime.queue_has_room(&target) {
                    return Err((429, format!("the node holds offline queues for {} users (realtime.dm_queue_users_max): retry later", state.settings.realtime.dm_queue_users_max)));
                }
            }
            Ok(target)
        };
        ctx.wait(check.into_actor(self).map(move |checked, act, ctx| {
            let target = match checked {
                Ok(t) => t,
                Err((code, message)) => {
                    return act.send(error(
                        code,
                        message,
                        json!({"message_id": public_id, "queued": false}),
                        id.as_ref(),
                    ))
                }
            };
            act.publish_counted(
                (subject, message_id, payload),
                id,
                ctx,
                move |message_id, seq, connections| {
                    if connections.is_empty() {
                        Err((target, seq))
                    } else {
                        Ok(json!({
                            "message_id": message_id,
                            "status": "delivered",
                            "delivered_to": connections,
                            "recipients": connections.len(),
                            "seq": seq,
                        }))
                    }
                },
            );
        }));
    }

    /// Publishes a client message with a delivery report subject and answers `Ack` with
    /// what `answer` makes of the recipients, or queues it for an offline user (`Err`).
    /// Storing blocks the session's next message (so a client's messages are stored in
    /// the order it sent them); waiting for the reports does not.
    ///
    /// `message_id` is the server's: the stored message's dedup id and its report subject
    /// (a client's `id` is neither unique across clients nor a valid subject token). What
    /// the client sees as `message_id` is its own `id` when it sent one, so it can match
    /// the answer to its pending request.
    fn publish_counted(
        &mut self,
        (subject, message_id, payload): (String, String, Value),
        id: Option<Value>,
        ctx: &mut Context<Self>,
        answer: impl FnOnce(&Value, Option<u64>, &[String]) -> Result<Value, (String, Option<u64>)>
            + 'static,
    ) {
        let Value::Object(payload) = payload else {
            return;
        };
        let state = Arc::clone(&self.state);
        let public_id = id.clone().unwrap_or_else(|| message_id.clone().into());
        let message = BusMessage {
            subject,
            json: true,
            msg_id: Some(message_id.clone()),
            ..Default::default()
        };
        let store = {
            let state = Arc::clone(&state);
            let message_id = message_id.clone();
            async move {
                state
                    .realtime
                    .publish_counted(message, &message_id, payload)
                    .await
            }
        };
        ctx.wait(store.into_actor(self).map(move |stored, act, ctx| {
            let (seq, reports) = match stored {
                Ok(stored) => stored,
                Err(e) => {
                    return act.send(error(
                        503,
                        format!("the message could not be stored: {e}; retry"),
                        json!({"message_id": public_id}),
                        id.as_ref(),
                    ))
                }
            };
            let wait = state.settings.realtime.ack_wait;
            let work = async move {
                let connections = reports.collect(wait).await;
                match answer(&public_id, seq, &connections) {
                    Ok(data) => frame("Ack", data, id.as_ref()),
                    Err((target, Some(seq))) => match state.realtime.enqueue(&target, seq).await {
                        Ok(()) => error(
                            404,
                            format!("User {target} not found or not connected; the message is queued and delivered when they next connect"),
                            json!({"message_id": public_id, "queued": true, "target_user": target}),
                            id.as_ref(),
                        ),
                        Err(e) => error(
                            503,
                            format!("User {target} not found or not connected, and the message could not be queued: {e}; retry"),
                            json!({"message_id": public_id, "queued": false}),
                            id.as_ref(),
                        ),
                    },
                    Err((target, None)) => error(
                        404,
                        format!("User {target} not found or not connected"),
                        json!({"message_id": public_id, "queued": false}),
                        id.as_ref(),
                    ),
                }
            };
            let outbox = act.outbox.clone();
            ctx.spawn(work.into_actor(act).map(move |frame, _, _| {
                let _ = outbox.push(frame);
            }));
        }));
    }

    /// `X-<name>`: a NATS request on `herald.v1.custom.X-<name>`; the reply goes back.
    fn on_custom(&mut self, request: ClientFrame, ctx: &mut Context<Self>) {
        let id = request.id.clone();
        if validate_identifier(&request.kind).is_err() {
            return self.send(error(
                400,
                format!(
                    "custom type {:?} must be X- followed by [A-Za-z0-9_-]",
                    request.kind
                ),
                json!({}),
                id.as_ref(),
            ));
        }
        let Bus::Nats(nats) = &self.state.bus else {
            return self.send(error(
                503,
                "custom X- types need a NATS responder; this node runs on the in-process bus (bus.kind = \"memory\")",
                json!({"type": request.kind}),
                id.as_ref(),
            ));
        };
        let client = nats.client().clone();
        let subject = format!("herald.v1.custom.{}", request.kind);
        let body = json!({
            "type": request.kind,
            "data": request.data,
            "id": request.id,
            "user_id": self.user_id,
            "username": self.principal.username,
            "connection_id": self.connection_id,
        });
        let timeout = self.state.settings.realtime.custom_timeout;
        let kind = request.kind;
        let work = async move {
            let reply = tokio::time::timeout(
                timeout,
                client.request(subject.clone(), body.to_string().into()),
            )
            .await;
            match reply {
                Ok(Ok(message)) => {
                    let data = serde_json::from_slice::<Value>(&message.payload).unwrap_or_else(
                        |_| Value::String(String::from_utf8_lossy(&message.payload).into_owned()),
                    );
                    match data {
                        Value::Object(map) if map.get("type").is_some_and(Value::is_string) => {
                            let mut map = map;
                            if let Some(id) = &id {
                                map.insert("id".into(), id.clone());
                            }
                            map.entry("timestamp").or_insert_with(|| now_ms().into());
                            Frame::Text(ByteString::from(Value::Object(map).to_string()))
                        }
                        data => frame(&kind, data, id.as_ref()),
                    }
                }
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => error(
                    503,
                    format!("no service answers {kind} (nothing subscribed to {subject})"),
                    json!({"type": kind}),
                    id.as_ref(),
                ),
                Ok(Err(e)) => error(
                    503,
                    format!("{kind} request failed: {e}"),
                    json!({"type": kind}),
                    id.as_ref(),
                ),
                Err(_) => error(
                    503,
                    format!("the {kind} service did not answer within {timeout:?} (realtime.custom_timeout)"),
                    json!({"type": kind}),
                    id.as_ref(),
                ),
            }
        };
        let outbox = self.outbox.clone();
        ctx.spawn(work.into_actor(self).map(move |frame, _, _| {
            let _ = outbox.push(frame);
        }));
    }

    /// `[1 B type][4 B big-endian length][payload]`: acknowledged with `Status
    /// binary_received` and, in `details` as document 003 nests them, the payload's size,
    /// the type's name and its SHA-256.
    fn on_binary(&mut self, bytes: &Bytes) {
        let max = self.state.settings.realtime.max_message_bytes;
        if bytes.len() > max {
            return self.send(error(
                400,
                format!(
                    "binary message is {} bytes; the limit is {max} (realtime.max_message_bytes)",
                    bytes.len()
                ),
                json!({"size": bytes.len(), "max": max}),
                None,
            ));
        }
        match parse_binary(bytes) {
            Ok(parsed) => {
                let mut details = json!({
                    "size": parsed.payload.len(),
                    "type": parsed.kind,
                    "checksum": format!("sha256:{}", hex(&sha2::Sha256::digest(parsed.payload))),
                });
                if let Some(target) = parsed.target {
                    details["target"] = target.into();
                }
                self.send(frame(
                    "Status",
                    json!({"status": "binary_received", "details": details}),
                    None,
                ));
            }
            Err(message) => self.send(error(400, message, json!({"size": bytes.len()}), None)),
        }
    }
}

/// A binary client frame, checked.
struct BinaryFrame<'a> {
    /// The document's name of the type: `broadcast`, `direct_message`, `file_transfer` or
    /// `stream_data`.
    kind: &'static str,
    /// The target of a broadcast (topic) or direct (user) frame.
    target: Option<String>,
    /// Everything after the 5-byte header.
    payload: &'a [u8],
}

fn parse_binary(bytes: &[u8]) -> Result<BinaryFrame<'_>, String> {
    let Some((&kind, rest)) = bytes.split_first() else {
        return Err(
            "empty binary frame: expected [1 B type][4 B big-endian length][payload]".into(),
        );
    };
    let kind = match kind {
        0x01 => "broadcast",
        0x02 => "direct_message",
        0x03 => "file_transfer",
        0x04 => "stream_data",
        other => {
            return Err(format!(
                "binary type 0x{other:02x} is unknown: 0x01 broadcast, 0x02 direct_message, 0x03 file_transfer, 0x04 stream_data"
            ))
        }
    };
    let Some((length, payload)) = rest.split_first_chunk::<4>() else {
        return Err("binary frame shorter than its 5-byte header [type][4 B length]".into());
    };
    let length = u32::from_be_bytes(*length) as usize;
    if length != payload.len() {
        return Err(format!(
            "binary length mismatch: the header says {length} bytes but {} follow",
            payload.len()
        ));
    }
    let target = if matches!(kind, "broadcast" | "direct_message") {
        let Some((&len, rest)) = payload.split_first() else {
            return Err(format!(
                "a {kind} binary payload starts with a 1-byte target length and the UTF-8 target"
            ));
        };
        let target = rest
            .get(..usize::from(len))
            .and_then(|t| std::str::from_utf8(t).ok())
            .ok_or_else(|| format!("the {kind} target (length {len}) is missing or not UTF-8"))?;
        Some(target.to_owned())
    } else {
        None
    };
    Ok(BinaryFrame {
        kind,
        target,
        payload,
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Actor for RtSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        metrics::session_delta(DIALECT, 1.0);
        let interval = self.state.settings.realtime.ping_interval;
        ctx.run_interval(interval, |act, ctx| act.keepalive(ctx));
        ctx.add_stream(lifecycle::draining(&self.state));
        ctx.add_stream(lifecycle::revocations(&self.state, &self.principal));
        self.watch_expiry(ctx);
        self.go_live(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        metrics::session_delta(DIALECT, -1.0);
        for topic in std::mem::take(&mut self.topics) {
            self.state
                .directory
                .leave(RoutingKey::Topic(topic), self.id);
        }
        if self.joined_user {
            self.state
                .directory
                .leave(RoutingKey::User(self.user_id.clone()), self.id);
        }
        if let Some(lease) = self.presence.take() {
            let state = Arc::clone(&self.state);
            let user_id = self.user_id.clone();
            tokio::spawn(async move {
                if let Some(dedup) = state.realtime.session_closed(&user_id, lease).await {
                    state
                        .realtime
                        .publish_presence(&user_id, false, dedup)
                        .await;
                }
            });
        }
        tracing::debug!(session = self.id, ip = %self.ip, "/ws session closed");
    }
}

impl StreamHandler<Result<Message, ProtocolError>> for RtSession {
    fn handle(&mut self, item: Result<Message, ProtocolError>, ctx: &mut Self::Context) {
        self.alive = true;
        let data = matches!(item, Ok(Message::Text(_) | Message::Binary(_)));
        if data && self.limiter.check().is_err() {
            let rt = &self.state.settings.realtime;
            return self.send(error(
                429,
                format!(
                    "too many messages: at most {} per second with bursts of {} (realtime.messages_per_second, realtime.burst); slow down",
                    rt.messages_per_second, rt.burst
                ),
                json!({"retry_after_ms": 1000 / u64::from(rt.messages_per_second.max(1))}),
                None,
            ));
        }
        match item {
            Ok(Message::Text(text)) => self.on_text(&text, ctx),
            Ok(Message::Binary(bytes)) => self.on_binary(&bytes),
            Ok(Message::Ping(data)) => self.outbox.pong(data),
            Ok(Message::Close(_)) => {
                self.outbox.close(None);
                ctx.stop();
            }
            Ok(Message::Pong(_) | Message::Continuation(_) | Message::Nop) => {}
            Err(ProtocolError::Overflow) => self.close(
                1009,
                "frame too big: far over realtime.max_message_bytes",
                ctx,
            ),
            Err(error) => {
                tracing::debug!(session = self.id, %error, "protocol error; closing");
                let (code, reason) = websocket::protocol_close(&error);
                self.close(code, reason, ctx);
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

lifecycle::session_closes!(RtSession);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_frames_check_their_length_and_target() {
        let mut good = vec![0x01, 0, 0, 0, 4, 3];
        good.extend_from_slice(b"a.b");
        let parsed = parse_binary(&good).unwrap();
        assert_eq!(parsed.kind, "broadcast");
        assert_eq!(parsed.target.as_deref(), Some("a.b"));
        assert_eq!(parsed.payload.len(), 4);
        assert_eq!(
            parse_binary(&[0x03, 0, 0, 0, 0]).unwrap().kind,
            "file_transfer"
        );
        assert_eq!(
            parse_binary(&[0x04, 0, 0, 0, 0]).unwrap().kind,
            "stream_data"
        );
        assert!(parse_binary(&[0x03, 0, 0, 0, 9, 1, 2]).is_err());
        assert!(parse_binary(&[0x09, 0, 0, 0, 0]).is_err());
        assert!(parse_binary(&[0x03, 0, 0]).is_err());
        assert!(parse_binary(&[0x03, 0, 0, 0, 0]).is_ok());
    }
}
