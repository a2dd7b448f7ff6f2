//! `herald publish`: one event to NATS (bus.kind = nats or `--nats`) or to a node's
//! `POST /v1/publish` (embedded mode).

use std::time::Duration;

use anyhow::{bail, Context};
use herald_protocol::{Envelope, Event, Subject};
use herald_telemetry::propagation;
use serde_json::{Map, Value};

use crate::config::{BusKind, Settings};

/// Arguments of `herald publish`.
#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// Alias id the event is for (not needed for newRelease).
    #[arg(long)]
    pub alias: Option<String>,
    /// Event name from the catalog, e.g. newMessage.
    #[arg(long)]
    pub event: String,
    /// Payload fields as JSON, or @file.json.
    #[arg(long)]
    pub data: Option<String>,
    /// Publish straight to this NATS server.
    #[arg(long)]
    pub nats: Option<String>,
    /// Publish through this node's HTTP API (default: server.listen).
    #[arg(long)]
    pub url: Option<String>,
    /// Publish token for the HTTP API (default: the first of auth.publish_tokens).
    #[arg(long, env = "HERALD_PUBLISH_TOKEN")]
    pub token: Option<String>,
}

fn payload(args: &PublishArgs, event: Event) -> anyhow::Result<Map<String, Value>> {
    let text = match args.data.as_deref() {
        None => "{}".to_owned(),
        Some(arg) => match arg.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
            }
            None => arg.to_owned(),
        },
    };
    let mut payload = match serde_json::from_str::<Value>(&text).context("--data is not JSON")? {
        Value::Object(map) => map,
        _ => bail!("--data must be a JSON object"),
    };
    payload.insert("event".into(), Value::from(event.as_str()));
    payload
        .entry("notificationId")
        .or_insert_with(|| Value::from(uuid::Uuid::new_v4().to_string()));
    Ok(payload)
}

/// Runs the command.
pub async fn run(settings: &Settings, args: PublishArgs) -> anyhow::Result<()> {
    let event: Event = args
        .event
        .parse()
        .map_err(|e| anyhow::anyhow!("--event: {e}"))?;
    let payload = payload(&args, event)?;
    let subject = if event.is_broadcast() {
        Subject::Broadcast(event)
    } else {
        let alias = args
            .alias
            .as_deref()
            .context("--alias is required for per-alias events")?;
        Subject::alias(alias, event).map_err(|e| anyhow::anyhow!("--alias: {e}"))?
    };
    let envelope = Envelope {
        alias_id: args.alias.clone(),
        subject: None,
        payload,
    };
    // The trace starts here: `herald.publish` when spans are exported, else a fresh root,
    // so every node's spans for this event join one trace.
    let span = tracing::info_span!(
        "herald.publish",
        otel.kind = "producer",
        subject = %subject,
        event = event.as_str(),
    );
    let (traceparent, tracestate) = propagation::inject(&propagation::context_of(&span))
        .or_else(|| propagation::inject(&propagation::new_root()))
        .context("cannot create a traceparent")?;
    let nats_url = args
        .nats
        .clone()
        .or_else(|| (settings.bus.kind == BusKind::Nats).then(|| settings.bus.nats.urls.join(",")));
    match nats_url {
        Some(url) => {
            let client =
                tokio::time::timeout(Duration::from_secs(5), async_nats::connect(url.as_str()))
                    .await
                    .with_context(|| format!("NATS at {url} did not answer in 5s"))?
                    .with_context(|| format!("cannot connect to NATS at {url}"))?;
            let mut headers = async_nats::HeaderMap::new();
            if let Some(Value::String(id)) = envelope.payload.get("notificationId") {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            }
            headers.insert("traceparent", traceparent.as_str());
            if let Some(state) = &tracestate {
                headers.insert("tracestate", state.as_str());
            }
            client
                .publish_with_headers(subject.to_string(), headers, envelope.to_msgpack().into())
                .await?;
            client.flush().await?;
            println!(
                "{}",
                serde_json::json!({"subject": subject.to_string(), "notificationId": envelope.payload.get("notificationId"), "traceparent": traceparent})
            );
        }
        None => {
            let url = args
                .url
                .clone()
                .unwrap_or_else(|| format!("http://{}", settings.server.listen));
            let token = args
                .token
                .clone()
                .or_else(|| {
                    settings
                        .auth
                        .publish_tokens
                        .first()
                        .map(|t| t.expose().to_owned())
                })
                .context("no publish token: pass --token or set auth.publish_tokens")?;
            let mut request = reqwest::Client::new()
                .post(format!("{}/v1/publish", url.trim_end_matches('/')))
                .header("traceparent", &traceparent);
            if let Some(state) = &tracestate {
                request = request.header("tracestate", state);
            }
            let response = request
                .bearer_auth(token)
                .json(&envelope)
                .send()
                .await
                .with_context(|| format!("cannot reach {url}: is `herald serve` running?"))?;
            let status = response.status();
            let body = response.text().await.unwrap_or_default();
            if !status.is_success() {
                bail!("publish refused ({status}): {body}");
            }
            println!("{body}");
        }
    }
    Ok(())
}
