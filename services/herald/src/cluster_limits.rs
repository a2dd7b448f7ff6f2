//! Limits that hold across the cluster in NATS mode (SPEC §6): sessions per alias (and
//! per user of a dialect with such a cap) and connections per client address per minute;
//! and the same leases tell `/ws` whether a user is online anywhere (presence).
//!
//! Both are recorded in memory-storage JetStream streams:
//! - `HERALD_SESSIONS`: one subject per live session,
//!   `herald.limits.session.<scope>.<key>.<node>.<lease>` (scope `alias` for the per-alias
//!   cap, `rooms-user` for the rooms dialect's per-user cap, so keys of different caps
//!   never collide) or `herald.limits.user.<userId>.<node>.<lease>` (`/ws` users), one
//!   message kept per subject and expiring after the lease TTL (`limits.lease_ttl`) unless
//!   the owning node refreshes it (every third of the TTL). A node that dies stops
//!   refreshing, so its sessions stop counting within the TTL. A session that ends
//!   publishes a release marker on `herald.limits.released.<its lease subject>`, then
//!   purges its lease's subject; the marker stays for the TTL, so a view whose feed lags
//!   behind the purge still reads it.
//! - `HERALD_RATE`: connection attempts on `herald.limits.rate.<address>`, gathered for
//!   5 ms per node and address (payload: the node, then the count when over one), kept
//!   for a minute.
//!
//! **Admission asks no one.** Each node follows both streams with an ordered consumer
//! (their current content first, then every new message) into a [`view::View`]: per key,
//! the leases of every node; per address, the attempts of the last minute. A connect is
//! admitted or refused from that view at once; its lease or attempt is published right
//! away if the NATS client's queue has room, else by a background task (a core publish
//! either way: no JetStream acknowledgement is awaited on any path of a connect).
//! Sequential connects therefore see each other once the first one's lease has reached
//! the other nodes (about a millisecond on a LAN; longer on a starved CPU), and a refusal
//! at the handshake stays a 429; a connect inside that window is admitted, and over a
//! cap reconciled as below.
//!
//! **Reconciliation, and the guarantee.** Connects racing on different nodes within that
//! propagation delay can all be admitted. The stream orders their leases: when a node
//! reads one of its own leases back, it closes the session (4429, the code of the
//! refusal) if `cap` earlier, not-closed leases of the key are live at that point of the
//! stream. Every node applies the same rule to the same prefix of the stream, so the
//! leases that stay are exactly the earliest `cap` of the key (no more, and no fewer than
//! were asked for). Precisely: *a cap is exceeded only by sessions admitted on different
//! nodes before each node had read the others' leases, and only until each excess
//! session's node reads its lease back from the stream (one publish-to-delivery trip,
//! milliseconds; at most a third of `limits.lease_ttl` if the publish was lost to a NATS
//! blip and waits for the next refresh); then exactly `min(cap, sessions asked for)`
//! stay.* The per-address rate has no reconciliation: it is exceeded only by attempts on
//! different nodes within the same propagation delay.
//!
//! **Degraded.** While NATS is unreachable, or the view is still reading the streams,
//! checks say "unknown" and only the per-node limits (always applied too) hold: degraded
//! to per-node, never to "no limit" and never to refusing everyone. Sessions admitted
//! then still take leases, published once NATS is back (so they count). Those admitted
//! while NATS was down are never reclaimed; those admitted while the view was being read
//! with NATS up (a node's first moments, a reconnect) are reconciled like any other, so a
//! node joining a full cluster does not add to it. A `/ws` session whose view could not
//! count its user asks the stream instead (publish, then count), off the upgrade path.
//!
//! **Memory.** The view holds one entry per live lease in the cluster (about 60 bytes,
//! plus about 100 per key), so at most the sum of the nodes' `limits.max_sessions_total`
//! entries; and at most `connections_per_ip_per_minute + 1` instants for each of at most
//! [`view::MAX_ADDRESSES`] addresses seen within the minute (twice: the other nodes'
//! attempts, and this node's own).

mod feed;
mod lease;
mod publisher;
mod view;

pub use lease::Lease;

/// Fires (once) when reconciliation gives a session's place under a cluster-wide cap to
/// an earlier racer; an error means the place was given back instead. (`futures`'
/// oneshot: eight bytes inside an `Option`, and every capped session holds one.)
pub type Reclaimed = futures_channel::oneshot::Receiver<()>;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures_util::{FutureExt, TryStreamExt};
use tokio::sync::{mpsc, oneshot};

use view::{Admission, View};

/// The window of the per-address connection rate.
const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Longest a stream query (or a release) may take before the node gives up on it.
const CHECK_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a node gathers connection attempts before publishing them, one message per
/// address with its count: other nodes count them that much later.
const ATTEMPT_BATCH: Duration = Duration::from_millis(5);
/// Longest a release (marker, then purge) may take. Generous: `/ws` counts the user's
/// leases after its session's release to tell whether it went offline, and a release cut
/// short leaves the lease counted (the offline event lost) until it expires.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the feed checks its connection and sweeps expired entries.
const FEED_TICK: Duration = Duration::from_millis(250);
/// How often the feed looks for NATS while it is not connected (the view is unknown
/// meanwhile, so it should be back soon after NATS is).
const CONNECT_POLL: Duration = Duration::from_millis(20);
const SESSIONS_STREAM: &str = "HERALD_SESSIONS";
const RATE_STREAM: &str = "HERALD_RATE";
const SESSION_PREFIX: &str = herald_protocol::subject::LIMITS_SESSION;
/// Leases of `/ws` users (presence), apart from alias leases so ids never collide.
const USER_PREFIX: &str = herald_protocol::subject::LIMITS_USER;
/// One subject per live node, refreshed with its leases: tells a lease that expired
/// (its node died) from one that was released.
const NODE_PREFIX: &str = herald_protocol::subject::LIMITS_NODE;
const RATE_PREFIX: &str = herald_protocol::subject::LIMITS_RATE;
/// The header of a release marker published on the lease's own subject (herald before
/// release markers had a subject of their own; still read during a rolling upgrade).
const RELEASED_HEADER: &str = "Herald-Lease";
/// Release markers: `herald.limits.released.<lease subject>`, kept until the stream's
/// `max_age` while the lease itself is purged at once.
const RELEASED_PREFIX: &str = herald_protocol::subject::LIMITS_RELEASED;

/// The subject of the release marker of the lease on `lease`.
fn release_marker(lease: &str) -> String {
    format!("{RELEASED_PREFIX}.{lease}")
}

/// The lease a release marker on `subject` releases (`None` for any other subject).
fn released_lease(subject: &str) -> Option<&str> {
    subject
        .strip_prefix(RELEASED_PREFIX)
        .and_then(|rest| rest.strip_prefix('.'))
}

/// The verdict of a cluster-wide check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Under the limit.
    Allowed,
    /// Over the limit across the cluster.
    Refused,
    /// The cluster's view is incomplete (NATS down or still being read): only per-node
    /// limits apply.
    Unknown,
}

/// Leases refreshed in one go before pausing (see `ClusterLimits::run`).
const REFRESH_BATCH: usize = 100;

/// A stream query NATS could not answer: the node applies per-node limits only.
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

/// The caps the view reconciles, and the address rate it keeps attempts for.
#[derive(Debug, Clone)]
pub struct Caps {
    /// `limits.max_sessions_per_alias`.
    pub per_alias: usize,
    /// Per-user caps by scope (`rooms-user` → `rooms.max_connections_per_user`).
    pub per_scope: Vec<(String, usize)>,
    /// `limits.connections_per_ip_per_minute`.
    pub per_minute: u32,
}

/// Work for the publisher task, in the order connects and closes asked for it.
enum Op {
    /// A lease taken: refresh it until released, and publish it now unless the
    /// connect already did (`published`).
    Acquire { subject: Arc<str>, published: bool },
    /// A lease given back: stop refreshing it, publish its release marker, purge it.
    Release {
        subject: Arc<str>,
        done: Option<oneshot::Sender<()>>,
    },
    /// A connection attempt from an address (its subject token), published within
    /// [`ATTEMPT_BATCH`] with the others from the same address.
    Attempt(String),
    /// The feed (re)started on a stream that may have lost the leases: publish them all.
    RefreshNow,
}

/// Cluster-wide counters of one node.
pub struct ClusterLimits {
    jetstream: jetstream::Context,
    /// The NATS client under `jetstream`.
    client: async_nats::Client,
    /// This node's name as the payload of its attempts.
    node_payload: bytes::Bytes,
    node: String,
    replicas: usize,
    /// How long a lease lives without a refresh (`limits.lease_ttl`); refreshed at a third.
    lease_ttl: Duration,
    /// What the node knows of the cluster's leases and attempts.
    view: Mutex<View>,
    /// To the publisher task (`run`).
    ops: mpsc::UnboundedSender<Op>,
    next_lease: AtomicU64,
    /// Throttles the "degraded to per-node limits" warning.
    last_warning: Mutex<Option<std::time::Instant>>,
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

/// The lease family of a capped scope (`alias`, `rooms-user`).
fn scope_family(scope: &str) -> String {
    format!("{SESSION_PREFIX}.{scope}")
}

impl ClusterLimits {
    /// Limits for `node` over the given JetStream context, reconciling `caps`; starts the
    /// feed that keeps the view and the task that publishes and refreshes leases.
    pub fn start(
        jetstream: jetstream::Context,
        node: &str,
        replicas: usize,
        lease_ttl: Duration,
        caps: Caps,
    ) -> Arc<ClusterLimits> {
        let node = node.replace(['.', ' ', '*', '>'], "-");
        let mut families: HashMap<String, usize> = caps
            .per_scope
            .iter()
            .map(|(scope, cap)| (scope_family(scope), *cap))
            .collect();
        families.insert(scope_family("alias"), caps.per_alias);
        let (ops, rx) = mpsc::unbounded_channel();
        let limits = Arc::new(ClusterLimits {
            client: jetstream.client(),
            node_payload: bytes::Bytes::from(node.clone()),
            jetstream,
            view: Mutex::new(View::new(&node, lease_ttl, families, caps.per_minute)),
            node,
            replicas,
            lease_ttl,
            ops,
            next_lease: AtomicU64::new(1),
            last_warning: Mutex::default(),
        });
        tokio::spawn(Arc::clone(&limits).run(rx));
        tokio::spawn(Arc::clone(&limits).follow());
        limits
    }

    /// Other nodes' session leases this node's view holds (`herald_cluster_remote_leases`).
    pub fn remote_leases(&self) -> usize {
        self.view().remote_leases()
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        // Every update leaves the view consistent, so a panic elsewhere cannot corrupt it.
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn ensure_streams(&self) -> Result<(), CheckError> {
        let sessions = stream::Config {
            name: SESSIONS_STREAM.into(),
            subjects: vec![
                format!("{SESSION_PREFIX}.>"),
                format!("{USER_PREFIX}.>"),
                format!("{NODE_PREFIX}.>"),
                format!("{RELEASED_PREFIX}.>"),
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
        Ok(())
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

    /// Runs a stream query with the timeout, creating the streams once if they are missing.
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
        let mut last = self.last_warning.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|at| at.elapsed() > Duration::from_secs(30)) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(check = what, %error, "cluster-wide limit unavailable: applying per-node limits only");
        }
    }

    /// Counts one connection attempt from `ip`; refused past `per_minute` across the
    /// cluster, from the view (no round trip).
    pub fn connection_attempt(&self, ip: IpAddr, per_minute: u32) -> Verdict {
        let address = address_token(ip);
        let verdict = self.view().attempt(&address, per_minute);
        if verdict == Verdict::Unknown {
            self.warn_degraded(
                "connections_per_ip_per_minute",
                &"the cluster's attempts are not known yet (NATS down or being read)",
            );
        }
        // Published even when unknown: other nodes count it if NATS is up.
        let _ = self.ops.send(Op::Attempt(address));
        verdict
    }

    /// Takes a place under `alias_id`'s cap of `max` sessions across the cluster, from
    /// the view (no round trip). While the view is unknown the place is given by the
    /// per-node limits alone, and the lease still counts once the stream has it.
    pub fn acquire_session(self: &Arc<Self>, alias_id: &str, max: usize) -> Result<Lease, OverCap> {
        self.acquire_scoped("alias", alias_id, max, "max_sessions_per_alias")
    }

    /// Takes a place under the cap of `max` sessions of `key` within `scope` (a subject
    /// token such as `alias` or `rooms-user`) across the cluster; `limit` names the setting
    /// in degraded-mode warnings. `key` may be any string (a JWT `sub`, say): it is
    /// escaped into one subject token.
    pub fn acquire_scoped(
        self: &Arc<Self>,
        scope: &str,
        key: &str,
        max: usize,
        limit: &str,
    ) -> Result<Lease, OverCap> {
        self.acquire(&scope_family(scope), key, max, limit)
            .map(|(lease, _)| lease)
    }

    /// Takes a lease for a `/ws` session of `user_id` (no cap): with the number of the
    /// user's sessions across the cluster in the view, this one included (1 = the user
    /// just came online); `None` when the view is unknown (ask [`Self::confirm_user`]).
    pub fn acquire_user(self: &Arc<Self>, user_id: &str) -> (Lease, Option<usize>) {
        match self.acquire(USER_PREFIX, user_id, usize::MAX, "presence") {
            Ok(taken) => taken,
            Err(_) => unreachable!("a lease without a cap is never refused"),
        }
    }

    /// The number of `user_id`'s sessions across the cluster, `lease` (just taken)
    /// included, asked of the stream: stores the lease (acknowledged) and counts. For
    /// when the view could not tell (it is being read, NATS is slow); `None` when NATS
    /// does not answer either.
    pub async fn confirm_user(&self, user_id: &str, lease: &Lease) -> Option<usize> {
        let subject = lease.subject().to_owned();
        let filter = format!("{USER_PREFIX}.{}.>", key_token(user_id));
        self.checked("presence", || async {
            self.jetstream
                .publish(subject.clone(), bytes::Bytes::new())
                .await
                .map_err(CheckError::from_nats)?
                .await
                .map_err(CheckError::from_nats)?;
            self.subjects(SESSIONS_STREAM, &filter)
                .await
                .map(|s| s.len())
        })
        .await
    }

    /// The number of `user_id`'s `/ws` sessions across the cluster; `None` when unknown.
    pub async fn user_sessions(&self, user_id: &str) -> Option<usize> {
        let filter = format!("{USER_PREFIX}.{}.>", key_token(user_id));
        self.checked("user_sessions", || async {
            self.subjects(SESSIONS_STREAM, &filter)
                .await
                .map(|s| s.len())
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
    pub async fn user_leases(&self) -> Option<HashMap<String, Vec<String>>> {
        let filter = format!("{USER_PREFIX}.>");
        let subjects = self
            .checked("user_leases", || self.subjects(SESSIONS_STREAM, &filter))
            .await?;
        let mut users: HashMap<String, Vec<String>> = Default::default();
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

    /// Takes a place under `key`'s cap of `max` leases in the `family`, from the view,
    /// with the count seen (this lease included); `limit` names the cap in warnings.
    /// Capped leases are taken even while the view is unknown (per-node limits decide).
    fn acquire(
        self: &Arc<Self>,
        family: &str,
        key: &str,
        max: usize,
        limit: &str,
    ) -> Result<(Lease, Option<usize>), OverCap> {
        let family_key = format!("{family}.{}", key_token(key));
        let id = self.next_lease.fetch_add(1, Ordering::Relaxed);
        let capped = max != usize::MAX;
        let (reclaim, reclaimed) = if capped {
            let (tx, rx) = futures_channel::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let loading = self.client.connection_state() == async_nats::connection::State::Connected;
        let admission = self.view().admit(&family_key, id, max, reclaim, loading);
        let counted = match admission {
            Admission::Refused(n) => {
                return Err(OverCap {
                    sessions: n + 1,
                    max,
                })
            }
            Admission::Unknown => {
                self.warn_degraded(
                    limit,
                    &"the cluster's leases are not known yet (NATS down or being read)",
                );
                None
            }
            Admission::Allowed(n) => Some(n),
        };
        tracing::debug!(
            key = family_key,
            lease = id,
            ?counted,
            "cluster lease taken"
        );
        let subject: Arc<str> = Arc::from(format!("{family_key}.{}.{id}", self.node));
        let published = self.publish_now(&subject, bytes::Bytes::new());
        let _ = self.ops.send(Op::Acquire {
            subject: Arc::clone(&subject),
            published,
        });
        Ok((
            Lease {
                subject: Some(subject),
                limits: Arc::clone(self),
                reclaimed,
            },
            counted,
        ))
    }

    /// Publishes on the caller's thread if the NATS client takes it at once (its queue
    /// has room: no waiting), which spares the lease a hop to the publisher task and so
    /// shortens the window in which another node does not see it yet. `false` when it
    /// could not (queue full, NATS down): the publisher task does it.
    fn publish_now(&self, subject: &str, payload: bytes::Bytes) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self
                .client
                .publish(subject.to_owned(), payload)
                .now_or_never()
                .is_some_and(|sent| sent.is_ok())
    }

    /// Forgets an own lease in the view and has the publisher release it.
    fn give_back(&self, subject: Arc<str>, done: Option<oneshot::Sender<()>>) {
        if let Some((family_key, _, id)) = view::parse_lease(&subject) {
            self.view().release(family_key, id);
        }
        let _ = self.ops.send(Op::Release { subject, done });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_release_marker_names_its_lease() {
        let lease = "herald.limits.session.alias.a1.node-1.7";
        let marker = release_marker(lease);
        assert!(marker.starts_with("herald.limits.released."), "{marker}");
        assert_eq!(released_lease(&marker), Some(lease));
        assert_eq!(released_lease(lease), None);
    }

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
