//! The `/ws` client commands: `Ping`, `Subscribe`, `Unsubscribe`, `Broadcast`,
//! `DirectMessage`, `X-` custom requests and binary frames.

use std::collections::BTreeSet;
use std::sync::Arc;

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::future::join_all;
use herald_protocol::subject::{validate_identifier, validate_topic};
use serde_json::{json, Value};
use sha2::Digest;

use super::frames::{error, frame, hex, now_secs, parse_binary, ClientFrame};
use super::session::RealtimeSession;
use super::{covers, validate_pattern};
use crate::bus::{BusMessage, RequestError};
use crate::outbox::Frame;
use crate::registry::{Join, RoutingKey};
use herald_protocol::now_ms;

/// Topics the server publishes Presence on; clients may subscribe, never broadcast.
const PRESENCE_PREFIX: &str = "presence.";

impl RealtimeSession {
    /// A JSON command.
    pub(super) fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        let max = self.conn.state.settings.realtime.max_message_bytes;
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
        let max = self.conn.state.settings.realtime.max_subscriptions;
        if self.topics.len() + new.len() > max {
            return self.send(error(
                429,
                format!("a connection may hold at most {max} subscriptions (realtime.max_subscriptions): unsubscribe first"),
                json!({"active_subscriptions": self.topics.len(), "max": max}),
                id.as_ref(),
            ));
        }
        self.topics.extend(new.iter().cloned());
        let member = self.member();
        let joins = new
            .into_iter()
            .map(|topic| {
                self.conn.join(Join {
                    key: RoutingKey::Topic(topic),
                    member: member.clone(),
                    since,
                    announces_resync: true,
                })
            })
            .collect::<Vec<_>>();
        let joins = join_all(joins);
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
                self.conn.leave(&RoutingKey::Topic(topic.clone()));
            }
        }
        self.answer_status(
            "unsubscribed",
            topics,
            self.topics.len(),
            request.id.as_ref(),
        );
    }

    /// A new message's stored id, and the metadata stored with it: its public id (the
    /// client's request id when it gave one), when and by whom it was sent.
    fn new_message(&self, request: &ClientFrame) -> (String, Value) {
        let message_id = uuid::Uuid::new_v4().to_string();
        let public_id = request
            .id
            .clone()
            .unwrap_or_else(|| message_id.clone().into());
        let sender = json!({
            "user_id": self.user_id,
            "username": self.principal.username,
            "connection_id": self.connection_id,
        });
        let metadata = json!({"message_id": public_id, "sent_at": now_secs(), "sender": sender});
        (message_id, metadata)
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
        let (message_id, metadata) = self.new_message(request);
        let payload = json!({
            "type": "Broadcast",
            "data": {
                "topic": topic,
                "payload": request.data.get("payload").cloned().unwrap_or(Value::Null),
                "metadata": metadata,
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
        let (message_id, metadata) = self.new_message(request);
        let public_id = metadata["message_id"].clone();
        let payload = json!({
            "type": "DirectMessage",
            "data": {
                "from_user": self.user_id,
                "target_user": target,
                "payload": request.data.get("payload").cloned().unwrap_or(Value::Null),
                "metadata": metadata,
            },
        });
        let subject = format!("herald.v1.user.{target}");
        let target = target.to_owned();
        let state = Arc::clone(&self.conn.state);
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
        let state = Arc::clone(&self.conn.state);
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
            let outbox = act.conn.outbox.clone();
            ctx.spawn(work.into_actor(act).map(move |frame, _, _| {
                let _ = outbox.push(frame);
            }));
        }));
    }

    /// `X-<name>`: a request on `herald.v1.custom.X-<name>`; the reply goes back.
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
        let bus = self.conn.state.bus.clone();
        let subject = format!("herald.v1.custom.{}", request.kind);
        let body = json!({
            "type": request.kind,
            "data": request.data,
            "id": request.id,
            "user_id": self.user_id,
            "username": self.principal.username,
            "connection_id": self.connection_id,
        });
        let timeout = self.conn.state.settings.realtime.custom_timeout;
        let kind = request.kind;
        let work = async move {
            let reply = bus
                .request(subject.clone(), body.to_string().into(), timeout)
                .await;
            let refused = |message: String| error(503, message, json!({"type": kind}), id.as_ref());
            match reply {
                Ok(payload) => {
                    let data = serde_json::from_slice::<Value>(&payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&payload).into_owned())
                    });
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
                Err(RequestError::InProcess) => refused(
                    "custom X- types need a NATS responder; this node runs on the in-process bus (bus.kind = \"memory\")".into(),
                ),
                Err(RequestError::NoResponders) => refused(format!(
                    "no service answers {kind} (nothing subscribed to {subject})"
                )),
                Err(RequestError::Failed(e)) => refused(format!("{kind} request failed: {e}")),
                Err(RequestError::TimedOut) => refused(format!(
                    "the {kind} service did not answer within {timeout:?} (realtime.custom_timeout)"
                )),
            }
        };
        let outbox = self.conn.outbox.clone();
        ctx.spawn(work.into_actor(self).map(move |frame, _, _| {
            let _ = outbox.push(frame);
        }));
    }

    /// `[1 B type][4 B big-endian length][payload]`: acknowledged with `Status
    /// binary_received` and, in `details` as document 003 nests them, the payload's size,
    /// the type's name and its SHA-256.
    pub(super) fn on_binary(&mut self, bytes: &Bytes) {
        let max = self.conn.state.settings.realtime.max_message_bytes;
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
