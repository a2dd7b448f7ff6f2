//! `POST /v1/publish`: publish one event with a publish token, for backends that would
//! rather speak HTTP than NATS (and for `herald publish` in embedded mode); and
//! `POST /v1/revoke`, the one way the same token reaches a control subject.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use futures_util::StreamExt;
use herald_protocol::{Envelope, Subject};
use herald_telemetry::propagation;
use serde_json::{json, Value};
use tracing::Instrument;

use crate::bus::{BusError, BusMessage};
use crate::state::AppState;

/// Why a publish was refused.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Missing or unknown publish token.
    #[error(
        "missing or invalid publish token: send Authorization: Bearer <one of auth.publish_tokens>"
    )]
    Unauthorized,
    /// The body is not a valid envelope.
    #[error("{0}")]
    BadRequest(String),
    /// The body is larger than the node accepts.
    #[error("the body is larger than {limit} bytes, the most this endpoint takes (/v1/publish: limits.max_notification_bytes plus {ENVELOPE_OVERHEAD} bytes of envelope): send a smaller one")]
    TooLarge {
        /// The largest body accepted, in bytes.
        limit: usize,
    },
    /// The body did not arrive within `limits.publish_body_timeout`.
    #[error(
        "the body did not arrive within {0:?} (limits.publish_body_timeout): send it in one go"
    )]
    BodyTimeout(std::time::Duration),
    /// The connection failed while the body was read.
    #[error("cannot read the body: {0}")]
    Body(String),
    /// The envelope names no subject it may be published on.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The bus refused it.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ResponseError for PublishError {
    fn status_code(&self) -> StatusCode {
        match self {
            PublishError::Unauthorized => StatusCode::UNAUTHORIZED,
            PublishError::BadRequest(_) | PublishError::Body(_) | PublishError::Subject(_) => {
                StatusCode::BAD_REQUEST
            }
            PublishError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            PublishError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(self.body())
    }
}

impl PublishError {
    /// The JSON answer: the reason, and the limit for a 413.
    fn body(&self) -> Value {
        match self {
            PublishError::TooLarge { limit } => {
                json!({ "error": self.to_string(), "limit": limit })
            }
            _ => json!({ "error": self.to_string() }),
        }
    }

    /// The answer to a request whose body was not read (or not all of it), closing the
    /// connection: actix drains an unread chunked body to reuse the connection, which
    /// would let a refused client stream for ever. The response body holds the request
    /// body unread until it is sent, and actix closes instead of draining.
    fn refuse(&self, unread: web::Payload) -> HttpResponse {
        let text = serde_json::to_vec(&self.body()).unwrap_or_default();
        HttpResponse::build(self.status_code())
            .content_type("application/json")
            .force_close()
            .body(Refusal {
                body: Some(text.into()),
                _unread: unread,
            })
    }
}

/// A response body that keeps the request's unread payload alive until it is sent.
struct Refusal {
    body: Option<web::Bytes>,
    _unread: web::Payload,
}

impl actix_web::body::MessageBody for Refusal {
    type Error = std::convert::Infallible;

    fn size(&self) -> actix_web::body::BodySize {
        actix_web::body::BodySize::Sized(self.body.as_ref().map_or(0, |b| b.len() as u64))
    }

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        std::task::Poll::Ready(self.get_mut().body.take().map(Ok))
    }
}

/// Bytes a publish body may carry beyond `limits.max_notification_bytes`: the envelope
/// (`aliasId`, `subject`) and JSON's escaping of a notification that is itself at the limit.
pub const ENVELOPE_OVERHEAD: usize = 64 * 1024;

/// The token from `Authorization: Bearer`, if it is one of `auth.publish_tokens`.
fn authorized(req: &HttpRequest, state: &AppState) -> Result<(), PublishError> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(PublishError::Unauthorized)?;
    if crate::auth::token_in(&state.settings.auth.publish_tokens, token) {
        Ok(())
    } else {
        Err(PublishError::Unauthorized)
    }
}

/// Checks the token, then reads the body, refusing it as soon as it (or its declared
/// length) passes `limit` and when it has not arrived within `deadline`, so a publisher
/// cannot hold a connection or a buffer open. A refusal closes the connection.
async fn receive(
    req: &HttpRequest,
    mut payload: web::Payload,
    state: &AppState,
    limit: usize,
) -> Result<web::Bytes, HttpResponse> {
    // The token comes first: an unauthenticated client gets 401 without a byte of its
    // body being read.
    if let Err(error) = authorized(req, state) {
        return Err(error.refuse(payload));
    }
    let declared = req
        .headers()
        .get(actix_web::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(PublishError::TooLarge { limit }.refuse(payload));
    }
    let deadline = state.settings.limits.publish_body_timeout;
    let read = async {
        let mut body = web::BytesMut::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| PublishError::Body(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(PublishError::TooLarge { limit });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(body)) => Ok(body),
        Ok(Err(error)) => Err(error.refuse(payload)),
        Err(_) => Err(PublishError::BodyTimeout(deadline).refuse(payload)),
    }
}

/// The subjects `POST /v1/publish` (and `herald publish`) may publish on.
pub const EVENT_SUBJECTS: &str = "herald.v1.alias.<aliasId>.<event>, herald.v1.broadcast.<event>, herald.v1.topic.<topic>, herald.v1.user.<userId> or herald.v1.room.<prefix>.<id>";

/// Why an envelope has no subject it may be published on.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// `payload.event` is not a catalog event.
    #[error(transparent)]
    Event(#[from] herald_protocol::EnvelopeError),
    /// The subject (or an id in it) is malformed.
    #[error(transparent)]
    Subject(#[from] herald_protocol::SubjectError),
    /// A control, auth or custom subject.
    #[error("subject {0:?} is not an event subject: /v1/publish accepts only {EVENT_SUBJECTS}")]
    NotAnEvent(String),
    /// A per-alias event without its alias.
    #[error("{0} is a per-alias event: set \"aliasId\" (or \"subject\")")]
    NeedsAlias(herald_protocol::Event),
    /// Neither a subject nor an event.
    #[error("payload.event is required (e.g. \"newMessage\")")]
    NoEvent,
}

/// Resolves the subject an envelope is published on, validating ids and event names.
pub fn subject_for(envelope: &Envelope) -> Result<Subject, SubjectError> {
    let event = envelope.event()?;
    match (&envelope.subject, &envelope.alias_id, event) {
        (Some(subject), _, _) => {
            let parsed = Subject::parse(subject)?;
            match parsed {
                Subject::Alias { .. }
                | Subject::Broadcast(_)
                | Subject::Topic(_)
                | Subject::User(_)
                | Subject::Room { .. } => Ok(parsed),
                // Control, auth and custom subjects drive the nodes themselves: a
                // publish token must not revoke sessions or answer auth requests.
                Subject::ControlRevoke | Subject::AuthRequest | Subject::Custom(_) => {
                    Err(SubjectError::NotAnEvent(subject.clone()))
                }
            }
        }
        (None, _, Some(event)) if event.is_broadcast() => Ok(Subject::Broadcast(event)),
        (None, Some(alias_id), Some(event)) => Ok(Subject::alias(alias_id, event)?),
        (None, None, Some(event)) => Err(SubjectError::NeedsAlias(event)),
        (None, _, None) => Err(SubjectError::NoEvent),
    }
}

/// `POST /v1/publish`.
pub async fn publish(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PublishError> {
    let limit = state.settings.limits.max_notification_bytes + ENVELOPE_OVERHEAD;
    let body = match receive(&req, payload, &state, limit).await {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let mut envelope =
        Envelope::decode(&body, true).map_err(|e| PublishError::BadRequest(e.to_string()))?;
    let subject = subject_for(&envelope)?;
    if let Subject::Alias { event, .. } | Subject::Broadcast(event) = &subject {
        if envelope.event().ok().flatten().is_none() {
            envelope
                .payload
                .insert("event".into(), Value::from(event.as_str()));
        }
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let msg_id = header("idempotency-key").or_else(|| header("nats-msg-id"));
    // Fix the id here so every node and session sees the same one; a retry with the
    // same idempotency key gets the same id as the original.
    let notification_id = match envelope.payload.get("notificationId") {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        _ => {
            let id = match &msg_id {
                Some(key) => {
                    herald_protocol::notification::derive_notification_id("", Some(key), None, b"")
                }
                None => uuid::Uuid::new_v4().to_string(),
            };
            envelope
                .payload
                .insert("notificationId".into(), Value::from(id.clone()));
            id
        }
    };
    // `herald.publish`, child of the caller's traceparent, becomes the parent the nodes see.
    let (mut traceparent, mut tracestate) = (header("traceparent"), header("tracestate"));
    let span = tracing::info_span!(
        "herald.publish",
        otel.kind = "producer",
        subject = %subject,
    );
    if herald_telemetry::tracing_enabled() {
        propagation::set_parent(
            &span,
            propagation::extract(traceparent.as_deref(), tracestate.as_deref()),
        );
        if let Some((tp, ts)) = propagation::inject(&propagation::context_of(&span)) {
            (traceparent, tracestate) = (Some(tp), ts);
        }
    }
    let message = BusMessage {
        subject: subject.to_string(),
        payload: envelope.to_msgpack().into(),
        json: false,
        msg_id,
        traceparent,
        tracestate,
        seq: None,
        stored_ms: None,
        prev_seq: None,
    };
    let ack = state.bus.publish(message).instrument(span).await?;
    Ok(HttpResponse::Accepted().json(
        json!({ "notificationId": notification_id, "seq": ack.seq, "duplicate": ack.duplicate }),
    ))
}

/// Largest `POST /v1/revoke` body: one id or token.
const REVOKE_MAX_BYTES: usize = 8 * 1024;

/// `POST /v1/revoke`: publishes one revocation (`{"aliasId"}`, `{"token"}` or
/// `{"userId"}`) on `herald.v1.control.revoke` with a publish token, the route a node
/// without NATS offers now that `/v1/publish` refuses control subjects.
pub async fn revoke(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PublishError> {
    let body = match receive(&req, payload, &state, REVOKE_MAX_BYTES).await {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let revoke: crate::control::Revoke = serde_json::from_slice(&body).map_err(|e| {
        PublishError::BadRequest(format!(
            "send {{\"aliasId\": \"...\"}}, {{\"token\": \"...\"}} or {{\"userId\": \"...\"}}: {e}"
        ))
    })?;
    let named = [&revoke.alias_id, &revoke.token, &revoke.user_id]
        .iter()
        .filter(|v| v.as_deref().is_some_and(|v| !v.is_empty()))
        .count();
    if named != 1 {
        return Err(PublishError::BadRequest(
            "name exactly one of \"aliasId\", \"token\" or \"userId\"".into(),
        ));
    }
    let message = BusMessage {
        subject: herald_protocol::subject::CONTROL_REVOKE.to_owned(),
        payload: body,
        json: true,
        ..Default::default()
    };
    state.bus.publish(message).await?;
    Ok(HttpResponse::Accepted().json(json!({ "revoked": true })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(v: Value) -> Envelope {
        Envelope::decode(v.to_string().as_bytes(), true).unwrap()
    }

    #[test]
    fn subjects_come_from_alias_and_event_or_explicit_subject() {
        let e = envelope(json!({"aliasId": "a1", "payload": {"event": "newMessage"}}));
        assert_eq!(
            subject_for(&e).unwrap().to_string(),
            "herald.v1.alias.a1.newMessage"
        );
        let e = envelope(json!({"payload": {"event": "newRelease"}}));
        assert_eq!(
            subject_for(&e).unwrap().to_string(),
            "herald.v1.broadcast.newRelease"
        );
        let e = envelope(json!({"subject": "herald.v1.topic.x.y", "payload": {}}));
        assert_eq!(subject_for(&e).unwrap().to_string(), "herald.v1.topic.x.y");
        let e = envelope(json!({"payload": {"event": "newMessage"}}));
        assert!(subject_for(&e).unwrap_err().to_string().contains("aliasId"));
        for subject in [
            "herald.v1.control.revoke",
            "herald.v1.auth.request",
            "herald.v1.custom.x",
        ] {
            let e = envelope(json!({"subject": subject, "payload": {}}));
            assert!(subject_for(&e)
                .unwrap_err()
                .to_string()
                .contains("not an event subject"));
        }
        let e = envelope(json!({"aliasId": "a1", "payload": {}}));
        assert!(subject_for(&e)
            .unwrap_err()
            .to_string()
            .contains("payload.event"));
        let e = envelope(json!({"aliasId": "a1", "payload": {"event": "bogus"}}));
        assert!(subject_for(&e).is_err());
    }
}
