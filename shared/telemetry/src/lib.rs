//! Logging and tracing setup for herald processes: `tracing` log lines (pretty or JSON with
//! trace ids) and, when an OTLP endpoint is configured through the standard `OTEL_*`
//! variables, OpenTelemetry span export in the background.
//!
//! The OpenTelemetry types herald's code needs are wrapped here ([`propagation`]), so the
//! OpenTelemetry crates are dependencies of this crate only.

mod json;
mod otlp;
pub mod propagation;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

pub use otlp::{ExportSettings, OtlpProtocol};
pub use propagation::TraceContext;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers; `trace_id`/`span_id` inside a traced span.
    Json,
}

/// Why logging or tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The level/filter string did not parse.
    #[error("invalid log.level {0:?}: use a level (info, debug, ...) or an EnvFilter directive such as \"herald=debug,info\"")]
    Filter(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
    /// The `OTEL_*` variables ask for something this build cannot do, or the exporter failed
    /// to build.
    #[error("OpenTelemetry export: {0}")]
    Export(String),
}

/// Whether spans are exported (an OTLP endpoint is configured): lets hot paths skip work
/// that only matters to a trace.
static TRACING: AtomicBool = AtomicBool::new(false);

/// Whether OpenTelemetry export is on in this process.
pub fn tracing_enabled() -> bool {
    TRACING.load(Ordering::Relaxed)
}

/// Most time [`Telemetry::shutdown`] waits for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// The installed telemetry; call [`Telemetry::shutdown`] before exiting to flush spans.
#[must_use = "keep it and call shutdown() before exit, or queued spans are lost"]
pub struct Telemetry {
    /// The OTLP pipeline, when an endpoint is configured.
    export: Option<otlp::Pipeline>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.export.is_some()
    }

    /// Exports what is queued and stops the exporter, waiting at most [`SHUTDOWN_TIMEOUT`].
    /// Runs on its own thread: it never blocks (or deadlocks) an async runtime, and may be
    /// called from inside one.
    pub fn shutdown(self) {
        let Some(pipeline) = self.export else {
            return;
        };
        TRACING.store(false, Ordering::Relaxed);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("otel-shutdown".into())
            .spawn(move || {
                pipeline.shutdown(SHUTDOWN_TIMEOUT);
                let _ = done_tx.send(());
            });
        if spawned.is_ok() {
            let _ = done_rx.recv_timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1));
        }
    }
}

/// Installs the global subscriber: log lines to stderr filtered by `level` (`RUST_LOG`,
/// when set, overrides it) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set, span export named `default_service`
/// unless `OTEL_SERVICE_NAME` says otherwise.
///
/// Spans are exported whatever the log level: the exporter has its own filter (every
/// `herald*` span and event at DEBUG and above), so `log.level = "warn"` does not silence
/// traces. herald's per-event spans are DEBUG spans: with export off and logs at `info`
/// they cost nothing.
pub fn init(
    level: &str,
    format: LogFormat,
    default_service: &str,
) -> Result<Telemetry, TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => {
            EnvFilter::try_new(&directive).map_err(|_| TelemetryError::Filter(directive.clone()))?
        }
        _ => EnvFilter::try_new(level).map_err(|_| TelemetryError::Filter(level.to_owned()))?,
    };
    let settings = ExportSettings::from_env()?;
    let export = settings
        .map(|s| otlp::Pipeline::start(&s, default_service))
        .transpose()?;
    let otel_layer = export.as_ref().map(|pipeline| {
        tracing_opentelemetry::layer()
            .with_tracer(pipeline.tracer())
            .with_threads(false)
            .with_filter(Targets::new().with_target("herald", Level::DEBUG))
    });
    let (pretty, json) = match format {
        LogFormat::Pretty => (Some(fmt::layer().with_writer(std::io::stderr)), None),
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .event_format(json::JsonWithTraceIds::new())
                    .fmt_fields(fmt::format::JsonFields::new())
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let logs = Layer::and_then(pretty, json).with_filter(filter);
    tracing_subscriber::registry()
        .with(otel_layer)
        .with(logs)
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    TRACING.store(export.is_some(), Ordering::Relaxed);
    Ok(Telemetry { export })
}

/// Validates a filter string without installing anything (used by `herald config check`).
pub fn validate_level(level: &str) -> Result<(), TelemetryError> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|_| TelemetryError::Filter(level.to_owned()))
}
