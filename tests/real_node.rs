//! On the real node (kubelet, containerd, runc, a CNI bridge and kube-proxy; `tests/cluster/up
//! --real-node`): pods of the `kybctl` image really run, their probes are really called, and Services
//! really route, so what kwok cannot show is checked here.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/node.rs"]
mod node;
#[path = "common/operator.rs"]
mod operator;

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;

use cluster::{check, check_with_stdin, cluster_with_real_node, eventually};
use common::{migrated_db_on, unique};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kybctl::local::{TempPostgres, TempRedis};
use kybctl::slo::LoadTestResult;
use operator::Operator;

async fn get(url: &str) -> Result<(u16, String), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// Ready endpoint addresses of Service `name`.
async fn ready_endpoints(ns: &str, name: &str) -> Vec<String> {
    let c = cluster_with_real_node().await;
    Api::<EndpointSlice>::namespaced(c.client().await, ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.endpoints.clone().unwrap_or_default())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kybctl_pod_serves_through_its_service_and_leaves_it_while_unready() {
    let c = cluster_with_real_node().await;
    let image = node::kybctl_image();
    let mut pg = node::postgres_for_pods();
    let db = node::from_pods(&migrated_db_on(&pg).await);
    let ns = c.namespace("node").await;
    check_with_stdin(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: kyb, labels: {{app: kyb}}}}
spec:
{on_node}  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: kyb
    image: {image}
    imagePullPolicy: Never
    args: [serve]
    # This pod is about probes and Service routing; authentication is tested with the operator's pods.
    env: [{{name: KYB_DATABASE_URL, value: "{db}"}}, {{name: KYB_INSECURE_NO_AUTH, value: "true"}}]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}
    securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: kyb}}
spec:
  selector: {{app: kyb}}
  ports: [{{port: 80, targetPort: http}}]
"#,
            on_node = node::ON_REAL_NODE
        ),
    );
    check(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready",
        "pod/kyb",
        "--timeout=90s",
    ]));
    let pods = Api::<Pod>::namespaced(c.client().await, &ns);
    let pod_ip = pods
        .get("kyb")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    assert!(pod_ip.starts_with("198.18.0."), "{pod_ip}");
    let (status, body) = get(&format!("http://{pod_ip}:8080/health")).await.unwrap();
    assert_eq!(status, 200, "{body}");

    let svc = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "service/kyb",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]));
    assert!(svc.starts_with("198.19."), "{svc}");
    let through_service = format!("http://{svc}/ready");
    eventually(Duration::from_secs(30), "the ClusterIP routes", || {
        let url = through_service.clone();
        async move { get(&url).await.is_ok_and(|(s, _)| s == 200) }
    })
    .await;

    // The database stops: /ready fails, the kubelet's probe sees it, the pod leaves the endpoints.
    pg.stop();
    eventually(
        Duration::from_secs(30),
        "the pod to leave the endpoints",
        || {
            let ns = ns.clone();
            async move { ready_endpoints(&ns, "kyb").await.is_empty() }
        },
    )
    .await;
    pg.restart().expect("restart PostgreSQL");
    eventually(Duration::from_secs(60), "the pod to return", || {
        let ns = ns.clone();
        let ip = pod_ip.clone();
        async move { ready_endpoints(&ns, "kyb").await == vec![ip] }
    })
    .await;
    // kube-proxy follows the endpoints within its sync interval.
    eventually(
        Duration::from_secs(30),
        "the ClusterIP to route again",
        || {
            let url = through_service.clone();
            async move { get(&url).await.is_ok_and(|(s, _)| s == 200) }
        },
    )
    .await;
}

/// A KybPlatform `kyb` of the real image on the real node, on a real PostgreSQL that its migration Job
/// really migrates, reconciled by the operator under its shipped ServiceAccount.
struct Platform {
    ns: String,
    op: Operator,
    pg: TempPostgres,
    db: String,
    redis: TempRedis,
    /// The Service's ClusterIP, which this machine reaches through kube-proxy.
    service_ip: String,
    /// The API key the operator generated for the platform (its Secret `kyb-api-key`).
    api_key: String,
}

async fn platform(prefix: &str, rollout: &str) -> Platform {
    let c = cluster_with_real_node().await;
    let image = node::kybctl_image();
    node::next_release_image();
    let pg = node::postgres_for_pods();
    let redis = TempRedis::start_also_on(node::NODE_IP).expect("Redis for the real node's pods");
    let db = unique("t");
    pg.create_database(&db).unwrap();
    let (ns, op) = Operator::start_shipped(prefix).await;
    check(c.kubectl().args(["delete", "secret", "kyb-db", "-n", &ns]));
    check(c.kubectl().args([
        "create",
        "secret",
        "generic",
        "kyb-db",
        "-n",
        &ns,
        &format!("--from-literal=url={}", node::from_pods(&pg.url(&db))),
    ]));
    check(c.kubectl().args([
        "create",
        "secret",
        "generic",
        "kyb-redis",
        "-n",
        &ns,
        &format!("--from-literal=url={}", node::from_pods(&redis.url())),
    ]));
    operator::apply(
        &ns,
        &format!(
            r#"apiVersion: kyb.io/v1alpha1
kind: KybPlatform
metadata: {{name: kyb}}
spec:
  image: {image}
  imagePullPolicy: Never
  replicas: 2
  autoscaling: {{enabled: false}}
  database: {{primary: {{name: kyb-db, key: url}}}}
  cache: {{redis: {{name: kyb-redis, key: url}}}}
  healthCheck: {{interval: 2s, timeout: 1s}}
  scheduling:
    nodeSelector: {{kyb.io/real-node: "true"}}
    tolerations: [{{key: kyb.io/real-node, operator: Exists}}]
{rollout}"#
        ),
    )
    .await;
    operator::wait_ready(&ns, "kyb", "180s").await;
    let service_ip = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "service/kyb",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]));
    // Ready is the pods'; kube-proxy follows their endpoints within its sync interval.
    let ready = format!("http://{service_ip}/ready");
    eventually(Duration::from_secs(30), "the Service to route", || {
        let url = ready.clone();
        async move { get(&url).await.is_ok_and(|(s, _)| s == 200) }
    })
    .await;
    let encoded = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "secret/kyb-api-key",
        "-o",
        "jsonpath={.data.key}",
    ]));
    let api_key = String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .unwrap(),
    )
    .unwrap();
    // The pods refuse a caller without it.
    let (status, _) = get(&format!("http://{service_ip}/v1/merchants"))
        .await
        .unwrap();
    assert_eq!(
        status, 401,
        "the platform's API answered without credentials"
    );
    Platform {
        ns,
        op,
        pg,
        db,
        redis,
        service_ip,
        api_key,
    }
}

/// `kybctl loadtest` through the Service at a constant rate, running in the background.
struct Load {
    child: tokio::process::Child,
    result: PathBuf,
}

impl Load {
    fn start(p: &Platform, name: &str, seconds: u64) -> Load {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("zero-loss");
        std::fs::create_dir_all(&dir).unwrap();
        let result = dir.join(format!("{name}.json"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
            .args(["loadtest", "--target"])
            .arg(format!("http://{}", p.service_ip))
            .args(["--users", "20", "--rate", "200", "--no-progress"])
            .args(["--duration", &format!("{seconds}s"), "--out"])
            .arg(&result)
            .env("KYB_API_KEY", &p.api_key)
            .kill_on_drop(true)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        Load { child, result }
    }

    /// Waits for the load test, and asserts that every request it sent succeeded.
    async fn zero_failures(self) -> LoadTestResult {
        let out = self.child.wait_with_output().await.unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "the load test failed:\n{text}");
        let r = LoadTestResult::load(&self.result, "result").unwrap();
        let warm = r.warmup.as_ref().map_or(0, |w| w.requests.errors);
        assert_eq!(
            (r.requests.errors, warm),
            (0, 0),
            "failed requests (result in {}):\n{text}",
            self.result.display()
        );
        assert_eq!(
            r.requests.by_status.values().sum::<u64>(),
            r.requests.total,
            "every request is counted by its status"
        );
        assert!(r.requests.total > 1000, "{text}");
        r
    }
}

/// Every pod of the platform runs `image` and is ready, and no other is left.
async fn all_on(ns: &str, image: &str) -> bool {
    let c = cluster_with_real_node().await;
    let pods = Api::<Pod>::namespaced(c.client().await, ns)
        .list(
            &ListParams::default()
                .labels("app.kubernetes.io/instance=kyb,app.kubernetes.io/component=api"),
        )
        .await
        .unwrap()
        .items;
    !pods.is_empty()
        && pods.iter().all(|p| {
            let st = p.status.clone().unwrap_or_default();
            p.metadata.deletion_timestamp.is_none()
                && p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some(image)
                && st
                    .conditions
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// The zero-loss tests one at a time: two cores cannot carry two load tests and two rollouts at once
/// without measuring the machine instead of the rollout.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long each zero-loss load runs; every change happens inside it.
const LOAD_SECONDS: u64 = 75;

/// `kybctl rollout ARGS -n NS` as an administrator would run it; fails the test unless it exits 0.
async fn rollout_cmd(ns: &str, args: &[&str]) {
    let c = cluster_with_real_node().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .arg("rollout")
        .args(args)
        .args(["-n", ns])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "kybctl rollout {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the next release's expand migration is applied (by the platform's migration Job).
async fn next_migration_applied(p: &Platform) -> bool {
    let pool = sqlx::PgPool::connect(&p.pg.url(&p.db)).await.unwrap();
    let applied: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1 AND success)",
    )
    .bind(node::NEXT_MIGRATION)
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    applied
}

/// Waits until every pod runs `image` and is ready, which must happen while the load still runs.
async fn settles_on(p: &Platform, image: &str, load_started: std::time::Instant) {
    eventually(
        Duration::from_secs(120),
        &format!("every pod on {image}"),
        || {
            let ns = p.ns.clone();
            async move { all_on(&ns, image).await }
        },
    )
    .await;
    assert!(
        load_started.elapsed() < Duration::from_secs(LOAD_SECONDS - 5),
        "the rollout took {:?}, past the load's {LOAD_SECONDS} s: it was not all under load",
        load_started.elapsed()
    );
}

/// An upgrade under way: the load running through the Service since `started`, and the platform asked
/// (5 s into the load) to roll out the next release.
struct Upgrade {
    load: Load,
    started: std::time::Instant,
}

async fn upgrade_under_load(p: &Platform, name: &str) -> Upgrade {
    let started = std::time::Instant::now();
    let load = Load::start(p, name, LOAD_SECONDS);
    tokio::time::sleep(Duration::from_secs(5)).await;
    operator::set_image(&p.ns, "kyb", node::NEXT_IMAGE).await;
    Upgrade { load, started }
}

impl Upgrade {
    /// The upgrade's expand migration was applied by the platform's migration Job, and no request
    /// of the whole load failed.
    async fn lost_nothing(self, p: Platform) {
        assert!(
            next_migration_applied(&p).await,
            "the upgrade's migration Job applied its expand migration"
        );
        self.load.zero_failures().await;
        p.op.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_rolling_update() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = platform("zl-rolling", "").await;
    // `kybctl loadtest --platform` finds the service from the KybPlatform; off the cluster's DNS (this
    // machine has none) through the Service's ClusterIP.
    let c = cluster_with_real_node().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(["loadtest", "--platform", "kyb", "-n", &p.ns])
        .args(["--duration", "2s", "--users", "2", "--no-progress"])
        .env("KUBECONFIG", &c.kubeconfig)
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("using the Service's ClusterIP"), "{said}");
    let up = upgrade_under_load(&p, "rolling-update").await;
    let mut redis = redis::Client::open(p.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: i64 = redis::cmd("DBSIZE").query_async(&mut redis).await.unwrap();
    assert!(keys > 0, "the pods cache in the real Redis");
    settles_on(&p, node::NEXT_IMAGE, up.started).await;
    up.lost_nothing(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_blue_green_with_promotion() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = platform(
        "zl-bluegreen",
        "  rollout:\n    strategy: BlueGreen\n    blueGreen: {autoPromotionEnabled: false, scaleDownDelaySeconds: 3}\n",
    )
    .await;
    let up = upgrade_under_load(&p, "blue-green").await;
    operator::until_rollout(&p.ns, "kyb", Duration::from_secs(60), "the preview", |r| {
        r.phase == "Paused"
    })
    .await;
    rollout_cmd(&p.ns, &["promote", "kyb"]).await;
    settles_on(&p, node::NEXT_IMAGE, up.started).await;
    up.lost_nothing(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_canary_through_all_its_steps_and_undone() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = platform(
        "zl-canary",
        "  rollout:\n    strategy: Canary\n    canary:\n      steps: [{setWeight: 50}, {pause: {duration: 5s}}]\n",
    )
    .await;
    let image = node::kybctl_image();
    let up = upgrade_under_load(&p, "canary-and-undo").await;
    settles_on(&p, node::NEXT_IMAGE, up.started).await;
    // And back through the same steps, as `kybctl rollout undo` asks.
    rollout_cmd(&p.ns, &["undo", "kyb"]).await;
    settles_on(&p, image, up.started).await;
    up.lost_nothing(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_canary_aborted_half_way() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = platform(
        "zl-abort",
        "  rollout:\n    strategy: Canary\n    canary:\n      steps: [{setWeight: 50}, {pause: {}}]\n",
    )
    .await;
    let image = node::kybctl_image();
    let up = upgrade_under_load(&p, "canary-abort").await;
    operator::until_rollout(
        &p.ns,
        "kyb",
        Duration::from_secs(60),
        "the canary at 50 %",
        |r| r.phase == "Paused" && r.weights.effective == 50,
    )
    .await;
    rollout_cmd(&p.ns, &["abort", "kyb"]).await;
    settles_on(&p, image, up.started).await;
    up.lost_nothing(p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_loss_when_a_pod_is_deleted() {
    let _one = ONE_AT_A_TIME.lock().await;
    let p = platform("zl-delete", "").await;
    let c = cluster_with_real_node().await;
    let load = Load::start(&p, "pod-deleted", 25);
    tokio::time::sleep(Duration::from_secs(5)).await;
    // As the kubelet does it: the pre-stop sleep, then SIGTERM and the drain.
    check(c.kubectl().args([
        "delete",
        "pod",
        "-n",
        &p.ns,
        "-l",
        "app.kubernetes.io/component=api",
        "--wait=false",
    ]));
    load.zero_failures().await;
    p.op.stop().await;
}
