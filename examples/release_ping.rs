//! What sqlx's pool costs per query on top of the query: a `PgPool` pings every connection it takes
//! back (a Sync and a wait for ReadyForQuery, `PoolConnection::return_to_pool`), one more round trip
//! per statement, with no setting to turn it off. This runs the service's merchant read by id from 64
//! tasks over 16 connections, once through a `PgPool` and once over 16 connections handed out without
//! the ping, and prints queries per second for each (BENCHMARKS.md, issue 9).
//!
//! Usage: `release_ping DATABASE_URL MERCHANT_ID [SECONDS]` against a migrated database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection};
use uuid::Uuid;

const READ: &str =
    "SELECT m.id, m.name, m.description, m.website, m.country, m.declared_mcc, m.status,
        m.version, m.created_at, m.updated_at, m.industry_id, m.mcc, m.confidence_score,
        m.classification_method, m.matched_terms, m.alternatives
   FROM merchants m WHERE m.id = $1";
const TASKS: usize = 64;
const CONNECTIONS: u32 = 16;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(url), Some(id)) = (args.get(1), args.get(2)) else {
        return Err("usage: release_ping DATABASE_URL MERCHANT_ID [SECONDS]".into());
    };
    let id: Uuid = id.parse()?;
    let secs: u64 = args.get(3).map_or(Ok(10), |s| s.parse())?;
    for mode in ["pool", "no-ping"] {
        let qps = run(url, id, mode, Duration::from_secs(secs)).await?;
        println!("{mode:8} {qps:8.0} queries/s");
    }
    Ok(())
}

async fn run(
    url: &str,
    id: Uuid,
    mode: &str,
    length: Duration,
) -> Result<f64, Box<dyn std::error::Error>> {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + length;
    let mut tasks = tokio::task::JoinSet::new();
    if mode == "pool" {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .test_before_acquire(false)
            .connect(url)
            .await?;
        for _ in 0..TASKS {
            let (pool, done) = (pool.clone(), done.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    sqlx::query(READ).bind(id).fetch_optional(&pool).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, sqlx::Error>(())
            });
        }
    } else {
        // The smallest pool that hands a connection back as it is: a semaphore over a stack.
        let idle = Arc::new(Mutex::new(Vec::new()));
        for _ in 0..CONNECTIONS {
            let conn = PgConnection::connect(url).await?;
            idle.lock().expect("not poisoned").push(conn);
        }
        let permits = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS as usize));
        for _ in 0..TASKS {
            let (idle, permits, done) = (idle.clone(), permits.clone(), done.clone());
            tasks.spawn(async move {
                while Instant::now() < until {
                    let _permit = permits.acquire().await.expect("never closed");
                    let mut conn = idle
                        .lock()
                        .expect("not poisoned")
                        .pop()
                        .expect("one per permit");
                    sqlx::query(READ).bind(id).fetch_optional(&mut conn).await?;
                    idle.lock().expect("not poisoned").push(conn);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, sqlx::Error>(())
            });
        }
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / length.as_secs_f64())
}
