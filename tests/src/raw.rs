//! A hand-rolled WebSocket client over raw TCP: it performs the upgrade and reads frames,
//! but never answers pings unless told to. tungstenite answers pings whenever the socket
//! is read, so a client that is "alive but unresponsive" needs this.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// WebSocket opcodes (RFC 6455 §5.2).
pub mod opcode {
    /// Continuation of a fragmented message.
    pub const CONTINUATION: u8 = 0x0;
    /// Text data frame.
    pub const TEXT: u8 = 0x1;
    /// Binary data frame.
    pub const BINARY: u8 = 0x2;
    /// Close control frame.
    pub const CLOSE: u8 = 0x8;
    /// Ping control frame.
    pub const PING: u8 = 0x9;
    /// Pong control frame.
    pub const PONG: u8 = 0xA;
}

/// One frame read from the server (servers never mask).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawFrame {
    /// A frame: opcode and (unfragmented) payload.
    Frame {
        /// The opcode.
        opcode: u8,
        /// The payload.
        payload: Vec<u8>,
    },
    /// The server closed the TCP connection.
    Eof,
    /// Nothing arrived in time.
    Timeout,
}

impl RawFrame {
    /// The close code, for a close frame that carries one.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            RawFrame::Frame {
                opcode: opcode::CLOSE,
                payload,
            } if payload.len() >= 2 => Some(u16::from_be_bytes([payload[0], payload[1]])),
            _ => None,
        }
    }
}

/// A WebSocket connection that does exactly what the test says and nothing else.
pub struct RawWs {
    /// The TCP stream after the upgrade.
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
}

impl RawWs {
    /// Sends the upgrade request for `path_and_query` with `headers`; returns the socket on
    /// `101`, else the status code.
    pub async fn connect(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawWs, u16> {
        let stream = TcpStream::connect(addr)
            .await
            .expect("cannot connect to herald");
        Self::upgrade(stream, addr, path_and_query, headers, &[]).await
    }

    /// Like [`RawWs::connect`], with `early` (encoded frames) sent in the same write as the
    /// upgrade request, before the `101` comes back: the server must read them after its
    /// handshake from what it has already buffered.
    pub async fn connect_with_early_frames(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
        early: &[u8],
    ) -> Result<RawWs, u16> {
        let stream = TcpStream::connect(addr)
            .await
            .expect("cannot connect to herald");
        Self::upgrade(stream, addr, path_and_query, headers, early).await
    }

    /// Like [`RawWs::connect`] with a tiny socket receive buffer, so that the server's
    /// writes back up quickly when this client does not read (a slow consumer).
    pub async fn connect_slow(
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawWs, u16> {
        let socket = TcpSocket::new_v4().expect("cannot create a socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("cannot shrink the receive buffer");
        let stream = socket
            .connect(addr)
            .await
            .expect("cannot connect to herald");
        Self::upgrade(stream, addr, path_and_query, headers, &[]).await
    }

    /// Sends the upgrade request on `stream` and reads the response head.
    async fn upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path_and_query: &str,
        headers: &[(&str, &str)],
        early: &[u8],
    ) -> Result<RawWs, u16> {
        let mut request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        let mut request = request.into_bytes();
        request.extend_from_slice(early);
        stream
            .write_all(&request)
            .await
            .expect("cannot send the upgrade request");

        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(crate::PROMPT, stream.read(&mut chunk))
                .await
                .expect("no upgrade response in time")
                .expect("cannot read the upgrade response");
            assert!(n > 0, "connection closed during the upgrade");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("malformed upgrade response: {head}"));
        if status != 101 {
            return Err(status);
        }
        buf.drain(..head_end);
        Ok(RawWs { stream, buf })
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse(&mut self) -> Option<RawFrame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() >= 4 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")),
                10,
            ),
            126 | 127 => return None,
            n => (u64::from(n), 2),
        };
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        let end = at + usize::try_from(len).expect("frame fits in memory");
        if b.len() < end {
            return None;
        }
        let mut payload = b[at..end].to_vec();
        if let Some(mask) = mask {
            payload
                .iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x ^= mask[i % 4]);
        }
        self.buf.drain(..end);
        Some(RawFrame::Frame { opcode, payload })
    }

    /// Reads the next frame within `timeout` (pings are returned, not answered).
    pub async fn read_frame(&mut self, timeout: Duration) -> RawFrame {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(frame) = self.parse() {
                return frame;
            }
            let mut chunk = [0u8; 8192];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return RawFrame::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return RawFrame::Eof,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Sends one masked frame, as a client must.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_fragment(opcode, payload, true).await;
    }

    /// Sends one frame without a mask, which only servers may do (RFC 6455 §5.1).
    pub async fn send_unmasked(&mut self, opcode: u8, payload: &[u8]) {
        let len = u8::try_from(payload.len()).expect("a short payload");
        assert!(len < 126, "a short payload");
        let mut frame = vec![0x80 | opcode, len];
        frame.extend_from_slice(payload);
        self.stream
            .write_all(&frame)
            .await
            .expect("cannot send a frame");
    }

    /// Sends one masked frame of a fragmented message: the first with the message's
    /// opcode, the rest with [`opcode::CONTINUATION`]; `fin` on the last.
    pub async fn send_fragment(&mut self, opcode: u8, payload: &[u8], fin: bool) {
        let frame = masked_frame(if fin { 0x80 } else { 0 } | opcode, payload);
        self.stream
            .write_all(&frame)
            .await
            .expect("cannot send a frame");
    }

    /// Writes `bytes` as they are (prebuilt frames, or the payload after a
    /// [`frame_header`]); `false` once the server stopped taking them within `timeout`
    /// or closed the connection. What the server sent meanwhile is kept for
    /// [`RawWs::read_frame`]: a server that closes with unread input resets the
    /// connection, and the close frame it sent before would be lost.
    pub async fn write_raw(&mut self, bytes: &[u8], timeout: Duration) -> bool {
        self.drain_readable();
        let written = tokio::time::timeout(timeout, self.stream.write_all(bytes)).await;
        self.drain_readable();
        matches!(written, Ok(Ok(())))
    }

    /// Whether a complete close frame (or the end of the connection) was read already.
    pub fn saw_close(&mut self) -> bool {
        self.drain_readable();
        let mut at = 0;
        while let Some((opcode, end)) = frame_at(&self.buf[at..]) {
            if opcode == opcode::CLOSE {
                return true;
            }
            at += end;
        }
        false
    }

    /// Buffers whatever the server sent that can be read without waiting.
    fn drain_readable(&mut self) {
        let mut chunk = [0u8; 8192];
        while let Ok(n) = self.stream.try_read(&mut chunk) {
            if n == 0 {
                break;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Where the frame at the start of `b` ends, with its opcode, if it is complete.
fn frame_at(b: &[u8]) -> Option<(u8, usize)> {
    if b.len() < 2 {
        return None;
    }
    let (len, at) = match b[1] & 0x7F {
        126 if b.len() >= 4 => (usize::from(u16::from_be_bytes([b[2], b[3]])), 4),
        127 if b.len() >= 10 => (
            usize::try_from(u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"))).ok()?,
            10,
        ),
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    let end = at + if b[1] & 0x80 != 0 { 4 } else { 0 } + len;
    (b.len() >= end).then_some((b[0] & 0x0F, end))
}

/// The header of a masked client frame: `first` is the FIN/RSV/opcode byte, `len` the
/// declared payload length (which need not be sent in full, or at all).
pub fn frame_header(first: u8, len: u64) -> Vec<u8> {
    let mut header = vec![first];
    match len {
        n if n < 126 => header.push(0x80 | u8::try_from(n).expect("< 126")),
        n if n <= u64::from(u16::MAX) => {
            header.push(0x80 | 126);
            header.extend_from_slice(&u16::try_from(n).expect("fits u16").to_be_bytes());
        }
        n => {
            header.push(0x80 | 127);
            header.extend_from_slice(&n.to_be_bytes());
        }
    }
    header.extend_from_slice(&MASK);
    header
}

/// The mask every frame of this client uses.
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// A whole masked client frame: `first` is the FIN/RSV/opcode byte.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(first, payload.len() as u64);
    frame.extend(payload.iter().enumerate().map(|(i, x)| x ^ MASK[i % 4]));
    frame
}
