//! The OTLP receiver of the tracing runs (`otlp-sink`): accepts `POST /v1/traces`
//! (OTLP/HTTP protobuf, what herald sends with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`),
//! answers `200` with an empty body (an empty `ExportTraceServiceResponse`: full success)
//! and only counts requests, bytes and spans; `GET /stats` returns the counts as JSON.
//!
//! It must cost as little as possible, so it never becomes what the traced herald waits
//! on: one thread (a current-thread runtime), bodies read into one reused buffer, and the
//! spans counted by walking the protobuf's length-delimited fields (three levels:
//! `resource_spans` → `scope_spans` → `spans`) without decoding a span.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body accepted (the batch exporter sends at most 512 spans a request).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Longest request head line accepted.
const MAX_LINE: usize = 8 * 1024;

/// What the sink received so far (`GET /stats`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SinkStats {
    /// `POST /v1/traces` requests answered 200.
    pub requests: u64,
    /// Spans in them.
    pub spans: u64,
    /// Body bytes of them.
    pub bytes: u64,
    /// Requests whose body was not a well-formed `ExportTraceServiceRequest` (answered 400).
    pub malformed: u64,
}

/// Counters shared by the connections of the one thread.
#[derive(Default)]
struct Counters {
    requests: Cell<u64>,
    spans: Cell<u64>,
    bytes: Cell<u64>,
    malformed: Cell<u64>,
}

impl Counters {
    fn stats(&self) -> SinkStats {
        SinkStats {
            requests: self.requests.get(),
            spans: self.spans.get(),
            bytes: self.bytes.get(),
            malformed: self.malformed.get(),
        }
    }
}

/// Runs the sink on `listen` on a current-thread runtime until killed.
pub fn run_blocking(listen: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        serve(listener).await
    })
}

/// Accepts connections on `listener` (inside a `LocalSet`) until it fails.
pub async fn serve(listener: TcpListener) -> anyhow::Result<()> {
    let counters = Rc::new(Counters::default());
    loop {
        let (stream, _) = listener.accept().await.context("accepting")?;
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(connection(stream, Rc::clone(&counters)));
    }
}

/// One keep-alive HTTP/1.1 connection; returns when the peer closes or misbehaves.
async fn connection(stream: TcpStream, counters: Rc<Counters>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line).await {
            Some(0) | None => return,
            Some(_) => {}
        }
        let request_line = line.trim_end().to_owned();
        let mut content_length = 0usize;
        let mut chunked = false;
        loop {
            line.clear();
            if read_line(&mut reader, &mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.parse().unwrap_or(usize::MAX);
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = value.eq_ignore_ascii_case("chunked");
                }
            }
        }
        body.clear();
        let read = if chunked {
            read_chunked(&mut reader, &mut body).await
        } else if content_length <= MAX_BODY {
            body.resize(content_length, 0);
            reader.read_exact(&mut body).await.is_ok()
        } else {
            false
        };
        if !read {
            return;
        }
        let response = if request_line.starts_with("POST ") && request_line.contains("/v1/traces") {
            match count_spans(&body) {
                Some(spans) => {
                    counters.requests.set(counters.requests.get() + 1);
                    counters.spans.set(counters.spans.get() + spans);
                    counters.bytes.set(counters.bytes.get() + body.len() as u64);
                    empty("200 OK", "application/x-protobuf")
                }
                None => {
                    counters.malformed.set(counters.malformed.get() + 1);
                    empty("400 Bad Request", "text/plain")
                }
            }
        } else if request_line.starts_with("GET /stats") {
            let json = serde_json::to_string(&counters.stats()).unwrap_or_default();
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{json}",
                json.len()
            )
        } else {
            empty("404 Not Found", "text/plain")
        };
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A response head with an empty body.
fn empty(status: &str, content_type: &str) -> String {
    format!("HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: 0\r\n\r\n")
}

/// One line into `line` (at most [`MAX_LINE`] bytes); `None` on an error or an overlong line.
async fn read_line(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
) -> Option<usize> {
    let n = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_line(line)
        .await
        .ok()?;
    (n < MAX_LINE || line.ends_with('\n')).then_some(n)
}

/// A `Transfer-Encoding: chunked` body into `body`; false when malformed or too big.
async fn read_chunked(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    body: &mut Vec<u8>,
) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        if read_line(reader, &mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        let size = line.trim_end().split(';').next().unwrap_or_default();
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return false;
        };
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if read_line(reader, &mut line).await.unwrap_or(0) == 0 {
                    return false;
                }
                if line.trim_end().is_empty() {
                    return true;
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return false;
        }
        let start = body.len();
        body.resize(start + size, 0);
        if reader.read_exact(&mut body[start..]).await.is_err() {
            return false;
        }
        let mut crlf = [0u8; 2];
        if reader.read_exact(&mut crlf).await.is_err() || &crlf != b"\r\n" {
            return false;
        }
    }
}

/// Spans in an `ExportTraceServiceRequest`: the number of field-2 (`spans`) messages of
/// every field-2 (`scope_spans`) message of every field-1 (`resource_spans`) message;
/// `None` when the bytes are not well-formed protobuf.
pub fn count_spans(request: &[u8]) -> Option<u64> {
    let mut spans = 0;
    for (field, resource_spans) in fields(request)? {
        if field != 1 {
            continue;
        }
        for (field, scope_spans) in fields(resource_spans?)? {
            if field != 2 {
                continue;
            }
            for (field, span) in fields(scope_spans?)? {
                if field == 2 {
                    span?;
                    spans += 1;
                }
            }
        }
    }
    Some(spans)
}

/// The top-level fields of a protobuf message: `(field number, Some(bytes))` for a
/// length-delimited field, `(field number, None)` for the others; `None` when malformed.
#[allow(clippy::type_complexity)]
fn fields(mut message: &[u8]) -> Option<Vec<(u64, Option<&[u8]>)>> {
    let mut out = Vec::new();
    while !message.is_empty() {
        let key = varint(&mut message)?;
        let field = key >> 3;
        match key & 7 {
            0 => {
                varint(&mut message)?;
                out.push((field, None));
            }
            1 => {
                message = message.get(8..)?;
                out.push((field, None));
            }
            2 => {
                let len = usize::try_from(varint(&mut message)?).ok()?;
                let value = message.get(..len)?;
                message = &message[len..];
                out.push((field, Some(value)));
            }
            5 => {
                message = message.get(4..)?;
                out.push((field, None));
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads one base-128 varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The sink's counts, read with `GET /stats` from `127.0.0.1:port`.
pub async fn stats(port: u16) -> anyhow::Result<SinkStats> {
    let attempt = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await?;
        let mut response = String::new();
        // The sink keeps the connection open: read the head, then content-length bytes.
        let mut reader = BufReader::new(tcp);
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 {
                bail!("the OTLP sink closed before its stats");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse()?;
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body).await?;
        response.push_str(std::str::from_utf8(&body)?);
        Ok::<_, anyhow::Error>(serde_json::from_str(&response)?)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .context("the OTLP sink did not answer GET /stats within 5 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tag` + length prefix + `value`, for a length-delimited field.
    fn field(number: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3) | 2, value.len() as u8];
        out.extend_from_slice(value);
        out
    }

    #[test]
    fn spans_are_counted_through_resource_and_scope_spans() {
        let span = [field(5, b"herald.receive"), vec![0x38, 0x96, 0x01]].concat();
        let scope = [field(1, b"scope"), field(2, &span), field(2, &span)].concat();
        let resource = [field(1, b"resource"), field(2, &scope), field(2, &scope)].concat();
        let request = [field(1, &resource), field(1, &resource)].concat();
        assert_eq!(count_spans(&request), Some(8));
        assert_eq!(count_spans(&[]), Some(0));
        assert_eq!(count_spans(&request[..request.len() - 1]), None);
    }

    #[tokio::test]
    async fn posts_are_answered_and_counted_and_stats_report_them() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                tokio::task::spawn_local(serve(listener));
                let span = field(5, b"s");
                let scope = [field(2, &span), field(2, &span)].concat();
                let request = field(1, &field(2, &scope));
                let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                for _ in 0..2 {
                    let head = format!(
                        "POST /v1/traces HTTP/1.1\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                        request.len()
                    );
                    tcp.write_all(head.as_bytes()).await.unwrap();
                    tcp.write_all(&request).await.unwrap();
                    let mut answer = [0u8; 15];
                    tcp.read_exact(&mut answer).await.unwrap();
                    assert_eq!(&answer, b"HTTP/1.1 200 OK");
                    // The rest of the (fixed-size) head.
                    let rest = "\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
                    let mut tail = vec![0u8; rest.len()];
                    tcp.read_exact(&mut tail).await.unwrap();
                }
                let stats = stats(port).await.unwrap();
                assert_eq!(
                    stats,
                    SinkStats {
                        requests: 2,
                        spans: 4,
                        bytes: 2 * request.len() as u64,
                        malformed: 0
                    }
                );
            })
            .await;
    }
}
