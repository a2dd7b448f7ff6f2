//! OpenTelemetry (SPEC §7): one trace per event, from the publisher's `traceparent` through
//! `herald.receive` → `herald.fanout` → `herald.deliver` → `herald.write` on every node,
//! exported over OTLP/HTTP to an in-test collector; JSON log lines carry the trace id.

use std::collections::HashMap;
use std::time::Duration;

use herald_protocol::Event;
use herald_tests::fixtures::{payload_for, DEMO};
use herald_tests::node::herald_binary;
use herald_tests::{
    eventually, Connect, NatsServer, Node, NodeConfig, OtlpReceiver, Publisher, ReceivedSpan,
    PROMPT,
};

/// A trace id and parent span id as a Python producer would send them.
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const PRODUCER_SPAN: &str = "eee19b7ec3c1b174";

/// A node on `nats` exporting spans to `receiver` every 100 ms, logging JSON.
fn traced(nats: &NatsServer, receiver: &OtlpReceiver) -> NodeConfig {
    traced_over(nats, receiver, "http/protobuf")
}

/// Like [`traced`] with an explicit `OTEL_EXPORTER_OTLP_PROTOCOL`.
fn traced_over(nats: &NatsServer, receiver: &OtlpReceiver, protocol: &str) -> NodeConfig {
    NodeConfig::nats(&[nats.url()])
        .set("log.format", "json")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env("OTEL_SERVICE_NAME", "herald-e2e")
}

/// The one span named `name` among `spans` whose parent is `parent`.
fn child<'a>(spans: &'a [ReceivedSpan], name: &str, parent: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.parent_span_id == parent)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {name} under {parent}, got {found:#?} among {spans:#?}"
    );
    found[0]
}

#[tokio::test]
async fn one_trace_follows_an_event_from_the_publisher_to_the_socket_on_every_node() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let node_a = Node::start(traced(&nats, &receiver)).await;
    let node_b = Node::start(traced(&nats, &receiver)).await;
    let publisher = Publisher::nats(&nats.url()).await;
    let mut on_a = Connect::v1(&node_a).alias(&DEMO).connect().await;
    let mut on_b = Connect::v1(&node_b).alias(&DEMO).msgpack().connect().await;
    publisher
        .sync_alias(DEMO.id, &mut [&mut on_a, &mut on_b])
        .await;

    // Flags 03 (sampled + random trace id) as the Python SDK sends them.
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-03");
    let payload = payload_for(Event::NewMessage, 1);
    publisher
        .alias_event_with_headers(DEMO.id, &payload, &[("traceparent", &traceparent)])
        .await;
    let got_a = on_a.next_json().await;
    let got_b = on_b.next_msgpack().await;
    assert_eq!(got_a["notificationId"], got_b["notificationId"]);

    // Two nodes × (receive, fanout, deliver, write).
    let spans = eventually(PROMPT, "8 spans of the trace at the collector", || async {
        let spans = receiver.trace(TRACE_ID);
        (spans.len() >= 8).then_some(spans)
    })
    .await;
    let mut by_node: HashMap<String, Vec<ReceivedSpan>> = HashMap::new();
    for span in spans {
        assert_eq!(span.resource["service.name"], "herald-e2e", "{span:?}");
        by_node
            .entry(span.resource["service.instance.id"].clone())
            .or_default()
            .push(span);
    }
    assert_eq!(by_node.len(), 2, "spans from both nodes: {by_node:#?}");
    let mut formats = Vec::new();
    for spans in by_node.values() {
        let receive = child(spans, "herald.receive", PRODUCER_SPAN);
        assert_eq!(
            receive.attr("subject"),
            format!("herald.v1.alias.{}.newMessage", DEMO.id)
        );
        assert_eq!(receive.attr("event"), "newMessage");
        assert!(receive.attr("node").starts_with("herald-"), "{receive:?}");
        assert!(receive.attr("seq").parse::<u64>().is_ok(), "{receive:?}");
        let fanout = child(spans, "herald.fanout", &receive.span_id);
        assert_eq!(fanout.attr("key"), format!("alias.{}", DEMO.id));
        assert_eq!(fanout.attr("recipients"), "1");
        let deliver = child(spans, "herald.deliver", &fanout.span_id);
        assert_eq!(deliver.attr("dialect"), "v1");
        assert_eq!(deliver.attr("outcome"), "queued");
        assert_eq!(deliver.attr("queued"), "1");
        let format = deliver.attr("format").to_owned();
        let bytes: u64 = fanout
            .attr(&format!("bytes.{format}"))
            .parse()
            .expect("encoded bytes of the session's format");
        assert!(bytes > 100, "{fanout:?}");
        let write = child(spans, "herald.write", &deliver.span_id);
        assert_eq!(write.attr("outcome"), "written");
        assert_eq!(write.attr("bytes"), bytes.to_string(), "{write:?}");
        formats.push(format);
    }
    formats.sort();
    assert_eq!(formats, ["json", "msgpackr"]);
}

#[tokio::test]
async fn json_log_lines_inside_a_traced_event_carry_its_trace_id() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let node = Node::start(traced(&nats, &receiver)).await;
    let publisher = Publisher::nats(&nats.url()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    // An envelope whose aliasId contradicts its subject is logged and skipped, inside
    // the event's herald.receive span.
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    let Publisher::Nats(nats_client) = &publisher else {
        unreachable!()
    };
    let body = rmp_serde::to_vec_named(&serde_json::json!({
        "aliasId": "someone-else",
        "payload": {"event": "newMessage"},
    }))
    .expect("encodes");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("traceparent", traceparent.as_str());
    nats_client
        .publish_with_headers(
            format!("herald.v1.alias.{}.newMessage", DEMO.id),
            headers,
            body.into(),
        )
        .await
        .expect("publish");
    nats_client.flush().await.expect("flush");

    let line = eventually(PROMPT, "the skip warning in the node's logs", || async {
        node.logs()
            .into_iter()
            .find(|l| l.contains("skipping undecodable bus message"))
    })
    .await;
    let entry: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(entry["trace_id"], TRACE_ID, "{line}");
    let span_id = entry["span_id"].as_str().expect("span_id").to_owned();
    assert_eq!(span_id.len(), 16, "{line}");
    // The span the line names is the exported herald.receive of that trace.
    let receive = eventually(PROMPT, "the herald.receive span", || async {
        receiver
            .trace(TRACE_ID)
            .into_iter()
            .find(|s| s.name == "herald.receive")
    })
    .await;
    assert_eq!(receive.span_id, span_id);
    assert_eq!(receive.parent_span_id, PRODUCER_SPAN);
    client.expect_no_event(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn spans_are_exported_over_grpc_too_and_flushed_at_shutdown() {
    let receiver = OtlpReceiver::start_grpc().await;
    let nats = NatsServer::start();
    // A batch delay far longer than the test: only the shutdown flush can deliver the spans.
    let mut node =
        Node::start(traced_over(&nats, &receiver, "grpc").env("OTEL_BSP_SCHEDULE_DELAY", "600000"))
            .await;
    let publisher = Publisher::nats(&nats.url()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;
    let traceparent = format!("00-{TRACE_ID}-{PRODUCER_SPAN}-01");
    publisher
        .alias_event_with_headers(
            DEMO.id,
            &payload_for(Event::FlagsUpdated, 1),
            &[("traceparent", &traceparent)],
        )
        .await;
    client.next_json().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        receiver.trace(TRACE_ID).is_empty(),
        "nothing exported before shutdown"
    );

    node.terminate();
    let status = node.wait_exit(Duration::from_secs(15)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    let names: Vec<String> = receiver
        .trace(TRACE_ID)
        .into_iter()
        .map(|s| s.name)
        .collect();
    for name in [
        "herald.receive",
        "herald.fanout",
        "herald.deliver",
        "herald.write",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
    }
}

#[tokio::test]
async fn herald_publish_starts_the_trace_that_the_nodes_continue() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let node = Node::start(traced(&nats, &receiver)).await;
    let publisher = Publisher::nats(&nats.url()).await;
    let mut client = Connect::v1(&node).alias(&DEMO).connect().await;
    publisher.sync_alias(DEMO.id, &mut [&mut client]).await;

    let output = tokio::process::Command::new(herald_binary())
        .args([
            "publish",
            "--alias",
            DEMO.id,
            "--event",
            "newMessage",
            "--nats",
        ])
        .arg(nats.url())
        .args(["--data", r#"{"uid": 7}"#])
        .env_remove("HERALD_CONFIG")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env("OTEL_SERVICE_NAME", "herald-cli-e2e")
        .output()
        .await
        .expect("herald publish runs");
    assert!(output.status.success(), "{output:?}");
    let printed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("herald publish prints JSON");
    let traceparent = printed["traceparent"]
        .as_str()
        .expect("traceparent printed");
    let trace_id = traceparent.split('-').nth(1).expect("a W3C traceparent");
    assert_eq!(client.next_json().await["uid"], 7);

    let spans = eventually(PROMPT, "publish and receive spans", || async {
        let spans = receiver.trace(trace_id);
        spans
            .iter()
            .any(|s| s.name == "herald.write")
            .then_some(spans)
    })
    .await;
    // The CLI exported its span before exiting; the node's receive hangs under it.
    let publish = child(&spans, "herald.publish", "");
    assert_eq!(publish.resource["service.name"], "herald-cli-e2e");
    assert_eq!(publish.attr("event"), "newMessage");
    let receive = child(&spans, "herald.receive", &publish.span_id);
    let fanout = child(&spans, "herald.fanout", &receive.span_id);
    let deliver = child(&spans, "herald.deliver", &fanout.span_id);
    child(&spans, "herald.write", &deliver.span_id);
}

/// The Python interpreter of the repository's venv (where `scripts/test` installs the
/// producer's packages), or `$PYTHON`.
fn python() -> std::path::PathBuf {
    let path = std::env::var_os("PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| herald_tests::workspace_root().join(".venv/bin/python"));
    assert!(
        path.is_file(),
        "python not found at {}: run `python3 -m venv .venv && .venv/bin/pip install -r requirements-test.txt` (or set PYTHON)",
        path.display()
    );
    path
}

/// The walkthrough in docs/observability.md: the Python example producer, with its own OpenTelemetry SDK,
/// starts the trace; a client on node B receives the event; the collector holds one trace
/// from the producer's span to node B's socket write. Run it with `--nocapture` to see it.
#[tokio::test]
async fn a_python_publisher_starts_one_trace_that_reaches_a_client_on_another_node() {
    let receiver = OtlpReceiver::start().await;
    let nats = NatsServer::start();
    let _node_a = Node::start(traced(&nats, &receiver)).await;
    let node_b = Node::start(traced(&nats, &receiver)).await;
    let mut on_b = Connect::v1(&node_b).alias(&DEMO).connect().await;
    Publisher::nats(&nats.url())
        .await
        .sync_alias(DEMO.id, &mut [&mut on_b])
        .await;

    let producer = herald_tests::workspace_root().join("examples/producers/python/producer.py");
    let output = tokio::process::Command::new(python())
        .arg(&producer)
        .args(["--nats", &nats.url(), "--alias", DEMO.id])
        .output()
        .await
        .expect("the Python producer runs");
    assert!(
        output.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let result: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the producer prints one JSON line");
    let traceparent = result["traceparent"]
        .as_str()
        .expect("the producer's traceparent");
    let mut parts = traceparent.split('-');
    let (trace_id, producer_span) = (parts.nth(1).unwrap(), parts.next().unwrap());

    let got = on_b.next_json().await;
    assert_eq!(got["event"], "newMessage");
    assert!(got["message"]["eml"].is_string(), "{got}");

    // Node B's spans: its `herald.receive` names the node, `herald-<pid>`.
    let node_b_name = format!("herald-{}", node_b.pid());
    let spans = eventually(
        PROMPT,
        "node B's write span of the producer's trace",
        || async {
            let spans = receiver.trace(trace_id);
            let instance = spans
                .iter()
                .find(|s| s.name == "herald.receive" && s.attr("node") == node_b_name)?
                .resource["service.instance.id"]
                .clone();
            spans
                .iter()
                .any(|s| s.name == "herald.write" && s.resource["service.instance.id"] == instance)
                .then_some((spans, instance))
        },
    )
    .await;
    let (spans, instance) = spans;
    eprintln!("trace {trace_id} (producer traceparent {traceparent}):");
    for span in &spans {
        eprintln!(
            "  {:<16} span {} parent {:<16} on {}",
            span.name, span.span_id, span.parent_span_id, span.resource["service.instance.id"]
        );
    }
    let on_b: Vec<ReceivedSpan> = spans
        .into_iter()
        .filter(|s| s.resource["service.instance.id"] == instance)
        .collect();
    // On node B: the producer's span → receive → fanout → deliver → write.
    let receive = child(&on_b, "herald.receive", producer_span);
    let fanout = child(&on_b, "herald.fanout", &receive.span_id);
    let deliver = child(&on_b, "herald.deliver", &fanout.span_id);
    let write = child(&on_b, "herald.write", &deliver.span_id);
    assert_eq!(write.attr("outcome"), "written");
}
