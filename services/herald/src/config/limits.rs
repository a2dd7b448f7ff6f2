//! `[limits]`: per-address, per-alias and per-node bounds shared by every dialect.

use std::num::NonZeroU32;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::de;

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Largest notification sent whole; larger ones have resources truncated.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_notification_bytes: usize,
    /// Output a session may have queued before it is disconnected as a slow consumer.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_buffered_bytes: usize,
    /// Largest frame a `/v1/ws` client may send (1009 above it).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_client_frame_bytes: usize,
    /// New connections per client address per minute (a rate quota needs at least one).
    pub connections_per_ip_per_minute: NonZeroU32,
    /// Sessions per alias.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_sessions_per_alias: usize,
    /// Sessions per node.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_sessions_total: usize,
    /// Sessions per address waiting for their `?auth=message` frame.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_pending_auth_per_ip: usize,
    /// Anonymous (broadcast-only) sessions per address.
    pub max_anonymous_per_ip: usize,
    /// Failed logins per address before it is blocked.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub failed_logins_per_ip: u32,
    /// How long a blocked address stays blocked.
    #[serde(with = "humantime_serde")]
    pub failed_login_block: Duration,
    /// Logins one address may have being checked at once (more → 429).
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub max_logins_in_flight_per_ip: usize,
    /// argon2 password checks running at once on the node (~19 MiB each); 0 means one
    /// per CPU core. A login waits up to 1 s for one, then gets 503/1013.
    pub max_password_checks: usize,
    /// How long a cluster-wide session lease (alias caps, `/ws` presence) lives without a
    /// refresh: a node killed without a goodbye stops counting within this time.
    #[serde(
        deserialize_with = "de::duration_at_least::<1000, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub lease_ttl: Duration,
    /// How long `POST /v1/publish` waits for the whole body before answering 408.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub publish_body_timeout: Duration,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            max_notification_bytes: 1 << 20,
            max_buffered_bytes: 1 << 20,
            max_client_frame_bytes: 1024,
            connections_per_ip_per_minute: NonZeroU32::new(30).expect("30 is not 0"),
            max_sessions_per_alias: 10,
            max_sessions_total: 10_000,
            max_pending_auth_per_ip: 5,
            max_anonymous_per_ip: 3,
            failed_logins_per_ip: 10,
            failed_login_block: Duration::from_secs(600),
            max_logins_in_flight_per_ip: 4,
            max_password_checks: 0,
            lease_ttl: Duration::from_secs(30),
            publish_body_timeout: Duration::from_secs(10),
        }
    }
}
