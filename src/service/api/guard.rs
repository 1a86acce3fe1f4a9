//! The answers a request gets when its handler gives none: a `503` problem document once the write
//! timeout has passed, a `500` one when the handler panics.
//!
//! One layer for both, written out rather than tower's or tower-http's: tower-http's `TimeoutLayer`
//! answers with an empty body, axum's `HandleErrorLayer` over tower's timeout boxes every response
//! future, and tower-http's `CatchPanic` boxes every response body (an allocation, and a virtual
//! call for each poll of the body, on every request). Here the answer is the router's own response
//! type, so nothing is boxed.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Cuts a request off after `limit` (the plan's write timeout) and turns a handler's panic into a
/// `500`.
#[derive(Clone, Copy)]
pub struct GuardLayer {
    limit: Duration,
}

impl GuardLayer {
    pub fn new(write_timeout: Duration) -> Self {
        Self {
            limit: write_timeout,
        }
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    limit: Duration,
}

impl<S, ReqBody> tower_service::Service<axum::http::Request<ReqBody>> for Guard<S>
where
    S: tower_service::Service<
        axum::http::Request<ReqBody>,
        Response = Response,
        Error = Infallible,
    >,
{
    type Response = Response;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<ReqBody>) -> Self::Future {
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(inner) => GuardFuture::Serving {
                inner,
                sleep: None,
                limit: self.limit,
            },
            Err(panic) => GuardFuture::Panicked {
                answer: Some(panic_response(panic)),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = Proj]
    pub enum GuardFuture<F> {
        Serving {
            #[pin]
            inner: F,
            // Armed by the first poll that finds the request unanswered, a moment after it
            // arrived: the answers that are ready at once (health, in-process cache hits) never
            // pay for a timer. Boxed: inline, tokio's timer entry made every request's future 128
            // bytes larger, copied each time a layer or hyper moved it; the requests that arm it
            // wait on a dependency, next to which one allocation is nothing.
            sleep: Option<Pin<Box<tokio::time::Sleep>>>,
            limit: Duration,
        },
        Panicked { answer: Option<Response> },
    }
}

impl<F> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, sleep, limit) = match self.project() {
            Proj::Serving {
                inner,
                sleep,
                limit,
            } => (inner, sleep, limit),
            Proj::Panicked { answer } => {
                let answer = answer.take().expect("polled after completion");
                return Poll::Ready(Ok(answer));
            }
        };
        match catch_unwind(AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(Poll::Ready(done)) => return Poll::Ready(done),
            Ok(Poll::Pending) => {}
            // The handler's future is not polled again: it is dropped with this one.
            Err(panic) => return Poll::Ready(Ok(panic_response(panic))),
        }
        let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep(*limit)));
        std::task::ready!(timer.as_mut().poll(cx));
        Poll::Ready(Ok(ApiError::Timeout(*limit).into_response()))
    }
}

/// A handler panic is a bug; the client gets a problem document and the process keeps serving.
fn panic_response(err: Box<dyn Any + Send + 'static>) -> Response {
    let detail = err
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    ApiError::Internal(format!("handler panicked: {detail}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::get;
    use http_body_util::BodyExt;
    use tower::{Layer, ServiceExt};

    async fn boom() -> &'static str {
        panic!("boom")
    }

    async fn late_boom() -> &'static str {
        tokio::time::sleep(Duration::from_millis(20)).await;
        panic!("late boom")
    }

    async fn answer(path: &str, limit: Duration) -> (StatusCode, serde_json::Value) {
        let routes = axum::Router::new()
            .route("/ok", get(|| async { "ok" }))
            .route("/boom", get(boom))
            .route("/late-boom", get(late_boom))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        let r = GuardLayer::new(limit)
            .layer(routes)
            .oneshot(req)
            .await
            .unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let doc = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        (status, doc)
    }

    #[tokio::test]
    async fn answers_pass_through_and_panics_and_timeouts_get_problem_documents() {
        let limit = Duration::from_millis(200);
        assert_eq!(answer("/ok", limit).await.0, StatusCode::OK);
        // A panic when the handler's future is polled, at once or after a wait: a 500 whose body
        // keeps the panic's message to the logs.
        for path in ["/boom", "/late-boom"] {
            let (status, doc) = answer(path, limit).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{path}");
            assert_eq!(doc["status"], 500, "{path}: {doc}");
            assert!(!doc.to_string().contains("boom"), "{path}: {doc}");
        }
        let started = std::time::Instant::now();
        let (status, doc) = answer("/slow", limit).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
        assert_eq!(doc["status"], 503, "{doc}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
