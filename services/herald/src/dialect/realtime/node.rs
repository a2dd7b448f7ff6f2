//! What `/ws` keeps per node, shared by its sessions: delivery reports for `Ack`s, the
//! queues of direct messages for offline users, and presence (who is online anywhere).
//!
//! - **Ack counts.** A client Broadcast or DirectMessage is stored with a reserved `ack`
//!   field naming a reply subject `herald.realtime.ack.<node tag>.<message_id>` (core
//!   NATS, never stored; each node keeps one subscription to its own `…<tag>.*`). Every node's registry that fans the event out calls the [`DeliveryObserver`],
//!   which publishes `{"connections": [ids]}` for the sessions it queued the event to;
//!   the sender's node sums the reports received within `realtime.ack_wait`.
//! - **Offline queues.** A direct message to a user with no session is stored on
//!   `herald.v1.user.<id>` like any other; the node records "replay from seq S" for that
//!   user (JetStream KV bucket `HERALD_DM_QUEUE`, entries expire after
//!   `realtime.dm_queue_ttl`; a map in memory mode). The user's next session joins its
//!   user registry with `since = S`, so the queued messages arrive in order before live ones.
//! - **Presence.** Each session holds a user lease in the cluster-limits stream
//!   ([`ClusterLimits::acquire_user`]); the first lease of a user publishes `Presence
//!   online`, releasing the last publishes `offline`. Leases of a killed node expire after
//!   `limits.lease_ttl`; every node compares snapshots of the user leases every half TTL
//!   and publishes `offline` for users that vanished. Both paths derive the same
//!   `Nats-Msg-Id` from the vanished leases, so JetStream's dedup window keeps one event.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::acks::{self, AckReporter, Pending, Reports, ACK_FIELD, ACK_PREFIX};
use crate::bus::{Bus, BusMessage};
use crate::cluster_limits::{ClusterLimits, Lease};
use crate::config::Settings;
use crate::registry::{DeliveryObserver, SessionId};
use herald_protocol::now_ms;

/// The KV bucket of offline direct-message queues.
const QUEUE_BUCKET: &str = "HERALD_DM_QUEUE";
/// Read-modify-write attempts on a queue entry before giving up (contention is rare).
const QUEUE_CAS_ATTEMPTS: usize = 8;

/// Why an offline user's direct-message queue was not read or written (the sender may retry).
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// A memory-bus node already holds the most queues it may.
    #[error(
        "the node holds queues for {0} offline users (realtime.dm_queue_users_max); retry later"
    )]
    Full(usize),
    /// Other writers kept changing the queue.
    #[error("the offline queue of {0} changed {QUEUE_CAS_ATTEMPTS} times while writing; retry")]
    Contended(String),
    /// The node runs on the memory bus, which has no KV store.
    #[error("no KV store on the memory bus")]
    NoStore,
    /// The KV bucket could not be opened (NATS down, say).
    #[error("cannot open KV bucket {QUEUE_BUCKET}: {0}")]
    Open(#[source] crate::bus::Source),
    /// A KV read failed.
    #[error("{0}")]
    Read(#[source] crate::bus::Source),
    /// The queue entry could not be encoded.
    #[error(transparent)]
    Encode(#[from] serde_json::Error),
}

/// Where an offline user's queued direct messages start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Queued {
    /// Replay the user's subject after this sequence.
    since: u64,
    /// Messages queued so far (checked against `realtime.dm_queue_max`).
    count: usize,
}

/// The offline queues: JetStream KV in NATS mode, a map in memory mode.
enum Queues {
    Memory(Mutex<HashMap<String, (Queued, Instant)>>),
    Nats {
        jetstream: jetstream::Context,
        store: Box<tokio::sync::OnceCell<kv::Store>>,
        replicas: usize,
    },
}

/// Node-wide `/ws` state.
pub struct RealtimeNode {
    /// Prefix of this node's connection ids, so ids are unique across the cluster.
    tag: String,
    bus: Bus,
    cluster: Option<Arc<ClusterLimits>>,
    /// `realtime.dm_queue_ttl`.
    queue_ttl: Duration,
    /// `realtime.dm_queue_users_max`: users with a queue on a memory-bus node, so DMs to
    /// a million made-up users cannot grow the map without end.
    queue_users_max: usize,
    queues: Queues,
    /// `/ws` sessions per user on this node (presence on the memory bus).
    local_users: Mutex<HashMap<String, usize>>,
    /// Reports awaited by this node's senders, fed by one long-lived subscription to
    /// `herald.realtime.ack.<tag>.*` (a subscription per message would race NATS's
    /// interest propagation between servers and cost a SUB/UNSUB each).
    pending: Pending,
    /// Set once that subscription exists.
    inbox_ready: tokio::sync::watch::Receiver<bool>,
}

/// A session's presence: its lease in the cluster (NATS), released when it closes.
pub struct PresenceLease(Option<Lease>);

impl RealtimeNode {
    /// The node's `/ws` state; in NATS mode also starts the presence reaper.
    pub fn new(settings: &Settings, bus: &Bus, cluster: Option<Arc<ClusterLimits>>) -> Arc<Self> {
        let queues = match bus {
            Bus::Memory(_) => Queues::Memory(Mutex::default()),
            Bus::Nats(nats) => Queues::Nats {
                jetstream: nats.jetstream().clone(),
                store: Box::default(),
                replicas: settings.bus.nats.stream_replicas,
            },
        };
        let (ready_tx, inbox_ready) = tokio::sync::watch::channel(false);
        let node = Arc::new(RealtimeNode {
            tag: format!("{:08x}", rand::random::<u32>()),
            bus: bus.clone(),
            cluster,
            queue_ttl: settings.realtime.dm_queue_ttl.min(settings.bus.retention),
            queue_users_max: settings.realtime.dm_queue_users_max,
            queues,
            local_users: Mutex::default(),
            pending: Pending::default(),
            inbox_ready,
        });
        tokio::spawn(Arc::clone(&node).route_reports(ready_tx));
        if node.cluster.is_some() {
            tokio::spawn(Arc::clone(&node).reap_presence(settings.limits.lease_ttl / 2));
        }
        node
    }

    /// The cluster-unique id of a session of this node.
    pub fn connection_id(&self, session: SessionId) -> String {
        format!("{}-{session}", self.tag)
    }

    /// The registry observer that reports who received a client Broadcast/DirectMessage.
    pub fn delivery_observer(&self) -> Arc<dyn DeliveryObserver> {
        Arc::new(AckReporter {
            bus: self.bus.clone(),
            tag: self.tag.clone(),
        })
    }

    /// This node's connection-id prefix.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Stores `message` (its payload plus this node's report subject for it), having
    /// registered for its reports first: the stored sequence and the reports to
    /// `Reports::collect`.
    pub async fn publish_counted(
        &self,
        mut message: BusMessage,
        message_id: &str,
        mut payload: serde_json::Map<String, Value>,
    ) -> Result<(Option<u64>, Reports), crate::bus::BusError> {
        let mut ready = self.inbox_ready.clone();
        // Only at startup, before the node's report subscription exists.
        let _ = tokio::time::timeout(Duration::from_secs(5), ready.wait_for(|r| *r)).await;
        let reports = self.pending.register(message_id);
        let reply = format!("{ACK_PREFIX}.{}.{message_id}", self.tag);
        payload.insert(ACK_FIELD.into(), reply.into());
        message.payload = json!({ "payload": payload }).to_string().into();
        let ack = self.bus.publish(message).await?;
        Ok((ack.seq, reports))
    }

    /// Routes the reports on this node's subject to the senders awaiting them, for the
    /// node's lifetime (resubscribing if the bus ends the subscription).
    async fn route_reports(self: Arc<Self>, ready: tokio::sync::watch::Sender<bool>) {
        let pattern = format!("{ACK_PREFIX}.{}.*", self.tag);
        loop {
            let mut reports = match self.bus.subscribe(&pattern).await {
                Ok(reports) => reports,
                Err(error) => {
                    tracing::error!(%error, "cannot subscribe to /ws delivery reports; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let _ = ready.send(true);
            while let Some(report) = reports.next().await {
                let Some(message_id) = report.subject.rsplit('.').next() else {
                    continue;
                };
                if let Some(connections) = acks::reported_connections(&report.payload) {
                    self.pending.route(message_id, connections);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Registers a session of `user_id`: takes its presence lease and says whether the
    /// user just came online (its first session anywhere).
    pub async fn session_opened(&self, user_id: &str) -> (PresenceLease, Option<String>) {
        let local = {
            let mut users = self.local_users.lock().expect("users lock");
            let n = users.entry(user_id.to_owned()).or_default();
            *n += 1;
            *n
        };
        match &self.cluster {
            Some(cluster) => {
                let (lease, counted) = cluster.acquire_user(user_id);
                let counted = match counted {
                    Some(n) => Some(n),
                    // The view is being read (at start, after a reconnect): ask the stream.
                    None => cluster.confirm_user(user_id, &lease).await,
                };
                let first = (counted == Some(1)).then(|| format!("online-{}", lease.subject()));
                (PresenceLease(Some(lease)), first)
            }
            None => (
                PresenceLease(None),
                (local == 1).then(|| format!("online-{}-{}", self.tag, now_ms())),
            ),
        }
    }

    /// Unregisters a session: releases its lease and says whether the user went offline
    /// (with the dedup id of that event).
    pub async fn session_closed(&self, user_id: &str, lease: PresenceLease) -> Option<String> {
        let local = {
            let mut users = self.local_users.lock().expect("users lock");
            let n = users.entry(user_id.to_owned()).or_default();
            *n = n.saturating_sub(1);
            let n = *n;
            if n == 0 {
                users.remove(user_id);
            }
            n
        };
        match (&self.cluster, lease.0) {
            (Some(cluster), Some(lease)) => {
                let subject = lease.subject().to_owned();
                lease.release().await;
                (cluster.user_sessions(user_id).await == Some(0))
                    .then(|| offline_id(std::slice::from_ref(&subject)))
            }
            (Some(_), None) => None,
            (None, _) => (local == 0).then(|| format!("offline-{}-{}", self.tag, now_ms())),
        }
    }

    /// How many sessions `user_id` has (across the cluster in NATS mode); `None` unknown.
    pub async fn user_sessions(&self, user_id: &str) -> Option<usize> {
        match &self.cluster {
            Some(cluster) => cluster.user_sessions(user_id).await,
            None => Some(
                self.local_users
                    .lock()
                    .expect("users lock")
                    .get(user_id)
                    .copied()
                    .unwrap_or(0),
            ),
        }
    }

    /// Publishes a `Presence` event on `herald.v1.topic.presence.<user_id>`.
    pub async fn publish_presence(&self, user_id: &str, online: bool, dedup_id: String) {
        let payload = json!({
            "type": "Presence",
            "data": {
                "user_id": user_id,
                "status": if online { "online" } else { "offline" },
                // Seconds, like every time field inside a /ws `data` (document 003).
                "last_seen": now_ms() / 1000,
                "metadata": {},
            },
        });
        let message = BusMessage {
            subject: format!("herald.v1.topic.presence.{user_id}"),
            payload: json!({ "payload": payload }).to_string().into(),
            json: true,
            msg_id: Some(format!("presence-{user_id}-{dedup_id}")),
            ..Default::default()
        };
        if let Err(error) = self.bus.publish(message).await {
            tracing::warn!(%error, user_id, "cannot publish presence");
        }
    }

    /// Every half lease TTL: users whose leases all vanished since the last look (their
    /// node died, or their last session closed) are announced offline.
    async fn reap_presence(self: Arc<Self>, every: Duration) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut tick = tokio::time::interval(every.max(Duration::from_millis(200)));
        // How long a vanished user whose nodes all look alive is watched: a dead node's
        // own lease can outlive its sessions' by a moment.
        let grace = every * 6;
        let mut previous: HashMap<String, Vec<String>> = HashMap::new();
        let mut pending: HashMap<String, (Vec<String>, Instant)> = HashMap::new();
        loop {
            tick.tick().await;
            let Some(current) = cluster.user_leases().await else {
                continue;
            };
            for (user, leases) in previous.drain() {
                if !current.contains_key(&user) {
                    pending.entry(user).or_insert((leases, Instant::now()));
                }
            }
            pending.retain(|user, _| !current.contains_key(user));
            if !pending.is_empty() {
                if let Some(live) = cluster.live_nodes().await {
                    let mut gone = Vec::new();
                    pending.retain(|user, (leases, since)| {
                        // Leases of live nodes were released by their sessions, which
                        // announced the user offline themselves.
                        let expired = leases.iter().any(|l| {
                            ClusterLimits::node_of(l).is_some_and(|node| !live.contains(node))
                        });
                        if expired {
                            gone.push((user.clone(), std::mem::take(leases)));
                        }
                        !expired && since.elapsed() < grace
                    });
                    for (user, leases) in gone {
                        self.publish_presence(&user, false, offline_id(&leases))
                            .await;
                    }
                }
            }
            previous = current;
        }
    }

    /// How many direct messages are queued for `user_id`.
    pub async fn queued(&self, user_id: &str) -> Result<usize, QueueError> {
        Ok(self.queue_entry(user_id).await?.map_or(0, |(q, _)| q.count))
    }

    /// Whether a message to offline `user_id` can be queued: on a memory-bus node, the
    /// user already has a queue or fewer than `realtime.dm_queue_users_max` users do
    /// (expired queues are dropped to make room). In NATS mode the KV bucket holds them.
    pub fn queue_has_room(&self, user_id: &str) -> bool {
        let Queues::Memory(map) = &self.queues else {
            return true;
        };
        let mut map = map.lock().expect("queue lock");
        self.make_room(&mut map, user_id)
    }

    fn make_room(&self, map: &mut HashMap<String, (Queued, Instant)>, user_id: &str) -> bool {
        if map.contains_key(user_id) || map.len() < self.queue_users_max {
            return true;
        }
        map.retain(|_, (_, at)| at.elapsed() <= self.queue_ttl);
        if map.capacity() > 4 * map.len() + 1024 {
            map.shrink_to_fit();
        }
        map.len() < self.queue_users_max
    }

    /// Records that a direct message stored at `seq` waits for `user_id`. Concurrent
    /// writers (other nodes, other senders) are resolved with the KV revision: the
    /// earliest `since` wins and every message is counted.
    pub async fn enqueue(&self, user_id: &str, seq: u64) -> Result<(), QueueError> {
        let add = |old: Option<Queued>| match old {
            Some(q) => Queued {
                since: q.since.min(seq.saturating_sub(1)),
                count: q.count + 1,
            },
            None => Queued {
                since: seq.saturating_sub(1),
                count: 1,
            },
        };
        if let Queues::Memory(map) = &self.queues {
            let mut map = map.lock().expect("queue lock");
            if !self.make_room(&mut map, user_id) {
                return Err(QueueError::Full(self.queue_users_max));
            }
            let old = map
                .get(user_id)
                .filter(|(_, at)| at.elapsed() <= self.queue_ttl)
                .map(|(q, _)| *q);
            let at = map.get(user_id).map_or_else(Instant::now, |(_, at)| *at);
            map.insert(user_id.to_owned(), (add(old), at));
            return Ok(());
        }
        let store = self.store().await?;
        for _ in 0..QUEUE_CAS_ATTEMPTS {
            let (old, revision) = match self.queue_entry(user_id).await? {
                Some((q, revision)) => (Some(q), revision),
                None => (None, None),
            };
            let value: bytes::Bytes = serde_json::to_vec(&add(old))?.into();
            let written = match revision {
                Some(revision) => store.update(user_id, value, revision).await.is_ok(),
                None => store.create(user_id, value).await.is_ok(),
            };
            if written {
                return Ok(());
            }
        }
        Err(QueueError::Contended(user_id.to_owned()))
    }

    /// Takes `user_id`'s queue: the sequence its replay starts after, if messages wait.
    pub async fn take_queue(&self, user_id: &str) -> Option<u64> {
        if let Queues::Memory(map) = &self.queues {
            let (queued, at) = map.lock().expect("queue lock").remove(user_id)?;
            return (at.elapsed() <= self.queue_ttl).then_some(queued.since);
        }
        let store = self.store().await.ok()?;
        for _ in 0..QUEUE_CAS_ATTEMPTS {
            let (queued, revision) = self.queue_entry(user_id).await.ok()??;
            // Only the version read is deleted: a message queued meanwhile is not lost.
            if store
                .delete_expect_revision(user_id, revision)
                .await
                .is_ok()
            {
                return Some(queued.since);
            }
        }
        None
    }

    /// The queue entry of `user_id` and its KV revision (`None` in memory mode).
    async fn queue_entry(
        &self,
        user_id: &str,
    ) -> Result<Option<(Queued, Option<u64>)>, QueueError> {
        match &self.queues {
            Queues::Memory(map) => {
                let map = map.lock().expect("queue lock");
                Ok(map
                    .get(user_id)
                    .filter(|(_, at)| at.elapsed() <= self.queue_ttl)
                    .map(|(q, _)| (*q, None)))
            }
            Queues::Nats { .. } => {
                let store = self.store().await?;
                let entry = store
                    .entry(user_id)
                    .await
                    .map_err(|e| QueueError::Read(e.into()))?;
                Ok(entry
                    .filter(|e| e.operation == kv::Operation::Put)
                    .and_then(|e| {
                        serde_json::from_slice(&e.value)
                            .ok()
                            .map(|q| (q, Some(e.revision)))
                    }))
            }
        }
    }

    /// The KV bucket, created on first use (NATS may be down when the node starts).
    async fn store(&self) -> Result<&kv::Store, QueueError> {
        let Queues::Nats {
            jetstream,
            store,
            replicas,
        } = &self.queues
        else {
            return Err(QueueError::NoStore);
        };
        store
            .get_or_try_init(|| async {
                jetstream
                    .create_key_value(kv::Config {
                        bucket: QUEUE_BUCKET.into(),
                        description: "herald /ws: offline users' direct-message queues".into(),
                        history: 1,
                        max_age: self.queue_ttl,
                        num_replicas: *replicas,
                        storage: jetstream::stream::StorageType::File,
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| QueueError::Open(e.into()))
            })
            .await
    }
}

/// The dedup id of an "offline" event: the same on every node that saw the same leases go.
fn offline_id(leases: &[String]) -> String {
    use sha2::Digest;
    let mut sorted = leases.to_vec();
    sorted.sort();
    let digest = sha2::Sha256::digest(sorted.join(",").as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("offline-{hex}")
}
