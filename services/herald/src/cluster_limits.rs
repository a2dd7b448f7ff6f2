//! Limits that hold across the cluster in NATS mode (SPEC §6): sessions per alias (and
//! per user of a dialect with such a cap) and connections per client address per minute;
//! and the same leases tell `/ws` whether a user is online anywhere (presence).
//!
//! Both are counted in memory-storage JetStream streams:
//! - `HERALD_SESSIONS`: one subject per live session,
//!   `herald.limits.session.<scope>.<key>.<node>.<lease>` (scope `alias` for the per-alias
//!   cap, `rooms-user` for the rooms dialect's per-user cap, so keys of different caps
//!   never collide) or `herald.limits.user.<userId>.<node>.<lease>` (`/ws` users), one
//!   message kept per subject and expiring after the lease TTL (`limits.lease_ttl`) unless
//!   the owning node refreshes it. A node that dies stops refreshing, so its sessions stop
//!   counting within the TTL.
//! - `HERALD_RATE`: one message per connection attempt on `herald.limits.rate.<address>`,
//!   kept for a minute.
//!
//! A check publishes first and counts second, so two nodes racing for the last place both
//! see the other and refuse rather than both admit. While NATS is unreachable the checks
//! say "unknown" and only the per-node limits (always applied too) hold: degraded to
//! per-node, never to "no limit" and never to refusing everyone.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::TryStreamExt;

/// The window of the per-address connection rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Longest a cluster check may take before the node decides alone.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
const SESSIONS_STREAM: &str = "HERALD_SESSIONS";
const RATE_STREAM: &str = "HERALD_RATE";
const SESSION_PREFIX: &str = herald_protocol::subject::LIMITS_SESSION;
/// Leases of `/ws` users (presence), apart from alias leases so ids never collide.
const USER_PREFIX: &str = herald_protocol::subject::LIMITS_USER;
/// One subject per live node, refreshed with its leases: tells a lease that expired
/// (its node died) from one that was released.
const NODE_PREFIX: &str = herald_protocol::subject::LIMITS_NODE;
const RATE_PREFIX: &str = herald_protocol::subject::LIMITS_RATE;

/// The verdict of a cluster-wide check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit.
    Allowed,
    /// Over the limit across the cluster.
    Refused,
    /// The cluster could not be asked (NATS down or slow): only per-node limits apply.
    Unknown,
}

/// Leases refreshed in one go before pausing (see `refresh_leases`).
const REFRESH_BATCH: usize = 100;

/// A cluster-wide check NATS could not answer: the node applies per-node limits only.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
struct CheckError {
    source: crate::bus::Source,
}

impl CheckError {
    fn from_nats(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        CheckError {
            source: Box::new(error),
        }
    }
}

/// A cap the cluster is already at: the new session is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{sessions} sessions across the cluster with this one, over the cap of {max}")]
pub struct OverCap {
    /// Sessions counted, the refused one included.
    pub sessions: usize,
    /// The cap.
    pub max: usize,
}

/// Cluster-wide counters of one node.
pub struct ClusterLimits {
    jetstream: jetstream::Context,
    node: String,
    replicas: usize,
    /// How long a lease lives without a refresh (`limits.lease_ttl`); refreshed at a third.
    lease_ttl: Duration,
    /// Lease subjects of this node's live sessions, refreshed every third of the TTL.
    leases: Mutex<HashSet<String>>,
    next_lease: AtomicU64,
    /// Throttles the "degraded to per-node limits" warning.
    last_warning: Mutex<Option<std::time::Instant>>,
}

/// A session's place under its alias's cluster-wide cap; dropping it frees the place.
pub struct Lease {
    subject: String,
    limits: Arc<ClusterLimits>,
}

impl Lease {
    /// Frees the place now and waits until the cluster no longer counts it (so a count
    /// taken afterwards does not see it), instead of in the background on drop.
    pub async fn release(mut self) {
        let subject = std::mem::take(&mut self.subject);
        self.limits
            .leases
            .lock()
            .expect("lease lock")
            .remove(&subject);
        self.limits.forget(&subject).await;
    }

    /// The lease's subject (unique in the cluster).
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.subject.is_empty() {
            return;
        }
        self.limits
            .leases
            .lock()
            .expect("lease lock")
            .remove(&self.subject);
        let limits = Arc::clone(&self.limits);
        let subject = std::mem::take(&mut self.subject);
        tokio::spawn(async move { limits.forget(&subject).await });
    }
}

/// A client address as one subject token (`127-0-0-1`, `2001-db8-0-0--`).
fn address_token(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Any key as one subject token: an identifier (`[A-Za-z0-9_-]+`) as is, anything else
/// as `%` and its hex bytes, so two different keys never share a token.
fn key_token(key: &str) -> String {
    if herald_protocol::subject::validate_identifier(key).is_ok() {
        return key.to_owned();
    }
    let mut token = String::with_capacity(1 + key.len() * 2);
    token.push('%');
    for byte in key.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

impl ClusterLimits {
    /// Limits for `node` over the given JetStream context; starts the lease refresher.
    pub fn start(
        jetstream: jetstream::Context,
        node: &str,
        replicas: usize,
        lease_ttl: Duration,
    ) -> Arc<ClusterLimits> {
        let limits = Arc::new(ClusterLimits {
            jetstream,
            node: node.replace(['.', ' ', '*', '>'], "-"),
            replicas,
            lease_ttl,
            leases: Mutex::default(),
            next_lease: AtomicU64::new(1),
            last_warning: Mutex::default(),
        });
        tokio::spawn(Arc::clone(&limits).refresh_leases());
        limits
    }

    async fn ensure_streams(&self) -> Result<(), CheckError> {
        let sessions = stream::Config {
            name: SESSIONS_STREAM.into(),
            subjects: vec![
                format!("{SESSION_PREFIX}.>"),
                format!("{USER_PREFIX}.>"),
                format!("{NODE_PREFIX}.>"),
            ],
            max_messages_per_subject: 1,
            max_age: self.lease_ttl,
            storage: stream::StorageType::Memory,
            num_replicas: self.replicas,
            ..Default::default()
        };
        let rate = stream::Config {
            name: RATE_STREAM.into(),
            subjects: vec![format!("{RATE_PREFIX}.>")],
            max_age: RATE_WINDOW,
            storage: stream::StorageType::Memory,
            num_replicas: self.replicas,
            ..Default::default()
        };
        for config in [sessions, rate] {
            self.jetstream
                .create_or_update_stream(config)
                .await
                .map_err(CheckError::from_nats)?;
        }
        // Count this node as live at once, not only from its next refresh.
        self.record(format!("{NODE_PREFIX}.{}", self.node)).await
    }

    /// Publishes `subject` to its stream, acknowledged.
    async fn record(&self, subject: String) -> Result<(), CheckError> {
        self.jetstream
            .publish(subject, bytes::Bytes::new())
            .await
            .map_err(CheckError::from_nats)?
            .await
            .map(|_| ())
            .map_err(CheckError::from_nats)
    }

    /// The subjects under `filter` in `stream`, each with its message count.
    async fn subjects(
        &self,
        stream: &str,
        filter: &str,
    ) -> Result<Vec<(String, usize)>, CheckError> {
        self.jetstream
            .get_stream_no_info(stream)
            .await
            .map_err(CheckError::from_nats)?
            .info_with_subjects(filter)
            .await
            .map_err(CheckError::from_nats)?
            .try_collect()
            .await
            .map_err(CheckError::from_nats)
    }

    /// `(subjects, messages)` under `filter` in `stream`.
    async fn count(&self, stream: &str, filter: &str) -> Result<(usize, usize), CheckError> {
        let subjects = self.subjects(stream, filter).await?;
        Ok((subjects.len(), subjects.iter().map(|(_, n)| n).sum()))
    }

    /// Runs a check with the timeout, creating the streams once if they are missing.
    async fn checked<T, F, Fut>(&self, what: &str, check: F) -> Option<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, CheckError>>,
    {
        let attempt = async {
            match check().await {
                Ok(v) => Ok(v),
                Err(_) => {
                    self.ensure_streams().await?;
                    check().await
                }
            }
        };
        match tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(error)) => {
                self.warn_degraded(what, &error);
                None
            }
            Err(_) => {
                self.warn_degraded(what, &"NATS did not answer in time");
                None
            }
        }
    }

    fn warn_degraded(&self, what: &str, error: &dyn std::fmt::Display) {
        let mut last = self.last_warning.lock().expect("warning lock");
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(check = what, %error, "cluster-wide limit unavailable: applying per-node limits only");
        }
    }

    /// Counts one connection attempt from `ip`; refused past `per_minute` across the cluster.
    pub async fn connection_attempt(&self, ip: IpAddr, per_minute: u32) -> Verdict {
        let subject = format!("{RATE_PREFIX}.{}", address_token(ip));
        let attempts = self
            .checked("connections_per_ip_per_minute", || async {
                self.record(subject.clone()).await?;
                self.count(RATE_STREAM, &subject).await.map(|(_, n)| n)
            })
            .await;
        match attempts {
            Some(n) if n > per_minute as usize => Verdict::Refused,
            Some(_) => Verdict::Allowed,
            None => Verdict::Unknown,
        }
    }

    /// Takes a place under `alias_id`'s cap of `max` sessions across the cluster.
    /// `Ok(None)` when the cluster could not be asked (per-node limits apply).
    pub async fn acquire_session(
        self: &Arc<Self>,
        alias_id: &str,
        max: usize,
    ) -> Result<Option<Lease>, OverCap> {
        self.acquire_scoped("alias", alias_id, max, "max_sessions_per_alias")
            .await
    }

    /// Takes a place under the cap of `max` sessions of `key` within `scope` (a subject
    /// token such as `alias` or `rooms-user`) across the cluster; `limit` names the setting
    /// in degraded-mode warnings. `key` may be any string (a JWT `sub`, say): it is
    /// escaped into one subject token. `Ok(None)` when the cluster could not be asked.
    pub async fn acquire_scoped(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        max: usize,
        limit: &str,
    ) -> Result<Option<Lease>, OverCap> {
        let family = format!("{SESSION_PREFIX}.{scope}");
        self.acquire(&family, key, max, limit)
            .await
            .map(|l| l.map(|(lease, _)| lease))
    }

    /// Takes a lease for a `/ws` session of `user_id` (no cap): with the number of the
    /// user's sessions across the cluster, this one included (1 = the user just came
    /// online). `None` when the cluster could not be asked.
    pub async fn acquire_user(self: &Arc<Self>, user_id: &str) -> Option<(Lease, usize)> {
        self.acquire(USER_PREFIX, user_id, usize::MAX, "presence")
            .await
            .ok()
            .flatten()
    }

    /// The number of `user_id`'s `/ws` sessions across the cluster; `None` when unknown.
    pub async fn user_sessions(&self, user_id: &str) -> Option<usize> {
        let filter = format!("{USER_PREFIX}.{user_id}.>");
        self.checked("user_sessions", || async {
            self.count(SESSIONS_STREAM, &filter).await.map(|(n, _)| n)
        })
        .await
    }

    /// Names of the nodes whose leases are alive (refreshed within the lease TTL).
    pub async fn live_nodes(&self) -> Option<HashSet<String>> {
        let filter = format!("{NODE_PREFIX}.>");
        let subjects = self
            .checked("live_nodes", || self.subjects(SESSIONS_STREAM, &filter))
            .await?;
        Some(
            subjects
                .into_iter()
                .filter_map(|(s, _)| s.rsplit('.').next().map(str::to_owned))
                .collect(),
        )
    }

    /// The node a lease subject belongs to (`<prefix>.<key>.<node>.<lease>`).
    pub fn node_of(lease_subject: &str) -> Option<&str> {
        lease_subject.rsplit('.').nth(1)
    }

    /// Every live `/ws` user lease in the cluster, by user id; `None` when unknown.
    pub async fn user_leases(&self) -> Option<std::collections::HashMap<String, Vec<String>>> {
        let filter = format!("{USER_PREFIX}.>");
        let subjects = self
            .checked("user_leases", || self.subjects(SESSIONS_STREAM, &filter))
            .await?;
        let mut users: std::collections::HashMap<String, Vec<String>> = Default::default();
        for (subject, _) in subjects {
            let user = subject
                .strip_prefix(USER_PREFIX)
                .and_then(|r| r.strip_prefix('.'))
                .and_then(|r| r.split('.').next());
            if let Some(user) = user {
                users.entry(user.to_owned()).or_default().push(subject);
            }
        }
        Some(users)
    }

    /// Takes a place under `key`'s cap of `max` leases in the `prefix` family, with the
    /// count seen (this lease included); `limit` names the cap in warnings.
    async fn acquire(
        self: &Arc<Self>,
        prefix: &str,
        key: &str,
        max: usize,
        limit: &str,
    ) -> Result<Option<(Lease, usize)>, OverCap> {
        let key = key_token(key);
        let lease_id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let subject = format!("{prefix}.{key}.{}.{lease_id}", self.node);
        let filter = format!("{prefix}.{key}.>");
        let sessions = self
            .checked(limit, || async {
                self.record(subject.clone()).await?;
                self.count(SESSIONS_STREAM, &filter).await.map(|(n, _)| n)
            })
            .await;
        match sessions {
            None => Ok(None),
            Some(n) if n > max => {
                self.forget(&subject).await;
                Err(OverCap { sessions: n, max })
            }
            Some(n) => {
                self.leases
                    .lock()
                    .expect("lease lock")
                    .insert(subject.clone());
                Ok(Some((
                    Lease {
                        subject,
                        limits: Arc::clone(self),
                    },
                    n,
                )))
            }
        }
    }

    /// Removes a lease from the stream (best effort: it expires anyway).
    async fn forget(&self, subject: &str) {
        if let Ok(stream) = self.jetstream.get_stream_no_info(SESSIONS_STREAM).await {
            let _ = stream.purge().filter(subject).await;
        }
    }

    /// Keeps this node's leases alive; a node that dies stops, and its leases expire.
    async fn refresh_leases(self: Arc<Self>) {
        let period = self.lease_ttl / 3;
        let client = self.jetstream.client();
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            let mut subjects = vec![format!("{NODE_PREFIX}.{}", self.node)];
            subjects.extend(self.leases.lock().expect("lease lock").iter().cloned());
            // Core publishes (the stream stores them; no acknowledgement comes back: a
            // refresh lost to a NATS blip is repeated next round), spread over half the
            // period: 10,000 sessions refreshed at once queued events behind them on the
            // node's NATS connection (the loadtest's p99).
            let batches = subjects.len().div_ceil(REFRESH_BATCH);
            let pause = (period / 2) / u32::try_from(batches).unwrap_or(u32::MAX).max(1);
            for batch in subjects.chunks(REFRESH_BATCH) {
                for subject in batch {
                    let _ = client.publish(subject.clone(), bytes::Bytes::new()).await;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_become_single_subject_tokens() {
        assert_eq!(address_token("127.0.0.1".parse().unwrap()), "127-0-0-1");
        let v6 = address_token("2001:db8::".parse().unwrap());
        assert!(!v6.contains(['.', ':']), "{v6}");
        herald_protocol::subject::validate_identifier(&v6).unwrap();
    }

    #[test]
    fn any_key_becomes_one_distinct_subject_token() {
        assert_eq!(key_token("user-1"), "user-1");
        let odd = key_token("a.b *>");
        assert!(!odd.contains(['.', ' ', '*', '>']), "{odd}");
        assert_ne!(key_token("%61"), key_token("a"));
        assert_ne!(odd, key_token("a.b"));
    }
}
