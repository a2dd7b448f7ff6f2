//! One `/api/v1/ws/connect` session. The upgrade is accepted once the shared admission
//! checks pass (origin, rate, node cap as HTTP statuses); the `?token=` JWT is checked
//! right after it, so a bad token is a 4401 close the browser can read, not an opaque
//! failed upgrade. Then the client joins rooms, and room events reach it through the
//! registry of each room, on whichever node they were published.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::websocket::{self, Socket};
use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{error_frame, server_frame, Access, Room, SENDER_ID};
use crate::auth::{Credentials, Principal};
use crate::bus::{Bus, BusMessage};
use crate::dialect::admission::{admit, authenticate, bearer, user_place, Admitted, UserPlace};
use crate::dialect::codec::Codec;
use crate::dialect::connection::{Connection, Data, MessageRate, Session};
use crate::dialect::{Dialect, Refusal};
use crate::limits::Slot;
use crate::metrics;
use crate::outbox::Frame;
use crate::registry::{Join, Member};
use crate::state::AppState;

/// Close codes of this dialect (SPEC §4.4).
pub mod close {
    /// Missing, bad or expired token.
    pub const UNAUTHORIZED: u16 = 4401;
    /// A room the token may not join.
    pub const FORBIDDEN: u16 = 4403;
    /// More than `rooms.max_connections_per_user` sessions of the user in the cluster.
    pub const TOO_MANY: u16 = 4429;
    /// The node could not serve the session (auth backend unreachable, ...): reconnect.
    pub const INTERNAL: u16 = 4500;
    /// A client frame over `rooms.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
}

/// `GET /api/v1/ws/connect?token=<JWT>`: admits the client (HTTP refusals), upgrades, and
/// leaves the token to the session.
pub async fn upgrade(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let Admitted { ip, node_slot } = admit(&req, &state).await?;
    let token = token_of(&req);
    let max_frame = state.settings.rooms.max_frame_bytes;
    let (handshake, socket) = websocket::accept(&req, &[], max_frame)?;
    RoomsSession::start_with(state.into_inner(), ip, token, node_slot, socket);
    Ok(handshake.respond())
}

/// The JWT: `?token=`, else (for non-browser clients) `Authorization: Bearer`.
fn token_of(req: &HttpRequest) -> Option<String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .or_else(|| {
            req.headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer)
                .map(str::to_owned)
        })
        .filter(|t| !t.is_empty())
}

/// A client frame: `{type, room?, data?}`.
#[derive(Debug, Deserialize)]
struct ClientFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    room: Option<Value>,
    #[serde(default)]
    data: Option<Value>,
}

/// An authenticated user, holding their place under the per-user cap.
struct User {
    id: String,
    /// The rooms the token may join.
    access: Access,
    /// The user id as the token's claim has it (a JSON number stays a number): the
    /// welcome's `user_id` and every `sender_id`.
    id_value: Value,
    /// `sender` of what this user publishes: the username (document 004), else the id.
    sender: Value,
    /// `{user_id, username}`: `data` of this user's `user_joined` / `user_left`.
    presence: Value,
    _place: UserPlace,
}

/// One rooms session.
pub struct RoomsSession {
    conn: Connection,
    ip: IpAddr,
    /// The JWT until it is checked (then dropped: sessions never keep tokens).
    token: Option<String>,
    /// `Some` once the token is checked.
    user: Option<User>,
    /// Rooms joined: each is one registry membership of the connection.
    rooms: HashSet<Room>,
}

impl RoomsSession {
    /// Starts the session; the connection writes the returned outbox, at once (rooms
    /// answer before authentication).
    fn start_with(
        state: Arc<AppState>,
        ip: IpAddr,
        token: Option<String>,
        node_slot: Slot<()>,
        socket: Socket,
    ) {
        let rooms = &state.settings.rooms;
        let rate = MessageRate::new("rooms", rooms.messages_per_second, rooms.burst);
        let ping_interval = rooms.ping_interval;
        Connection::start(state, socket, node_slot, ping_interval, |mut conn, _| {
            conn.outbox.open();
            // Joins, leaves and messages each put an event on the bus.
            conn.limit_rate(rate);
            RoomsSession {
                conn,
                ip,
                token,
                user: None,
                rooms: HashSet::new(),
            }
        })
    }

    /// Closes with the rooms code of an admission or auth refusal.
    fn refuse(&mut self, refusal: &Refusal, ctx: &mut Context<Self>) {
        let code = match refusal {
            Refusal::BadRequest(_) | Refusal::Unauthorized(_) => close::UNAUTHORIZED,
            Refusal::Forbidden(_) => close::FORBIDDEN,
            Refusal::TooMany { .. } => close::TOO_MANY,
            Refusal::Unavailable { .. } | Refusal::AuthTimeout => close::INTERNAL,
        };
        self.conn.close(code, &refusal.to_string(), ctx);
    }

    fn push(&self, frame: Frame) {
        // A refused push means the session is closing already (slow consumer, gone).
        let _ = self.conn.outbox.push(frame);
    }

    /// Checks the token and takes the user's place, then welcomes the client. Client
    /// frames wait meanwhile (`ctx.wait`).
    fn authenticate(&mut self, ctx: &mut Context<Self>) {
        let state = Arc::clone(&self.conn.state);
        let ip = self.ip;
        let token = self.token.take();
        let check = async move {
            let Some(token) = token else {
                metrics::auth_failure(Dialect::Rooms);
                return Err(Refusal::Unauthorized(
                    "missing token: connect with ?token=<JWT>".into(),
                ));
            };
            let principal =
                authenticate(&state, Dialect::Rooms, &Credentials::User { token }, ip).await?;
            let user_id = principal.user_id.clone().ok_or_else(|| {
                metrics::auth_failure(Dialect::Rooms);
                Refusal::Unauthorized("the token names no user (auth.jwt.user_claim)".into())
            })?;
            let cap = state.settings.rooms.max_connections_per_user;
            let place = user_place(
                &state,
                Dialect::Rooms,
                &user_id,
                (cap, "rooms.max_connections_per_user"),
            )
            .await?;
            Ok((principal, user_id, place))
        };
        ctx.wait(check.into_actor(self).map(|result, act, ctx| match result {
            Ok((principal, user_id, place)) => act.go_live(principal, user_id, place, ctx),
            Err(refusal) => act.refuse(&refusal, ctx),
        }));
    }

    fn go_live(
        &mut self,
        principal: Principal,
        user_id: String,
        mut place: UserPlace,
        ctx: &mut Context<Self>,
    ) {
        self.conn.watch_revocations(&principal);
        if let Some(reclaimed) = place.reclaimed() {
            self.conn.watch_reclaim(reclaimed, ctx);
        }
        if let Some(exp) = principal.claims.get("exp").and_then(Value::as_u64) {
            let left = exp
                .saturating_mul(1000)
                .saturating_sub(herald_protocol::now_ms());
            let left = Duration::from_millis(left);
            self.conn
                .close_after(left, close::UNAUTHORIZED, "token expired", ctx);
        }
        let id_value = typed_user_id(&principal, &user_id, &self.conn.state);
        let sender = Value::String(
            principal
                .username
                .clone()
                .unwrap_or_else(|| user_id.clone()),
        );
        let presence = json!({"user_id": id_value, "username": principal.username});
        let Value::Object(welcome) = json!({
            "type": "connected",
            "data": {
                "message": "Connected successfully",
                "user_id": id_value,
                "username": principal.username,
            },
        }) else {
            unreachable!("an object literal")
        };
        self.push(server_frame(welcome));
        self.user = Some(User {
            access: Access::from_claims(
                &principal.claims,
                self.conn.state.settings.rooms.default_allow,
            ),
            id: user_id,
            id_value,
            sender,
            presence,
            _place: place,
        });
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(frame) => frame,
            Err(error) => {
                return self.push(error_frame(
                    None,
                    "bad_frame",
                    &format!("frames are JSON objects {{\"type\", \"room\"?, \"data\"?}}: {error}"),
                ))
            }
        };
        match frame.kind.as_str() {
            "ping" => {
                let Value::Object(pong) = json!({"type": "pong", "data": frame.data}) else {
                    unreachable!("an object literal")
                };
                self.push(server_frame(pong));
            }
            "join_room" => self.join(&frame, ctx),
            "leave_room" => self.leave(&frame, ctx),
            "send_message" => self.send_message(frame, ctx),
            other => self.push(error_frame(
                None,
                "unknown_type",
                &format!(
                    "unknown type {other:?}: send join_room, leave_room, send_message or ping"
                ),
            )),
        }
    }

    /// The frame's room, or an `error` event saying what is wrong with it.
    fn room_of(&self, frame: &ClientFrame) -> Option<Room> {
        match Room::from_field(frame.room.as_ref()) {
            Ok(room) => Some(room),
            Err(error) => {
                let named = frame.room.as_ref().and_then(Value::as_str);
                self.push(error_frame(named, "bad_room", &error.to_string()));
                None
            }
        }
    }

    fn join(&mut self, frame: &ClientFrame, ctx: &mut Context<Self>) {
        let Some(room) = self.room_of(frame) else {
            return;
        };
        let Some(user) = &self.user else { return };
        let announce = presence(&room, "user_joined", user);
        if !user.access.allows(&room, &user.id) {
            return self.conn.close(
                close::FORBIDDEN,
                &format!("this token may not join room {room}"),
                ctx,
            );
        }
        let name = room.to_string();
        if self.rooms.contains(&room) {
            return self.push(error_frame(
                Some(&name),
                "already_joined",
                &format!("already in room {name}"),
            ));
        }
        let max = self.conn.state.settings.rooms.max_rooms_per_connection;
        if self.rooms.len() >= max {
            return self.push(error_frame(
                Some(&name),
                "too_many_rooms",
                &format!("a session may be in at most {max} rooms (rooms.max_rooms_per_connection): leave one first"),
            ));
        }
        let join = self.conn.join(Join {
            key: room.key(),
            member: Member {
                id: self.conn.id,
                outbox: self.conn.outbox.clone(),
                codec: Codec::Rooms,
                relay: None,
            },
            since: None,
            announces_resync: false,
        });
        self.rooms.insert(room);
        let bus = self.conn.state.bus.clone();
        // Joined first, then announced: the joiner gets its own `user_joined` as the sign
        // that events of the room reach it from now on.
        ctx.wait(
            async move {
                join.await;
                publish_logged(&bus, announce).await;
            }
            .into_actor(self),
        );
    }

    fn leave(&mut self, frame: &ClientFrame, ctx: &mut Context<Self>) {
        let Some(room) = self.room_of(frame) else {
            return;
        };
        let Some(user) = &self.user else { return };
        if !self.rooms.remove(&room) {
            let name = room.to_string();
            return self.push(error_frame(
                Some(&name),
                "not_joined",
                &format!("not in room {name}"),
            ));
        }
        let announce = presence(&room, "user_left", user);
        self.conn.leave(&room.key());
        let bus = self.conn.state.bus.clone();
        ctx.wait(async move { publish_logged(&bus, announce).await }.into_actor(self));
    }

    /// Publishes a `message` to the room's subject, so members on every node get it in
    /// the order this session sent it (`ctx.wait`: the next frame waits for the ack).
    fn send_message(&mut self, frame: ClientFrame, ctx: &mut Context<Self>) {
        let Some(room) = self.room_of(&frame) else {
            return;
        };
        let Some(user) = &self.user else { return };
        let name = room.to_string();
        if !self.rooms.contains(&room) {
            return self.push(error_frame(
                Some(&name),
                "not_joined",
                &format!("join room {name} before sending to it"),
            ));
        }
        let data = match frame.data {
            None | Some(Value::Null) => {
                return self.push(error_frame(
                    Some(&name),
                    "missing_data",
                    "send_message needs \"data\" (the message)",
                ))
            }
            Some(data) => data,
        };
        let message = room_event(&room, "message", data, Some(user));
        let bus = self.conn.state.bus.clone();
        ctx.wait(
            async move { bus.publish(message).await }
                .into_actor(self)
                .map(move |result, act, _| {
                    if let Err(error) = result {
                        tracing::warn!(session = act.conn.id, room = %name, %error, "send_message not published");
                        act.push(error_frame(
                            Some(&name),
                            "unavailable",
                            "the message was not sent: the bus is unavailable; retry",
                        ));
                    }
                }),
        );
    }
}

/// The user id with the JSON type the token gave it: the claim's own value when it is
/// the number (or string) the id was read from, else the id as a string (callout users).
fn typed_user_id(principal: &Principal, user_id: &str, state: &AppState) -> Value {
    match principal.claims.get(&state.settings.auth.jwt.user_claim) {
        Some(Value::Number(n)) if n.to_string() == user_id => Value::Number(n.clone()),
        _ => Value::String(user_id.to_owned()),
    }
}

/// A room event as the bus carries it: the JSON envelope
/// `{"payload": {type, data, sender, sender_id}}` on `herald.v1.room.<prefix>.<id>`; no
/// user (a session closed before its token was checked) gives a null sender.
fn room_event(room: &Room, kind: &str, data: Value, user: Option<&User>) -> BusMessage {
    let (sender, sender_id) = user.map_or((Value::Null, Value::Null), |u| {
        (u.sender.clone(), u.id_value.clone())
    });
    let envelope =
        json!({"payload": {"type": kind, "data": data, "sender": sender, SENDER_ID: sender_id}});
    BusMessage {
        subject: room.subject(),
        payload: serde_json::to_vec(&envelope)
            .expect("a JSON value serialises")
            .into(),
        json: true,
        ..BusMessage::default()
    }
}

/// `user_joined` / `user_left`: `data` is `{user_id, username}`, `sender` the user.
fn presence(room: &Room, kind: &str, user: &User) -> BusMessage {
    room_event(room, kind, user.presence.clone(), Some(user))
}

/// Publishes a presence event; a failure is logged (presence is best effort).
async fn publish_logged(bus: &Bus, message: BusMessage) {
    if let Err(error) = bus.publish(message).await {
        tracing::warn!(%error, "room presence event not published");
    }
}

impl Actor for RoomsSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.authenticate(ctx);
    }

    /// Announces `user_left` in every room still joined (the connection leaves their
    /// registries).
    fn stopped(&mut self, _: &mut Self::Context) {
        let announces: Vec<BusMessage> = self
            .rooms
            .drain()
            .map(|room| match &self.user {
                Some(user) => presence(&room, "user_left", user),
                None => room_event(&room, "user_left", Value::Null, None),
            })
            .collect();
        if !announces.is_empty() {
            let bus = self.conn.state.bus.clone();
            actix_web::rt::spawn(async move {
                for message in announces {
                    publish_logged(&bus, message).await;
                }
            });
        }
    }
}

impl Session for RoomsSession {
    const DIALECT: Dialect = Dialect::Rooms;

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn rate_limited(&mut self, rate: MessageRate) {
        let message =
            format!("too many frames: {rate}; this one was dropped, slow down and resend it");
        self.push(error_frame(None, "rate_limited", &message));
    }

    fn on_data(&mut self, data: Data, ctx: &mut Context<Self>) {
        match data {
            Data::Text(text) => self.on_text(&text, ctx),
            Data::Binary(_) => self.push(error_frame(
                None,
                "bad_frame",
                "frames are JSON text, not binary",
            )),
        }
    }
}
