//! The client's messages, read from the socket and checked at each frame's header.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use actix_codec::Decoder;
use actix_http::ws::{self, Codec, Item};
use bytes::BytesMut;
use futures_util::Stream;

use super::socket::{Shared, Side};
use super::{text, Message, ProtocolError};
use crate::outbox::Backlog;

/// Bytes read from a socket at once, into the worker thread's scratch buffer.
const READ_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Every session of a worker thread reads into this buffer, then keeps only the
    /// partial frame that remains: an idle session holds no read buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_CHUNK].into_boxed_slice());
}

/// What a fragmented message is being assembled into.
enum Partial {
    Text(BytesMut),
    Binary(BytesMut),
}

/// The client's messages, fragmented ones assembled (RFC 6455 §5.4).
pub struct Inbound {
    shared: Rc<Shared>,
    /// Reading waits while the session's outbox is more than half full.
    backlog: Backlog,
    /// Bytes read and not yet parsed: at most one partial frame between reads.
    buf: BytesMut,
    codec: Codec,
    max_message_bytes: usize,
    partial: Option<Partial>,
    /// The connection's read side ended, or a protocol error ended the stream.
    ended: bool,
}

impl Inbound {
    pub(super) fn new(shared: Rc<Shared>, backlog: Backlog, max_message_bytes: usize) -> Inbound {
        Inbound {
            shared,
            backlog,
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
            // the header's first byte, reserved bits and all, tells [`super::protocol_close`].
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

    /// Reads what the socket has into the buffer: the number of bytes, 0 at its end (or
    /// when the connection was abandoned before its socket was handed over).
    fn read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = ready!(self.shared.poll_io(Side::Reader, cx)) else {
            return Poll::Ready(Ok(0));
        };
        if let Some(leftover) = self.shared.take_leftover() {
            self.buf.extend_from_slice(&leftover);
            return Poll::Ready(Ok(leftover.len()));
        }
        ready!(self.backlog.poll_room(cx));
        loop {
            ready!(io.poll_read_ready(cx))?;
            let read: io::Result<usize> = SCRATCH.with_borrow_mut(|scratch| {
                let n = io.try_read(scratch)?;
                self.buf.extend_from_slice(&scratch[..n]);
                Ok(n)
            });
            match read {
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
                read => return Poll::Ready(read),
            }
        }
    }
}

/// RSV1, RSV2 and RSV3 in a frame's first byte.
pub(super) const RESERVED_BITS: u8 = 0x70;

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
                    this.buf = BytesMut::new();
                    return Poll::Ready(None);
                }
                Ok(None) => {
                    if this.buf.is_empty() {
                        // Every frame read was whole: give the buffer back while idle.
                        this.buf = BytesMut::new();
                    }
                }
                Err(error) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match ready!(this.read(cx)) {
                Ok(0) => this.ended = true,
                Ok(_) => {}
                Err(error) => {
                    this.ended = true;
                    this.buf = BytesMut::new();
                    return Poll::Ready(Some(Err(ProtocolError::Io(error))));
                }
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
}
