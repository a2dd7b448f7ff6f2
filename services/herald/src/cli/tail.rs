//! `herald tail`: connect to `/v1/ws` and print every frame as one JSON line.

use anyhow::Context;
use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Arguments of `herald tail`.
#[derive(Debug, clap::Args)]
pub struct TailArgs {
    /// WebSocket URL, e.g. ws://127.0.0.1:8080/v1/ws.
    #[arg(long, default_value = "ws://127.0.0.1:8080/v1/ws")]
    pub url: String,
    /// Alias login (alias@domain) or API token.
    #[arg(long)]
    pub user: String,
    /// Password (empty for an API token).
    #[arg(long, default_value = "", env = "HERALD_PASSWORD")]
    pub password: String,
    /// Alias id, required with an API token.
    #[arg(long)]
    pub alias_id: Option<String>,
    /// Ask for msgpackr binary frames (`?msgpackr=true`, printed as JSON).
    #[arg(long)]
    pub msgpack: bool,
    /// Resume after this sequence.
    #[arg(long)]
    pub since: Option<u64>,
}

/// Runs the command until the server closes the socket.
pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    let mut url = url::Url::parse(&args.url).context("--url")?;
    {
        let mut query = url.query_pairs_mut();
        if let Some(alias_id) = &args.alias_id {
            query.append_pair("alias_id", alias_id);
        }
        if args.msgpack {
            query.append_pair("msgpackr", "true");
        }
        if let Some(since) = args.since {
            query.append_pair("since", &since.to_string());
        }
    }
    let mut request = url.as_str().into_client_request()?;
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", args.user, args.password));
    request
        .headers_mut()
        .insert("Authorization", format!("Basic {basic}").parse()?);
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    while let Some(message) = socket.next().await {
        match message? {
            Message::Text(text) => println!("{text}"),
            Message::Binary(bytes) => {
                let value = herald_protocol::msgpackr::decode(&bytes)
                    .context("binary frame is not msgpackr")?;
                println!("{value}");
            }
            Message::Ping(data) => socket.send(Message::Pong(data)).await?,
            Message::Close(frame) => {
                eprintln!("closed: {frame:?}");
                break;
            }
            _ => {}
        }
    }
    Ok(())
}
