//! Where probes are published: NATS (herald, raw NATS) or Redis `PUBLISH` (the Forward
//! Email reference), both with the same MessagePack envelope body. Redis is spoken as
//! raw RESP over one pipelined TCP connection: a writer, and a task that counts replies.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;

use crate::probe;

/// Deadline for connecting to NATS or Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for every published message to be acknowledged by Redis in [`Publisher::flush`].
const FLUSH_TIMEOUT: Duration = Duration::from_secs(30);
/// Redis channel the Forward Email reference subscribes to (`WS_REDIS_CHANNEL_NAME`).
pub const REDIS_CHANNEL: &str = "herald:loadtest:ws";

/// A connected publisher.
pub enum Publisher {
    /// NATS: probe of alias `a` on `herald.v1.alias.<a>.newMessage`.
    Nats(async_nats::Client),
    /// Redis: every probe on [`REDIS_CHANNEL`]; the envelope carries the alias.
    Redis(RedisPublisher),
}

impl Publisher {
    /// Connects to `nats://` or `redis://` on a loopback address.
    pub async fn connect(url: &str) -> anyhow::Result<Publisher> {
        let parsed = url::Url::parse(url).with_context(|| format!("{url:?} is not a URL"))?;
        let host = parsed.host_str().unwrap_or_default();
        let ip: std::net::IpAddr = if host == "localhost" {
            [127, 0, 0, 1].into()
        } else {
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .with_context(|| format!("{url} must name a loopback IP address"))?
        };
        if !ip.is_loopback() {
            bail!("{url} is not loopback: the load generator only talks to this machine");
        }
        match parsed.scheme() {
            "nats" => {
                let client = tokio::time::timeout(CONNECT_TIMEOUT, async_nats::connect(url))
                    .await
                    .context("NATS did not answer in time")?
                    .with_context(|| format!("connecting to {url}"))?;
                Ok(Publisher::Nats(client))
            }
            "redis" => {
                let port = parsed.port().unwrap_or(6379);
                Ok(Publisher::Redis(
                    RedisPublisher::connect(SocketAddr::new(ip, port)).await?,
                ))
            }
            other => bail!("publish URL scheme {other:?}: use nats:// or redis://"),
        }
    }

    /// Publishes one probe body for `alias_id`.
    pub async fn publish(&mut self, alias_id: &str, body: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client) => client
                .publish(probe::subject(alias_id), body.into())
                .await
                .context("publishing to NATS"),
            Publisher::Redis(redis) => redis.publish(REDIS_CHANNEL, &body).await,
        }
    }

    /// Waits until everything published has left (NATS) or been answered (Redis).
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        match self {
            Publisher::Nats(client) => client.flush().await.context("flushing NATS"),
            Publisher::Redis(redis) => redis.flush().await,
        }
    }
}

/// Pipelined `PUBLISH` over RESP.
pub struct RedisPublisher {
    writer: BufWriter<OwnedWriteHalf>,
    sent: u64,
    replies: Arc<AtomicU64>,
    failed: Arc<AtomicBool>,
}

impl RedisPublisher {
    async fn connect(addr: SocketAddr) -> anyhow::Result<RedisPublisher> {
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
            .await
            .context("Redis did not answer in time")?
            .with_context(|| format!("connecting to Redis at {addr}"))?;
        tcp.set_nodelay(true)?;
        let (read, write) = tcp.into_split();
        let replies = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicBool::new(false));
        let (r, f) = (Arc::clone(&replies), Arc::clone(&failed));
        tokio::spawn(async move {
            let mut lines = BufReader::new(read).lines();
            // PUBLISH answers `:<receivers>`; anything else is an error.
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.starts_with(':') {
                    f.store(true, Ordering::SeqCst);
                }
                r.fetch_add(1, Ordering::Release);
            }
        });
        Ok(RedisPublisher {
            writer: BufWriter::new(write),
            sent: 0,
            replies,
            failed,
        })
    }

    async fn publish(&mut self, channel: &str, body: &[u8]) -> anyhow::Result<()> {
        let mut command = Vec::with_capacity(body.len() + channel.len() + 48);
        command.extend_from_slice(b"*3\r\n$7\r\nPUBLISH\r\n");
        for arg in [channel.as_bytes(), body] {
            command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            command.extend_from_slice(arg);
            command.extend_from_slice(b"\r\n");
        }
        self.writer
            .write_all(&command)
            .await
            .context("writing to Redis")?;
        // Send now, like a NATS client does (its writer flushes when idle).
        self.writer.flush().await.context("writing to Redis")?;
        self.sent += 1;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        self.writer.flush().await.context("writing to Redis")?;
        let deadline = tokio::time::Instant::now() + FLUSH_TIMEOUT;
        while self.replies.load(Ordering::Acquire) < self.sent {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Redis answered {} of {} PUBLISH commands in time",
                    self.replies.load(Ordering::Acquire),
                    self.sent
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if self.failed.load(Ordering::SeqCst) {
            bail!("Redis answered a PUBLISH with an error");
        }
        Ok(())
    }
}
