//! The NATS auth callout: a request on `auth.callout.subject` (`herald.v1.auth.request`)
//! with `{dialect, username?, password?, token?, alias_id?, remote_ip}`, answered by a
//! backend in any language with `{ok, aliasIds?, user?, claims?, ttl?}`. No answer within
//! `auth.callout.timeout` (or no responder, or a reply that does not decode) is a timeout:
//! the client gets 504/1013, never access.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{check_alias_ids, choose_alias, AuthError, Credentials, Principal, Verdict};
use crate::config::CalloutSettings;

/// Asks the auth backend over NATS.
pub struct CalloutProvider {
    client: async_nats::Client,
    subject: String,
    timeout: Duration,
}

/// The request body.
#[derive(Debug, Serialize)]
struct Request<'a> {
    dialect: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alias_id: Option<&'a str>,
    remote_ip: String,
}

/// The reply body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Reply {
    ok: bool,
    #[serde(default)]
    alias_ids: Vec<String>,
    /// The user id, if the backend knows one (revocable with `{"userId": ...}`).
    #[serde(default)]
    user: Option<String>,
    /// Seconds the verdict may be cached (capped by `auth.cache.*ttl`).
    #[serde(default)]
    ttl: Option<u64>,
    /// Claims for the user dialects (`username`, `topics`, `rooms`, `exp`, ...).
    #[serde(default)]
    claims: serde_json::Map<String, serde_json::Value>,
}

impl CalloutProvider {
    /// A provider on `client`.
    pub fn new(client: async_nats::Client, settings: &CalloutSettings) -> CalloutProvider {
        CalloutProvider {
            client,
            subject: settings.subject.clone(),
            timeout: settings.timeout,
        }
    }

    /// Asks the backend about any kind of credentials.
    pub async fn check(
        &self,
        credentials: &Credentials,
        ip: IpAddr,
        dialect: &'static str,
    ) -> Verdict {
        let (username, password, token, alias_id) = match credentials {
            Credentials::Password { username, password } => {
                (Some(username.as_str()), Some(password.as_str()), None, None)
            }
            Credentials::Token { token, alias_id } => {
                (None, None, Some(token.as_str()), Some(alias_id.as_str()))
            }
            Credentials::Bearer { token, alias_id } => {
                (None, None, Some(token.as_str()), alias_id.as_deref())
            }
            Credentials::User { token } => (None, None, Some(token.as_str()), None),
        };
        let request = Request {
            dialect,
            username,
            password,
            token,
            alias_id,
            remote_ip: ip.to_string(),
        };
        let timeout = Verdict {
            result: Err(AuthError::Timeout),
            ttl: None,
        };
        let Ok(body) = serde_json::to_vec(&request) else {
            return timeout;
        };
        let reply = match tokio::time::timeout(
            self.timeout,
            self.client.request(self.subject.clone(), body.into()),
        )
        .await
        {
            Err(_) => {
                crate::metrics::auth_callout("timeout");
                tracing::warn!(subject = %self.subject, "auth callout: no answer in time");
                return timeout;
            }
            Ok(Err(error)) => {
                crate::metrics::auth_callout("error");
                tracing::warn!(subject = %self.subject, %error, "auth callout failed");
                return timeout;
            }
            Ok(Ok(message)) => message,
        };
        let reply: Reply = match serde_json::from_slice(&reply.payload) {
            Ok(reply) => reply,
            Err(error) => {
                crate::metrics::auth_callout("error");
                tracing::warn!(subject = %self.subject, %error, "auth callout: undecodable reply");
                return timeout;
            }
        };
        crate::metrics::auth_callout(if reply.ok { "allow" } else { "deny" });
        let ttl = reply.ttl.map(Duration::from_secs);
        if !reply.ok {
            return Verdict {
                result: Err(AuthError::InvalidCredentials),
                ttl,
            };
        }
        // A backend that lists a wildcard is refused whatever the client asked for: the
        // reply is wrong, and the next client may not ask.
        let alias_id =
            check_alias_ids("callout", &reply.alias_ids).and_then(|()| match credentials {
                Credentials::User { .. } => Ok(None),
                _ => choose_alias(&reply.alias_ids, alias_id).map(Some),
            });
        let username = reply
            .claims
            .get("username")
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let result = alias_id.map(|alias_id| Principal {
            alias_id,
            token: None,
            user_id: reply.user,
            username,
            claims: std::sync::Arc::new(reply.claims),
        });
        Verdict { result, ttl }
    }
}
