//! The NATS bus. Every routed event is stored in one JetStream stream (retention
//! `bus.retention`, dedup `bus.dedup_window`), which RePublishes each stored message to
//! `herald.live.…` with its stream sequence in the headers. Registries subscribe with core
//! NATS to the live subject of their key only, so a node receives just the keys its
//! sessions need; `since` replays read the stream through an ordered consumer filtered to
//! the key.
//!
//! ```text
//! producer ──► herald.v1.alias.A.newMessage ──► stream HERALD (seq 42)
//!                                                  └─ RePublish ──► herald.live.alias.A.newMessage
//!                                                                   (Nats-Sequence: 42) ──► registry(A)
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use herald_protocol::subject;
use tokio::sync::watch;

use super::{
    is_streamed, BusError, BusMessage, PublishAck, Replay, Source, Subscription, MAX_REPLAY,
};
use crate::config::{BusSettings, StreamStorage};
use crate::metrics;

const JSON: &str = "application/json";
const CONTENT_TYPE: &str = "Content-Type";
const NATS_MESSAGE_ID: &str = "Nats-Msg-Id";
/// Longest a node waits for the stream's state when it only wants a hint.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a replay waits for the next stored message before giving up.
const REPLAY_STALL: Duration = Duration::from_secs(5);

/// The oldest nats-server herald works with: 2.9 answers the JetStream KV and stream
/// requests herald makes (the direct-message queue, stream RePublish) in shapes the
/// client cannot read, and fails deep inside the first direct message.
pub const MIN_SERVER_VERSION: semver::Version = semver::Version::new(2, 10, 0);

/// What is known about the connected server's version.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ServerVersion {
    /// Just (re)connected: not checked yet, so not ready.
    Unchecked,
    /// At least [`MIN_SERVER_VERSION`].
    Supported,
    /// Too old or unreadable: why, for `/readyz` and the log.
    Unsupported(String),
}

/// Checks the version a server announced in its INFO.
fn check_server_version(found: &str) -> ServerVersion {
    let parsed = semver::Version::parse(found.trim_start_matches('v'));
    match parsed {
        // A pre-release of the minimum (2.10.0-RC.1) already has what herald needs.
        Ok(v) if (v.major, v.minor, v.patch) >= (2, 10, 0) => ServerVersion::Supported,
        Ok(_) => ServerVersion::Unsupported(format!(
            "NATS server {found} is too old: herald needs nats-server {MIN_SERVER_VERSION} or newer (JetStream KV and stream RePublish); upgrade the server (Debian's nats-server package is 2.9: use the release from nats.io)"
        )),
        Err(e) => ServerVersion::Unsupported(format!(
            "NATS server announced version {found:?}, which is not a version ({e}): herald needs nats-server {MIN_SERVER_VERSION} or newer"
        )),
    }
}

pub use herald_protocol::subject::live_subject;

/// A NATS connection shared by every registry of the node.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream_name: String,
    connected: Arc<AtomicBool>,
    /// The connected server's version, checked on every (re)connection.
    server_version: Arc<std::sync::Mutex<ServerVersion>>,
    stream_ready: Arc<AtomicBool>,
    /// Bumped on every (re)connection, so registries can fill what they missed meanwhile.
    reconnects: watch::Receiver<u64>,
}

impl NatsBus {
    /// Connects in the background: returns at once even when NATS is down (`/readyz`
    /// says so), and (re)creates the stream on every connection.
    pub async fn connect(settings: &BusSettings, node_name: &str) -> Result<NatsBus, BusError> {
        let nats = &settings.nats;
        let connected = Arc::new(AtomicBool::new(false));
        let server_version = Arc::new(std::sync::Mutex::new(ServerVersion::Unchecked));
        let (reconnect_tx, reconnects) = watch::channel(0u64);
        let flag = Arc::clone(&connected);
        let version = Arc::clone(&server_version);
        let mut options = async_nats::ConnectOptions::new()
            .name(node_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let flag = Arc::clone(&flag);
                let version = Arc::clone(&version);
                let reconnect_tx = reconnect_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            // Possibly another server of the cluster: not ready until
                            // keep_stream has read its version.
                            *lock(&version) = ServerVersion::Unchecked;
                            flag.store(true, Ordering::SeqCst);
                            metrics::bus_connected(true);
                            reconnect_tx.send_modify(|n| *n += 1);
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            flag.store(false, Ordering::SeqCst);
                            metrics::bus_connected(false);
                            tracing::warn!(
                                "disconnected from NATS; sessions stay open, reconnecting"
                            );
                        }
                        other => tracing::info!(event = %other, "NATS connection event"),
                    }
                }
            });
        if !nats.user.is_empty() {
            options =
                options.user_and_password(nats.user.clone(), nats.password.expose().to_owned());
        }
        if !nats.token.is_empty() {
            options = options.token(nats.token.expose().to_owned());
        }
        if !nats.nkey_seed.is_empty() {
            options = options.nkey(nats.nkey_seed.expose().to_owned());
        }
        if !nats.creds_file.is_empty() {
            options = options
                .credentials_file(&nats.creds_file)
                .await
                .map_err(|e| BusError::Connect {
                    context: format!("bus.nats.creds_file {:?} is unreadable", nats.creds_file),
                    source: e.into(),
                })?;
        }
        if !nats.tls_ca_file.is_empty() {
            options = options.add_root_certificates(PathBuf::from(&nats.tls_ca_file));
        }
        if !nats.tls_cert_file.is_empty() {
            options = options.add_client_certificate(
                PathBuf::from(&nats.tls_cert_file),
                PathBuf::from(&nats.tls_key_file),
            );
        }
        if nats.tls_required {
            options = options.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = nats
            .urls
            .iter()
            .map(|u| {
                u.parse().map_err(|e| BusError::Connect {
                    context: format!("bus.nats.urls entry {u:?}"),
                    source: Box::new(e),
                })
            })
            .collect::<Result<_, _>>()?;
        let client = options.connect(urls).await.map_err(|e| BusError::Connect {
            context: "connecting to bus.nats.urls".into(),
            source: e.into(),
        })?;
        let bus = NatsBus {
            jetstream: jetstream::new(client.clone()),
            client,
            stream_name: nats.stream_name.clone(),
            connected,
            server_version,
            stream_ready: Arc::new(AtomicBool::new(false)),
            reconnects,
        };
        tokio::spawn(bus.clone().keep_stream(stream_config(settings)));
        Ok(bus)
    }

    /// Creates or updates the stream on every connection, retrying until it succeeds.
    async fn keep_stream(self, config: stream::Config) {
        let mut reconnects = self.reconnects.clone();
        loop {
            if reconnects.wait_for(|n| *n > 0).await.is_err() {
                return;
            }
            reconnects.mark_unchanged();
            let found = self.client.server_info().version;
            let version = check_server_version(&found);
            *lock(&self.server_version) = version.clone();
            if let ServerVersion::Unsupported(problem) = version {
                self.stream_ready.store(false, Ordering::SeqCst);
                tracing::error!(found = %found, needed = %MIN_SERVER_VERSION, "{problem}; /readyz stays 503");
                if reconnects.changed().await.is_err() {
                    return;
                }
                continue;
            }
            loop {
                match self.jetstream.create_or_update_stream(config.clone()).await {
                    Ok(_) => {
                        self.stream_ready.store(true, Ordering::SeqCst);
                        tracing::info!(stream = %config.name, "JetStream stream ready");
                        break;
                    }
                    Err(error) => {
                        self.stream_ready.store(false, Ordering::SeqCst);
                        tracing::error!(
                            stream = %config.name, %error,
                            "cannot create or update the JetStream stream (is JetStream enabled for this account? start nats-server with -js); retrying in 2s"
                        );
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
            if reconnects.changed().await.is_err() {
                return;
            }
        }
    }

    /// The JetStream context (cluster-wide limits keep their counters there).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// The underlying client, for request/reply users (auth callout, custom types).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Fires after every (re)connection from now on (connections before the call are
    /// marked seen, so a new registry does not mistake the first connect for a gap).
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        let mut receiver = self.reconnects.clone();
        receiver.mark_unchanged();
        receiver
    }

    /// Whether the connection is up, to a server herald supports, and the stream exists.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
            && *lock(&self.server_version) == ServerVersion::Supported
            && self.stream_ready.load(Ordering::SeqCst)
    }

    /// Why the bus cannot carry events, when the server is one herald does not support.
    pub fn unsupported_server(&self) -> Option<String> {
        match &*lock(&self.server_version) {
            ServerVersion::Unsupported(problem) => Some(problem.clone()),
            _ => None,
        }
    }

    /// Subscribes to the live (republished) subjects of a stored `pattern`, or to the
    /// subject itself for control subjects; the stream unsubscribes when dropped.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        let subject = if is_streamed(pattern) {
            live_subject(pattern)
        } else {
            pattern.to_owned()
        };
        let subscriber = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| BusError::Subscribe {
                subject: pattern.to_owned(),
                source: e.into(),
            })?;
        Ok(subscriber.map(from_nats).boxed())
    }

    /// Publishes one message: stored subjects through JetStream (acknowledged, with the
    /// sequence and dedup verdict), others with core NATS.
    pub async fn publish(&self, message: BusMessage) -> Result<PublishAck, BusError> {
        let headers = to_headers(&message);
        let subject = message.subject.clone();
        let err = |e: Source| BusError::Publish {
            subject: subject.clone(),
            source: e,
        };
        if is_streamed(&message.subject) {
            let ack = self
                .jetstream
                .publish_with_headers(message.subject, headers, message.payload)
                .await
                .map_err(|e| err(e.into()))?
                .await
                .map_err(|e| err(e.into()))?;
            return Ok(PublishAck {
                seq: Some(ack.sequence),
                duplicate: ack.duplicate,
            });
        }
        self.client
            .publish_with_headers(message.subject, headers, message.payload)
            .await
            .map_err(|e| err(e.into()))?;
        self.client.flush().await.map_err(|e| err(e.into()))?;
        Ok(PublishAck::default())
    }

    /// The stream and its current state; errors name `subject`, the key being served.
    async fn stream(&self, subject: &str) -> Result<(stream::Stream, stream::State), BusError> {
        let err = |e: Source| BusError::Replay {
            subject: subject.to_owned(),
            source: e,
        };
        let stream = self
            .jetstream
            .get_stream(&self.stream_name)
            .await
            .map_err(|e| err(e.into()))?;
        let state = stream.get_info().await.map_err(|e| err(e.into()))?.state;
        Ok((stream, state))
    }

    /// The stream's last sequence; `None` while NATS is unreachable or slow, so a new
    /// registry (and its sessions) never waits on it.
    pub async fn last_sequence(&self) -> Result<Option<u64>, BusError> {
        if !self.is_connected() {
            return Ok(None);
        }
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.stream(&self.stream_name)).await {
            Ok(result) => Ok(Some(result?.1.last_sequence)),
            Err(_) => Ok(None),
        }
    }

    /// Every stored event matching `pattern` after `since`, read with an ordered consumer.
    pub async fn replay(&self, pattern: &str, since: u64) -> Result<Replay, BusError> {
        let err = |e: Source| BusError::Replay {
            subject: pattern.to_owned(),
            source: e,
        };
        let (stream, state) = self.stream(pattern).await?;
        if since > state.last_sequence || since.saturating_add(1) < state.first_sequence {
            return Ok(Replay::ResyncRequired);
        }
        if since == state.last_sequence {
            return Ok(Replay::Messages(Vec::new()));
        }
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: pattern.to_owned(),
                deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: since + 1,
                },
                ..Default::default()
            })
            .await
            .map_err(|e| err(e.into()))?;
        let pending = consumer
            .get_info()
            .await
            .map_err(|e| err(e.into()))?
            .num_pending;
        if pending as usize > MAX_REPLAY {
            return Ok(Replay::ResyncRequired);
        }
        let mut missed = Vec::with_capacity(pending as usize);
        if pending == 0 {
            return Ok(Replay::Messages(missed));
        }
        let mut messages = consumer.messages().await.map_err(|e| err(e.into()))?;
        loop {
            let next = tokio::time::timeout(REPLAY_STALL, messages.next())
                .await
                .map_err(|_| err("the stream stopped answering mid-replay".into()))?;
            let Some(message) = next else { break };
            let message = message.map_err(|e| err(e.into()))?;
            let info = message.info().map_err(&err)?;
            let (seq, remaining) = (info.stream_sequence, info.pending);
            let stored_ms = (info.published.unix_timestamp_nanos() / 1_000_000) as u64;
            let mut bus_message = from_nats(message.split().0);
            bus_message.seq = Some(seq);
            bus_message.stored_ms = Some(stored_ms);
            missed.push(bus_message);
            if remaining == 0 || missed.len() > MAX_REPLAY {
                break;
            }
        }
        Ok(Replay::Messages(missed))
    }
}

fn stream_config(settings: &BusSettings) -> stream::Config {
    stream::Config {
        name: settings.nats.stream_name.clone(),
        subjects: subject::stream_subjects(),
        max_age: settings.retention,
        duplicate_window: settings.dedup_window,
        num_replicas: settings.nats.stream_replicas,
        storage: match settings.nats.stream_storage {
            StreamStorage::File => stream::StorageType::File,
            StreamStorage::Memory => stream::StorageType::Memory,
        },
        allow_direct: true,
        republish: Some(stream::Republish {
            source: subject::everything(),
            destination: subject::live_subject(&subject::everything()),
            headers_only: false,
        }),
        ..Default::default()
    }
}

fn to_headers(message: &BusMessage) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if message.json {
        headers.insert(CONTENT_TYPE, JSON);
    }
    if let Some(id) = &message.msg_id {
        headers.insert(NATS_MESSAGE_ID, id.as_str());
    }
    if let Some(tp) = &message.traceparent {
        headers.insert("traceparent", tp.as_str());
    }
    if let Some(ts) = &message.tracestate {
        headers.insert("tracestate", ts.as_str());
    }
    headers
}

/// A received message: republished ones carry the stored subject and sequence in headers.
fn from_nats(message: async_nats::Message) -> BusMessage {
    let header = |name: &str| {
        message
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    BusMessage {
        json: header(CONTENT_TYPE).is_some_and(|v| v.starts_with(JSON)),
        msg_id: header(NATS_MESSAGE_ID),
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        seq: header("Nats-Sequence").and_then(|s| s.parse().ok()),
        prev_seq: header("Nats-Last-Sequence").and_then(|s| s.parse().ok()),
        stored_ms: header("Nats-Time-Stamp").and_then(|t| rfc3339_ms(&t)),
        subject: header("Nats-Subject").unwrap_or_else(|| message.subject.to_string()),
        payload: message.payload,
    }
}

/// Milliseconds since the epoch of an RFC 3339 UTC time (`Nats-Time-Stamp`).
fn rfc3339_ms(time: &str) -> Option<u64> {
    humantime::parse_rfc3339(time)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as u64)
}

/// Locks a mutex that only ever holds plain data, so a poisoned one is still consistent.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_2_10_are_refused_with_both_versions_named() {
        let ServerVersion::Unsupported(problem) = check_server_version("2.9.10") else {
            panic!("2.9.10 must be refused");
        };
        assert!(
            problem.contains("2.9.10") && problem.contains("2.10.0"),
            "{problem}"
        );
        assert!(matches!(
            check_server_version("garbage"),
            ServerVersion::Unsupported(_)
        ));
        for ok in ["2.10.0", "2.10.0-RC.1", "2.15.0", "3.0.0"] {
            assert_eq!(check_server_version(ok), ServerVersion::Supported, "{ok}");
        }
    }

    #[test]
    fn stored_subjects_map_to_live_ones_and_control_does_not() {
        assert_eq!(live_subject("herald.v1.alias.a.*"), "herald.live.alias.a.*");
        assert!(is_streamed("herald.v1.alias.a.newMessage"));
        assert!(is_streamed("herald.v1.room.task.1"));
        assert!(!is_streamed("herald.v1.control.revoke"));
        assert!(!is_streamed("herald.v1.custom.X-y"));
        assert!(!is_streamed("herald.v1.aliasx.a"));
    }

    #[test]
    fn store_times_parse_with_nanoseconds() {
        assert_eq!(
            rfc3339_ms("2026-11-23T13:07:28.706050948Z"),
            Some(1_795_439_248_706)
        );
        assert_eq!(rfc3339_ms("garbage"), None);
    }
}
