//! `[jmap]`: the `/jmap/ws` dialect (RFC 8887).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;

/// `[jmap]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct JmapSettings {
    /// Protocol ping round; a client that has not answered by the next one is closed.
    #[serde(
        deserialize_with = "de::duration_at_least::<100, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub ping_interval: Duration,
    /// Changes arriving within this window after the first are pushed as one StateChange
    /// (RFC 8620 §7.1 lets servers coalesce); at most 10 s, as clients wait that long.
    #[serde(
        deserialize_with = "de::duration_at_most::<10_000, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub coalesce_window: Duration,
    /// Largest client frame (`maxSizeRequest`); above it: RequestError `limit`, close 1009.
    #[serde(deserialize_with = "de::at_least::<1024, _, _>")]
    pub max_frame_bytes: usize,
    /// Most method calls in one Request (`maxCallsInRequest`).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_calls_in_request: usize,
}

impl Default for JmapSettings {
    fn default() -> Self {
        JmapSettings {
            ping_interval: Duration::from_secs(30),
            coalesce_window: Duration::from_millis(200),
            max_frame_bytes: 1 << 20,
            max_calls_in_request: 16,
        }
    }
}
