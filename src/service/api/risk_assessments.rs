//! Risk assessments of a merchant.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::{ApiError, ApiPath, ApiQuery, Problem};
use super::{cache_lookup, json_bytes, CachedJson, State};
use crate::service::cache::records::Loaded;
use crate::service::cache::{keys, CacheStatus, Event, MultiLevelCache};
use crate::service::db::{merchants, risk_assessments as q};
use crate::service::model::{RiskAssessment, RiskAssessmentList};
use crate::telemetry::spans;

const DEFAULT_LIMIT: i64 = 20;

/// Assess a merchant's risk now, from its current data and classification.
#[utoipa::path(
    post,
    path = "/v1/merchants/{id}/risk-assessments",
    params(("id" = Uuid, Path, description = "Merchant id")),
    responses(
        (status = 201, description = "The new assessment", body = RiskAssessment),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "risk"
)]
pub async fn create(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
) -> Result<Response, ApiError> {
    let shard = state.db.shard_for(&id.to_string());
    let mut conn = shard.primary_conn().await?;
    let found = merchants::get(conn.conn(), id).await;
    let merchant = conn.finish(found)?.ok_or(ApiError::NotFound("merchant"))?;
    let primary = shard.writable()?;
    let assessment = crate::service::risk_scoring::assessment(&merchant);
    let mut tx = spans::db("BEGIN", "", primary.begin()).await?;
    let version = q::insert(&mut tx, &assessment).await?;
    let inv = keys::invalidation_for(&Event::RiskAssessed { id, version });
    MultiLevelCache::publish(&mut *tx, &inv).await?;
    spans::db("COMMIT", "", tx.commit()).await?;
    // The writer does not hold the new default page, so it stores the version alone: the next read
    // loads the page, and no read that began before the commit can store the older one.
    state
        .cache
        .after_commit(&shard.relaxed, &inv, |_| None)
        .await;
    Ok((StatusCode::CREATED, axum::Json(assessment)).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// At most this many, newest first (default 20).
    #[param(minimum = 1, maximum = 200)]
    limit: Option<i64>,
}

/// A merchant's assessments, newest first.
#[utoipa::path(
    get,
    path = "/v1/merchants/{id}/risk-assessments",
    params(("id" = Uuid, Path, description = "Merchant id"), ListParams),
    responses(
        (status = 200, description = "Assessments", body = RiskAssessmentList),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "risk"
)]
pub async fn list(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(p): ApiQuery<ListParams>,
    headers: HeaderMap,
) -> Result<CachedJson, ApiError> {
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=200).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 200"));
    }
    let key = keys::risk_assessments(id);
    let load = || async {
        // The primary, never a replica: see `cache::records`.
        let shard = state.db.shard_for(&id.to_string());
        let (version, items) = q::list(shard.writable()?.clone(), id, limit)
            .await?
            .ok_or(ApiError::NotFound("merchant"))?;
        Ok::<_, ApiError>(Loaded {
            version,
            body: json_bytes(&RiskAssessmentList { items })?,
        })
    };
    // Only the default page is cached: its version names it exactly.
    let (body, cache) = if p.limit.is_some() {
        (load().await?.body, CacheStatus::Miss)
    } else {
        let r = state
            .cache
            .get_record(&key, cache_lookup(&headers), load)
            .await?;
        (r.body, r.status)
    };
    Ok(CachedJson {
        status: StatusCode::OK,
        body,
        cache,
    })
}
