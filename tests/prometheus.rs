//! A real Prometheus scraping the real service, queried over its HTTP API as the rollout analysis will:
//! the request counter shows with the target's `revision` label; a canary answering 503 has a 5xx ratio
//! and a healthy stable has none; a stopped Prometheus fails queries at once (connection refused) and a
//! restarted one still has its samples.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, migrated_db, pg, unique, Service};
use prometheus::TempPrometheus;
use reqwest::StatusCode;

/// `host:port` of a service's metrics listener.
fn target(s: &Service) -> &str {
    s.metrics_base.strip_prefix("http://").unwrap()
}

/// Requests per second from `revision` that answered 5xx, over all its requests, in the last 30 s;
/// Prometheus's own scrapes (`/metrics`, one a second) left out. `or vector(0)`: with no 5xx series at
/// all the numerator is empty, and an empty vector divided by anything is empty, not 0.
fn error_ratio(revision: &str) -> String {
    let sel = format!(r#"service="kyb",revision="{revision}",route!="/metrics""#);
    format!(
        r#"(sum(rate(kyb_http_requests_total{{{sel},status=~"5.."}}[30s])) or vector(0))
           / sum(rate(kyb_http_requests_total{{{sel}}}[30s]))"#
    )
}

/// Polls `promql` every 200 ms until `ok` accepts its value; returns the value and the time it took, or
/// panics after `timeout` with the last value, the targets' state and the log.
async fn value_within(
    prom: &TempPrometheus,
    promql: &str,
    timeout: Duration,
    ok: impl Fn(f64) -> bool,
) -> (f64, Duration) {
    let start = Instant::now();
    loop {
        let got = prom.value(promql).await;
        if let Ok(Some(v)) = got {
            if ok(v) {
                return (v, start.elapsed());
            }
        }
        if start.elapsed() > timeout {
            panic!(
                "{promql}\nwas {got:?} after {timeout:?}\ntargets: {:?}\nlog:\n{}",
                prom.targets().await,
                prom.log_tail(20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrapes_the_service_and_fails_fast_once_stopped() {
    let s = Service::start(config(&migrated_db().await, None)).await;
    let started = Instant::now();
    let mut prom =
        TempPrometheus::start(&[(target(&s), &[("revision", "canary"), ("service", "kyb")])]);
    eprintln!(
        "prometheus: /-/ready answered 200 after {:?}",
        prom.ready_after()
    );

    for _ in 0..5 {
        assert_eq!(s.get("/health").await.status(), StatusCode::OK);
    }
    let missing = format!("/v1/merchants/{}", uuid::Uuid::new_v4());
    for _ in 0..2 {
        assert_eq!(s.get(&missing).await.status(), StatusCode::NOT_FOUND);
    }

    let (total, _) = value_within(
        &prom,
        r#"sum(kyb_http_requests_total{revision="canary"})"#,
        Duration::from_secs(15),
        |v| v > 0.0,
    )
    .await;
    eprintln!(
        "prometheus: first sample of kyb_http_requests_total {:?} after start ({total} requests)",
        started.elapsed()
    );

    // The series carries the service's labels and the target's.
    let data = prom
        .query(r#"kyb_http_requests_total{revision="canary",route="/health"}"#)
        .await
        .unwrap();
    let series = data["result"].as_array().unwrap();
    assert_eq!(series.len(), 1, "{data}");
    let m = &series[0]["metric"];
    assert_eq!(m["method"], "GET", "{m}");
    assert_eq!(m["status"], "200", "{m}");
    assert_eq!(m["service"], "kyb", "{m}");
    assert_eq!(m["job"], prometheus::JOB, "{m}");
    assert_eq!(m["instance"], target(&s), "{m}");
    assert_eq!(series[0]["value"][1], "5", "{data}");
    let not_found = prom
        .value(r#"sum(kyb_http_requests_total{revision="canary",route="/v1/merchants/{id}",status="404"})"#)
        .await
        .unwrap();
    assert_eq!(not_found, Some(2.0));
    // Latency histogram: cumulative buckets up to le="+Inf", which equals _count.
    let inf = prom
        .value(r#"sum(kyb_http_request_duration_seconds_bucket{revision="canary",route="/health",le="+Inf"})"#)
        .await
        .unwrap();
    let count = prom
        .value(r#"sum(kyb_http_request_duration_seconds_count{revision="canary",route="/health"})"#)
        .await
        .unwrap();
    assert_eq!((inf, count), (Some(5.0), Some(5.0)));
    // A PromQL error is the API's, not a transport failure.
    let bad = prom.query("sum(").await.unwrap_err();
    assert!(
        matches!(&bad, prometheus::QueryError::Api { error_type, .. } if error_type == "bad_data"),
        "{bad}"
    );

    // Stopped mid-analysis: the next query fails at once, naming the transport failure. Which one
    // depends on a race the test does not control: a new connection is refused, while a kept-alive
    // one from the pool (if the kill lands before the client sees it close) is closed under the
    // request. Either way it is "unreachable", never a PromQL error or a timeout.
    prom.stop();
    let t = Instant::now();
    let err = prom
        .query(r#"sum(kyb_http_requests_total{revision="canary"})"#)
        .await
        .unwrap_err();
    assert!(err.is_unreachable(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("Connection refused") || text.contains("connection closed"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );

    // Restarted on the same port: the samples from before the kill are still there.
    prom.restart();
    let after = prom
        .value(r#"sum(kyb_http_requests_total{revision="canary",route="/health"})"#)
        .await
        .unwrap();
    assert_eq!(after, Some(5.0));
    s.stop().await;
}

/// The rollout-analysis shape: stable and canary scraped by one Prometheus under steady traffic; the
/// canary's `/ready` answers 503 (its database is not migrated), so half its requests are 5xx, while
/// stable's error ratio is 0, not absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_has_a_5xx_ratio_and_stable_has_none() {
    let stable = Service::start(config(&migrated_db().await, None)).await;
    let unmigrated = unique("t");
    pg().create_database(&unmigrated).unwrap();
    let canary = Service::start(config(&pg().url(&unmigrated), None)).await;
    // Every series exists before the first scrape: rate() ignores a counter's value when first seen.
    for s in [&stable, &canary] {
        s.get("/health").await;
        s.get("/ready").await;
    }
    assert_eq!(
        canary.get("/ready").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );

    let prom = TempPrometheus::start(&[
        (
            target(&stable),
            &[("revision", "stable"), ("service", "kyb")],
        ),
        (
            target(&canary),
            &[("revision", "canary"), ("service", "kyb")],
        ),
    ]);
    let scraped = prom.wait_scraped(Duration::from_secs(20)).await;
    eprintln!("prometheus: both targets scraped {scraped:?} after /-/ready");

    // Steady traffic, ten rounds a second, for at most 40 s.
    let done = Arc::new(AtomicBool::new(false));
    let traffic = {
        let done = done.clone();
        let (http, urls) = (
            stable.http.clone(),
            [&stable, &canary].map(|s| [s.url("/health"), s.url("/ready")]),
        );
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(40);
            while !done.load(Ordering::Relaxed) && Instant::now() < end {
                for url in urls.iter().flatten() {
                    http.get(url).send().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let timeout = Duration::from_secs(20);
    let (canary_ratio, took) = value_within(&prom, &error_ratio("canary"), timeout, |v| {
        (0.3..=0.7).contains(&v)
    })
    .await;
    eprintln!("prometheus: canary 5xx ratio {canary_ratio:.3} after {took:?} of traffic");
    let (stable_ratio, _) =
        value_within(&prom, &error_ratio("stable"), timeout, |v| v == 0.0).await;
    let p95 = r#"histogram_quantile(0.95, sum by (le) (rate(kyb_http_request_duration_seconds_bucket{service="kyb",revision="canary",route!="/metrics"}[30s])))"#;
    let (p95, _) = value_within(&prom, p95, timeout, |v| v > 0.0 && v < 1.0).await;
    eprintln!("prometheus: stable 5xx ratio {stable_ratio}, canary p95 {p95:.4} s");

    done.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}

/// A config Prometheus refuses (here a label name with a dash) fails `start` at once, quoting its log.
/// "At once" is told by the message: `start` saw the process exit, rather than waiting out its
/// readiness timeout (which says "did not answer"). Not by a clock: with `RUST_BACKTRACE=1`, as in CI,
/// the panic's first backtrace alone took 22 s to symbolise once.
#[test]
fn a_refused_config_fails_start_with_the_log_tail() {
    let Err(panic) = std::panic::catch_unwind(|| {
        TempPrometheus::start(&[("127.0.0.1:1", &[("not-a-label", "x")])])
    }) else {
        panic!("start must fail");
    };
    let msg = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    eprintln!("{msg}");
    assert!(msg.contains("exited"), "{msg}");
    assert!(msg.contains("not-a-label"), "{msg}");
}
