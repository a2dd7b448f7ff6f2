//! The WebSocket connection after the upgrade, shared by every dialect: the handshake
//! response whose body is the session's outbox, and the stream of the client's messages.
//!
//! actix-ws would put a 32-slot channel and a writer task between the outbox and the
//! connection: 1.3 KiB more per session, and two more task wake-ups per frame. Here a
//! registry's push wakes the connection's dispatcher, which encodes what is queued and
//! writes it, several frames per write when they pile up.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use actix_codec::{Decoder, Encoder};
use actix_http::ws::{self, Codec, Item};
use actix_web::body::{BodyStream, BoxBody};
use actix_web::http::header::SEC_WEBSOCKET_PROTOCOL;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;

pub use actix_http::ws::{CloseCode, CloseReason, Message, ProtocolError};

use crate::metrics;
use crate::outbox::{Delivery, Frame, Outbound, OutboxReceiver};

/// At most this many bytes of queued frames go into one write.
const BATCH_BYTES: usize = 64 * 1024;

/// A close reason's longest text: a control frame carries at most 125 bytes, two of them
/// the code. Longer reasons are cut (browsers drop the connection over an oversized one).
const MAX_CLOSE_REASON_BYTES: usize = 123;

/// Cuts a close reason to [`MAX_CLOSE_REASON_BYTES`], at a character boundary: every
/// close the node writes goes through here, whoever queued it.
pub fn cut_close_reason(text: &mut String) {
    let mut end = text.len().min(MAX_CLOSE_REASON_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
}

/// A checked upgrade request, waiting for the session's outbox to become the response body.
pub struct Handshake(actix_http::ResponseBuilder);

/// Checks the upgrade request and echoes the first of the client's subprotocols that is in
/// `protocols`; the client's messages come from the returned [`Inbound`], each at most
/// `max_message_bytes` (fragments included).
pub fn accept(
    req: &HttpRequest,
    payload: web::Payload,
    protocols: &[&str],
    max_message_bytes: usize,
) -> Result<(Handshake, Inbound), actix_web::Error> {
    let mut response = ws::handshake(req.head())?;
    if let Some(protocol) = select_protocol(req, protocols) {
        response.insert_header((SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    Ok((
        Handshake(response),
        Inbound::new(payload, max_message_bytes),
    ))
}

/// The first subprotocol the client offers that the server speaks.
fn select_protocol<'a>(req: &'a HttpRequest, protocols: &[&str]) -> Option<&'a str> {
    req.headers()
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|offered| !offered.is_empty() && protocols.contains(offered))
}

impl Handshake {
    /// The `101 Switching Protocols` response, writing `outbox` to the connection.
    pub fn respond(mut self, outbox: OutboxReceiver) -> Result<HttpResponse, actix_web::Error> {
        let body = BoxBody::new(BodyStream::new(Body {
            outbox,
            buf: BytesMut::new(),
            codec: Codec::new(),
            done: false,
        }));
        Ok(self.0.message_body(body)?.into())
    }
}

/// The response body: the session's outbox, encoded as WebSocket frames.
struct Body {
    outbox: OutboxReceiver,
    buf: BytesMut,
    codec: Codec,
    /// A close frame was written, or every sender is gone: the body ends.
    done: bool,
}

impl Body {
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

    /// Encodes what is queued, up to [`BATCH_BYTES`]; `Pending` only when nothing is.
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
}

impl Stream for Body {
    type Item = Result<Bytes, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Err(error) = this.fill(cx) {
            this.done = true;
            return Poll::Ready(Some(Err(error)));
        }
        if !this.buf.is_empty() {
            // Taken whole, so an idle connection keeps no buffer.
            return Poll::Ready(Some(Ok(std::mem::take(&mut this.buf).freeze())));
        }
        if this.done {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// What a fragmented message is being assembled into.
enum Partial {
    Text(BytesMut),
    Binary(BytesMut),
}

/// The client's messages, fragmented ones assembled (RFC 6455 §5.4).
pub struct Inbound {
    payload: web::Payload,
    buf: BytesMut,
    codec: Codec,
    max_message_bytes: usize,
    partial: Option<Partial>,
    /// The connection's read side ended, or a protocol error ended the stream.
    ended: bool,
}

impl Inbound {
    fn new(payload: web::Payload, max_message_bytes: usize) -> Inbound {
        Inbound {
            payload,
            buf: BytesMut::new(),
            codec: Codec::new().max_size(max_message_bytes),
            max_message_bytes,
            partial: None,
            ended: false,
        }
    }

    /// The next complete message in the buffer, if one is.
    fn next_message(&mut self) -> Result<Option<Message>, ProtocolError> {
        loop {
            self.check_header()?;
            let Some(frame) = self.codec.decode(&mut self.buf)? else {
                break;
            };
            let message = match frame {
                ws::Frame::Text(bytes) => Message::Text(text(bytes)?),
                ws::Frame::Binary(bytes) => Message::Binary(bytes),
                ws::Frame::Ping(bytes) => Message::Ping(bytes),
                ws::Frame::Pong(bytes) => Message::Pong(bytes),
                ws::Frame::Close(reason) => Message::Close(reason),
                ws::Frame::Continuation(item) => match self.assemble(item)? {
                    Some(message) => message,
                    None => continue,
                },
            };
            return Ok(Some(message));
        }
        Ok(None)
    }

    /// Refuses the frame at the start of the buffer as soon as its header is in, before
    /// its payload is read: the codec waits for a whole frame before checking its size, so
    /// a header declaring a tebibyte would otherwise have the connection buffer what follows.
    fn check_header(&self) -> Result<(), ProtocolError> {
        let Some(header) = FrameHeader::parse(&self.buf) else {
            return Ok(());
        };
        if header.reserved_bits {
            // No extension is negotiated, so no reserved bit has a meaning (RFC 6455 §5.2).
            // actix has no error for them but the I/O one it also uses for bad UTF-8 (1007):
            // the header's first byte, reserved bits and all, tells [`protocol_close`].
            return Err(ProtocolError::InvalidOpcode(self.buf[0]));
        }
        match header.opcode {
            // Control frames carry at most 125 bytes (RFC 6455 §5.5).
            0x8..=0xF if header.len > 125 => Err(ProtocolError::InvalidLength(
                usize::try_from(header.len).unwrap_or(usize::MAX),
            )),
            0x8..=0xF => Ok(()),
            _ => {
                let assembled = match (&self.partial, header.opcode) {
                    (Some(Partial::Text(buf) | Partial::Binary(buf)), 0x0) => buf.len(),
                    _ => 0,
                };
                let total = header.len.saturating_add(assembled as u64);
                if total > self.max_message_bytes as u64 {
                    Err(ProtocolError::Overflow)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// Adds a fragment; the whole message once its last fragment is in.
    fn assemble(&mut self, item: Item) -> Result<Option<Message>, ProtocolError> {
        let (fragment, last) = match item {
            Item::FirstText(bytes) => {
                self.partial = Some(Partial::Text(BytesMut::new()));
                (bytes, false)
            }
            Item::FirstBinary(bytes) => {
                self.partial = Some(Partial::Binary(BytesMut::new()));
                (bytes, false)
            }
            Item::Continue(bytes) => (bytes, false),
            Item::Last(bytes) => (bytes, true),
        };
        let (Some(Partial::Text(buf)) | Some(Partial::Binary(buf))) = self.partial.as_mut() else {
            return Err(ProtocolError::ContinuationNotStarted);
        };
        if buf.len() + fragment.len() > self.max_message_bytes {
            return Err(ProtocolError::Overflow);
        }
        buf.extend_from_slice(&fragment);
        if !last {
            return Ok(None);
        }
        Ok(match self.partial.take() {
            Some(Partial::Text(buf)) => Some(Message::Text(text(buf.freeze())?)),
            Some(Partial::Binary(buf)) => Some(Message::Binary(buf.freeze())),
            None => None,
        })
    }
}

/// RSV1, RSV2 and RSV3 in a frame's first byte.
const RESERVED_BITS: u8 = 0x70;

/// What [`Inbound`] needs of a frame header (RFC 6455 §5.2) to refuse the frame early.
struct FrameHeader {
    /// RSV1, RSV2 or RSV3 is set.
    reserved_bits: bool,
    /// Data (0x0 continuation, 0x1, 0x2) or control (0x8 and up): their limits differ.
    opcode: u8,
    /// The declared payload length.
    len: u64,
}

impl FrameHeader {
    /// The header at the start of `buf`, once its length field is complete.
    fn parse(buf: &[u8]) -> Option<FrameHeader> {
        let (&first, &second) = (buf.first()?, buf.get(1)?);
        let len = match second & 0x7F {
            126 => u64::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            127 => u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?),
            n => u64::from(n),
        };
        Some(FrameHeader {
            reserved_bits: first & RESERVED_BITS != 0,
            opcode: first & 0x0F,
            len,
        })
    }
}

/// The close code and reason for a client's protocol error other than an oversized
/// message (whose reason names the dialect's limit): 1007 for a text message that is not
/// UTF-8, 1002 for the rest (RFC 6455 §7.4.1), reserved bits included.
pub fn protocol_close(error: &ProtocolError) -> (u16, &'static str) {
    match error {
        ProtocolError::Io(io)
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<std::str::Utf8Error>()) =>
        {
            (1007, "a text message must be UTF-8")
        }
        ProtocolError::InvalidOpcode(first) if first & RESERVED_BITS != 0 => (
            1002,
            "protocol error: reserved bits set (no extension is negotiated)",
        ),
        ProtocolError::InvalidLength(_) => (
            1002,
            "protocol error: bad control frame length (at most 125 bytes; a close payload is empty or 2 bytes and more)",
        ),
        _ => (1002, "protocol error"),
    }
}

/// A text message's payload, which must be UTF-8.
fn text(bytes: Bytes) -> Result<ByteString, ProtocolError> {
    ByteString::try_from(bytes)
        .map_err(|error| ProtocolError::Io(io::Error::new(io::ErrorKind::InvalidData, error)))
}

impl Stream for Inbound {
    type Item = Result<Message, ProtocolError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.ended && this.buf.is_empty() {
                return Poll::Ready(None);
            }
            match this.next_message() {
                Ok(Some(message)) => return Poll::Ready(Some(Ok(message))),
                Ok(None) if this.ended => {
                    // A truncated frame at the end of the connection: nothing more comes.
                    this.buf.clear();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(error) => {
                    this.ended = true;
                    this.buf.clear();
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match Pin::new(&mut this.payload).poll_next(cx) {
                Poll::Ready(Some(Ok(bytes))) => {
                    if this.buf.is_empty() {
                        this.buf = BytesMut::from(bytes);
                    } else {
                        this.buf.extend_from_slice(&bytes);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    this.ended = true;
                    this.buf.clear();
                    return Poll::Ready(Some(Err(ProtocolError::Io(io::Error::other(error)))));
                }
                Poll::Ready(None) => this.ended = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_is_read_as_soon_as_its_length_is_in() {
        assert!(FrameHeader::parse(&[0x82]).is_none());
        assert!(
            FrameHeader::parse(&[0x82, 0xFF, 0, 0, 0]).is_none(),
            "64-bit length cut"
        );
        let tebibyte = [0x82, 0xFF, 0, 0, 1, 0, 0, 0, 0, 0];
        let header = FrameHeader::parse(&tebibyte).expect("complete length");
        assert_eq!((header.opcode, header.len), (2, 1 << 40));
        assert!(!header.reserved_bits);
        let header = FrameHeader::parse(&[0xC1, 0xFE, 1, 0]).expect("16-bit length");
        assert_eq!((header.opcode, header.len), (1, 256));
        assert!(header.reserved_bits, "RSV1");
    }

    #[test]
    fn close_reasons_are_cut_at_123_bytes_on_a_character_boundary() {
        let mut short = "token expired".to_owned();
        cut_close_reason(&mut short);
        assert_eq!(short, "token expired");
        let mut long = "x".repeat(200);
        cut_close_reason(&mut long);
        assert_eq!(long.len(), 123);
        // 'é' is two bytes: the 123rd byte would split the 62nd one.
        let mut accented = format!("x{}", "é".repeat(100));
        cut_close_reason(&mut accented);
        assert_eq!(accented.len(), 123);
        assert!(accented.ends_with('é'));
        let mut split = "é".repeat(100);
        cut_close_reason(&mut split);
        assert_eq!(
            split.len(),
            122,
            "the character across byte 123 is dropped whole"
        );
    }

    #[test]
    fn bad_utf8_closes_with_1007_and_reserved_bits_with_1002() {
        let not_utf8 = text(Bytes::from_static(&[0xC3, 0x28])).unwrap_err();
        assert_eq!(protocol_close(&not_utf8).0, 1007);
        assert_eq!(protocol_close(&ProtocolError::InvalidOpcode(0xC1)).0, 1002);
        assert_eq!(protocol_close(&ProtocolError::InvalidOpcode(0x03)).0, 1002);
        let reset = ProtocolError::Io(io::Error::from(io::ErrorKind::InvalidData));
        assert_eq!(protocol_close(&reset).0, 1002);
    }
}
