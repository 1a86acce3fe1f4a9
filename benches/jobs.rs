//! Job queue benchmark against references measured in the same run, on a throwaway PostgreSQL (and
//! Redis for the wake-ups):
//!
//! - throughput: no-op jobs through the worker (claims, leases, heartbeats, fenced completion, one
//!   attempt row each) against a raw claim-and-complete loop on the same table (`FOR UPDATE SKIP
//!   LOCKED`, batches of 10, one UPDATE to finish: what any PostgreSQL queue must at least do);
//! - enqueue: 100 jobs in one statement against 100 single-row transactions;
//! - latency: enqueue-to-start at half the measured capacity, with the Redis wake-up.
//!
//! `cargo bench --bench jobs [-- REPS]` (default 3). Prints each rep, medians (min-max) and ratios.
//! Under `cargo test --all-targets` (no `--bench` argument) it runs one small rep, so the target stays
//! compiled and working without costing test time.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, migrated_db_on};
use kybctl::jobs::handlers;
use kybctl::jobs::policy::Policy;
use kybctl::jobs::queue::{self, NewJob};
use kybctl::jobs::worker::{self, WorkerConfig};
use kybctl::jobs::{wake, JobKind};
use kybctl::local::{TempPostgres, TempRedis};
use kybctl::service::state::AppState;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const CONCURRENCY: usize = 10;

/// What one rep measures: the full run, or the smoke run under `cargo test`.
#[derive(Clone, Copy)]
struct Size {
    jobs: usize,
    latency_for: Duration,
}

async fn fill(pool: &PgPool, n: usize) {
    let policy = Policy::default();
    let mut conn = pool.acquire().await.unwrap();
    for chunk in vec![NewJob::new(JobKind::Noop, json!({})); n].chunks(100) {
        queue::enqueue(&mut conn, &policy, chunk).await.unwrap();
    }
}

async fn fresh(pg: &TempPostgres) -> (String, PgPool) {
    let db = migrated_db_on(pg).await;
    let pool = PgPool::connect(&db).await.unwrap();
    (db, pool)
}

/// The reference: CONCURRENCY loops claiming 10 at a time and finishing each with one UPDATE.
async fn raw_loop(pool: &PgPool, size: Size) -> f64 {
    fill(pool, size.jobs).await;
    let started = Instant::now();
    let loops: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                loop {
                    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
                        "UPDATE jobs SET state = 'running' WHERE id IN (
                             SELECT id FROM jobs WHERE state = 'queued' ORDER BY ready_at
                              LIMIT 10 FOR UPDATE SKIP LOCKED) RETURNING id",
                    )
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    if ids.is_empty() {
                        return;
                    }
                    for id in ids {
                        sqlx::query("UPDATE jobs SET state = 'succeeded', finished_at = now() WHERE id = $1")
                            .bind(id)
                            .execute(&pool)
                            .await
                            .unwrap();
                    }
                }
            })
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
    size.jobs as f64 / started.elapsed().as_secs_f64()
}

fn bench_worker(identity: &str) -> WorkerConfig {
    let mut cfg = WorkerConfig::new(identity.into());
    cfg.concurrency = CONCURRENCY;
    cfg.poll = Duration::from_millis(50);
    cfg
}

/// The worker, no-op handler: `size.jobs` jobs, start to last completion.
async fn through_worker(db: &str, pool: &PgPool, size: Size) -> f64 {
    fill(pool, size.jobs).await;
    let mut cfg = config(db, None);
    cfg.database.pool.max_connections = 20;
    let state = AppState::build_without_api(cfg).unwrap();
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(worker::run(
        state,
        bench_worker("bench"),
        handlers::standard(),
        stop.clone(),
    ));
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
            .fetch_one(pool)
            .await
            .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = size.jobs as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    task.await.unwrap();
    rate
}

/// Seconds to enqueue 100 jobs in one statement, and as 100 single-job transactions.
async fn enqueue_costs(pool: &PgPool) -> (f64, f64) {
    let policy = Policy::default();
    let jobs = vec![NewJob::new(JobKind::Noop, json!({})); 100];
    let mut conn = pool.acquire().await.unwrap();
    let t = Instant::now();
    for _ in 0..20 {
        let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
        queue::enqueue(&mut tx, &policy, &jobs).await.unwrap();
        tx.commit().await.unwrap();
    }
    let batched = t.elapsed().as_secs_f64() / 20.0;
    let t = Instant::now();
    for _ in 0..5 {
        for job in &jobs {
            let mut tx = sqlx::Acquire::begin(&mut *conn).await.unwrap();
            queue::enqueue(&mut tx, &policy, std::slice::from_ref(job))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
    let single = t.elapsed().as_secs_f64() / 5.0;
    (batched, single)
}

/// Enqueue-to-start at `rate` jobs a second (for 10 s in a full run), each its own transaction
/// followed by a Redis nudge, into an idle worker: p50 and p99 in milliseconds.
async fn latency(db: &str, pool: &PgPool, redis: &TempRedis, rate: f64, size: Size) -> (f64, f64) {
    let mut cfg = config(db, Some(&redis.url()));
    cfg.database.pool.max_connections = 20;
    let state = AppState::build_without_api(cfg).unwrap();
    let stop = CancellationToken::new();
    state.spawn_background(stop.clone());
    let mut wcfg = bench_worker("latency");
    // The poll is the fallback; the wake-up is what is measured.
    wcfg.poll = Duration::from_secs(1);
    let task = tokio::spawn(worker::run(
        state.clone(),
        wcfg,
        handlers::standard(),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let policy = Policy::default();
    let every = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval(every);
    let prefix = state.config.cache.key_prefix.clone();
    let end = Instant::now() + size.latency_for;
    let job = NewJob::new(JobKind::Noop, json!({}));
    let enqueuers = Arc::new(tokio::sync::Semaphore::new(8));
    while Instant::now() < end {
        tick.tick().await;
        let (pool, policy, job, state, prefix) = (
            pool.clone(),
            policy.clone(),
            job.clone(),
            state.clone(),
            prefix.clone(),
        );
        let permit = enqueuers.clone().acquire_owned().await.unwrap();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            queue::enqueue(&mut tx, &policy, &[job]).await.unwrap();
            tx.commit().await.unwrap();
            wake::nudge(state.cache.redis(), &prefix, queue::DEFAULT_QUEUE).await;
            drop(permit);
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut waits: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM first_started_at - enqueued_at)::float8 * 1000 FROM jobs
          WHERE first_started_at IS NOT NULL",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    stop.cancel();
    task.await.unwrap();
    waits.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| waits[((waits.len() as f64 * q) as usize).min(waits.len() - 1)];
    (at(0.5), at(0.99))
}

/// What the `jobs` table looks like after a wave of churn.
struct Upkeep {
    table_kib: i64,
    dead_rows: i64,
    autovacuums: i64,
    hot_update_share: f64,
}

/// Table upkeep under churn: `waves` of `per_wave` no-op jobs run through the worker and purged
/// (finished jobs deleted at once), on `db` as migrated or, with `defaults`, with `jobs` reset to
/// PostgreSQL's storage and autovacuum defaults (the reference). The table after each wave.
async fn churn(
    db: &str,
    pool: &PgPool,
    defaults: bool,
    waves: usize,
    per_wave: usize,
) -> Vec<Upkeep> {
    if defaults {
        sqlx::query(
            "ALTER TABLE jobs RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold,
                                    autovacuum_analyze_scale_factor, autovacuum_vacuum_cost_delay,
                                    fillfactor)",
        )
        .execute(pool)
        .await
        .unwrap();
    }
    let size = Size {
        jobs: per_wave,
        latency_for: Duration::ZERO,
    };
    let mut out = Vec::new();
    for _ in 0..waves {
        through_worker(db, pool, size).await;
        while queue::purge_finished(pool, Duration::ZERO).await.unwrap() > 0 {}
        // Time for autovacuum (its naptime is set to 1 s for this phase) to see the wave.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (table_kib, dead_rows, autovacuums, hot, updates): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT pg_table_size('jobs') / 1024, n_dead_tup, autovacuum_count, n_tup_hot_upd,
                        n_tup_upd
                   FROM pg_stat_user_tables WHERE relname = 'jobs'",
            )
            .fetch_one(pool)
            .await
            .unwrap();
        out.push(Upkeep {
            table_kib,
            dead_rows,
            autovacuums,
            hot_update_share: hot as f64 / updates.max(1) as f64,
        });
    }
    out
}

fn print_churn(label: &str, waves: &[Upkeep]) {
    println!("{label}");
    for (i, w) in waves.iter().enumerate() {
        println!(
            "  wave {}: table {:>6} KiB, dead rows {:>6}, autovacuums {:>2}, HOT updates {:>4.0} %",
            i + 1,
            w.table_kib,
            w.dead_rows,
            w.autovacuums,
            w.hot_update_share * 100.0
        );
    }
}

fn summary(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    format!("{:.1} ({:.1}-{:.1})", s[s.len() / 2], s[0], s[s.len() - 1])
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (reps, size) = if full {
        let reps = std::env::args()
            .skip(1)
            .find_map(|a| a.parse().ok())
            .unwrap_or(3);
        let size = Size {
            jobs: 20_000,
            latency_for: Duration::from_secs(10),
        };
        (reps, size)
    } else {
        let size = Size {
            jobs: 200,
            latency_for: Duration::from_secs(1),
        };
        (1, size)
    };
    kybctl::tls::ensure_crypto_provider();
    let pg = TempPostgres::start().expect("PostgreSQL");
    let redis = TempRedis::start().expect("Redis");
    let (mut raw, mut worked, mut batched, mut single, mut p50, mut p99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for rep in 1..=reps {
        let (_, pool) = fresh(&pg).await;
        raw.push(raw_loop(&pool, size).await);
        let (db, pool) = fresh(&pg).await;
        worked.push(through_worker(&db, &pool, size).await);
        let (_, pool) = fresh(&pg).await;
        let (b, s) = enqueue_costs(&pool).await;
        batched.push(b * 1000.0);
        single.push(s * 1000.0);
        let (db, pool) = fresh(&pg).await;
        let (a, z) = latency(&db, &pool, &redis, worked[rep - 1] / 2.0, size).await;
        p50.push(a);
        p99.push(z);
        eprintln!(
            "rep {rep}: raw {:.0} jobs/s, worker {:.0} jobs/s, enqueue 100: {:.1} ms batched, {:.1} ms single; at {:.0} jobs/s p50 {:.1} ms p99 {:.1} ms",
            raw[rep - 1], worked[rep - 1], batched[rep - 1], single[rep - 1], worked[rep - 1] / 2.0, a, z
        );
    }
    println!(
        "\n{reps} reps, medians (min-max); {CONCURRENCY} slots / loops, {} no-op jobs",
        size.jobs
    );
    println!("raw claim-and-complete loop   {} jobs/s", summary(&raw));
    println!("worker, no-op jobs            {} jobs/s", summary(&worked));
    println!("enqueue 100, one statement    {} ms", summary(&batched));
    println!("enqueue 100, one by one       {} ms", summary(&single));
    println!(
        "enqueue-to-start p50          {} ms (at half the worker's rate, Redis wake-up)",
        summary(&p50)
    );
    println!("enqueue-to-start p99          {} ms", summary(&p99));
    if full {
        // Upkeep: its own PostgreSQL, autovacuum waking every second so that a short run shows what
        // a long one would (the default naptime is a minute).
        let pg = TempPostgres::start_with(&["autovacuum_naptime=1s"]).expect("PostgreSQL");
        let (waves, per_wave) = (5, size.jobs);
        let (db, pool) = fresh(&pg).await;
        let ours = churn(&db, &pool, false, waves, per_wave).await;
        let (db, pool) = fresh(&pg).await;
        let reference = churn(&db, &pool, true, waves, per_wave).await;
        println!("\njobs table under churn: {waves} waves of {per_wave} jobs run and purged");
        print_churn(
            "the migrations' settings (vacuum at 1 % + 1,000 rows, no cost delay)",
            &ours,
        );
        print_churn("PostgreSQL's defaults (the reference)", &reference);
    }
    let ratio = median(&worked) / median(&raw);
    let speedup = median(&single) / median(&batched);
    println!("\ntarget                                   measured  wanted");
    println!(
        "worker / raw loop                        {ratio:8.2}  >= 0.6  {}",
        if ratio >= 0.6 { "met" } else { "MISSED" }
    );
    println!(
        "batched / single enqueue speed-up        {speedup:8.1}  >= 10   {}",
        if speedup >= 10.0 { "met" } else { "MISSED" }
    );
    println!(
        "enqueue-to-start p50 (ms)                {:8.1}  <= 20   {}",
        median(&p50),
        if median(&p50) <= 20.0 {
            "met"
        } else {
            "MISSED"
        }
    );
    println!(
        "enqueue-to-start p99 (ms)                {:8.1}  <= 200  {}",
        median(&p99),
        if median(&p99) <= 200.0 {
            "met"
        } else {
            "MISSED"
        }
    );
}
