//! Per-request observation: request-id span, latency header and metrics; request ids; and the panic
//! fallback.
//!
//! `observe` is a tower layer written out rather than `axum::middleware::from_fn`: axum applies layers
//! to every route, and `from_fn` boxes the inner service and its future again on every request. On
//! `GET /health` that was a measurable share of the service's own per-request cost (issue 9).

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestId, RequestId};
use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

use super::error::ApiError;
use super::X_REQUEST_ID;
use crate::service::metrics::RequestLabels;
use crate::service::state::AppState;
use crate::telemetry::traces;

/// Wraps every request in a span carrying its request id (so every log line of the request has it),
/// sets `X-Response-Time`, and records count and latency by route template and status.
#[derive(Clone)]
pub struct ObserveLayer {
    state: Arc<AppState>,
}

impl ObserveLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: Arc<AppState>,
}

impl<S, B> tower_service::Service<Request> for Observe<S>
where
    S: tower_service::Service<Request, Response = axum::http::Response<B>, Error = Infallible>,
{
    type Response = axum::http::Response<B>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let start = Instant::now();
        let method = req.method().clone();
        // The route template, not the raw path, so ids do not explode the label set.
        let route = req
            .extensions()
            .get::<MatchedPath>()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "unmatched".to_owned());
        let request_id = req
            .headers()
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let span = tracing::info_span!(
            "request",
            request_id = %request_id,
            method = %method,
            route = %route,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            http.request.method = tracing::field::Empty,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // The semantic-convention names only when a trace backend reads them; logs have method/route.
        if traces::enabled() {
            span.record("otel.name", format!("{method} {route}"));
            span.record("otel.kind", "server");
            span.record("http.request.method", method.as_str());
            span.record("http.route", route.as_str());
            traces::accept_parent(&span, req.headers(), request_id);
        }
        ObserveFuture {
            inner: self.inner.call(req).instrument(span.clone()),
            done: Some(Done {
                start,
                method,
                route,
                span,
                state: self.state.clone(),
            }),
        }
    }
}

/// What the response needs from the request once it is served.
struct Done {
    start: Instant,
    method: Method,
    route: String,
    span: Span,
    state: Arc<AppState>,
}

pin_project_lite::pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Instrumented<F>,
        done: Option<Done>,
    }
}

impl<F, B> Future for ObserveFuture<F>
where
    F: Future<Output = Result<axum::http::Response<B>, Infallible>>,
{
    type Output = Result<axum::http::Response<B>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.poll(cx));
        if let Some(done) = this.done.take() {
            let elapsed = done.start.elapsed();
            let status = resp.status().as_u16();
            done.span.in_scope(|| {
                tracing::debug!(status, elapsed_us = elapsed.as_micros() as u64, "served");
            });
            if traces::enabled() {
                done.span.record("http.response.status_code", status);
                // Server spans are errors on 5xx only; a 4xx is the caller's (semantic conventions).
                if status >= 500 {
                    done.span.record("otel.status_code", "error");
                }
            }
            if let Ok(v) =
                HeaderValue::from_str(&format!("{:.3}ms", elapsed.as_secs_f64() * 1000.0))
            {
                resp.headers_mut().insert("x-response-time", v);
            }
            let labels = RequestLabels {
                method: done.method.to_string(),
                route: done.route,
                status,
            };
            let metrics = &done.state.metrics;
            metrics.http_requests.get_or_create(&labels).inc();
            metrics
                .http_duration
                .get_or_create(&labels)
                .observe(elapsed.as_secs_f64());
        }
        Poll::Ready(Ok(resp))
    }
}

/// Request ids are random (UUID v4) from the thread's user-space generator: `MakeRequestUuid` asks the
/// kernel (`getrandom`) on every request, a system call a request id does not need.
#[derive(Clone, Copy, Default)]
pub struct MakeRequestUuidFast;

impl MakeRequestId for MakeRequestUuidFast {
    fn make_request_id<B>(&mut self, _: &axum::http::Request<B>) -> Option<RequestId> {
        let id = uuid::Builder::from_random_bytes(rand::random()).into_uuid();
        let mut buf = uuid::Uuid::encode_buffer();
        HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
            .ok()
            .map(RequestId::new)
    }
}

/// A handler panic is a bug; the client gets a problem document and the process keeps serving.
pub fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}
