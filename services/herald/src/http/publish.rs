//! `POST /v1/publish`: publish one event with a publish token, for backends that would
//! rather speak HTTP than NATS (and for `herald publish` in embedded mode).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
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
    /// The bus refused it.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl ResponseError for PublishError {
    fn status_code(&self) -> StatusCode {
        match self {
            PublishError::Unauthorized => StatusCode::UNAUTHORIZED,
            PublishError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PublishError::Bus(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code()).json(json!({ "error": self.to_string() }))
    }
}

/// Resolves the subject an envelope is published on, validating ids and event names.
pub fn subject_for(envelope: &Envelope) -> Result<Subject, String> {
    let event = envelope.event().map_err(|e| e.to_string())?;
    match (&envelope.subject, &envelope.alias_id, event) {
        (Some(subject), _, _) => Subject::parse(subject).map_err(|e| e.to_string()),
        (None, _, Some(event)) if event.is_broadcast() => Ok(Subject::Broadcast(event)),
        (None, Some(alias_id), Some(event)) => {
            Subject::alias(alias_id, event).map_err(|e| e.to_string())
        }
        (None, None, Some(event)) => Err(format!(
            "{event} is a per-alias event: set \"aliasId\" (or \"subject\")"
        )),
        (None, _, None) => Err("payload.event is required (e.g. \"newMessage\")".into()),
    }
}

/// `POST /v1/publish`.
pub async fn publish(
    req: HttpRequest,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, PublishError> {
    let token = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(PublishError::Unauthorized)?;
    if !crate::auth::token_in(&state.settings.auth.publish_tokens, token) {
        return Err(PublishError::Unauthorized);
    }
    let mut envelope =
        Envelope::decode(&body, true).map_err(|e| PublishError::BadRequest(e.to_string()))?;
    let subject = subject_for(&envelope).map_err(PublishError::BadRequest)?;
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
        assert!(subject_for(&e).unwrap_err().contains("aliasId"));
        let e = envelope(json!({"aliasId": "a1", "payload": {}}));
        assert!(subject_for(&e).unwrap_err().contains("payload.event"));
        let e = envelope(json!({"aliasId": "a1", "payload": {"event": "bogus"}}));
        assert!(subject_for(&e).is_err());
    }
}
