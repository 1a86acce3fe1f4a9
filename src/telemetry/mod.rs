//! Logs and traces through tracing. Logs: human-readable by default, JSON with `--log-format json`, to
//! stderr. Traces: OpenTelemetry over OTLP when the standard `OTEL_*` variables ask for it (`traces`).

pub mod spans;
pub mod traces;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What the log lines show unless `RUST_LOG` says otherwise.
const LOG_FILTER: &str = "info,sqlx=warn,goose=error";
/// What becomes spans: our own `debug` spans (database, cache, outbound calls) too, none of the HTTP
/// clients' internals (the exporter's own requests would otherwise trace themselves).
const TRACE_FILTER: &str = "info,kybctl=debug,sqlx=warn,goose=off,hyper=off,h2=off,reqwest=off";

/// Flushes and stops the trace exporter when dropped (at the end of `main`).
#[must_use]
pub struct Telemetry {
    traces: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.traces.take() {
            // Exports what is batched; bounded by the SDK's own timeout.
            if let Err(e) = provider.shutdown() {
                eprintln!("warning: traces not all exported at exit: {e}");
            }
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` overrides the default `info` level of the logs (not of
/// the traces, which have their own filter). Logs go to stderr so commands can print results on
/// stdout; `color` allows ANSI colours in human logs.
pub fn init(format: LogFormat, color: bool) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(LOG_FILTER));
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(color && format == LogFormat::Human);
    // Per-layer filters: a span only the trace layer wants is created only when traces are on.
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Human => logs.with_filter(filter).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter)
            .boxed(),
    };
    let (provider, problem) = match traces::provider_from_env() {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    // A second init (tests, embedded use) keeps the first subscriber. Without traces the registry
    // gets the log layer alone: even an empty `Option` layer would make every callsite the logs
    // reject one that is asked again on each hit.
    let installed = match &provider {
        Some(p) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("kybctl"))
                // What a trace view shows; source locations, threads and idle time per span are not.
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(EnvFilter::new(TRACE_FILTER));
            tracing_subscriber::registry()
                .with(logs)
                .with(otel)
                .try_init()
        }
        None => tracing_subscriber::registry().with(logs).try_init(),
    }
    .is_ok();
    if let Some(e) = problem {
        // Traces are an aid, not a duty: a bad exporter setting is reported and the command goes on.
        tracing::warn!(error = %e, "traces are off");
    } else if installed && provider.is_some() {
        tracing::info!("exporting traces over OTLP");
    }
    Telemetry { traces: provider }
}
