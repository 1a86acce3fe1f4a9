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
pub async fn health() -> Response {
    // A constant document: probes call this every few seconds per pod, and it needs no serialiser.
    // Built directly rather than as `([(CONTENT_TYPE, ..)], body)`: a `&str` response first gets
    // `text/plain`, which the pair then replaces, two header inserts where one does.
    let mut response = Response::new(axum::body::Body::from(r#"{"status":"ok"}"#));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
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
    /// Whether it gates readiness (Redis and the listeners do not: the service answers without them).
    required: bool,
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
///
/// On the API port the checks are summed up over the shards and say nothing of the deployment's
/// layout (no shard ids, hosts, ports or driver errors: anyone who reaches the port may ask). The
/// same checks per shard, with their targets and errors, are on the metrics listener's `/ready`.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, description = "Ready"),
    (status = 503, description = "Not ready; the body lists the failing checks")), tag = "operations")]
pub async fn ready(axum::extract::State(state): State) -> Response {
    let checks = readiness(&state).await;
    respond(summary(&checks))
}

/// `/ready` on the metrics listener: every check per shard, naming targets and errors, for operators.
pub async fn ready_verbose(axum::extract::State(state): State) -> Response {
    let checks = readiness(&state).await;
    respond(checks.into_iter().map(Finding::into_check).collect())
}

fn respond(checks: Vec<Check>) -> Response {
    let ready = checks.iter().filter(|c| c.required).all(|c| c.ok);
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

/// What one check found (about one shard, or the whole process), before it is told to a caller.
struct Finding {
    kind: CheckKind,
    /// The shard it is about; `None` for the process-wide checks.
    shard: Option<String>,
    ok: bool,
    /// Safe for any caller: versions and counts, no hosts or driver errors.
    public: String,
    /// For operators: the same, or the target and the error.
    detail: String,
}

#[derive(Clone, Copy, PartialEq)]
enum CheckKind {
    Primary,
    Schema,
    Redis,
    Listeners,
}

impl CheckKind {
    fn name(self) -> &'static str {
        match self {
            CheckKind::Primary => "database primaries",
            CheckKind::Schema => "schema",
            CheckKind::Redis => "redis cache (not required)",
            CheckKind::Listeners => "cache invalidation listeners (not required)",
        }
    }
    fn required(self) -> bool {
        matches!(self, CheckKind::Primary | CheckKind::Schema)
    }
}

impl Finding {
    fn into_check(self) -> Check {
        let name = match (&self.shard, self.kind) {
            (Some(id), CheckKind::Primary) => format!("shard {id} primary"),
            (Some(id), CheckKind::Schema) => format!("shard {id} schema"),
            (Some(id), kind) => format!("shard {id} {}", kind.name()),
            (None, kind) => kind.name().to_owned(),
        };
        Check {
            name,
            ok: self.ok,
            required: self.kind.required(),
            detail: self.detail,
        }
    }
}

async fn readiness(state: &crate::service::state::AppState) -> Vec<Finding> {
    let mut checks = Vec::new();
    for shard in state.db.shards() {
        let id = Some(shard.id.to_string());
        if !shard.primary_up() {
            checks.push(Finding {
                kind: CheckKind::Primary,
                shard: id,
                ok: false,
                public: "unreachable".into(),
                detail: format!("{} unreachable", shard.primary_target),
            });
            continue;
        }
        checks.push(Finding {
            kind: CheckKind::Primary,
            shard: id.clone(),
            ok: true,
            public: "reachable".into(),
            detail: format!("{} reachable", shard.primary_target),
        });
        let applied = tokio::time::timeout(
            SCHEMA_CHECK_TIMEOUT,
            migrate::applied_versions(&shard.primary),
        )
        .await;
        let (ok, public, detail) = match applied {
            Ok(Ok(Some(applied))) => {
                let (ok, text) = schema_check(migrate::embedded(), &applied);
                (ok, text.clone(), text)
            }
            Ok(Ok(None)) => {
                let text = "schema not migrated: run `kybctl migrate up`".to_owned();
                (false, text.clone(), text)
            }
            Ok(Err(e)) => (false, "schema version unreadable".into(), e.to_string()),
            Err(_) => {
                let text = format!("no answer within {SCHEMA_CHECK_TIMEOUT:?}");
                (false, text.clone(), text)
            }
        };
        checks.push(Finding {
            kind: CheckKind::Schema,
            shard: id,
            ok,
            public,
            detail,
        });
    }
    if let Some(redis) = state.cache.redis() {
        let degraded = redis.is_degraded();
        let text = if degraded {
            "degraded: serving from L1, L3 and the database"
        } else {
            "ok"
        };
        checks.push(Finding {
            kind: CheckKind::Redis,
            shard: None,
            ok: !degraded,
            public: text.into(),
            detail: text.into(),
        });
    }
    let (connected, shards) = (state.cache.listeners_connected(), state.db.shards().len());
    let text = format!("{connected} of {shards} database primaries");
    checks.push(Finding {
        kind: CheckKind::Listeners,
        shard: None,
        ok: connected >= shards,
        public: text.clone(),
        detail: text,
    });
    checks
}

/// One check per kind, over all shards: failing when any shard fails it. Its detail is the distinct
/// public texts of the shards that decided it (the failing ones when any fail), with counts.
fn summary(checks: &[Finding]) -> Vec<Check> {
    let kinds = [
        CheckKind::Primary,
        CheckKind::Schema,
        CheckKind::Redis,
        CheckKind::Listeners,
    ];
    kinds
        .into_iter()
        .filter_map(|kind| {
            let of_kind: Vec<&Finding> = checks.iter().filter(|c| c.kind == kind).collect();
            if of_kind.is_empty() {
                return None;
            }
            let ok = of_kind.iter().all(|c| c.ok);
            let deciding: Vec<&&Finding> = of_kind.iter().filter(|c| c.ok == ok).collect();
            let mut texts: Vec<(&str, usize)> = Vec::new();
            for c in &deciding {
                match texts.iter_mut().find(|(t, _)| *t == c.public) {
                    Some((_, n)) => *n += 1,
                    None => texts.push((&c.public, 1)),
                }
            }
            let total = of_kind.len();
            let detail = texts
                .iter()
                .map(|(t, n)| {
                    if of_kind[0].shard.is_some() && total > 1 {
                        format!("{t} ({n} of {total} shards)")
                    } else {
                        (*t).to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join("; ");
            Some(Check {
                name: kind.name().to_owned(),
                ok,
                required: kind.required(),
                detail,
            })
        })
        .collect()
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

    /// Liveness is a JSON document, labelled as one (probes and dashboards parse it).
    #[tokio::test]
    async fn liveness_is_a_json_document() {
        use http_body_util::BodyExt;
        let r = health().await;
        assert_eq!(r.status(), StatusCode::OK);
        let types: Vec<_> = r.headers().get_all(header::CONTENT_TYPE).iter().collect();
        assert_eq!(types, ["application/json"]);
        let body = r.into_body().collect().await.unwrap().to_bytes();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(doc, serde_json::json!({"status": "ok"}));
    }

    fn check(kind: CheckKind, shard: Option<&str>, ok: bool, public: &str) -> Finding {
        Finding {
            kind,
            shard: shard.map(str::to_owned),
            ok,
            public: public.into(),
            detail: format!("db-{}.internal:5432 {public}", shard.unwrap_or("-")),
        }
    }

    #[test]
    fn the_public_summary_fails_a_check_any_shard_fails_and_names_no_shard_or_target() {
        let checks = [
            check(CheckKind::Primary, Some("eu-1"), true, "reachable"),
            check(CheckKind::Primary, Some("us-1"), false, "unreachable"),
            check(CheckKind::Schema, Some("eu-1"), true, "schema at 7"),
            check(
                CheckKind::Listeners,
                None,
                false,
                "1 of 2 database primaries",
            ),
        ];
        let summary = summary(&checks);
        let names: Vec<&str> = summary.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "database primaries",
                "schema",
                "cache invalidation listeners (not required)"
            ]
        );
        assert!(!summary[0].ok && summary[0].required);
        assert_eq!(summary[0].detail, "unreachable (1 of 2 shards)");
        assert!(summary[1].ok);
        assert!(!summary[2].ok && !summary[2].required);
        let text = serde_json::to_string(&summary).unwrap();
        for leak in ["eu-1", "us-1", "internal", "5432"] {
            assert!(!text.contains(leak), "{leak} in {text}");
        }
        // For operators, per shard with the target.
        let verbose: Vec<Check> = checks.into_iter().map(Finding::into_check).collect();
        assert_eq!(verbose[1].name, "shard us-1 primary");
        assert!(verbose[1].detail.contains("db-us-1.internal:5432"));
    }

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
