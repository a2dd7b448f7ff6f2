//! `[realtime]`: the `/ws` dialect (generic realtime protocol, SPEC §4.3).

use std::time::Duration;

use herald_protocol::TopicPattern;
use serde::{Deserialize, Serialize};

use super::de;

/// `[realtime]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RealtimeSettings {
    /// Largest client message (text or binary) answered normally; bigger ones get `Error 400`.
    #[serde(deserialize_with = "de::at_least::<64, _, _>")]
    pub max_message_bytes: usize,
    /// Client messages per second a connection may send (sustained); more get `Error 429`.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub messages_per_second: u32,
    /// Client messages a connection may send in a burst above the sustained rate.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub burst: u32,
    /// Topic patterns a token without a `topics.subscribe` claim may subscribe to.
    pub default_subscribe: Vec<TopicPattern>,
    /// Topics a token without a `topics.publish` claim may broadcast to.
    pub default_publish: Vec<TopicPattern>,
    /// Most topic subscriptions one connection may hold.
    pub max_subscriptions: usize,
    /// How long a Broadcast/DirectMessage waits for every node's delivery report before
    /// answering `Ack` (the count is the sum of the reports received in this window).
    #[serde(
        deserialize_with = "de::duration_up_to::<10_000, _>",
        serialize_with = "humantime_serde::serialize"
    )]
    pub ack_wait: Duration,
    /// How long a direct message to an offline user stays queued.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub dm_queue_ttl: Duration,
    /// Most direct messages queued for one offline user; more get `Error 429`.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub dm_queue_max: usize,
    /// Most offline users with queued direct messages on a memory-bus node; a message to
    /// one more gets `Error 429`.
    #[serde(deserialize_with = "de::at_least::<1, _, _>")]
    pub dm_queue_users_max: usize,
    /// How long before the JWT's `exp` the session gets `AuthStatus token_expiring`.
    #[serde(with = "humantime_serde")]
    pub token_expiry_warning: Duration,
    /// How long an `X-` custom request waits for its NATS responder.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub custom_timeout: Duration,
    /// Keepalive: a protocol ping every interval; no answer by the next one closes.
    #[serde(
        deserialize_with = "de::positive_duration",
        serialize_with = "humantime_serde::serialize"
    )]
    pub ping_interval: Duration,
}

impl Default for RealtimeSettings {
    fn default() -> Self {
        let everything = || vec![TopicPattern::try_from(">").expect("`>` is a pattern")];
        RealtimeSettings {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            burst: 100,
            default_subscribe: everything(),
            default_publish: everything(),
            max_subscriptions: 100,
            ack_wait: Duration::from_millis(300),
            dm_queue_ttl: Duration::from_secs(24 * 3600),
            dm_queue_max: 1000,
            dm_queue_users_max: 100_000,
            token_expiry_warning: Duration::from_secs(60),
            custom_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
        }
    }
}
