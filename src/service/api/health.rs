//! Liveness, readiness and metrics.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::State;
use crate::schema::migrate;
use crate::service::metrics::PoolLabels;

/// Liveness: the process serves.
#[utoipa::path(get, path = "/health", responses((status = 200, description = "Alive")), tag = "operations")]
pub async fn health() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

#[derive(Serialize)]
struct Readiness {
    status: &'static str,
    checks: Vec<Check>,
}

#[derive(Serialize)]
struct Check {
    name: String,
    ok: bool,
    detail: String,
}

const SCHEMA_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Readiness: every shard's primary reachable and the schema at the version this binary expects.
/// Redis is reported but does not gate readiness: the service answers without it.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; the body lists the failing checks")), tag = "operations")]
pub async fn ready(axum::extract::State(state): State) -> Response {
    let mut checks = Vec::new();
    let expected = migrate::expected_version();
    for shard in state.db.shards() {
        let name = format!("shard {} primary", shard.id);
        if !shard.primary_up() {
            checks.push(Check {
                name,
                ok: false,
                detail: format!("{} unreachable", shard.primary_target),
            });
            continue;
        }
        let applied = tokio::time::timeout(
            SCHEMA_CHECK_TIMEOUT,
            migrate::applied_version(&shard.primary),
        )
        .await;
        let (ok, detail) = match applied {
            Ok(Ok(Some(v))) if v == expected => (true, format!("schema at {v}")),
            Ok(Ok(Some(v))) => (
                false,
                format!("schema at {v}, this binary expects {expected}: run `kybctl migrate up`"),
            ),
            Ok(Ok(None)) => (
                false,
                "schema not migrated: run `kybctl migrate up`".to_owned(),
            ),
            Ok(Err(e)) => (false, e.to_string()),
            Err(_) => (false, format!("no answer within {SCHEMA_CHECK_TIMEOUT:?}")),
        };
        checks.push(Check { name, ok, detail });
    }
    if let Some(redis) = state.cache.redis() {
        let degraded = redis.is_degraded();
        checks.push(Check {
            name: "redis cache (not required)".into(),
            ok: !degraded,
            detail: if degraded {
                "degraded: serving from L1, L3 and the database"
            } else {
                "ok"
            }
            .into(),
        });
    }
    let (connected, shards) = (state.cache.listeners_connected(), state.db.shards().len());
    checks.push(Check {
        name: "cache invalidation listeners (not required)".into(),
        ok: connected >= shards,
        detail: format!("{connected} of {shards} shard primaries"),
    });
    let ready = checks
        .iter()
        .filter(|c| !c.name.ends_with("(not required)"))
        .all(|c| c.ok);
    let body = Readiness {
        status: if ready { "ready" } else { "not ready" },
        checks,
    };
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

/// Prometheus metrics (OpenMetrics text). Pool gauges are sampled at scrape time.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Metrics")), tag = "operations")]
pub async fn metrics(axum::extract::State(state): State) -> Response {
    for shard in state.db.shards() {
        for (role, stats) in shard.stats() {
            for (s, v) in [
                ("open", stats.size),
                ("idle", stats.idle),
                ("in_use", stats.size.saturating_sub(stats.idle)),
            ] {
                state
                    .metrics
                    .db_connections
                    .get_or_create(&PoolLabels {
                        shard: shard.id.clone(),
                        role: role.as_str().into(),
                        state: s.into(),
                    })
                    .set(i64::from(v));
            }
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        state.metrics.encode(),
    )
        .into_response()
}
