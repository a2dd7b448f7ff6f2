//! `/v1/ws`: Forward Email's real-time API. Auth happens during the upgrade (Basic alias
//! password, or API token + `?alias_id=`) or, with `?auth=message`, in the first frame.
//! The channel is read-only: notifications flow out as JSON text frames, as msgpackr
//! records in binary frames with `?msgpackr=true` (what Forward Email sends, which
//! msgpackr's default `Decoder` turns into plain objects), or as plain MessagePack maps
//! with `?msgpack=true` (for other languages' decoders).

use std::net::IpAddr;

use crate::websocket::{self, Socket};
use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use herald_protocol::WireFormat;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Credentials;
use crate::dialect::admission::{
    admit, authorization, bearer_credentials, credentials, login_alias, Admitted, AliasLogin,
    AliasPlace, ALIAS_FULL_RETRY_AFTER,
};
use crate::dialect::codec::{self, Codec};
use crate::dialect::connection::{Connection, Data, Session};
use crate::dialect::{Dialect, Refusal};
use crate::limits::Slot;
use crate::metrics;
use crate::outbox::Frame;
use crate::registry::{Join, Member, RoutingKey};
use crate::state::AppState;

/// How a session wants its frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// JSON text frames (the default).
    Json,
    /// `?msgpackr=true`: msgpackr records, as Forward Email sends them.
    Msgpackr,
    /// `?msgpack=true`: plain MessagePack maps, for decoders that know no records.
    MessagePack,
}

impl Format {
    /// The registry codec that encodes this session's notifications.
    fn codec(self) -> Codec {
        match self {
            Format::Json => Codec::V1Json,
            Format::Msgpackr => Codec::V1Msgpackr,
            Format::MessagePack => Codec::V1MsgPack,
        }
    }

    /// A control frame (`connected`, `ping`) in this format.
    fn frame(self, value: &serde_json::Value) -> Option<Frame> {
        match self {
            Format::Json => Frame::encode(WireFormat::Json, value),
            Format::MessagePack => Frame::encode(WireFormat::MessagePack, value),
            Format::Msgpackr => Some(codec::msgpackr_frame(value)),
        }
    }
}

/// The app-level keepalive frame, encoded once per format for every session.
fn ping_frame(format: Format) -> Frame {
    static PING: std::sync::LazyLock<[Frame; 3]> = std::sync::LazyLock::new(|| {
        [Format::Json, Format::Msgpackr, Format::MessagePack].map(|format| {
            format
                .frame(&json!({"event": "ping"}))
                .expect("a constant frame encodes")
        })
    });
    PING[format as usize].clone()
}

/// How the client authenticates.
#[derive(Debug)]
enum AuthMode {
    /// Credentials in the `Authorization` header.
    Header(Credentials),
    /// `?auth=message`: the first frame carries them.
    Frame,
    /// No credentials at all.
    Anonymous,
}

/// What the upgrade request asks for.
#[derive(Debug)]
struct UpgradeRequest {
    auth: AuthMode,
    format: Format,
    /// `?since=<seq>`: replay what was missed after it.
    since: Option<u64>,
}

/// Reads the query and headers, refusing credentials in the query string and
/// contradictory auth modes (SPEC §4.1).
fn parse_request(req: &HttpRequest) -> Result<UpgradeRequest, Refusal> {
    let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect();
    let param = |name: &str| {
        query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    for secret in ["token", "username", "password"] {
        if param(secret).is_some() {
            return Err(Refusal::BadRequest(format!(
                "credentials must not be sent in the query string ({secret}=): use the Authorization header or ?auth=message"
            )));
        }
    }
    let on = |name: &str| matches!(param(name), Some("true" | "1"));
    let format = match (on("msgpackr"), on("msgpack")) {
        (true, true) => {
            return Err(Refusal::BadRequest(
                "?msgpackr=true (msgpackr records) and ?msgpack=true (plain MessagePack maps) are mutually exclusive: ask for one".into(),
            ))
        }
        (true, false) => Format::Msgpackr,
        (false, true) => Format::MessagePack,
        (false, false) => Format::Json,
    };
    let since = param("since")
        .map(|s| {
            s.parse::<u64>().map_err(|_| {
                Refusal::BadRequest(format!(
                    "since={s:?} must be the last seq you received (an integer)"
                ))
            })
        })
        .transpose()?;
    let alias_id = param("alias_id").map(str::to_owned);
    let header = authorization(req, alias_id)?;
    let auth = match (param("auth"), header) {
        (Some("message"), Some(_)) => {
            return Err(Refusal::BadRequest(
                "?auth=message and an Authorization header are mutually exclusive: send one".into(),
            ))
        }
        (Some("message"), None) => AuthMode::Frame,
        (Some(other), _) => {
            return Err(Refusal::BadRequest(format!(
                "auth={other:?} is not supported: the only value is auth=message"
            )))
        }
        (None, Some(credentials)) => AuthMode::Header(credentials),
        (None, None) => AuthMode::Anonymous,
    };
    Ok(UpgradeRequest {
        auth,
        format,
        since,
    })
}

/// `GET /v1/ws`: checks everything that can be checked before the upgrade, then upgrades.
pub async fn upgrade(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let request = parse_request(&req)?;
    let settings = &state.settings;
    let Admitted { ip, node_slot } = admit(&req, &state).await?;
    let phase = match request.auth {
        AuthMode::Header(credentials) => Phase::Ready(
            Box::new(Identity::Alias(
                login_alias(&state, Dialect::ForwardEmail, &credentials, ip).await?,
            )),
            request.since,
        ),
        AuthMode::Frame => {
            let max = state.limits.settings.max_pending_auth_per_ip;
            let slot = state.limits.pending_auth.try_acquire(ip, max).ok_or_else(|| {
                metrics::connection_refused("pending_auth");
                Refusal::TooMany {
                    reason: format!("{max} sessions from this address are already waiting for their auth frame"),
                    retry_after: settings.forwardemail.auth_frame_timeout.as_secs().max(1),
                }
            })?;
            Phase::AwaitingAuth {
                slot,
                since: request.since,
            }
        }
        AuthMode::Anonymous => {
            if !settings.forwardemail.allow_anonymous {
                metrics::auth_failure(Dialect::ForwardEmail);
                return Err(Refusal::Unauthorized(
                    "credentials required: Authorization: Basic, or ?auth=message".into(),
                )
                .into());
            }
            let max = state.limits.settings.max_anonymous_per_ip;
            let slot = state.limits.anonymous.try_acquire(ip, max).ok_or_else(|| {
                metrics::connection_refused("anonymous");
                Refusal::TooMany {
                    reason: format!("{max} anonymous sessions from this address already"),
                    retry_after: ALIAS_FULL_RETRY_AFTER,
                }
            })?;
            Phase::Ready(Box::new(Identity::Anonymous { _slot: slot }), request.since)
        }
    };
    let max_frame = state.limits.settings.max_client_frame_bytes;
    let (handshake, socket) = websocket::accept(&req, &[], max_frame)?;
    ForwardEmailSession::start_with(state.into_inner(), request.format, phase, node_slot, socket);
    Ok(handshake.respond())
}

/// Who a live session is.
enum Identity {
    /// An authenticated alias, holding its place under the alias cap.
    Alias(AliasLogin),
    /// A broadcast-only session, holding its place under the per-address cap.
    Anonymous { _slot: Slot<IpAddr> },
}

/// What a live session keeps of its identity: only its place under the cap it counts
/// against (freed on drop). The credentials are let go once the revocation check has
/// what it needs: an idle session is mostly what it still holds.
enum Place {
    /// Under the alias's session cap.
    Alias { _place: AliasPlace },
    /// Under the per-address cap of broadcast-only sessions.
    Anonymous { _slot: Slot<IpAddr> },
}

/// Where a session is in its life. What is needed only until the session is live (its
/// address, `?since=`) is kept here, not beside it: an idle session is what it still holds.
enum Phase {
    /// `?auth=message`: waiting for the first frame (holding a pending-auth slot, whose
    /// key is the client's address).
    AwaitingAuth {
        slot: Slot<IpAddr>,
        /// `?since=`: what the registries replay before going live.
        since: Option<u64>,
    },
    /// The auth frame arrived and is being checked; later frames are ignored.
    Authenticating,
    /// Authenticated (or anonymous) at the upgrade: goes live once the actor starts, with
    /// its `?since=`. Boxed: the phase is inline in every session, and the identity is
    /// its largest part.
    Ready(Box<Identity>, Option<u64>),
    /// Receiving notifications.
    Live { _place: Place },
}

/// The first frame of an `?auth=message` session.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFrame {
    event: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// A bearer JWT instead of username/password (browsers cannot set `Authorization`).
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    alias_id: Option<String>,
}

/// One `/v1/ws` session.
pub struct ForwardEmailSession {
    conn: Connection,
    format: Format,
    phase: Phase,
}

impl ForwardEmailSession {
    /// Starts the session; the connection writes the returned outbox (opened once the
    /// session is live: frames queue until then).
    fn start_with(
        state: std::sync::Arc<AppState>,
        format: Format,
        phase: Phase,
        node_slot: Slot<()>,
        socket: Socket,
    ) {
        let ping_interval = state.settings.forwardemail.ping_interval;
        Connection::start(state, socket, node_slot, ping_interval, |conn, _| {
            ForwardEmailSession {
                conn,
                format,
                phase,
            }
        })
    }

    /// Sends `connected`, joins the registries, then starts writing: frames the registries
    /// queue meanwhile wait behind `connected`, and nothing published after it is missed.
    fn go_live(&mut self, identity: Identity, since: Option<u64>, ctx: &mut Context<Self>) {
        let (connected, keys) = match &identity {
            Identity::Alias(AliasLogin { alias_id, .. }) => (
                json!({"event": "connected", "aliasId": alias_id}),
                vec![RoutingKey::Alias(alias_id.clone()), RoutingKey::Broadcast],
            ),
            Identity::Anonymous { .. } => (
                json!({"event": "connected", "broadcastOnly": true}),
                vec![RoutingKey::Broadcast],
            ),
        };
        let place = match identity {
            Identity::Alias(AliasLogin {
                principal,
                mut place,
                ..
            }) => {
                self.conn.watch_revocations(&principal);
                if let Some(reclaimed) = place.reclaimed() {
                    self.conn.watch_reclaim(reclaimed, ctx);
                }
                Place::Alias { _place: place }
            }
            Identity::Anonymous { _slot } => Place::Anonymous { _slot },
        };
        self.phase = Phase::Live { _place: place };
        if let Some(frame) = self.format.frame(&connected) {
            let _ = self.conn.outbox.push(frame);
        }
        let member = Member {
            id: self.conn.id,
            outbox: self.conn.outbox.clone(),
            codec: self.format.codec(),
            relay: None,
        };
        let joins = keys
            .into_iter()
            .enumerate()
            .map(|(i, key)| {
                self.conn.join(Join {
                    key,
                    member: member.clone(),
                    since,
                    announces_resync: i == 0,
                })
            })
            .collect::<Vec<_>>();
        let joins = async move { join_all(joins).await };
        ctx.wait(
            joins
                .into_actor(self)
                .map(|_, act, _| act.conn.outbox.open()),
        );
    }

    fn on_auth_frame(&mut self, text: &str, ctx: &mut Context<Self>) {
        let frame = serde_json::from_str::<AuthFrame>(text)
            .ok()
            .filter(|frame| frame.event == "auth");
        let credentials = match frame {
            Some(AuthFrame {
                username: Some(username),
                password: Some(password),
                token: None,
                alias_id,
                ..
            }) => credentials(&username, &password, alias_id),
            Some(AuthFrame {
                username: None,
                password: None,
                token: Some(token),
                alias_id,
                ..
            }) => bearer_credentials(&token, alias_id),
            _ => return self.conn.close(
                4400,
                "first frame must be {\"event\":\"auth\",\"username\",\"password\"[,\"alias_id\"]} or {\"event\":\"auth\",\"token\":\"<JWT>\"[,\"alias_id\"]}",
                ctx,
            ),
        };
        let credentials = match credentials {
            Ok(c) => c,
            Err(refusal) => {
                return self
                    .conn
                    .close(refusal.close_code(), &refusal.to_string(), ctx)
            }
        };
        let Phase::AwaitingAuth { slot, since } = &self.phase else {
            return;
        };
        let (ip, since) = (*slot.key(), *since);
        self.phase = Phase::Authenticating;
        let state = std::sync::Arc::clone(&self.conn.state);
        let check = async move {
            Ok::<_, Refusal>(Identity::Alias(
                login_alias(&state, Dialect::ForwardEmail, &credentials, ip).await?,
            ))
        };
        ctx.wait(check.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(identity) => act.go_live(identity, since, ctx),
                Err(refusal) => act
                    .conn
                    .close(refusal.close_code(), &refusal.to_string(), ctx),
            }
        }));
    }
}

impl Actor for ForwardEmailSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        match std::mem::replace(&mut self.phase, Phase::Authenticating) {
            Phase::Ready(identity, since) => self.go_live(*identity, since, ctx),
            other => {
                self.phase = other;
                let timeout = self.conn.state.settings.forwardemail.auth_frame_timeout;
                ctx.run_later(timeout, |act, ctx| {
                    if matches!(act.phase, Phase::AwaitingAuth { .. }) {
                        act.conn.close(4408, "no auth frame in time", ctx);
                    }
                });
            }
        }
    }
}

impl Session for ForwardEmailSession {
    const DIALECT: Dialect = Dialect::ForwardEmail;

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Only the auth frame of an `?auth=message` session is read: the channel is
    /// read-only.
    fn on_data(&mut self, data: Data, ctx: &mut Context<Self>) {
        if !matches!(self.phase, Phase::AwaitingAuth { .. }) {
            return;
        }
        match data {
            Data::Text(text) => self.on_auth_frame(&text, ctx),
            Data::Binary(_) => {
                self.conn
                    .close(4400, "the auth frame must be a JSON text frame", ctx)
            }
        }
    }

    /// Live sessions only: an app-level `ping` event follows the protocol ping, for
    /// clients whose WebSocket API hides protocol pings.
    fn keepalive(&mut self, ctx: &mut Context<Self>) {
        if matches!(self.phase, Phase::Live { .. }) && self.conn.keepalive(ctx) {
            let _ = self.conn.outbox.push(ping_frame(self.format));
        }
    }
}
#[cfg(test)]
mod tests {
    use actix::dev::ContextFut;
    use actix::Context;

    use super::ForwardEmailSession;

    #[test]
    fn an_idle_session_task_fits_in_640_bytes() {
        // tokio rounds a task's cell up to 128 bytes (cache-line padding), and an actor's
        // task is its `ContextFut`: 536 bytes or less make a 640-byte cell, 8 more a
        // 768-byte one, on every idle `/v1/ws` session (docs/performance.md).
        let size =
            std::mem::size_of::<ContextFut<ForwardEmailSession, Context<ForwardEmailSession>>>();
        assert!(
            size <= 536,
            "a /v1/ws session's task future is {size} bytes"
        );
    }
}
