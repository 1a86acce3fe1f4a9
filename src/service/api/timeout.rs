//! The write timeout: a request still unanswered after `server.write_timeout` gets a `503` problem
//! document.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Cuts a request off after `limit` (the plan's write timeout) with a `503` problem document. Written
/// out rather than tower-http's `TimeoutLayer`, which answers with an empty body, or axum's
/// `HandleErrorLayer` over tower's timeout, which boxes every response future on the way.
#[derive(Clone, Copy)]
pub struct WriteTimeoutLayer {
    limit: Duration,
}

impl WriteTimeoutLayer {
    pub fn new(limit: Duration) -> Self {
        Self { limit }
    }
}

impl<S> tower_layer::Layer<S> for WriteTimeoutLayer {
    type Service = WriteTimeout<S>;
    fn layer(&self, inner: S) -> WriteTimeout<S> {
        WriteTimeout {
            inner,
            limit: self.limit,
        }
    }
}

#[derive(Clone)]
pub struct WriteTimeout<S> {
    inner: S,
    limit: Duration,
}

impl<S, ReqBody> tower_service::Service<axum::http::Request<ReqBody>> for WriteTimeout<S>
where
    S: tower_service::Service<
        axum::http::Request<ReqBody>,
        Response = Response,
        Error = Infallible,
    >,
{
    type Response = Response;
    type Error = Infallible;
    type Future = WriteTimeoutFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<ReqBody>) -> Self::Future {
        WriteTimeoutFuture {
            inner: self.inner.call(req),
            sleep: None,
            limit: self.limit,
        }
    }
}

pin_project_lite::pin_project! {
    pub struct WriteTimeoutFuture<F> {
        #[pin]
        inner: F,
        // Armed by the first poll that finds the request unanswered, a moment after it arrived: the
        // answers that are ready at once (health, in-process cache hits) never pay for a timer.
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        limit: Duration,
    }
}

impl<F> Future for WriteTimeoutFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(done) = this.inner.poll(cx) {
            return Poll::Ready(done);
        }
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(*this.limit)));
        }
        let Some(sleep) = this.sleep.as_pin_mut() else {
            unreachable!("the timer is armed above")
        };
        std::task::ready!(sleep.poll(cx));
        Poll::Ready(Ok(ApiError::Timeout(*this.limit).into_response()))
    }
}
