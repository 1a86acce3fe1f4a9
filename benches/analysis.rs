//! Rollout analysis benchmark: how long from a canary turning bad to the operator aborting it, and how
//! many Prometheus queries an analysis run costs. The same real parts as `tests/analysis.rs`: the test
//! control plane, a real Prometheus scraping two real in-process services (stable and canary, labelled by
//! `revision`, 1 s scrape interval), traffic split by the rollout's effective weight, and the operator in
//! this process. The canary turns bad by its PostgreSQL being stopped (it answers 503).
//!
//! Each run: a canary pauses at 20 % with a background analysis measuring every 5 s; once it has
//! passed a measurement, the canary's database stops; the clock runs until the rollout is `Aborted`.
//! Then the database restarts and the spec returns to stable for the next run.
//!
//! `cargo bench --bench analysis [-- RUNS]` (default 10). Prints every run, the median and max.

#[path = "../tests/common/cluster.rs"]
mod cluster;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/operator.rs"]
mod operator;
#[path = "../tests/common/prometheus.rs"]
mod prometheus;
#[path = "../tests/common/split.rs"]
mod split;

use std::time::{Duration, Instant};

use cluster::{check, check_with_stdin, cluster};
use common::migrated_db_on;
use kube::api::Api;
use kybctl::local::TempPostgres;
use kybctl::operator::crd::{KybPlatform, RolloutStatus};
use split::SplitTraffic;

const INTERVAL_S: u64 = 5;

fn template(prom: &str) -> String {
    let sel = r#"service="kyb",revision="canary",route!="/metrics""#;
    format!(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybAnalysisTemplate
metadata: {{name: success-rate}}
spec:
  metrics:
  - name: error-ratio
    interval: {INTERVAL_S}s
    count: 1000
    initialDelay: 10s
    successCondition: result <= 0.01
    failureLimit: 0
    minSamples: 5
    provider:
      prometheus:
        address: {prom}
        query: '(sum(rate(kyb_http_requests_total{{{sel},status=~"5.."}}[10s])) or vector(0)) / sum(rate(kyb_http_requests_total{{{sel}}}[10s]))'
        samplesQuery: 'sum(increase(kyb_http_requests_total{{{sel}}}[10s]))'
"#
    )
}

fn platform(image: &str) -> String {
    format!(
        r#"apiVersion: kyb.io/v1alpha1
kind: KybPlatform
metadata: {{name: kyb}}
spec:
  image: {image}
  replicas: 10
  autoscaling: {{enabled: false}}
  migrations: {{enabled: false}}
  database: {{primary: {{name: kyb-db, key: url}}}}
  rollout:
    strategy: Canary
    canary:
      analysis: {{templates: [{{templateName: success-rate}}], startingStep: 1}}
      steps:
      - setWeight: 20
      - pause: {{duration: 1h}}
"#
    )
}

async fn rollout(api: &Api<KybPlatform>) -> RolloutStatus {
    api.get("kyb")
        .await
        .ok()
        .and_then(|k| k.status)
        .and_then(|s| s.rollout)
        .unwrap_or_default()
}

/// Polls every 50 ms, keeping the traffic split at the effective weight, until `cond` holds.
async fn until(
    api: &Api<KybPlatform>,
    split: &SplitTraffic,
    what: &str,
    cond: impl Fn(&RolloutStatus) -> bool,
) -> Instant {
    let start = Instant::now();
    loop {
        let r = rollout(api).await;
        split.set_weight(r.weights.effective);
        if cond(&r) {
            return Instant::now();
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "timed out waiting for {what}: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Under `cargo test --all-targets` (no `--bench` argument) the target is only kept compiling: a
    // run takes minutes and belongs in `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let runs: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(10);
    let c = cluster().await;
    operator::install_crd().await;
    let ns = operator::platform_namespace("bench-analysis").await;
    let op = operator::Operator::start(&ns).await;

    let stable_pg = TempPostgres::start().expect("PostgreSQL");
    let mut split = SplitTraffic::start(&migrated_db_on(&stable_pg).await).await;
    let apply = |yaml: String| {
        check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &yaml);
    };
    apply(template(&split.prom.url()));
    apply(platform("registry.example.com/kybctl:0"));
    let api = Api::<KybPlatform>::namespaced(c.client().await, &ns);
    until(&api, &split, "the first revision", |r| r.phase == "Healthy").await;

    println!("machine: {} cores; control plane, Prometheus, both services, the operator and the traffic share them", std::thread::available_parallelism().map_or(0, |n| n.get()));
    println!("background analysis every {INTERVAL_S} s, failureLimit 0, 10 s rate window, 1 s scrape interval");
    let mut took = Vec::new();
    let mut from_client = Vec::new();
    let mut per_run = Vec::new();
    for i in 1..=runs {
        let q0 = op.metrics.analysis_requests.get();
        apply(platform(&format!("registry.example.com/kybctl:{i}")));
        until(&api, &split, "a passed measurement", |r| {
            r.phase == "Paused"
                && r.analysis
                    .iter()
                    .any(|a| a.purpose == "background" && a.phase == "Running")
        })
        .await;
        // Past the initial delay and one measurement in, then a random moment within the interval,
        // so the fault does not fall at the same point of the measurement cycle every run.
        let jitter = Duration::from_millis(rand::random::<u64>() % (INTERVAL_S * 1000));
        tokio::time::sleep(Duration::from_secs(10 + INTERVAL_S + 1) + jitter).await;
        let before = rollout(&api).await;
        assert!(
            before.phase == "Paused" && before.abort.is_none(),
            "run {i} was decided before the canary turned bad: {before:#?}"
        );
        split.reset_first_5xx();
        let stopping = Instant::now();
        split.canary_pg.stop();
        // The canary is bad from here: its database is down (stopping it takes a moment of its own).
        let bad = Instant::now();
        let stop_took = bad - stopping;
        let aborted = until(&api, &split, "the abort", |r| r.phase == "Aborted").await;
        let secs = (aborted - bad).as_secs_f64();
        let seen = split
            .first_canary_5xx()
            .expect("a client saw the canary fail");
        let from_5xx = (aborted - seen).as_secs_f64();
        let r = rollout(&api).await;
        let q = op.metrics.analysis_requests.get() - q0;
        println!(
            "run {i:2}: database stopped -> Aborted {secs:.2} s, first 503 seen by a client -> Aborted {from_5xx:.2} s (the stop itself {:.2} s); {q} Prometheus queries in the run; {}",
            stop_took.as_secs_f64(),
            r.abort.map(|a| a.message).unwrap_or_default()
        );
        took.push(secs);
        from_client.push(from_5xx);
        per_run.push(q);
        split
            .canary_pg
            .restart()
            .expect("restart the canary's PostgreSQL");
        // Let the 503s leave the 10 s rate window before the next canary is judged.
        tokio::time::sleep(Duration::from_secs(12)).await;
        // Back to stable for the next run.
        apply(platform("registry.example.com/kybctl:0"));
        until(&api, &split, "back to stable", |r| {
            r.phase == "Healthy" && r.canary_revision.is_none()
        })
        .await;
    }
    for (what, xs) in [
        ("database stopped -> Aborted", &mut took),
        ("first 503 seen by a client -> Aborted", &mut from_client),
    ] {
        xs.sort_by(|a, b| a.total_cmp(b));
        println!(
            "{what} over {runs} runs: median {:.2} s, max {:.2} s, min {:.2} s (interval {INTERVAL_S} s)",
            xs[xs.len() / 2],
            xs[xs.len() - 1],
            xs[0]
        );
    }
    per_run.sort();
    println!(
        "Prometheus queries per analysis run: median {}, max {} (two per measurement: the value and the sample count)",
        per_run[per_run.len() / 2],
        per_run[per_run.len() - 1]
    );
    split.stop();
    op.stop().await;
    check(
        c.kubectl()
            .args(["delete", "namespace", &ns, "--wait=false"]),
    );
}
