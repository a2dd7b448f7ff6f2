//! `[forwardemail]`: the `/v1/ws` dialect (Forward Email compatible).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;

/// `[forwardemail]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardEmailSettings {
    /// Accept sessions without credentials (broadcast events only).
    pub allow_anonymous: bool,
    /// Keepalive round: protocol ping + `{"event":"ping"}`.
    #[serde(
        deserialize_with = "de::duration_at_least::<100, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub ping_interval: Duration,
    /// How long an `?auth=message` session may take to send its auth frame.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub auth_frame_timeout: Duration,
    /// Deprecated alias of `auth.backend_timeout`, read once at load (with a warning)
    /// and then cleared, so nothing else reads it.
    #[serde(
        with = "humantime_serde::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub auth_backend_timeout: Option<Duration>,
}

impl Default for ForwardEmailSettings {
    fn default() -> Self {
        ForwardEmailSettings {
            allow_anonymous: false,
            ping_interval: Duration::from_secs(30),
            auth_frame_timeout: Duration::from_secs(5),
            auth_backend_timeout: None,
        }
    }
}
