//! The NATS bus: core subscriptions per routing key; the connection retries forever in
//! the background, and async-nats resubscribes every live subscription on reconnect.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::header::HeaderMap;
use futures_util::StreamExt;

use super::{BusError, BusMessage, PublishAck, Subscription};
use crate::config::NatsSettings;
use crate::metrics;

/// A NATS connection shared by every registry of the node.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    connected: Arc<AtomicBool>,
}

const JSON: &str = "application/json";
const CONTENT_TYPE: &str = "Content-Type";
const NATS_MESSAGE_ID: &str = "Nats-Msg-Id";

impl NatsBus {
    /// Connects in the background: returns at once even when NATS is down (`/readyz` says so).
    pub async fn connect(settings: &NatsSettings, node_name: &str) -> Result<NatsBus, BusError> {
        let connected = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&connected);
        let mut options = async_nats::ConnectOptions::new()
            .name(node_name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            .event_callback(move |event| {
                let flag = Arc::clone(&flag);
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            flag.store(true, Ordering::SeqCst);
                            metrics::bus_connected(true);
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
        if !settings.user.is_empty() {
            options = options
                .user_and_password(settings.user.clone(), settings.password.expose().to_owned());
        }
        if !settings.token.is_empty() {
            options = options.token(settings.token.expose().to_owned());
        }
        if !settings.nkey_seed.is_empty() {
            options = options.nkey(settings.nkey_seed.expose().to_owned());
        }
        if !settings.creds_file.is_empty() {
            options = options
                .credentials_file(&settings.creds_file)
                .await
                .map_err(|e| {
                    BusError::Connect(format!(
                        "bus.nats.creds_file {:?} is unreadable: {e}",
                        settings.creds_file
                    ))
                })?;
        }
        if !settings.tls_ca_file.is_empty() {
            options = options.add_root_certificates(PathBuf::from(&settings.tls_ca_file));
        }
        if !settings.tls_cert_file.is_empty() {
            options = options.add_client_certificate(
                PathBuf::from(&settings.tls_cert_file),
                PathBuf::from(&settings.tls_key_file),
            );
        }
        if settings.tls_required {
            options = options.require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = settings
            .urls
            .iter()
            .map(|u| {
                u.parse()
                    .map_err(|e| BusError::Connect(format!("bus.nats.urls entry {u:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        let client = options
            .connect(urls)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        Ok(NatsBus { client, connected })
    }

    /// The underlying client, for request/reply users (auth callout, custom types).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Whether the connection is up.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// Subscribes to `pattern`; the stream unsubscribes when dropped.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, BusError> {
        let subscriber = self
            .client
            .subscribe(pattern.to_owned())
            .await
            .map_err(|e| BusError::Subscribe {
                subject: pattern.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(subscriber.map(from_nats).boxed())
    }

    /// Publishes one message with its headers.
    pub async fn publish(&self, message: BusMessage) -> Result<PublishAck, BusError> {
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
        let subject = message.subject.clone();
        let err = |e: &dyn std::fmt::Display| BusError::Publish {
            subject: subject.clone(),
            reason: e.to_string(),
        };
        self.client
            .publish_with_headers(message.subject, headers, message.payload)
            .await
            .map_err(|e| err(&e))?;
        self.client.flush().await.map_err(|e| err(&e))?;
        Ok(PublishAck { seq: None })
    }
}

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
        seq: None,
        subject: message.subject.to_string(),
        payload: message.payload,
    }
}
