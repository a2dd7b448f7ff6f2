//! `GET /ws`: the JWT (`?token=`, `Authorization: Bearer` or the `access_token.<JWT>`
//! subprotocol) is checked before the upgrade, and its claims give the session's topic
//! permissions.

use actix_web::http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use actix_web::{web, HttpRequest, HttpResponse};
use herald_protocol::subject::validate_identifier;
use herald_protocol::TopicPattern;
use serde_json::Value;

use super::session::RealtimeSession;
use super::validate_pattern;
use crate::auth::{Credentials, Principal};
use crate::dialect::admission::{admit, authenticate, bearer, Admitted};
use crate::dialect::{Dialect, Refusal};
use crate::metrics;
use crate::state::AppState;
use crate::websocket;

/// The subprotocol prefix that carries a JWT (browsers cannot set `Authorization`).
const SUBPROTOCOL_PREFIX: &str = "access_token.";
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
    metrics::auth_failure(Dialect::Realtime);
    Err(Refusal::Unauthorized(
        "a JWT is required: ?token=<JWT>, Authorization: Bearer <JWT>, or subprotocol access_token.<JWT>".into(),
    ))
}

/// Topic patterns the principal may use for `action` (`subscribe` or `publish`): the JWT's
/// `topics.<action>` list, else the configured default.
pub(super) fn permissions(
    principal: &Principal,
    action: &str,
    default: &[TopicPattern],
) -> Vec<String> {
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
    state: web::Data<AppState>,
) -> Result<HttpResponse, actix_web::Error> {
    let (token, echo) = token_of(&req)?;
    let Admitted { ip, node_slot } = admit(&req, &state).await?;
    let principal =
        authenticate(&state, Dialect::Realtime, &Credentials::User { token }, ip).await?;
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
    let (handshake, socket) = websocket::accept(&req, &protocols, frame_cap)?;
    RealtimeSession::start_with(
        state.into_inner(),
        (ip, user_id, principal),
        node_slot,
        socket,
    );
    Ok(handshake.respond())
}
