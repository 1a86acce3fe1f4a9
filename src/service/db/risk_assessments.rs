//! Risk assessment queries.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db_error::DbError;
use crate::service::model::{RiskAssessment, RiskFactor, RiskLevel};
use crate::telemetry::spans;

/// Inserts an assessment and returns the merchant's new `risk_version` (bumped by a trigger, which also
/// locks the merchant's row, so concurrent assessments of one merchant get distinct versions).
pub async fn insert(tx: &mut PgConnection, a: &RiskAssessment) -> Result<i64, DbError> {
    spans::db("INSERT", "business_risk_assessments", sqlx::query(
        "INSERT INTO business_risk_assessments (id, business_id, risk_level, risk_score, factors, assessment_date)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.id)
    .bind(a.business_id)
    .bind(a.risk_level)
    .bind(a.risk_score)
    .bind(Json(&a.factors))
    .bind(a.assessment_date)
    .execute(&mut *tx)
    ).await?;
    let version: i32 = spans::db(
        "SELECT",
        "merchants",
        sqlx::query_scalar("SELECT risk_version FROM merchants WHERE id = $1")
            .bind(a.business_id)
            .fetch_one(&mut *tx),
    )
    .await?;
    Ok(version.into())
}

/// One row per assessment, each with the merchant's `risk_version`; one row of NULLs for a merchant
/// without assessments.
type Row = (
    i32,
    Option<Uuid>,
    Option<RiskLevel>,
    Option<f64>,
    Option<Json<Vec<RiskFactor>>>,
    Option<DateTime<Utc>>,
);

/// The newest `limit` assessments and the list's version, read in one statement (one snapshot);
/// `None` when there is no such merchant.
pub async fn list(
    pool: PgPool,
    business_id: Uuid,
    limit: i64,
) -> Result<Option<(i64, Vec<RiskAssessment>)>, sqlx::Error> {
    let rows: Vec<Row> = spans::db(
        "SELECT",
        "business_risk_assessments",
        sqlx::query_as(
            "SELECT m.risk_version, a.id, a.risk_level, a.risk_score, a.factors, a.assessment_date
           FROM merchants m
           LEFT JOIN LATERAL (
                SELECT id, risk_level, risk_score, factors, assessment_date
                  FROM business_risk_assessments WHERE business_id = m.id
                 ORDER BY assessment_date DESC, id DESC LIMIT $2) a ON true
          WHERE m.id = $1",
        )
        .bind(business_id)
        .bind(limit)
        .fetch_all(&pool),
    )
    .await?;
    let Some(version) = rows.first().map(|r| i64::from(r.0)) else {
        return Ok(None);
    };
    let items = rows
        .into_iter()
        .filter_map(|(_, id, level, score, factors, date)| {
            Some(RiskAssessment {
                id: id?,
                business_id,
                risk_level: level?,
                risk_score: score?,
                factors: factors?.0,
                assessment_date: date?,
            })
        })
        .collect();
    Ok(Some((version, items)))
}
