//! The client spans under a request: database statements and Redis commands, named and tagged by the
//! OpenTelemetry semantic conventions so trace backends group them. They are `debug` spans, which only
//! the trace layer asks for (see `telemetry::TRACE_FILTER`): with traces off they are never created.

use std::fmt::Display;
use std::future::Future;

use opentelemetry::trace::TraceContextExt;
use tracing::{Instrument, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// A database client span, its parent the current span unless one is given. One macro rather than a
/// function: the parent is part of `tracing`'s span macro, not a value it takes.
macro_rules! db_span {
    ($operation:expr, $collection:expr $(, parent: $parent:expr)?) => {
        tracing::debug_span!(
            $(parent: $parent,)?
            "db",
            otel.name = %format_args!(
                "{}{}{}",
                $operation,
                if $collection.is_empty() { "" } else { " " },
                $collection
            ),
            otel.kind = "client",
            db.system.name = "postgresql",
            db.operation.name = $operation,
            db.collection.name = $collection,
            db.operation.batch.size = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
            error.message = tracing::field::Empty,
        )
    };
}

/// Runs a database statement under a client span named `OPERATION collection` (`collection` empty for
/// BEGIN and COMMIT); an error marks the span failed.
pub async fn db<T, E: Display>(
    operation: &'static str,
    collection: &'static str,
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    traced(db_span!(operation, collection), query).await
}

/// Runs a database statement that serves several requests (`callers`, each one's span where it asked):
/// its span is a child of the first caller's and linked to the others' (OpenTelemetry's pattern for a
/// batch), with `db.operation.batch.size`, so every request's trace leads to the statement.
pub async fn db_batch<T, E: Display>(
    operation: &'static str,
    collection: &'static str,
    callers: &[Span],
    query: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some((first, others)) = callers.split_first() else {
        return db(operation, collection, query).await;
    };
    let span = db_span!(operation, collection, parent: first);
    if !span.is_disabled() && !others.is_empty() {
        // The convention records the size only for batches of two or more.
        span.record("db.operation.batch.size", callers.len());
        for other in others {
            span.add_link(other.context().span().span_context().clone());
        }
    }
    traced(span, query).await
}

/// Runs one Redis command under a client span named after the command.
pub async fn redis<T, E: Display>(
    command: &str,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let span = tracing::debug_span!(
        "redis",
        otel.name = command,
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = command,
        otel.status_code = tracing::field::Empty,
        error.message = tracing::field::Empty,
    );
    traced(span, call).await
}

async fn traced<T, E: Display>(
    span: Span,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let result = call.instrument(span.clone()).await;
    if let Err(e) = &result {
        if !span.is_disabled() {
            span.record("otel.status_code", "error");
            span.record("error.message", tracing::field::display(e));
        }
    }
    result
}
