//! One `/ws` session: the actor, its welcome, presence and token expiry; its commands
//! are in [`super::commands`].

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde_json::{json, Value};

use super::frames::{error, frame, now_secs};
use super::node::PresenceLease;
use super::upgrade::permissions;
use crate::auth::Principal;
use crate::dialect::codec::Codec;
use crate::dialect::connection::{self, Connection, Data, MessageRate, Session};
use crate::dialect::Dialect;
use crate::limits::Slot;
use crate::outbox::Frame;
use crate::registry::{Join, Member, RoutingKey};
use crate::state::AppState;
use crate::websocket::Socket;
use herald_protocol::now_ms;

/// The `/ws` protocol version announced in the welcome.
const PROTOCOL_VERSION: &str = "1.0";
/// What the welcome says this server does.
const FEATURES: [&str; 4] = ["broadcast", "direct_message", "presence", "history"];
/// Close code at JWT expiry.
const TOKEN_EXPIRED: u16 = 4401;

/// One `/ws` session.
pub struct RealtimeSession {
    pub(super) conn: Connection,
    /// Cluster-unique id shown to clients (`connection_id`, `delivered_to`).
    pub(super) connection_id: String,
    pub(super) ip: IpAddr,
    pub(super) user_id: String,
    pub(super) principal: Principal,
    /// Patterns this session may subscribe to / broadcast on.
    pub(super) may_subscribe: Vec<String>,
    pub(super) may_publish: Vec<String>,
    /// Topic patterns joined (each a registry membership of the connection).
    pub(super) topics: BTreeSet<String>,
    /// Presence lease, released when the session stops.
    pub(super) presence: Option<PresenceLease>,
}

impl RealtimeSession {
    /// Starts the session; the connection writes the returned outbox.
    pub(super) fn start_with(
        state: Arc<AppState>,
        (ip, user_id, principal): (IpAddr, String, Principal),
        node_slot: Slot<()>,
        socket: Socket,
    ) {
        let rt = &state.settings.realtime;
        let rate = MessageRate::new("realtime", rt.messages_per_second, rt.burst);
        let may_subscribe = permissions(&principal, "subscribe", &rt.default_subscribe);
        let may_publish = permissions(&principal, "publish", &rt.default_publish);
        let ping_interval = rt.ping_interval;
        Connection::start(state, socket, node_slot, ping_interval, |mut conn, _| {
            conn.limit_rate(rate);
            RealtimeSession {
                connection_id: conn.state.realtime.connection_id(conn.id),
                conn,
                may_subscribe,
                may_publish,
                ip,
                user_id,
                principal,
                topics: BTreeSet::new(),
                presence: None,
            }
        })
    }

    /// This session as a registry member.
    pub(super) fn member(&self) -> Member {
        Member {
            id: self.conn.id,
            outbox: self.conn.outbox.clone(),
            codec: Codec::Realtime,
            relay: None,
        }
    }

    /// Queues a frame (a refused one means the session is closing already).
    pub(super) fn send(&self, frame: Frame) {
        let _ = self.conn.outbox.push(frame);
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
        let state = Arc::clone(&self.conn.state);
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
        self.conn.track(RoutingKey::User(self.user_id.clone()));
        ctx.wait(setup.into_actor(self).map(|lease, act, _| {
            act.presence = Some(lease);
            act.conn.outbox.open();
        }));
    }

    /// Schedules `AuthStatus token_expiring` ahead of the JWT's `exp` and the 4401 close at it.
    fn watch_expiry(&mut self, ctx: &mut Context<Self>) {
        let Some(exp) = self.principal.claims.get("exp").and_then(Value::as_u64) else {
            return;
        };
        let exp_ms = exp.saturating_mul(1000);
        let now = now_ms();
        let lead = self
            .conn
            .state
            .settings
            .realtime
            .token_expiry_warning
            .as_millis() as u64;
        let warn_in = Duration::from_millis(exp_ms.saturating_sub(lead).saturating_sub(now));
        connection::later(ctx, warn_in, move |act, _| {
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
        self.conn.close_after(
            Duration::from_millis(exp_ms.saturating_sub(now)),
            TOKEN_EXPIRED,
            "token expired; reconnect with a fresh token",
            ctx,
        );
    }
}

impl Actor for RealtimeSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.conn.watch_revocations(&self.principal);
        self.watch_expiry(ctx);
        self.go_live(ctx);
    }

    /// Releases the presence lease: the last session of a user announces it offline.
    fn stopped(&mut self, _: &mut Self::Context) {
        if let Some(lease) = self.presence.take() {
            let state = Arc::clone(&self.conn.state);
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
        tracing::debug!(session = self.conn.id, ip = %self.ip, "/ws session closed");
    }
}

impl Session for RealtimeSession {
    const DIALECT: Dialect = Dialect::Realtime;

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn rate_limited(&mut self, rate: MessageRate) {
        let retry_after = json!({"retry_after_ms": rate.retry_after_ms()});
        self.send(error(
            429,
            format!("too many messages: {rate}; slow down"),
            retry_after,
            None,
        ));
    }

    fn on_data(&mut self, data: Data, ctx: &mut Context<Self>) {
        match data {
            Data::Text(text) => self.on_text(&text, ctx),
            Data::Binary(bytes) => self.on_binary(&bytes),
        }
    }
}
