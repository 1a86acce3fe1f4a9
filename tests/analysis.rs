//! Rollout analysis with real parts: a real Prometheus scrapes two real in-process `kybctl serve`
//! instances that stand in for the stable and canary pods (kwok's pods run nothing), labelled by
//! `revision`; traffic goes to them in the proportion of the rollout's effective weight; the operator,
//! under its shipped ServiceAccount, queries Prometheus through a KybAnalysisTemplate. The canary is
//! made bad by a real fault: its PostgreSQL is stopped, so it answers 503.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/operator.rs"]
mod operator;
#[path = "common/prometheus.rs"]
mod prometheus;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{check, check_with_stdin, cluster, eventually};
use common::{config, migrated_db, migrated_db_on, Service};
use kube::api::{Api, ListParams};
use kybctl::local::TempPostgres;
use kybctl::operator::analysis::crd::KybAnalysisRun;
use kybctl::operator::crd::{KybPlatform, RolloutStatus};
use operator::Operator;
use prometheus::TempPrometheus;

/// The plan's `success-rate`: the 5xx share of the revision's requests over 30 s (Prometheus's own
/// scrapes left out), on at least 5 requests, failing at the first bad measurement.
fn success_rate_template(prom: &str, no_data: &str, extra: &str) -> String {
    let sel = r#"service="{{args.service-name}}",revision="{{args.revision}}",route!="/metrics""#;
    format!(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybAnalysisTemplate
metadata: {{name: success-rate}}
spec:
  args:
  - name: service-name
  - name: revision
  metrics:
  - name: error-ratio
    interval: 2s
    count: 3
    initialDelay: 6s
    successCondition: result <= 0.01
    failureLimit: 0
    noData: {no_data}
    minSamples: 5
{extra}    provider:
      prometheus:
        address: {prom}
        query: '(sum(rate(kyb_http_requests_total{{{sel},status=~"5.."}}[30s])) or vector(0)) / sum(rate(kyb_http_requests_total{{{sel}}}[30s]))'
        samplesQuery: 'sum(increase(kyb_http_requests_total{{{sel}}}[30s]))'
"#
    )
}

const PLATFORM: &str = r#"apiVersion: kyb.io/v1alpha1
kind: KybPlatform
metadata: {name: kyb}
spec:
  image: registry.example.com/kybctl:1
  replicas: 10
  autoscaling: {enabled: false}
  migrations: {enabled: false}
  database: {primary: {name: kyb-db, key: url}}
  rollout:
    strategy: Canary
    canary:
      steps:
      - setWeight: 20
      - analysis:
          templates: [{templateName: success-rate}]
          args: [{name: service-name, value: kyb}, {name: revision, value: canary}]
      - setWeight: 60
      - analysis:
          templates: [{templateName: success-rate}]
          args: [{name: service-name, value: kyb}, {name: revision, value: canary}]
"#;

struct Rig {
    ns: String,
    op: Operator,
    prom: TempPrometheus,
    canary_pg: TempPostgres,
    weight: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    _services: (Service, Service),
}

async fn rig(prefix: &str) -> Rig {
    let c = cluster().await;
    operator::install_crd().await;
    check(c.kubectl().args([
        "apply",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/operator.yaml"),
    ]));
    let ns = operator::platform_namespace(prefix).await;
    let token = check(
        c.kubectl()
            .args(["create", "token", "kybctl-operator", "-n", "kyb-system"]),
    );
    let op = Operator::start_as(&ns, c.client_with_token(token.trim()).await).await;

    let stable = Service::start(config(&migrated_db().await, None)).await;
    let canary_pg = TempPostgres::start().expect("PostgreSQL for the canary");
    let canary = Service::start(config(&migrated_db_on(&canary_pg).await, None)).await;
    for s in [&stable, &canary] {
        s.get("/ready").await;
    }
    let target = |s: &Service| s.base.strip_prefix("http://").unwrap().to_owned();
    let prom = TempPrometheus::start(&[
        (
            &target(&stable),
            &[("revision", "stable"), ("service", "kyb")],
        ),
        (
            &target(&canary),
            &[("revision", "canary"), ("service", "kyb")],
        ),
    ]);
    prom.wait_scraped(Duration::from_secs(30)).await;

    // Ten requests every 100 ms, split by the rollout's effective canary weight.
    let weight = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    {
        let (weight, stop) = (weight.clone(), stop.clone());
        let http = stable.http.clone();
        let (s_url, c_url) = (stable.url("/ready"), canary.url("/ready"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let to_canary = (weight.load(Ordering::Relaxed) + 5) / 10;
                for i in 0..10 {
                    let url = if i < to_canary { &c_url } else { &s_url };
                    let _ = http.get(url).send().await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    Rig {
        ns,
        op,
        prom,
        canary_pg,
        weight,
        stop,
        _services: (stable, canary),
    }
}

impl Rig {
    async fn rollout(&self) -> RolloutStatus {
        Api::<KybPlatform>::namespaced(cluster().await.client().await, &self.ns)
            .get("kyb")
            .await
            .unwrap()
            .status
            .and_then(|s| s.rollout)
            .unwrap_or_default()
    }

    /// Keeps the traffic split at the rollout's effective weight until `cond` holds.
    async fn until(&self, timeout: Duration, what: &str, cond: impl Fn(&RolloutStatus) -> bool) {
        let start = Instant::now();
        loop {
            let r = self.rollout().await;
            self.weight
                .store(i64::from(r.weights.effective), Ordering::Relaxed);
            if cond(&r) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}: {r:#?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn runs(&self) -> Vec<KybAnalysisRun> {
        Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn apply(&self, yaml: &str) {
        check_with_stdin(
            cluster()
                .await
                .kubectl()
                .args(["apply", "-n", &self.ns, "-f", "-"]),
            yaml,
        );
    }

    async fn set_image(&self, image: &str) {
        check(cluster().await.kubectl().args([
            "patch",
            "-n",
            &self.ns,
            "kyb/kyb",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"image":"{image}"}}}}"#),
        ]));
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_by_analysis_and_a_failing_one_aborted() {
    let mut rig = rig("analysis").await;
    rig.apply(&success_rate_template(&rig.prom.url(), "Inconclusive", ""))
        .await;
    rig.apply(PLATFORM).await;
    rig.until(Duration::from_secs(60), "the first revision", |r| {
        r.phase == "Healthy"
    })
    .await;

    // Healthy canary: every analysis passes, promoted with no manual action.
    rig.set_image("registry.example.com/kybctl:2").await;
    rig.until(Duration::from_secs(120), "promotion by analysis", |r| {
        r.phase == "Healthy" && r.canary_revision.is_none() && r.revisions.len() == 2
    })
    .await;
    let runs = rig.runs().await;
    assert_eq!(runs.len(), 2, "one run per analysis step");
    for run in &runs {
        let st = run.status.clone().unwrap();
        assert_eq!(st.phase, "Successful", "{st:#?}");
        let m = &st.metric_results[0];
        assert_eq!(m.successful, 3);
        assert!(m
            .measurements
            .iter()
            .all(|x| x.query.contains(r#"revision="canary""#)
                && x.samples.unwrap_or(0) >= 5
                && x.value.as_deref() == Some("0")));
    }

    // The canary's database stops: it answers 503, and the next rollout is aborted by analysis.
    rig.canary_pg.stop();
    rig.set_image("registry.example.com/kybctl:3").await;
    rig.until(Duration::from_secs(60), "the analysis step", |r| {
        r.analysis.iter().any(|a| a.purpose == "step-1")
    })
    .await;
    let started = Instant::now();
    rig.until(Duration::from_secs(60), "the abort", |r| {
        r.phase == "Aborted"
    })
    .await;
    let took = started.elapsed();
    eprintln!("analysis: abort {took:?} after the analysis step began");
    // initialDelay 6 s + interval 2 s × (failureLimit 0 + 1), plus reconciles.
    assert!(took < Duration::from_secs(15), "{took:?}");
    let r = rig.rollout().await;
    let abort = r.abort.clone().unwrap();
    assert_eq!(abort.reason, "AnalysisFailed");
    let run_name = &r.analysis[0].run;
    assert!(
        abort.message.contains(run_name.as_str()),
        "{}",
        abort.message
    );
    let run = Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, &rig.ns)
        .get(run_name)
        .await
        .unwrap();
    let st = run.status.unwrap();
    assert_eq!(st.phase, "Failed");
    let failed = st.metric_results[0]
        .measurements
        .iter()
        .find(|m| m.phase == "Failed")
        .expect("a failed measurement");
    assert!(failed.value.as_deref().unwrap().parse::<f64>().unwrap() > 0.01);
    eventually(
        Duration::from_secs(10),
        "a RolloutAborted Event",
        || async {
            let out = check(cluster().await.kubectl().args([
                "get",
                "events",
                "-n",
                &rig.ns,
                "-o",
                "jsonpath={range .items[*]}{.reason} {.note}{.message}{'\\n'}{end}",
            ]));
            out.lines()
                .any(|l| l.starts_with("RolloutAborted") && l.contains(run_name.as_str()))
        },
    )
    .await;
    rig.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_data_and_a_stopped_prometheus_never_pass() {
    let mut rig = rig("analysis-nodata").await;
    // No traffic at all to a revision nobody serves: an empty vector, and no samples.
    let template = success_rate_template(&rig.prom.url(), "Inconclusive", "")
        .replace("{{args.revision}}", "nobody");
    rig.apply(&template).await;
    rig.apply(PLATFORM).await;
    rig.until(Duration::from_secs(60), "the first revision", |r| {
        r.phase == "Healthy"
    })
    .await;
    rig.set_image("registry.example.com/kybctl:2").await;
    rig.until(Duration::from_secs(60), "inconclusive", |r| {
        r.phase == "Paused"
            && r.pause_conditions
                .iter()
                .any(|p| p.reason == "AnalysisInconclusive")
    })
    .await;
    let r = rig.rollout().await;
    assert!(r.message.contains("no data"), "{}", r.message);

    // The same with noData: Fail aborts.
    rig.apply(
        &success_rate_template(&rig.prom.url(), "Fail", "").replace("{{args.revision}}", "nobody"),
    )
    .await;
    rig.set_image("registry.example.com/kybctl:3").await;
    rig.until(Duration::from_secs(60), "aborted on no data", |r| {
        r.phase == "Aborted"
    })
    .await;

    // Prometheus stops mid-analysis: errors are counted, and past consecutiveErrorLimit the
    // configured verdict (here Fail) decides.
    rig.apply(&success_rate_template(
        &rig.prom.url(),
        "Fail",
        "    consecutiveErrorLimit: 2\n",
    ))
    .await;
    rig.set_image("registry.example.com/kybctl:4").await;
    // (The aborted revision 3 also shows a step-1 analysis: wait for the new rollout's.)
    rig.until(Duration::from_secs(60), "the analysis step", |r| {
        r.abort.is_none() && r.analysis.iter().any(|a| a.purpose == "step-1")
    })
    .await;
    rig.prom.stop();
    rig.until(Duration::from_secs(60), "aborted on errors", |r| {
        r.phase == "Aborted"
    })
    .await;
    let r = rig.rollout().await;
    let run = Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, &rig.ns)
        .get(&r.analysis[0].run)
        .await
        .unwrap();
    let m = &run.status.unwrap().metric_results[0];
    assert!(m.error >= 3, "{m:#?}");
    assert!(
        m.measurements
            .iter()
            .any(|x| x.phase == "Error" && x.message.contains("Prometheus")),
        "{m:#?}"
    );
    rig.finish().await;
}

/// A JSON endpoint whose error rate the test sets; it answers only with the Secret's bearer token.
async fn score_server(error_rate: Arc<AtomicI64>, authorized: Arc<AtomicI64>) -> String {
    use axum::http::{HeaderMap, StatusCode};
    let app = axum::Router::new().route(
        "/score",
        axum::routing::get(move |headers: HeaderMap| {
            let (rate, authorized) = (error_rate.clone(), authorized.clone());
            async move {
                if headers.get("authorization").and_then(|v| v.to_str().ok())
                    != Some("Bearer s3cret")
                {
                    return Err(StatusCode::UNAUTHORIZED);
                }
                authorized.fetch_add(1, Ordering::Relaxed);
                let rate = rate.load(Ordering::Relaxed) as f64 / 1000.0;
                Ok(axum::Json(
                    serde_json::json!({"data": {"errorRate": rate, "requests": 100}}),
                ))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/score")
}

fn web_template(name: &str, url: &str, count: i32) -> String {
    format!(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybAnalysisTemplate
metadata: {{name: {name}}}
spec:
  metrics:
  - name: error-rate
    interval: 1s
    count: {count}
    successCondition: result <= 0.01
    minSamples: 10
    provider:
      web:
        url: {url}
        jsonPath: /data/errorRate
        samplesPath: /data/requests
        headers: [{{name: Authorization, valueFrom: {{name: score-token, key: header}}}}]
  - name: never-passes
    dryRun: true
    interval: 1s
    count: {count}
    successCondition: result < 0.0
    provider:
      web:
        url: {url}
        jsonPath: /data/errorRate
        headers: [{{name: Authorization, valueFrom: {{name: score-token, key: header}}}}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_post_promotion_analysis_switches_back_and_dry_run_never_decides() {
    let rig = rig("analysis-bg").await;
    let (rate, authorized) = (Arc::new(AtomicI64::new(0)), Arc::new(AtomicI64::new(0)));
    let url = score_server(rate.clone(), authorized.clone()).await;
    check(cluster().await.kubectl().args([
        "create",
        "secret",
        "generic",
        "score-token",
        "-n",
        &rig.ns,
        "--from-literal=header=Bearer s3cret",
    ]));
    rig.apply(&web_template("web-pre", &url, 2)).await;
    rig.apply(&web_template("web-post", &url, 6)).await;
    rig.apply(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybPlatform
metadata: {name: kyb}
spec:
  image: registry.example.com/kybctl:1
  replicas: 5
  autoscaling: {enabled: false}
  migrations: {enabled: false}
  database: {primary: {name: kyb-db, key: url}}
  rollout:
    strategy: BlueGreen
    blueGreen:
      autoPromotionEnabled: true
      scaleDownDelaySeconds: 5
      prePromotionAnalysis: {templates: [{templateName: web-pre}]}
      postPromotionAnalysis: {templates: [{templateName: web-post}]}
"#,
    )
    .await;
    rig.until(Duration::from_secs(60), "the first revision", |r| {
        r.phase == "Healthy"
    })
    .await;
    let blue = rig.rollout().await.stable_revision.unwrap();

    // Pre-promotion passes (the dry-run metric fails and does not count); promotion is automatic.
    rig.set_image("registry.example.com/kybctl:2").await;
    rig.until(Duration::from_secs(60), "the switch to green", |r| {
        r.stable_revision.as_deref() != Some(blue.as_str())
    })
    .await;
    // Green turns bad right after the switch: the post-promotion analysis switches back to blue.
    rate.store(500, Ordering::Relaxed);
    rig.until(Duration::from_secs(60), "the switch back", |r| {
        r.phase == "Aborted"
    })
    .await;
    let r = rig.rollout().await;
    assert_eq!(r.stable_revision.as_deref(), Some(blue.as_str()));
    assert_eq!(r.abort.as_ref().unwrap().reason, "AnalysisFailed");
    let selector = Api::<k8s_openapi::api::core::v1::Service>::namespaced(
        cluster().await.client().await,
        &rig.ns,
    )
    .get("kyb")
    .await
    .unwrap()
    .spec
    .unwrap()
    .selector
    .unwrap();
    assert_eq!(
        selector.get("kyb.io/revision"),
        Some(&blue),
        "active is blue again"
    );

    let runs = rig.runs().await;
    let by = |purpose: &str| {
        runs.iter()
            .find(|r| r.spec.purpose == purpose)
            .and_then(|r| r.status.clone())
            .unwrap_or_else(|| panic!("no {purpose} run"))
    };
    let pre = by("pre-promotion");
    assert_eq!(pre.phase, "Successful", "{pre:#?}");
    let dry = pre
        .metric_results
        .iter()
        .find(|m| m.name == "never-passes")
        .unwrap();
    assert!(dry.dry_run && dry.failed > 0, "recorded: {dry:#?}");
    assert_eq!(by("post-promotion").phase, "Failed");
    assert!(authorized.load(Ordering::Relaxed) > 0);
    let all = serde_json::to_string(&runs).unwrap();
    assert!(!all.contains("s3cret"), "the token is never recorded");
    rig.finish().await;
}
