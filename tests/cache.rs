//! Cache coherence across instances and behaviour through a Redis outage.

mod common;

use std::time::Duration;

use common::{business, config, eventually, metric, migrated_db, redis, Service};
use kybctl::local::TempRedis;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn cache_status(r: &reqwest::Response) -> String {
    r.headers()["x-cache-status"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn an_update_on_one_instance_is_seen_by_the_others() {
    let cfg = config(&migrated_db().await, Some(&redis().url()));
    let a = Service::start(cfg.clone()).await;
    let b = Service::start(cfg.clone()).await;
    let m: Value = a
        .post_json("/v1/merchants", &business("Green Grocer", "grocery store"))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/merchants/{}", m["id"].as_str().unwrap());
    // B reads the merchant from Redis, written through by A.
    b.get(&path).await;
    let r = b.get(&path).await;
    assert_eq!(cache_status(&r), "HIT-L2");
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 1);
    // A updates it; B's very next read has the new version (the rule and its property test are in
    // tests/coherence.rs).
    let r = a
        .http
        .patch(a.url(&path))
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = b.get(&path).await;
    assert_eq!(cache_status(&r), "HIT-L2");
    assert_eq!(r.json::<Value>().await.unwrap()["version"], 2);
    // Notices still reach B's L1, whose listing pages they drop.
    let seen = eventually(Duration::from_secs(3), || async {
        metric(&b.metrics().await, "kyb_cache_invalidations_total") >= 1.0
    })
    .await;
    assert!(seen, "B heard no invalidation");

    // A creation on A drops B's cached listing pages too.
    let count = |v: Value| v["items"].as_array().unwrap().len();
    let before = count(b.get("/v1/merchants").await.json().await.unwrap());
    assert_eq!(cache_status(&b.get("/v1/merchants").await), "HIT-L1");
    a.post_json("/v1/merchants", &business("Blue Butcher", "butcher shop"))
        .await;
    let listed = eventually(Duration::from_secs(3), || async {
        count(b.get("/v1/merchants").await.json().await.unwrap()) == before + 1
    })
    .await;
    assert!(listed, "instance B kept serving a stale listing");
}

#[tokio::test]
async fn a_redis_outage_degrades_but_does_not_fail() {
    let mut own_redis = TempRedis::start().expect("redis");
    let cfg = config(&migrated_db().await, Some(&own_redis.url()));
    let s = Service::start(cfg.clone()).await;
    let body = business("Harbor Hotel", "hotel and lodging");
    assert_eq!(
        s.post_json("/v1/classifications", &body).await.status(),
        StatusCode::OK
    );
    let created: Value = s
        .post_json(
            "/v1/merchants",
            &business("Pine Pharmacy", "pharmacy drug store"),
        )
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/merchants/{}", created["id"].as_str().unwrap());

    own_redis.stop();
    // New keys (L1 misses) go through the broken L2 and still answer.
    for i in 0..20 {
        let r = s
            .post_json(
                "/v1/classifications",
                &business(&format!("Shop {i}"), "shoe store"),
            )
            .await;
        assert_eq!(r.status(), StatusCode::OK, "request {i} during the outage");
    }
    assert_eq!(s.get(&path).await.status(), StatusCode::OK);
    let r = s
        .post_json("/v1/merchants", &business("Oak Bakery", "bakery"))
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let m = s.metrics().await;
    assert_eq!(metric(&m, "kyb_cache_degraded "), 1.0, "{m}");
    assert!(metric(&m, "kyb_cache_errors_total{level=\"L2\"}") >= 1.0);
    let ready: Value = s.get("/ready").await.json().await.unwrap();
    assert_eq!(
        ready["status"], "ready",
        "Redis does not gate readiness: {ready}"
    );

    own_redis.restart().expect("redis restarts");
    let recovered = eventually(Duration::from_secs(10), || async {
        s.post_json(
            "/v1/classifications",
            &business(&format!("Recovery {}", uuid::Uuid::new_v4()), "bakery"),
        )
        .await;
        metric(&s.metrics().await, "kyb_cache_degraded ") == 0.0
    })
    .await;
    assert!(recovered, "the cache did not reconnect to Redis");
    // And L2 is really used again: a second instance gets an L2 hit.
    let key_body = business("After Recovery Cafe", "coffee shop");
    assert_eq!(
        cache_status(&s.post_json("/v1/classifications", &key_body).await),
        "MISS"
    );
    let other = Service::start(cfg).await;
    assert_eq!(
        cache_status(&other.post_json("/v1/classifications", &key_body).await),
        "HIT-L2"
    );
}

/// The same cache through the Redis Cluster client (a one-node cluster owning every slot).
#[tokio::test]
async fn redis_cluster_backend() {
    let cluster = TempRedis::start_cluster().expect("redis cluster");
    let mut cfg = config(&migrated_db().await, None);
    cfg.redis.cluster_nodes = vec![kybctl::config::Secret::new(cluster.url())];
    let a = Service::start(cfg.clone()).await;
    let b = Service::start(cfg).await;
    let body = business("Cluster Coffee", "coffee shop cafe");
    assert_eq!(
        cache_status(&a.post_json("/v1/classifications", &body).await),
        "MISS"
    );
    assert_eq!(
        cache_status(&b.post_json("/v1/classifications", &body).await),
        "HIT-L2"
    );
    // Exact-key invalidation works across slots: an update drops the merchant from L2 too.
    let m: Value = a
        .post_json("/v1/merchants", &business("Cluster Cafe", "cafe"))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/v1/merchants/{}", m["id"].as_str().unwrap());
    a.get(&path).await;
    assert_eq!(cache_status(&b.get(&path).await), "HIT-L2");
    a.http
        .patch(a.url(&path))
        .json(&json!({"name": "Cluster Cafe 2"}))
        .send()
        .await
        .unwrap();
    let seen = eventually(Duration::from_secs(3), || async {
        b.get(&path).await.json::<Value>().await.unwrap()["name"] == "Cluster Cafe 2"
    })
    .await;
    assert!(seen, "stale merchant served after the update");
}

/// After an outage Redis serves again without the records this instance failed to write, and keeps
/// every other record; a server that restarted (another `run_id`) keeps none.
#[tokio::test]
async fn a_recovery_drops_the_missed_records_and_a_new_server_all_of_them() {
    use bytes::Bytes;
    use kybctl::config::{RedisConfig, Secret};
    use kybctl::service::cache::l2::RedisCache;
    use std::sync::Arc;

    let mut own_redis = TempRedis::start().expect("redis");
    let cfg = RedisConfig {
        url: Some(Secret::new(own_redis.url())),
        command_timeout: Duration::from_millis(200),
        ..RedisConfig::default()
    };
    let metrics = Arc::new(kybctl::service::metrics::Metrics::new());
    let l2 = RedisCache::from_config(&cfg, "t:", Duration::from_secs(60), metrics)
        .unwrap()
        .expect("redis configured");
    let body = |s: &str| Bytes::from(s.to_owned());
    let version = |r: Option<Option<(i64, Option<Bytes>)>>| r.expect("redis answers").map(|r| r.0);
    for key in ["written", "untouched"] {
        assert!(l2.set_record(key, 1, Some(&body("v1"))).await);
    }

    // A write that cannot reach Redis is remembered; Redis comes back with version 1 of it.
    own_redis.freeze();
    assert!(!l2.set_record("written", 2, Some(&body("v2"))).await);
    assert!(l2.is_degraded());
    own_redis.thaw();
    let back = eventually(Duration::from_secs(10), || async { l2.probe().await }).await;
    assert!(back, "the cache did not see Redis back");
    assert_eq!(
        version(l2.get_record("written").await),
        None,
        "the missed record was kept"
    );
    assert_eq!(
        version(l2.get_record("untouched").await),
        Some(1),
        "a record nobody wrote was dropped"
    );

    // A server that comes back with older records than it acknowledged (a restart from a
    // snapshot, here written by hand into the new, empty server; or a failover to a replica that
    // lagged): the probe sees another run_id and every record goes.
    assert!(l2.set_record("written", 2, Some(&body("v2"))).await);
    assert!(l2.probe().await, "the probe learns the server's run_id");
    own_redis.restart().expect("redis restarts");
    let mut raw = redis::Client::open(own_redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for key in ["written", "untouched"] {
        let _: () = redis::cmd("HSET")
            .arg(format!("t:rec:{key}"))
            .arg("v")
            .arg(1)
            .arg("b")
            .arg("v1")
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    let back = eventually(Duration::from_secs(10), || async { l2.probe().await }).await;
    assert!(back, "the cache did not see Redis back");
    for key in ["written", "untouched"] {
        assert_eq!(
            version(l2.get_record(key).await),
            None,
            "{key}: the restarted server's version 1 was kept"
        );
    }
}
