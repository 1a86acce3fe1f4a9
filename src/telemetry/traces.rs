//! OpenTelemetry traces over OTLP, configured the way every OpenTelemetry SDK is: by the standard
//! `OTEL_*` environment variables, so a platform team's collector settings carry over unchanged.
//!
//! - On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set, unless
//!   `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. OTLP over HTTP/protobuf (port 4318).
//! - Sampling from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, always
//!   on); resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` (default name `kybctl`);
//!   batching from `OTEL_BSP_*`.
//! - W3C trace context (`traceparent`, `tracestate`) is read from callers ([`accept_parent`]) and
//!   written on outbound calls ([`inject`]).
//!
//! Off, none of this runs: the spans below the request (database, cache, outbound) are `debug`
//! spans that only the OpenTelemetry layer asks for, so they are never even created.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether traces are exported; read on every request, so a flag rather than the provider.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// The attribute (and log field) naming the request a span belongs to.
pub const REQUEST_ID: &str = "request_id";

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("OTLP trace exporter: {0}")]
    Exporter(String),
}

/// Whether the environment asks for traces, by the OpenTelemetry SDK's rules.
pub fn wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !disabled
        && !no_exporter
}

/// The tracer provider the environment asks for, or `None` when traces are off.
pub fn provider_from_env() -> Result<Option<SdkTracerProvider>, TraceError> {
    let env = |k: &str| std::env::var(k).ok();
    if !wanted(env) {
        return Ok(None);
    }
    // Endpoint, headers, timeout and compression come from OTEL_EXPORTER_OTLP_* inside the builder.
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TraceError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder()
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    let named_by_env = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|a| a.contains("service.name="));
    if !named_by_env {
        resource = resource.with_service_name("kybctl");
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(RequestIdProcessor)
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some(provider))
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The request's id, carried in the OpenTelemetry context below the request span so that every span
/// under it is tagged with it (see [`RequestIdProcessor`]).
#[derive(Debug, Clone)]
struct RequestId(String);

/// Makes `span` (a request's server span) a child of the caller's trace when the request carries a W3C
/// `traceparent`, and carries the request id down to the spans under it. No-op when traces are off.
pub fn accept_parent(span: &tracing::Span, headers: &axum::http::HeaderMap, request_id: &str) {
    if !enabled() {
        return;
    }
    let parent = TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers))
        .with_value(RequestId(request_id.to_owned()));
    // Fails only without the OpenTelemetry layer, which `enabled` rules out.
    let _ = span.set_parent(parent);
}

/// Writes the current span's trace context (`traceparent`, `tracestate`) into an outbound request's
/// headers, so the callee's spans join this trace.
pub fn inject(headers: &mut axum::http::HeaderMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new()
        .inject_context(&cx, &mut opentelemetry_http::HeaderInjector(headers));
}

/// Tags each span below a request's server span with the request id, so a span found on its own (a
/// slow query in a trace view) leads back to the request's logs. The server span has it already as a
/// field; its parent is the caller's (remote) span or none, which is how it is told apart here.
#[derive(Debug)]
struct RequestIdProcessor;

impl SpanProcessor for RequestIdProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        let Some(RequestId(id)) = cx.get::<RequestId>() else {
            return;
        };
        let parent = cx.span();
        let parent = parent.span_context();
        if parent.is_valid() && !parent.is_remote() {
            opentelemetry::trace::Span::set_attribute(span, KeyValue::new(REQUEST_ID, id.clone()));
        }
    }

    fn on_end(&self, _span: SpanData) {}

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(
        &self,
        _timeout: std::time::Duration,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn traces_follow_the_sdk_environment_rules() {
        assert!(!wanted(env_of(&[])));
        assert!(wanted(env_of(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://collector:4318"
        )])));
        assert!(wanted(env_of(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4318/v1/traces"
        )])));
        assert!(!wanted(env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(!wanted(env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!wanted(env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
        assert!(wanted(env_of(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_SDK_DISABLED", "false"),
        ])));
    }
}
