//! The job queue's SQL: enqueue (in the caller's transaction), claim (`FOR UPDATE SKIP LOCKED`),
//! heartbeats, fenced completion and failure, rescue of expired leases, dead letters and replay.
//!
//! Written here rather than on apalis-postgres 1.0 (evaluated; same sqlx): its acknowledgement is
//! guarded by the worker's name only and written later, batched, in a transaction of its own, so a
//! job's effect and its completion cannot commit together and a stale worker's completion is not
//! refused; liveness is per worker (300 s by default), not a short per-job lease; claims are strict
//! priority, in fixed batches held in memory whatever the free slots; retries run in-process with
//! no dead-letter table; and apalis-cron enqueues each tick once per replica.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::failure::{self, Failure};
use super::policy::{AfterFailure, Policy};
use super::JobKind;
use crate::db_error::DbError;
use crate::db_row;
use crate::telemetry::spans;

/// The plan's queue.
pub const DEFAULT_QUEUE: &str = "kyb-processing";

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The attempt's lease was lost (it expired and the job was rescued, or cancelled): its effect
    /// must not commit.
    #[error("job {0}: this attempt's lease was lost; its work is discarded")]
    LeaseLost(Uuid),
    #[error("job {0} not found")]
    NotFound(Uuid),
    #[error("job {id} is {state}: {what}")]
    WrongState {
        id: Uuid,
        state: String,
        what: &'static str,
    },
}

impl From<sqlx::Error> for QueueError {
    fn from(e: sqlx::Error) -> Self {
        QueueError::Db(e.into())
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Given by the caller when it must name the job before it exists (a keyed creation's job, which
    /// a retry reports without looking it up); otherwise a new UUIDv7.
    pub id: Option<Uuid>,
    pub queue: String,
    pub kind: JobKind,
    pub payload: Value,
    pub priority: i16,
    pub run_at: Option<DateTime<Utc>>,
    /// At most one job per key (a scheduler tick, an idempotent request): a second enqueue with the
    /// same key enqueues nothing.
    pub unique_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: JobKind, payload: Value) -> Self {
        Self {
            id: None,
            queue: DEFAULT_QUEUE.into(),
            kind,
            payload,
            priority: 0,
            run_at: None,
            unique_key: None,
        }
    }

    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }
}

/// Enqueues `jobs` in one statement on `conn`: inside the caller's transaction, they become visible
/// with its commit and vanish with its rollback. Returns the ids of the jobs inserted (a job whose
/// `unique_key` exists already is skipped).
pub async fn enqueue(
    conn: &mut PgConnection,
    policy: &Policy,
    jobs: &[NewJob],
) -> Result<Vec<Uuid>, QueueError> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let mut ids = Vec::with_capacity(jobs.len());
    let (mut queues, mut kinds, mut payloads, mut priorities) = (vec![], vec![], vec![], vec![]);
    let (mut run_ats, mut ready_ats, mut keys) = (vec![], vec![], vec![]);
    for j in jobs {
        let run_at = j.run_at.unwrap_or(now);
        ids.push(j.id.unwrap_or_else(Uuid::now_v7));
        queues.push(j.queue.clone());
        kinds.push(j.kind.as_str());
        payloads.push(j.payload.clone());
        priorities.push(j.priority);
        run_ats.push(run_at);
        ready_ats.push(policy.ready_at(run_at, j.priority));
        keys.push(j.unique_key.clone());
    }
    let inserted: Vec<Uuid> = spans::db("INSERT", "jobs", sqlx::query_scalar(
        "INSERT INTO jobs (id, queue, kind, payload, priority, run_at, ready_at, unique_key, max_attempts)
         SELECT *, $9 FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::int2[],
                                  $6::timestamptz[], $7::timestamptz[], $8::text[])
         ON CONFLICT (unique_key) DO NOTHING
         RETURNING id",
    )
    .bind(&ids)
    .bind(&queues)
    .bind(&kinds)
    .bind(&payloads)
    .bind(&priorities)
    .bind(&run_ats)
    .bind(&ready_ats)
    .bind(&keys)
    .bind(policy.max_attempts)
    .fetch_all(conn))
    .await?;
    // In the order asked, without the skipped ones.
    let inserted: std::collections::HashSet<Uuid> = inserted.into_iter().collect();
    Ok(ids.into_iter().filter(|id| inserted.contains(id)).collect())
}

/// A job claimed by a worker: its attempt's fencing token proves the claim.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub kind: String,
    pub payload: Value,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    pub lease_token: i64,
    pub enqueued_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
}

db_row::from_row!(Claimed {
    id,
    kind,
    payload,
    priority,
    attempts,
    max_attempts,
    lease_token,
    enqueued_at,
    run_at
});

/// Claims up to `n` ready jobs of `queue` of the given kinds, oldest in claim order first, for
/// `worker` with a lease of `lease`. Each claim starts an attempt with a new fencing token.
pub async fn claim(
    pool: &PgPool,
    queue: &str,
    kinds: &[&str],
    worker: &str,
    n: usize,
    lease: std::time::Duration,
) -> Result<Vec<Claimed>, QueueError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let claimed = sqlx::query_as(
        "WITH next AS (
             SELECT id FROM jobs
              WHERE state IN ('queued', 'failed') AND queue = $1 AND kind = ANY($2) AND run_at <= now()
              ORDER BY ready_at
              LIMIT $3
              FOR UPDATE SKIP LOCKED
         ), claimed AS (
             UPDATE jobs j SET state = 'running', attempts = j.attempts + 1,
                    lease_token = nextval('job_lease_tokens'), leased_by = $4,
                    lease_expires_at = now() + $5 * interval '1 millisecond',
                    first_started_at = coalesce(j.first_started_at, now())
               FROM next WHERE j.id = next.id
             RETURNING j.id, j.kind, j.payload, j.priority, j.attempts, j.max_attempts, j.lease_token,
                       j.enqueued_at, j.run_at
         ), started AS (
             INSERT INTO job_attempts (job_id, attempt, lease_token, worker)
             SELECT id, attempts, lease_token, $4 FROM claimed
         )
         SELECT * FROM claimed ORDER BY run_at",
    )
    .bind(queue)
    .bind(kinds)
    .bind(n as i64)
    .bind(worker)
    .bind(lease.as_millis() as i64)
    .fetch_all(pool)
    .await?;
    Ok(claimed)
}

/// Extends the leases of the attempts `(id, token)` still current; returns the ids whose lease is
/// lost (rescued, cancelled), whose work should stop.
///
/// A job whose row is locked by its own attempt's open transaction (its effect being written) is
/// skipped rather than waited for: one slow transaction must not hold up every other job's renewal.
/// It stays the attempt's: nobody can rescue a locked row, and the commit settles it.
pub async fn heartbeat(
    pool: &PgPool,
    attempts: &[(Uuid, i64)],
    lease: std::time::Duration,
) -> Result<Vec<Uuid>, QueueError> {
    if attempts.is_empty() {
        return Ok(Vec::new());
    }
    let (ids, tokens): (Vec<Uuid>, Vec<i64>) = attempts.iter().copied().unzip();
    let held: Vec<Uuid> = sqlx::query_scalar(
        "WITH mine AS (
             SELECT j.id FROM jobs j JOIN UNNEST($1::uuid[], $2::int8[]) AS a(id, token)
                 ON j.id = a.id AND j.lease_token = a.token
              WHERE j.state = 'running'
         ), renewed AS (
             UPDATE jobs SET lease_expires_at = now() + $3 * interval '1 millisecond'
              WHERE id IN (SELECT id FROM jobs WHERE id IN (SELECT id FROM mine) FOR UPDATE SKIP LOCKED)
         )
         SELECT id FROM mine",
    )
    .bind(&ids)
    .bind(&tokens)
    .bind(lease.as_millis() as i64)
    .fetch_all(pool)
    .await?;
    let held: std::collections::HashSet<Uuid> = held.into_iter().collect();
    Ok(ids.into_iter().filter(|id| !held.contains(id)).collect())
}

/// Begins the transaction that carries an attempt's effect: locks the job's row if, and only if,
/// the attempt still holds it, so nobody can rescue the job while the effect is being written. Idle
/// in this transaction for more than the lease and PostgreSQL ends it (a stalled worker holds no
/// lock forever).
pub async fn begin_fenced(
    pool: &PgPool,
    job: &Claimed,
    policy: &Policy,
) -> Result<Transaction<'static, Postgres>, QueueError> {
    let mut tx = pool.begin().await?;
    // The session timeout and the lock in one round trip: set_config runs once, as a function in
    // FROM, whether or not the row is still the attempt's.
    let held: Option<Uuid> = sqlx::query_scalar(
        "SELECT j.id FROM set_config('idle_in_transaction_session_timeout', $3, true) AS t,
                LATERAL (SELECT id FROM jobs WHERE id = $1 AND lease_token = $2 AND state = 'running'
                         FOR UPDATE) AS j",
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(policy.lease.as_millis().to_string())
    .fetch_optional(&mut *tx)
    .await?;
    match held {
        Some(_) => Ok(tx),
        None => Err(QueueError::LeaseLost(job.id)),
    }
}

/// Marks the attempt succeeded in `tx` (from [`begin_fenced`]) and commits it with the effect.
pub async fn complete(
    mut tx: Transaction<'static, Postgres>,
    job: &Claimed,
    result: Option<Value>,
) -> Result<(), QueueError> {
    if !mark_succeeded(&mut tx, job, result).await? {
        // Dropping the transaction rolls the effect back.
        return Err(QueueError::LeaseLost(job.id));
    }
    tx.commit().await?;
    Ok(())
}

/// Marks the attempt succeeded in one statement of its own, for a job whose only effect is its
/// `result` (or nothing, or writes that are idempotent by themselves): the statement's own
/// `lease_token` check is the fence, so no transaction around it is needed. One round trip where
/// [`begin_fenced`] and [`complete`] take four.
pub async fn finish(pool: &PgPool, job: &Claimed, result: Option<Value>) -> Result<(), QueueError> {
    let mut conn = pool.acquire().await?;
    if !mark_succeeded(&mut conn, job, result).await? {
        return Err(QueueError::LeaseLost(job.id));
    }
    Ok(())
}

/// The job and its attempt marked succeeded, if the attempt still holds the job.
async fn mark_succeeded(
    conn: &mut PgConnection,
    job: &Claimed,
    result: Option<Value>,
) -> Result<bool, QueueError> {
    let done: Option<i32> = sqlx::query_scalar(
        "WITH done AS (
             UPDATE jobs SET state = 'succeeded', finished_at = now(), result = $3,
                    lease_token = NULL, lease_expires_at = NULL
              WHERE id = $1 AND lease_token = $2 AND state = 'running'
             RETURNING id, attempts
         )
         UPDATE job_attempts a SET outcome = 'succeeded', finished_at = now()
           FROM done WHERE a.job_id = done.id AND a.attempt = done.attempts
         RETURNING a.attempt",
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(result)
    .fetch_optional(conn)
    .await?;
    Ok(done.is_some())
}

/// Records a failed attempt: the job is retried after the policy's delay, or, its attempts used
/// up, moves to the dead letters with every attempt's error. Returns what happened to it.
pub async fn fail(
    pool: &PgPool,
    policy: &Policy,
    job: &Claimed,
    failure: &Failure,
) -> Result<AfterFailure, QueueError> {
    let error = failure.detail.as_str();
    let next = Policy {
        max_attempts: job.max_attempts,
        ..policy.clone()
    }
    .after_failure(job.attempts, Utc::now());
    let mut tx = pool.begin().await?;
    let (state, run_at, finished) = match &next {
        AfterFailure::Retry { run_at } => ("failed", Some(*run_at), false),
        AfterFailure::Dead => ("dead", None, true),
    };
    let updated: Option<Uuid> = sqlx::query_scalar(
        "UPDATE jobs SET state = $3, run_at = coalesce($4, run_at), ready_at = coalesce($5, ready_at),
                last_error = $6, last_error_kind = $8, lease_token = NULL, lease_expires_at = NULL,
                leased_by = NULL, finished_at = CASE WHEN $7 THEN now() END
          WHERE id = $1 AND lease_token = $2 AND state = 'running'
         RETURNING id",
    )
    .bind(job.id)
    .bind(job.lease_token)
    .bind(state)
    .bind(run_at)
    .bind(run_at.map(|r| policy.ready_at(r, job.priority)))
    .bind(error)
    .bind(finished)
    .bind(failure.kind.as_str())
    .fetch_optional(&mut *tx)
    .await?;
    if updated.is_none() {
        return Err(QueueError::LeaseLost(job.id));
    }
    sqlx::query(
        "UPDATE job_attempts SET outcome = 'failed', error = $3, finished_at = now()
          WHERE job_id = $1 AND attempt = $2",
    )
    .bind(job.id)
    .bind(job.attempts)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    if finished {
        bury(&mut tx, &[job.id]).await?;
    }
    tx.commit().await?;
    Ok(next)
}

/// Dead letters for `ids` (jobs just moved to `dead`), with every attempt's outcome and error.
async fn bury(conn: &mut PgConnection, ids: &[Uuid]) -> Result<(), QueueError> {
    sqlx::query(
        "INSERT INTO dead_letters (job_id, queue, kind, payload, errors)
         SELECT j.id, j.queue, j.kind, j.payload,
                coalesce((SELECT jsonb_agg(jsonb_build_object('attempt', a.attempt, 'worker', a.worker,
                                                              'outcome', a.outcome, 'error', a.error,
                                                              'started_at', a.started_at)
                                           ORDER BY a.attempt)
                            FROM job_attempts a WHERE a.job_id = j.id), '[]')
           FROM jobs j WHERE j.id = ANY($1)
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Gives running attempts back to the queue untried (a worker shutting down): the attempt is
/// forgotten, so it costs the job none of its retries, and nothing is left to rescue.
pub async fn hand_back(pool: &PgPool, jobs: &[(Uuid, i64)]) -> Result<u64, QueueError> {
    if jobs.is_empty() {
        return Ok(0);
    }
    let (ids, tokens): (Vec<Uuid>, Vec<i64>) = jobs.iter().copied().unzip();
    let mut tx = pool.begin().await?;
    let back: Vec<(Uuid, i32)> = sqlx::query_as(
        "UPDATE jobs j SET state = 'queued', attempts = j.attempts - 1, lease_token = NULL,
                lease_expires_at = NULL, leased_by = NULL
           FROM UNNEST($1::uuid[], $2::int8[]) AS a(id, token)
          WHERE j.id = a.id AND j.lease_token = a.token AND j.state = 'running'
          RETURNING j.id, j.attempts + 1",
    )
    .bind(&ids)
    .bind(&tokens)
    .fetch_all(&mut *tx)
    .await?;
    let (back_ids, attempts): (Vec<Uuid>, Vec<i32>) = back.into_iter().unzip();
    sqlx::query(
        "DELETE FROM job_attempts a USING UNNEST($1::uuid[], $2::int4[]) AS b(id, attempt)
          WHERE a.job_id = b.id AND a.attempt = b.attempt",
    )
    .bind(&back_ids)
    .bind(&attempts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(back_ids.len() as u64)
}

/// Rescues the jobs whose lease expired (their worker died or stalled): each such attempt counts as
/// failed ("expired"); the job is ready again at once, in its old place in claim order (its worker's
/// death is not its fault: it does not queue behind everything enqueued since), or dead if that was
/// its last attempt. Returns how many were rescued.
pub async fn rescue_expired(pool: &PgPool) -> Result<u64, QueueError> {
    let mut tx = pool.begin().await?;
    let moved: Vec<(Uuid, String)> = sqlx::query_as(
        "WITH expired AS (
             SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at < now()
              ORDER BY lease_expires_at LIMIT 1000
              FOR UPDATE SKIP LOCKED
         ), moved AS (
             UPDATE jobs j
                SET state = CASE WHEN j.attempts >= j.max_attempts THEN 'dead' ELSE 'queued' END,
                    last_error = 'lease expired: worker ' || coalesce(j.leased_by, '?') || ' stopped renewing it',
                    last_error_kind = 'expired',
                    lease_token = NULL, lease_expires_at = NULL, leased_by = NULL,
                    finished_at = CASE WHEN j.attempts >= j.max_attempts THEN now() END
               FROM expired WHERE j.id = expired.id
             RETURNING j.id, j.state, j.attempts, j.last_error
         ), marked AS (
             UPDATE job_attempts a SET outcome = 'expired', error = moved.last_error, finished_at = now()
               FROM moved WHERE a.job_id = moved.id AND a.attempt = moved.attempts
         )
         SELECT id, state FROM moved",
    )
    .fetch_all(&mut *tx)
    .await?;
    let dead: Vec<Uuid> = moved
        .iter()
        .filter(|(_, s)| s == "dead")
        .map(|(id, _)| *id)
        .collect();
    if !dead.is_empty() {
        bury(&mut tx, &dead).await?;
    }
    tx.commit().await?;
    Ok(moved.len() as u64)
}

/// What `GET /v1/jobs/{id}` and `kybctl jobs show` say of a job.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobView {
    pub id: Uuid,
    pub queue: String,
    pub kind: String,
    /// `queued`, `running`, `succeeded`, `failed` (an attempt failed; a retry is scheduled),
    /// `dead` (attempts used up; see the dead letters) or `cancelled`.
    pub status: String,
    pub priority: i16,
    pub attempts: i32,
    pub max_attempts: i32,
    #[schema(value_type = Object)]
    pub payload: Value,
    pub enqueued_at: DateTime<Utc>,
    pub run_at: DateTime<Utc>,
    pub first_started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error. Through the API, the caller's form of it (see
    /// `last_error_kind`): a fixed sentence unless the job was `rejected` or timed out, never the
    /// hosts, statements or panic messages `kybctl jobs show` gives operators.
    pub last_error: Option<String>,
    /// What kind of failure that was: `rejected` (the job cannot be done as asked), `unavailable`
    /// (a service it needs did not answer), `internal`, `timeout` or `expired` (its worker stopped).
    pub last_error_kind: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
}

db_row::from_row!(JobView {
    id,
    queue,
    kind,
    status,
    priority,
    attempts,
    max_attempts,
    payload,
    enqueued_at,
    run_at,
    first_started_at,
    finished_at,
    last_error,
    last_error_kind,
    result
});

impl JobView {
    /// What the API tells the job's caller: the error in the caller's form ([`failure::for_caller`]).
    pub fn for_caller(mut self) -> Self {
        if let Some(detail) = self.last_error.take() {
            let (kind, message) = failure::for_caller(self.last_error_kind.as_deref(), &detail);
            self.last_error = Some(message);
            self.last_error_kind = Some(kind.as_str().to_owned());
        }
        self
    }
}

/// The columns of a [`JobView`], then the rest of the statement.
macro_rules! view {
    ($rest:literal) => {
        concat!(
            "SELECT id, queue, kind, state AS status, priority, attempts, max_attempts, payload,
                    enqueued_at, run_at, first_started_at, finished_at, last_error, last_error_kind,
                    result
               FROM jobs ",
            $rest
        )
    };
}

pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<JobView>, QueueError> {
    Ok(spans::db(
        "SELECT",
        "jobs",
        sqlx::query_as(view!("WHERE id = $1"))
            .bind(id)
            .fetch_optional(pool),
    )
    .await?)
}

/// The newest `limit` jobs, optionally of one status and kind.
pub async fn list(
    pool: &PgPool,
    status: Option<&str>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<JobView>, QueueError> {
    Ok(sqlx::query_as(view!(
        "WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR kind = $2)
          ORDER BY enqueued_at DESC, id DESC LIMIT $3"
    ))
    .bind(status)
    .bind(kind)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Counts by queue, kind, priority and status, with the age of the oldest ready job of each.
#[derive(Debug, Clone, Serialize)]
pub struct StatsRow {
    pub queue: String,
    pub kind: String,
    pub priority: i16,
    pub status: String,
    pub jobs: i64,
    /// Seconds the oldest job of this row has been ready (queued or failed with its delay over).
    pub oldest_ready_seconds: Option<f64>,
}

db_row::from_row!(StatsRow {
    queue,
    kind,
    priority,
    status,
    jobs,
    oldest_ready_seconds
});

pub async fn stats(pool: &PgPool) -> Result<Vec<StatsRow>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT queue, kind, priority, state AS status, count(*) AS jobs,
                extract(epoch FROM now() - min(run_at) FILTER (
                    WHERE state IN ('queued', 'failed') AND run_at <= now()))::float8 AS oldest_ready_seconds
           FROM jobs
          WHERE state IN ('queued', 'failed', 'running') OR finished_at > now() - interval '1 hour'
          GROUP BY queue, kind, priority, state
          ORDER BY queue, kind, priority DESC, state",
    )
    .fetch_all(pool)
    .await?)
}

/// Cancels a job that has not started (or waits for a retry); a running job is left to finish.
pub async fn cancel(pool: &PgPool, id: Uuid) -> Result<(), QueueError> {
    let state: Option<String> = sqlx::query_scalar(
        "WITH target AS (SELECT id, state FROM jobs WHERE id = $1 FOR UPDATE),
              done AS (UPDATE jobs j SET state = 'cancelled', finished_at = now()
                         FROM target WHERE j.id = target.id AND target.state IN ('queued', 'failed'))
         SELECT state FROM target",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match state.as_deref() {
        None => Err(QueueError::NotFound(id)),
        Some("queued" | "failed") => Ok(()),
        Some(other) => Err(QueueError::WrongState {
            id,
            state: other.into(),
            what: "only a queued job, or one waiting to retry, can be cancelled",
        }),
    }
}

/// Runs a job waiting for its retry delay now.
pub async fn retry_now(pool: &PgPool, policy: &Policy, id: Uuid) -> Result<(), QueueError> {
    let state: Option<String> = sqlx::query_scalar(
        "WITH target AS (SELECT id, state FROM jobs WHERE id = $1 FOR UPDATE),
              done AS (UPDATE jobs j SET run_at = now(), ready_at = now() - j.priority * $2 * interval '1 millisecond'
                         FROM target WHERE j.id = target.id AND target.state = 'failed')
         SELECT state FROM target",
    )
    .bind(id)
    .bind(policy.aging_step.as_millis() as i64)
    .fetch_optional(pool)
    .await?;
    match state.as_deref() {
        None => Err(QueueError::NotFound(id)),
        Some("failed") => Ok(()),
        Some(other) => Err(QueueError::WrongState {
            id,
            state: other.into(),
            what: "only a job waiting to retry can be retried now (a dead one is replayed from the dead letters)",
        }),
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub job_id: Uuid,
    pub queue: String,
    pub kind: String,
    pub payload: Value,
    pub errors: Value,
    pub died_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    pub replay_job_id: Option<Uuid>,
}

db_row::from_row!(DeadLetter {
    job_id,
    queue,
    kind,
    payload,
    errors,
    died_at,
    replayed_at,
    replay_job_id
});

pub async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetter>, QueueError> {
    Ok(sqlx::query_as(
        "SELECT job_id, queue, kind, payload, errors, died_at, replayed_at, replay_job_id
           FROM dead_letters ORDER BY died_at DESC, job_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Enqueues a dead job's copy, once: a second replay (even a concurrent one) returns the copy the
/// first made. Returns the copy's id and whether this call made it.
pub async fn replay(pool: &PgPool, policy: &Policy, id: Uuid) -> Result<(Uuid, bool), QueueError> {
    let mut tx = pool.begin().await?;
    let letter: Option<(Option<Uuid>, String, String, Value, i16)> = sqlx::query_as(
        "SELECT d.replay_job_id, d.queue, d.kind, d.payload, j.priority
           FROM dead_letters d JOIN jobs j ON j.id = d.job_id
          WHERE d.job_id = $1 FOR UPDATE OF d",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let (replayed, queue, kind, payload, priority) = letter.ok_or(QueueError::NotFound(id))?;
    if let Some(copy) = replayed {
        return Ok((copy, false));
    }
    let kind = JobKind::parse(&kind).ok_or_else(|| QueueError::WrongState {
        id,
        state: "dead".into(),
        what: "its kind is unknown to this release",
    })?;
    let copy = NewJob {
        id: None,
        queue,
        kind,
        payload,
        priority,
        run_at: None,
        unique_key: None,
    };
    let ids = enqueue(&mut tx, policy, &[copy]).await?;
    let copy = ids[0];
    sqlx::query(
        "UPDATE dead_letters SET replayed_at = now(), replay_job_id = $2 WHERE job_id = $1",
    )
    .bind(id)
    .bind(copy)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok((copy, true))
}

/// Deletes up to 10,000 succeeded or cancelled jobs (and their attempts) finished more than
/// `older_than` ago, so the table holds what is useful to look at, not history. Dead jobs stay while
/// their dead letter does.
pub async fn purge_finished(
    pool: &PgPool,
    older_than: std::time::Duration,
) -> Result<u64, QueueError> {
    let done = sqlx::query(
        "DELETE FROM jobs WHERE id IN (
             SELECT id FROM jobs
              WHERE state IN ('succeeded', 'cancelled')
                AND finished_at < now() - $1 * interval '1 millisecond'
              LIMIT 10000)",
    )
    .bind(older_than.as_millis() as i64)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// What the queue's gauges show: ready jobs by queue, kind and priority; the oldest ready job's age
/// by queue; dead letters not replayed by queue.
#[derive(Debug, Default)]
pub struct Gauges {
    pub depth: Vec<(String, String, i16, i64)>,
    /// Jobs running now (all queues).
    pub running: i64,
    pub oldest_ready_seconds: Vec<(String, f64)>,
    pub dead_letters: Vec<(String, i64)>,
}

pub async fn gauges(pool: &PgPool) -> Result<Gauges, QueueError> {
    let depth = sqlx::query_as(
        "SELECT queue, kind, priority, count(*) FROM jobs
          WHERE state IN ('queued', 'failed') AND run_at <= now()
          GROUP BY queue, kind, priority",
    )
    .fetch_all(pool)
    .await?;
    let oldest_ready_seconds = sqlx::query_as(
        "SELECT queue, extract(epoch FROM now() - min(run_at))::float8 FROM jobs
          WHERE state IN ('queued', 'failed') AND run_at <= now()
          GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    let dead_letters = sqlx::query_as(
        "SELECT queue, count(*) FROM dead_letters WHERE replay_job_id IS NULL GROUP BY queue",
    )
    .fetch_all(pool)
    .await?;
    let running = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
        .fetch_one(pool)
        .await?;
    Ok(Gauges {
        depth,
        running,
        oldest_ready_seconds,
        dead_letters,
    })
}
