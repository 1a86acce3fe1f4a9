//! HTTP API: routes under `/v1`, health, readiness, metrics and the OpenAPI document.

pub mod classifications;
pub mod compression;
pub mod error;
pub mod guard;
pub mod health;
pub mod idempotency;
pub mod imports;
pub mod jobs;
pub mod merchants;
pub mod middleware;
pub mod openapi;
pub mod reports;
pub mod risk_assessments;
pub mod route_table;

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, MethodRouter};
use axum::BoxError;
use axum::Router;
use bytes::Bytes;
use tower::{Service, ServiceBuilder};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::service::cache::records::Lookup;
use crate::service::cache::CacheStatus;
use crate::service::state::AppState;
use error::ApiError;
use route_table::RouteTable;

pub type State = axum::extract::State<Arc<AppState>>;

pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
/// A `const` rather than a `static`: inserted into every response, and a custom name taken from a
/// static is cloned through `Bytes`' vtable each time, where a `const` one is built in place.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API: the routes and, wrapped once around the whole router, the service-wide layers
/// (observation with request ids and the route match, compression when asked, the write timeout and
/// panic fallback, authentication). `B` is the server's request body type. The body limit and the
/// body read timeout are applied where a body is read ([`error::ApiJson`] and the import route's own
/// limit; the timeout on the routes that take one, [`routes`]), not to every request.
pub fn router<B>(
    state: Arc<AppState>,
) -> impl Service<
    axum::http::Request<B>,
    Response = Response<impl HttpBody<Data = Bytes, Error = BoxError> + Send + 'static>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + Sync
       + 'static
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let server = &state.config.server;
    let (routes, table) = routes(state.clone());
    // Outermost first. Around the router, not `Router::layer` or `Router::route_layer`: axum would
    // wrap each route in a boxed service per layer, cloned on every request.
    ServiceBuilder::new()
        // Outside the panic fallback, so a handler's panic is answered with the request id and
        // counted as the 500 it is.
        .layer(middleware::ObserveLayer::new(state.clone(), table))
        .layer(compression::CompressWhenAskedLayer)
        .layer(guard::GuardLayer::new(server.write_timeout))
        // Inside the timeouts and the panic fallback, as a handler is (it may wait on an identity
        // provider's keys); it checks the route the observation layer matched.
        .layer(crate::service::auth::RequireLayer::new(state.clone()))
        .service(routes)
}

/// The routes, and a table of their templates for the service-wide layers to match (both from one
/// list, so they cannot disagree), without any layer: what [`router`] wraps. Public for
/// `benches/http_stack.rs`, which measures each layer.
pub fn routes(state: Arc<AppState>) -> (Router, Arc<RouteTable>) {
    let api = api_routes(&state.config.server);
    // The templates are constants of `api_routes`: a bad one fails every start, and every test.
    let table = RouteTable::new(api.iter().map(|(template, _)| *template))
        .expect("the API's route templates are valid and distinct");
    let router = api
        .into_iter()
        .fold(Router::new(), |router, (template, route)| {
            router.route(template, route)
        })
        // Unknown paths are answered by authentication before they get here (it refuses a route it
        // cannot name); this answers the same for the routes on their own.
        .fallback(|| async { ApiError::NotFound("route") })
        .with_state(state);
    (router, Arc::new(table))
}

/// Every route: its template and what serves it.
///
/// A route whose handlers read a body gets the server's read timeout (`read_body`, between the
/// body's frames, as tower-http times them) on its own, rather than the whole router: around the
/// router it rewrapped every request's body, GETs' included, that nothing reads (~300 instructions
/// of each `GET /health`, callgrind, BENCHMARKS.md). A handler that reads no body never polls the
/// timer, so for the other routes nothing changes; a new route that reads one must take it too. On
/// the method that reads it only: a route layer costs each of its requests a boxed service cloned
/// per request, which a route's GET (a cached read) need not pay.
fn api_routes(
    server: &crate::config::ServerConfig,
) -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    let read_body = RequestBodyTimeoutLayer::new(server.read_timeout);
    // Full paths rather than `nest("/v1", ...)`: axum gives each nested route one more boxed layer
    // that rebuilds the request's URI without the prefix, on every request, for handlers that never
    // read it.
    vec![
        (
            "/v1/classifications",
            post(classifications::create).layer(read_body.clone()),
        ),
        (
            "/v1/merchants",
            get(merchants::list).merge(post(merchants::create).layer(read_body.clone())),
        ),
        // Its own body limit: a file of merchants, each line held to the one-merchant limit.
        (
            "/v1/merchants:import",
            post(imports::import)
                .layer::<_, Infallible>(DefaultBodyLimit::max(server.max_import_bytes))
                .layer(read_body.clone()),
        ),
        (
            "/v1/merchants/{id}",
            get(merchants::get).merge(patch(merchants::update).layer(read_body.clone())),
        ),
        (
            "/v1/merchants/{id}/risk-assessments",
            get(risk_assessments::list).merge(post(risk_assessments::create).layer(read_body)),
        ),
        (
            "/v1/merchants/{id}/status-changes",
            get(merchants::status_changes),
        ),
        ("/v1/reports/industries", get(reports::industries)),
        ("/v1/jobs/{id}", get(jobs::get)),
        ("/health", get(health::health)),
        ("/ready", get(health::ready)),
        ("/openapi.json", get(openapi::document)),
    ]
}

/// `/metrics` and the per-shard `/ready`, for their own listener (`metrics_listen`): off the API port,
/// so API callers never reach them and they need no credentials.
pub fn metrics_router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .route("/ready", get(health::ready_verbose))
        .with_state(state)
}

/// A JSON body that came through the cache, served as stored.
pub struct CachedJson {
    pub status: StatusCode,
    pub body: Bytes,
    pub cache: CacheStatus,
}

impl IntoResponse for CachedJson {
    fn into_response(self) -> Response {
        (
            self.status,
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                ),
                (
                    X_CACHE_STATUS.clone(),
                    HeaderValue::from_static(self.cache.header_value()),
                ),
            ],
            self.body,
        )
            .into_response()
    }
}

/// A request's `Cache-Control`, for the record caches: `no-store` wins over `no-cache` (a cache must
/// not store any part of a `no-store` exchange, RFC 9111 §5.2.1.5).
pub fn cache_lookup(headers: &axum::http::HeaderMap) -> Lookup {
    let mut lookup = Lookup::Cached;
    let directives = headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    for d in directives {
        let d = d.trim();
        if d.eq_ignore_ascii_case("no-store") {
            return Lookup::Bypass;
        }
        if d.eq_ignore_ascii_case("no-cache") {
            lookup = Lookup::Refresh;
        }
    }
    lookup
}

pub fn json_bytes<T: serde::Serialize>(v: &T) -> Result<Bytes, ApiError> {
    serde_json::to_vec(v)
        .map(Bytes::from)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::auth::scopes;
    use crate::service::auth::RequireLayer;
    use axum::body::Body;
    use tower::{Layer, ServiceExt};

    /// A route the scope table does not know is refused, so it must be there to be reachable.
    #[test]
    fn every_route_is_in_the_scope_table() {
        let server = crate::config::Config::default().server;
        for (template, _) in api_routes(&server) {
            // `allowed` lists every method the table grants, public routes' included.
            assert!(
                !scopes::allowed(template).is_empty(),
                "{template} is not in the scope table"
            );
        }
    }

    async fn status<S>(svc: &S, path: &str) -> StatusCode
    where
        S: Service<axum::http::Request<Body>, Response = Response, Error = Infallible> + Clone,
    {
        let req = axum::http::Request::get(path).body(Body::empty()).unwrap();
        svc.clone().oneshot(req).await.unwrap().status()
    }

    /// Authentication passes only what it can name: a route the observation layer matched and the
    /// scope table knows. Anything else is refused before the router, whatever the router has.
    #[tokio::test]
    async fn authentication_refuses_what_it_cannot_name() {
        let mut config = crate::config::Config::default();
        config.auth.insecure_no_auth = true;
        // Built without connecting; nothing here touches the database.
        config.database.url = Some(crate::config::Secret::new("postgres://kyb@127.0.0.1:1/kyb"));
        let state = AppState::build(config).expect("state");
        let inner = Router::new()
            .route("/health", get(|| async { "reached" }))
            .route("/v1/unlisted", get(|| async { "reached" }));
        let table = RouteTable::new(["/health", "/v1/unlisted"]).unwrap();
        let observed = middleware::ObserveLayer::new(state.clone(), Arc::new(table))
            .layer(RequireLayer::new(state.clone()).layer(inner.clone()));
        assert_eq!(status(&observed, "/health").await, StatusCode::OK);
        // Routed, but not in the scope table.
        assert_eq!(
            status(&observed, "/v1/unlisted").await,
            StatusCode::NOT_FOUND
        );
        assert_eq!(status(&observed, "/v1/other").await, StatusCode::NOT_FOUND);
        // No observation layer outside: no route to check, so nothing passes.
        let bare = RequireLayer::new(state).layer(inner);
        assert_eq!(status(&bare, "/health").await, StatusCode::NOT_FOUND);
    }

    fn lookup(values: &[&str]) -> Lookup {
        let mut headers = axum::http::HeaderMap::new();
        for v in values {
            headers.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
        }
        cache_lookup(&headers)
    }

    #[test]
    fn no_store_wins_over_no_cache() {
        assert_eq!(lookup(&[]), Lookup::Cached);
        assert_eq!(lookup(&["max-age=0"]), Lookup::Cached);
        assert_eq!(lookup(&["no-storage"]), Lookup::Cached);
        assert_eq!(lookup(&["No-Cache"]), Lookup::Refresh);
        assert_eq!(lookup(&["max-age=0, no-cache"]), Lookup::Refresh);
        assert_eq!(lookup(&["no-cache, no-store"]), Lookup::Bypass);
        assert_eq!(lookup(&["no-store", "no-cache"]), Lookup::Bypass);
        assert_eq!(lookup(&["no-cache", " NO-STORE "]), Lookup::Bypass);
    }
}
