//! The service's HTTP stack in process: CPU per `GET /health` through `service::api::router`, through
//! the bare routes, through the routes with each service-wide layer alone, and through a bare axum
//! route; no sockets, no kernel, one thread. What `bench_api.py`'s `/health` ÷ bare axum ratio cannot
//! say, this does: which layer costs what.
//!
//! `cargo bench --bench http_stack` (logs as the service has them: `RUST_LOG` unset is the service's
//! default `info`; `RUST_LOG=warn` as `bench_api.py` runs it). Under `cargo test` (no `--bench`) every
//! stack serves one request and must answer 200, so the target stays compiled and working.

use std::hint::black_box;
use std::time::{Duration, Instant};

use axum::body::HttpBody;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use tower::{Layer, Service, ServiceExt};
use tower_http::compression::CompressionLayer;
use tower_http::timeout::RequestBodyTimeoutLayer;

use kybctl::config::{Config, Secret};
use kybctl::service::api::{self, compression, guard, middleware};
use kybctl::service::auth::RequireLayer;
use kybctl::service::state::AppState;

// The service's allocator (`src/main.rs`), so allocations cost here what they cost there.
#[global_allocator]
static ALLOCATOR: kybctl::allocator::MiMalloc = kybctl::allocator::MiMalloc;

/// What wrk sends.
fn request() -> Request<Empty<Bytes>> {
    Request::get("/health")
        .header("host", "127.0.0.1:8080")
        .body(Empty::new())
        .expect("a valid request")
}

/// Serves `n` requests one after another and reads each body; returns the time per request.
async fn serve_n<S, B>(svc: &mut S, n: u32) -> Duration
where
    S: Service<Request<Empty<Bytes>>, Response = axum::http::Response<B>>,
    S::Error: std::fmt::Debug,
    B: HttpBody,
    B::Error: std::fmt::Debug,
{
    let start = Instant::now();
    for _ in 0..n {
        let resp = svc
            .ready()
            .await
            .expect("ready")
            .call(request())
            .await
            .expect("served");
        assert_eq!(resp.status(), StatusCode::OK);
        black_box(resp.into_body().collect().await.expect("body").to_bytes());
    }
    start.elapsed() / n
}

struct Stack<'a> {
    name: &'a str,
    per_request: Vec<Duration>,
    /// The size of its response future: what hyper and each layer move by value on every request.
    future_bytes: usize,
}

fn future_bytes<S: Service<Request<Empty<Bytes>>>>(_: &S) -> usize {
    std::mem::size_of::<S::Future>()
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    // `cargo bench --bench http_stack -- WORD`: only the stacks whose name has WORD (for a profiler).
    let only = std::env::args().skip(1).find(|a| !a.starts_with("--"));
    // The service's own subscriber and filter, so the request span costs what it costs in `serve`.
    let _telemetry = kybctl::telemetry::init(kybctl::telemetry::LogFormat::Human, false);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut config = Config::default();
        config.auth.insecure_no_auth = true;
        // Nothing listens there: pools and clients are built without connecting, and `/health`
        // touches neither.
        config.database.url = Some(Secret::new("postgres://kyb@127.0.0.1:1/kyb"));
        let state = AppState::build(config).expect("state");
        let server = state.config.server.clone();
        let (_, table) = api::routes(state.clone());
        let routes = || api::routes(state.clone()).0;
        let n = if bench { 200_000 } else { 1 };
        let rounds = if bench { 3 } else { 1 };

        let mut stacks: Vec<Stack> = Vec::new();
        // One macro rather than a function: every stack is a different service type.
        macro_rules! measure {
            ($name:expr, $svc:expr) => {{
                let name: &str = $name;
                if only.as_deref().is_none_or(|w| name.contains(w)) {
                    let mut svc = $svc;
                    let future_bytes = future_bytes(&svc);
                    serve_n(&mut svc, n.min(1_000)).await; // warm-up
                    let mut per_request = Vec::new();
                    for _ in 0..rounds {
                        per_request.push(serve_n(&mut svc, n).await);
                    }
                    stacks.push(Stack {
                        name,
                        per_request,
                        future_bytes,
                    });
                }
            }};
        }
        measure!(
            "bare axum route",
            axum::Router::new().route("/health", get(|| async { "ok" }))
        );
        measure!("routes only", routes());
        measure!(
            "+ observation (request id, route, span, metrics)",
            middleware::ObserveLayer::new(state.clone(), table.clone()).layer(routes())
        );
        // Authentication reads the route the observation layer matched, so it is measured inside
        // it: the difference from the line above is its own.
        measure!(
            "+ observation and authentication",
            middleware::ObserveLayer::new(state.clone(), table.clone())
                .layer(RequireLayer::new(state.clone()).layer(routes()))
        );
        measure!(
            "+ compression (tower-http's layer alone)",
            CompressionLayer::new().layer(routes())
        );
        measure!(
            "+ compression when asked (the service's)",
            compression::CompressWhenAskedLayer.layer(routes())
        );
        measure!(
            "+ write timeout and panic fallback",
            guard::GuardLayer::new(server.write_timeout).layer(routes())
        );
        measure!(
            "+ body timeout (now on body routes only)",
            RequestBodyTimeoutLayer::new(server.read_timeout).layer(routes())
        );
        measure!(
            "service router (all layers)",
            api::router::<Empty<Bytes>>(state.clone())
        );

        if !bench {
            return;
        }
        let median = |s: &Stack| {
            let mut v = s.per_request.clone();
            v.sort();
            v[v.len() / 2].as_nanos() as i64
        };
        let base = stacks
            .iter()
            .find(|s| s.name.starts_with("routes only"))
            .map_or(0, median);
        println!(
            "GET /health in process, {n} requests x {rounds} rounds, RUST_LOG={}",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "(unset: info)".into())
        );
        println!(
            "a compressed response body (tower-http CompressionBody<axum Body>) is {} bytes",
            std::mem::size_of::<tower_http::compression::CompressionBody<axum::body::Body>>()
        );
        println!(
            "{:<48} {:>22} {:>14} {:>13}",
            "stack", "ns/request (rounds)", "vs routes only", "future bytes"
        );
        for s in &stacks {
            let rounds: Vec<String> = s
                .per_request
                .iter()
                .map(|d| d.as_nanos().to_string())
                .collect();
            let m = median(s);
            println!(
                "{:<48} {:>22} {:>+14} {:>13}",
                s.name,
                rounds.join(" "),
                m - base,
                s.future_bytes
            );
        }
    });
}
