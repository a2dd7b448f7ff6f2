//! The feed: follows both limit streams into this node's [`View`](super::View), and
//! starts over whenever the connection to NATS drops.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{push, DeliverPolicy};
use futures_util::StreamExt;

use super::{
    released_lease, CheckError, ClusterLimits, Op, CONNECT_POLL, FEED_TICK, NODE_PREFIX,
    RATE_PREFIX, RATE_STREAM, RELEASED_HEADER, RELEASED_PREFIX, SESSIONS_STREAM, SESSION_PREFIX,
    USER_PREFIX,
};

impl ClusterLimits {
    /// Keeps the view: follows both streams from their current content on, and starts
    /// over (the view of other nodes forgotten) whenever the connection to NATS drops.
    pub(super) async fn follow(self: Arc<Self>) {
        let client = self.jetstream.client();
        let statistics = client.statistics();
        loop {
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(CONNECT_POLL).await;
            }
            let connects = statistics.connects.load(Ordering::Relaxed);
            let feeds = match self.open_feeds().await {
                Ok(feeds) => feeds,
                Err(error) => {
                    self.warn_degraded("cluster view", &error);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let (mut sessions, sessions_pending, mut rate, rate_pending) = feeds;
            {
                let mut view = self.view();
                view.sessions_live = sessions_pending == 0;
                view.rate_live = rate_pending == 0;
            }
            // The stream may be new (NATS restarted): put this node's leases back now.
            let _ = self.ops.send(Op::RefreshNow);
            let mut tick = tokio::time::interval(FEED_TICK);
            let mut sweeps = 0u32;
            loop {
                tokio::select! {
                    message = sessions.next() => match message {
                        Some(Ok(message)) => self.on_lease(&message),
                        _ => break,
                    },
                    message = rate.next() => match message {
                        Some(Ok(message)) => self.on_attempt(&message),
                        _ => break,
                    },
                    _ = tick.tick() => {
                        if client.connection_state() != async_nats::connection::State::Connected
                            || statistics.connects.load(Ordering::Relaxed) != connects
                        {
                            break;
                        }
                        sweeps += 1;
                        if sweeps.is_multiple_of(4) {
                            self.view().sweep();
                        }
                    }
                }
            }
            self.view().reset();
            tracing::debug!("cluster view lost its feed; reading the limit streams again");
        }
    }

    /// Ordered consumers of both streams (created if missing), with the messages each
    /// has to deliver before the view is complete.
    async fn open_feeds(&self) -> Result<(push::Ordered, u64, push::Ordered, u64), CheckError> {
        self.ensure_streams().await?;
        let client = self.jetstream.client();
        let open = |stream: &'static str, filter_subjects: Vec<String>, deliver_policy| {
            let inbox = client.new_inbox();
            async move {
                let consumer = self
                    .jetstream
                    .get_stream_no_info(stream)
                    .await
                    .map_err(CheckError::from_nats)?
                    .create_consumer(push::OrderedConfig {
                        deliver_subject: inbox,
                        filter_subjects,
                        deliver_policy,
                        ..Default::default()
                    })
                    .await
                    .map_err(CheckError::from_nats)?;
                let pending = consumer.cached_info().num_pending;
                let messages = consumer.messages().await.map_err(CheckError::from_nats)?;
                Ok::<_, CheckError>((messages, pending))
            }
        };
        // Node subjects are left out: the view ages leases by their own refreshes.
        let leases = vec![
            format!("{SESSION_PREFIX}.>"),
            format!("{USER_PREFIX}.>"),
            format!("{RELEASED_PREFIX}.>"),
        ];
        let (sessions, sessions_pending) =
            open(SESSIONS_STREAM, leases, DeliverPolicy::LastPerSubject).await?;
        let attempts = vec![format!("{RATE_PREFIX}.>")];
        let (rate, rate_pending) = open(RATE_STREAM, attempts, DeliverPolicy::All).await?;
        Ok((sessions, sessions_pending, rate, rate_pending))
    }

    /// A message of the lease stream: a lease stored, refreshed or released.
    fn on_lease(&self, message: &jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let (seq, pending) = (info.stream_sequence, info.pending);
        let subject = message.subject.as_str();
        let mut view = self.view();
        if let Some(lease) = released_lease(subject) {
            tracing::trace!(lease, seq, pending, "release marker");
            view.feed_lease(lease, seq, true);
        } else if !subject.starts_with(NODE_PREFIX) {
            let released = message
                .headers
                .as_ref()
                .is_some_and(|h| h.get(RELEASED_HEADER).is_some());
            tracing::trace!(subject, seq, released, pending, "lease message");
            if view.feed_lease(subject, seq, released) {
                crate::metrics::connection_refused("cluster_reclaimed");
                tracing::debug!(
                    lease = subject,
                    "over the cap after a race across nodes: closing the session"
                );
            }
        }
        if pending == 0 {
            view.sessions_live = true;
        }
    }

    /// A message of the attempts stream.
    fn on_attempt(&self, message: &jetstream::Message) {
        let Ok(info) = message.info() else { return };
        let pending = info.pending;
        // Stamped when it was stored, not read: at a (re)start the whole last minute
        // arrives at once.
        let age = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::from(info.published))
            .unwrap_or_default();
        let address = message
            .subject
            .as_str()
            .strip_prefix(RATE_PREFIX)
            .and_then(|a| a.strip_prefix('.'));
        // `<node>` for one attempt, `<node> <count>` for a batch.
        let payload = std::str::from_utf8(&message.payload).unwrap_or("");
        let (node, count) = match payload.split_once(' ') {
            Some((node, count)) => (node, count.parse().unwrap_or(1)),
            None => (payload, 1),
        };
        let mut view = self.view();
        if let Some(address) = address {
            view.feed_attempt(address, node, age, count);
        }
        if pending == 0 {
            view.rate_live = true;
        }
    }
}
