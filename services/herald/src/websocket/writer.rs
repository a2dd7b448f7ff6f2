//! The writer task: drains a session's outbox into its socket, encoding what is queued
//! into WebSocket frames, several per write when they pile up. A big frame is not copied:
//! its header is encoded and its payload (the bytes every session of the event shares)
//! goes into the same vectored write.
//!
//! A task of its own rather than a future in the session's actor: a registry's push wakes
//! only this small task, not the actor and everything it watches. It ends once it has
//! written a close frame, when every sender of the outbox is gone, or when the socket
//! fails; until then it keeps the socket open, so a close queued by an actor that has
//! already stopped is still written.

use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
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

/// Frames with a payload at least this big are written from their own bytes, beside
/// their header; smaller ones are copied into the batch (one copy is cheaper than a slice
/// per frame).
const SHARED_PAYLOAD_BYTES: usize = 8 * 1024;

/// At most this many slices go into one vectored write.
const MAX_SLICES: usize = 16;

/// How long a client that does not read has to take the close frame, and then to close
/// its end: past it the socket is dropped, so one that never reads (or never stops
/// sending) cannot hold the connection open.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many bytes the client still sends after the close frame are read and
/// dropped before the socket is closed anyway.
const LINGER_BYTES: usize = 4 << 20;

/// Writes a session's outbox to its socket.
pub(super) struct Writer {
    shared: Rc<Shared>,
    outbox: OutboxReceiver,
    /// Encoded frames not yet written: small frames and headers are gathered in `buf`,
    /// then sealed into `chunks` behind the big payloads they precede. Both are empty
    /// (and unallocated) while nothing is queued.
    buf: BytesMut,
    /// Sealed bytes to write, in order, before `buf`.
    chunks: VecDeque<Bytes>,
    codec: Codec,
    /// A close frame was encoded, or every sender is gone: nothing more is queued.
    done: bool,
    /// A close frame was encoded: once it is written, what the client still sends is
    /// read and dropped until it closes too ([`Writer::linger`]).
    closing: bool,
    /// The socket's sending side is shut (after the close frame).
    shut: bool,
    /// Bytes read and dropped since (held across polls: [`LINGER_BYTES`] bounds the
    /// whole linger, not each wake-up).
    lingered: usize,
    /// Armed once `done` finds the socket full (see [`CLOSE_WRITE_TIMEOUT`]).
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Writer {
    pub(super) fn new(shared: Rc<Shared>, outbox: OutboxReceiver) -> Writer {
        Writer {
            shared,
            outbox,
            buf: BytesMut::new(),
            chunks: VecDeque::new(),
            codec: Codec::new(),
            done: false,
            closing: false,
            shut: false,
            lingered: 0,
            deadline: None,
        }
    }

    fn encode(&mut self, message: Message) -> Result<(), ProtocolError> {
        self.codec.encode(message, &mut self.buf)
    }

    fn close(&mut self, reason: Option<CloseReason>) -> Result<(), ProtocolError> {
        self.done = true;
        self.closing = true;
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
        let result = if len >= SHARED_PAYLOAD_BYTES {
            let (opcode, payload) = match frame {
                Frame::Text(text) => (OPCODE_TEXT, text.into_bytes()),
                Frame::Binary(bin) => (OPCODE_BINARY, bin),
            };
            encode_header(opcode, len, &mut self.buf);
            self.chunks.push_back(self.buf.split().freeze());
            self.chunks.push_back(payload);
            Ok(())
        } else {
            self.encode(match frame {
                Frame::Text(text) => Message::Text(text),
                Frame::Binary(bin) => Message::Binary(bin),
            })
        };
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
        while !self.done && self.pending() < BATCH_BYTES {
            if let Some(reason) = self.outbox.overflow_reason() {
                // What is still queued is abandoned: the client resumes from its last seq.
                // What is encoded already stays: a frame may be partly written, and
                // the close must follow whole frames.
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

    /// Bytes encoded and not yet written.
    fn pending(&self) -> usize {
        self.buf.len() + self.chunks.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether nothing is left to write.
    fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.chunks.is_empty()
    }

    /// Writes everything encoded, in order; `Ready(Err)` when the socket is gone.
    fn flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(io) = ready!(self.shared.poll_io(Side::Writer, cx)) else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        while !self.is_empty() {
            ready!(io.poll_write_ready(cx))?;
            let result = if self.chunks.is_empty() {
                // The common case (no big frame queued): one plain write of the batch.
                io.try_write(&self.buf)
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_SLICES];
                let parts = self.chunks.iter().map(|chunk| &chunk[..]);
                let mut count = 0;
                for (slice, part) in slices.iter_mut().zip(parts.chain([&self.buf[..]])) {
                    *slice = IoSlice::new(part);
                    count += 1;
                }
                io.try_write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(n) => {
                    let rest = advance(&mut self.chunks, n);
                    self.buf.advance(rest);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Poll::Ready(Err(error)),
            }
        }
        // Written whole: an idle session keeps no write buffer.
        self.buf = BytesMut::new();
        self.chunks = VecDeque::new();
        Poll::Ready(Ok(()))
    }
}

impl Writer {
    /// After the close frame, shuts the sending side (the client reads the close, then
    /// the end of the stream, and closes its end) and reads and drops what the client
    /// still sends until it does (at most [`LINGER_BYTES`]): a socket closed with unread
    /// data is reset, and a client still sending (the rest of a message too big to read)
    /// would lose the close frame that says why.
    fn linger(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Poll::Ready(Some(io)) = self.shared.poll_io(Side::Writer, cx) else {
            return Poll::Ready(());
        };
        if !self.shut {
            self.shut = true;
            if socket2::SockRef::from(io)
                .shutdown(std::net::Shutdown::Write)
                .is_err()
            {
                return Poll::Ready(());
            }
        }
        let mut scratch = [0u8; 4096];
        while self.lingered < LINGER_BYTES {
            if ready!(io.poll_read_ready(cx)).is_err() {
                return Poll::Ready(());
            }
            match io.try_read(&mut scratch) {
                Ok(0) => return Poll::Ready(()),
                Ok(n) => self.lingered += n,
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(_) => return Poll::Ready(()),
            }
        }
        Poll::Ready(())
    }
}

/// Drops `n` written bytes from the front of `chunks`; returns what is left of `n` once
/// they are all gone (bytes written from the buffer behind them).
fn advance(chunks: &mut VecDeque<Bytes>, mut n: usize) -> usize {
    while n > 0 {
        let Some(front) = chunks.front_mut() else {
            return n;
        };
        if n < front.len() {
            front.advance(n);
            return 0;
        }
        n -= front.len();
        chunks.pop_front();
    }
    0
}

/// RFC 6455 §5.2 opcodes of the data frames written from their own bytes.
const OPCODE_TEXT: u8 = 0x1;
const OPCODE_BINARY: u8 = 0x2;

/// Encodes a final, unmasked (server) frame header for a payload of `len` bytes.
fn encode_header(opcode: u8, len: usize, dst: &mut BytesMut) {
    const FIN: u8 = 0x80;
    dst.reserve(10);
    dst.extend_from_slice(&[FIN | opcode]);
    match len {
        0..=125 => dst.extend_from_slice(&[len as u8]),
        126..=0xFFFF => {
            dst.extend_from_slice(&[126]);
            dst.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            dst.extend_from_slice(&[127]);
            dst.extend_from_slice(&(len as u64).to_be_bytes());
        }
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
            if this.is_empty() {
                if !this.done {
                    return Poll::Pending;
                }
                if this.closing && this.linger(cx).is_pending() {
                    let deadline = this
                        .deadline
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(CLOSE_WRITE_TIMEOUT)));
                    ready!(deadline.as_mut().poll(cx));
                }
                return Poll::Ready(());
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

#[cfg(test)]
mod tests {
    use actix_codec::Decoder;
    use actix_http::ws::{Codec, Frame as WsFrame};
    use bytestring::ByteString;
    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::outbox::Outbox;

    /// A writer on one end of a loopback connection, and the other end as the client.
    async fn connected() -> (Outbox, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (handover, socket) = super::super::socket::pair(1 << 20);
        handover.complete(accepted.unwrap().0, BytesMut::new());
        let (outbox, receiver) = Outbox::new(1 << 24, "slow");
        outbox.open();
        actix_rt::spawn(Writer::new(socket.shared(), receiver));
        (outbox, client.unwrap())
    }

    /// Reads frames as a client does until the close frame.
    async fn frames_until_close(client: &mut tokio::net::TcpStream) -> Vec<WsFrame> {
        let mut codec = Codec::new().client_mode().max_size(1 << 22);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        loop {
            while let Some(frame) = codec.decode(&mut buf).expect("a well-formed frame") {
                let close = matches!(frame, WsFrame::Close(_));
                frames.push(frame);
                if close {
                    return frames;
                }
            }
            let read = client.read_buf(&mut buf).await.unwrap();
            assert!(read > 0, "the socket ended before the close frame");
        }
    }

    #[actix_rt::test]
    async fn big_payloads_are_written_beside_their_headers_in_order() {
        let (outbox, mut client) = connected().await;
        let small = ByteString::from("{\"small\":1}");
        let big_text = ByteString::from("x".repeat(200 * 1024));
        let big_binary = Bytes::from(vec![7u8; SHARED_PAYLOAD_BYTES]);
        let medium = Bytes::from(vec![1u8; 300]);
        outbox.push(Frame::Text(small.clone())).unwrap();
        outbox.push(Frame::Text(big_text.clone())).unwrap();
        outbox.push(Frame::Binary(medium.clone())).unwrap();
        outbox.push(Frame::Binary(big_binary.clone())).unwrap();
        outbox.push(Frame::Text(small.clone())).unwrap();
        outbox.close(None);
        let frames = frames_until_close(&mut client).await;
        let got: Vec<(bool, Bytes)> = frames
            .into_iter()
            .filter_map(|frame| match frame {
                WsFrame::Text(bytes) => Some((true, bytes)),
                WsFrame::Binary(bytes) => Some((false, bytes)),
                _ => None,
            })
            .collect();
        let want = vec![
            (true, small.clone().into_bytes()),
            (true, big_text.into_bytes()),
            (false, medium),
            (false, big_binary),
            (true, small.into_bytes()),
        ];
        assert_eq!(got.len(), want.len());
        for (i, (got, want)) in got.iter().zip(&want).enumerate() {
            assert_eq!(got.0, want.0, "frame {i}: text or binary");
            assert!(
                got.1 == want.1,
                "frame {i}: payload of {} bytes",
                want.1.len()
            );
        }
    }

    #[actix_rt::test]
    async fn a_client_sending_after_the_close_is_read_for_at_most_4_mib() {
        use tokio::io::AsyncWriteExt;
        let (outbox, mut client) = connected().await;
        outbox.close(None);
        frames_until_close(&mut client).await;
        // The client never closes and keeps sending: past LINGER_BYTES (4 MiB) read and
        // dropped the socket is closed, well before the 5 s close timeout. Counted over
        // the whole linger, not per wake-up, so at most 4 MiB plus what the kernel's
        // socket buffers hold gets through; 64 MiB is far above that and far below
        // what loopback carries in 5 s.
        const BOUND: usize = 64 << 20;
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        let cut = tokio::time::timeout(Duration::from_secs(10), async {
            while sent <= BOUND {
                match client.write(&chunk).await {
                    Ok(n) => sent += n,
                    Err(_) => return true,
                }
            }
            false
        })
        .await;
        assert_eq!(
            cut,
            Ok(true),
            "the socket took {} MiB after its close frame",
            sent >> 20
        );
    }

    #[test]
    fn headers_use_the_shortest_length_encoding() {
        let header = |len| {
            let mut dst = BytesMut::new();
            encode_header(OPCODE_BINARY, len, &mut dst);
            dst.to_vec()
        };
        assert_eq!(header(125), [0x82, 125]);
        assert_eq!(header(126), [0x82, 126, 0, 126]);
        assert_eq!(header(0x1_0000), [0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
    }

    #[test]
    fn advancing_drops_whole_chunks_then_cuts_the_next() {
        let mut chunks: VecDeque<Bytes> = [&b"abc"[..], b"defg", b"h"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        advance(&mut chunks, 5);
        assert_eq!(
            chunks,
            [Bytes::from_static(b"fg"), Bytes::from_static(b"h")]
        );
        advance(&mut chunks, 3);
        assert!(chunks.is_empty());
    }
}
