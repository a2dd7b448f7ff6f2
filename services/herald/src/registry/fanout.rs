//! The live fan-out: one bus event decoded once, encoded once per codec in use, and the
//! shared items queued to every member (or held for members still catching up).

use herald_telemetry::{propagation, TraceContext};
use tracing::field::Empty;

use super::{Registry, CODECS};
use crate::bus::BusMessage;
use crate::codec::{Codec, Decoded, Item};
use crate::metrics;
use crate::outbox::{Delivery, PushError};

/// Fan-outs to at most this many sessions get one `herald.write` span per socket write
/// (when sampled); larger ones only their `herald.deliver` span with counts, so tracing a
/// broadcast to thousands costs a few spans, not thousands.
pub const MAX_TRACED_WRITES: usize = 16;

/// What became of one fan-out's frames for the sessions of one codec.
#[derive(Debug, Default, Clone, Copy)]
struct DeliverCounts {
    /// Queued for the session's connection.
    queued: u64,
    /// Held for a session still catching up on its `since` replay.
    held: u64,
    /// Not queued: slow consumer or closed session.
    dropped: u64,
}

impl DeliverCounts {
    fn outcome(&self) -> &'static str {
        match (self.dropped, self.queued + self.held) {
            (0, _) => "queued",
            (_, 0) => "dropped",
            _ => "partial",
        }
    }
}

/// One codec's items for an event, each with its publish timestamp.
pub(super) type Items = Vec<(Item, Option<u64>)>;

impl Registry {
    /// Encodes a bus message once per wanted codec; `None` if it does not decode.
    pub(super) fn items(
        &self,
        message: &BusMessage,
        wanted: [bool; CODECS],
    ) -> Option<(Decoded, [Items; CODECS])> {
        let decoded = match Decoded::new(message) {
            Ok(decoded) => decoded,
            Err(reason) => {
                metrics::bus_decode_error();
                tracing::warn!(subject = %message.subject, %reason, "skipping undecodable bus message");
                return None;
            }
        };
        let mut failed = false;
        let frames = std::array::from_fn(|i| {
            if !wanted[i] {
                return Vec::new();
            }
            let codec = Codec::ALL[i];
            let encoder = self.settings.encoders[i];
            encoder.encode(&decoded, &self.settings.codec).unwrap_or_else(|reason| {
                failed = true;
                tracing::warn!(subject = %message.subject, dialect = codec.dialect().label(), %reason, "skipping undecodable bus message");
                Vec::new()
            })
        });
        if failed {
            metrics::bus_decode_error();
        }
        Some((decoded, frames))
    }

    /// Fans one live message out to every member (held for members still catching up).
    ///
    /// Traced as `herald.receive` (child of the publisher's `traceparent`) →
    /// `herald.fanout` → one `herald.deliver` per codec in use → `herald.write` per
    /// socket write for fan-outs of at most [`MAX_TRACED_WRITES`] sessions.
    pub(super) fn deliver(&mut self, message: BusMessage) {
        if let (Some(seq), Some(last)) = (message.seq, self.last_seq) {
            if seq <= last {
                return;
            }
        }
        if message.seq.is_some() {
            self.last_seq = message.seq;
        }
        let receive = tracing::debug_span!(
            "herald.receive",
            otel.kind = "consumer",
            node = %self.settings.node,
            subject = %message.subject,
            event = message.subject.rsplit('.').next().unwrap_or_default(),
            seq = message.seq,
        );
        if herald_telemetry::tracing_enabled() {
            propagation::set_parent(
                &receive,
                propagation::extract(
                    message.traceparent.as_deref(),
                    message.tracestate.as_deref(),
                ),
            );
        }
        let _receive = receive.enter();
        // With export on, the sampler has decided at `herald.receive` (the root, or the
        // producer's sampled bit): an unsampled event's children would be unsampled too,
        // so they are not created at all. Most events are unsampled at a low ratio, and
        // each span costs its builder, attributes and context even when nothing is
        // exported. With export off they stay (DEBUG spans, for debug logs).
        let child_spans = !herald_telemetry::tracing_enabled()
            || propagation::is_sampled(&propagation::context_of(&receive));
        let wanted = self.per_codec.map(|n| n > 0);
        let Some((decoded, frames)) = self.items(&message, wanted) else {
            return;
        };
        let observed = self
            .settings
            .on_delivered
            .as_ref()
            .filter(|o| o.wants(&decoded));
        let mut delivered_to = Vec::new();
        metrics::event_received();
        let bytes = frames
            .each_ref()
            .map(|f| f.iter().map(|(f, _)| f.len()).sum::<usize>());
        let fanout = if !child_spans {
            tracing::Span::none()
        } else {
            tracing::debug_span!(
                "herald.fanout",
                key = %self.key,
                recipients = self.members.len(),
                notifications = frames.iter().map(Vec::len).max().unwrap_or_default(),
                bytes.json = bytes[Codec::V1Json.index()],
                bytes.msgpack = bytes[Codec::V1MsgPack.index()],
                bytes.msgpackr = bytes[Codec::V1Msgpackr.index()],
            )
        };
        let _fanout = fanout.enter();
        let deliver_spans: [Option<tracing::Span>; CODECS] = std::array::from_fn(|i| {
            (child_spans && self.per_codec[i] > 0).then(|| {
                tracing::debug_span!(
                    "herald.deliver",
                    dialect = Codec::ALL[i].dialect().label(),
                    format = Codec::ALL[i].format_name(),
                    recipients = self.per_codec[i],
                    bytes = bytes[i],
                    queued = Empty,
                    held = Empty,
                    dropped = Empty,
                    outcome = Empty,
                )
            })
        });
        let write_parents: [Option<TraceContext>; CODECS] =
            if herald_telemetry::tracing_enabled() && self.members.len() <= MAX_TRACED_WRITES {
                std::array::from_fn(|i| {
                    deliver_spans[i]
                        .as_ref()
                        .map(propagation::context_of)
                        .filter(propagation::is_sampled)
                })
            } else {
                Default::default()
            };
        let mut counts = [DeliverCounts::default(); CODECS];
        let max_buffered = self.settings.max_buffered_bytes;
        for (&id, state) in self.members.iter_mut() {
            let codec = state.sink.codec().index();
            if message.seq.is_some_and(|seq| seq <= state.sent_upto) {
                continue;
            }
            for (frame, published_ms) in &frames[codec] {
                if let Some(held) = &mut state.held {
                    held.bytes += frame.len();
                    if held.bytes > max_buffered {
                        // Too far behind to catch up in memory: the slow-consumer path
                        // closes it with 1013, and it resumes with `since`.
                        state.held = None;
                        state.sink.outbox().mark_slow();
                        counts[codec].dropped += 1;
                        break;
                    }
                    held.items.push((message.seq, frame.clone()));
                    counts[codec].held += 1;
                    if observed.is_some() {
                        delivered_to.push(id);
                    }
                    continue;
                }
                let delivery = Delivery {
                    published_ms: *published_ms,
                    trace: write_parents[codec].clone(),
                };
                match state.sink.push(frame.clone(), message.seq, delivery) {
                    Ok(()) => {
                        counts[codec].queued += 1;
                        if observed.is_some() {
                            delivered_to.push(id);
                        }
                    }
                    Err(error) => {
                        counts[codec].dropped += 1;
                        metrics::event_dropped(match error {
                            PushError::SlowConsumer => "slow_consumer",
                            PushError::Closed => "closed",
                        });
                        break;
                    }
                }
            }
        }
        for (span, counts) in deliver_spans.iter().zip(&counts) {
            if let Some(span) = span {
                span.record("queued", counts.queued);
                span.record("held", counts.held);
                span.record("dropped", counts.dropped);
                span.record("outcome", counts.outcome());
            }
        }
        metrics::events_delivered(counts.iter().map(|c| c.queued).sum());
        if let Some(observer) = observed {
            delivered_to.dedup();
            observer.delivered(&decoded, &delivered_to);
        }
    }
}

#[cfg(test)]
mod bench {
    //! Fan-out cost with and without span export (docs/observability.md, "Traces"). Run each mode in its
    //! own process, since the subscriber is global:
    //! `cargo test -p herald --lib fanout_overhead -- --ignored --nocapture` (export off) and
    //! the same with `HERALD_BENCH_TRACING=1` (export on, every event sampled).

    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::bus::{Bus, MemoryBus};
    use crate::codec::CodecSettings;
    use crate::outbox::Outbox;
    use crate::registry::{Member, MemberState, RegistrySettings, RoutingKey, SessionId};

    fn registry(members: usize) -> (Registry, Vec<crate::outbox::OutboxReceiver>) {
        let bus = Bus::Memory(MemoryBus::new(10, Duration::from_secs(60), Duration::ZERO));
        let settings = Arc::new(RegistrySettings {
            codec: CodecSettings {
                max_notification_bytes: 1 << 20,
            },
            encoders: &crate::dialect::codec::ENCODERS,
            node: "bench".into(),
            max_buffered_bytes: 1 << 20,
            on_delivered: None,
        });
        let mut registry = Registry::new(RoutingKey::Alias("a1".into()), bus, settings);
        let mut receivers = Vec::with_capacity(members);
        for id in 0..members as SessionId {
            let (outbox, rx) = Outbox::new(usize::MAX, "slow");
            let member = Member {
                id,
                outbox,
                codec: Codec::V1Json,
                relay: None,
            };
            registry
                .members
                .insert(id, MemberState::joining(member, false));
            registry.per_codec[Codec::V1Json.index()] += 1;
            receivers.push(rx);
        }
        (registry, receivers)
    }

    fn message(seq: u64) -> BusMessage {
        let envelope = serde_json::json!({
            "aliasId": "a1",
            "payload": {"event": "newMessage", "message": {"uid": seq, "mailbox": "INBOX", "eml": "x".repeat(256)}},
        });
        BusMessage {
            subject: "herald.v1.alias.a1.newMessage".into(),
            payload: rmp_serde::to_vec_named(&envelope).unwrap().into(),
            traceparent: Some("00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01".into()),
            seq: Some(seq),
            ..Default::default()
        }
    }

    #[test]
    #[ignore = "benchmark; see the module docs"]
    fn fanout_overhead() {
        let tracing = std::env::var_os("HERALD_BENCH_TRACING").is_some();
        if tracing {
            // Nothing listens there: export fails off the hot path, as a down collector would.
            std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9");
        } else {
            std::env::remove_var("OTEL_EXPORTER_OTLP_ENDPOINT");
        }
        let telemetry =
            herald_telemetry::init("info", herald_telemetry::LogFormat::Json, "bench").unwrap();
        assert_eq!(telemetry.exporting(), tracing);
        println!("export {}", if tracing { "on" } else { "off" });
        for members in [1usize, 10, 16, 100, 1_000, 10_000] {
            let (mut registry, receivers) = registry(members);
            let rounds = (200_000 / members).clamp(20, 2_000) as u64;
            for seq in 1..=5 {
                registry.deliver(message(seq));
            }
            let messages: Vec<_> = (6..6 + rounds).map(message).collect();
            let start = Instant::now();
            for m in messages {
                registry.deliver(m);
            }
            let per_fanout = start.elapsed() / rounds as u32;
            println!(
                "recipients {members:>6}: {:>9.1} µs per fan-out, {:>7.0} ns per recipient",
                per_fanout.as_secs_f64() * 1e6,
                per_fanout.as_secs_f64() * 1e9 / members as f64
            );
            drop(receivers);
        }
        // Per-write span cost (recipients ≤ MAX_TRACED_WRITES, sampled): create, parent, close.
        let parent = propagation::extract(
            Some("00-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174-01"),
            None,
        );
        let rounds = 20_000u32;
        let start = Instant::now();
        for _ in 0..rounds {
            let span = tracing::debug_span!(
                "herald.write",
                format = "json",
                bytes = 300usize,
                outcome = Empty
            );
            propagation::set_parent(&span, parent.clone());
            span.record("outcome", "written");
        }
        println!(
            "herald.write span: {:.0} ns each",
            start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds)
        );
        telemetry.shutdown();
    }
}
