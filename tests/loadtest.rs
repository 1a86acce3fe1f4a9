//! `kybctl loadtest` against the real service (PostgreSQL, Redis): the result it writes agrees with the
//! service's own request counters, route by route and status by status.

mod common;

use std::collections::BTreeMap;
use std::process::Output;

use serde_json::Value;

async fn kybctl(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `kyb_http_requests_total` by (method, route, status).
fn served(metrics: &str) -> BTreeMap<(String, String, String), u64> {
    let mut out = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("kyb_http_requests_total{") else {
            continue;
        };
        let (labels, value) = rest.split_once("} ").unwrap();
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\"")).unwrap() + name.len() + 2;
            let end = labels[start..].find('"').unwrap() + start;
            labels[start..end].to_owned()
        };
        out.insert(
            (label("method"), label("route"), label("status")),
            value.trim().parse::<f64>().unwrap() as u64,
        );
    }
    out
}

async fn service() -> common::Service {
    let db = common::migrated_db().await;
    common::Service::start(common::config(&db, Some(common::redis().url().as_str()))).await
}

#[tokio::test(flavor = "multi_thread")]
async fn request_counts_match_the_services_own_metrics() {
    let svc = service().await;
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("result.json");
    let html_file = dir.path().join("report.html");
    let out = kybctl(&[
        "loadtest",
        "--target",
        &svc.base,
        "--users",
        "10",
        "--duration",
        "3s",
        "-o",
        "json",
        "--out",
        out_file.to_str().unwrap(),
        "--html",
        html_file.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    // --out holds the same result, in the schema `slo check` reads.
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out_file).unwrap()).unwrap();
    assert_eq!(written, result);
    kybctl::slo::LoadTestResult::load(&out_file, "result").unwrap();
    let page = std::fs::read_to_string(&html_file).unwrap();
    assert!(page.contains("Latency by request type"), "{page}");

    let total = result["requests"]["total"].as_u64().unwrap();
    assert!(total > 100, "{result}");
    assert_eq!(result["requests"]["errors"], 0, "{result}");
    assert!(result["generator"]["requested_rps"].is_null());
    let by_type = result["latency_us"]["by_type"].as_object().unwrap();
    for t in [
        "classify",
        "merchant_read",
        "merchant_create",
        "risk_assess",
    ] {
        assert!(by_type[t]["count"].as_u64().unwrap() > 0, "{t}: {result}");
    }
    // Repeated businesses make classifications hit the cache.
    let cache = &result["cache"];
    assert!(
        cache["hits"].as_u64().unwrap() > cache["lookups"].as_u64().unwrap() / 2,
        "{result}"
    );

    let served = served(&svc.metrics().await);
    let count = |method: &str, route: &str| -> u64 {
        served
            .iter()
            .filter(|((m, r, _), _)| m == method && r == route)
            .map(|(_, n)| n)
            .sum()
    };
    let expect = [
        ("classify", "POST", "/v1/classifications"),
        ("merchant_read", "GET", "/v1/merchants/{id}"),
        ("merchant_create", "POST", "/v1/merchants"),
        ("risk_assess", "POST", "/v1/merchants/{id}/risk-assessments"),
    ];
    // The steady window and the warm-up (ramp-up and each user's two set-up creations) together
    // are every request sent.
    let warmup = &result["warmup"];
    let warm_by_type = warmup["latency_us"]["by_type"].as_object().unwrap();
    let both = |t: &str| {
        by_type.get(t).map_or(0, |s| s["count"].as_u64().unwrap())
            + warm_by_type
                .get(t)
                .map_or(0, |s| s["count"].as_u64().unwrap())
    };
    assert!(
        warm_by_type["merchant_create"]["count"].as_u64().unwrap() >= 20,
        "the 10 users' set-up creations are warm-up: {result}"
    );
    for (t, method, route) in expect {
        assert_eq!(
            both(t),
            count(method, route),
            "{t} ({method} {route}): loadtest vs service"
        );
    }
    // The precheck's GET /health is the one request the result leaves out, and nothing else was sent.
    assert_eq!(count("GET", "/health"), 1);
    let sum_of_routes: u64 = expect.iter().map(|(_, m, r)| count(m, r)).sum();
    let warm_total = warmup["requests"]["total"].as_u64().unwrap();
    assert_eq!(total + warm_total, sum_of_routes);
    // The per-second series holds every request of both.
    let series: u64 = result["timeseries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(series, sum_of_routes);
    assert!(page.contains("<svg"), "the HTML report charts the series");
    // Status by status, over the load test's routes.
    let mut statuses: BTreeMap<String, u64> = BTreeMap::new();
    for ((m, r, s), n) in &served {
        if expect.iter().any(|(_, em, er)| em == m && er == r) {
            *statuses.entry(s.clone()).or_default() += n;
        }
    }
    let mut ours: BTreeMap<String, u64> =
        serde_json::from_value(result["requests"]["by_status"].clone()).unwrap();
    let warm: BTreeMap<String, u64> =
        serde_json::from_value(warmup["requests"]["by_status"].clone()).unwrap();
    for (code, n) in warm {
        *ours.entry(code).or_default() += n;
    }
    assert_eq!(ours, statuses);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rate_target_is_recorded_with_the_achieved_rate() {
    let svc = service().await;
    let out = kybctl(&[
        "loadtest",
        "--target",
        &svc.base,
        "--users",
        "4",
        "--duration",
        "2s",
        "--rate",
        "50",
        "--scenario",
        "trivial",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &result["generator"];
    assert_eq!(g["requested_rps"], 50.0, "{result}");
    let achieved = g["achieved_rps"].as_f64().unwrap();
    // Paced, not flat out: close to the target (a slot schedule, so never far above it).
    assert!((40.0..=60.0).contains(&achieved), "{result}");
    let health = result["latency_us"]["by_type"]["health"]["count"]
        .as_u64()
        .unwrap();
    assert!((80..=130).contains(&health), "{result}");
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_and_environment_errors_exit_2_with_the_cause() {
    let port = kybctl::local::free_port().unwrap();
    let target = format!("http://127.0.0.1:{port}");
    let out = kybctl(&["loadtest", "--target", &target, "--duration", "1s"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        stderr(&out).trim(),
        format!("error: cannot reach {target}: connection refused")
    );
    assert!(out.stdout.is_empty());

    let out = kybctl(&["loadtest", "--target", &target, "--users", "0"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = kybctl(&["loadtest", "--target", &target, "--scenario", "nope"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown scenario `nope`"),
        "{}",
        stderr(&out)
    );
    let out = kybctl(&["loadtest", "--target", "localhost:8080"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid --target `localhost:8080`"),
        "{}",
        stderr(&out)
    );
    let out = kybctl(&["loadtest"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "neither --target nor --platform"
    );
    // A bad threshold is refused before any load (the target is not even reached).
    let out = kybctl(&["loadtest", "--target", &target, "--threshold", "p95<fast"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("p95<fast"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("cannot reach"), "{}", stderr(&out));
    let out = kybctl(&["loadtest", "--target", &target, "--min-samples", "5"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "--min-samples needs --threshold"
    );
}

/// A CA, another CA, and a `localhost` server certificate the first one signed, made with openssl in
/// `dir`.
fn test_certificates(dir: &std::path::Path) {
    let script = r#"set -e
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
openssl req -x509 $ec -keyout ca.key -out ca.pem -days 1 -subj "/CN=kybctl test CA" 2>/dev/null
openssl req -x509 $ec -keyout other.key -out other.pem -days 1 -subj "/CN=another CA" 2>/dev/null
openssl req $ec -keyout server.key -out server.csr -subj /CN=localhost 2>/dev/null
printf 'subjectAltName=DNS:localhost\n' > san.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 1 \
  -extfile san.ext 2>/dev/null
"#;
    let out = std::process::Command::new("bash")
        .args(["-c", script])
        .current_dir(dir)
        .output()
        .expect("bash");
    assert!(
        out.status.success(),
        "openssl (tests/run installs it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An https server (rustls) that answers every request `200 {"status":"ok"}`; counts what it served.
async fn https_server(
    dir: &std::path::Path,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    kybctl::tls::ensure_crypto_provider();
    let certs = CertificateDer::pem_file_iter(dir.join("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("server.key")).unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(AtomicU64::new(0));
    let count = served.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, count) = (acceptor.clone(), count.clone());
            tokio::spawn(async move {
                // A client that does not trust the certificate hangs up here.
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let answer = hyper::service::service_fn(move |_req| {
                    count.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(
                                br#"{"status":"ok"}"#,
                            )),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), answer)
                    .await;
            });
        }
    });
    (port, served)
}

/// The client's TLS path: an https target is reached when its certificate chains to a trusted one
/// (`SSL_CERT_FILE` stands in for the system's store, as rustls-native-certs reads it), and refused,
/// with the reason, when it does not.
#[tokio::test(flavor = "multi_thread")]
async fn an_https_target_is_reached_through_the_trusted_certificates() {
    let dir = tempfile::tempdir().unwrap();
    test_certificates(dir.path());
    let (port, served) = https_server(dir.path()).await;
    let target = format!("https://localhost:{port}");
    let run = |trusted: &str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
            .args(["loadtest", "--target", &target, "--scenario", "trivial"])
            .args([
                "--users",
                "2",
                "--duration",
                "1s",
                "-o",
                "json",
                "--no-progress",
            ])
            .env_remove("RUST_LOG")
            .env_remove("SSL_CERT_DIR")
            .env("SSL_CERT_FILE", dir.path().join(trusted))
            .output()
    };

    let out = run("ca.pem").await.unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    let requests = result["requests"]["total"].as_u64().unwrap();
    assert!(requests > 0, "{result}");
    assert_eq!(result["requests"]["errors"], 0, "{result}");
    // The reachability check and the tail after the window are served too.
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= requests);

    let out = run("other.pem").await.unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains(&format!("cannot reach {target}")) && e.contains("certificate"),
        "{e}"
    );
}
