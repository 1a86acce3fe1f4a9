//! What each kind of job does. Every effect in PostgreSQL is written in the transaction that marks the
//! job succeeded ([`queue::begin_fenced`] then [`queue::complete`]), so an attempt that dies before
//! its commit leaves nothing, one that lost its lease commits nothing, and a retried job never applies
//! its effect twice. A job whose only write is its result (a report, a no-op) or whose writes are
//! idempotent by themselves finishes in one fenced statement ([`queue::finish`]). Cache notices follow
//! the commit, as they do for the API's own writes.

use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;

use super::failure::FailureKind;
use super::policy::Policy;
use super::queue::{self, Claimed, QueueError};
use super::{JobKind, MerchantJob};
use crate::db_error::DbError;
use crate::service::cache::{keys, Event, MultiLevelCache};
use crate::service::db::{merchants, risk_assessments, ShardPools};
use crate::service::state::AppState;

/// Why an attempt failed; the job is retried or, attempts used up, buried. The variants are the
/// failure kinds a caller is told apart ([`FailureKind`]).
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The job cannot be done as asked; the message is about the job only (the caller sees it).
    #[error("{0}")]
    Rejected(String),
    /// A service the job needs did not answer.
    #[error("{0}")]
    Unavailable(String),
    /// Anything else: for operators only.
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Queue(#[from] QueueError),
}

impl HandlerError {
    pub fn kind(&self) -> FailureKind {
        match self {
            Self::Rejected(_) => FailureKind::Rejected,
            Self::Unavailable(_) | Self::Queue(QueueError::Db(DbError::Unavailable(_))) => {
                FailureKind::Unavailable
            }
            Self::Failed(_) | Self::Queue(_) => FailureKind::Internal,
        }
    }
}

impl From<DbError> for HandlerError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(_) => HandlerError::Unavailable(e.to_string()),
            other => HandlerError::Failed(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

/// Where a job runs: the service's state, and the shard whose database holds the job.
pub struct Ctx {
    pub state: Arc<AppState>,
    pub shard: Arc<ShardPools>,
    pub policy: Policy,
}

impl Ctx {
    fn primary(&self) -> Result<&PgPool, HandlerError> {
        Ok(self.shard.writable()?)
    }
}

/// What runs a claimed job: [`standard`] in `kybctl worker`; tests pass their own (a job that
/// panics, one that takes its time).
pub type Handler = Arc<
    dyn Fn(Arc<Ctx>, Claimed) -> futures::future::BoxFuture<'static, Result<(), HandlerError>>
        + Send
        + Sync,
>;

/// Every kind's handler below.
pub fn standard() -> Handler {
    Arc::new(|ctx, job| Box::pin(async move { run(&ctx, &job).await }))
}

/// Runs one claimed job to its commit.
pub async fn run(ctx: &Ctx, job: &Claimed) -> Result<(), HandlerError> {
    match JobKind::parse(&job.kind) {
        Some(JobKind::Classify) => classify(ctx, job).await,
        Some(JobKind::RiskAssessment) => assess_risk(ctx, job).await,
        Some(JobKind::IndustryReport) => industry_report(ctx, job).await,
        Some(JobKind::ReclassifyAll) => reclassify_all(ctx, job).await,
        Some(JobKind::Noop) => Ok(queue::finish(ctx.primary()?, job, None).await?),
        None => Err(HandlerError::Rejected(format!(
            "unknown job kind {:?} (enqueued by a newer release?)",
            job.kind
        ))),
    }
}

/// A job is enqueued with the write that needs it, so its merchant exists unless the job was made by
/// hand (`kybctl jobs enqueue`) with a wrong id: a failure, kept in the dead letters to be replayed.
fn no_such_merchant(id: uuid::Uuid) -> HandlerError {
    HandlerError::Rejected(format!("no merchant {id} on this shard"))
}

fn merchant_of(job: &Claimed) -> Result<uuid::Uuid, HandlerError> {
    serde_json::from_value::<MerchantJob>(job.payload.clone())
        .map(|p| p.merchant_id)
        .map_err(|e| HandlerError::Rejected(format!("payload: {e}")))
}

/// Classifies the merchant from its current details and makes that its active classification.
async fn classify(ctx: &Ctx, job: &Claimed) -> Result<(), HandlerError> {
    let id = merchant_of(job)?;
    let primary = ctx.primary()?;
    let Some(current) = merchants::get(primary, id).await? else {
        return Err(no_such_merchant(id));
    };
    // Before the transaction: the registry may be slow, and no row lock is held meanwhile.
    let (body, _) = crate::service::classify_cached::classify_cached(&ctx.state, &current.business)
        .await
        .map_err(|e| HandlerError::Failed(e.to_string()))?;
    let classification: crate::classify::Classification = serde_json::from_slice(&body)
        .map_err(|e| HandlerError::Failed(format!("classification unreadable: {e}")))?;
    let mut tx = queue::begin_fenced(primary, job, &ctx.policy).await?;
    let locked = merchants::get_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| HandlerError::Failed("merchant vanished".into()))?;
    merchants::update(
        &mut tx,
        id,
        &locked.business,
        locked.status,
        Some(&classification),
    )
    .await?;
    let merchant = merchants::get_for_update(&mut tx, id)
        .await?
        .ok_or_else(|| HandlerError::Failed("merchant vanished".into()))?;
    let inv = keys::invalidation_for(&Event::MerchantUpdated {
        id,
        version: merchant.version.into(),
        previous_classification_key: crate::classify::cache_key(&crate::classify::normalise(
            &locked.business,
        )),
    });
    MultiLevelCache::publish(&mut *tx, &inv).await?;
    let result = json!({
        "merchant_version": merchant.version,
        "naics_code": classification.naics_code,
        "mcc": classification.mcc,
    });
    queue::complete(tx, job, Some(result)).await?;
    let body = bytes::Bytes::from(
        serde_json::to_vec(&merchant).map_err(|e| HandlerError::Failed(e.to_string()))?,
    );
    ctx.state
        .cache
        .after_commit(&ctx.shard.relaxed, &inv, |key| {
            (key == keys::merchant(id)).then_some(&body)
        })
        .await;
    ctx.shard.note_write(keys::MERCHANT_LISTS).await;
    Ok(())
}

/// Assesses the merchant's risk and stores the assessment.
async fn assess_risk(ctx: &Ctx, job: &Claimed) -> Result<(), HandlerError> {
    let id = merchant_of(job)?;
    let primary = ctx.primary()?;
    let Some(merchant) = merchants::get(primary, id).await? else {
        return Err(no_such_merchant(id));
    };
    let assessment = crate::service::risk_scoring::assessment(&merchant);
    let mut tx = queue::begin_fenced(primary, job, &ctx.policy).await?;
    let version = risk_assessments::insert(&mut tx, &assessment).await?;
    let inv = keys::invalidation_for(&Event::RiskAssessed { id, version });
    MultiLevelCache::publish(&mut *tx, &inv).await?;
    let result = json!({
        "assessment_id": assessment.id,
        "risk_level": assessment.risk_level,
        "risk_score": assessment.risk_score,
    });
    queue::complete(tx, job, Some(result)).await?;
    ctx.state
        .cache
        .after_commit(&ctx.shard.relaxed, &inv, |_| None)
        .await;
    Ok(())
}

/// The industry report across every shard, kept as the job's result.
async fn industry_report(ctx: &Ctx, job: &Claimed) -> Result<(), HandlerError> {
    let rows = crate::service::api::reports::top_industries(&ctx.state.db).await?;
    let result = json!({ "generated_at": chrono::Utc::now(), "industries": rows });
    // The report is the job's result: its completion is its only write.
    Ok(queue::finish(ctx.primary()?, job, Some(result)).await?)
}

/// A classification job for every merchant of every shard, in that shard's queue. Keyed by this
/// job and the merchant, so a retry after a partial run enqueues only what is missing.
async fn reclassify_all(ctx: &Ctx, job: &Claimed) -> Result<(), HandlerError> {
    let mut enqueued = 0u64;
    for shard in ctx.state.db.shards() {
        let done = sqlx::query(
            "INSERT INTO jobs (id, queue, kind, payload, priority, run_at, ready_at, unique_key, max_attempts)
             SELECT gen_random_uuid(), $1, 'classify', jsonb_build_object('merchant_id', m.id), $2,
                    now(), now() - $2 * $3 * interval '1 millisecond', $4 || ':' || m.id, $5
               FROM merchants m
             ON CONFLICT (unique_key) DO NOTHING",
        )
        .bind(queue::DEFAULT_QUEUE)
        .bind(job.priority)
        .bind(ctx.policy.aging_step.as_millis() as i64)
        .bind(format!("reclassify:{}", job.id))
        .bind(ctx.policy.max_attempts)
        .execute(shard.writable()?)
        .await?;
        enqueued += done.rows_affected();
    }
    // The enqueues are idempotent by their keys, so they need no transaction with the completion.
    Ok(queue::finish(ctx.primary()?, job, Some(json!({ "enqueued": enqueued }))).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_is_told_by_where_it_came_from() {
        let down = || DbError::Unavailable("db-0:5432 refused".into());
        let kinds = [
            (HandlerError::from(down()), FailureKind::Unavailable),
            (QueueError::Db(down()).into(), FailureKind::Unavailable),
            (
                HandlerError::from(DbError::Conflict("x".into())),
                FailureKind::Internal,
            ),
            (
                HandlerError::from(sqlx::Error::RowNotFound),
                FailureKind::Internal,
            ),
            (
                QueueError::LeaseLost(uuid::Uuid::nil()).into(),
                FailureKind::Internal,
            ),
            (no_such_merchant(uuid::Uuid::nil()), FailureKind::Rejected),
        ];
        for (e, kind) in kinds {
            assert_eq!(e.kind(), kind, "{e}");
        }
    }
}
