//! The trivial reference of `loadtests/bench_api.py`: one bare axum route on `axum::serve`, none of the
//! service's middleware (request ids, metrics, timeouts, compression, panic catching) and none of its
//! server loop. The service's `GET /health` is measured against it, so the ratio is what the service's
//! HTTP stack costs. Usage: `hello ADDR` (default 127.0.0.1:8090).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    axum::serve(listener, app).await
}
