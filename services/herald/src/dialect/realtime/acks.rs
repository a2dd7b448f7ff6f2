//! Delivery reports for `/ws` `Ack`s: every node that fans a counted message out reports
//! the connections it queued it to on the sender node's report subject; the sender sums
//! what arrives within `realtime.ack_wait`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::bus::{Bus, BusMessage};
use crate::codec::Decoded;
use crate::registry::{DeliveryObserver, SessionId};

/// Subjects delivery reports are sent on (`herald.realtime.ack.<message_id>`).
pub const ACK_PREFIX: &str = herald_protocol::subject::REALTIME_ACK;
/// The reserved payload field naming a stored event's report subject.
pub const ACK_FIELD: &str = "ack";

/// Senders of the reports awaited on this node, by message id.
#[derive(Clone, Default)]
pub(super) struct Pending(Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Vec<String>>>>>);

impl Pending {
    /// Awaits the reports for `message_id` (until the returned [`Reports`] is dropped).
    pub(super) fn register(&self, message_id: &str) -> Reports {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(message_id.to_owned(), tx);
        Reports {
            message_id: message_id.to_owned(),
            rx,
            pending: self.clone(),
        }
    }

    /// Hands one node's report to whoever awaits `message_id` (nobody, once it gave up).
    pub(super) fn route(&self, message_id: &str, connections: Vec<String>) {
        if let Some(tx) = self.lock().get(message_id) {
            let _ = tx.send(connections);
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<Vec<String>>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every node's delivery reports for one stored message (unregistered on drop).
pub struct Reports {
    message_id: String,
    rx: mpsc::UnboundedReceiver<Vec<String>>,
    pending: Pending,
}

impl Reports {
    /// The connection ids reported within `wait`, across the cluster.
    pub async fn collect(mut self, wait: Duration) -> Vec<String> {
        let mut connections = Vec::new();
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(report)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            connections.extend(report);
        }
        connections
    }
}

impl Drop for Reports {
    fn drop(&mut self) {
        self.pending.lock().remove(&self.message_id);
    }
}

/// The connection ids in a report body (`{"connections": [...]}`); `None` if it is not JSON.
pub(super) fn reported_connections(body: &[u8]) -> Option<Vec<String>> {
    let body = serde_json::from_slice::<Value>(body).ok()?;
    Some(
        body["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
    )
}

/// Reports, for events stored with an `ack` subject, the connections of this node that
/// received them.
pub(super) struct AckReporter {
    pub(super) bus: Bus,
    pub(super) tag: String,
}

impl std::fmt::Debug for AckReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckReporter")
            .field("tag", &self.tag)
            .finish()
    }
}

impl DeliveryObserver for AckReporter {
    fn wants(&self, decoded: &Decoded) -> bool {
        matches!(decoded.envelope.payload.get(ACK_FIELD), Some(Value::String(s)) if s.starts_with(ACK_PREFIX))
    }

    fn delivered(&self, decoded: &Decoded, sessions: &[SessionId]) {
        let Some(Value::String(reply)) = decoded.envelope.payload.get(ACK_FIELD) else {
            return;
        };
        if sessions.is_empty() {
            return;
        }
        let connections: Vec<String> = sessions
            .iter()
            .map(|s| format!("{}-{s}", self.tag))
            .collect();
        let report = BusMessage {
            subject: reply.clone(),
            payload: json!({ "connections": connections }).to_string().into(),
            json: true,
            ..Default::default()
        };
        let bus = self.bus.clone();
        tokio::spawn(async move {
            if let Err(error) = bus.publish(report).await {
                tracing::debug!(%error, "cannot report /ws recipients");
            }
        });
    }
}
