//! Logging setup for herald processes, and the seam where OpenTelemetry export plugs in.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Pretty,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The level/filter string did not parse.
    #[error("invalid log.level {0:?}: use a level (info, debug, ...) or an EnvFilter directive such as \"herald=debug,info\"")]
    Filter(String),
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadyInitialised(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
pub fn init(level: &str, format: LogFormat) -> Result<(), TelemetryError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => {
            EnvFilter::try_new(&directive).map_err(|_| TelemetryError::Filter(directive.clone()))?
        }
        _ => EnvFilter::try_new(level).map_err(|_| TelemetryError::Filter(level.to_owned()))?,
    };
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    result.map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))
}

/// Validates a filter string without installing anything (used by `herald config check`).
pub fn validate_level(level: &str) -> Result<(), TelemetryError> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|_| TelemetryError::Filter(level.to_owned()))
}
