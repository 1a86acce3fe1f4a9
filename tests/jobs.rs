//! The job queue on a real PostgreSQL (and Redis): transactional enqueue, workers killed and stopped
//! mid-job, fencing, retries and dead letters, replay, panics, priorities with aging, graceful
//! shutdown, and `POST /v1/merchants?async=true` through `GET /v1/jobs/{id}`.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{business, config, eventually, migrated_db, Service};
use kybctl::config::ScheduleConfig;
use kybctl::jobs::failure::{Failure, FailureKind};
use kybctl::jobs::handlers::{self, Ctx, Handler, HandlerError};
use kybctl::jobs::policy::Policy;
use kybctl::jobs::queue::{self, NewJob, QueueError};
use kybctl::jobs::schedule::{self, Schedule};
use kybctl::jobs::worker::{self, WorkerConfig};
use kybctl::jobs::{wake, JobKind, MerchantJob};
use kybctl::service::model::MerchantStatus;
use kybctl::service::state::AppState;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn business_input(name: &str) -> kybctl::classify::BusinessInput {
    serde_json::from_value(json!({"name": name, "description": "bakery bread and cakes"})).unwrap()
}

/// `n` merchants not classified yet, each with its classification job, enqueued in batches.
async fn merchants_with_jobs(pool: &PgPool, n: usize, kind: JobKind) -> Vec<Uuid> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
        let mut tx = pool.begin().await.unwrap();
        let mut jobs = Vec::new();
        for i in chunk {
            let id = Uuid::now_v7();
            kybctl::service::db::merchants::insert_unclassified(
                &mut tx,
                id,
                &business_input(&format!("Shop {i}")),
                MerchantStatus::Active,
                None,
            )
            .await
            .unwrap();
            jobs.push(NewJob::new(kind, json!(MerchantJob { merchant_id: id })));
            ids.push(id);
        }
        queue::enqueue(&mut tx, &Policy::default(), &jobs)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    ids
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// `kybctl worker` on `db`, its own metrics port.
fn worker_process(db: &str, extra: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args([
            "worker",
            "--database-url",
            db,
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(extra)
        .env("KYB_LOG_FORMAT", "json")
        .env_remove("KYB_REDIS_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kybctl worker")
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
}

/// An in-process worker on `db` with `handler`; stop it with the returned token.
async fn start_worker(
    db: &str,
    cfg: WorkerConfig,
    handler: Handler,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let state = AppState::build_without_api(config(db, None)).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::run(state, cfg, handler, stop.clone()));
    (stop, task)
}

fn quick(identity: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(identity.into());
    cfg.poll = Duration::from_millis(100);
    cfg.sweep = Duration::from_millis(500);
    cfg.policy.lease = Duration::from_secs(2);
    cfg
}

/// 1,000 merchant writes, every other one rolled back: exactly the 500 committed have their job, and
/// no job is visible to anyone before its write commits.
#[tokio::test]
async fn a_job_commits_and_rolls_back_with_its_write() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let observer = PgPool::connect(&db).await.unwrap();
    for i in 0..1000 {
        let mut tx = pool.begin().await.unwrap();
        let id = Uuid::now_v7();
        kybctl::service::db::merchants::insert_unclassified(
            &mut tx,
            id,
            &business_input("Shop"),
            MerchantStatus::Active,
            None,
        )
        .await
        .unwrap();
        let job = NewJob::new(JobKind::Classify, json!(MerchantJob { merchant_id: id }));
        let ids = queue::enqueue(&mut tx, &Policy::default(), &[job])
            .await
            .unwrap();
        if i % 10 == 0 {
            assert!(
                queue::get(&observer, ids[0]).await.unwrap().is_none(),
                "visible before commit"
            );
        }
        if i % 2 == 0 {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
    }
    assert_eq!(count(&pool, "SELECT count(*) FROM jobs").await, 500);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM jobs j JOIN merchants m ON m.id = (j.payload->>'merchant_id')::uuid"
        )
        .await,
        500,
        "each job with its merchant"
    );
}

/// 10,000 classification jobs while a worker is killed (SIGKILL) every 2 s for 60 s and started
/// again: every merchant is classified exactly once, no job is lost, and a killed worker's jobs are
/// taken up again within the lease plus the sweep interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_mid_job_lose_nothing_and_repeat_nothing() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let lease = Duration::from_secs(3);
    let sweep = Duration::from_secs(2);
    merchants_with_jobs(&pool, 10_000, JobKind::Classify).await;
    let args = ["--types", "classify", "--lease", "3s"];
    let started = Instant::now();
    let mut kills = Vec::new();
    let mut w = worker_process(&db, &args);
    while started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.kill().unwrap();
        w.wait().unwrap();
        kills.push(chrono::Utc::now());
        w = worker_process(&db, &args);
    }
    let done = eventually(Duration::from_secs(180), || async {
        count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await == 10_000
    })
    .await;
    w.kill().unwrap();
    let _ = w.wait();
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs GROUP BY state")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(done, "not all jobs succeeded: {states:?}");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM (SELECT business_id FROM classifications GROUP BY business_id HAVING count(*) <> 1) x"
        )
        .await,
        0,
        "a merchant classified more than once"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM merchants WHERE industry_id IS NULL"
        )
        .await,
        0
    );
    // Each expired attempt (its worker killed) was taken up again within lease + sweep of the kill.
    let expired: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as(
            "SELECT a.started_at, n.started_at FROM job_attempts a
               JOIN job_attempts n ON n.job_id = a.job_id AND n.attempt = a.attempt + 1
              WHERE a.outcome = 'expired'",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(!expired.is_empty(), "no worker was killed mid-job");
    // Beyond lease + sweep: the next worker's poll, and its own start, since every kill is followed
    // by a new process (a debug build on two cores, which share them with the other tests). 4 s
    // measured tight on a busy runner (7.6 s against 7 s once). A rescue missed by the first sweep
    // after the lease and left to a later cycle (a lease and a sweep more: 10 s) still fails.
    let slack = chrono::Duration::from_std(lease + sweep + Duration::from_secs(4)).unwrap();
    let mut worst = chrono::Duration::zero();
    for (began, retried) in &expired {
        let killed = kills
            .iter()
            .find(|k| *k > began)
            .expect("a kill after it began");
        let waited = *retried - *killed;
        worst = worst.max(waited);
        assert!(waited <= slack, "retried {waited} after the kill");
    }
    eprintln!(
        "{} kills, {} attempts expired, slowest rescue {} after its kill",
        kills.len(),
        expired.len(),
        worst
    );
}

/// A worker stopped (SIGSTOP) in the middle of its job's transaction, past its lease: PostgreSQL ends
/// its idle transaction, another worker does the job, and once resumed the first one commits nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_stopped_past_its_lease_cannot_complete_its_job() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let merchant = merchants_with_jobs(&pool, 1, JobKind::RiskAssessment).await[0];
    let assessments = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM business_risk_assessments WHERE business_id = $1",
        )
        .bind(merchant)
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    // Hold the worker inside its fenced transaction: its INSERT waits for this lock.
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE business_risk_assessments IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let a = worker_process(&db, &["--types", "risk_assessment", "--lease", "2s"]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(
                &pool,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'INSERT INTO business_risk_assessments%'",
            )
            .await
                == 1
        })
        .await,
        "the worker never reached its insert"
    );
    signal(&a, libc::SIGSTOP);
    blocker.commit().await.unwrap();
    // The stopped worker's session sits idle in its transaction until PostgreSQL ends it; then its
    // lease (no heartbeats) has run out and the job is rescued.
    assert!(
        eventually(Duration::from_secs(20), || async {
            queue::rescue_expired(&pool).await.unwrap() == 1
        })
        .await,
        "the job was never rescued"
    );
    let (kind, error): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT last_error_kind, last_error FROM jobs WHERE kind = 'risk_assessment'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(kind.as_deref(), Some("expired"), "{error:?}");
    assert_eq!(
        assessments().await,
        0,
        "the stopped worker's effect was rolled back"
    );
    let b = worker_process(&db, &["--types", "risk_assessment", "--lease", "2s"]);
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await == 1
        })
        .await
    );
    signal(&a, libc::SIGCONT);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(assessments().await, 1, "exactly one effect");
    let outcomes: Vec<(i32, String)> =
        sqlx::query_as("SELECT attempt, outcome FROM job_attempts ORDER BY attempt")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        vec![(1, "expired".to_owned()), (2, "succeeded".to_owned())]
    );
    for mut w in [a, b] {
        let _ = w.kill();
        let _ = w.wait();
    }
}

/// A job that always fails runs 1 + 3 attempts at least the retry delay apart, then sits in the dead
/// letters with every attempt's error. Once its cause is fixed, replaying it twice runs it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jobs_retry_then_die_and_replay_once() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    // A risk assessment of a merchant that does not exist (yet).
    let merchant = Uuid::now_v7();
    let mut conn = pool.acquire().await.unwrap();
    let job = queue::enqueue(
        &mut conn,
        &Policy::default(),
        &[NewJob::new(
            JobKind::RiskAssessment,
            json!(MerchantJob {
                merchant_id: merchant
            }),
        )],
    )
    .await
    .unwrap()[0];
    drop(conn);
    let (stop, task) = start_worker(&db, quick("retrying"), handlers::standard()).await;
    assert!(
        eventually(Duration::from_secs(40), || async {
            queue::get(&pool, job).await.unwrap().unwrap().status == "dead"
        })
        .await,
        "{:?}",
        queue::get(&pool, job).await
    );
    let starts: Vec<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT started_at FROM job_attempts WHERE job_id = $1 ORDER BY attempt",
    )
    .bind(job)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(starts.len(), 4, "1 + 3 attempts");
    for w in starts.windows(2) {
        assert!(
            w[1] - w[0] >= chrono::Duration::seconds(5),
            "retried after {}",
            w[1] - w[0]
        );
    }
    let letters = queue::dead_letters(&pool, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let errors = letters[0].errors.as_array().unwrap();
    assert_eq!(errors.len(), 4);
    assert!(errors
        .iter()
        .all(|e| e["error"].as_str().unwrap().contains("no merchant")));

    // The cause fixed: the merchant exists. Two replays (one concurrent with the other) make one job.
    let mut tx = pool.begin().await.unwrap();
    kybctl::service::db::merchants::insert_unclassified(
        &mut tx,
        merchant,
        &business_input("Late Shop"),
        MerchantStatus::Active,
        None,
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let policy = Policy::default();
    let (first, second) = tokio::join!(
        queue::replay(&pool, &policy, job),
        queue::replay(&pool, &policy, job)
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.0, second.0, "one copy");
    assert!(first.1 ^ second.1, "exactly one replay made it");
    assert!(
        eventually(Duration::from_secs(20), || async {
            queue::get(&pool, first.0).await.unwrap().unwrap().status == "succeeded"
        })
        .await
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM business_risk_assessments").await,
        1
    );
    assert!(matches!(
        queue::replay(&pool, &policy, Uuid::now_v7()).await,
        Err(QueueError::NotFound(_))
    ));
    stop.cancel();
    task.await.unwrap();
}

/// A job that panics fails its attempt; the worker goes on with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_fails_its_attempt_not_the_worker() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new(JobKind::Noop, json!({ "panic": i == 3 })))
        .collect();
    let ids = queue::enqueue(&mut conn, &Policy::default(), &jobs)
        .await
        .unwrap();
    drop(conn);
    let standard = handlers::standard();
    let handler: Handler = Arc::new(move |ctx: Arc<Ctx>, job| {
        if job.payload["panic"] == true {
            panic!("a bug in a handler");
        }
        standard(ctx, job)
    });
    let (stop, task) = start_worker(&db, quick("panics"), handler).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await == 19
        })
        .await
    );
    // Its failure is recorded once the handler's task has ended, maybe after the others succeeded.
    assert!(
        eventually(Duration::from_secs(10), || async {
            queue::get(&pool, ids[3]).await.unwrap().unwrap().status == "failed"
        })
        .await,
        "retried later"
    );
    let panicked = queue::get(&pool, ids[3]).await.unwrap().unwrap();
    assert!(
        panicked
            .last_error
            .as_deref()
            .unwrap()
            .contains("a bug in a handler"),
        "{panicked:?}"
    );
    stop.cancel();
    task.await.unwrap();
}

/// A failed job as its caller sees it (`GET /v1/jobs/{id}`): the kind of failure, and the detail
/// only where this code wrote it about the job (a rejection, a timeout). Hosts and panic messages
/// stay with the operators (`queue::get`, what `kybctl jobs show` reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_jobs_caller_is_told_its_kind_not_the_operators_detail() {
    // The panicking job's panic hook prints a symbolised backtrace where RUST_BACKTRACE is set (as in
    // CI); the first one in a process reads the test binary's debug info, which on a loaded machine
    // took longer than the job timeout, and the panic was judged a timeout. Symbolising one here
    // first leaves the hook only the printing.
    let _ = std::backtrace::Backtrace::force_capture().to_string();
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let s = Service::start(config(&db, None)).await;
    let missing = Uuid::now_v7();
    let mut conn = pool.acquire().await.unwrap();
    let ids = queue::enqueue(
        &mut conn,
        &Policy::default(),
        &[
            NewJob::new(JobKind::Noop, json!({ "fail": "panic" })),
            NewJob::new(JobKind::Noop, json!({ "fail": "unavailable" })),
            NewJob::new(JobKind::Noop, json!({ "fail": "slow" })),
            NewJob::new(
                JobKind::RiskAssessment,
                json!(MerchantJob {
                    merchant_id: missing
                }),
            ),
        ],
    )
    .await
    .unwrap();
    drop(conn);
    let standard = handlers::standard();
    // Set by the slow job if it were left running past its timeout.
    let outlived = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = outlived.clone();
    let handler: Handler = Arc::new(
        move |ctx: Arc<Ctx>, job| match job.payload["fail"].as_str() {
            Some("panic") => panic!("token=hunter2 seen by a handler"),
            Some("unavailable") => Box::pin(async {
                Err(HandlerError::Unavailable(
                    "database unavailable: db-0.kyb.internal:5432: connection refused".into(),
                ))
            }),
            Some("slow") => {
                let flag = flag.clone();
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    flag.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                })
            }
            _ => standard(ctx, job),
        },
    );
    let mut cfg = quick("caller");
    cfg.job_timeout = Duration::from_secs(3);
    let (stop, task) = start_worker(&db, cfg, handler).await;
    assert!(
        eventually(Duration::from_secs(20), || async {
            count(
                &pool,
                "SELECT count(*) FROM jobs WHERE state = 'failed' AND last_error IS NOT NULL",
            )
            .await
                == 4
        })
        .await,
        "{:?}",
        queue::list(&pool, None, None, 10).await
    );
    stop.cancel();
    task.await.unwrap();
    let missing = missing.to_string();
    for (id, kind, detail, told) in [
        (ids[0], "internal", "token=hunter2", None),
        (ids[1], "unavailable", "db-0.kyb.internal", None),
        (
            ids[2],
            "timeout",
            "timed out after 3s",
            Some("timed out after 3s"),
        ),
        (ids[3], "rejected", missing.as_str(), Some(missing.as_str())),
    ] {
        let operators = queue::get(&pool, id).await.unwrap().unwrap();
        assert_eq!(operators.last_error_kind.as_deref(), Some(kind));
        assert!(
            operators.last_error.as_deref().unwrap().contains(detail),
            "{operators:?}"
        );
        let r = s.get(&format!("/v1/jobs/{id}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let caller: Value = r.json().await.unwrap();
        assert_eq!(caller["last_error_kind"], kind, "{caller}");
        let message = caller["last_error"].as_str().unwrap();
        match told {
            Some(shown) => assert!(message.contains(shown), "{caller}"),
            None => assert!(!message.contains(detail) && !message.is_empty(), "{caller}"),
        }
    }
    // The slow job's handler was stopped at its timeout, not left to run on (it failed at 3 s and
    // would set the flag at 6).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(!outlived.load(std::sync::atomic::Ordering::SeqCst));
    s.stop().await;
}

/// Under a flood of high-priority jobs above the workers' capacity, a low-priority job still starts:
/// after the high ones that were ready before it, and before those that became ready more than the
/// priority gap (20 aging steps) after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priorities_age_so_low_priority_work_still_starts() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let step = Duration::from_millis(100);
    let policy = Policy {
        aging_step: step,
        ..Policy::default()
    };
    let mut cfg = quick("priorities");
    cfg.concurrency = 2;
    cfg.policy = policy.clone();
    // 20 ms a job on 2 slots: about 100 jobs a second.
    let slow: Handler = Arc::new(|ctx: Arc<Ctx>, job| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let tx = queue::begin_fenced(&ctx.shard.primary, &job, &ctx.policy).await?;
            queue::complete(tx, &job, None).await?;
            Ok::<(), HandlerError>(())
        })
    });
    let (stop, task) = start_worker(&db, cfg, slow).await;
    let enqueue = |priority: i16, n: usize| {
        let (pool, policy) = (pool.clone(), policy.clone());
        async move {
            let mut conn = pool.acquire().await.unwrap();
            let jobs = vec![NewJob::new(JobKind::Noop, json!({})).priority(priority); n];
            queue::enqueue(&mut conn, &policy, &jobs).await.unwrap()
        }
    };
    // 150 high-priority jobs a second for 8 s; the low one 2 s in.
    let begun = Instant::now();
    let mut low = None;
    while begun.elapsed() < Duration::from_secs(8) {
        enqueue(10, 15).await;
        if low.is_none() && begun.elapsed() >= Duration::from_secs(2) {
            low = Some(enqueue(-10, 1).await[0]);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let low = low.unwrap();
    assert!(
        eventually(Duration::from_secs(60), || async {
            queue::get(&pool, low).await.unwrap().unwrap().status == "succeeded"
        })
        .await
    );
    let low_job = queue::get(&pool, low).await.unwrap().unwrap();
    let low_start = low_job.first_started_at.unwrap();
    let gap = chrono::Duration::from_std(step * 20).unwrap();
    let margin = chrono::Duration::milliseconds(500);
    // High jobs enqueued clearly after the gap started later than the low one...
    let later_first: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "SELECT min(first_started_at) FROM jobs WHERE priority = 10 AND enqueued_at > $1",
    )
    .bind(low_job.enqueued_at + gap + margin)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        later_first.is_none_or(|t| t >= low_start),
        "a high job ready after the gap started first"
    );
    // ...and those enqueued before the low one started before it: priority still counts.
    let earlier_last: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "SELECT max(first_started_at) FROM jobs WHERE priority = 10 AND enqueued_at < $1",
    )
    .bind(low_job.enqueued_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        earlier_last <= low_start,
        "the low job overtook older high ones"
    );
    let backlog = count(
        &pool,
        "SELECT count(*) FROM jobs WHERE state <> 'succeeded'",
    )
    .await;
    eprintln!(
        "low job started {} after it was enqueued; {backlog} jobs still waiting then",
        low_start - low_job.enqueued_at
    );
    stop.cancel();
    task.await.unwrap();
}

/// SIGTERM-style shutdown with jobs in flight: the ones that finish within the grace period commit,
/// the others are handed back untried (no attempt counted), and nothing is left to rescue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_or_hands_back_every_job() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let jobs: Vec<NewJob> = (0..4)
        .map(|i| {
            NewJob::new(
                JobKind::Noop,
                json!({ "seconds": if i < 2 { 0 } else { 30 } }),
            )
        })
        .collect();
    queue::enqueue(&mut conn, &Policy::default(), &jobs)
        .await
        .unwrap();
    drop(conn);
    let sleepy: Handler = Arc::new(|ctx: Arc<Ctx>, job| {
        Box::pin(async move {
            let secs = job.payload["seconds"].as_u64().unwrap_or(0);
            tokio::time::sleep(Duration::from_secs(secs)).await;
            let tx = queue::begin_fenced(&ctx.shard.primary, &job, &ctx.policy).await?;
            queue::complete(tx, &job, None).await?;
            Ok::<(), HandlerError>(())
        })
    });
    let mut cfg = quick("shutdown");
    cfg.grace = Duration::from_secs(1);
    let (stop, task) = start_worker(&db, cfg, sleepy).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await == 2
                && count(&pool, "SELECT count(*) FROM jobs WHERE state = 'running'").await == 2
        })
        .await
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops within the grace period")
        .unwrap();
    let states: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT state, attempts, count(*) FROM jobs GROUP BY state, attempts ORDER BY state",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        states,
        vec![("queued".into(), 0, 2), ("succeeded".into(), 1, 2)]
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM job_attempts").await, 2);
}

/// `POST /v1/merchants?async=true` answers 202 at once with the job at `Location`; a worker classifies
/// the merchant; the job reads `succeeded` and the merchant its classification, on every read path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_async_creation_is_classified_by_a_worker() {
    let db = migrated_db().await;
    let redis = common::redis().url();
    let cfg = config(&db, Some(&redis));
    let s = Service::start(cfg.clone()).await;
    let r = s
        .post_json(
            "/v1/merchants?async=true",
            &business("Corner Bakery", "bakery bread and cakes"),
        )
        .await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = r.json().await.unwrap();
    let id = accepted["merchant"]["id"].as_str().unwrap().to_owned();
    assert!(accepted["merchant"]["classification"].is_null());
    assert_eq!(accepted["job"]["status"], "queued");
    assert_eq!(
        location,
        format!("/v1/jobs/{}", accepted["job"]["id"].as_str().unwrap())
    );
    // Read before the worker runs: cached as unclassified.
    assert!(s
        .get(&format!("/v1/merchants/{id}"))
        .await
        .json::<Value>()
        .await
        .unwrap()["classification"]
        .is_null());

    // The worker shares the service's Redis and key prefix, as pods of one platform do.
    let state = AppState::build_without_api(cfg).unwrap();
    let stop = CancellationToken::new();
    state.spawn_background(stop.clone());
    let task = tokio::spawn(worker::run(
        state,
        quick("api"),
        handlers::standard(),
        stop.clone(),
    ));
    assert!(
        eventually(Duration::from_secs(20), || async {
            s.get(&location).await.json::<Value>().await.unwrap()["status"] == "succeeded"
        })
        .await
    );
    let job: Value = s.get(&location).await.json().await.unwrap();
    assert!(
        job["result"]["naics_code"]
            .as_str()
            .unwrap()
            .starts_with("3118"),
        "{job}"
    );
    let merchant: Value = s
        .get(&format!("/v1/merchants/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        merchant["classification"]["naics_code"], job["result"]["naics_code"],
        "{merchant}"
    );
    assert_eq!(merchant["version"], 2);
    assert_eq!(
        s.get(&format!("/v1/jobs/{}", Uuid::now_v7()))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    stop.cancel();
    task.await.unwrap();
    s.stop().await;
}

fn every_second() -> Schedule {
    Schedule::parse(&ScheduleConfig {
        name: "every-second".into(),
        cron: "* * * * * *".into(),
        kind: JobKind::Noop,
        priority: 0,
    })
    .unwrap()
}

/// Two schedulers walking the same 100 ticks at the same time enqueue 100 jobs between them, each
/// tick once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_schedulers_enqueue_each_tick_once() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let start = chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp(), 0).unwrap();
    let walk = || {
        let pool = pool.clone();
        tokio::spawn(async move {
            let (s, policy) = (every_second(), Policy::default());
            let mut mine = 0;
            for i in 0..100 {
                let after = start + chrono::Duration::seconds(i);
                let ticks = s.due(after, after + chrono::Duration::seconds(1), 1);
                mine += schedule::enqueue_ticks(&pool, &policy, &s, &ticks)
                    .await
                    .unwrap();
            }
            mine
        })
    };
    let (a, b) = tokio::join!(walk(), walk());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a + b, 100, "a {a}, b {b}");
    assert_eq!(
        count(&pool, "SELECT count(DISTINCT unique_key) FROM jobs").await,
        100
    );
}

/// The schedulers' loops, two at once, on the wall clock: one job per second that passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduler_loops_enqueue_on_the_clock() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let stop = CancellationToken::new();
    let loops: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(schedule::run(
                pool.clone(),
                Policy::default(),
                vec![every_second()],
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3500)).await;
    stop.cancel();
    for l in loops {
        l.await.unwrap();
    }
    // The tick before the start (caught up) and the three or four that passed (the last may come
    // after the stop on a busy machine).
    let n = count(&pool, "SELECT count(*) FROM jobs").await;
    let keys: Vec<String> = sqlx::query_scalar("SELECT unique_key FROM jobs ORDER BY 1")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!((3..=5).contains(&n), "{n} jobs: {keys:?}");
}

/// With Redis the workers wake at once; with Redis stopped nothing is lost and jobs start within the
/// poll interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_jobs_still_start_within_the_poll_interval() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let mut redis = kybctl::local::TempRedis::start().unwrap();
    let cfg = config(&db, Some(&redis.url()));
    let state = AppState::build_without_api(cfg).unwrap();
    let stop = CancellationToken::new();
    state.spawn_background(stop.clone());
    let mut wcfg = quick("wake");
    wcfg.poll = Duration::from_secs(1);
    let task = tokio::spawn(worker::run(
        state.clone(),
        wcfg,
        handlers::standard(),
        stop.clone(),
    ));
    // Let the subscription start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let prefix = state.config.cache.key_prefix.clone();
    let delays = |batch: &'static str| {
        let pool = pool.clone();
        async move {
            let rows: Vec<f64> = sqlx::query_scalar(
                "SELECT extract(epoch FROM first_started_at - enqueued_at)::float8 FROM jobs
                  WHERE payload->>'batch' = $1 AND first_started_at IS NOT NULL",
            )
            .bind(batch)
            .fetch_all(&pool)
            .await
            .unwrap();
            rows
        }
    };
    for batch in ["woken", "polled"] {
        if batch == "polled" {
            redis.stop();
        }
        for _ in 0..10 {
            let mut tx = pool.begin().await.unwrap();
            queue::enqueue(
                &mut tx,
                &Policy::default(),
                &[NewJob::new(JobKind::Noop, json!({ "batch": batch }))],
            )
            .await
            .unwrap();
            tx.commit().await.unwrap();
            wake::nudge(state.cache.redis(), &prefix, queue::DEFAULT_QUEUE).await;
            tokio::time::sleep(Duration::from_millis(230)).await;
        }
        assert!(
            eventually(Duration::from_secs(10), || async {
                delays(batch).await.len() == 10
            })
            .await,
            "{batch}: not every job started"
        );
    }
    let woken = delays("woken").await;
    let polled = delays("polled").await;
    eprintln!("start delays: woken {woken:?}, polled {polled:?}");
    assert!(woken.iter().all(|d| *d < 0.5), "woken by Redis: {woken:?}");
    assert!(
        polled.iter().all(|d| *d < 1.5),
        "polled (poll 1 s): {polled:?}"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await,
        20
    );
    stop.cancel();
    task.await.unwrap();
}

/// `kybctl jobs` as an operator uses it: enqueue, list, show, stats, cancel, and the dead letters.
#[tokio::test]
async fn the_jobs_command_steers_the_queue() {
    let db = migrated_db().await;
    let pool = PgPool::connect(&db).await.unwrap();
    let jobs = |args: &[&str]| {
        let mut all = vec!["jobs"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--database-url", &db]);
        let out = common::kybctl(&all);
        let (stdout, stderr) = common::text(&out);
        (out.status.code(), stdout, stderr)
    };
    let (code, out, err) = jobs(&["enqueue", "industry_report", "--priority", "5"]);
    assert_eq!(code, Some(0), "{err}");
    let id: Uuid = out.trim().parse().unwrap();
    let (code, _, err) = jobs(&["enqueue", "classify"]);
    assert_eq!(code, Some(2), "needs --merchant");
    assert!(err.contains("--merchant"), "{err}");

    let (_, out, _) = jobs(&["list", "-o", "json"]);
    let listed: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["id"], id.to_string());
    assert_eq!(listed[0]["priority"], 5);
    assert_eq!(listed[0]["status"], "queued");
    let (_, out, _) = jobs(&["show", &id.to_string(), "-o", "json"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["kind"],
        "industry_report"
    );
    let (_, out, _) = jobs(&["stats", "-o", "json"]);
    let stats: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(stats[0]["jobs"], 1);
    assert_eq!(stats[0]["status"], "queued");

    let (code, out, _) = jobs(&["cancel", &id.to_string()]);
    assert_eq!(code, Some(0));
    assert!(out.contains("cancelled"));
    let (code, _, err) = jobs(&["cancel", &id.to_string()]);
    assert_eq!(code, Some(1), "a cancelled job cannot be cancelled again");
    assert!(err.contains("is cancelled"), "{err}");
    let (code, _, err) = jobs(&["show", &Uuid::now_v7().to_string()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not found"), "{err}");

    // A dead job, then its replay from the command line, once.
    let mut conn = pool.acquire().await.unwrap();
    let dead = queue::enqueue(
        &mut conn,
        &Policy::default(),
        &[NewJob::new(JobKind::Noop, json!({}))],
    )
    .await
    .unwrap()[0];
    drop(conn);
    let one_try = Policy {
        max_attempts: 1,
        ..Policy::default()
    };
    let claimed = queue::claim(
        &pool,
        queue::DEFAULT_QUEUE,
        &["noop"],
        "cli-test",
        1,
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let mut last = claimed[0].clone();
    last.max_attempts = 1;
    queue::fail(
        &pool,
        &one_try,
        &last,
        &Failure::new(FailureKind::Internal, "broken on purpose"),
    )
    .await
    .unwrap();
    let (_, out, _) = jobs(&["dead-letters", "-o", "json"]);
    let letters: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letters[0]["job_id"], dead.to_string());
    assert_eq!(letters[0]["errors"][0]["error"], "broken on purpose");
    let (code, first, _) = jobs(&["replay", &dead.to_string()]);
    assert_eq!(code, Some(0));
    let (_, again, _) = jobs(&["replay", &dead.to_string()]);
    assert!(
        again.starts_with(first.trim()) && again.contains("not enqueued again"),
        "{again}"
    );
}

/// `n` NDJSON lines of merchants named `prefix N`.
fn ndjson(prefix: &str, n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "{}\n",
                business(&format!("{prefix} {i}"), "bakery bread and cakes")
            )
        })
        .collect()
}

async fn post_ndjson(s: &Service, body: String, content_type: &str) -> reqwest::Response {
    post_keyed(s, body, content_type, None).await
}

async fn post_keyed(
    s: &Service,
    body: String,
    content_type: &str,
    key: Option<&str>,
) -> reqwest::Response {
    let mut req = s
        .http
        .post(s.url("/v1/merchants:import"))
        .header("content-type", content_type);
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(body).send().await.unwrap()
}

/// A bulk import over two shards: every line checked before anything is written, each shard's
/// merchants committed with their jobs (batches of 1,000 inside one transaction), and a worker
/// classifies them all. A shard whose transaction fails (its jobs table is gone) keeps none of its
/// lines and names them, while the other shard's stand; the same file sent again under its
/// `Idempotency-Key` once the shard is back writes that shard's lines and replays the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_import_commits_per_shard_with_a_job_per_line() {
    let pg = common::pg();
    let urls = [
        common::migrated_db_on(pg).await,
        common::migrated_db_on(pg).await,
    ];
    let mut cfg = common::sharded(config(&urls[0], None), &[&urls[0], &urls[1]]);
    cfg.server.max_import_bytes = 1024 * 1024;
    let router =
        kybctl::service::db::shard::ShardRouter::from_config(&cfg.database.sharding).unwrap();
    let pools = [
        PgPool::connect(&urls[0]).await.unwrap(),
        PgPool::connect(&urls[1]).await.unwrap(),
    ];
    let merchants = |i: usize| count(&pools[i], "SELECT count(*) FROM merchants");
    let s = Service::start(cfg.clone()).await;

    // Refused whole, nothing written: a bad line (named), another media type, an oversized body.
    let mut bad = ndjson("Bad", 1_500);
    bad.push_str("{\"name\": \"\"}\n");
    let r = post_ndjson(&s, bad, "application/x-ndjson").await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["field"]
            .as_str()
            .unwrap()
            .starts_with("line 1501: name"),
        "{problem}"
    );
    let r = post_ndjson(&s, ndjson("Json", 2), "application/json").await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let r = post_ndjson(&s, ndjson("Huge", 20_000), "application/x-ndjson").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!((merchants(0).await, merchants(1).await), (0, 0));

    // 2,500 lines: about 1,250 a shard, so each shard's transaction holds two batches.
    let r = post_ndjson(&s, ndjson("Imported", 2_500), "application/x-ndjson").await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let result: Value = r.json().await.unwrap();
    let imported = result["imported"].as_array().unwrap();
    assert_eq!(imported.len(), 2_500);
    assert!(result["failed"].as_array().unwrap().is_empty());
    let mut on = [0i64; 2];
    for (n, line) in imported.iter().enumerate() {
        assert_eq!(line["line"], n + 1, "in line order");
        on[router.route(line["id"].as_str().unwrap())] += 1;
    }
    assert!(on[0] > 1_000 && on[1] > 1_000, "{on:?}");
    for i in 0..2 {
        assert_eq!(merchants(i).await, on[i]);
        assert_eq!(
            count(
                &pools[i],
                "SELECT count(*) FROM jobs WHERE kind = 'classify'"
            )
            .await,
            on[i],
            "one job per merchant on shard {i}"
        );
    }
    let first = &imported[0];
    let merchant: Value = s
        .get(&format!("/v1/merchants/{}", first["id"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(merchant["name"], "Imported 1");
    assert!(merchant["classification"].is_null());

    // A worker classifies every one of them, on both shards.
    let state = AppState::build_without_api(cfg.clone()).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(worker::run(
        state,
        quick("import"),
        handlers::standard(),
        stop.clone(),
    ));
    let unclassified = "SELECT count(*) FROM merchants WHERE industry_id IS NULL";
    assert!(
        eventually(Duration::from_secs(120), || async {
            count(&pools[0], unclassified).await + count(&pools[1], unclassified).await == 0
        })
        .await,
        "{} + {} merchants still unclassified",
        count(&pools[0], unclassified).await,
        count(&pools[1], unclassified).await
    );
    let job: Value = s
        .get(&format!("/v1/jobs/{}", first["job"].as_str().unwrap()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(job["status"], "succeeded", "{job}");
    stop.cancel();
    task.await.unwrap();

    // Shard 1 loses its jobs table: its merchants' INSERT succeeds, their jobs' fails, and the
    // transaction takes both back. Shard 0's lines stand; shard 1's come back as failed.
    sqlx::query("ALTER TABLE jobs RENAME TO jobs_away")
        .execute(&pools[1])
        .await
        .unwrap();
    let before = [merchants(0).await, merchants(1).await];
    let ndjson_type = "application/x-ndjson";
    let key = Some("partial-file-1");
    let r = post_keyed(&s, ndjson("Partial", 400), ndjson_type, key).await;
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
    let result: Value = r.json().await.unwrap();
    let (ok, failed) = (
        result["imported"].as_array().unwrap(),
        result["failed"].as_array().unwrap(),
    );
    assert_eq!(ok.len() + failed.len(), 400);
    assert!(ok
        .iter()
        .all(|l| router.route(l["id"].as_str().unwrap()) == 0));
    assert!(!failed.is_empty() && !ok.is_empty(), "{result}");
    assert!(
        !failed[0]["detail"].as_str().unwrap().contains("jobs"),
        "no internals in {}",
        failed[0]
    );
    assert_eq!(merchants(0).await, before[0] + ok.len() as i64);
    assert_eq!(merchants(1).await, before[1], "nothing half-applied");

    // The shard is back; the same file under the same key: shard 1's lines are written, shard 0's
    // replayed (the same ids and jobs, nothing new), so every line is imported exactly once.
    sqlx::query("ALTER TABLE jobs_away RENAME TO jobs")
        .execute(&pools[1])
        .await
        .unwrap();
    let jobs_on = |i: usize| count(&pools[i], "SELECT count(*) FROM jobs");
    let jobs_before = [jobs_on(0).await, jobs_on(1).await];
    let r = post_keyed(&s, ndjson("Partial", 400), ndjson_type, key).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let retried: Value = r.json().await.unwrap();
    let lines = retried["imported"].as_array().unwrap();
    assert_eq!(lines.len(), 400);
    for l in ok {
        let again = &lines[l["line"].as_u64().unwrap() as usize - 1];
        assert_eq!((&again["id"], &again["job"]), (&l["id"], &l["job"]));
        assert_eq!(again["replayed"], true);
    }
    let written = lines.iter().filter(|l| l["replayed"] == false).count();
    assert_eq!(written, failed.len(), "the failed lines, and only they");
    assert_eq!(merchants(0).await, before[0] + ok.len() as i64);
    assert_eq!(merchants(1).await, before[1] + failed.len() as i64);
    assert_eq!(
        jobs_on(0).await,
        jobs_before[0],
        "no job again for a replayed line"
    );
    assert_eq!(jobs_on(1).await, jobs_before[1] + failed.len() as i64);

    // Once more: everything replayed, nothing written.
    let r = post_keyed(&s, ndjson("Partial", 400), ndjson_type, key).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let third: Value = r.json().await.unwrap();
    assert!(third["imported"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["replayed"] == true));
    assert_eq!(merchants(1).await, before[1] + failed.len() as i64);

    // The key with one line changed: that line's shard refuses (nothing of it written), the other
    // shard's lines are replayed: 207, the refusal naming the key.
    let mut changed = ndjson("Partial", 400);
    changed = changed.replacen("Partial 1\"", "Partial one\"", 1);
    let r = post_keyed(&s, changed, ndjson_type, key).await;
    assert_eq!(r.status(), StatusCode::MULTI_STATUS);
    let mixed: Value = r.json().await.unwrap();
    let refused = mixed["failed"].as_array().unwrap();
    assert!(refused.iter().any(|l| l["line"] == 1), "{mixed}");
    assert!(refused[0]["detail"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert!(mixed["imported"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["replayed"] == true));
    assert_eq!(
        [merchants(0).await, merchants(1).await],
        [before[0] + ok.len() as i64, before[1] + failed.len() as i64],
        "nothing new anywhere"
    );
    s.stop().await;
}
