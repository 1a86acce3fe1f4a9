//! The external registry through timeouts, retries and the circuit breaker, against a local HTTP
//! server playing the registry in healthy, failing and slow modes.

mod common;

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode as AxStatus;
use axum::routing::get;
use common::{business, config, eventually, metric, migrated_db, Service};
use serde_json::Value;

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const SLOW: u8 = 2;

#[derive(Clone, Default)]
struct Fake {
    mode: Arc<AtomicU8>,
    calls: Arc<AtomicU32>,
    /// The Authorization header of the last call.
    authorization: Arc<std::sync::Mutex<Option<String>>>,
}

async fn lookup(
    State(f): State<Fake>,
    headers: axum::http::HeaderMap,
) -> Result<axum::Json<Value>, AxStatus> {
    f.calls.fetch_add(1, Ordering::SeqCst);
    *f.authorization.lock().unwrap() = headers
        .get("authorization")
        .map(|v| v.to_str().unwrap().to_owned());
    match f.mode.load(Ordering::SeqCst) {
        FAILING => Err(AxStatus::BAD_GATEWAY),
        SLOW => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(axum::Json(serde_json::json!({"naics_code": "722511"})))
        }
        _ => Ok(axum::Json(
            serde_json::json!({"naics_code": "722511", "mcc": "5812"}),
        )),
    }
}

async fn fake_registry() -> (Fake, String) {
    let fake = Fake::default();
    let app = axum::Router::new()
        .route("/v1/businesses/lookup", get(lookup))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (fake, format!("http://{addr}/"))
}

#[tokio::test]
async fn registry_confirms_then_breaker_protects_then_recovers() {
    let (fake, base) = fake_registry().await;
    let mut cfg = config(&migrated_db().await, None);
    cfg.registry.base_url = Some(base.parse().unwrap());
    cfg.registry.timeout = Duration::from_millis(300);
    cfg.registry.retries = 1;
    cfg.registry.circuit_breaker.recovery_timeout = Duration::from_secs(1);
    let s = Service::start(cfg).await;
    let mut n = 0;
    let mut classify = || {
        n += 1;
        // A new business each time: cached answers would not reach the registry.
        let body = business(&format!("Registry Test Shop {n}"), "bakery bread");
        let s = &s;
        async move {
            let r = s.post_json("/v1/classifications", &body).await;
            assert_eq!(
                r.status(),
                reqwest::StatusCode::OK,
                "classification must never fail because of the registry"
            );
            r.json::<Value>().await.unwrap()
        }
    };

    // Healthy: the registry's code wins, the keyword guess stays as an alternative.
    let c = classify().await;
    assert_eq!(c["method"], "registry");
    assert_eq!(c["naics_code"], "722511");
    assert_eq!(c["mcc"], "5812");
    assert!(
        c["alternatives"][0]["naics_code"]
            .as_str()
            .unwrap()
            .starts_with("3118"),
        "{c}"
    );

    // Failing: each call is tried twice (one retry), falls back to keywords, and after five failed calls
    // the breaker opens and the registry is left alone.
    fake.mode.store(FAILING, Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(classify().await["method"], "keyword");
    }
    let calls = fake.calls.load(Ordering::SeqCst);
    assert_eq!(calls, 1 + 5 * 2);
    assert_eq!(
        metric(
            &s.metrics().await,
            "kyb_circuit_breaker_state{name=\"business_registry\"}"
        ),
        1.0
    );
    for _ in 0..5 {
        assert_eq!(classify().await["method"], "keyword");
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        calls,
        "an open breaker sends nothing"
    );
    // A fallback answer is served but not cached: asked again it is still a miss, so the registry's
    // answer takes its place as soon as the registry is back (checked at the end).
    let degraded = business("Registry Outage Cafe", "bakery bread");
    for _ in 0..2 {
        let r = s.post_json("/v1/classifications", &degraded).await;
        assert_eq!(r.headers()["x-cache-status"], "MISS");
        assert_eq!(r.json::<Value>().await.unwrap()["method"], "keyword");
    }

    // Slow: after the recovery timeout a trial call goes out, times out, and the breaker reopens; the
    // request itself is bounded by timeout x attempts.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    fake.mode.store(SLOW, Ordering::SeqCst);
    let t = Instant::now();
    assert_eq!(classify().await["method"], "keyword");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "slow registry held the request {:?}",
        t.elapsed()
    );
    assert_eq!(
        metric(
            &s.metrics().await,
            "kyb_circuit_breaker_state{name=\"business_registry\"}"
        ),
        1.0
    );

    // Healthy again: three successful trial calls close it.
    fake.mode.store(HEALTHY, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let closed = eventually(Duration::from_secs(5), || async {
        classify_once(&s).await;
        metric(
            &s.metrics().await,
            "kyb_circuit_breaker_state{name=\"business_registry\"}",
        ) == 0.0
    })
    .await;
    assert!(closed, "breaker did not close after the registry recovered");
    assert_eq!(classify().await["method"], "registry");
    let r = s.post_json("/v1/classifications", &degraded).await;
    assert_eq!(
        r.json::<Value>().await.unwrap()["method"],
        "registry",
        "the outage's answer was cached"
    );
}

async fn classify_once(s: &Service) {
    let body = business(&format!("Trial {}", uuid::Uuid::new_v4()), "bakery");
    s.post_json("/v1/classifications", &body).await;
}

/// The service as the operator deploys it: the configuration rendered from a KybPlatform with
/// `spec.registry` (its token from a Secret key, mounted as a file) makes `kybctl serve` consult the
/// registry, with the token, through the breaker's settings.
#[tokio::test]
async fn a_service_rendered_from_a_kybplatform_consults_its_registry() {
    let (fake, base) = fake_registry().await;
    let spec: kybctl::operator::crd::KybPlatformSpec = serde_yaml::from_str(&format!(
        "image: x\ndatabase: {{primary: {{name: db, key: url}}}}\nauth: {{insecureNoAuth: true}}\nregistry: {{url: '{base}', timeout: 1s, retries: 1, credentials: {{name: registry, key: token}}}}\ncircuitBreaker: {{failureThreshold: 2}}\n"
    ))
    .unwrap();
    let rendered = kybctl::operator::render::render("kyb", &spec);
    // What the kubelet would mount: each Secret key as a file under the secrets directory.
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    let db = migrated_db().await;
    for m in &rendered.mounts {
        let value = match (m.secret.as_str(), m.key.as_str()) {
            ("db", "url") => db.clone(),
            ("registry", "token") => "registry-token-7".to_owned(),
            other => panic!("unexpected mount {other:?}"),
        };
        let path = secrets.join(&m.path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, value).unwrap();
    }
    let yaml = rendered.config_yaml.replace(
        kybctl::operator::render::SECRETS_DIR,
        secrets.to_str().unwrap(),
    );
    let mut cfg = kybctl::config::Config::from_yaml(&yaml).unwrap();
    assert_eq!(cfg.registry.circuit_breaker.failure_threshold, 2);
    // Through the service's own loading of secret files.
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, &yaml).unwrap();
    cfg = kybctl::config::Config::load(&kybctl::config::Overrides {
        config: Some(file),
        ..Default::default()
    })
    .unwrap();
    cfg.database.pool.max_connections = 4;
    cfg.database.pool.min_connections = 0;
    let s = Service::start(cfg).await;
    let r = s
        .post_json("/v1/classifications", &business("Registry Diner", "diner"))
        .await;
    assert_eq!(r.status(), 200);
    assert!(
        fake.calls.load(Ordering::SeqCst) >= 1,
        "the registry was not consulted"
    );
    assert_eq!(
        fake.authorization.lock().unwrap().as_deref(),
        Some("Bearer registry-token-7")
    );
}
