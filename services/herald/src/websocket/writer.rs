//! The writer task: drains a session's outbox into its socket, encoding what is queued
//! into WebSocket frames, several per write when they pile up.
//!
//! A task of its own rather than a future in the session's actor: a registry's push wakes
//! only this small task, not the actor and everything it watches. It ends once it has
//! written a close frame, when every sender of the outbox is gone, or when the socket
//! fails; until then it keeps the socket open, so a close queued by an actor that has
//! already stopped is still written.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use actix_codec::Encoder;
use actix_http::ws::Codec;
use bytes::{Buf, Bytes, BytesMut};

use super::socket::{Shared, Side};
use super::{cut_close_reason, CloseCode, CloseReason, Message, ProtocolError};
use crate::metrics;
use crate::outbox::{Delivery, Frame, Outbound, OutboxReceiver};

/// At most this many bytes of queued frames go into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// How long a client that does not read has to take the close frame: past it the socket
/// is dropped, so one that never reads cannot hold the connection open.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes a session's outbox to its socket.
pub(super) struct Writer {
    shared: Rc<Shared>,
    outbox: OutboxReceiver,
    /// Encoded frames not yet written; empty (and unallocated) while nothing is queued.
    buf: BytesMut,
    codec: Codec,
    /// A close frame was encoded, or every sender is gone: nothing more is queued.
    done: bool,
    /// Armed once `done` finds the socket full (see [`CLOSE_WRITE_TIMEOUT`]).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Writer {
    pub(super) fn new(shared: Rc<Shared>, outbox: OutboxReceiver) -> Writer {
        Writer {
            shared,
            outbox,
            buf: BytesMut::new(),
            codec: Codec::new(),
            done: false,
            deadline: None,
        }
    }

    fn encode(&mut self, message: Message) -> Result<(), ProtocolError> {
        self.codec.encode(message, &mut self.buf)
    }

    fn close(&mut self, reason: Option<CloseReason>) -> Result<(), ProtocolError> {
        self.done = true;
        let reason = reason.map(|mut reason| {
            if let Some(text) = reason.description.as_mut() {
                cut_close_reason(text);
            }
            reason
        });
        self.encode(Message::Close(reason))
    }

    fn frame(&mut self, frame: Frame, delivery: Delivery) -> Result<(), ProtocolError> {
        let len = frame.len();
        let span = delivery.trace.map(|parent| {
            let format = match frame {
                Frame::Text(_) => "json",
                Frame::Binary(_) => "msgpack",
            };
            let span = tracing::debug_span!(
                "herald.write",
                format,
                bytes = len,
                outcome = tracing::field::Empty
            );
            herald_telemetry::propagation::set_parent(&span, parent);
            span
        });
        let result = self.encode(match frame {
            Frame::Text(text) => Message::Text(text),
            Frame::Binary(bin) => Message::Binary(bin),
        });
        self.outbox.written(len);
        if let Some(ms) = delivery.published_ms {
            let now = herald_protocol::now_ms();
            metrics::delivery_latency(now.saturating_sub(ms) as f64 / 1000.0);
        }
        if let Some(span) = span {
            span.record("outcome", if result.is_ok() { "written" } else { "failed" });
        }
        result
    }

    /// Encodes what is queued, up to [`BATCH_BYTES`]; registers for the next push when
    /// nothing more is.
    fn fill(&mut self, cx: &mut Context<'_>) -> Result<(), ProtocolError> {
        while !self.done && self.buf.len() < BATCH_BYTES {
            if let Some(reason) = self.outbox.overflow_reason() {
                // What is still queued is abandoned: the client resumes from its last seq.
                self.buf.clear();
                return self.close(Some(CloseReason {
                    code: CloseCode::Again,
                    description: Some(reason.into()),
                }));
            }
            match self.outbox.poll_item(cx) {
                Poll::Ready(Some(Outbound::Frame(frame, delivery))) => {
                    self.frame(frame, delivery)?
                }
                Poll::Ready(Some(Outbound::Ping)) => self.encode(Message::Ping(Bytes::new()))?,
                Poll::Ready(Some(Outbound::Pong(data))) => self.encode(Message::Pong(data))?,
                Poll::Ready(Some(Outbound::Close(reason))) => self.close(reason)?,
                Poll::Ready(None) => self.done = true,
                Poll::Pending => break,
            }
        }
        Ok(())
    }

    /// Writes the buffer until it is empty; `Ready(Err)` when the socket is gone.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = ready!(self.shared.poll_io(Side::Writer, cx)) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.buf.is_empty() {
            ready!(io.poll_write_ready(cx))?;
            match io.try_write(&self.buf) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => self.buf.advance(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        // Written whole: an idle session keeps no write buffer.
        self.buf = BytesMut::new();
        Poll::Ready(Ok(()))
    }
}

impl Future for Writer {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Err(error) = this.fill(cx) {
                tracing::debug!(%error, "a frame could not be encoded; closing the connection");
                return Poll::Ready(());
            }
            if this.buf.is_empty() {
                return if this.done {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                };
            }
            match this.flush(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => {
                    tracing::debug!(%error, "the socket failed; its session ends");
                    return Poll::Ready(());
                }
                Poll::Pending if this.done => {
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_WRITE_TIMEOUT)));
                    ready!(deadline.as_mut().poll(cx));
                    tracing::debug!("the client took no close frame in time; dropping it");
                    return Poll::Ready(());
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
