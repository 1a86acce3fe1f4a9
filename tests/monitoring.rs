//! The alerts and dashboard rendered from a KybPlatform, checked by the tools that will run them:
//! `promtool check rules` and `promtool test rules` (crafted series, Prometheus's own evaluator) on
//! what `kybctl alerts render` prints, and a real Prometheus evaluating the rendered rules while it
//! scrapes a real `kybctl serve` whose database is stopped and started again.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{business, config, migrated_db_on, Service};
use kybctl::local::TempPostgres;
use kybctl::operator::crd::KybPlatform;
use kybctl::operator::monitoring;
use prometheus::TempPrometheus;
use reqwest::StatusCode;
use serde_json::Value;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/manifests/samples/minimal.yaml"
);

fn promtool() -> std::path::PathBuf {
    let bin = std::env::var_os("KYB_PROMTOOL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "promtool".into());
    assert!(
        Command::new(&bin).arg("--version").output().is_ok(),
        "the tests need promtool: install it (Debian: apt-get install --no-install-recommends \
         prometheus; tests/run does) or set KYB_PROMTOOL"
    );
    bin
}

/// `kybctl alerts render -f SAMPLE -o rules`: the rule file.
fn rendered_rules() -> String {
    let out = common::kybctl(&["alerts", "render", "-f", SAMPLE, "-o", "rules"]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    stdout
}

/// The summary annotation of `alert` (the one with `long_window` when given) in the rule file.
fn summary(rules: &Value, alert: &str, long_window: Option<&str>) -> String {
    rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| {
            r["alert"] == alert && long_window.is_none_or(|w| r["labels"]["long_window"] == w)
        })
        .unwrap_or_else(|| panic!("no {alert}"))["annotations"]["summary"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn promtool_checks_the_rules_and_their_alerts_fire_on_crafted_series() {
    let promtool = promtool();
    let dir = tempfile::tempdir().unwrap();
    let rules_text = rendered_rules();
    let rules_path = dir.path().join("rules.yml");
    std::fs::write(&rules_path, &rules_text).unwrap();
    let check = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(&rules_path)
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&check);
    assert!(check.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("SUCCESS"), "{stdout}");

    let rules: Value = serde_yaml::from_str(&rules_text).unwrap();
    let sel = r#"namespace="default",kyb_platform="kyb""#;
    let platform = r#"kyb_platform: kyb, namespace: default"#;
    // 1,000 good requests a minute throughout; from minute 60, 100 a minute fail (9 %). At 75 min
    // the fast burn (1 h and 5 min windows over 14.4 x the 0.1 % budget) has held for its 2 min and
    // fires; the 6 h pair has not held for its 15 min yet, nor the slower ones for theirs. Before
    // the errors, nothing fires. A queue 1,500 deep for 10 min fires; one 900 deep does not.
    let tests = format!(
        r#"rule_files: [{rules}]
evaluation_interval: 1m
tests:
- interval: 1m
  input_series:
  - series: 'kyb_http_requests_total{{{sel},route="/v1/merchants",method="POST",status="201"}}'
    values: '0+1000x100'
  - series: 'kyb_http_requests_total{{{sel},route="/v1/merchants",method="POST",status="503"}}'
    values: '0x60 100+100x40'
  - series: 'kyb_http_requests_total{{{sel},route="/health",method="GET",status="503"}}'
    values: '0+5000x100'
  alert_rule_test:
  - eval_time: 50m
    alertname: KybErrorBudgetBurn
    exp_alerts: []
  - eval_time: 50m
    alertname: KybHighErrorRate
    exp_alerts: []
  - eval_time: 75m
    alertname: KybErrorBudgetBurn
    exp_alerts:
    - exp_labels: {{severity: critical, long_window: 1h, {platform}}}
      exp_annotations: {{summary: "{fast}"}}
  - eval_time: 75m
    alertname: KybHighErrorRate
    exp_alerts:
    - exp_labels: {{severity: warning, {platform}}}
      exp_annotations: {{summary: "{error_rate}"}}
  - eval_time: 90m
    alertname: KybErrorBudgetBurn
    exp_alerts:
    - exp_labels: {{severity: critical, long_window: 1h, {platform}}}
      exp_annotations: {{summary: "{fast}"}}
    - exp_labels: {{severity: critical, long_window: 6h, {platform}}}
      exp_annotations: {{summary: "{slow}"}}
- interval: 1m
  input_series:
  - series: 'kyb_queue_depth{{{sel},queue="kyb-processing",kind="classify",priority="0",pod="w-1"}}'
    values: '1500x20'
  - series: 'kyb_queue_depth{{{sel},queue="kyb-processing",kind="classify",priority="0",pod="w-2"}}'
    values: '1500x20'
  - series: 'kyb_queue_depth{{namespace="default",kyb_platform="other",queue="kyb-processing",kind="classify",priority="0",pod="o-1"}}'
    values: '5000x20'
  alert_rule_test:
  - eval_time: 10m
    alertname: KybQueueDeep
    exp_alerts:
    - exp_labels: {{severity: warning, {platform}}}
      exp_annotations: {{summary: "{queue}"}}
- interval: 1m
  input_series:
  - series: 'kyb_queue_depth{{{sel},queue="kyb-processing",kind="classify",priority="0",pod="w-1"}}'
    values: '900x20'
  - series: 'kyb_queue_depth{{{sel},queue="kyb-processing",kind="classify",priority="0",pod="w-2"}}'
    values: '900x20'
  alert_rule_test:
  - eval_time: 10m
    alertname: KybQueueDeep
    exp_alerts: []
"#,
        rules = rules_path.display(),
        fast = summary(&rules, "KybErrorBudgetBurn", Some("1h")),
        slow = summary(&rules, "KybErrorBudgetBurn", Some("6h")),
        error_rate = summary(&rules, "KybHighErrorRate", None),
        queue = summary(&rules, "KybQueueDeep", None),
    );
    let tests_path = dir.path().join("tests.yml");
    std::fs::write(&tests_path, tests).unwrap();
    let run = Command::new(&promtool)
        .args(["test", "rules"])
        .arg(&tests_path)
        .output()
        .unwrap();
    let (stdout, stderr) = common::text(&run);
    assert!(run.status.success(), "{stdout}{stderr}");
}

/// Polls `/api/v1/alerts` until `alert` is (or, with `firing` false, is no longer) firing.
async fn until_alert(
    prom: &TempPrometheus,
    alert: &str,
    firing: bool,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let alerts = prom.alerts().await.unwrap();
        let now = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["labels"]["alertname"] == alert && a["state"] == "firing");
        if now == firing {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{alert} still {} after {timeout:?}: {alerts}\n{}",
            if firing { "not firing" } else { "firing" },
            prom.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The rendered rules, evaluated by a real Prometheus scraping a real `kybctl serve`: with the
/// database stopped, creations fail (503) and the error-rate alert fires; with it back and enough
/// good requests in the 5 min window, the alert resolves. Every dashboard query runs, and the scrape
/// (OpenMetrics) is healthy with every family that has series typed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_fires_and_resolves_the_error_rate_alert() {
    let mut pg = TempPostgres::start().unwrap();
    let db = migrated_db_on(&pg).await;
    let s = Service::start(config(&db, None)).await;
    let mut kp: KybPlatform =
        serde_yaml::from_str(&std::fs::read_to_string(SAMPLE).unwrap()).unwrap();
    kp.metadata.namespace = Some("default".into());
    // The plan's 5 min `for` and 30 s evaluation, shortened so the test waits seconds.
    kp.spec.monitoring.alert_for = "0s".into();
    kp.spec.monitoring.interval = "1s".into();
    let rules = serde_yaml::to_string(
        &serde_json::json!({"groups": monitoring::rule_groups(&kp, &kp.spec.monitoring)}),
    )
    .unwrap();
    let target = s.metrics_base.strip_prefix("http://").unwrap().to_owned();
    let prom = TempPrometheus::start_with_rules(
        &[(
            &target,
            &[("namespace", "default"), ("kyb_platform", "kyb")],
        )],
        Some(&rules),
    );

    // Good traffic first; the first failure below makes the 5xx series exist before its rate is
    // taken (rate() ignores a counter's value when first seen).
    let merchant: Value = s
        .post_json("/v1/merchants", &business("Alert Bakery", "bakery"))
        .await
        .json()
        .await
        .unwrap();
    let read = format!("/v1/merchants/{}", merchant["id"].as_str().unwrap());
    for _ in 0..100 {
        assert_eq!(s.get(&read).await.status(), StatusCode::OK);
    }
    prom.wait_scraped(Duration::from_secs(20)).await;
    pg.stop();
    let down = business("Down Bakery", "bakery");
    let create = || s.post_json("/v1/merchants", &down);
    assert_eq!(create().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::sleep(Duration::from_secs(3)).await;
    for _ in 0..4 {
        assert_eq!(create().await.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    let fired = until_alert(&prom, "KybHighErrorRate", true, Duration::from_secs(30)).await;
    eprintln!("monitoring: KybHighErrorRate firing {fired:?} after the failures");

    // Back: once good requests outnumber the failures a thousand to one in the window, it resolves.
    // Waited for on /ready, which the rules leave out: a creation tried too early would be one more
    // failure in the window.
    pg.restart().unwrap();
    assert!(
        common::eventually(Duration::from_secs(30), || async {
            s.get("/ready").await.status() == StatusCode::OK
        })
        .await
    );
    let started = Instant::now();
    let reads: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (s.http.clone(), s.url(&read));
            tokio::spawn(async move {
                for _ in 0..1_500 {
                    assert!(http.get(&url).send().await.unwrap().status().is_success());
                }
            })
        })
        .collect();
    for r in reads {
        r.await.unwrap();
    }
    eprintln!(
        "monitoring: 12,000 good requests in {:?}",
        started.elapsed()
    );
    let resolved = until_alert(&prom, "KybHighErrorRate", false, Duration::from_secs(30)).await;
    eprintln!("monitoring: KybHighErrorRate resolved {resolved:?} after them");

    // Every dashboard query runs (Grafana's $__rate_interval as Grafana would fill it in), and those
    // over series this service has (not the operator's, the workers' or the registry's) return data.
    let served_here = [
        "Traffic by route",
        "Errors (5xx share of API requests)",
        "Latency",
        "Cache hit rate by level",
        "Database pool connections",
        "Pods scraped",
    ];
    for (title, q) in monitoring::dashboard_queries(&kp) {
        let q = q.replace("$__rate_interval", "1m");
        let data = prom
            .query(&q)
            .await
            .unwrap_or_else(|e| panic!("dashboard query of {title:?} failed: {q}\n{e}"));
        if served_here.contains(&title) {
            assert!(
                !data["result"].as_array().unwrap().is_empty(),
                "dashboard query of {title:?} found nothing: {q}"
            );
        }
    }
    // The scrape is healthy and every family the service exposes is typed.
    let targets = prom.targets().await.unwrap();
    let active = &targets["activeTargets"][0];
    assert_eq!(active["health"], "up", "{targets}");
    let metadata = prom.metadata().await.unwrap();
    let families: Vec<(&str, &str)> = metadata
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| Some((m["metric"].as_str()?, m["type"].as_str()?)))
        .filter(|(name, _)| name.starts_with("kyb_"))
        .collect();
    // Scraped as OpenMetrics: a counter family is named without `_total` (the classic text format
    // would list `kyb_http_requests_total`, typed only by convention).
    for family in [
        ("kyb_http_requests", "counter"),
        ("kyb_http_request_duration_seconds", "histogram"),
        ("kyb_db_pool_connections", "gauge"),
    ] {
        assert!(families.contains(&family), "{family:?} in {families:?}");
    }
    for (name, kind) in &families {
        assert_ne!(*kind, "unknown", "{name} has no type");
    }
    s.stop().await;
}
