//! Cache coherence across instances: a read never returns a merchant older than the last write
//! acknowledged before the read began, whichever instance wrote it and whichever answers the read.
//!
//! Two instances share one PostgreSQL, one Redis and a streaming replica whose replay is paused, so a
//! read that reaches the replica is as stale as it can be.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{business, config, eventually, metric, migrated_db_on, Service};
use kybctl::config::{Config, Secret};
use kybctl::local::{TempPostgres, TempRedis};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

/// A primary with a replica whose replay is paused once it holds `merchants` new merchants, and a
/// configuration for instances that read from that replica.
struct Rig {
    _primary: TempPostgres,
    _replica: TempPostgres,
    redis: TempRedis,
    config: Config,
    ids: Vec<String>,
}

impl Rig {
    async fn start(merchants: usize) -> (Self, Service, Service) {
        let primary = TempPostgres::start().unwrap();
        let url = migrated_db_on(&primary).await;
        let db = url.rsplit('/').next().unwrap().to_owned();
        let replica = primary.replica().unwrap();
        let redis = TempRedis::start().unwrap();
        let mut cfg = config(&url, Some(&redis.url()));
        cfg.database.replica_urls = vec![Secret::new(replica.url(&db))];
        cfg.redis.command_timeout = Duration::from_millis(500);
        let a = Service::start(cfg.clone()).await;
        let b = Service::start(cfg.clone()).await;
        a.wait_listening().await;
        b.wait_listening().await;
        let mut ids = Vec::new();
        for i in 0..merchants {
            let m: Value = a
                .post_json(
                    "/v1/merchants",
                    &business(&format!("Merchant {i}"), "coffee shop"),
                )
                .await
                .json()
                .await
                .unwrap();
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
        let replica_pool = PgPool::connect(&replica.url(&db)).await.unwrap();
        let replayed = eventually(Duration::from_secs(10), || async {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM merchants")
                .fetch_one(&replica_pool)
                .await
                .unwrap()
                == merchants as i64
        })
        .await;
        assert!(replayed, "the replica did not replay the new merchants");
        sqlx::query("SELECT pg_wal_replay_pause()")
            .execute(&replica_pool)
            .await
            .unwrap();
        replica_pool.close().await;
        let rig = Self {
            _primary: primary,
            _replica: replica,
            redis,
            config: cfg,
            ids,
        };
        (rig, a, b)
    }
}

/// A small deterministic generator (xorshift64*), so a failing run can be replayed from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

#[derive(Debug, Clone)]
struct Ack {
    merchant: usize,
    version: i64,
    status: String,
    at: Instant,
}

#[derive(Debug, Clone)]
struct Read {
    merchant: usize,
    began: Instant,
    version: i64,
    etag: String,
    status: String,
    cache: String,
    instance: usize,
}

async fn patch(s: &Service, id: &str, body: &Value) -> Option<Value> {
    let r = s
        .http
        .patch(s.url(&format!("/v1/merchants/{id}")))
        .json(body)
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::OK => Some(r.json().await.unwrap()),
        // Two writers met on one row; the loser changed nothing.
        StatusCode::PRECONDITION_FAILED => None,
        other => panic!("PATCH answered {other}: {}", r.text().await.unwrap()),
    }
}

async fn read(s: &Service, id: &str, fresh: bool) -> (Value, String, String) {
    let mut req = s.http.get(s.url(&format!("/v1/merchants/{id}")));
    if fresh {
        req = req.header("cache-control", "no-cache");
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let header = |name: &str| r.headers()[name].to_str().unwrap().to_owned();
    let (etag, cache) = (header("etag"), header("x-cache-status"));
    (r.json().await.unwrap(), etag, cache)
}

/// Every read against the writes acknowledged before it began; returns the violations.
fn check(acks: &[Ack], reads: &[Read]) -> Vec<String> {
    let mut by_version: HashMap<(usize, i64), &str> = HashMap::new();
    for a in acks {
        by_version.insert((a.merchant, a.version), &a.status);
    }
    let mut bad = Vec::new();
    for r in reads {
        let floor = acks
            .iter()
            .filter(|a| a.merchant == r.merchant && a.at < r.began)
            .map(|a| a.version)
            .max()
            .unwrap_or(1);
        if r.version < floor {
            bad.push(format!(
                "merchant {} read at version {} ({}, instance {}) after version {floor} was acknowledged",
                r.merchant, r.version, r.cache, r.instance
            ));
        }
        if r.etag != format!("\"v{}\"", r.version) {
            bad.push(format!(
                "ETag {} on a body at version {}",
                r.etag, r.version
            ));
        }
        if let Some(status) = by_version.get(&(r.merchant, r.version)) {
            if *status != r.status {
                bad.push(format!(
                    "merchant {} version {} served as {} but was written {status}",
                    r.merchant, r.version, r.status
                ));
            }
        }
    }
    bad
}

/// Concurrent writers and readers on both instances over a few merchants: thousands of operations,
/// each read checked against the model of acknowledged writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_read_is_older_than_a_write_acknowledged_before_it() {
    const MERCHANTS: usize = 12;
    const WRITERS: usize = 3;
    const READERS: usize = 8;
    const WRITES_EACH: usize = 150;
    let (rig, a, b) = Rig::start(MERCHANTS).await;
    let instances = Arc::new([a, b]);
    let ids = Arc::new(rig.ids.clone());
    let acks = Arc::new(Mutex::new(Vec::<Ack>::new()));
    let reads = Arc::new(Mutex::new(Vec::<Read>::new()));
    let writing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("seed {seed}");

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (instances, ids, acks) = (instances.clone(), ids.clone(), acks.clone());
        writers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for _ in 0..WRITES_EACH {
                let merchant = rng.below(ids.len());
                let s = &instances[rng.below(2)];
                let status = ["active", "suspended", "pending"][rng.below(3)];
                let body = if rng.below(5) == 0 {
                    json!({"status": status, "name": format!("Renamed {}", rng.below(1000))})
                } else {
                    json!({ "status": status })
                };
                if let Some(m) = patch(s, &ids[merchant], &body).await {
                    acks.lock().unwrap().push(Ack {
                        merchant,
                        version: m["version"].as_i64().unwrap(),
                        status: m["status"].as_str().unwrap().to_owned(),
                        at: Instant::now(),
                    });
                }
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (instances, ids, reads, writing) = (
            instances.clone(),
            ids.clone(),
            reads.clone(),
            writing.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut rng = Rng(seed ^ (r as u64 + 101).wrapping_mul(0xD1B5_4A32_D192_ED03));
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                let merchant = rng.below(ids.len());
                let instance = rng.below(2);
                let fresh = rng.below(4) == 0;
                let began = Instant::now();
                let (m, etag, cache) = read(&instances[instance], &ids[merchant], fresh).await;
                reads.lock().unwrap().push(Read {
                    merchant,
                    began,
                    version: m["version"].as_i64().unwrap(),
                    etag,
                    status: m["status"].as_str().unwrap().to_owned(),
                    cache,
                    instance,
                });
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    for r in readers {
        r.await.unwrap();
    }
    let (acks, reads) = (acks.lock().unwrap().clone(), reads.lock().unwrap().clone());
    let hits = reads.iter().filter(|r| r.cache.starts_with("HIT")).count();
    eprintln!(
        "{} writes acknowledged, {} reads ({hits} from a cache)",
        acks.len(),
        reads.len()
    );
    assert!(
        acks.len() >= WRITERS * WRITES_EACH / 2,
        "too few writes got through"
    );
    assert!(reads.len() >= 2000, "too few reads to say anything");
    assert!(
        hits * 2 >= reads.len(),
        "the caches served too few reads for the test to mean anything"
    );
    let bad = check(&acks, &reads);
    assert!(
        bad.is_empty(),
        "{} of {} reads broke the rule (seed {seed}):\n{}",
        bad.len(),
        reads.len(),
        bad[..bad.len().min(20)].join("\n")
    );
}

/// The case the rule exists for: 100 merchants, each read hot on B, suspended through A; B's next
/// read, and every one after it, says suspended.
#[tokio::test]
async fn a_suspension_is_seen_by_the_next_read_on_every_instance() {
    let (rig, a, b) = Rig::start(100).await;
    for id in &rig.ids {
        let path = format!("/v1/merchants/{id}");
        for _ in 0..3 {
            b.get(&path).await;
        }
        let (_, _, cache) = read(&b, id, false).await;
        assert!(
            cache.starts_with("HIT"),
            "B was not serving {id} from a cache"
        );
        let m = patch(&a, id, &json!({"status": "suspended"}))
            .await
            .unwrap();
        assert_eq!(m["status"], "suspended");
        for s in [&b, &a] {
            let (m, _, cache) = read(s, id, false).await;
            assert_eq!(
                m["status"], "suspended",
                "{id} served active ({cache}) after its suspension"
            );
        }
    }
}

/// A Redis that hangs and comes back with what it held: writes made meanwhile still win on every
/// instance, including one started after the outage that never heard of them; the records nobody
/// wrote meanwhile are still served from Redis (only what an instance failed to write is dropped).
#[tokio::test]
async fn a_frozen_redis_comes_back_without_serving_what_it_held() {
    let (rig, a, b) = Rig::start(6).await;
    let path = |id: &str| format!("/v1/merchants/{id}");
    for id in &rig.ids {
        b.get(&path(id)).await;
        assert!(read(&b, id, false).await.2.starts_with("HIT-L2"));
    }
    let (written, untouched) = rig.ids.split_at(3);
    rig.redis.freeze();
    for id in written {
        let m = patch(&a, id, &json!({"status": "suspended"}))
            .await
            .unwrap();
        assert_eq!(m["version"], 2);
        for s in [&a, &b] {
            let (m, _, _) = read(s, id, false).await;
            assert_eq!(m["version"], 2, "stale read during the outage");
        }
    }
    assert_eq!(metric(&a.metrics().await, "kyb_cache_degraded "), 1.0);
    rig.redis.thaw();
    let recovered = eventually(Duration::from_secs(10), || async {
        metric(&a.metrics().await, "kyb_cache_degraded ") == 0.0
            && metric(&b.metrics().await, "kyb_cache_degraded ") == 0.0
    })
    .await;
    assert!(recovered, "the instances did not see Redis back");
    let c = Service::start(rig.config.clone()).await;
    for id in written {
        for (name, s) in [("A", &a), ("B", &b), ("C", &c)] {
            let (m, _, cache) = read(s, id, false).await;
            assert_eq!(
                m["status"], "suspended",
                "{name} served what Redis held ({cache})"
            );
        }
        assert_eq!(
            read(&c, id, false).await.2,
            "HIT-L2",
            "Redis is in use again"
        );
    }
    for id in untouched {
        let (m, _, cache) = read(&c, id, false).await;
        assert_eq!(
            (m["version"].as_i64(), cache.as_str()),
            (Some(1), "HIT-L2"),
            "{id}, written by nobody during the outage, was dropped from Redis"
        );
    }
}
