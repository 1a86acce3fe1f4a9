//! Per-request observation: the request id, the route template, the request's span, the latency
//! header and metrics.
//!
//! `observe` is a tower layer written out rather than `axum::middleware::from_fn` (which boxes the
//! inner service and its future on every request), and it wraps the router once rather than being
//! applied to each route with `Router::layer`: axum wraps every route in a boxed, cloned-per-request
//! service for each such layer. It matches the route template itself ([`RouteTable`]) and hands it,
//! with the request id, to the layers and handlers inside through a [`RequestContext`].
//!
//! Request ids are part of the same layer rather than tower-http's `SetRequestId` and
//! `PropagateRequestId`: those two wrap every request and response future once more each, look the
//! header up three times and store an extension nothing reads; together they were a third of the
//! service-wide layers' cost per request (`benches/http_stack.rs`).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::header::Entry;
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, Method};
use tracing::instrument::Instrumented;
use tracing::Instrument;

use super::error::FailureCause;
use super::route_table::RouteTable;
use super::X_REQUEST_ID;
use crate::service::state::AppState;
use crate::telemetry::traces;

// A `const`, as `X_REQUEST_ID` is, not a `static`: a custom name inserted from a static is cloned
// through `Bytes`' vtable on every response, a `const` one is built in place.
const X_RESPONSE_TIME: HeaderName = HeaderName::from_static("x-response-time");

/// Gives every request an id (the caller's `X-Request-Id` if it sent one, else a new UUID, set on the
/// request for the handlers and echoed on the response), wraps the request in a span carrying that id,
/// matches its route template in `routes`, sets `X-Response-Time`, records count and latency by route
/// template and status, and logs each request the server fails (5xx) with its id.
///
/// The span is `debug`, as tower-http's `TraceLayer` makes it: traces always get it (their filter takes
/// kybctl's `debug` spans), the logs at `RUST_LOG=debug`, where every log line of the request carries
/// it. At the default `info` no span is made. An `info` span cost every request more than the rest of
/// the service's middleware together (~6,900 instructions per `GET /health` against ~4,600, callgrind,
/// BENCHMARKS.md): the log layer formats a span's fields when the span is made, for log lines that
/// almost never come. What an operator needs at `info`, the failed requests, this layer logs itself
/// with their id (`log_failure`).
#[derive(Clone)]
pub struct ObserveLayer {
    state: Arc<AppState>,
    routes: Arc<RouteTable>,
}

impl ObserveLayer {
    pub fn new(state: Arc<AppState>, routes: Arc<RouteTable>) -> Self {
        Self { state, routes }
    }
}

impl<S> tower_layer::Layer<S> for ObserveLayer {
    type Service = Observe<S>;
    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
            routes: self.routes.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    state: Arc<AppState>,
    routes: Arc<RouteTable>,
}

impl<S, ReqBody, B> tower_service::Service<axum::http::Request<ReqBody>> for Observe<S>
where
    S: tower_service::Service<
        axum::http::Request<ReqBody>,
        Response = axum::http::Response<B>,
        Error = Infallible,
    >,
{
    type Response = axum::http::Response<B>;
    type Error = Infallible;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<ReqBody>) -> Self::Future {
        let start = Instant::now();
        // Handed to handlers through the context ([`RequestId`]) rather than set on the request's
        // headers: a header insert hashes the name and may grow the map, on every request.
        let id = match req.headers().get(&X_REQUEST_ID) {
            Some(v) => v.clone(),
            None => new_request_id(),
        };
        let request_id = id.to_str().unwrap_or("-");
        let method = req.method().clone();
        // The template, not the raw path, so ids do not explode the label set.
        let route = self.routes.find(req.uri().path());
        let span = tracing::debug_span!(
            "request",
            request_id = %request_id,
            method = %method,
            // Absent when no route matched.
            route,
            otel.name = tracing::field::Empty,
            otel.kind = tracing::field::Empty,
            http.request.method = tracing::field::Empty,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        // The semantic-convention names only when a trace backend reads them; logs have method/route.
        if traces::enabled() {
            match route {
                Some(route) => {
                    span.record("otel.name", format!("{method} {route}").as_str());
                    span.record("http.route", route);
                }
                // `{method}` alone for a request no route matched (semantic conventions).
                None => {
                    span.record("otel.name", method.as_str());
                }
            }
            span.record("otel.kind", "server");
            span.record("http.request.method", method.as_str());
            traces::accept_parent(&span, req.headers(), request_id);
        }
        req.extensions_mut().insert(RequestContext {
            request_id: id.clone(),
            route,
        });
        ObserveFuture {
            inner: self.inner.call(req).instrument(span),
            done: Some(Done {
                start,
                method,
                route,
                request_id: id,
                state: self.state.clone(),
            }),
        }
    }
}

/// What the observation layer learnt of a request, for the layers and handlers inside it: its id and
/// the route template it matched (`None`: none did). Known before the router runs, so a response made
/// outside it (the write timeout's 503) is counted under its route too.
#[derive(Clone)]
pub struct RequestContext {
    request_id: HeaderValue,
    route: Option<&'static str>,
}

impl RequestContext {
    pub fn route(&self) -> Option<&'static str> {
        self.route
    }
}

/// The request's id (the caller's `X-Request-Id`, or the one made for it and echoed on the
/// response), for handlers that record it. Outside the observation layer (a handler under test on
/// its own) it is the caller's header, if any.
pub struct RequestId(Option<HeaderValue>);

impl RequestId {
    pub fn as_str(&self) -> Option<&str> {
        self.0.as_ref().and_then(|v| v.to_str().ok())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestId {
    type Rejection = Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let id = match parts.extensions.get::<RequestContext>() {
            Some(cx) => Some(cx.request_id.clone()),
            None => parts.headers.get(&X_REQUEST_ID).cloned(),
        };
        Ok(Self(id))
    }
}

/// What the response needs from the request once it is served.
struct Done {
    start: Instant,
    method: Method,
    route: Option<&'static str>,
    request_id: HeaderValue,
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
        let mut this = self.project();
        let Ok(mut resp) = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Some(done) = this.done.take() {
            let elapsed = done.start.elapsed();
            let status = resp.status().as_u16();
            let span = this.inner.as_ref().get_ref().span();
            // An explicit parent, not `in_scope`: entering the span costs even when the event is
            // filtered out.
            tracing::debug!(parent: span, status, elapsed_us = elapsed.as_micros() as u64, "served");
            if traces::enabled() {
                span.record("http.response.status_code", status);
                // Server spans are errors on 5xx only; a 4xx is the caller's (semantic conventions).
                if status >= 500 {
                    span.record("otel.status_code", "error");
                }
            }
            if status >= 500 {
                let cause = resp.extensions_mut().remove::<FailureCause>();
                log_failure(span, &done, status, elapsed, cause.as_ref());
            }
            let headers = resp.headers_mut();
            if let Some(v) = response_time(elapsed) {
                headers.insert(X_RESPONSE_TIME, v);
            }
            // A response that names its own request id keeps it.
            if let Entry::Vacant(v) = headers.entry(X_REQUEST_ID) {
                v.insert(done.request_id);
            }
            done.state
                .metrics
                .observe_request(&done.method, done.route, status, elapsed);
        }
        Poll::Ready(Ok(resp))
    }
}

/// One line per request the server failed (5xx), with what finds it again: the id its caller got, the
/// method, route, status and time taken, and the cause the caller was not shown. `error` when the
/// service itself failed, `warn` for a 503 (a dependency down, or the write timeout), which it answers
/// by design. Child of the request's span when there is one (traces show it on the request).
fn log_failure(
    span: &tracing::Span,
    done: &Done,
    status: u16,
    elapsed: std::time::Duration,
    cause: Option<&FailureCause>,
) {
    let request_id = done.request_id.to_str().unwrap_or("-");
    let elapsed_ms = elapsed.as_secs_f64() * 1e3;
    let problem = cause.map(|c| c.problem);
    let cause = cause.map(|c| c.detail.as_str());
    if status == 503 {
        tracing::warn!(parent: span, request_id, method = %done.method, route = done.route, status,
            elapsed_ms, problem, cause, "request failed");
    } else {
        tracing::error!(parent: span, request_id, method = %done.method, route = done.route, status,
            elapsed_ms, problem, cause, "request failed");
    }
}

/// `X-Response-Time`: milliseconds with three decimals, from integer microseconds, the integer part by
/// itoa into a stack buffer. `write!` through `core::fmt` cost ~1,000 instructions per request here, a
/// tenth of what the middleware adds to a `GET /health` (callgrind, BENCHMARKS.md).
fn response_time(elapsed: std::time::Duration) -> Option<HeaderValue> {
    let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let mut digits = itoa::Buffer::new();
    let ms = digits.format(us / 1000).as_bytes();
    let frac = us % 1000;
    // At most 17 digits of milliseconds, then ".123ms".
    let mut buf = [0u8; 24];
    let len = ms.len() + 6;
    buf[..ms.len()].copy_from_slice(ms);
    buf[ms.len()..len].copy_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
        b'm',
        b's',
    ]);
    HeaderValue::from_bytes(&buf[..len]).ok()
}

/// A new request id: a random UUID v4 from the thread's user-space generator (tower-http's
/// `MakeRequestUuid` asks the kernel, `getrandom`, on every request: a system call a request id does not
/// need).
fn new_request_id() -> HeaderValue {
    // One u128 rather than `[u8; 16]`: rand fills an array a byte at a time, one word drawn per byte.
    let id = uuid::Builder::from_random_bytes(rand::random::<u128>().to_le_bytes()).into_uuid();
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    id.hyphenated().encode_lower(&mut text);
    // Shared from the start (one allocation holding the text and its count): the id is cloned for the
    // request's context, and a header value copied from a slice allocates again on its first clone.
    let text = bytes::Bytes::from_owner(text);
    // SAFETY: a hyphenated UUID is 36 lowercase hex digits and hyphens, all visible ASCII, which is
    // what a header value may hold. Unchecked because the check walks every byte, ~116 instructions
    // on every request without an id of its own (callgrind, BENCHMARKS.md); debug builds check
    // anyway.
    unsafe { HeaderValue::from_maybe_shared_unchecked(text) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::service::api::guard::GuardLayer;
    use axum::body::Body;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    /// The service-wide order of `super::super::router`: observation outside the panic fallback.
    fn stack(
        state: Arc<AppState>,
    ) -> impl tower_service::Service<
        axum::http::Request<Body>,
        Response = axum::http::Response<impl axum::body::HttpBody<Error = impl std::fmt::Debug>>,
        Error = Infallible,
    > + Clone {
        let routes = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route(
                "/named",
                get(|| async { ([(X_REQUEST_ID.clone(), "from-handler")], "ok") }),
            )
            .route("/boom", get(boom))
            // What a handler sees (the audit trail records it).
            .route(
                "/seen",
                get(|id: RequestId| async move { id.as_str().unwrap_or_default().to_owned() }),
            );
        let table = RouteTable::new(["/ok", "/named", "/boom", "/seen"]).unwrap();
        ObserveLayer::new(state, Arc::new(table))
            .layer(GuardLayer::new(Duration::from_secs(15)).layer(routes))
    }

    async fn boom() -> &'static str {
        panic!("boom")
    }

    fn state() -> Arc<AppState> {
        let mut config = crate::config::Config::default();
        config.auth.insecure_no_auth = true;
        // Built without connecting; nothing here touches the database.
        config.database.url = Some(crate::config::Secret::new("postgres://kyb@127.0.0.1:1/kyb"));
        AppState::build(config).expect("state")
    }

    fn get_req(path: &str, id: Option<&str>) -> axum::http::Request<Body> {
        let mut req = axum::http::Request::get(path);
        if let Some(id) = id {
            req = req.header(&X_REQUEST_ID, id);
        }
        req.body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn request_ids_are_kept_or_made_and_echoed() {
        let state = state();
        let svc = stack(state);
        let r = svc
            .clone()
            .oneshot(get_req("/ok", Some("req-abc-123")))
            .await
            .unwrap();
        assert_eq!(r.headers()[&X_REQUEST_ID], "req-abc-123");
        assert!(r.headers().contains_key("x-response-time"));

        let r = svc.clone().oneshot(get_req("/ok", None)).await.unwrap();
        let made = r.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
        let parsed = uuid::Uuid::parse_str(&made).expect("a UUID");
        assert_eq!(parsed.get_version_num(), 4);
        let r = svc.clone().oneshot(get_req("/seen", None)).await.unwrap();
        let echoed = r.headers()[&X_REQUEST_ID].to_str().unwrap().to_owned();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            body,
            echoed.as_bytes(),
            "the handler sees the id the caller gets"
        );
        let again = svc.clone().oneshot(get_req("/ok", None)).await.unwrap();
        assert_ne!(
            again.headers()[&X_REQUEST_ID],
            made.as_str(),
            "a new id per request"
        );

        // A response that names its own id keeps it (one header, not two).
        let r = svc.oneshot(get_req("/named", Some("req-1"))).await.unwrap();
        let ids: Vec<_> = r.headers().get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(ids, ["from-handler"]);
    }

    #[tokio::test]
    async fn a_handler_panic_is_a_500_with_the_request_id_and_is_counted() {
        let state = state();
        let r = stack(state.clone())
            .oneshot(get_req("/boom", Some("req-boom")))
            .await
            .unwrap();
        assert_eq!(r.status(), axum::http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(r.headers()[&X_REQUEST_ID], "req-boom");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc["status"], 500, "{doc}");
        // The panic's message is for the logs, not the caller.
        assert!(!doc.to_string().contains("boom"), "{doc}");
        let metrics = state.metrics.encode();
        assert!(
            metrics
                .contains(r#"kyb_http_requests_total{method="GET",route="/boom",status="500"} 1"#),
            "{metrics}"
        );
    }

    #[test]
    fn response_time_is_milliseconds_with_three_decimals() {
        let h = |us| response_time(Duration::from_micros(us)).unwrap();
        assert_eq!(h(0), "0.000ms");
        assert_eq!(h(5), "0.005ms");
        assert_eq!(h(1_234), "1.234ms");
        assert_eq!(h(61_000_007), "61000.007ms");
        // Past u64 microseconds (584,000 years) it saturates.
        assert_eq!(
            response_time(Duration::MAX).unwrap(),
            "18446744073709551.615ms"
        );
    }
}
