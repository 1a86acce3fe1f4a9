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

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::HttpBody;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::BoxError;
use axum::Router;
use bytes::Bytes;
use tower::{Service, ServiceBuilder};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::service::cache::records::Lookup;
use crate::service::cache::CacheStatus;
use crate::service::state::AppState;
use error::ApiError;

pub type State = axum::extract::State<Arc<AppState>>;

pub static X_CACHE_STATUS: HeaderName = HeaderName::from_static("x-cache-status");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The API: the routes and, wrapped once around the whole router, the service-wide layers
/// (observation with request ids, compression when asked, the write timeout and panic fallback, the
/// request body timeout). `B` is the server's request body type. The body limit is applied where a
/// body is read ([`error::ApiJson`], and the import route's own), not to every request.
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
    // Outermost first. Around the router, not `Router::layer`: axum would wrap each route in a boxed
    // service per layer, cloned on every request.
    ServiceBuilder::new()
        // Outside the panic fallback, so a handler's panic is answered with the request id and
        // counted as the 500 it is.
        .layer(middleware::ObserveLayer::new(state.clone()))
        .layer(compression::CompressWhenAskedLayer)
        .layer(guard::GuardLayer::new(server.write_timeout))
        .layer(RequestBodyTimeoutLayer::new(server.read_timeout))
        .service(routes(state.clone()))
}

/// The routes with their per-route layers (authentication, route recording) and no service-wide
/// layer: what [`router`] wraps. Public for `benches/http_stack.rs`, which measures each layer.
pub fn routes(state: Arc<AppState>) -> Router {
    let server = &state.config.server;
    // Full paths rather than `nest("/v1", ...)`: axum gives each nested route one more boxed layer
    // that rebuilds the request's URI without the prefix, on every request, for handlers that never
    // read it. The matched route (`MatchedPath`) is "/v1/..." either way.
    Router::new()
        .route("/v1/classifications", post(classifications::create))
        .route(
            "/v1/merchants",
            post(merchants::create).get(merchants::list),
        )
        // Its own body limit: a file of merchants, each line held to the one-merchant limit.
        .route(
            "/v1/merchants:import",
            post(imports::import).layer(DefaultBodyLimit::max(server.max_import_bytes)),
        )
        .route(
            "/v1/merchants/{id}",
            get(merchants::get).patch(merchants::update),
        )
        .route(
            "/v1/merchants/{id}/risk-assessments",
            post(risk_assessments::create).get(risk_assessments::list),
        )
        .route(
            "/v1/merchants/{id}/status-changes",
            get(merchants::status_changes),
        )
        .route("/v1/reports/industries", get(reports::industries))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/openapi.json", get(openapi::document))
        // Every matched route tells the observation layer its template, then passes the scope table;
        // unknown paths fall through to 404 unasked. One `route_layer` for both: axum boxes each
        // route once more per call, on every request.
        .route_layer(
            ServiceBuilder::new()
                .layer(middleware::RecordRouteLayer)
                .layer(crate::service::auth::RequireLayer::new(state.clone())),
        )
        .fallback(|| async { ApiError::NotFound("route") })
        .with_state(state)
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
