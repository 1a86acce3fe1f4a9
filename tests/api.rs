//! The API over HTTP against a real PostgreSQL and Redis.

mod common;

use common::{business, config, metric, migrated_db, redis, Service};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn service() -> Service {
    Service::start(config(&migrated_db().await, Some(&redis().url()))).await
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn classification_is_explained_and_cached() {
    let s = service().await;
    let body = business("Sunrise Bakery", "Artisan bread and pastry bakery");
    let r = s.post_json("/v1/classifications", &body).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-cache-status"), "MISS");
    assert!(header(&r, "x-response-time").ends_with("ms"));
    assert!(!header(&r, "x-request-id").is_empty());
    let c: Value = r.json().await.unwrap();
    assert!(c["naics_code"].as_str().unwrap().starts_with("3118"), "{c}");
    assert!(!c["naics_title"].as_str().unwrap().is_empty());
    let conf = c["confidence"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&conf));
    assert_eq!(c["method"], "keyword");
    assert!(c["matched_terms"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t.as_str().unwrap().starts_with("bak")));
    assert!(c["alternatives"].as_array().unwrap().len() <= 3);

    // Same business, differently spelled: one normalised key, served from L1.
    let again = business("  sunrise   BAKERY ", "Artisan bread and pastry bakery");
    let r = s.post_json("/v1/classifications", &again).await;
    assert_eq!(header(&r, "x-cache-status"), "HIT-L1");
    let c2: Value = r.json().await.unwrap();
    assert_eq!(c, c2);
    let m = s.metrics().await;
    assert!(
        metric(&m, "kyb_cache_hits_total{level=\"L1\"}") >= 1.0,
        "{m}"
    );
    assert!(
        metric(&m, "kyb_cache_misses_total{level=\"L3\"}") >= 1.0,
        "{m}"
    );
}

#[tokio::test]
async fn levels_fill_from_below() {
    let db = migrated_db().await;
    let cfg = config(&db, Some(&redis().url()));
    let a = Service::start(cfg.clone()).await;
    let body = business("Northwind Trucking", "long haul freight trucking company");
    assert_eq!(
        header(
            &a.post_json("/v1/classifications", &body).await,
            "x-cache-status"
        ),
        "MISS"
    );
    // A second instance sharing Redis and the database: L2 answers, then its own L1.
    let b = Service::start(cfg.clone()).await;
    b.wait_listening().await;
    assert_eq!(
        header(
            &b.post_json("/v1/classifications", &body).await,
            "x-cache-status"
        ),
        "HIT-L2"
    );
    assert_eq!(
        header(
            &b.post_json("/v1/classifications", &body).await,
            "x-cache-status"
        ),
        "HIT-L1"
    );
    // A third instance without Redis reaches the database cache table.
    let mut no_redis = cfg.clone();
    no_redis.redis.url = None;
    let c = Service::start(no_redis).await;
    assert_eq!(
        header(
            &c.post_json("/v1/classifications", &body).await,
            "x-cache-status"
        ),
        "HIT-L3"
    );
}

#[tokio::test]
async fn bad_input_gets_problem_details() {
    let s = service().await;
    let url = s.url("/v1/classifications");
    let merchants = s.url("/v1/merchants");
    let send = |url: &str, body: &'static str, ct: Option<&'static str>| {
        let mut rb = s.http.post(url).body(body);
        if let Some(ct) = ct {
            rb = rb.header("content-type", ct);
        }
        rb.send()
    };
    let cases: Vec<(&str, Option<&str>, StatusCode, &str)> = vec![
        (
            "{\"name\": ",
            Some("application/json"),
            StatusCode::BAD_REQUEST,
            "malformed JSON",
        ),
        (
            "{\"name\": 42}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid type",
        ),
        (
            "{\"name\": \"A\", \"colour\": 1}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown field `colour`",
        ),
        (
            "{\"description\": \"x\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing field `name`",
        ),
        (
            "{\"name\": \"A\"}",
            None,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type",
        ),
        (
            "{\"name\": \"A\", \"country\": \"USA\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "country",
        ),
        // Codes exactly as the document's enums list them: no case folding, no padding.
        (
            "{\"name\": \"A\", \"country\": \"us\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "country",
        ),
        (
            "{\"name\": \"  \"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        ),
        (
            "{\"name\": \"A\", \"declared_mcc\": \"0000\"}",
            Some("application/json"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "declared_mcc",
        ),
    ];
    // Merchant creation reads the same business fields (plus `status`) and refuses the same way.
    let merchant_cases = [(
        "{\"name\": \"A\", \"status\": \"suspended\", \"colour\": 1}",
        Some("application/json"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown field `colour`",
    )];
    let all = cases
        .iter()
        .map(|c| (url.as_str(), c))
        .chain(cases.iter().map(|c| (merchants.as_str(), c)))
        .chain(merchant_cases.iter().map(|c| (merchants.as_str(), c)));
    for (url, &(body, ct, status, needle)) in all {
        let r = send(url, body, ct).await.unwrap();
        assert_eq!(r.status(), status, "{url} {body}");
        assert_eq!(
            header(&r, "content-type"),
            "application/problem+json",
            "{body}"
        );
        let p: Value = r.json().await.unwrap();
        assert_eq!(p["status"], status.as_u16(), "{body}");
        let text = format!("{} {}", p["detail"], p["field"]);
        assert!(text.contains(needle), "{body}: {p}");
    }
    // Oversize body.
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(128 * 1024));
    let r = s
        .http
        .post(&url)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Bad ids and unknown routes.
    let r = s.get("/v1/merchants/not-a-uuid").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    assert_eq!(
        s.get(&format!("/v1/merchants/{}", uuid::Uuid::now_v7()))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get("/v1/nothing").await.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        s.get("/v1/merchants?limit=0").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        s.get("/v1/merchants?cursor=zzz").await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(
        s.get("/v1/merchants?bogus=1").await.status(),
        StatusCode::BAD_REQUEST
    );
    // Still serving, and no 500 was ever produced.
    assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    assert_eq!(
        metric(
            &s.metrics().await,
            "kyb_http_requests_total{method=\"POST\",route=\"/v1/classifications\",status=\"500\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn merchant_lifecycle() {
    let cfg = config(&migrated_db().await, Some(&redis().url()));
    let s = Service::start(cfg.clone()).await;
    let r = s
        .post_json(
            "/v1/merchants",
            &json!({"name": "Joe's Pizza", "description": "pizza restaurant", "country": "US", "declared_mcc": "5812"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = header(&r, "location");
    assert_eq!(header(&r, "etag"), "\"v1\"");
    let m: Value = r.json().await.unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/merchants/{id}"));
    assert_eq!(m["country"], "US");
    assert_eq!(m["status"], "active");
    assert!(
        m["classification"]["naics_code"]
            .as_str()
            .unwrap()
            .starts_with("7225"),
        "{m}"
    );
    assert_eq!(m["classification"]["mcc"], "5812");

    // Written through on creation to Redis, shared by every instance: the first read is already a
    // hit, and the same document.
    let r = s.get(&location).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-cache-status"), "HIT-L2");
    let got: Value = r.json().await.unwrap();
    assert_eq!(got, m);
    let other = Service::start(cfg.clone()).await;
    assert_eq!(
        header(&other.get(&location).await, "x-cache-status"),
        "HIT-L2"
    );
    // Reading through to the database gives the same document.
    let fresh = s
        .http
        .get(s.url(&location))
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&fresh, "x-cache-status"), "MISS");
    assert_eq!(fresh.json::<Value>().await.unwrap(), m);
    // With the record gone from Redis: `no-store` reads the primary and stores nothing, `no-cache`
    // reads it and stores what it read (RFC 9111 §5.2.1).
    let l2 = redis::Client::open(redis().url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let forget = || {
        let mut l2 = l2.clone();
        let pattern = format!("*merchant:{id}");
        async move {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(&pattern)
                .query_async(&mut l2)
                .await
                .unwrap();
            assert_eq!(keys.len(), 1, "one stored record: {keys:?}");
            let _: () = redis::cmd("DEL")
                .arg(&keys)
                .query_async(&mut l2)
                .await
                .unwrap();
        }
    };
    let read = |directive: Option<&'static str>| {
        let mut req = s.http.get(s.url(&location));
        if let Some(d) = directive {
            req = req.header("cache-control", d);
        }
        async move { header(&req.send().await.unwrap(), "x-cache-status") }
    };
    forget().await;
    assert_eq!(read(Some("no-store")).await, "MISS");
    assert_eq!(read(None).await, "MISS", "no-store stored the record");
    assert_eq!(read(None).await, "HIT-L2");
    forget().await;
    assert_eq!(read(Some("max-age=0, no-cache")).await, "MISS");
    assert_eq!(
        read(None).await,
        "HIT-L2",
        "no-cache did not store the record"
    );

    // Stale If-Match is refused; the right one applies and re-classifies.
    let patch = json!({"name": "Joe's Dental", "description": "family dentist office", "declared_mcc": null});
    let r = s
        .http
        .patch(s.url(&location))
        .header("if-match", "\"v7\"")
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    let r = s
        .http
        .patch(s.url(&location))
        .header("if-match", "\"v1\"")
        .json(&patch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag"), "\"v2\"");
    let updated: Value = r.json().await.unwrap();
    assert_eq!(updated["version"], 2);
    assert_eq!(updated["declared_mcc"], Value::Null);
    assert!(
        updated["classification"]["naics_code"]
            .as_str()
            .unwrap()
            .starts_with("6212"),
        "{updated}"
    );
    // The new version replaced the cached one before the update answered, on every instance.
    for instance in [&s, &other] {
        let r = instance.get(&location).await;
        assert_eq!(header(&r, "x-cache-status"), "HIT-L2");
        assert_eq!(header(&r, "etag"), "\"v2\"");
        assert_eq!(r.json::<Value>().await.unwrap()["name"], "Joe's Dental");
    }
    // Without Redis the process's own L1 plays that part.
    let mut no_redis = cfg;
    no_redis.redis.url = None;
    let alone = Service::start(no_redis).await;
    // A listener that connects clears L1 (it may have missed notices): wait for it first.
    alone.wait_listening().await;
    assert_eq!(
        header(&alone.get(&location).await, "x-cache-status"),
        "MISS"
    );
    assert_eq!(
        header(&alone.get(&location).await, "x-cache-status"),
        "HIT-L1"
    );
    let r = alone
        .http
        .patch(alone.url(&location))
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r = alone.get(&location).await;
    assert_eq!(header(&r, "x-cache-status"), "HIT-L1");
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "suspended");
    // Bad patch.
    let r = s
        .http
        .patch(s.url(&location))
        .json(&json!({"status": "sleeping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn listing_filters_and_pages() {
    let s = service().await;
    let names = [
        ("Ana's Bakery", "bread bakery"),
        ("Bo's Bakery", "cake and bread bakery"),
        ("Cy's Hotel", "hotel with rooms"),
        ("Di's Bakery", "pastry bakery"),
        ("Ed's Law", "law firm attorneys"),
    ];
    for (n, d) in names {
        assert_eq!(
            s.post_json("/v1/merchants", &business(n, d)).await.status(),
            StatusCode::CREATED
        );
    }
    let page: Value = s.get("/v1/merchants?limit=2").await.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    let mut seen: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let p: Value = s
            .get(&format!("/v1/merchants?limit=2&cursor={c}"))
            .await
            .json()
            .await
            .unwrap();
        seen.extend(
            p["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["name"].as_str().unwrap().to_owned()),
        );
        cursor = p["next_cursor"].as_str().map(str::to_owned);
    }
    assert_eq!(
        seen,
        names.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
        "creation order, no gaps"
    );

    let bakeries: Value = s
        .get("/v1/merchants?industry=3118")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(bakeries["items"].as_array().unwrap().len(), 3, "{bakeries}");
    let none: Value = s
        .get("/v1/merchants?industry=3118&status=suspended")
        .await
        .json()
        .await
        .unwrap();
    assert!(none["items"].as_array().unwrap().is_empty());
    let confident: Value = s
        .get("/v1/merchants?min_confidence=0.99")
        .await
        .json()
        .await
        .unwrap();
    assert!(confident["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["classification"]["confidence"].as_f64().unwrap() >= 0.99));
    // A new merchant invalidates cached listings.
    let before: Value = s
        .get("/v1/merchants?industry=3118")
        .await
        .json()
        .await
        .unwrap();
    s.post_json("/v1/merchants", &business("Fi's Bakery", "bread bakery"))
        .await;
    let after: Value = s
        .get("/v1/merchants?industry=3118")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        after["items"].as_array().unwrap().len(),
        before["items"].as_array().unwrap().len() + 1
    );
    let report: Value = s.get("/v1/reports/industries").await.json().await.unwrap();
    let bakery_total: i64 = report
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["naics_code"].as_str().unwrap().starts_with("3118"))
        .map(|r| r["merchants"].as_i64().unwrap())
        .sum();
    assert_eq!(bakery_total, 4, "{report}");
}

#[tokio::test]
async fn risk_assessments() {
    let s = service().await;
    let m: Value = s
        .post_json("/v1/merchants", &json!({"name": "Lucky Star Casino", "description": "casino gambling and betting", "country": "VN"}))
        .await
        .json()
        .await
        .unwrap();
    let id = m["id"].as_str().unwrap();
    let path = format!("/v1/merchants/{id}/risk-assessments");
    let empty: Value = s.get(&path).await.json().await.unwrap();
    assert!(empty["items"].as_array().unwrap().is_empty());
    let r = s.http.post(s.url(&path)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let a: Value = r.json().await.unwrap();
    assert!(
        ["high", "critical"].contains(&a["risk_level"].as_str().unwrap()),
        "{a}"
    );
    let codes: Vec<&str> = a["factors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"monitored_jurisdiction"), "{codes:?}");
    // The cached empty list was invalidated by the new assessment.
    let list: Value = s.get(&path).await.json().await.unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    assert_eq!(list["items"][0]["id"], a["id"]);
    let missing = format!("/v1/merchants/{}/risk-assessments", uuid::Uuid::now_v7());
    assert_eq!(
        s.http.post(s.url(&missing)).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get(&missing).await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn operations_endpoints() {
    let s = service().await;
    assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    let r = s.get("/ready").await;
    assert_eq!(r.status(), StatusCode::OK);
    let ready: Value = r.json().await.unwrap();
    assert_eq!(ready["status"], "ready");
    let doc: Value = s.get("/openapi.json").await.json().await.unwrap();
    for p in [
        "/v1/classifications",
        "/v1/merchants",
        "/v1/merchants/{id}",
        "/v1/merchants/{id}/risk-assessments",
    ] {
        assert!(doc["paths"][p].is_object(), "missing {p}");
    }
    assert!(doc["components"]["schemas"]["Problem"].is_object());
    s.get("/health").await;
    let m = s.metrics().await;
    for name in [
        "kyb_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"}",
        "kyb_http_request_duration_seconds_bucket{",
        "kyb_db_pool_connections{shard=\"default\",role=\"primary\"",
        "kyb_cache_degraded ",
    ] {
        assert!(m.contains(name), "missing {name} in\n{m}");
    }
    // Compression when the client accepts it. A client that does not decompress by itself: goose turns
    // on reqwest's gzip feature for the whole build, and such a client hides the header.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let r = raw
        .get(s.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "content-encoding"), "gzip");
    let gzipped = r.bytes().await.unwrap().len();
    // Not asked: served as is, and marked as varying with what the client accepts, as tower-http
    // marks it (the service skips its compression layer for such requests).
    let r = raw.get(s.url("/openapi.json")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(header(&r, "vary"), "accept-encoding");
    assert!(r.bytes().await.unwrap().len() > gzipped);
}

/// Concurrent misses on one key compute once: only one request goes below L1.
#[tokio::test]
async fn concurrent_misses_compute_once() {
    let s = service().await;
    let before = s.metrics().await;
    let body = business("Stampede Steakhouse", "steak restaurant and grill");
    let requests = (0..50).map(|_| s.post_json("/v1/classifications", &body));
    let responses = futures::future::join_all(requests).await;
    let mut statuses: Vec<String> = responses
        .iter()
        .map(|r| header(r, "x-cache-status"))
        .collect();
    statuses.sort();
    statuses.dedup();
    assert!(responses.iter().all(|r| r.status() == StatusCode::OK));
    let after = s.metrics().await;
    let below_l1 = |m: &str| metric(m, "kyb_cache_misses_total{level=\"L2\"}");
    assert_eq!(
        below_l1(&after) - below_l1(&before),
        1.0,
        "statuses seen: {statuses:?}"
    );
    assert!(statuses.contains(&"MISS".to_string()));
}

/// A request the write timeout cuts off is a 503 problem, counted under its route: the observation
/// layer wraps the router, so the route it reports comes back from inside the router even when the
/// response does not.
#[tokio::test]
async fn a_request_over_the_write_timeout_is_counted_under_its_route() {
    // A database that accepts connections and never answers: every read waits on its pool.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cfg = config(
        &format!("postgres://kyb@{}/kyb", silent.local_addr().unwrap()),
        None,
    );
    cfg.database.pool.acquire_timeout = std::time::Duration::from_secs(30);
    cfg.server.write_timeout = std::time::Duration::from_millis(300);
    let s = Service::start(cfg).await;
    let started = std::time::Instant::now();
    let r = s
        .get(&format!("/v1/merchants/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    // Not the pool giving up (30 s): the write timeout answered, with a problem document.
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(header(&r, "content-type"), "application/problem+json");
    let problem: Value = r.json().await.unwrap();
    assert_eq!(problem["type"], "https://kyb.io/problems/timeout");
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"].as_str().unwrap().contains("300ms"),
        "{problem}"
    );
    let m = s.metrics().await;
    let timed_out =
        "kyb_http_requests_total{method=\"GET\",route=\"/v1/merchants/{id}\",status=\"503\"}";
    assert_eq!(metric(&m, timed_out), 1.0, "{m}");
    assert_eq!(
        metric(
            &m,
            "kyb_http_requests_total{method=\"GET\",route=\"unmatched\""
        ),
        0.0
    );
    drop(silent);
}

/// `Idempotency-Key` on `POST /v1/merchants`: the same request sent again (synchronous or with
/// `async=true`) makes nothing new and is answered with what the key made; the key with another body
/// is refused; another caller's key of the same spelling is its own.
#[tokio::test]
async fn a_creation_sent_again_with_its_key_makes_nothing_new() {
    let db = migrated_db().await;
    let s = Service::start(config(&db, Some(&redis().url()))).await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let send = |key: &'static str, query: &'static str, body: Value| {
        let req = s
            .http
            .post(s.url(&format!("/v1/merchants{query}")))
            .header("idempotency-key", key)
            .json(&body);
        async move { req.send().await.unwrap() }
    };
    let pizza = json!({"name": "Joe's Pizza", "description": "pizza restaurant", "country": "US"});

    let first = send("order-1", "", pizza.clone()).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(header(&first, "idempotent-replayed"), "");
    let made: Value = first.json().await.unwrap();
    let again = send("\"order-1\"", "", pizza.clone()).await;
    assert_eq!(again.status(), StatusCode::CREATED, "the same answer");
    assert_eq!(header(&again, "idempotent-replayed"), "true");
    assert_eq!(
        header(&again, "location"),
        format!("/v1/merchants/{}", made["id"].as_str().unwrap())
    );
    assert_eq!(again.json::<Value>().await.unwrap(), made);
    assert_eq!(count("SELECT count(*) FROM merchants").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM classifications").await,
        1,
        "no second history row"
    );

    // The key with another body: refused, nothing written.
    let other = send(
        "order-1",
        "",
        json!({"name": "Joe's Pizza", "country": "CA"}),
    )
    .await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["field"], "Idempotency-Key", "{problem}");
    assert_eq!(count("SELECT count(*) FROM merchants").await, 1);

    // Asynchronous: the retry names the same job, and one job exists.
    let bakery = json!({"name": "Acme Bakery", "description": "bread and cakes"});
    let r1 = send("order-2", "?async=true", bakery.clone()).await;
    assert_eq!(r1.status(), StatusCode::ACCEPTED);
    let a1: Value = r1.json().await.unwrap();
    let r2 = send("order-2", "?async=true", bakery.clone()).await;
    assert_eq!(r2.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r2, "idempotent-replayed"), "true");
    assert_eq!(
        header(&r2, "location"),
        format!("/v1/jobs/{}", a1["job"]["id"].as_str().unwrap())
    );
    let a2: Value = r2.json().await.unwrap();
    assert_eq!(a2["merchant"]["id"], a1["merchant"]["id"]);
    assert_eq!(a2["job"]["id"], a1["job"]["id"]);
    assert_eq!(count("SELECT count(*) FROM jobs").await, 1);
    assert_eq!(count("SELECT count(*) FROM merchants").await, 2);

    // Concurrent sends of one key: one merchant, every answer naming it.
    let shop = json!({"name": "Bolt Garage", "description": "car repair"});
    let answers =
        futures::future::join_all((0..8).map(|_| send("order-3", "", shop.clone()))).await;
    let mut ids = std::collections::BTreeSet::new();
    for r in answers {
        assert_eq!(r.status(), StatusCode::CREATED);
        ids.insert(r.json::<Value>().await.unwrap()["id"].clone().to_string());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count("SELECT count(*) FROM merchants").await, 3);

    // A malformed key is refused before anything is written.
    let bad = send("two words", "", shop.clone()).await;
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(count("SELECT count(*) FROM merchants").await, 3);
    s.stop().await;
}
