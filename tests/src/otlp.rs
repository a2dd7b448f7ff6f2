//! An in-test OTLP collector: accepts `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest` (what nodes send with `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`)
//! or the gRPC `TraceService/Export` call (`grpc`, over plain HTTP/2), and keeps every span
//! it receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// Largest request body accepted (a batch of spans is far smaller).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One exported span, flattened for assertions.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// Span name, e.g. `herald.receive`.
    pub name: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// Span attributes, values rendered as strings.
    pub attributes: HashMap<String, String>,
    /// Resource attributes of the exporting process (`service.name`, `service.instance.id`).
    pub resource: HashMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value, or "" when absent.
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map_or("", String::as_str)
    }
}

/// A running collector; stops accepting when dropped.
pub struct OtlpReceiver {
    /// `http://127.0.0.1:PORT`.
    url: String,
    /// Everything received so far.
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// The accept loop.
    task: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    /// Listens for OTLP/HTTP on a free loopback port.
    pub async fn start() -> OtlpReceiver {
        Self::start_with(false).await
    }

    /// Listens for OTLP/gRPC on a free loopback port.
    pub async fn start_grpc() -> OtlpReceiver {
        Self::start_with(true).await
    }

    async fn start_with(grpc: bool) -> OtlpReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("cannot bind the OTLP receiver");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&spans);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if grpc {
                    tokio::spawn(serve_grpc(stream, Arc::clone(&sink)));
                } else {
                    tokio::spawn(serve(stream, Arc::clone(&sink)));
                }
            }
        });
        OtlpReceiver { url, spans, task }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` is appended by the node).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("span lock").clone()
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one keep-alive connection: each request is answered 200 with an empty body
/// (an empty `ExportTraceServiceResponse`: full success).
async fn serve(stream: TcpStream, sink: Arc<Mutex<Vec<ReceivedSpan>>>) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut request_line = String::new();
        match reader.read_line(&mut request_line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut content_length = 0usize;
        let mut chunked = false;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.trim().to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                    _ => {}
                }
            }
        }
        let body = if chunked {
            match read_chunked(&mut reader).await {
                Some(body) => body,
                None => return,
            }
        } else {
            if content_length > MAX_BODY {
                return;
            }
            let mut body = vec![0; content_length];
            if reader.read_exact(&mut body).await.is_err() {
                return;
            }
            body
        };
        let status = if request_line.starts_with("POST ") && request_line.contains("/v1/traces") {
            match ExportTraceServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    sink.lock().expect("span lock").extend(flatten(request));
                    "200 OK"
                }
                Err(_) => "400 Bad Request",
            }
        } else {
            "404 Not Found"
        };
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n"
        );
        if write.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Serves one HTTP/2 connection of gRPC calls: each `Export` message (5-byte gRPC frame
/// header, uncompressed) is decoded and answered with an empty response and `grpc-status: 0`.
async fn serve_grpc(stream: TcpStream, sink: Arc<Mutex<Vec<ReceivedSpan>>>) {
    let Ok(mut connection) = h2::server::handshake(stream).await else {
        return;
    };
    while let Some(Ok((request, mut respond))) = connection.accept().await {
        let sink = Arc::clone(&sink);
        tokio::spawn(async move {
            let mut body = request.into_body();
            let mut data = Vec::new();
            while let Some(Ok(chunk)) = body.data().await {
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            let status = match data.get(5..).map(ExportTraceServiceRequest::decode) {
                Some(Ok(request)) if data[0] == 0 => {
                    sink.lock().expect("span lock").extend(flatten(request));
                    "0"
                }
                _ => "13",
            };
            let response = http::Response::builder()
                .status(200)
                .header("content-type", "application/grpc")
                .body(())
                .expect("a valid response");
            let Ok(mut send) = respond.send_response(response, false) else {
                return;
            };
            let _ = send.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), false);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static(status));
            let _ = send.send_trailers(trailers);
        });
    }
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).await.ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if body.len() + size > MAX_BODY {
            return None;
        }
        let mut chunk = vec![0; size + 2];
        reader.read_exact(&mut chunk).await.ok()?;
        if size == 0 {
            return Some(body);
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

fn render(value: Option<&AnyValue>) -> String {
    match value {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
            (kv.key.clone(), render(value))
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn flatten(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|r| attributes(&r.attributes))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                out.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: attributes(&span.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
    out
}
