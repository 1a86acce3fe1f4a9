//! Logs and traces through tracing. Logs: human-readable by default, JSON with `--log-format json`, to
//! stderr. Traces: OpenTelemetry over OTLP when the standard `OTEL_*` variables ask for it (`traces`).

pub mod spans;
pub mod traces;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::subscriber::Interest;
use tracing::{span, Event, Metadata};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{self, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// What the log lines show unless `RUST_LOG` says otherwise. Not the API's request spans, which are
/// `debug` (see `service::api::middleware`).
const LOG_FILTER: &str = "info,sqlx=warn,goose=error";
/// What becomes spans: our own `debug` spans (requests, database, cache, outbound calls) too, none of
/// the HTTP clients' internals (the exporter's own requests would otherwise trace themselves).
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
        LogFormat::Human => logs.with_filter(AskedEveryTime(filter)).boxed(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(AskedEveryTime(filter))
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
                .with_filter(AskedEveryTime(EnvFilter::new(TRACE_FILTER)));
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

/// A per-layer filter whose verdict is asked for each span and event, never cached at the callsite as
/// "always".
///
/// Why: tracing-subscriber hands a per-layer filter's verdict from `enabled` to `on_new_span` in a
/// thread-local. A callsite cached as "always" skips `enabled`, so its span takes whatever verdict
/// the thread's last `enabled` call left there. A `log::log_enabled!` through the `log` bridge (sqlx
/// asks one after every query) leaves "disabled" there, and the next request span on that worker
/// thread went missing from the trace layer (its children exported as roots of their own traces) and
/// from the logs' span context (tokio-rs/tracing#2519; the upstream fix, #3572, caps the interest the
/// same way). The cost is one directive match per span or event the filter lets through.
struct AskedEveryTime<F>(F);

impl<S, F: Filter<S>> Filter<S> for AskedEveryTime<F> {
    fn enabled(&self, meta: &Metadata<'_>, cx: &layer::Context<'_, S>) -> bool {
        self.0.enabled(meta, cx)
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        let interest = self.0.callsite_enabled(meta);
        if interest.is_always() {
            Interest::sometimes()
        } else {
            interest
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &layer::Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx)
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: layer::Context<'_, S>) {
        self.0.on_record(id, values, cx)
    }

    fn on_enter(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_enter(id, cx)
    }

    fn on_exit(&self, id: &span::Id, cx: layer::Context<'_, S>) {
        self.0.on_exit(id, cx)
    }

    fn on_close(&self, id: span::Id, cx: layer::Context<'_, S>) {
        self.0.on_close(id, cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing::Subscriber;

    use super::*;

    /// Names of the spans a layer is told about.
    #[derive(Clone, Default)]
    struct Seen(Arc<Mutex<Vec<&'static str>>>);

    impl<S: Subscriber> Layer<S> for Seen {
        fn on_new_span(
            &self,
            attrs: &span::Attributes<'_>,
            _: &span::Id,
            _: layer::Context<'_, S>,
        ) {
            self.0.lock().unwrap().push(attrs.metadata().name());
        }
    }

    /// What sqlx does after each query, then what the observation middleware does on the next request
    /// on the same thread. Without `AskedEveryTime` the layer sees no span at all.
    #[test]
    fn a_span_after_a_log_crate_check_still_reaches_its_filtered_layer() {
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(
            seen.clone()
                .with_filter(AskedEveryTime(EnvFilter::new(TRACE_FILTER))),
        );
        tracing::subscriber::with_default(subscriber, || {
            let bridge = tracing_log::LogTracer::new();
            let query_log = log::Metadata::builder()
                .target("sqlx::postgres")
                .level(log::Level::Debug)
                .build();
            for _ in 0..3 {
                // Its answer is not the point (per-layer filters say yes to the whole subscriber and
                // decide per layer); the verdict it leaves behind on the thread is.
                log::Log::enabled(&bridge, &query_log);
                let _request = tracing::debug_span!("request").entered();
            }
        });
        assert_eq!(*seen.0.lock().unwrap(), ["request"; 3]);
    }
}
