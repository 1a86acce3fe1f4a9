//! Pools by role against a real streaming replica, primary outages, and sharding over two databases.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{business, config, eventually, migrated_db_on, Service};
use futures::future::join_all;
use futures::FutureExt;
use kybctl::config::{ReadYourWrites, Secret};
use kybctl::db_error::DbError;
use kybctl::local::TempPostgres;
use kybctl::service::db::{Role, Serving, ShardPools};
use kybctl::service::metrics::Metrics;
use reqwest::StatusCode;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

async fn count(pool: PgPool, name: String) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM merchants WHERE name = $1")
        .bind(name)
        .fetch_one(&pool)
        .await
}

async fn insert(primary: &PgPool, name: &str) {
    sqlx::query("INSERT INTO merchants (id, name) VALUES ($1, $2)")
        .bind(uuid::Uuid::now_v7())
        .bind(name)
        .execute(primary)
        .await
        .unwrap();
}

fn shard(primary: &str, replica: &str, ryw: ReadYourWrites) -> ShardPools {
    let mut cfg = config(primary, None).database;
    cfg.read_your_writes = ryw;
    ShardPools::connect_lazy(
        "s",
        &Secret::new(primary),
        &[Secret::new(replica)],
        None,
        &cfg,
        Serving::Api,
        &Metrics::new().db_read_batches,
    )
    .unwrap()
}

/// Reads go to the replica; read-your-writes sends a just-written key to the primary while the replica
/// has not replayed it; a dead replica falls back to the primary.
#[tokio::test]
async fn replica_routing_read_your_writes_and_fallback() {
    let primary = TempPostgres::start().unwrap();
    let url = migrated_db_on(&primary).await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let mut replica = primary.replica().unwrap();
    let shard = shard(&url, &replica.url(&db), ReadYourWrites::default());
    let admin_replica = PgPool::connect(&replica.url(&db)).await.unwrap();

    let (_, role) = shard.read(None, |p| count(p, "x".into())).await.unwrap();
    assert_eq!(role, Role::Replica);

    // Freeze replay on the replica: it now serves stale data.
    sqlx::query("SELECT pg_wal_replay_pause()")
        .execute(&admin_replica)
        .await
        .unwrap();
    insert(&shard.primary, "fresh").await;
    shard.note_write("merchant:fresh").await;
    let (n, role) = shard
        .read(Some("merchant:fresh"), |p| count(p, "fresh".into()))
        .await
        .unwrap();
    assert_eq!(
        (n, role),
        (1, Role::Primary),
        "the writer must read its write"
    );
    let (n, role) = shard
        .read(None, |p| count(p, "fresh".into()))
        .await
        .unwrap();
    assert_eq!(
        (n, role),
        (0, Role::Replica),
        "other reads may be stale: proves the replica is behind"
    );
    sqlx::query("SELECT pg_wal_replay_resume()")
        .execute(&admin_replica)
        .await
        .unwrap();
    let caught_up = eventually(Duration::from_secs(10), || async {
        matches!(
            shard
                .read(Some("merchant:fresh"), |p| count(p, "fresh".into()))
                .await,
            Ok((1, Role::Replica))
        )
    })
    .await;
    assert!(
        caught_up,
        "once replayed, the replica serves the writer again"
    );
    admin_replica.close().await;

    // Replica gone: reads still succeed, from the primary.
    replica.kill();
    let (n, role) = shard
        .read(None, |p| count(p, "fresh".into()))
        .await
        .unwrap();
    assert_eq!((n, role), (1, Role::Primary));
}

#[tokio::test]
async fn primary_window_rule() {
    let primary = TempPostgres::start().unwrap();
    let url = migrated_db_on(&primary).await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let replica = primary.replica().unwrap();
    let shard = shard(
        &url,
        &replica.url(&db),
        ReadYourWrites::PrimaryWindow {
            window: Duration::from_millis(500),
        },
    );
    shard.note_write("k").await;
    let (_, role) = shard
        .read(Some("k"), |p| count(p, "k".into()))
        .await
        .unwrap();
    assert_eq!(role, Role::Primary);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (_, role) = shard
        .read(Some("k"), |p| count(p, "k".into()))
        .await
        .unwrap();
    assert_eq!(role, Role::Replica);
}

/// The service with a replica: creating then reading a merchant always sees it.
#[tokio::test]
async fn service_reads_its_writes_through_the_replica_pool() {
    let primary = TempPostgres::start().unwrap();
    let url = migrated_db_on(&primary).await;
    let db = url.rsplit('/').next().unwrap().to_owned();
    let replica = primary.replica().unwrap();
    let mut cfg = config(&url, None);
    cfg.database.replica_urls = vec![Secret::new(replica.url(&db))];
    let s = Service::start(cfg).await;
    for i in 0..20 {
        let m: Value = s
            .post_json(
                "/v1/merchants",
                &business(&format!("Cafe {i}"), "coffee shop"),
            )
            .await
            .json()
            .await
            .unwrap();
        let r = s
            .http
            .get(s.url(&format!("/v1/merchants/{}", m["id"].as_str().unwrap())))
            .header("cache-control", "no-cache")
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "merchant {i} not visible right after creation"
        );
    }
    let m = s.metrics().await;
    assert!(m.contains("role=\"replica\""), "{m}");
}

#[tokio::test]
async fn primary_outage_answers_503_and_recovers() {
    let mut pg = TempPostgres::start().unwrap();
    let url = migrated_db_on(&pg).await;
    let s = Service::start(config(&url, None)).await;
    assert_eq!(s.get("/ready").await.status(), StatusCode::OK);
    pg.stop();
    let down = eventually(Duration::from_secs(10), || async {
        s.get("/ready").await.status() == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(down, "/ready must fail while the primary is down");
    let r = s
        .post_json("/v1/merchants", &business("Down Diner", "restaurant"))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "5");
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = s
        .http
        .get(s.url(&format!("/v1/merchants/{}", Uuid::now_v7())))
        .header("cache-control", "no-store")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "a read of the primary"
    );
    assert_eq!(
        s.get("/health").await.status(),
        StatusCode::OK,
        "liveness stays up"
    );
    // Classification needs no database row: still served.
    assert_eq!(
        s.post_json("/v1/classifications", &business("Up Diner", "restaurant"))
            .await
            .status(),
        StatusCode::OK
    );

    pg.restart().unwrap();
    let up = eventually(Duration::from_secs(15), || async {
        s.get("/ready").await.status() == StatusCode::OK
    })
    .await;
    assert!(up, "/ready must recover by itself");
    let r = s
        .post_json("/v1/merchants", &business("Back Diner", "restaurant"))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Pooled connections are used without a ping while they were used moments ago (`pools`); a restart
/// under steady traffic must still leave none of its dead connections in use once the server is back.
#[tokio::test]
async fn a_restart_under_steady_reads_leaves_no_dead_connection_in_use() {
    let mut pg = TempPostgres::start().unwrap();
    let url = migrated_db_on(&pg).await;
    let s = Service::start(config(&url, None)).await;
    let created: serde_json::Value = s
        .post_json("/v1/merchants", &business("Steady Diner", "restaurant"))
        .await
        .json()
        .await
        .unwrap();
    let read = s.url(&format!(
        "/v1/merchants/{}",
        created["id"].as_str().unwrap()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    // Reads that skip the cache, so each one takes a pooled connection, every few milliseconds.
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (http, read, stop) = (s.http.clone(), read.clone(), stop.clone());
            tokio::spawn(async move {
                let mut statuses = vec![];
                while !stop.load(Ordering::Relaxed) {
                    let r = http
                        .get(&read)
                        .header("cache-control", "no-cache")
                        .send()
                        .await
                        .unwrap();
                    statuses.push(r.status().as_u16());
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                statuses
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop();
    pg.restart().unwrap();
    let up = eventually(Duration::from_secs(15), || async {
        s.get("/ready").await.status() == StatusCode::OK
    })
    .await;
    assert!(up, "/ready must recover by itself");
    // The readers go on through the recovery; what follows must all succeed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut after_recovery = vec![];
    for _ in 0..400 {
        let r = s
            .http
            .get(&read)
            .header("cache-control", "no-cache")
            .send()
            .await
            .unwrap();
        after_recovery.push(r.status().as_u16());
    }
    stop.store(true, Ordering::Relaxed);
    let mut during = vec![];
    for r in readers {
        during.extend(r.await.unwrap());
    }
    let failed_during = during.iter().filter(|s| **s != 200).count();
    eprintln!(
        "restart under reads: {} reads by the steady readers, {failed_during} failed (the outage)",
        during.len()
    );
    assert!(
        after_recovery.iter().all(|s| *s == 200),
        "reads after the recovery: {:?}",
        after_recovery
            .iter()
            .filter(|s| **s != 200)
            .collect::<Vec<_>>()
    );
}

/// Ends the server process behind one connection, as an administrator or a failover would.
async fn terminate(admin: &PgPool, pid: i32) {
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(admin)
        .await
        .unwrap();
}

/// One-statement requests take primary connections from the direct pool, which hands them back
/// without sqlx's ping (`db::direct`): finished statements return their connection for reuse, one cut
/// short mid-flight closes it (its place in the protocol is unknown), and one the server dropped is
/// closed on the statement that finds out, not returned.
#[tokio::test]
async fn the_direct_pool_reuses_finished_connections_and_closes_interrupted_ones() {
    let pg = TempPostgres::start().unwrap();
    let url = migrated_db_on(&pg).await;
    let shard = shard(&url, &url, ReadYourWrites::default());
    let direct = shard
        .direct
        .as_ref()
        .expect("the API service gives one-statement requests a pool");
    let one = |sql: &'static str| {
        let shard = &shard;
        async move {
            let mut c = shard.primary_conn().await.unwrap();
            let r = sqlx::query_scalar::<_, i32>(sql).fetch_one(c.conn()).await;
            c.finish(r)
        }
    };

    for _ in 0..10 {
        assert_eq!(one("SELECT 1").await.unwrap(), 1);
    }
    assert_eq!(
        direct.stats(),
        (1, 1),
        "ten statements in a row, one connection"
    );

    let mut c = shard.primary_conn().await.unwrap();
    let slow = sqlx::query("SELECT pg_sleep(5)").execute(c.conn());
    assert!(tokio::time::timeout(Duration::from_millis(200), slow)
        .await
        .is_err());
    drop(c);
    assert_eq!(
        direct.stats(),
        (0, 0),
        "the interrupted connection is closed, not returned"
    );
    assert_eq!(one("SELECT 2").await.unwrap(), 2, "a new connection serves");

    let pid = one("SELECT pg_backend_pid()").await.unwrap();
    let admin = PgPool::connect(&url).await.unwrap();
    terminate(&admin, pid).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Used moments ago, so taken without a ping: the statement finds the connection gone.
    let e = one("SELECT 3").await.unwrap_err();
    assert!(kybctl::db_error::is_connection_error(&e), "{e}");
    assert_eq!(direct.stats(), (0, 0), "the dead connection is closed");
    assert_eq!(one("SELECT 4").await.unwrap(), 4);

    // A connection that rested is asked first, so a server-side drop costs no statement.
    let pid = one("SELECT pg_backend_pid()").await.unwrap();
    terminate(&admin, pid).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(one("SELECT 5").await.unwrap(), 5);
}

#[tokio::test]
async fn not_ready_before_migrations() {
    let pg = common::pg();
    let name = common::unique("t");
    pg.create_database(&name).unwrap();
    let s = Service::start(config(&pg.url(&name), None)).await;
    let r = s.get("/ready").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("migrate up"));
}

/// Two databases as two hash shards: merchants land where the router says, and every API read finds
/// them; listing gathers both shards.
#[tokio::test]
async fn hash_sharding_over_two_databases() {
    let pg = common::pg();
    let a = migrated_db_on(pg).await;
    let b = migrated_db_on(pg).await;
    let cfg = common::sharded(config(&a, None), &[&a, &b]);
    let router =
        kybctl::service::db::shard::ShardRouter::from_config(&cfg.database.sharding).unwrap();
    let s = Service::start(cfg).await;
    let mut ids = Vec::new();
    for i in 0..16 {
        let m: Value = s
            .post_json(
                "/v1/merchants",
                &business(&format!("Shard Shop {i}"), "bakery"),
            )
            .await
            .json()
            .await
            .unwrap();
        ids.push(m["id"].as_str().unwrap().to_owned());
    }
    let pools = [
        PgPool::connect(&a).await.unwrap(),
        PgPool::connect(&b).await.unwrap(),
    ];
    for id in &ids {
        let home = router.route(id);
        let uuid: uuid::Uuid = id.parse().unwrap();
        for (i, pool) in pools.iter().enumerate() {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM merchants WHERE id = $1")
                .bind(uuid)
                .fetch_one(pool)
                .await
                .unwrap();
            assert_eq!(n, i64::from(i == home), "merchant {id} on shard {i}");
        }
        assert_eq!(
            s.get(&format!("/v1/merchants/{id}")).await.status(),
            StatusCode::OK
        );
        let r = s
            .http
            .post(s.url(&format!("/v1/merchants/{id}/risk-assessments")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let homes: std::collections::HashSet<usize> = ids.iter().map(|id| router.route(id)).collect();
    assert_eq!(homes.len(), 2, "16 ids should use both shards");
    let page: Value = s.get("/v1/merchants?limit=100").await.json().await.unwrap();
    let mut listed: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    let mut expected = ids.clone();
    listed.sort();
    expected.sort();
    assert_eq!(listed, expected);
    // Paging across shards: pages of 5 cover all 16 in order, once each.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("/v1/merchants?limit=5&cursor={c}"),
            None => "/v1/merchants?limit=5".into(),
        };
        let p: Value = s.get(&q).await.json().await.unwrap();
        seen.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["id"].as_str().unwrap().to_owned()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(
        seen, ids,
        "ids are time-ordered, so pages follow creation order"
    );
}

/// The industry report is exact across shards: an industry 101st on every shard (2 merchants each)
/// is first overall (4), above 200 industries with 3 merchants on one shard only. Merging each
/// shard's top 100 would leave it out entirely.
#[tokio::test]
async fn the_industry_report_is_exact_across_shards() {
    let pg = common::pg();
    let urls = [migrated_db_on(pg).await, migrated_db_on(pg).await];
    let cfg = common::sharded(config(&urls[0], None), &[&urls[0], &urls[1]]);
    for (url, prefix) in urls.iter().zip(["A", "B"]) {
        let pool = PgPool::connect(url).await.unwrap();
        // 100 industries of this shard's own with 3 merchants each, then the shared one with 2.
        sqlx::query(
            "INSERT INTO merchants (id, name, industry_id, confidence_score)
             SELECT gen_random_uuid(), 'm', $1 || lpad(i::text, 3, '0'), 0.5
               FROM generate_series(1, 100) i, generate_series(1, 3)
             UNION ALL
             SELECT gen_random_uuid(), 'z', 'Z999', 0.9 FROM generate_series(1, 2)",
        )
        .bind(prefix)
        .execute(&pool)
        .await
        .unwrap();
    }
    let s = Service::start(cfg).await;
    let report: Value = s.get("/v1/reports/industries").await.json().await.unwrap();
    let rows = report.as_array().unwrap();
    assert_eq!(rows.len(), 100, "the top 100");
    assert_eq!(rows[0]["naics_code"], "Z999", "{:?}", rows[0]);
    assert_eq!(rows[0]["merchants"], 4);
    assert_eq!(rows[1]["merchants"], 3);
    assert_eq!(rows[1]["naics_code"], "A001", "ties by code");
    s.stop().await;
}

/// A cluster's own access rules (`start_with_hba`) decide who gets in, and still do after a restart
/// (PostgreSQL reads `pg_hba.conf` again when it starts): they live in the cluster's directory.
#[tokio::test]
async fn a_clusters_access_rules_hold_across_a_restart() {
    let hba = "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 reject\n";
    let mut pg = TempPostgres::start_with_hba(&[], Some(hba)).unwrap();
    let admin = PgPool::connect(&pg.url("postgres")).await.unwrap();
    sqlx::query("CREATE ROLE outsider LOGIN")
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    let outsider = format!("postgres://outsider@127.0.0.1:{}/postgres", pg.port());
    for round in ["before", "after"] {
        let err = PgPool::connect(&outsider).await.unwrap_err().to_string();
        assert!(
            err.contains("pg_hba.conf rejects"),
            "{round} the restart: {err}"
        );
        let ok = PgPool::connect(&pg.url("postgres")).await.unwrap();
        ok.close().await;
        if round == "before" {
            pg.restart().unwrap();
        }
    }
}

/// The smallest pools a pod can be given still serve. The cache-invalidation listener holds one
/// main-pool connection for good, so the main pool keeps two whatever the direct pool asks: with
/// one left (`direct_max_connections` one short of the pool, as the setting's documentation
/// allowed), the listener took it and the service never became ready.
#[tokio::test]
async fn the_smallest_pools_serve_transactions_beside_the_listener() {
    let url = common::migrated_db().await;
    for (max, direct) in [(2, None), (16, Some(15))] {
        let mut cfg = config(&url, None);
        cfg.database.pool.max_connections = max;
        cfg.database.pool.min_connections = 1;
        cfg.database.pool.direct_max_connections = direct;
        let s = Service::start(cfg).await;
        let ready = eventually(Duration::from_secs(10), || async {
            s.get("/ready").await.status() == StatusCode::OK
        })
        .await;
        assert!(
            ready,
            "max {max}, direct {direct:?}: {:?}",
            s.get("/ready").await.text().await
        );
        let created: Value = s
            .post_json(
                "/v1/merchants",
                &business("Small Pool Bakery", "bakery bread"),
            )
            .await
            .json()
            .await
            .unwrap();
        // An update is a transaction on the main pool.
        let id = created["id"].as_str().unwrap();
        let r = s
            .http
            .patch(s.url(&format!("/v1/merchants/{id}")))
            .json(&serde_json::json!({"status": "suspended"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK, "max {max}, direct {direct:?}");
        s.stop().await;
    }
}

/// The `kyb_db_merchant_read_batch_size` histogram of shard `s`: (statements, reads).
fn read_batches(metrics: &Metrics) -> (u64, u64) {
    let text = metrics.encode();
    let value = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}{{shard=\"s\"}} ")))
            .map(|v| v.parse::<f64>().unwrap() as u64)
            .unwrap_or_else(|| panic!("{name} in\n{text}"))
    };
    (
        value("kyb_db_merchant_read_batch_size_count"),
        value("kyb_db_merchant_read_batch_size_sum"),
    )
}

/// A shard of the API service on `url` alone (no replica), `direct` connections for its read workers
/// (`None`: the default share), counting its batches in `metrics`.
fn reading_shard(id: &str, url: &str, direct: Option<u32>, metrics: &Metrics) -> ShardPools {
    let mut cfg = config(url, None).database;
    cfg.pool.direct_max_connections = direct;
    ShardPools::connect_lazy(
        id,
        &Secret::new(url),
        &[],
        None,
        &cfg,
        Serving::Api,
        &metrics.db_read_batches,
    )
    .unwrap()
}

/// Reads by id from the primary share statements while every read worker is busy
/// (`db::merchant_reads`): many reads at once, of merchants that exist, of one that does not and of
/// one id asked for many times, each get their own answer, in fewer statements than reads. A read
/// given up on leaves the others alone. A statement that fails (a renamed column, a connection the
/// server dropped) fails each read it served, and the workers serve the next reads.
#[tokio::test]
async fn concurrent_primary_reads_share_statements_and_each_gets_its_own_answer() {
    let url = common::migrated_db().await;
    let metrics = Metrics::new();
    let shard = reading_shard("s", &url, None, &metrics);
    let admin = PgPool::connect(&url).await.unwrap();
    let mut ids = vec![];
    for i in 0..50 {
        let id = Uuid::now_v7();
        sqlx::query("INSERT INTO merchants (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("Batch {i}"))
            .execute(&admin)
            .await
            .unwrap();
        ids.push(id);
    }
    let missing = Uuid::now_v7();
    let asked: Vec<Uuid> = (0..300)
        .map(|i| match i % 7 {
            0 => missing,
            1 => ids[0],
            _ => ids[i % 50],
        })
        .collect();
    let answers = join_all(asked.iter().map(|id| shard.merchant(*id))).await;
    for (id, answer) in asked.iter().zip(answers) {
        let found = answer.unwrap();
        if *id == missing {
            assert!(found.is_none(), "{found:?}");
        } else {
            let m = found.expect("an existing merchant");
            let n = ids.iter().position(|i| i == id).unwrap();
            assert_eq!((m.id, m.business.name), (*id, format!("Batch {n}")));
        }
    }
    let (statements, reads) = read_batches(&metrics);
    assert_eq!(reads, 300, "every read counted");
    assert!(
        statements < 300 / 4,
        "300 reads at once on 5 workers: {statements} statements"
    );

    // Given up on once it is queued: the read is dropped, and the workers serve the next ones.
    assert!(
        shard.merchant(ids[1]).now_or_never().is_none(),
        "polled once, queued, then dropped"
    );
    assert_eq!(
        shard.merchant(ids[2]).await.unwrap().map(|m| m.id),
        Some(ids[2])
    );

    // A statement that fails fails each read it served, and the workers go on. (PostgreSQL analyses a
    // prepared statement again when its table changes, so the renamed column fails it.)
    sqlx::query("ALTER TABLE merchants RENAME COLUMN name TO name_away")
        .execute(&admin)
        .await
        .unwrap();
    let answers = join_all(ids[..20].iter().map(|id| shard.merchant(*id))).await;
    assert!(
        answers.iter().all(|a| matches!(a, Err(DbError::Failed(_)))),
        "{answers:?}"
    );
    sqlx::query("ALTER TABLE merchants RENAME COLUMN name_away TO name")
        .execute(&admin)
        .await
        .unwrap();
    let answers = join_all(ids[..20].iter().map(|id| shard.merchant(*id))).await;
    for (id, answer) in ids[..20].iter().zip(answers) {
        assert!(matches!(&answer, Ok(Some(m)) if m.id == *id), "{answer:?}");
    }

    // One worker on one connection, which the server then drops: used moments ago, the connection
    // is taken without a ping, so the batch fails as unavailable; rested, it is asked first and
    // replaced, so the next batch is served.
    let one = reading_shard("one", &url, Some(1), &metrics);
    assert!(one.merchant(ids[3]).await.unwrap().is_some());
    sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&admin)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answers = join_all(ids[..20].iter().map(|id| one.merchant(*id))).await;
    assert!(
        answers
            .iter()
            .all(|a| matches!(a, Err(DbError::Unavailable(_)))),
        "{answers:?}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let answers = join_all(ids[..20].iter().map(|id| one.merchant(*id))).await;
    for (id, answer) in ids[..20].iter().zip(answers) {
        assert!(matches!(&answer, Ok(Some(m)) if m.id == *id), "{answer:?}");
    }
}

/// Stored enums are PostgreSQL text: they bind as their names, read back, and a name the enum does
/// not know is an error that says which, not a panic or a default.
#[tokio::test]
async fn text_enums_bind_read_back_and_refuse_unknown_names() {
    use kybctl::service::model::{MerchantStatus, RiskLevel};

    let pg = TempPostgres::start().unwrap();
    let pool = PgPool::connect(&pg.url("postgres")).await.unwrap();
    for status in [
        MerchantStatus::Pending,
        MerchantStatus::Active,
        MerchantStatus::Suspended,
        MerchantStatus::Closed,
    ] {
        let (text, back): (String, MerchantStatus) = sqlx::query_as("SELECT $1::text, $1")
            .bind(status)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!((text.as_str(), back), (status.as_str(), status));
    }
    let level: Option<RiskLevel> = sqlx::query_scalar("SELECT 'critical'::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(level, Some(RiskLevel::Critical));
    let err = sqlx::query_scalar::<_, RiskLevel>("SELECT 'severe'::text")
        .fetch_one(&pool)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("\"severe\" is not a RiskLevel"), "{err}");
}
