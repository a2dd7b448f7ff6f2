//! The OTLP pipeline: settings from the standard `OTEL_*` variables, a batch span
//! processor (its own thread: exporting never runs on the serving runtime) and an exporter
//! over gRPC (tonic, driven by a small runtime of its own) or HTTP/protobuf.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::{Key, KeyValue, Value};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::TelemetryError;

/// How spans travel to the collector (`OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc` (collector port 4317).
    Grpc,
    /// `http/protobuf` (collector port 4318), the OpenTelemetry default.
    HttpProtobuf,
}

/// Where and how to export, read from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// The transport.
    pub protocol: OtlpProtocol,
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// (`/v1/traces` appended for HTTP), as given.
    pub endpoint: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

impl ExportSettings {
    /// `None` when no endpoint is set, `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`:
    /// nothing is exported then.
    pub fn from_env() -> Result<Option<ExportSettings>, TelemetryError> {
        Self::from_lookup(env)
    }

    /// Like [`ExportSettings::from_env`] with an explicit variable lookup (tests).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ExportSettings>, TelemetryError> {
        if lookup("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match lookup("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(TelemetryError::Export(format!(
                    "OTEL_TRACES_EXPORTER={other:?} is not supported: use \"otlp\" or \"none\""
                )))
            }
        }
        let Some(endpoint) = lookup("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| lookup("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(TelemetryError::Export(format!(
                "OTLP endpoint {endpoint:?} must start with http:// or https://"
            )));
        }
        let (var, value) = match lookup("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") {
            Some(v) => ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", Some(v)),
            None => (
                "OTEL_EXPORTER_OTLP_PROTOCOL",
                lookup("OTEL_EXPORTER_OTLP_PROTOCOL"),
            ),
        };
        let protocol = match value.as_deref() {
            None | Some("http/protobuf") => OtlpProtocol::HttpProtobuf,
            Some("grpc") => OtlpProtocol::Grpc,
            Some(other) => {
                return Err(TelemetryError::Export(format!(
                    "{var}={other:?} is not supported: use \"grpc\" or \"http/protobuf\""
                )))
            }
        };
        Ok(Some(ExportSettings { protocol, endpoint }))
    }
}

/// A running export pipeline.
pub(crate) struct Pipeline {
    /// Creates and batches spans.
    provider: SdkTracerProvider,
    /// Drives tonic's connection for gRPC export (tonic needs a Tokio runtime, and the
    /// serving runtime must not be it).
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pipeline {
    /// Builds the exporter and the batch processor; the exporter reads the endpoint,
    /// headers, timeout and compression from the standard variables, the processor its
    /// `OTEL_BSP_*` and the sampler `OTEL_TRACES_SAMPLER[_ARG]`.
    pub(crate) fn start(
        settings: &ExportSettings,
        default_service: &str,
    ) -> Result<Pipeline, TelemetryError> {
        let export_error = |e: opentelemetry_otlp::ExporterBuildError| {
            TelemetryError::Export(format!("cannot build the OTLP exporter: {e}"))
        };
        let (exporter, runtime) = match settings.protocol {
            OtlpProtocol::HttpProtobuf => (
                opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .build()
                    .map_err(export_error)?,
                None,
            ),
            OtlpProtocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("otel-grpc")
                    .enable_all()
                    .build()
                    .map_err(|e| TelemetryError::Export(format!("cannot start a runtime: {e}")))?;
                let exporter = {
                    let _inside = runtime.enter();
                    opentelemetry_otlp::SpanExporter::builder()
                        .with_tonic()
                        .with_protocol(Protocol::Grpc)
                        .build()
                        .map_err(export_error)?
                };
                (exporter, Some(runtime))
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(default_service))
            .build();
        Ok(Pipeline { provider, runtime })
    }

    /// The tracer the `tracing` layer records into.
    pub(crate) fn tracer(&self) -> SdkTracer {
        self.provider.tracer("herald")
    }

    /// Exports what is queued and stops; blocking (see `Telemetry::shutdown`).
    pub(crate) fn shutdown(self, timeout: Duration) {
        if let Err(error) = self.provider.shutdown_with_timeout(timeout) {
            eprintln!("OpenTelemetry: spans may be lost at shutdown: {error}");
        }
        if let Some(runtime) = self.runtime {
            runtime.shutdown_timeout(Duration::from_millis(500));
        }
    }
}

/// `service.name` from `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`), else `default_service`; plus the other
/// `OTEL_RESOURCE_ATTRIBUTES`, `service.version` and `service.instance.id`.
fn resource(default_service: &str) -> Resource {
    let service_name = Key::from_static_str("service.name");
    let detected = Resource::builder().build();
    let named = detected
        .get(&service_name)
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    let mut builder = Resource::builder().with_attributes([
        KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        KeyValue::new(
            "service.instance.id",
            Value::from(format!(
                "{}-{}",
                hostname().unwrap_or_else(|| "localhost".into()),
                std::process::id()
            )),
        ),
    ]);
    if !named {
        builder = builder.with_service_name(default_service.to_owned());
    }
    builder.build()
}

fn hostname() -> Option<String> {
    env("HOSTNAME").or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<ExportSettings>, TelemetryError> {
        ExportSettings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
            None
        );
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(settings(&disabled).unwrap(), None);
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(settings(&disabled).unwrap(), None);
    }

    #[test]
    fn the_protocol_defaults_to_http_protobuf_and_the_traces_variables_win() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")])
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::HttpProtobuf);
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, OtlpProtocol::Grpc);
        assert_eq!(s.endpoint, "http://t:4317");
    }

    #[test]
    fn unsupported_protocols_and_endpoints_are_errors_naming_the_variable() {
        let e = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ])
        .unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "c:4318")]).unwrap_err();
        assert!(e.to_string().contains("http://"), "{e}");
    }
}
