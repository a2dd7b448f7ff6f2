//! The `limit` system: the least a notification server can do, to measure how close
//! herald gets to the machine. One thread (a current-thread runtime: no hand-offs between
//! threads), one NATS core subscription on `herald.v1.alias.*.newMessage`, a map from
//! alias to the sockets of its sessions, and for every event: decode the MessagePack
//! envelope once, encode the notification as JSON once (the payload's fields flat plus
//! `aliasId`, as herald's `/v1/ws` sends it), frame it once, and write the same bytes to
//! every socket of the alias with one non-blocking `write` each.
//!
//! It speaks just enough of `/v1/ws` for the load generator: any upgrade request with
//! `?alias_id=` is accepted (the `Authorization` header is ignored), `{"event":
//! "connected","aliasId":…}` is sent right after the `101`, client frames are read only
//! to answer a close or a ping. A socket whose kernel buffer is full keeps its frames in
//! order in a queue of at most [`MAX_PENDING_BYTES`]; over it the socket is closed (a
//! lost probe shows in the report instead of unbounded memory).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Subject of every alias's `newMessage` (the generator's probes).
pub const SUBJECT: &str = "herald.v1.alias.*.newMessage";
/// Longest upgrade request read, bytes.
const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// Deadline for the upgrade request (a readiness probe that only connects is dropped).
const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames waiting for one socket's kernel buffer, bytes; over this the socket is closed.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// Longest client frame payload accepted (the generator sends only close frames).
const MAX_CLIENT_FRAME: usize = 1024;
/// Bytes read from a client at a time.
const READ_CHUNK: usize = 4096;

/// One session's socket and the frames its kernel buffer has not taken yet.
struct Conn {
    id: u64,
    stream: TcpStream,
    pending: RefCell<Pending>,
    /// Wakes the session's task when `pending` gains its first frame.
    wake: Notify,
}

/// Frames not yet written, oldest first (the first may be partly written).
#[derive(Default)]
struct Pending {
    frames: VecDeque<Bytes>,
    bytes: usize,
    /// Over [`MAX_PENDING_BYTES`]: the session is being closed.
    overflowed: bool,
}

impl Conn {
    /// Writes `frame` now if nothing is queued and the kernel takes it; queues the rest.
    fn deliver(&self, frame: &Bytes) {
        let mut pending = self.pending.borrow_mut();
        if pending.overflowed {
            return;
        }
        let mut rest = frame.clone();
        if pending.frames.is_empty() {
            match self.stream.try_write(&rest) {
                Ok(n) if n == rest.len() => return,
                Ok(n) => {
                    let _ = rest.split_to(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The session's task sees the error on its next read and ends.
                Err(_) => return,
            }
            self.wake.notify_one();
        }
        pending.bytes += rest.len();
        pending.frames.push_back(rest);
        if pending.bytes > MAX_PENDING_BYTES {
            pending.overflowed = true;
            pending.frames.clear();
            self.wake.notify_one();
        }
    }

    /// Writes queued frames until the kernel buffer is full; `Err` when the socket failed.
    fn flush(&self) -> io::Result<()> {
        let mut guard = self.pending.borrow_mut();
        let pending = &mut *guard;
        while let Some(front) = pending.frames.front_mut() {
            match self.stream.try_write(front) {
                Ok(n) => {
                    pending.bytes -= n;
                    if n == front.len() {
                        pending.frames.pop_front();
                    } else {
                        let _ = front.split_to(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn has_pending(&self) -> bool {
        !self.pending.borrow().frames.is_empty()
    }

    fn overflowed(&self) -> bool {
        self.pending.borrow().overflowed
    }
}

/// The sessions of every alias.
#[derive(Default)]
struct Hub {
    aliases: RefCell<HashMap<String, Vec<Rc<Conn>>>>,
    next_id: std::cell::Cell<u64>,
}

impl Hub {
    fn add(&self, alias: &str, stream: TcpStream) -> Rc<Conn> {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let conn = Rc::new(Conn {
            id,
            stream,
            pending: RefCell::default(),
            wake: Notify::new(),
        });
        self.aliases
            .borrow_mut()
            .entry(alias.to_owned())
            .or_default()
            .push(Rc::clone(&conn));
        conn
    }

    fn remove(&self, alias: &str, id: u64) {
        let mut aliases = self.aliases.borrow_mut();
        if let Some(conns) = aliases.get_mut(alias) {
            conns.retain(|c| c.id != id);
            if conns.is_empty() {
                aliases.remove(alias);
            }
        }
    }

    /// Writes one frame to every session of `alias`.
    fn publish(&self, alias: &str, frame: &Bytes) {
        if let Some(conns) = self.aliases.borrow().get(alias) {
            for conn in conns {
                conn.deliver(frame);
            }
        }
    }
}

/// A server-to-client WebSocket frame (FIN, unmasked) with `opcode` around `payload`.
pub fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(payload.len() + 10);
    out.extend_from_slice(&[0x80 | opcode]);
    match payload.len() {
        n if n < 126 => out.extend_from_slice(&[n as u8]),
        n if n <= usize::from(u16::MAX) => {
            out.extend_from_slice(&[126]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[127]);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
    out.freeze()
}

/// WebSocket text frame opcode.
const TEXT: u8 = 0x1;
/// Close frame opcode.
const CLOSE: u8 = 0x8;
/// Ping frame opcode.
const PING: u8 = 0x9;
/// Pong frame opcode.
const PONG: u8 = 0xA;

/// The envelope producers publish: `{"aliasId", "payload": {...}}`.
#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "aliasId")]
    alias_id: String,
    payload: serde_json::Map<String, serde_json::Value>,
}

/// The JSON text frame herald's `/v1/ws` sends for an envelope: the payload's fields flat
/// plus `aliasId`; `None` when the body is not such an envelope.
pub fn notification_frame(body: &[u8]) -> Option<Bytes> {
    let Envelope {
        alias_id,
        mut payload,
    } = rmp_serde::from_slice(body).ok()?;
    payload.insert("aliasId".into(), alias_id.into());
    let json = serde_json::to_vec(&payload).ok()?;
    Some(frame(TEXT, &json))
}

/// The `alias_id` query parameter and the `Sec-WebSocket-Key` of an upgrade request head.
fn parse_upgrade(head: &str) -> Option<(String, String)> {
    let mut lines = head.split("\r\n");
    let target = lines.next()?.split(' ').nth(1)?;
    let url = url::Url::parse(&format!("http://localhost{target}")).ok()?;
    let alias = url
        .query_pairs()
        .find(|(k, _)| k == "alias_id")
        .map(|(_, v)| v.into_owned())?;
    let key = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim().to_owned())
    })?;
    Some((alias, key))
}

/// Reads the upgrade request, answers `101` and `connected`; the session's alias.
async fn upgrade(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        anyhow::ensure!(head.len() < MAX_REQUEST_BYTES, "upgrade request too long");
        let n = stream.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before the upgrade request");
        head.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let Some((alias, key)) = parse_upgrade(&text) else {
        let body = "a WebSocket upgrade with ?alias_id= is required\n";
        let response = format!(
            "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(response.as_bytes()).await?;
        anyhow::bail!("not an upgrade with alias_id");
    };
    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n\r\n",
        derive_accept_key(key.as_bytes())
    )
    .into_bytes();
    let connected = serde_json::json!({"event": "connected", "aliasId": alias}).to_string();
    response.extend_from_slice(&frame(TEXT, connected.as_bytes()));
    stream.write_all(&response).await?;
    Ok(alias)
}

/// What the client asked for in the frames read so far.
enum ClientAction {
    /// Nothing to do yet.
    None,
    /// Answer a ping with this pong.
    Pong(Bytes),
    /// The client closed (or broke the protocol): echo a close and end.
    Close,
}

/// The next complete client frame in `buf` (masked, as RFC 6455 requires of clients),
/// consumed; `None` when incomplete.
fn next_client_frame(buf: &mut BytesMut) -> Option<ClientAction> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0F;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 => return Some(ClientAction::Close),
        126 => return None,
        n => (usize::from(n), 2),
    };
    if len > MAX_CLIENT_FRAME || !masked {
        return Some(ClientAction::Close);
    }
    if buf.len() < at + 4 + len {
        return None;
    }
    let mask = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
    at += 4;
    let mut payload = buf.split_to(at + len).split_off(at);
    for (i, b) in payload.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
    Some(match opcode {
        CLOSE => ClientAction::Close,
        PING => ClientAction::Pong(frame(PONG, &payload)),
        _ => ClientAction::None,
    })
}

/// One session: upgrade, join the hub, then flush queued frames and read client frames
/// until either side closes.
async fn session(hub: Rc<Hub>, mut stream: TcpStream) {
    let alias = match tokio::time::timeout(UPGRADE_TIMEOUT, upgrade(&mut stream)).await {
        Ok(Ok(alias)) => alias,
        _ => return,
    };
    let _ = stream.set_nodelay(true);
    let conn = hub.add(&alias, stream);
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    'session: loop {
        if conn.overflowed() {
            break;
        }
        let pending = conn.has_pending();
        tokio::select! {
            ready = conn.stream.readable() => {
                if ready.is_err() {
                    break;
                }
                buf.reserve(READ_CHUNK);
                match conn.stream.try_read_buf(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
                while let Some(action) = next_client_frame(&mut buf) {
                    match action {
                        ClientAction::None => {}
                        ClientAction::Pong(pong) => conn.deliver(&pong),
                        ClientAction::Close => {
                            conn.deliver(&frame(CLOSE, &[]));
                            let _ = conn.flush();
                            break 'session;
                        }
                    }
                }
            }
            ready = conn.stream.writable(), if pending => {
                if ready.is_err() || conn.flush().is_err() {
                    break;
                }
            }
            // Also while writes wait: an overflow must end a session whose client reads
            // nothing (neither branch above would wake it).
            () = conn.wake.notified() => {}
        }
    }
    hub.remove(&alias, conn.id);
}

/// Runs the limit server until the NATS connection ends: subscribes first, then accepts
/// sessions on `listen` (so a session that is `connected` misses nothing).
pub async fn serve(listen: SocketAddr, nats_url: &str) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to {nats_url}"))?;
    let mut events = client.subscribe(SUBJECT).await?;
    client.flush().await.context("subscribing")?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    println!("limit-server: listening on {listen}, events from {nats_url} {SUBJECT}");
    let hub = Rc::new(Hub::default());
    let accept_hub = Rc::clone(&hub);
    tokio::task::spawn_local(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::task::spawn_local(session(Rc::clone(&accept_hub), stream));
                }
                Err(e) => {
                    // Out of descriptors: let sessions close before accepting again.
                    eprintln!("limit-server: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    let mut undecodable = 0u64;
    while let Some(message) = events.next().await {
        // herald.v1.alias.<alias>.newMessage
        let Some(alias) = message.subject.split('.').nth(3) else {
            continue;
        };
        match notification_frame(&message.payload) {
            Some(frame) => hub.publish(alias, &frame),
            None => {
                undecodable += 1;
                if undecodable.is_power_of_two() {
                    eprintln!(
                        "limit-server: {undecodable} bodies on {SUBJECT} were not a \
                         MessagePack {{aliasId, payload}} envelope (skipped)"
                    );
                }
            }
        }
    }
    anyhow::bail!("the NATS subscription ended")
}

/// `herald-loadtest limit-server`: [`serve`] on a current-thread runtime (the least a
/// server can do: no thread hand-offs), blocking the calling thread.
pub fn run_blocking(listen: SocketAddr, nats_url: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, serve(listen, nats_url))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe;

    #[test]
    fn frames_carry_their_length() {
        assert_eq!(&frame(TEXT, b"hi")[..], b"\x81\x02hi");
        let medium = frame(TEXT, &[b'x'; 300]);
        assert_eq!(&medium[..4], &[0x81, 126, 1, 44]);
        assert_eq!(medium.len(), 304);
        let big = frame(TEXT, &vec![b'x'; 100 * 1024]);
        assert_eq!(big[1], 127);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 102_400);
    }

    #[test]
    fn probe_becomes_the_notification_the_generator_reads() {
        let body = probe::encode("a0007", "r1.0", 7, 123, "eml");
        let frame = notification_frame(&body).unwrap();
        assert_eq!(&frame[..2], &[0x81, 126]);
        let len = usize::from(u16::from_be_bytes([frame[2], frame[3]]));
        assert_eq!(frame.len(), 4 + len);
        let json: serde_json::Value = serde_json::from_slice(&frame[4..]).unwrap();
        assert_eq!(json["aliasId"], "a0007");
        let receipt = probe::Receipt::parse(&json.to_string()).unwrap();
        assert_eq!(receipt.probe_of("r1.0"), Some((7, 123)));
        assert!(notification_frame(b"not msgpack").is_none());
    }

    #[test]
    fn upgrade_request_gives_alias_and_key() {
        let head = "GET /v1/ws?alias_id=a0001 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic eA==\r\n\
                    sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        assert_eq!(
            parse_upgrade(head),
            Some(("a0001".into(), "dGhlIHNhbXBsZSBub25jZQ==".into()))
        );
        assert_eq!(parse_upgrade("GET /v1/ws HTTP/1.1\r\n\r\n"), None);
    }

    #[test]
    fn client_frames_are_unmasked_and_answered() {
        // A masked ping "ab" (mask 1,2,3,4), then a masked close with code 1000.
        let mut buf = BytesMut::from(&[0x89, 0x82, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2][..]);
        buf.extend_from_slice(&[0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
        match next_client_frame(&mut buf) {
            Some(ClientAction::Pong(pong)) => assert_eq!(&pong[..], b"\x8a\x02ab"),
            _ => panic!("expected a pong"),
        }
        assert!(matches!(
            next_client_frame(&mut buf),
            Some(ClientAction::Close)
        ));
        assert!(buf.is_empty());
        assert!(next_client_frame(&mut buf).is_none());
    }
}
