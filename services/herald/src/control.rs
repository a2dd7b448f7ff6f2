//! Node-wide control messages on `herald.v1.control.revoke`: `{"aliasId": "..."}` closes
//! that alias's sessions on every node with 4001, `{"token": "..."}` the sessions opened
//! with that API token (or JWT), `{"userId": "..."}` the sessions of that user (JWT
//! `sub` or callout `user`); each drops the matching cached logins.

use futures_util::StreamExt;
use herald_protocol::subject::CONTROL_REVOKE;
use serde::Deserialize;

use crate::auth::TokenFingerprint;
use crate::bus::{Bus, BusMessage};
use crate::registry::{CloseAll, RoutingKey};
use crate::state::AppState;

/// Close code for sessions whose credentials were revoked.
pub const REVOKED: u16 = 4001;

/// A revocation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revoke {
    /// The alias whose sessions close.
    pub alias_id: Option<String>,
    /// The API token whose sessions close.
    pub token: Option<String>,
    /// The user whose sessions close.
    pub user_id: Option<String>,
}

/// Decodes a revocation body (JSON, or MessagePack like every other bus body).
pub fn decode(message: &BusMessage) -> Result<Revoke, String> {
    serde_json::from_slice(&message.payload)
        .or_else(|_| rmp_serde::from_slice(&message.payload))
        .map_err(|e| {
            format!(
                "revocation body must be {{\"aliasId\": \"...\"}}, {{\"token\": \"...\"}} or {{\"userId\": \"...\"}}: {e}"
            )
        })
}

/// Listens for revocations until the bus goes away (resubscribing if the stream ends).
pub async fn run(bus: Bus, state: actix_web::web::Data<AppState>) {
    loop {
        let mut messages = match bus.subscribe(CONTROL_REVOKE).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::error!(%error, "cannot subscribe to revocations; retrying in 1s");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(message) = messages.next().await {
            match decode(&message) {
                Ok(Revoke {
                    token: Some(token), ..
                }) => {
                    let fingerprint = TokenFingerprint::of(&token);
                    tracing::info!("API token revoked: closing its sessions");
                    state.auth.forget_token(fingerprint);
                    // No receiver just means no token session on this node.
                    let _ = state.token_revocations.send(fingerprint);
                }
                Ok(Revoke {
                    alias_id: Some(alias_id),
                    ..
                }) => {
                    tracing::info!(alias_id = %alias_id, "credentials revoked: closing sessions");
                    state.auth.forget_alias(&alias_id);
                    state.directory.close_all(CloseAll {
                        key: RoutingKey::Alias(alias_id),
                        code: REVOKED,
                        reason: "credentials revoked",
                    });
                }
                Ok(Revoke {
                    user_id: Some(user_id),
                    ..
                }) => {
                    tracing::info!(user_id = %user_id, "user revoked: closing sessions");
                    state.auth.forget_user(&user_id);
                    // No receiver just means no user session on this node.
                    let _ = state.user_revocations.send(user_id.into());
                }
                Ok(Revoke { .. }) => {
                    tracing::warn!("revocation without aliasId, token or userId ignored")
                }
                Err(reason) => {
                    crate::metrics::bus_decode_error();
                    tracing::warn!(subject = CONTROL_REVOKE, %reason, "skipping undecodable revocation");
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
