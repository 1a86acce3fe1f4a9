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
