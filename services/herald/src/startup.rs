//! Building and running a node: `Application::build(settings)` binds the listeners (port 0
//! works, so tests start real nodes on free ports), `run_until_stopped()` serves until
//! SIGTERM/SIGINT and then drains.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use std::rc::Rc;

use actix_codec::Framed;
use actix_http::{h1, HttpService, Request};
use actix_rt::net::TcpStream;
use actix_service::{fn_factory, fn_service, map_config, IntoServiceFactory, ServiceFactory};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, Server, ServiceRequest, ServiceResponse};
use actix_web::{web, App, HttpServer};

use crate::auth::Authenticator;
use crate::bus::{Bus, MemoryBus, NatsBus};
use crate::config::{BusKind, Settings};
use crate::dialect::Dialect;
use crate::directory::Directory;
use crate::limits::Limits;
use crate::registry::RegistrySettings;
use crate::state::AppState;
use crate::{dialect, http, metrics, websocket};

/// A node ready to serve.
pub struct Application {
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    server: Server,
    metrics_server: Option<Server>,
    state: web::Data<AppState>,
    /// Installed before the listening line is printed, so a SIGTERM that arrives right
    /// after start still drains instead of killing the process.
    stop_signal: StopSignal,
}

/// How often an idle in-process bus drops expired events and dedup ids.
const MEMORY_BUS_SWEEP: Duration = Duration::from_secs(10);

/// How long the listener outlives the drain, so the last sessions' close frames are
/// written before their sockets are dropped.
const CLOSE_FLUSH: Duration = Duration::from_millis(500);

impl Application {
    /// Connects the bus, starts the directory and binds the listeners.
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        // First: everything after this may record metrics.
        let metrics_handle = metrics::install();
        let node_name = format!("herald-{}", std::process::id());
        let bus = match settings.bus.kind {
            BusKind::Memory => {
                metrics::bus_connected(true);
                let bus = MemoryBus::with_max_bytes(
                    settings.bus.memory.ring_size,
                    settings.bus.retention,
                    settings.bus.dedup_window,
                    settings.bus.memory.max_bytes,
                );
                // Publishing evicts as it goes; this lets an idle bus drop expired events too.
                let sweeper = bus.clone();
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(MEMORY_BUS_SWEEP);
                    loop {
                        tick.tick().await;
                        sweeper.sweep();
                    }
                });
                Bus::Memory(bus)
            }
            BusKind::Nats => {
                metrics::bus_connected(false);
                Bus::Nats(Box::new(NatsBus::connect(&settings.bus, &node_name).await?))
            }
        };
        let cluster = match &bus {
            Bus::Nats(nats) => Some(crate::cluster_limits::ClusterLimits::start(
                nats.jetstream().clone(),
                &node_name,
                settings.bus.nats.stream_replicas,
                settings.limits.lease_ttl,
                crate::cluster_limits::Caps {
                    per_alias: settings.limits.max_sessions_per_alias,
                    per_scope: vec![(
                        format!("{}-user", dialect::Dialect::Rooms),
                        settings.rooms.max_connections_per_user,
                    )],
                    per_minute: settings.limits.connections_per_ip_per_minute.get(),
                },
            )),
            Bus::Memory(_) => None,
        };
        let realtime = dialect::realtime::RealtimeNode::new(&settings, &bus, cluster.clone());
        let registry_settings = Arc::new(RegistrySettings {
            codec: crate::codec::CodecSettings {
                max_notification_bytes: settings.limits.max_notification_bytes,
            },
            encoders: &dialect::codec::ENCODERS,
            node: node_name.clone(),
            max_buffered_bytes: settings.limits.max_buffered_bytes,
            on_delivered: Some(realtime.delivery_observer()),
        });
        let shards = std::thread::available_parallelism().map_or(2, |n| n.get());
        let directory = Directory::start(shards, bus.clone(), registry_settings);
        let auth = Authenticator::new(&settings, &bus)?;
        let state = web::Data::new(AppState {
            cluster,
            realtime,
            auth,
            limits: Limits::new(&settings.limits),
            settings: Arc::clone(&settings),
            bus,
            directory,
            draining: Default::default(),
            metrics: metrics_handle,
            signal: Default::default(),
            revocations: Default::default(),
        });

        let listener = TcpListener::bind(settings.server.listen)?;
        let address = listener.local_addr()?;
        let metrics_listen = settings.server.metrics_listen;
        let separate_metrics = metrics_listen.is_some();
        let app_state = state.clone();
        let drain = Duration::from_secs(settings.shutdown.drain_seconds);
        // The demo page logs in with the demo alias: only where those credentials work.
        let demo = settings.uses_demo_credentials();
        let server = actix_server::Server::build()
            .disable_signals()
            .shutdown_timeout(drain.as_secs() + 5)
            .listen("herald", listener, move || {
                let upgrade_state = app_state.clone();
                HttpService::build()
                    // Nagle + delayed ACK held a session's second frame ~40 ms (loadtest:
                    // p99 42 ms → 4 ms).
                    .tcp_nodelay(true)
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .local_addr(address)
                    // Upgrade requests get the connection itself: the session keeps the
                    // socket and nothing of HTTP (websocket/upgrade.rs).
                    .upgrade(fn_factory(move || {
                        let app = routes(upgrade_state.clone(), demo, !separate_metrics);
                        async move {
                            let service = app
                                .into_factory()
                                .new_service(AppConfig::default())
                                .await
                                .map_err(|()| "the routes could not start")?;
                            let service = Rc::new(service);
                            Ok::<_, &str>(fn_service(
                                move |(req, framed): (Request, Framed<TcpStream, h1::Codec>)| {
                                    websocket::upgrade::serve(Rc::clone(&service), req, framed)
                                },
                            ))
                        }
                    }))
                    .finish(map_config(
                        routes(app_state.clone(), demo, !separate_metrics),
                        |_| AppConfig::default(),
                    ))
                    .tcp()
            })?;
        let mut metrics_address = None;
        let mut metrics_server = None;
        if let Some(metrics_listen) = metrics_listen {
            let metrics_listener = TcpListener::bind(metrics_listen)?;
            metrics_address = Some(metrics_listener.local_addr()?);
            let metrics_state = state.clone();
            metrics_server = Some(
                HttpServer::new(move || {
                    App::new()
                        .app_data(metrics_state.clone())
                        .route("/metrics", web::get().to(http::metrics))
                })
                .workers(1)
                .disable_signals()
                .listen(metrics_listener)?
                .run(),
            );
        }
        Ok(Application {
            address,
            metrics_address,
            server: server.run(),
            metrics_server,
            state,
            stop_signal: StopSignal::install()?,
        })
    }

    /// The bound address (useful with port 0).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until SIGTERM/SIGINT, then drains: readiness off, upgrades refused, sessions
    /// closed with 1001 spread over `shutdown.drain_seconds`, then exit as soon as the last
    /// session is gone (or the window ends).
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let handle = self.server.handle();
        let state = self.state.clone();
        let server = actix_web::rt::spawn(self.server);
        let metrics_handle = self.metrics_server.map(|m| {
            let handle = m.handle();
            actix_web::rt::spawn(m);
            handle
        });
        actix_web::rt::spawn(crate::control::run(state.bus.clone(), state.clone()));
        let upkeep = state.metrics.clone();
        actix_web::rt::spawn(async move {
            // Folds histogram samples recorded since the last scrape into their buckets, so
            // memory stays bounded however rarely /metrics is scraped.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep.run_upkeep();
            }
        });
        let housekeeping_state = state.clone();
        actix_web::rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                housekeeping_state.limits.housekeeping();
            }
        });
        self.stop_signal.recv().await;
        let drain = Duration::from_secs(state.settings.shutdown.drain_seconds);
        tracing::info!(
            drain_seconds = drain.as_secs(),
            "shutdown requested: draining sessions"
        );
        state.start_drain();
        // Sessions close at random moments across the window (or leave on their own);
        // once the last is gone, waiting longer would only slow a rolling restart.
        let all_left = state.limits.total.until_empty(&());
        if tokio::time::timeout(drain, all_left).await.is_ok() {
            tracing::info!("every session has left");
        }
        // Lets the last close frames reach their sockets before the listener stops.
        tokio::time::sleep(CLOSE_FLUSH).await;
        handle.stop(false).await;
        if let Some(m) = metrics_handle {
            m.stop(false).await;
        }
        let _ = server.await;
        tracing::info!("drained; exiting");
        Ok(())
    }

    /// The metrics listener's address, when separate.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }
}

/// The node's routes: probes, the dialects' upgrades, publishing and revocation, the demo
/// page while its credentials work, and `/metrics` unless it has a listener of its own.
fn routes(
    state: web::Data<AppState>,
    demo: bool,
    metrics: bool,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<BoxBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let mut app = App::new()
        .app_data(state)
        .route("/healthz", web::get().to(http::healthz))
        .route("/readyz", web::get().to(http::readyz))
        .route(
            Dialect::ForwardEmail.path(),
            web::get().to(dialect::forwardemail::upgrade),
        )
        .route(Dialect::Jmap.path(), web::get().to(dialect::jmap::upgrade))
        .route(
            Dialect::Rooms.path(),
            web::get().to(dialect::rooms::upgrade),
        )
        .route(
            Dialect::Realtime.path(),
            web::get().to(dialect::realtime::upgrade),
        )
        .route("/v1/publish", web::post().to(http::publish::publish))
        .route("/v1/revoke", web::post().to(http::publish::revoke));
    if demo {
        app = app
            .route("/demo", web::get().to(http::demo::index))
            .route("/demo/", web::get().to(http::demo::index))
            .route("/demo/herald-client.js", web::get().to(http::demo::client));
    }
    if metrics {
        app = app.route("/metrics", web::get().to(http::metrics));
    }
    app
}

/// SIGTERM or SIGINT, caught from the moment it is installed.
struct StopSignal {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignal {
    fn install() -> std::io::Result<StopSignal> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(StopSignal {
                terminate: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(StopSignal {})
    }

    async fn recv(mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}
