//! The client side of the NATS text protocol, as spoken over nats-server's WebSocket
//! listener by the raw-NATS peer sessions: `CONNECT`/`SUB`/`PING` out; `INFO`, `MSG`,
//! `HMSG`, `PING`, `PONG`, `+OK`, `-ERR` in. WebSocket frames do not align with protocol
//! operations, so [`Parser`] buffers bytes and yields whole operations.

use serde::Serialize;

/// Longest control line accepted (an `INFO` line is ~500 bytes).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One operation from the server.
#[derive(Debug, PartialEq, Eq)]
pub enum Op {
    /// `INFO {json}`.
    Info(String),
    /// `MSG`/`HMSG`: the subject and the payload (headers dropped).
    Msg {
        /// Subject the message was published on.
        subject: String,
        /// Message body.
        payload: Vec<u8>,
    },
    /// `PING` (answer with [`PONG`]).
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR 'reason'`.
    Err(String),
}

/// The client's answer to a server `PING`.
pub const PONG: &[u8] = b"PONG\r\n";

/// `CONNECT` (with `auth_token`), `SUB subject 1` and `PING`: the server answers `PONG`
/// once the subscription is in place (or `-ERR` when the token is refused).
pub fn handshake(token: &str, subject: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Connect<'a> {
        verbose: bool,
        pedantic: bool,
        protocol: u8,
        lang: &'static str,
        version: &'static str,
        headers: bool,
        echo: bool,
        auth_token: &'a str,
    }
    let connect = serde_json::to_string(&Connect {
        verbose: false,
        pedantic: false,
        protocol: 1,
        lang: "rust-herald-loadtest",
        version: env!("CARGO_PKG_VERSION"),
        headers: true,
        echo: false,
        auth_token: token,
    })
    .expect("CONNECT always encodes");
    format!("CONNECT {connect}\r\nSUB {subject} 1\r\nPING\r\n").into_bytes()
}

/// Buffers server bytes and splits them into [`Op`]s.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    /// Appends bytes received from the server.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole operation, `Ok(None)` when more bytes are needed, or an error for a
    /// malformed stream.
    pub fn next_op(&mut self) -> Result<Option<Op>, String> {
        let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
            if self.buf.len() > MAX_CONTROL_LINE {
                return Err("control line too long".into());
            }
            return Ok(None);
        };
        let line = std::str::from_utf8(&self.buf[..eol])
            .map_err(|_| "control line is not UTF-8".to_owned())?
            .to_owned();
        let (verb, rest) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let op = match verb.to_ascii_uppercase().as_str() {
            "MSG" | "HMSG" => {
                let args: Vec<&str> = rest.split_whitespace().collect();
                let headers = verb.eq_ignore_ascii_case("HMSG");
                // MSG subject sid [reply] size; HMSG subject sid [reply] hdr_size total_size.
                let sizes = if headers { 2 } else { 1 };
                if args.len() < 2 + sizes || args.len() > 3 + sizes {
                    return Err(format!("malformed {verb} line: {line}"));
                }
                let parse = |s: &str| {
                    s.parse::<usize>()
                        .map_err(|_| format!("bad size in {verb} line: {line}"))
                };
                let total = parse(args[args.len() - 1])?;
                let header_len = if headers {
                    parse(args[args.len() - 2])?
                } else {
                    0
                };
                if header_len > total {
                    return Err(format!("header size above total in: {line}"));
                }
                let start = eol + 2;
                if self.buf.len() < start + total + 2 {
                    return Ok(None);
                }
                let payload = self.buf[start + header_len..start + total].to_vec();
                let subject = args[0].to_owned();
                self.buf.drain(..start + total + 2);
                return Ok(Some(Op::Msg { subject, payload }));
            }
            "INFO" => Op::Info(rest.to_owned()),
            "PING" => Op::Ping,
            "PONG" => Op::Pong,
            "+OK" => Op::Ok,
            "-ERR" => Op::Err(rest.trim().trim_matches('\'').to_owned()),
            _ => return Err(format!("unknown operation: {line}")),
        };
        self.buf.drain(..eol + 2);
        Ok(Some(op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_operations_across_frames() {
        let mut p = Parser::default();
        p.push(b"INFO {\"a\":1}\r\nPI");
        assert_eq!(p.next_op().unwrap(), Some(Op::Info("{\"a\":1}".into())));
        assert_eq!(p.next_op().unwrap(), None);
        p.push(b"NG\r\nMSG a.b 1 5\r\nhel");
        assert_eq!(p.next_op().unwrap(), Some(Op::Ping));
        assert_eq!(p.next_op().unwrap(), None);
        p.push(b"lo\r\nHMSG a.b 1 _INBOX.x 12 17\r\nNATS/1.0\r\n\r\nworld\r\n-ERR 'Authorization Violation'\r\n");
        assert_eq!(
            p.next_op().unwrap(),
            Some(Op::Msg {
                subject: "a.b".into(),
                payload: b"hello".to_vec()
            })
        );
        assert_eq!(
            p.next_op().unwrap(),
            Some(Op::Msg {
                subject: "a.b".into(),
                payload: b"world".to_vec()
            })
        );
        assert_eq!(
            p.next_op().unwrap(),
            Some(Op::Err("Authorization Violation".into()))
        );
        assert_eq!(p.next_op().unwrap(), None);
    }

    #[test]
    fn handshake_subscribes_and_pings() {
        let text = String::from_utf8(handshake("t", "x.y")).unwrap();
        assert!(text.starts_with("CONNECT {"));
        assert!(text.contains("\"auth_token\":\"t\""));
        assert!(text.ends_with("\r\nSUB x.y 1\r\nPING\r\n"));
    }
}
