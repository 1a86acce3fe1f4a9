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

/// The schema part of readiness, expand/contract style: ready when every migration this binary needs is
/// applied. Newer ones are allowed, so the previous release stays ready while the next one's
/// migration runs ahead of its rollout.
fn schema_check(migrator: &sqlx::migrate::Migrator, applied: &[i64]) -> (bool, String) {
    let newest = applied.iter().max().copied().unwrap_or(0);
    let missing = migrate::missing_for_readiness(migrator, applied);
    if missing.is_empty() {
        (
            true,
            format!("schema at {newest}, has every migration this binary needs"),
        )
    } else {
        let list: Vec<String> = missing.iter().map(i64::to_string).collect();
        (
            false,
            format!(
                "schema at {newest}, lacks {} this binary needs: run `kybctl migrate up`",
                list.join(", ")
            ),
        )
    }
}

/// Readiness: every shard's primary reachable and every migration this binary needs applied.
/// Redis is reported but does not gate readiness: the service answers without it.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; the body lists the failing checks")), tag = "operations")]
pub async fn ready(axum::extract::State(state): State) -> Response {
    let mut checks = Vec::new();
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
            migrate::applied_versions(&shard.primary),
        )
        .await;
        let (ok, detail) = match applied {
            Ok(Ok(Some(applied))) => schema_check(migrate::embedded(), &applied),
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

/// Prometheus metrics (OpenMetrics text), on the metrics listener. Pool gauges are sampled at scrape
/// time.
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

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::migrate::{Migration, MigrationType, Migrator};
    use sqlx::SqlSafeStr;

    #[test]
    fn ready_with_newer_migrations_and_held_contract_steps_not_with_missing_ones() {
        let m = |v, sql: &'static str| {
            Migration::new(
                v,
                "m".into(),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        };
        let migrator = Migrator::with_migrations(vec![
            m(1, "CREATE TABLE a (x int)"),
            m(2, "ALTER TABLE a ADD COLUMN y int"),
            m(3, "-- contract\nALTER TABLE a DROP COLUMN x"),
        ]);
        assert!(
            schema_check(&migrator, &[1, 2]).0,
            "contract step 3 may wait"
        );
        assert!(
            schema_check(&migrator, &[1, 2, 3, 4]).0,
            "4 is a newer release's"
        );
        let (ok, detail) = schema_check(&migrator, &[1, 3]);
        assert!(!ok);
        assert_eq!(
            detail,
            "schema at 3, lacks 2 this binary needs: run `kybctl migrate up`"
        );
    }
}
