//! The publisher: puts this node's leases, releases and connection attempts on the
//! limit streams, in the order connects and closes ask, and refreshes the leases until
//! they are given back.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{
    release_marker, ClusterLimits, Op, ATTEMPT_BATCH, NODE_PREFIX, RATE_PREFIX, REFRESH_BATCH,
    RELEASE_TIMEOUT, SESSIONS_STREAM,
};

impl ClusterLimits {
    /// Publishes what connects and closes ask for, in their order, and keeps this node's
    /// leases alive: a node that dies stops, and its leases expire. Core publishes (the
    /// stream stores them; no acknowledgement is awaited: a publish lost to a NATS blip
    /// is repeated by the next refresh), skipped while NATS is unreachable.
    pub(super) async fn run(self: Arc<Self>, mut ops: mpsc::UnboundedReceiver<Op>) {
        let client = self.jetstream.client();
        let period = self.lease_ttl / 3;
        let node_subject: Arc<str> = Arc::from(format!("{NODE_PREFIX}.{}", self.node));
        let mut leases: HashSet<Arc<str>> = HashSet::new();
        let mut tick = tokio::time::interval(period);
        // This round's refreshes, spread over half the period: 10,000 sessions refreshed
        // at once queued events behind them on the node's NATS connection (the loadtest's
        // p99).
        let mut round: VecDeque<Arc<str>> = VecDeque::new();
        let mut pause = period;
        let next_batch = tokio::time::sleep(period);
        tokio::pin!(next_batch);
        // Attempts by address since the last flush: a connect storm from one address
        // costs the bus one message per batch, not one per connect.
        let mut attempts: HashMap<String, u32> = HashMap::new();
        let flush = tokio::time::sleep(ATTEMPT_BATCH);
        tokio::pin!(flush);
        let connected = |c: &async_nats::Client| {
            c.connection_state() == async_nats::connection::State::Connected
        };
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else { return };
                    match op {
                        Op::Acquire { subject, published } => {
                            if !published && connected(&client) {
                                let _ = client.publish(subject.to_string(), bytes::Bytes::new()).await;
                            }
                            leases.insert(subject);
                        }
                        Op::Attempt(address) => {
                            if attempts.is_empty() {
                                flush.as_mut().reset(tokio::time::Instant::now() + ATTEMPT_BATCH);
                            }
                            let count = attempts.entry(address).or_default();
                            *count = count.saturating_add(1);
                        }
                        Op::Release { subject, done } => {
                            if leases.remove(&subject) {
                                tokio::spawn(Arc::clone(&self).release(subject, done));
                            } else if let Some(done) = done {
                                let _ = done.send(());
                            }
                        }
                        Op::RefreshNow => tick.reset_immediately(),
                    }
                }
                _ = tick.tick() => {
                    round.clear();
                    round.push_back(node_subject.clone());
                    round.extend(leases.iter().cloned());
                    let batches = round.len().div_ceil(REFRESH_BATCH);
                    pause = (period / 2) / u32::try_from(batches).unwrap_or(u32::MAX).max(1);
                    next_batch.as_mut().reset(tokio::time::Instant::now());
                }
                () = &mut flush, if !attempts.is_empty() => {
                    for (address, count) in attempts.drain() {
                        if connected(&client) {
                            let subject = format!("{RATE_PREFIX}.{address}");
                            let payload = if count == 1 {
                                self.node_payload.clone()
                            } else {
                                format!("{} {count}", self.node).into()
                            };
                            let _ = client.publish(subject, payload).await;
                        }
                    }
                }
                () = &mut next_batch, if !round.is_empty() => {
                    let mut sent = 0;
                    while sent < REFRESH_BATCH {
                        let Some(subject) = round.pop_front() else { break };
                        // Released since the round began: its marker went out already.
                        if subject != node_subject && !leases.contains(&subject) {
                            continue;
                        }
                        if connected(&client) {
                            let _ = client.publish(subject.to_string(), bytes::Bytes::new()).await;
                        }
                        sent += 1;
                    }
                    next_batch.as_mut().reset(tokio::time::Instant::now() + pause);
                }
            }
        }
    }

    /// Publishes a lease's release marker on its own subject (acknowledged, so the
    /// marker is stored before the lease goes), then purges the lease's subject; best
    /// effort within [`RELEASE_TIMEOUT`]: the lease expires anyway. The marker stays
    /// until the stream's `max_age`: a view whose feed lags behind the purge still reads
    /// it (a marker on the lease's subject went with the purge, and the lagging view kept
    /// counting the lease until it expired).
    async fn release(self: Arc<Self>, subject: Arc<str>, done: Option<oneshot::Sender<()>>) {
        let jetstream = &self.jetstream;
        let _ = tokio::time::timeout(RELEASE_TIMEOUT, async {
            if let Ok(ack) = jetstream
                .publish(release_marker(&subject), bytes::Bytes::new())
                .await
            {
                let _ = ack.await;
            }
            if let Ok(stream) = jetstream.get_stream_no_info(SESSIONS_STREAM).await {
                let _ = stream.purge().filter(&*subject).await;
            }
        })
        .await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}
