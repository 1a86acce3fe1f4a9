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
#[path = "common/split.rs"]
mod split;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cluster::{check, cluster, eventually};
use common::{config, migrated_db, migrated_db_on, Service};
use kube::api::{Api, ListParams};
use kube::ResourceExt;
use kybctl::local::TempPostgres;
use kybctl::operator::analysis::crd::KybAnalysisRun;
use kybctl::operator::crd::RolloutStatus;
use operator::Operator;
use split::SplitTraffic;

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
    split: SplitTraffic,
}

async fn rig(prefix: &str) -> Rig {
    let (ns, op) = Operator::start_shipped(prefix).await;
    let split = SplitTraffic::start(&migrated_db().await).await;
    Rig { ns, op, split }
}

impl Rig {
    async fn rollout(&self) -> RolloutStatus {
        operator::rollout_status(&self.ns, "kyb").await
    }

    /// Keeps the traffic split at the rollout's effective weight until `cond` holds.
    async fn until(&self, timeout: Duration, what: &str, cond: impl Fn(&RolloutStatus) -> bool) {
        operator::until_rollout(&self.ns, "kyb", timeout, what, |r| {
            self.split.set_weight(r.weights.effective);
            cond(r)
        })
        .await;
    }

    async fn runs(&self) -> Vec<KybAnalysisRun> {
        Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, &self.ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
    }

    async fn apply(&self, yaml: &str) {
        operator::apply(&self.ns, yaml).await;
    }

    async fn set_image(&self, image: &str) {
        operator::set_image(&self.ns, "kyb", image).await;
    }

    async fn finish(self) {
        self.split.stop();
        self.op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_canary_is_promoted_by_analysis_and_a_failing_one_aborted() {
    let mut rig = rig("analysis").await;
    rig.apply(&success_rate_template(
        &rig.split.prom.url(),
        "Inconclusive",
        "",
    ))
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
    rig.split.canary_pg.stop();
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
    let template = success_rate_template(&rig.split.prom.url(), "Inconclusive", "")
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

    // 0/0 (Prometheus answers NaN) and a real sample count below minSamples: inconclusive too.
    let prom = rig.split.prom.url();
    let sel = r#"service="kyb",revision="canary",route!="/metrics""#;
    rig.apply(&format!(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybAnalysisTemplate
metadata: {{name: success-rate}}
spec:
  args: [{{name: service-name}}, {{name: revision}}]
  metrics:
  - name: zero-by-zero
    interval: 1s
    successCondition: result <= 0.01
    provider: {{prometheus: {{address: "{prom}", query: "vector(0) / vector(0)"}}}}
  - name: too-few
    interval: 1s
    successCondition: result <= 0.01
    minSamples: 1000000
    provider:
      prometheus:
        address: "{prom}"
        query: 'sum(rate(kyb_http_requests_total{{{sel},status=~"5.."}}[30s])) or vector(0)'
        samplesQuery: 'sum(increase(kyb_http_requests_total{{{sel}}}[30s]))'
"#
    ))
    .await;
    // (Wait for the new revision's run: the one before is Inconclusive too.)
    let before: Vec<String> = r.analysis.iter().map(|a| a.run.clone()).collect();
    let new_run = |r: &RolloutStatus| {
        r.analysis
            .iter()
            .find(|a| a.purpose == "step-1" && !before.contains(&a.run))
            .cloned()
    };
    rig.set_image("registry.example.com/kybctl:nan").await;
    rig.until(
        Duration::from_secs(60),
        "inconclusive on NaN and few samples",
        |r| r.phase == "Paused" && new_run(r).is_some_and(|a| a.phase == "Inconclusive"),
    )
    .await;
    let r = rig.rollout().await;
    let run = Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, &rig.ns)
        .get(&new_run(&r).unwrap().run)
        .await
        .unwrap();
    let results = run.status.unwrap().metric_results;
    let message = |name: &str| {
        let m = results.iter().find(|m| m.name == name).unwrap();
        assert_eq!(m.phase, "Inconclusive", "{m:#?}");
        m.measurements[0].message.clone()
    };
    assert!(message("zero-by-zero").contains("NaN"));
    assert!(message("too-few").contains("fewer than minSamples 1000000"));

    // The same with noData: Fail aborts.
    rig.apply(
        &success_rate_template(&rig.split.prom.url(), "Fail", "")
            .replace("{{args.revision}}", "nobody"),
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
        &rig.split.prom.url(),
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
    rig.split.prom.stop();
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

/// A canary of `replicas` pods gated by one analysis step on the template `check`.
const GATED: &str = r#"apiVersion: kyb.io/v1alpha1
kind: KybPlatform
metadata: {name: kyb}
spec:
  image: registry.example.com/kybctl:1
  replicas: 2
  autoscaling: {enabled: false}
  migrations: {enabled: false}
  database: {primary: {name: kyb-db, key: url}}
  slos: {p95Latency: 5s, errorRatePercent: 5, throughputRpm: 60, cacheHitRatePercent: 1}
  rollout:
    strategy: Canary
    canary:
      steps:
      - setWeight: 50
      - analysis:
          templates: [{templateName: check}]
          args: [{name: service-name, value: kyb-canary}]
"#;

/// The template `check` with `metrics` (YAML list items, indented by two).
fn check_template(metrics: &str) -> String {
    format!(
        "apiVersion: kyb.io/v1alpha1\nkind: KybAnalysisTemplate\nmetadata: {{name: check}}\nspec:\n  args: [{{name: service-name}}]\n  metrics:\n{metrics}"
    )
}

/// A `job` metric whose pod kwok completes, fails (`fail`) or holds running (`hold`).
fn job_metric(name: &str, annotations: &str, deadline: i64) -> String {
    format!(
        r#"  - name: {name}
    provider:
      job:
        deadlineSeconds: {deadline}
        spec:
          backoffLimit: 0
          template:
            metadata: {{annotations: {{{annotations}}}}}
            spec:
              restartPolicy: Never
              containers:
              - {{name: smoke, image: curlimages/curl:8, args: [-fsS, "http://{{{{args.service-name}}}}/ready"]}}
"#
    )
}

async fn runs_in(ns: &str) -> Vec<KybAnalysisRun> {
    Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

/// The status of the run that the rollout's current analysis step names.
async fn current_run(ns: &str) -> kybctl::operator::analysis::crd::KybAnalysisRunStatus {
    let r = operator::rollout_status(ns, "kyb").await;
    let name = &r.analysis.last().expect("an analysis").run;
    Api::<KybAnalysisRun>::namespaced(cluster().await.client().await, ns)
        .get(name)
        .await
        .unwrap()
        .status
        .unwrap()
}

async fn analysis_jobs(ns: &str) -> Vec<k8s_openapi::api::batch::v1::Job> {
    Api::<k8s_openapi::api::batch::v1::Job>::namespaced(cluster().await.client().await, ns)
        .list(&ListParams::default().labels("app.kubernetes.io/component=analysis"))
        .await
        .unwrap()
        .items
}

/// A JSON endpoint that has no value to give (`errorRate: null`).
async fn empty_score_server() -> String {
    let app = axum::Router::new().route(
        "/score",
        axum::routing::get(|| async {
            axum::Json(serde_json::json!({"data": {"errorRate": null}}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/score")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_metrics_pass_fail_and_meet_their_deadline_and_web_no_data_pauses() {
    let (ns, op) = Operator::start_shipped("analysis-jobs").await;
    let healthy = |r: &RolloutStatus| r.phase == "Healthy" && r.canary_revision.is_none();
    let aborted = |r: &RolloutStatus| r.phase == "Aborted";
    operator::apply(&ns, &check_template(&job_metric("smoke", "", 60))).await;
    operator::apply(&ns, GATED).await;
    operator::until_rollout(&ns, "kyb", Duration::from_secs(60), "v1", healthy).await;

    // The Job completes: the step passes and the canary is promoted.
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:2").await;
    operator::until_rollout(&ns, "kyb", Duration::from_secs(90), "promotion", |r| {
        healthy(r) && r.revisions.len() == 2
    })
    .await;
    let runs = runs_in(&ns).await;
    let st = runs[0].status.clone().unwrap();
    assert_eq!(st.phase, "Successful", "{st:#?}");
    let m = &st.metric_results[0].measurements[0];
    assert!(
        m.query
            .contains("curlimages/curl:8 -fsS http://kyb-canary/ready"),
        "arguments substituted, the command recorded: {m:#?}"
    );
    let jobs = analysis_jobs(&ns).await;
    assert_eq!(jobs.len(), 1);
    let owner = &jobs[0].metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("KybAnalysisRun", runs[0].metadata.name.as_deref().unwrap())
    );

    // One metric's Job fails: the run fails, the rollout aborts, and the other metric's Job, still
    // running with ten minutes to go, is stopped.
    operator::apply(
        &ns,
        &check_template(&format!(
            "{}{}",
            job_metric("fails", r#"kwok.x-k8s.io/fail: "true""#, 60),
            job_metric("slow", r#"kwok.x-k8s.io/hold: "true""#, 600)
        )),
    )
    .await;
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:3").await;
    let r = operator::until_rollout(
        &ns,
        "kyb",
        Duration::from_secs(90),
        "abort on a failed Job",
        aborted,
    )
    .await;
    assert_eq!(r.abort.as_ref().unwrap().reason, "AnalysisFailed", "{r:#?}");
    let st = current_run(&ns).await;
    assert_eq!(st.phase, "Failed", "{st:#?}");
    let fails = st
        .metric_results
        .iter()
        .find(|m| m.name == "fails")
        .unwrap();
    assert_eq!(fails.phase, "Failed");
    assert!(
        fails.measurements[0]
            .message
            .contains("BackoffLimitExceeded"),
        "{fails:#?}"
    );
    eventually(Duration::from_secs(30), "the slow Job stopped", || {
        let ns = ns.clone();
        async move {
            analysis_jobs(&ns).await.iter().all(|j| {
                j.labels().get("kyb.io/analysis-metric").map(String::as_str) != Some("slow")
                    || j.metadata.deletion_timestamp.is_some()
            })
        }
    })
    .await;

    // A Job that never finishes fails its measurement at its deadline (the Job controller enforces
    // the activeDeadlineSeconds the operator set from deadlineSeconds).
    operator::apply(
        &ns,
        &check_template(&job_metric("hangs", r#"kwok.x-k8s.io/hold: "true""#, 3)),
    )
    .await;
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:4").await;
    operator::until_rollout(
        &ns,
        "kyb",
        Duration::from_secs(60),
        "the analysis step",
        |r| r.abort.is_none() && !r.analysis.is_empty(),
    )
    .await;
    let started = Instant::now();
    operator::until_rollout(
        &ns,
        "kyb",
        Duration::from_secs(90),
        "abort at the deadline",
        aborted,
    )
    .await;
    let st = current_run(&ns).await;
    let m = &st.metric_results[0].measurements[0];
    assert_eq!(m.phase, "Failed", "{st:#?}");
    assert!(m.message.contains("DeadlineExceeded"), "{m:#?}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "not before the deadline"
    );

    // web, with no value in the answer: inconclusive, so the rollout pauses and says why.
    let url = empty_score_server().await;
    operator::apply(
        &ns,
        &check_template(&format!(
            "  - name: score\n    interval: 1s\n    successCondition: result < 0.01\n    provider:\n      web: {{url: \"{url}\", jsonPath: /data/errorRate}}\n"
        )),
    )
    .await;
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:5").await;
    let r = operator::until_rollout(&ns, "kyb", Duration::from_secs(60), "inconclusive", |r| {
        r.phase == "Paused"
            && r.pause_conditions
                .iter()
                .any(|p| p.reason == "AnalysisInconclusive")
    })
    .await;
    assert!(r.message.contains("no data"), "{}", r.message);
    op.stop().await;
}

/// The `slo` Job's `kybctl` arguments pointed at `target` instead of the cluster's Service, and at
/// `key_file` instead of the generated key the Job mounts (the services here take any caller).
fn retarget(args: &[String], target: &str, key_file: &std::path::Path) -> Vec<String> {
    let mut out = args.to_vec();
    let i = out.iter().position(|a| a == "--target").unwrap();
    out[i + 1] = target.to_owned();
    let k = out.iter().position(|a| a == "--api-key-file").unwrap();
    assert_eq!(out[k + 1], "/var/run/secrets/kyb-client/key");
    out[k + 1] = key_file.display().to_string();
    out
}

/// Runs `kybctl ARGS`; its exit code and output.
async fn kybctl_async(args: &[String]) -> (i32, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(args)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The verdict of the Job's command against a real service, and of `kybctl slo check` on the same
/// run's result with the same thresholds: they must agree.
async fn same_verdict(job_args: &[String], target: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, "kyb_unused\n").unwrap();
    let mut args = retarget(job_args, target, &key_file);
    args.extend(["--out".into(), result.display().to_string()]);
    let (job_code, job_out) = kybctl_async(&args).await;
    let mut check = vec!["slo".to_owned(), "check".into(), "--result".into()];
    check.push(result.display().to_string());
    for pair in job_args.windows(2) {
        if matches!(pair[0].as_str(), "--threshold" | "--min-samples") {
            check.extend(pair.iter().cloned());
        }
    }
    let (check_code, check_out) = kybctl_async(&check).await;
    assert_eq!(
        job_code, check_code,
        "the Job's command and `slo check` disagree:\n{job_out}\n---\n{check_out}"
    );
    (job_code, job_out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_slo_metric_is_the_platforms_slo_check_run_as_a_job() {
    let (ns, op) = Operator::start_shipped("analysis-slo").await;
    let slo_template = |annotations: &str| {
        check_template(&format!(
            "  - name: slos\n    minSamples: 20\n    provider:\n      slo: {{users: 4, duration: 3s, podAnnotations: {{{annotations}}}}}\n"
        ))
    };
    operator::apply(&ns, &slo_template("")).await;
    operator::apply(&ns, GATED).await;
    operator::until_rollout(&ns, "kyb", Duration::from_secs(60), "v1", |r| {
        r.phase == "Healthy"
    })
    .await;

    // kwok completes the load-test Job (exit 0): promoted.
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:2").await;
    operator::until_rollout(&ns, "kyb", Duration::from_secs(90), "promotion", |r| {
        r.phase == "Healthy" && r.canary_revision.is_none() && r.revisions.len() == 2
    })
    .await;
    let jobs = analysis_jobs(&ns).await;
    let pod = jobs[0].spec.clone().unwrap().template.spec.unwrap();
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some("registry.example.com/kybctl:2"));
    let args = c.args.clone().unwrap();
    let provider = kybctl::operator::analysis::crd::SloProvider {
        users: 4,
        duration: "3s".into(),
        ..Default::default()
    };
    let kp = operator::platform(&ns, "kyb").await;
    assert_eq!(
        args,
        kybctl::operator::analysis::jobs::slo_command(&kp, &provider, "step-1", Some(20)).unwrap(),
        "the Job runs what the operator's pure command builder says, thresholds from spec.slos"
    );
    assert_eq!(
        args.iter()
            .position(|a| a == "--target")
            .map(|i| args[i + 1].as_str()),
        Some(format!("http://kyb-canary.{ns}.svc").as_str())
    );
    let st = runs_in(&ns).await[0].status.clone().unwrap();
    assert!(
        st.metric_results[0].measurements[0]
            .query
            .contains("kybctl loadtest --target"),
        "{st:#?}"
    );

    // The command itself against real services: the Job judges as `slo check` does, passing a
    // healthy service and failing one whose database is down (every request a 503).
    let healthy = Service::start(config(&migrated_db().await, None)).await;
    healthy.get("/ready").await;
    let (code, out) = same_verdict(&args, &healthy.base).await;
    assert_eq!(code, 0, "a healthy service passes these SLOs:\n{out}");
    let mut broken_pg = TempPostgres::start().expect("PostgreSQL");
    let mut broken = config(&migrated_db_on(&broken_pg).await, None);
    // A stopped database answers at once (connection refused); do not wait out the test default.
    broken.database.pool.acquire_timeout = Duration::from_millis(200);
    let broken = Service::start(broken).await;
    broken.get("/ready").await;
    broken_pg.stop();
    let (code, out) = same_verdict(&args, &broken.base).await;
    assert_eq!(code, 1, "a failing service fails them:\n{out}");

    // Through kwok, the Job's exit code is the verdict: 3 (inconclusive) pauses, 1 (failed) aborts.
    operator::apply(
        &ns,
        &slo_template(r#"kwok.x-k8s.io/fail: "true", kwok.x-k8s.io/exit-code: "3""#),
    )
    .await;
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:3").await;
    let r = operator::until_rollout(&ns, "kyb", Duration::from_secs(90), "inconclusive", |r| {
        r.phase == "Paused"
            && r.pause_conditions
                .iter()
                .any(|p| p.reason == "AnalysisInconclusive")
    })
    .await;
    assert!(r.message.contains("inconclusive"), "{}", r.message);
    operator::apply(
        &ns,
        &slo_template(r#"kwok.x-k8s.io/fail: "true", kwok.x-k8s.io/exit-code: "1""#),
    )
    .await;
    operator::set_image(&ns, "kyb", "registry.example.com/kybctl:4").await;
    operator::until_rollout(&ns, "kyb", Duration::from_secs(90), "abort", |r| {
        r.phase == "Aborted"
    })
    .await;
    let st = current_run(&ns).await;
    let m = &st.metric_results[0].measurements[0];
    assert_eq!(m.phase, "Failed", "{st:#?}");
    assert!(
        m.message.contains("an SLO failed") && m.message.contains("exit code 1"),
        "{m:#?}"
    );
    op.stop().await;
}
