//! What every dialect does before and during its upgrade: read credentials, check them
//! with the configured providers, and take the places the limits allow (per address,
//! per node, per alias across the cluster). Dialects call these; none re-implements them.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::HttpRequest;
use base64::Engine;
use herald_protocol::subject::validate_identifier;

use crate::auth::{AuthError, Credentials, Principal};
use crate::cluster_limits::Lease;
use crate::dialect::{Dialect, Refusal};
use crate::limits::{client_ip, Slot};
use crate::metrics;
use crate::state::AppState;

/// Seconds a client should wait after hitting its alias's session cap.
pub const ALIAS_FULL_RETRY_AFTER: u64 = 10;
/// Seconds a client should wait when the node is full or draining.
pub const NODE_FULL_RETRY_AFTER: u64 = 60;

/// A client admitted past the per-address and per-node limits.
pub struct Admitted {
    /// The client's address (the peer, or `X-Forwarded-For` behind a trusted proxy).
    pub ip: IpAddr,
    /// Its place under `limits.max_sessions_total`; dropping it frees the place.
    pub node_slot: Slot<()>,
}

/// Checks origin, blocks and connection rate (on this node and across the cluster), then
/// takes a place under the node's session cap: 403/429/503 before any upgrade.
pub async fn admit(req: &HttpRequest, state: &AppState) -> Result<Admitted, Refusal> {
    let forwarded = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let ip = client_ip(
        req.peer_addr(),
        forwarded,
        state.settings.server.trust_proxy,
    );
    state.admit(req, ip)?;
    state.admit_cluster(ip)?;
    let node_slot = state
        .limits
        .total
        .try_acquire((), state.limits.settings.max_sessions_total)
        .ok_or_else(|| {
            metrics::connection_refused("node_full");
            Refusal::Unavailable {
                reason: "this node is at limits.max_sessions_total; retry another node".into(),
                retry_after: NODE_FULL_RETRY_AFTER,
            }
        })?;
    Ok(Admitted { ip, node_slot })
}

/// Reads `Authorization`: `Basic` (alias login or API token) or `Bearer` (JWT); `None`
/// when the header is absent.
pub fn authorization(
    req: &HttpRequest,
    alias_id: Option<String>,
) -> Result<Option<Credentials>, Refusal> {
    let Some(header) = req.headers().get(actix_web::http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let header = header
        .to_str()
        .map_err(|_| Refusal::BadRequest("Authorization header is not ASCII".into()))?;
    match bearer(header) {
        Some(token) => bearer_credentials(token, alias_id),
        None => parse_basic(header, alias_id),
    }
    .map(Some)
}

/// The token of `Authorization: Bearer <token>`, if that is the scheme.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A bearer JWT, with the alias the client picked (if it did).
pub fn bearer_credentials(token: &str, alias_id: Option<String>) -> Result<Credentials, Refusal> {
    if token.is_empty() {
        return Err(Refusal::Unauthorized("empty bearer token".into()));
    }
    if let Some(id) = &alias_id {
        validate_identifier(id).map_err(|e| Refusal::BadRequest(format!("alias_id: {e}")))?;
    }
    Ok(Credentials::Bearer {
        token: token.to_owned(),
        alias_id,
    })
}

/// Parses `Basic base64(user:password)` into credentials.
pub fn parse_basic(header: &str, alias_id: Option<String>) -> Result<Credentials, Refusal> {
    let encoded = header
        .strip_prefix("Basic ")
        .or_else(|| header.strip_prefix("basic "))
        .ok_or_else(|| {
            Refusal::BadRequest(
                "Authorization must be Basic base64(alias:password), Basic base64(token:) or Bearer <JWT>".into(),
            )
        })?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(|| {
            Refusal::BadRequest("Authorization Basic value is not valid base64 UTF-8".into())
        })?;
    let (username, password) = decoded.split_once(':').unwrap_or((decoded.as_str(), ""));
    credentials(username, password, alias_id)
}

/// An alias login when the username has an `@`, else an API token that needs `alias_id`.
pub fn credentials(
    username: &str,
    password: &str,
    alias_id: Option<String>,
) -> Result<Credentials, Refusal> {
    if username.is_empty() {
        return Err(Refusal::Unauthorized("empty username".into()));
    }
    if username.contains('@') {
        return Ok(Credentials::Password {
            username: username.to_owned(),
            password: password.to_owned(),
        });
    }
    let alias_id = alias_id.ok_or_else(|| {
        Refusal::BadRequest(
            "an API token needs ?alias_id=<alias id> to say which alias to connect as".into(),
        )
    })?;
    validate_identifier(&alias_id).map_err(|e| Refusal::BadRequest(format!("alias_id: {e}")))?;
    Ok(Credentials::Token {
        token: username.to_owned(),
        alias_id,
    })
}

/// Seconds a client should wait when its address or the node has too many logins being
/// checked: one finishes within a second.
pub const LOGINS_BUSY_RETRY_AFTER: u64 = 1;

/// Checks credentials with the backend timeout, counting failures against the address.
///
/// Before anything is checked the address must be unblocked, have fewer than
/// `limits.max_logins_in_flight_per_ip` logins in progress, and have a failure left to
/// spend: the login is counted as failed up front and given back when it succeeds, so
/// concurrent wrong passwords from one address cannot check more than
/// `limits.failed_logins_per_ip` of them.
pub async fn authenticate(
    state: &AppState,
    dialect: Dialect,
    credentials: &Credentials,
    ip: IpAddr,
) -> Result<Principal, Refusal> {
    let limits = &state.limits;
    let busy = |reason: &str| {
        metrics::connection_refused("logins_in_flight");
        Refusal::TooMany {
            reason: reason.into(),
            retry_after: LOGINS_BUSY_RETRY_AFTER,
        }
    };
    let _in_flight = limits
        .logins_in_flight
        .try_acquire(ip, limits.settings.max_logins_in_flight_per_ip)
        .ok_or_else(|| busy("too many logins in progress from this address (limits.max_logins_in_flight_per_ip); retry in a second"))?;
    // Admission checked this too, but an `?auth=message` session may have been admitted
    // before its address was blocked.
    if let Some(block) = limits.blocked(ip) {
        metrics::connection_refused("blocked");
        return Err(Refusal::TooMany {
            reason: "too many failed logins from this address; try again later".into(),
            retry_after: block.as_secs().max(1),
        });
    }
    if !limits.charge_login(ip) {
        return Err(busy("the logins in progress from this address would use up its failed logins (limits.failed_logins_per_ip); retry in a second"));
    }
    let timeout = state.settings.auth.backend_timeout;
    match tokio::time::timeout(timeout, state.auth.authenticate(credentials, ip, dialect)).await {
        Err(_) | Ok(Err(AuthError::Timeout)) => {
            limits.refund_login(ip);
            Err(Refusal::AuthTimeout)
        }
        Ok(Err(error @ AuthError::Busy)) => {
            limits.refund_login(ip);
            metrics::connection_refused("password_checks");
            Err(Refusal::Unavailable {
                reason: error.to_string(),
                retry_after: LOGINS_BUSY_RETRY_AFTER,
            })
        }
        Ok(Ok(principal)) => {
            limits.refund_login(ip);
            // Never the credentials themselves: only who, from where, and why not.
            tracing::debug!(%ip, alias_id = ?principal.alias_id, user_id = ?principal.user_id, "login accepted");
            Ok(principal)
        }
        Ok(Err(error)) => {
            tracing::debug!(%ip, %error, "login refused");
            metrics::auth_failure(dialect);
            limits.record_failure(ip);
            Err(match error {
                AuthError::AliasNotAllowed(_)
                | AuthError::NoAlias
                | AuthError::InvalidAliasId(_) => Refusal::Forbidden(error.to_string()),
                AuthError::AliasRequired => Refusal::BadRequest(error.to_string()),
                _ => Refusal::Unauthorized(error.to_string()),
            })
        }
    }
}

/// A session's place under its alias's cap: on this node, and across the cluster in
/// NATS mode. Dropping it frees both.
pub struct AliasPlace {
    _node: Slot<Arc<Box<str>>>,
    cluster: Option<Lease>,
}

impl AliasPlace {
    /// Fires if the cluster reclaims the place after a race across nodes (once).
    pub fn reclaimed(&mut self) -> Option<crate::cluster_limits::Reclaimed> {
        self.cluster.as_mut()?.reclaimed()
    }
}

/// Takes the alias's session place or refuses with 429/4429.
pub async fn alias_place(state: &AppState, alias_id: &str) -> Result<AliasPlace, Refusal> {
    let max = state.limits.settings.max_sessions_per_alias;
    let full = || {
        metrics::connection_refused("alias_sessions");
        Refusal::TooMany {
            reason: format!(
                "alias {alias_id} already has {max} sessions (limits.max_sessions_per_alias)"
            ),
            retry_after: ALIAS_FULL_RETRY_AFTER,
        }
    };
    let node = state
        .limits
        .per_alias
        .try_acquire(Arc::new(Box::from(alias_id)), max)
        .ok_or_else(full)?;
    let cluster = match &state.cluster {
        Some(cluster) => Some(
            cluster
                .acquire_session(alias_id, max)
                .map_err(|_over_cap| full())?,
        ),
        None => None,
    };
    Ok(AliasPlace {
        _node: node,
        cluster,
    })
}

/// A session's place under its user's cap in one dialect: on this node, and across the
/// cluster in NATS mode. Dropping it frees both.
pub struct UserPlace {
    _node: Slot<(&'static str, String)>,
    cluster: Option<Lease>,
}

impl UserPlace {
    /// Fires if the cluster reclaims the place after a race across nodes (once).
    pub fn reclaimed(&mut self) -> Option<crate::cluster_limits::Reclaimed> {
        self.cluster.as_mut()?.reclaimed()
    }
}

/// Takes a place under `user_id`'s cap of `max` sessions of `dialect` (per node, and
/// cluster-wide in NATS mode) or refuses with 429/4429; `setting` names the cap's key.
pub async fn user_place(
    state: &AppState,
    dialect: Dialect,
    user_id: &str,
    (max, setting): (usize, &'static str),
) -> Result<UserPlace, Refusal> {
    let full = || {
        metrics::connection_refused("user_sessions");
        Refusal::TooMany {
            reason: format!("user {user_id} already has {max} sessions ({setting})"),
            retry_after: ALIAS_FULL_RETRY_AFTER,
        }
    };
    let node = state
        .limits
        .per_user
        .try_acquire((dialect.label(), user_id.to_owned()), max)
        .ok_or_else(full)?;
    let cluster = match &state.cluster {
        Some(cluster) => Some(
            cluster
                .acquire_scoped(&format!("{dialect}-user"), user_id, max, setting)
                .map_err(|_over_cap| full())?,
        ),
        None => None,
    };
    Ok(UserPlace {
        _node: node,
        cluster,
    })
}

/// An alias dialect's login: who, as which alias, holding the alias's session place.
pub struct AliasLogin {
    /// Who the credentials belong to.
    pub principal: Principal,
    /// The alias the session routes by.
    pub alias_id: String,
    /// The session's place under the alias cap (freed on drop).
    pub place: AliasPlace,
}

/// Authenticates a client of an alias dialect (`/v1/ws`, `/jmap/ws`) and takes its place
/// under `limits.max_sessions_per_alias`.
pub async fn login_alias(
    state: &AppState,
    dialect: Dialect,
    credentials: &Credentials,
    ip: IpAddr,
) -> Result<AliasLogin, Refusal> {
    let principal = authenticate(state, dialect, credentials, ip).await?;
    let alias_id = principal
        .alias_id
        .clone()
        .ok_or_else(|| Refusal::Forbidden(AuthError::NoAlias.to_string()))?;
    let place = alias_place(state, &alias_id).await?;
    Ok(AliasLogin {
        principal,
        alias_id,
        place,
    })
}
