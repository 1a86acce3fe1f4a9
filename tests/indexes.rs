//! `kybctl db indexes apply|status|verify` against a real PostgreSQL: repair of an interrupted
//! concurrent build, writes during a build on a million rows, and hot queries using their indexes.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kybctl::schema::indexes::{self, ApplyOptions, Outcome, HOT_QUERIES, INDEXES};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

async fn valid(pool: &PgPool, index: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid WHERE c.relname = $1",
    )
    .bind(index)
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// 20,000 merchants over a few industries (one rare), each classified, two assessments each.
async fn seed(pool: &PgPool) {
    sqlx::raw_sql(
        "INSERT INTO merchants (id, name, status, industry_id, mcc, confidence_score, created_at)
         SELECT md5('m' || g)::uuid, 'Merchant ' || g,
                CASE WHEN g % 10 = 0 THEN 'suspended' ELSE 'active' END,
                CASE WHEN g % 997 = 0 THEN '311811'
                     ELSE (ARRAY['722511', '541511', '445110', '812111'])[1 + g % 4] END,
                '5812', (g % 100) / 100.0, now() - g * interval '1 minute'
           FROM generate_series(1, 20000) g;
         INSERT INTO classifications (id, business_id, industry_id, mcc, confidence_score, classification_method)
         SELECT md5('c' || id)::uuid, id, industry_id, mcc, confidence_score, 'keyword' FROM merchants;
         INSERT INTO business_risk_assessments (id, business_id, risk_level, risk_score, factors, assessment_date)
         SELECT md5('r' || id || n)::uuid, id, (ARRAY['low', 'medium', 'high', 'critical'])[(1 + n + (g % 2) * 2)::int],
                0.5, '[]', now() - n * interval '1 day'
           FROM (SELECT id, row_number() OVER () AS g FROM merchants) m, generate_series(0, 1) n;
         ANALYZE;",
    )
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn verify_passes_on_seeded_data_and_apply_finds_everything_valid() {
    let url = common::migrated_db().await;
    let pool = PgPool::connect(&url).await.unwrap();
    seed(&pool).await;

    let out = common::kybctl(&["db", "indexes", "verify", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for q in HOT_QUERIES {
        assert!(stdout.contains(q.name), "{} missing from\n{stdout}", q.name);
    }
    let out = common::kybctl(&[
        "db",
        "indexes",
        "verify",
        "--database-url",
        &url,
        "-o",
        "json",
    ]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let queries = json[0]["queries"].as_array().unwrap();
    assert_eq!(queries.len(), HOT_QUERIES.len());
    for q in queries {
        assert_eq!(q["uses_index"], true, "{q}");
        assert!(q["plan"]["indexes"]
            .as_array()
            .unwrap()
            .contains(&q["index"].clone()));
    }

    let out = common::kybctl(&["db", "indexes", "apply", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for d in INDEXES {
        assert!(
            stdout.contains(&format!("shard default: {} already valid", d.name)),
            "{stdout}"
        );
    }
    let out = common::kybctl(&[
        "db",
        "indexes",
        "status",
        "--database-url",
        &url,
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for i in json[0]["indexes"].as_array().unwrap() {
        assert_eq!(i["state"], "valid", "{i}");
        assert!(i["size_bytes"].as_i64().unwrap() > 0, "{i}");
        assert!(i["scans"].as_i64().is_some());
    }
}

#[tokio::test]
async fn an_interrupted_concurrent_build_is_detected_and_rebuilt() {
    let url = common::migrated_db().await;
    let pool = PgPool::connect(&url).await.unwrap();
    let index = "idx_classifications_one_active";
    sqlx::raw_sql(
        "DROP INDEX idx_classifications_one_active;
         INSERT INTO merchants (id, name) VALUES ('00000000-0000-0000-0000-000000000001', 'Dup Bakery');
         INSERT INTO classifications (id, business_id, industry_id, confidence_score, classification_method)
         VALUES ('00000000-0000-0000-0000-0000000000a1', '00000000-0000-0000-0000-000000000001', '311811', 0.9, 'keyword'),
                ('00000000-0000-0000-0000-0000000000a2', '00000000-0000-0000-0000-000000000001', '311811', 0.8, 'keyword');",
    )
    .execute(&pool)
    .await
    .unwrap();
    // A unique concurrent build over duplicates fails in its validation phase and, like a cancelled or
    // timed-out build, leaves its index behind INVALID.
    let def = INDEXES.iter().find(|d| d.name == index).unwrap();
    let err = sqlx::raw_sql(sqlx::AssertSqlSafe(def.create_sql()))
        .execute(&pool)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("could not create unique index"),
        "{err}"
    );
    assert_eq!(valid(&pool, index).await, Some(false));

    let out = common::kybctl(&["db", "indexes", "status", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains(&format!("{index} is INVALID")), "{stderr}");

    // While the duplicates remain, apply fails naming the index (and the index stays unusable).
    let out = common::kybctl(&["db", "indexes", "apply", "--database-url", &url]);
    let (_, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains(index), "{stderr}");

    sqlx::query("DELETE FROM classifications WHERE id = '00000000-0000-0000-0000-0000000000a2'")
        .execute(&pool)
        .await
        .unwrap();
    let out = common::kybctl(&["db", "indexes", "apply", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("shard default: {index} rebuilt")),
        "{stdout}"
    );
    assert_eq!(valid(&pool, index).await, Some(true));
    let out = common::kybctl(&["db", "indexes", "status", "--database-url", &url]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_continue_during_a_concurrent_build_on_a_million_rows() {
    const ROWS: i64 = 1_000_000;
    let url = common::migrated_db().await;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    let rebuilt = [
        "idx_merchants_industry_id",
        "idx_merchants_status_id",
        "idx_merchants_created_industry",
    ];
    let load = Instant::now();
    sqlx::raw_sql(
        "DROP INDEX idx_merchants_industry_id, idx_merchants_status_id, idx_merchants_created_industry;
         INSERT INTO merchants (id, name, industry_id, created_at)
         SELECT md5(g::text)::uuid, 'Merchant ' || g, lpad((g % 1000)::text, 6, '7'),
                now() - g * interval '1 second'
           FROM generate_series(1, 1000000) g;
         ANALYZE merchants;",
    )
    .execute(&pool)
    .await
    .unwrap();
    eprintln!("loaded {ROWS} rows in {:?}", load.elapsed());

    // The service's write path during the build: single-row inserts, each its own transaction.
    let writer_pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut done = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                match sqlx::query(
                    "INSERT INTO merchants (id, name, industry_id) VALUES ($1, 'Live Write', '722511')",
                )
                .bind(uuid::Uuid::new_v4())
                .execute(&writer_pool)
                .await
                {
                    Ok(_) => done.push((started, started.elapsed())),
                    Err(e) => errors.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (done, errors)
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let build_start = Instant::now();
    let report = indexes::apply(&pool, &ApplyOptions::default())
        .await
        .unwrap();
    let build_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let (done, errors) = writer.await.unwrap();

    for a in &report {
        let expected = if rebuilt.contains(&a.name) {
            Outcome::Created
        } else {
            Outcome::AlreadyValid
        };
        assert_eq!(a.outcome, expected, "{}", a.name);
    }
    assert!(
        errors.is_empty(),
        "writes failed during the build: {errors:?}"
    );
    let during: Vec<Duration> = done
        .iter()
        .filter(|(t, _)| *t >= build_start && *t < build_end)
        .map(|(_, d)| *d)
        .collect();
    let slowest = during.iter().max().copied().unwrap_or_default();
    eprintln!(
        "build took {:?}; {} inserts during it, slowest {slowest:?}",
        build_end - build_start,
        during.len()
    );
    assert!(
        during.len() >= 20,
        "only {} inserts during the build",
        during.len()
    );
    assert!(
        slowest < Duration::from_secs(2),
        "an insert waited {slowest:?}"
    );
    for name in rebuilt {
        assert_eq!(valid(&pool, name).await, Some(true), "{name}");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM merchants")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, ROWS + done.len() as i64);
}
