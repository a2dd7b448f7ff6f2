//! `[rooms]`: the `/api/v1/ws/connect` dialect (SPEC §4.4).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;

/// `[rooms]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsSettings {
    /// Whether a token without a `rooms` claim may join any room. Off by default: such a
    /// token may join only `user:<own id>`, so a token minted for another purpose never
    /// opens every room.
    pub default_allow: bool,
    /// Sessions one user may have open across the cluster (the next one closes with 4429).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_connections_per_user: usize,
    /// Largest frame a client may send (1009 above it).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_frame_bytes: usize,
    /// Rooms one session may be in at once (the next `join_room` gets an `error` event).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_rooms_per_connection: usize,
    /// Protocol ping round; a session that sent nothing since the last round is closed.
    #[serde(
        deserialize_with = "de::duration_at_least::<100, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub ping_interval: Duration,
    /// Client frames per second a connection may send (sustained); more get an `error`
    /// event and are dropped, so one client cannot flood the bus.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub messages_per_second: u32,
    /// Client frames a connection may send in a burst above the sustained rate.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub burst: u32,
}

impl Default for RoomsSettings {
    fn default() -> Self {
        RoomsSettings {
            default_allow: false,
            max_connections_per_user: 5,
            max_frame_bytes: 1 << 20,
            max_rooms_per_connection: 100,
            ping_interval: Duration::from_secs(30),
            messages_per_second: 20,
            burst: 40,
        }
    }
}
