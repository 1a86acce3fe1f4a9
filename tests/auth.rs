//! Authentication, authorization and abuse limits against the real service: every route with no,
//! wrong, expired and under-scoped credentials; API keys from a key file and JWTs from an issuer whose
//! key set (served here over HTTP) rotates; per-client rate limits; the audit trail of status changes.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::get;
use base64::Engine;
use common::{business, config, eventually, migrated_db, redis, Service};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kybctl::config::{Config, JwtConfig};
use kybctl::service::auth::api_keys;
use kybctl::service::auth::scopes::Scope;
use reqwest::{Method, StatusCode};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};

const AUDIENCE: &str = "kyb-api";

/// One signing key of the test issuer.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Value,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        // An uncompressed P-256 point: 0x04, then x and y, 32 bytes each.
        let point = pair.public_key().as_ref();
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Self {
            kid: kid.to_owned(),
            encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
                        "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
        }
    }

    fn token(&self, issuer: &str, client: &str, scopes: &[Scope], exp_from_now: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let scope: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let claims = json!({"iss": issuer, "aud": AUDIENCE, "sub": "someone", "client_id": client,
                            "scope": scope.join(" "), "iat": now, "exp": now + exp_from_now});
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).unwrap()
    }
}

/// An OpenID Connect issuer's key set endpoint whose keys the test changes.
struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

impl Issuer {
    async fn start() -> Self {
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let fetches: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let (k, f) = (keys.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            get(move || {
                let (k, f) = (k.clone(), f.clone());
                async move {
                    f.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    axum::Json(json!({"keys": *k.lock().unwrap()}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, keys, fetches }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        *self.keys.lock().unwrap() = keys.iter().map(|k| k.jwk.clone()).collect();
    }
}

/// A key file in `dir` with one key per (client, scopes); returns the keys in order.
fn key_file(
    dir: &std::path::Path,
    holders: &[(&str, &[Scope])],
) -> (std::path::PathBuf, Vec<String>) {
    let (keys, entries): (Vec<String>, Vec<api_keys::KeyEntry>) = holders
        .iter()
        .map(|(client, scopes)| api_keys::generate(client, scopes))
        .unzip();
    let path = dir.join("keys.yaml");
    std::fs::write(&path, serde_yaml::to_string(&entries).unwrap()).unwrap();
    (path, keys)
}

fn secured(mut cfg: Config, keys: &std::path::Path, issuer: &Issuer) -> Config {
    cfg.auth.insecure_no_auth = false;
    cfg.auth.api_key_files = vec![keys.to_owned()];
    cfg.auth.jwt = Some(JwtConfig {
        issuer: issuer.url.clone(),
        jwks_url: format!("{}/jwks.json", issuer.url).parse().unwrap(),
        audience: AUDIENCE.into(),
        refresh_every: Duration::from_secs(1),
        leeway: Duration::from_secs(5),
    });
    cfg
}

async fn call(
    s: &Service,
    method: &Method,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> reqwest::Response {
    let mut req = s.http.request(method.clone(), s.url(path));
    match body {
        // An array is an import's lines: NDJSON.
        Some(Value::Array(lines)) => {
            let ndjson: String = lines.iter().map(|l| format!("{l}\n")).collect();
            req = req
                .header("content-type", "application/x-ndjson")
                .body(ndjson);
        }
        Some(b) => req = req.json(b),
        None => {}
    }
    if let Some(a) = auth {
        req = req.bearer_auth(a);
    }
    req.send().await.unwrap()
}

async fn problem(r: reqwest::Response) -> Value {
    assert_eq!(
        r.headers()["content-type"],
        "application/problem+json",
        "not a problem document"
    );
    r.json().await.unwrap()
}

/// Every protected route: no credentials and bad ones are 401, the wrong scope 403, the right one
/// passes, by API key and by token. Public routes need nothing.
#[tokio::test]
async fn every_route_checks_credentials_and_scope() {
    let issuer = Issuer::start().await;
    let signer = SigningKey::new("k1");
    issuer.publish(&[&signer]);
    let dir = tempfile::tempdir().unwrap();
    let all_but = |s: Scope| -> Vec<Scope> { Scope::ALL.into_iter().filter(|x| *x != s).collect() };
    let holders: Vec<(String, Vec<Scope>)> = Scope::ALL
        .iter()
        .flat_map(|s| {
            [
                (format!("only-{s}"), vec![*s]),
                (format!("not-{s}"), all_but(*s)),
            ]
        })
        .collect();
    let borrowed: Vec<(&str, &[Scope])> = holders
        .iter()
        .map(|(c, s)| (c.as_str(), s.as_slice()))
        .collect();
    let (keys_path, keys) = key_file(dir.path(), &borrowed);
    let key_for =
        |client: &str| keys[holders.iter().position(|(c, _)| c == client).unwrap()].clone();
    let s = Service::start(secured(
        config(&migrated_db().await, Some(&redis().url())),
        &keys_path,
        &issuer,
    ))
    .await;

    let m: Value = call(
        &s,
        &Method::POST,
        "/v1/merchants",
        Some(&business("Auth Cafe", "coffee shop")),
        Some(&key_for("only-merchants:write")),
    )
    .await
    .json()
    .await
    .unwrap();
    let id = m["id"].as_str().unwrap().to_owned();
    let merchant = format!("/v1/merchants/{id}");
    let accepted: Value = call(
        &s,
        &Method::POST,
        "/v1/merchants?async=true",
        Some(&business("Auth Queue Cafe", "coffee shop")),
        Some(&key_for("only-merchants:write")),
    )
    .await
    .json()
    .await
    .unwrap();
    let job = format!("/v1/jobs/{}", accepted["job"]["id"].as_str().unwrap());
    let routes: Vec<(Method, String, Option<Value>, Scope)> = vec![
        (Method::GET, job, None, Scope::Read),
        (Method::GET, "/v1/merchants".into(), None, Scope::Read),
        (
            Method::POST,
            "/v1/merchants".into(),
            Some(business("Auth Bakery", "bakery")),
            Scope::Write,
        ),
        (
            Method::POST,
            "/v1/merchants:import".into(),
            Some(json!([business("Auth Import", "bakery")])),
            Scope::Write,
        ),
        (Method::GET, merchant.clone(), None, Scope::Read),
        (
            Method::PATCH,
            merchant.clone(),
            Some(json!({"name": "Auth Cafe 2"})),
            Scope::Write,
        ),
        (
            Method::PATCH,
            merchant.clone(),
            Some(json!({"status": "suspended"})),
            Scope::Status,
        ),
        (
            Method::POST,
            format!("{merchant}/risk-assessments"),
            None,
            Scope::Write,
        ),
        (
            Method::GET,
            format!("{merchant}/risk-assessments"),
            None,
            Scope::Read,
        ),
        (
            Method::GET,
            format!("{merchant}/status-changes"),
            None,
            Scope::Ops,
        ),
        (
            Method::POST,
            "/v1/classifications".into(),
            Some(business("Auth Diner", "diner")),
            Scope::Read,
        ),
        (
            Method::GET,
            "/v1/reports/industries".into(),
            None,
            Scope::Read,
        ),
    ];
    let expired = signer.token(&issuer.url, "late", &Scope::ALL, -120);
    let wrong_audience = {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = json!({"iss": issuer.url, "aud": "someone-else", "client_id": "x", "scope": "merchants:read ops", "exp": 4_000_000_000u64});
        jsonwebtoken::encode(&header, &claims, &signer.encoding).unwrap()
    };
    let other_issuer = SigningKey::new("k1").token(&issuer.url, "forger", &Scope::ALL, 600);
    for (method, path, body, scope) in &routes {
        let what = format!("{method} {path}");
        let r = call(&s, method, path, body.as_ref(), None).await;
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{what} without credentials"
        );
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(problem(r).await["status"], 401);
        for (name, bad) in [
            (
                "an unknown API key",
                "kyb_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            ),
            ("garbage", "not-a-token"),
            ("an expired token", expired.as_str()),
            ("a token for another audience", wrong_audience.as_str()),
            ("a token signed by another key", other_issuer.as_str()),
        ] {
            let r = call(&s, method, path, body.as_ref(), Some(bad)).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{what} with {name}");
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains("invalid_token"));
            let p = problem(r).await;
            if name == "an expired token" {
                assert!(p["detail"].as_str().unwrap().contains("expired"), "{p}");
            }
        }
        let r = call(
            &s,
            method,
            path,
            body.as_ref(),
            Some(&key_for(&format!("not-{scope}"))),
        )
        .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what} without {scope}");
        let p = problem(r).await;
        assert!(
            p["detail"].as_str().unwrap().contains(scope.as_str()),
            "{p}"
        );
        let token = signer.token(&issuer.url, "token-client", &all_but(*scope), 600);
        let r = call(&s, method, path, body.as_ref(), Some(&token)).await;
        assert_eq!(
            r.status(),
            StatusCode::FORBIDDEN,
            "{what} by token without {scope}"
        );
        // With the scope: through, by key and by token. (Flip the status back so the token's PATCH
        // is a change too.)
        let r = call(
            &s,
            method,
            path,
            body.as_ref(),
            Some(&key_for(&format!("only-{scope}"))),
        )
        .await;
        assert!(
            r.status().is_success(),
            "{what} with {scope}: {}",
            r.status()
        );
        let body = if *scope == Scope::Status {
            Some(json!({"status": "active"}))
        } else {
            body.clone()
        };
        let token = signer.token(&issuer.url, "token-client", &[*scope], 600);
        let r = call(&s, method, path, body.as_ref(), Some(&token)).await;
        assert!(
            r.status().is_success(),
            "{what} by token with {scope}: {}",
            r.status()
        );
    }
    // X-API-Key works as well as the Authorization header.
    let r = s
        .http
        .get(s.url(&merchant))
        .header("x-api-key", key_for("only-merchants:read"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    for public in ["/health", "/ready", "/openapi.json"] {
        assert_eq!(s.get(public).await.status(), StatusCode::OK, "{public}");
    }
    assert_eq!(
        s.get("/metrics").await.status(),
        StatusCode::NOT_FOUND,
        "metrics are off the API port"
    );

    // no-cache only for ops: a reader's directive is dropped, so the read comes from the cache.
    let reader = key_for("only-merchants:read");
    s.http
        .get(s.url(&merchant))
        .bearer_auth(&reader)
        .send()
        .await
        .unwrap();
    let r = s
        .http
        .get(s.url(&merchant))
        .bearer_auth(&reader)
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache-status"], "HIT-L2");
    let r = s
        .http
        .get(s.url(&merchant))
        .bearer_auth(key_for("not-merchants:write"))
        .header("cache-control", "no-cache")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-cache-status"], "MISS");
}

/// The issuer rotates its keys: a token from a new key is accepted once the key is published (the
/// service fetches the set on an unknown key id), and a key withdrawn stops working at the next
/// refresh, cached verifications included.
#[tokio::test]
async fn the_issuers_key_rotation_is_followed() {
    let issuer = Issuer::start().await;
    let (old, new) = (SigningKey::new("2026-11"), SigningKey::new("2026-12"));
    issuer.publish(&[&old]);
    let dir = tempfile::tempdir().unwrap();
    let (keys_path, _) = key_file(dir.path(), &[]);
    let s = Service::start(secured(
        config(&migrated_db().await, None),
        &keys_path,
        &issuer,
    ))
    .await;
    let read = |token: String| {
        let s = &s;
        async move {
            call(
                s,
                &Method::GET,
                "/v1/reports/industries",
                None,
                Some(&token),
            )
            .await
            .status()
        }
    };
    let old_token = old.token(&issuer.url, "c", &[Scope::Read], 600);
    assert_eq!(read(old_token.clone()).await, StatusCode::OK);
    let new_token = new.token(&issuer.url, "c", &[Scope::Read], 600);
    // Not published yet: refused, whatever the service fetches.
    assert_eq!(read(new_token.clone()).await, StatusCode::UNAUTHORIZED);
    issuer.publish(&[&old, &new]);
    let accepted = eventually(Duration::from_secs(5), || async {
        read(new_token.clone()).await == StatusCode::OK
    })
    .await;
    assert!(
        accepted,
        "a token signed by the newly published key was not accepted"
    );
    issuer.publish(&[&new]);
    let refused = eventually(Duration::from_secs(5), || async {
        read(old_token.clone()).await == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "a withdrawn key kept vouching for its tokens");
    assert_eq!(read(new_token).await, StatusCode::OK);
    // A flood of tokens naming unknown keys does not become a flood of fetches.
    let before = issuer.fetches.load(std::sync::atomic::Ordering::Relaxed);
    for i in 0..50 {
        let forged =
            SigningKey::new(&format!("forged-{i}")).token(&issuer.url, "c", &[Scope::Read], 600);
        assert_eq!(read(forged).await, StatusCode::UNAUTHORIZED);
    }
    let fetched = issuer.fetches.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(
        fetched <= 3,
        "{fetched} key set fetches for 50 unknown key ids"
    );
}

/// Per-client limits: past its burst a client gets 429 with Retry-After; another client is not
/// affected.
#[tokio::test]
async fn rate_limits_are_per_client() {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys_path, keys) = key_file(
        dir.path(),
        &[("greedy", &[Scope::Read]), ("polite", &[Scope::Read])],
    );
    let mut cfg = secured(config(&migrated_db().await, None), &keys_path, &issuer);
    cfg.auth.rate_limit.per_second = 2;
    cfg.auth.rate_limit.burst = 5;
    let s = Service::start(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(
            call(
                &s,
                &Method::GET,
                "/v1/reports/industries",
                None,
                Some(&keys[0]),
            )
            .await,
        );
    }
    let ok = statuses
        .iter()
        .filter(|r| r.status() == StatusCode::OK)
        .count();
    assert!(
        (5..=6).contains(&ok),
        "{ok} of 8 admitted with a burst of 5"
    );
    let limited = statuses
        .into_iter()
        .find(|r| r.status() == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429");
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry), "Retry-After {retry}");
    assert_eq!(problem(limited).await["status"], 429);
    assert_eq!(
        call(
            &s,
            &Method::GET,
            "/v1/reports/industries",
            None,
            Some(&keys[1])
        )
        .await
        .status(),
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        call(
            &s,
            &Method::GET,
            "/v1/reports/industries",
            None,
            Some(&keys[0])
        )
        .await
        .status(),
        StatusCode::OK
    );
}

/// Every status change leaves who, what, before and after in the database, in the change's own
/// transaction; other changes leave nothing.
#[tokio::test]
async fn status_changes_are_audited() {
    let issuer = Issuer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (keys_path, keys) = key_file(
        dir.path(),
        &[
            ("risk-desk", &[Scope::Status, Scope::Write]),
            ("auditor", &[Scope::Ops]),
        ],
    );
    let db = migrated_db().await;
    let s = Service::start(secured(config(&db, None), &keys_path, &issuer)).await;
    let m: Value = call(
        &s,
        &Method::POST,
        "/v1/merchants",
        Some(&business("Audit Bar", "bar")),
        Some(&keys[0]),
    )
    .await
    .json()
    .await
    .unwrap();
    let path = format!("/v1/merchants/{}", m["id"].as_str().unwrap());
    let r = s
        .http
        .patch(s.url(&path))
        .bearer_auth(&keys[0])
        .header("x-request-id", "req-suspend-1")
        .json(&json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // A details change, a status that does not change, and a real change.
    for body in [
        json!({"name": "Audit Bar and Grill"}),
        json!({"status": "suspended"}),
        json!({"status": "closed"}),
    ] {
        call(&s, &Method::PATCH, &path, Some(&body), Some(&keys[0])).await;
    }
    let trail: Value = call(
        &s,
        &Method::GET,
        &format!("{path}/status-changes"),
        None,
        Some(&keys[1]),
    )
    .await
    .json()
    .await
    .unwrap();
    let items = trail["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "one row per real status change: {trail}");
    assert_eq!(
        (
            items[0]["from_status"].as_str(),
            items[0]["to_status"].as_str()
        ),
        (Some("suspended"), Some("closed"))
    );
    assert_eq!(
        (
            items[1]["from_status"].as_str(),
            items[1]["to_status"].as_str()
        ),
        (Some("active"), Some("suspended"))
    );
    assert_eq!(items[1]["actor"], "api-key:risk-desk");
    assert_eq!(items[1]["request_id"], "req-suspend-1");
    // A change requested without an id is recorded under the one the service made for it.
    let made = items[0]["request_id"].as_str().unwrap_or_default();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{trail}");
    assert_eq!(
        (
            items[1]["from_version"].as_i64(),
            items[1]["to_version"].as_i64()
        ),
        (Some(1), Some(2))
    );
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM merchant_status_changes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
}

/// Problem details never name internal hosts, ports or shards, even when the database is down.
#[tokio::test]
async fn problems_do_not_name_internal_hosts() {
    let mut pg = kybctl::local::TempPostgres::start().unwrap();
    let db = common::migrated_db_on(&pg).await;
    let s = Service::start(config(&db, None)).await;
    pg.stop();
    let became = eventually(Duration::from_secs(10), || async {
        s.post_json("/v1/merchants", &business("Down Deli", "deli"))
            .await
            .status()
            == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(became, "no 503 with the database stopped");
    let text = s
        .post_json("/v1/merchants", &business("Down Deli", "deli"))
        .await
        .text()
        .await
        .unwrap();
    // `/ready` is public on the API port: it says what is wrong without naming where.
    let ready = s.get("/ready").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = ready.text().await.unwrap();
    assert!(ready.contains("unreachable"), "{ready}");
    let port = pg.port().to_string();
    for body in [&text, &ready] {
        for leak in ["127.0.0.1", "localhost", port.as_str(), "shard ", "default"] {
            assert!(!body.contains(leak), "{leak:?} in {body}");
        }
    }
    // The metrics listener, off the API port, names the shard and its target for operators.
    let verbose = s
        .http
        .get(format!("{}/ready", s.metrics_base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        verbose.contains("shard default primary") && verbose.contains(port.as_str()),
        "{verbose}"
    );
}
