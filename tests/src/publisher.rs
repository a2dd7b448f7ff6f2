//! A foreign producer: publishes Forward Email envelopes `{aliasId, payload}` to NATS as
//! MessagePack (or JSON with `Content-Type: application/json`), or through a node's
//! `POST /v1/publish`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::client::WsClient;
use crate::fixtures::PUBLISH_TOKEN;
use crate::node::Node;

/// Where events are published.
pub enum Publisher {
    /// Straight to NATS, as a backend in any language would.
    Nats(async_nats::Client),
    /// Through `POST /v1/publish` on a node (memory bus, or any node in NATS mode).
    Http {
        /// HTTP client.
        client: reqwest::Client,
        /// `http://127.0.0.1:PORT/v1/publish`.
        url: String,
    },
}

/// The subject of a per-alias event.
pub fn alias_subject(alias_id: &str, event: &str) -> String {
    format!("herald.v1.alias.{alias_id}.{event}")
}

/// The subject of a broadcast event.
pub fn broadcast_subject(event: &str) -> String {
    format!("herald.v1.broadcast.{event}")
}

/// `payload.event`, which names the event and so the subject.
fn event_name(payload: &Value) -> &str {
    payload["event"]
        .as_str()
        .unwrap_or_else(|| panic!("payload has no string `event`: {payload}"))
}

impl Publisher {
    /// Connects to NATS at `url`.
    pub async fn nats(url: &str) -> Self {
        let client = async_nats::connect(url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to NATS at {url}: {e}"));
        Publisher::Nats(client)
    }

    /// Publishes through `node`'s `POST /v1/publish` with the demo publish token.
    pub fn http(node: &Node) -> Self {
        Publisher::Http {
            client: reqwest::Client::new(),
            url: node.http_url("/v1/publish"),
        }
    }

    /// Publishes `payload` (which names its `event`) for `alias_id`: MessagePack on
    /// `herald.v1.alias.<id>.<event>`, or `POST /v1/publish`.
    pub async fn alias_event(&self, alias_id: &str, payload: &Value) {
        let envelope = json!({"aliasId": alias_id, "payload": payload});
        match self {
            Publisher::Nats(_) => {
                let body = rmp_serde::to_vec_named(&envelope).expect("envelope encodes");
                self.raw(&alias_subject(alias_id, event_name(payload)), body, false)
                    .await;
            }
            Publisher::Http { .. } => self.http_publish(&envelope).await,
        }
    }

    /// Like [`Publisher::alias_event`] but a JSON body with `Content-Type: application/json`.
    pub async fn alias_event_json(&self, alias_id: &str, payload: &Value) {
        let envelope = json!({"aliasId": alias_id, "payload": payload});
        match self {
            Publisher::Nats(_) => {
                let body = serde_json::to_vec(&envelope).expect("envelope encodes");
                self.raw(&alias_subject(alias_id, event_name(payload)), body, true)
                    .await;
            }
            Publisher::Http { .. } => self.http_publish(&envelope).await,
        }
    }

    /// Publishes a broadcast event (`newRelease`) on `herald.v1.broadcast.<event>`.
    pub async fn broadcast(&self, payload: &Value) {
        let subject = broadcast_subject(event_name(payload));
        match self {
            Publisher::Nats(_) => {
                let body = rmp_serde::to_vec_named(&json!({"payload": payload}))
                    .expect("envelope encodes");
                self.raw(&subject, body, false).await;
            }
            Publisher::Http { .. } => {
                self.http_publish(&json!({"subject": subject, "payload": payload}))
                    .await
            }
        }
    }

    /// Publishes `payload` for `alias_id` through JetStream (MessagePack envelope on
    /// `herald.v1.alias.<id>.<event>`) with `Nats-Msg-Id: msg_id`, and waits up to `timeout`
    /// for the stream's ack. `Err` says why there was none (NATS down, no stream, timeout):
    /// the event may or may not be stored, so retry with the same `msg_id`, which the
    /// stream stores at most once within its dedup window. NATS only.
    pub async fn try_alias_event_acked(
        &self,
        alias_id: &str,
        payload: &Value,
        msg_id: &str,
        timeout: Duration,
    ) -> Result<async_nats::jetstream::publish::PublishAck, String> {
        let Publisher::Nats(client) = self else {
            panic!("acknowledged publishing needs a NATS publisher");
        };
        let envelope = json!({"aliasId": alias_id, "payload": payload});
        let body = rmp_serde::to_vec_named(&envelope).expect("envelope encodes");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", msg_id);
        let mut jetstream = async_nats::jetstream::new(client.clone());
        jetstream.set_timeout(timeout);
        let subject = alias_subject(alias_id, event_name(payload));
        let attempt = async {
            jetstream
                .publish_with_headers(subject, headers, body.into())
                .await
                .map_err(|e| format!("publish: {e}"))?
                .await
                .map_err(|e| format!("ack: {e}"))
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| format!("no ack within {timeout:?}"))?
    }

    /// Publishes `payload` for `alias_id` as MessagePack on NATS with extra `headers`
    /// (e.g. `traceparent`), and flushes. NATS only.
    pub async fn alias_event_with_headers(
        &self,
        alias_id: &str,
        payload: &Value,
        headers: &[(&str, &str)],
    ) {
        let Publisher::Nats(client) = self else {
            panic!("publishing with headers needs a NATS publisher");
        };
        let envelope = json!({"aliasId": alias_id, "payload": payload});
        let body = rmp_serde::to_vec_named(&envelope).expect("envelope encodes");
        let mut map = async_nats::HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, *value);
        }
        client
            .publish_with_headers(
                alias_subject(alias_id, event_name(payload)),
                map,
                body.into(),
            )
            .await
            .expect("NATS publish failed");
        client.flush().await.expect("NATS flush failed");
    }

    /// Publishes raw bytes on `subject` (NATS only), optionally with
    /// `Content-Type: application/json`, and flushes.
    pub async fn raw(&self, subject: &str, body: Vec<u8>, json_content_type: bool) {
        let Publisher::Nats(client) = self else {
            panic!("raw publishing needs a NATS publisher");
        };
        if json_content_type {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Content-Type", "application/json");
            client
                .publish_with_headers(subject.to_owned(), headers, body.into())
                .await
                .expect("NATS publish failed");
        } else {
            client
                .publish(subject.to_owned(), body.into())
                .await
                .expect("NATS publish failed");
        }
        client.flush().await.expect("NATS flush failed");
    }

    async fn http_publish(&self, envelope: &Value) {
        let Publisher::Http { client, url } = self else {
            unreachable!("http_publish on a NATS publisher");
        };
        let response = client
            .post(url)
            .bearer_auth(PUBLISH_TOKEN)
            .json(envelope)
            .send()
            .await
            .expect("POST /v1/publish failed");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(
            status, 202,
            "POST /v1/publish {envelope} answered {status}: {body}"
        );
    }

    /// Waits until every client receives events published for `alias_id` (the node's
    /// subscriptions are live), then drains what the wait published. Uses
    /// `mailboxCreated` events tagged `heraldTestSync`; any other event arriving meanwhile
    /// fails the test.
    pub async fn sync_alias(&self, alias_id: &str, clients: &mut [&mut WsClient]) {
        self.sync(Some(alias_id), clients).await;
    }

    /// Like [`Publisher::sync_alias`] for broadcast subscriptions (`newRelease`).
    pub async fn sync_broadcast(&self, clients: &mut [&mut WsClient]) {
        self.sync(None, clients).await;
    }

    async fn sync(&self, alias_id: Option<&str>, clients: &mut [&mut WsClient]) {
        let publish = |marker: String| async move {
            match alias_id {
                Some(id) => {
                    let payload = json!({"event": "mailboxCreated", "heraldTestSync": marker});
                    self.alias_event(id, &payload).await
                }
                None => {
                    let payload = json!({"event": "newRelease", "heraldTestSync": marker});
                    self.broadcast(&payload).await
                }
            }
        };
        let is_sync = |event: &Value| event.get("heraldTestSync").is_some();
        let mut live = vec![false; clients.len()];
        let deadline = tokio::time::Instant::now() + crate::PROMPT;
        for attempt in 0.. {
            publish(format!("probe-{attempt}")).await;
            for (client, live) in clients.iter_mut().zip(live.iter_mut()) {
                if *live {
                    continue;
                }
                if let Some(frame) = client.next_data_frame(Duration::from_millis(100)).await {
                    let event = frame
                        .decode()
                        .unwrap_or_else(|| panic!("socket closed while syncing: {frame:?}"));
                    assert!(is_sync(&event), "unexpected event while syncing: {event}");
                    *live = true;
                }
            }
            if live.iter().all(|l| *l) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "clients did not receive events for {alias_id:?} within {:?}: subscriptions never became live",
                crate::PROMPT
            );
        }
        let fence = "fence".to_owned();
        publish(fence.clone()).await;
        for client in clients.iter_mut() {
            loop {
                let event = client.next_event().await;
                assert!(is_sync(&event), "unexpected event while syncing: {event}");
                if event["heraldTestSync"] == fence.as_str() {
                    break;
                }
            }
        }
    }
}
