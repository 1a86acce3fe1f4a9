//! Response compression, paid for only by the requests that ask for it.
//!
//! tower-http's `CompressionBody` holds every encoder's state inline (brotli's alone is kilobytes), and
//! it is the body type of every response that passes its layer, compressed or not; each layer above
//! returns the response by value, so each copied those kilobytes on every request (the largest symbol,
//! `memmove`, in `benches/http_stack.rs`'s profile). A request without `Accept-Encoding` is one
//! tower-http would answer uncompressed anyway, so it skips the layer here (keeping the `Vary` header
//! tower-http would add); a request with one goes through tower-http unchanged, and its body is boxed
//! once so the layers above move a pointer.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{header, HeaderMap, Request, Response};
use axum::BoxError;
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Either};
use tower_http::compression::{
    Compression, CompressionBody, CompressionLayer, DefaultPredicate, Predicate, ResponseFuture,
};

/// The response body: as the routes made it, or compressed (boxed).
pub type MaybeCompressed = Either<Body, UnsyncBoxBody<Bytes, BoxError>>;

#[derive(Clone, Default)]
pub struct CompressWhenAskedLayer;

impl<S> tower_layer::Layer<S> for CompressWhenAskedLayer {
    type Service = CompressWhenAsked<S>;
    fn layer(&self, inner: S) -> CompressWhenAsked<S> {
        CompressWhenAsked {
            compressing: CompressionLayer::new().layer(inner),
        }
    }
}

/// tower-http's layer, around the inner service that requests asking for no encoding are handed to
/// directly. One handle rather than a second clone beside it: the whole stack is cloned for every
/// request (hyper-util's `TowerToHyperService`), so each clone here is paid per request.
#[derive(Clone)]
pub struct CompressWhenAsked<S> {
    compressing: Compression<S>,
}

/// Whether tower-http's layer could choose an encoding: with no `Accept-Encoding` it never does.
fn asks_for_encoding(headers: &HeaderMap) -> bool {
    headers.contains_key(header::ACCEPT_ENCODING)
}

/// What tower-http does to a response it does not compress for this client but would for another:
/// `Vary: accept-encoding`, so a shared cache does not hand this answer to one that asked for gzip.
fn mark_vary(res: &mut Response<Body>) {
    // The predicate first: for most small answers its size check (the body's exact length) settles
    // it before any header is looked up.
    let compressible = DefaultPredicate::new().should_compress(res)
        && !res.headers().contains_key(header::CONTENT_ENCODING)
        && !res.headers().contains_key(header::CONTENT_RANGE);
    // Only then: a lookup of `Vary` costs a hash of its name on every request.
    if !compressible {
        return;
    }
    let already = res.headers().get_all(header::VARY).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.to_ascii_lowercase().contains("accept-encoding"))
    });
    if !already {
        res.headers_mut()
            .append(header::VARY, header::ACCEPT_ENCODING.into());
    }
}

impl<S, ReqBody> tower_service::Service<Request<ReqBody>> for CompressWhenAsked<S>
where
    S: tower_service::Service<Request<ReqBody>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<MaybeCompressed>;
    type Error = Infallible;
    type Future = CompressWhenAskedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // tower-http's `poll_ready` is the inner service's, whichever path the request takes.
        self.compressing.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        if asks_for_encoding(req.headers()) {
            CompressWhenAskedFuture::Compressing {
                inner: Box::pin(self.compressing.call(req)),
            }
        } else {
            CompressWhenAskedFuture::Plain {
                inner: self.compressing.get_mut().call(req),
            }
        }
    }
}

pin_project_lite::pin_project! {
    #[project = Proj]
    pub enum CompressWhenAskedFuture<F> {
        Plain { #[pin] inner: F },
        // Boxed: tower-http's future keeps the negotiated encodings and its predicate beside the
        // inner one (168 bytes more on the service's stack), and an enum is as large as its largest
        // variant, so inline every request's future carried them and copied them each time a layer
        // or hyper moved it. A compressed answer allocates its encoder anyway.
        Compressing { inner: Pin<Box<ResponseFuture<F, DefaultPredicate>>> },
    }
}

impl<F> Future for CompressWhenAskedFuture<F>
where
    F: Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<MaybeCompressed>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Proj::Plain { inner } => inner.poll(cx).map_ok(|mut r| {
                mark_vary(&mut r);
                r.map(Either::Left)
            }),
            Proj::Compressing { inner } => inner
                .as_mut()
                .poll(cx)
                .map_ok(|r| r.map(|b: CompressionBody<Body>| Either::Right(b.boxed_unsync()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tower::ServiceExt;
    use tower_layer::Layer;

    fn router(len: usize) -> axum::Router {
        let body = "x".repeat(len);
        axum::Router::new().route("/", get(move || async move { body }))
    }

    fn request(accept: Option<&str>) -> Request<Body> {
        let mut req = Request::get("/");
        if let Some(a) = accept {
            req = req.header(header::ACCEPT_ENCODING, a);
        }
        req.body(Body::empty()).unwrap()
    }

    async fn get_with(accept: Option<&str>) -> (Option<String>, Bytes) {
        let svc = CompressWhenAskedLayer.layer(router(4096));
        let resp = svc.oneshot(request(accept)).await.unwrap();
        let encoding = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap().to_string());
        (
            encoding,
            resp.into_body().collect().await.unwrap().to_bytes(),
        )
    }

    #[tokio::test]
    async fn an_uncompressed_answer_has_the_headers_tower_http_gives_it() {
        // Compressible (`Vary` expected) and too short to compress (none), asked with no encoding.
        for len in [4096, 15] {
            let ours = CompressWhenAskedLayer
                .layer(router(len))
                .oneshot(request(None))
                .await
                .unwrap();
            let theirs = CompressionLayer::new()
                .layer(router(len))
                .oneshot(request(None))
                .await
                .unwrap();
            assert_eq!(ours.headers(), theirs.headers(), "{len}-byte body");
        }
    }

    #[tokio::test]
    async fn compresses_what_asks_and_nothing_else() {
        let (enc, body) = get_with(None).await;
        assert_eq!(enc, None);
        assert_eq!(body.len(), 4096);
        let (enc, body) = get_with(Some("gzip")).await;
        assert_eq!(enc.as_deref(), Some("gzip"));
        assert!(body.len() < 4096, "{} bytes", body.len());
        let (enc, _) = get_with(Some("br;q=1, gzip;q=0.5")).await;
        assert_eq!(enc.as_deref(), Some("br"));
        // Asked, but only for identity: tower-http's own negotiation answers it uncompressed.
        let (enc, body) = get_with(Some("identity")).await;
        assert_eq!(enc, None);
        assert_eq!(body.len(), 4096);
    }
}
