//! Client dialects: thin codecs over the registry core. Each translates its frames and
//! credentials; routing, auth and limits are shared.

pub mod admission;
pub mod codec;
pub mod connection;
pub mod forwardemail;
pub mod jmap;
pub mod lifecycle;
pub mod realtime;
pub mod rooms;
pub mod wheel;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

pub use herald_protocol::Dialect;

/// How a dialect's sessions close on transport events: the one place these differ.
#[derive(Debug, Clone, Copy)]
pub struct Closes {
    /// Reason (with 1013) when the session overflows its outbound budget: how the client
    /// resumes.
    pub slow: &'static str,
    /// Reason (with 1009) when a client message exceeds the dialect's limit.
    pub overflow: &'static str,
    /// Whether the close answering the client's echoes its status code (RFC 6455
    /// §5.5.1), or carries none.
    pub echo: bool,
}

/// How `dialect`'s sessions close.
pub const fn closes(dialect: Dialect) -> Closes {
    match dialect {
        Dialect::ForwardEmail => Closes {
            slow: "slow consumer: reconnect with since=<last seq>",
            overflow: "frame too big (limits.max_client_frame_bytes)",
            echo: true,
        },
        Dialect::Jmap => Closes {
            slow: "slow consumer: reconnect and enable push with your pushState",
            overflow: "frame over jmap.max_frame_bytes (maxSizeRequest)",
            echo: true,
        },
        Dialect::Realtime => Closes {
            slow: "slow consumer: reconnect and Subscribe with since=<last seq>",
            overflow: "frame too big: far over realtime.max_message_bytes",
            echo: false,
        },
        Dialect::Rooms => Closes {
            slow: "slow consumer: reconnect",
            overflow: "frame too big (rooms.max_frame_bytes)",
            echo: false,
        },
    }
}

/// Why an upgrade (or an auth frame) was refused; maps to an HTTP status before the
/// upgrade and to a close code after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Missing or wrong credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// Origin or alias not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// A per-address or per-alias limit; retry after the given seconds.
    #[error("{reason}")]
    TooMany {
        /// What limit was hit.
        reason: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The node is full or draining; retry after the given seconds.
    #[error("{reason}")]
    Unavailable {
        /// Why.
        reason: String,
        /// Seconds until a retry may succeed.
        retry_after: u64,
    },
    /// The auth backend did not answer in time.
    #[error("the authentication backend did not answer in time; retry later")]
    AuthTimeout,
}

impl Refusal {
    /// The close code used when the refusal happens after the upgrade.
    pub fn close_code(&self) -> u16 {
        match self {
            Refusal::BadRequest(_) => 4400,
            Refusal::Unauthorized(_) => 4401,
            Refusal::Forbidden(_) => 4403,
            Refusal::TooMany { .. } => 4429,
            Refusal::Unavailable { .. } | Refusal::AuthTimeout => 1013,
        }
    }
}

impl ResponseError for Refusal {
    fn status_code(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Refusal::Forbidden(_) => StatusCode::FORBIDDEN,
            Refusal::TooMany { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::AuthTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        match self {
            Refusal::TooMany { retry_after, .. } | Refusal::Unavailable { retry_after, .. } => {
                response.insert_header(("Retry-After", retry_after.to_string()));
            }
            Refusal::Unauthorized(_) => {
                response.insert_header(("WWW-Authenticate", "Basic realm=\"herald\""));
            }
            _ => {}
        }
        response.json(serde_json::json!({ "error": self.to_string() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_paths_stay_what_users_see() {
        let labels = Dialect::ALL.map(Dialect::label);
        assert_eq!(labels, ["v1", "jmap", "realtime", "rooms"]);
        let paths = Dialect::ALL.map(Dialect::path);
        assert_eq!(paths, ["/v1/ws", "/jmap/ws", "/ws", "/api/v1/ws/connect"]);
        for (i, dialect) in Dialect::ALL.into_iter().enumerate() {
            assert_eq!(dialect.index(), i);
            assert_eq!(dialect.to_string(), dialect.label());
        }
    }

    #[test]
    fn auth_dialects_keys_are_the_labels() {
        use crate::config::ProviderKind::{Callout, Jwt, Static};
        // A different list per dialect, so a key read from the wrong field shows.
        let lists = [vec![Static], vec![Jwt], vec![Callout], vec![Static, Jwt]];
        let providers: crate::config::DialectProviders =
            Dialect::ALL.into_iter().zip(lists).collect();
        let keys = serde_json::to_value(&providers).expect("serialises");
        for dialect in Dialect::ALL {
            assert_eq!(
                keys[dialect.label()],
                serde_json::json!(providers.of(dialect)),
                "[auth.dialects] {} is the list of {dialect:?}",
                dialect.label()
            );
        }
    }
}
