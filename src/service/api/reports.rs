//! Reporting endpoints, served from the analytics pool so they never compete with request traffic.

use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, Problem};
use super::State;
use crate::service::db::merchants::industry_report;

const TOP: i64 = 100;

#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct IndustryCount {
    pub naics_code: String,
    pub naics_title: String,
    pub merchants: i64,
    pub average_confidence: f64,
}

/// Merchant counts per industry across all shards (top 100).
#[utoipa::path(
    get,
    path = "/v1/reports/industries",
    responses(
        (status = 200, description = "Counts per industry", body = Vec<IndustryCount>),
        (status = 503, description = "Analytics database unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "reports"
)]
pub async fn industries(
    axum::extract::State(state): State,
) -> Result<axum::Json<Vec<IndustryCount>>, ApiError> {
    Ok(axum::Json(top_industries(&state.db).await?))
}

/// The top 100 industries across every shard (also materialised by the `industry_report` job).
pub async fn top_industries(
    db: &crate::service::db::Database,
) -> Result<Vec<IndustryCount>, crate::db_error::DbError> {
    let mut merged: std::collections::BTreeMap<String, (i64, f64)> = Default::default();
    // With several shards each returns every industry (at most the ~1,000 NAICS codes), so the merged
    // top 100 is exact: an industry 101st on every shard can be first overall.
    let per_shard = (db.shards().len() == 1).then_some(TOP);
    for shard in db.shards() {
        for (code, n, avg) in industry_report(&shard.analytics, per_shard).await? {
            let e = merged.entry(code).or_default();
            // Weighted mean across shards.
            e.1 = (e.1 * e.0 as f64 + avg * n as f64) / (e.0 + n) as f64;
            e.0 += n;
        }
    }
    let mut out: Vec<IndustryCount> = merged
        .into_iter()
        .map(|(code, (n, avg))| IndustryCount {
            naics_title: crate::classify::naics_title(&code)
                .unwrap_or_default()
                .to_owned(),
            naics_code: code,
            merchants: n,
            average_confidence: avg,
        })
        .collect();
    out.sort_by(|a, b| {
        b.merchants
            .cmp(&a.merchants)
            .then(a.naics_code.cmp(&b.naics_code))
    });
    out.truncate(TOP as usize);
    Ok(out)
}
