//! Risk assessment queries.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db_error::DbError;
use crate::service::model::{RiskAssessment, RiskFactor, RiskLevel};

pub async fn insert(tx: &mut PgConnection, a: &RiskAssessment) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO business_risk_assessments (id, business_id, risk_level, risk_score, factors, assessment_date)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(a.id)
    .bind(a.business_id)
    .bind(a.risk_level)
    .bind(a.risk_score)
    .bind(Json(&a.factors))
    .bind(a.assessment_date)
    .execute(tx)
    .await?;
    Ok(())
}

type Row = (
    Uuid,
    Uuid,
    RiskLevel,
    f64,
    Json<Vec<RiskFactor>>,
    DateTime<Utc>,
);

/// Newest first.
pub async fn list(
    pool: PgPool,
    business_id: Uuid,
    limit: i64,
) -> Result<Vec<RiskAssessment>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, business_id, risk_level, risk_score, factors, assessment_date
           FROM business_risk_assessments WHERE business_id = $1
          ORDER BY assessment_date DESC, id DESC LIMIT $2",
    )
    .bind(business_id)
    .bind(limit)
    .fetch_all(&pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, business_id, risk_level, risk_score, factors, assessment_date)| RiskAssessment {
                id,
                business_id,
                risk_level,
                risk_score,
                factors: factors.0,
                assessment_date,
            },
        )
        .collect())
}
