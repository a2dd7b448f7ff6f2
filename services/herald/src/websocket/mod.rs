//! The WebSocket connection, shared by every dialect: the handshake, then the socket the
//! session owns once the HTTP/1 connection hands it over ([`upgrade`]).
//!
//! After the `101` no HTTP machinery stays with the connection: actix-http's dispatcher
//! would keep two 8 KiB buffers and a task per connection for as long as it lives. The
//! session's actor reads the socket ([`Inbound`], through one scratch buffer per worker
//! thread, keeping only the partial frame that remains), and a small writer task drains its
//! outbox into the socket ([`writer`]), holding a buffer only while frames are queued.

mod inbound;
mod socket;
pub mod upgrade;
mod writer;

use std::io;

use actix_http::ws;
use actix_web::http::header::SEC_WEBSOCKET_PROTOCOL;
use actix_web::{HttpRequest, HttpResponse};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::Stream;

pub use actix_http::ws::{CloseCode, CloseReason, Message, ProtocolError};
pub use inbound::Inbound;
pub use socket::Socket;

use crate::outbox::OutboxReceiver;

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

/// What a session reads its client's messages from and writes its outbox to: the
/// [`Socket`] of an upgraded connection, or a test's channels.
pub trait Transport: 'static {
    /// The client's messages, fragmented ones assembled.
    type Inbound: Stream<Item = Result<Message, ProtocolError>> + Unpin + 'static;

    /// Starts writing `outbox` to the client and returns the client's messages.
    fn start(self, outbox: OutboxReceiver) -> Self::Inbound;
}

/// A checked upgrade request: its `101` response hands the connection's socket to the
/// session started with the matching [`Socket`].
pub struct Handshake {
    response: actix_http::ResponseBuilder,
    handover: socket::Handover,
}

/// Checks the upgrade request and echoes the first of the client's subprotocols that is in
/// `protocols`; the session reads and writes the returned [`Socket`], whose messages are
/// each at most `max_message_bytes` (fragments included).
pub fn accept(
    req: &HttpRequest,
    protocols: &[&str],
    max_message_bytes: usize,
) -> Result<(Handshake, Socket), actix_web::Error> {
    let mut response = ws::handshake(req.head())?;
    if let Some(protocol) = select_protocol(req, protocols) {
        response.insert_header((SEC_WEBSOCKET_PROTOCOL, protocol));
    }
    let (handover, socket) = socket::pair(max_message_bytes);
    Ok((Handshake { response, handover }, socket))
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
    /// The `101 Switching Protocols` response; once [`upgrade`] has written it, the
    /// connection's socket goes to the session.
    pub fn respond(mut self) -> HttpResponse {
        let mut response = HttpResponse::from(self.response.finish()).map_into_boxed_body();
        response.extensions_mut().insert(self.handover);
        response
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
        ProtocolError::InvalidOpcode(first) if first & inbound::RESERVED_BITS != 0 => (
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

#[cfg(test)]
mod tests {
    use super::*;

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
