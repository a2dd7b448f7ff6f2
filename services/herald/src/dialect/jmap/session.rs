//! One `/jmap/ws` session: the upgrade (subprotocol `jmap`, Basic or Bearer), the push
//! state of its account, coalescing, and the answers to client frames.
//!
//! The session is a member of its alias's registry from the start, relayed each change as
//! the data types it touched with the event's stream sequence. The sequence is the same on
//! every node, so it is both the state string of each type (the last sequence that changed
//! it) and the `pushState` (the last sequence seen): a client that enables push with an
//! old `pushState` — on any node — rejoins with `since`, and the replayed changes coalesce
//! into one StateChange.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::websocket::{self, Socket};
use actix::prelude::*;
use actix_web::http::header::SEC_WEBSOCKET_PROTOCOL;
use actix_web::{web, HttpRequest, HttpResponse};
use bytestring::ByteString;
use serde_json::{json, Map, Value};

use super::request::{self, ClientFrame};
use super::DataType;
use crate::dialect::admission::{admit, authorization, login_alias, Admitted, AliasLogin};
use crate::dialect::codec::Codec;
use crate::dialect::connection::{Connection, Data, Session};
use crate::dialect::{Dialect, Refusal};
use crate::limits::Slot;
use crate::metrics;
use crate::outbox::Frame;
use crate::registry::{Join, Member, Relayed, RoutingKey};
use crate::state::AppState;

/// Whether the client offered the `jmap` subprotocol (RFC 8887 §3).
fn offers_jmap(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "jmap")
}

/// `GET /jmap/ws`: subprotocol, limits and credentials are checked before the upgrade.
pub async fn upgrade(
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    if !offers_jmap(&req) {
        return Err(Refusal::BadRequest(
            "the jmap subprotocol is required: send Sec-WebSocket-Protocol: jmap (RFC 8887)".into(),
        )
        .into());
    }
    let Admitted { ip, node_slot } = admit(&req, &state).await?;
    let alias_id = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "alias_id")
        .map(|(_, v)| v.into_owned());
    let credentials = authorization(&req, alias_id)?.ok_or_else(|| {
        metrics::auth_failure(Dialect::Jmap);
        Refusal::Unauthorized(
            "credentials required: Authorization: Basic base64(alias:password) or Bearer <JWT>"
                .into(),
        )
    })?;
    let login = login_alias(&state, Dialect::Jmap, &credentials, ip).await?;
    let max_frame = state.settings.jmap.max_frame_bytes;
    let (handshake, socket) = websocket::accept(&req, &["jmap"], max_frame)?;
    JmapSession::start_with(state.into_inner(), login, node_slot, socket);
    Ok(handshake.respond())
}

/// One `/jmap/ws` session.
pub struct JmapSession {
    conn: Connection,
    login: AliasLogin,
    /// While push is enabled: the types pushed (`None`: every type).
    push: Option<Option<BTreeSet<DataType>>>,
    /// The last sequence that changed each type: its state string.
    states: BTreeMap<DataType, u64>,
    /// Pushed types changed since the last StateChange.
    pending: BTreeSet<DataType>,
    /// Whether a StateChange is scheduled for the end of the coalescing window.
    flush_scheduled: bool,
    /// Highest sequence seen: the `pushState`.
    seen: u64,
    /// Changes at or below this were covered by the client's `pushState`.
    floor: u64,
}

impl JmapSession {
    /// Starts the session; the connection writes the returned outbox.
    fn start_with(state: Arc<AppState>, login: AliasLogin, node_slot: Slot<()>, socket: Socket) {
        let ping_interval = state.settings.jmap.ping_interval;
        Connection::start(state, socket, node_slot, ping_interval, |conn, _| {
            conn.outbox.open();
            JmapSession {
                conn,
                login,
                push: None,
                states: BTreeMap::new(),
                pending: BTreeSet::new(),
                flush_scheduled: false,
                seen: 0,
                floor: 0,
            }
        })
    }

    fn key(&self) -> RoutingKey {
        RoutingKey::Alias(self.login.alias_id.clone())
    }

    /// Joins the alias's registry, replaying changes after `since`; frames are handled
    /// only once the join is in place.
    fn join(&mut self, since: Option<u64>, ctx: &mut Context<Self>) {
        let key = self.key();
        self.conn.leave(&key);
        let join = self.conn.join(Join {
            key,
            member: Member {
                id: self.conn.id,
                outbox: self.conn.outbox.clone(),
                codec: Codec::Jmap,
                relay: Some(ctx.address().recipient()),
            },
            since,
            announces_resync: true,
        });
        ctx.wait(join.into_actor(self));
    }

    fn send(&self, value: &Value) {
        let _ = self
            .conn
            .outbox
            .push(Frame::Text(ByteString::from(value.to_string())));
    }

    fn pushed(&self, kind: DataType) -> bool {
        matches!(&self.push, Some(types) if types.as_ref().is_none_or(|t| t.contains(&kind)))
    }

    /// Records that `types` changed at `seq`; when `report`, pushed ones go out at the end
    /// of the coalescing window.
    fn changed(&mut self, types: &[DataType], seq: u64, report: bool, ctx: &mut Context<Self>) {
        self.seen = self.seen.max(seq);
        for &kind in types {
            let state = self.states.entry(kind).or_default();
            *state = (*state).max(seq);
            if report && self.pushed(kind) {
                self.pending.insert(kind);
            }
        }
        if !self.pending.is_empty() && !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.run_later(self.conn.state.settings.jmap.coalesce_window, |act, _| {
                act.flush_scheduled = false;
                act.flush();
            });
        }
    }

    /// Pushes one StateChange for every pending type.
    fn flush(&mut self) {
        if self.pending.is_empty() || self.push.is_none() {
            return;
        }
        let types: Map<String, Value> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|kind| {
                let state = self.states.get(&kind).copied().unwrap_or(self.seen);
                (format!("{kind:?}"), Value::String(state.to_string()))
            })
            .collect();
        self.send(&json!({
            "@type": "StateChange",
            "changed": {self.login.alias_id.clone(): types},
            "pushState": self.seen.to_string(),
        }));
    }

    /// The client's `pushState` is older than retention (or not one of ours): report every
    /// pushed type as changed, at the stream's newest sequence.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        let bus = self.conn.state.bus.clone();
        ctx.spawn(
            async move { bus.last_sequence().await.ok().flatten() }
                .into_actor(self)
                .map(|last, act, ctx| {
                    let seq = last.unwrap_or_default().max(act.seen).max(act.floor);
                    act.changed(&DataType::ALL, seq, true, ctx);
                }),
        );
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        match request::parse(text, self.conn.state.settings.jmap.max_calls_in_request) {
            ClientFrame::Reply(reply) => self.send(&reply),
            ClientFrame::Enable { types, push_state } => {
                self.push = Some(types.map(|t| t.into_iter().collect()));
                self.pending.clear();
                match push_state.map(|s| s.parse::<u64>()) {
                    None => {}
                    Some(Ok(since)) => {
                        self.floor = since;
                        self.seen = self.seen.max(since);
                        self.join(Some(since), ctx);
                    }
                    Some(Err(_)) => self.resync(ctx),
                }
            }
            ClientFrame::Disable => {
                self.push = None;
                self.pending.clear();
            }
        }
    }
}

impl Actor for JmapSession {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.conn.watch_revocations(&self.login.principal);
        if let Some(reclaimed) = self.login.place.reclaimed() {
            self.conn.watch_reclaim(reclaimed, ctx);
        }
        self.join(None, ctx);
    }
}

/// A change (or resync) from the alias's registry; its budget charge is given back when
/// the message drops at the end of the handler.
impl Handler<Relayed> for JmapSession {
    type Result = ();

    fn handle(&mut self, relayed: Relayed, ctx: &mut Self::Context) {
        match relayed {
            Relayed::Resync { .. } => self.resync(ctx),
            Relayed::Change { event, seq, .. } => {
                let seq = seq.unwrap_or(self.seen + 1);
                // Changes the client's pushState already covered are not news to it.
                let report = seq > self.floor;
                self.changed(DataType::changed_by(event), seq, report, ctx);
            }
        }
    }
}

impl Session for JmapSession {
    const DIALECT: Dialect = Dialect::Jmap;

    fn conn(&mut self) -> &mut Connection {
        &mut self.conn
    }

    fn on_data(&mut self, data: Data, ctx: &mut Context<Self>) {
        match data {
            Data::Text(text) => self.on_text(&text, ctx),
            Data::Binary(_) => self.send(&request::request_error(
                "notJSON",
                "JMAP frames are JSON text frames, not binary (RFC 8887 §4)",
                None,
            )),
        }
    }

    fn overflow_notice(&self) -> Option<Frame> {
        let max = self.conn.state.settings.jmap.max_frame_bytes;
        Some(Frame::Text(ByteString::from(
            request::too_big(max).to_string(),
        )))
    }
}
