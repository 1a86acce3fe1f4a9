//! Blue-green and canary rollouts on the real test control plane: the operator runs under its own
//! ServiceAccount and the shipped RBAC, a user who may only get, list, watch and patch KybPlatforms
//! drives it with the `kybctl rollout` binary, and what is checked is what the cluster says: ready
//! pods per revision, Service selectors, EndpointSlices, the HTTPRoute's weights.
//!
//! Blind spot: kwok's pods run no probes and serve nothing, so these tests see where traffic is
//! pointed (selectors, endpoints, weights), not requests succeeding; that is the real-node test's job.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/operator.rs"]
mod operator;
#[path = "common/upstream.rs"]
mod upstream;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cluster::{check, check_with_stdin, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DynamicObject, ListParams};
use kybctl::operator::crd::{KybPlatform, RolloutStatus};
use operator::Operator;

const REVISION: &str = "kyb.io/revision";
/// The service's pods (and Deployments), not the migration Jobs'.
const API_PODS: &str = "app.kubernetes.io/instance=kyb,app.kubernetes.io/component=api";

/// A namespace with the database Secret, the operator running as its shipped ServiceAccount, and a
/// kubeconfig for a user limited to KybPlatforms.
struct Setup {
    ns: String,
    op: Operator,
    user: PathBuf,
}

async fn setup(prefix: &str) -> Setup {
    let (ns, op) = Operator::start_shipped(prefix).await;
    let user = operator::rollouts_user(&ns, "release").await;
    Setup { ns, op, user }
}

impl Setup {
    /// Waits until the rollout pauses at `step` (a promote is an annotation: the status reflects it
    /// only once the operator has acted, so `rollout status` right after it may still see the old pause).
    async fn paused_at(&self, step: i32) {
        eventually(
            Duration::from_secs(60),
            &format!("a pause at step {step}"),
            || async {
                let r = self.rollout().await;
                r.current_step_index == Some(step) && r.phase == "Paused"
            },
        )
        .await;
    }

    /// `kybctl rollout ARGS -n NS` as the limited user: (exit code, stdout, stderr).
    async fn kybctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
            .arg("rollout")
            .args(args)
            .args(["-n", &self.ns])
            .env("KUBECONFIG", &self.user)
            .output()
            .await
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `kybctl rollout status NAME --watch`, expecting `code`.
    async fn settles(&self, code: i32, what: &str) -> String {
        let (got, out, err) = self
            .kybctl(&["status", "kyb", "--watch", "--timeout", "90s"])
            .await;
        assert_eq!(got, code, "{what}: {out}{err}");
        out
    }

    async fn apply(&self, spec: &str) {
        let manifest = format!(
            "apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {{name: kyb}}\nspec:\n  database: {{primary: {{name: kyb-db, key: url}}}}\n  autoscaling: {{enabled: false}}\n{spec}"
        );
        check_with_stdin(
            cluster()
                .await
                .kubectl()
                .args(["apply", "-n", &self.ns, "-f", "-"]),
            &manifest,
        );
    }

    async fn set_image(&self, image: &str) {
        operator::set_image(&self.ns, "kyb", image).await;
    }

    async fn platform(&self) -> KybPlatform {
        operator::platform(&self.ns, "kyb").await
    }

    async fn rollout(&self) -> RolloutStatus {
        operator::rollout_status(&self.ns, "kyb").await
    }

    /// Ready, not terminating pods of the platform by revision.
    async fn ready_pods(&self) -> BTreeMap<String, BTreeSet<String>> {
        let pods = Api::<Pod>::namespaced(cluster().await.client().await, &self.ns)
            .list(&ListParams::default().labels(API_PODS))
            .await
            .unwrap();
        let mut by = BTreeMap::<String, BTreeSet<String>>::new();
        for p in pods.items {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready && p.metadata.deletion_timestamp.is_none() {
                let rev = p.metadata.labels.unwrap_or_default()[REVISION].clone();
                by.entry(rev).or_default().insert(p.metadata.uid.unwrap());
            }
        }
        by
    }

    /// Waits for (canary, stable) ready pods to be `want`. The operator moves on when the Deployments'
    /// status says so; the pods a scale-down removes may take a moment longer to show as terminating.
    async fn reaches(&self, stable: &str, canary: &str, want: (usize, usize)) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.split(stable, canary).await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ready pods (canary, stable): {got:?}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Ready pods of (canary, stable).
    async fn split(&self, stable: &str, canary: &str) -> (usize, usize) {
        let pods = self.ready_pods().await;
        let n = |r: &str| pods.get(r).map_or(0, BTreeSet::len);
        (n(canary), n(stable))
    }

    async fn selector(&self, service: &str) -> BTreeMap<String, String> {
        Api::<Service>::namespaced(cluster().await.client().await, &self.ns)
            .get(service)
            .await
            .unwrap()
            .spec
            .unwrap()
            .selector
            .unwrap_or_default()
    }

    /// The revisions of the pods behind `service`'s EndpointSlices (what kube-proxy or a mesh routes to).
    async fn endpoint_revisions(&self, service: &str) -> BTreeSet<String> {
        let client = cluster().await.client().await;
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &self.ns)
            .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
            .await
            .unwrap();
        let pods = Api::<Pod>::namespaced(client, &self.ns);
        let mut revisions = BTreeSet::new();
        for e in slices
            .items
            .into_iter()
            .flat_map(|s| s.endpoints.into_iter().flatten())
        {
            let Some(target) = e.target_ref.and_then(|t| t.name) else {
                continue;
            };
            if let Some(p) = pods.get_opt(&target).await.unwrap() {
                revisions.insert(p.metadata.labels.unwrap_or_default()[REVISION].clone());
            }
        }
        revisions
    }
}

const PLAN_STEPS: &str = "  replicas: 10\n  rollout:\n    strategy: Canary\n    canary:\n      steps:\n      - setWeight: 20\n      - pause: {}\n      - setWeight: 40\n      - pause: {}\n      - setWeight: 60\n      - pause: {}\n      - setWeight: 80\n      - pause: {}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_by_replica_ratio_steps_aborts_retries_and_promotes() {
    let s = setup("canary").await;
    s.apply(&format!(
        "  image: registry.example.com/kybctl:1\n{PLAN_STEPS}"
    ))
    .await;
    s.settles(0, "first revision").await;
    let stable = s.rollout().await.stable_revision.unwrap();
    assert_eq!(s.split(&stable, "none").await, (0, 10));

    s.set_image("registry.example.com/kybctl:2").await;
    let mut canary = String::new();
    for step in [1, 3, 5] {
        s.paused_at(step).await;
        let out = s.settles(3, "a pause step").await;
        let r = s.rollout().await;
        assert_eq!(r.current_step_index, Some(step), "{out}");
        canary = r.canary_revision.clone().unwrap();
        s.reaches(
            &stable,
            &canary,
            [(2, 8), (4, 6), (6, 4)][step as usize / 2],
        )
        .await;
        assert_eq!(r.weights.desired, r.weights.effective);
        assert!(
            !s.selector("kyb").await.contains_key(REVISION),
            "replica ratio: the Service selects both revisions"
        );
        let kp = s.platform().await;
        assert!(
            kp.status.unwrap().replicas <= 10,
            "the scale subresource never reports surge pods"
        );
        if step < 5 {
            let (code, out, err) = s.kybctl(&["promote", "kyb"]).await;
            assert_eq!(code, 0, "{out}{err}");
        }
    }

    // A promote repeated is a no-op, not a skipped step.
    let (code, out, _) = s.kybctl(&["promote", "kyb"]).await;
    assert_eq!(code, 0, "{out}");
    let (code, again, _) = s.kybctl(&["promote", "kyb"]).await;
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("already"), "{again}");
    s.paused_at(7).await;
    s.settles(3, "step 7").await;
    s.reaches(&stable, &canary, (8, 2)).await;

    // Abort at 80 %: the Service selects stable at once; stable back to 10 with no pod of it
    // recreated; then the canary goes.
    let stable_pods = s.ready_pods().await[&stable].clone();
    let started = Instant::now();
    let (code, out, err) = s.kybctl(&["abort", "kyb"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(
        Duration::from_secs(10),
        "the Service to select stable only",
        || async { s.selector("kyb").await.get(REVISION) == Some(&stable) },
    )
    .await;
    let to_selector = started.elapsed();
    eventually(
        Duration::from_secs(20),
        "endpoints of stable only",
        || async { s.endpoint_revisions("kyb").await == BTreeSet::from([stable.clone()]) },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "10 stable and 0 canary pods",
        || async { s.split(&stable, &canary).await == (0, 10) },
    )
    .await;
    let after = s.ready_pods().await[&stable].clone();
    assert!(stable_pods.is_subset(&after), "no stable pod was recreated");
    eprintln!("abort: Service on stable after {to_selector:?}");
    let out = s.settles(1, "aborted").await; // Aborted is set by the first reconcile after abort
    assert!(
        out.contains("Aborted") || out.contains("RolloutAborted"),
        "{out}"
    );
    let r = s.rollout().await;
    assert_eq!(r.phase, "Aborted");
    assert_eq!(r.weights.effective, 0);
    let (code, json, err) = s.kybctl(&["get", "kyb", "-o", "json"]).await;
    assert_eq!(code, 0, "{err}");
    let got: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(got["rollout"]["phase"], "Aborted", "{json}");
    assert_eq!(got["rollout"]["abort"]["reason"], "AbortedByUser", "{json}");
    let (code, table, _) = s.kybctl(&["get", "kyb"]).await;
    assert_eq!(code, 0);
    assert!(
        table.contains(&canary) && table.contains(&stable),
        "{table}"
    );
    assert_eq!(
        s.platform().await.spec.image,
        "registry.example.com/kybctl:2",
        "the spec keeps the new image until retry or undo"
    );

    // Retry starts again from the first step; promote --full finishes.
    let (code, out, err) = s.kybctl(&["retry", "kyb"]).await;
    assert_eq!(code, 0, "{out}{err}");
    s.paused_at(1).await;
    s.settles(3, "retried: step 1").await;
    s.reaches(&stable, &canary, (2, 8)).await;
    let (code, out, err) = s.kybctl(&["promote", "kyb", "--full"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(
        Duration::from_secs(30),
        "the canary to become stable",
        || async { s.rollout().await.stable_revision.as_deref() == Some(canary.as_str()) },
    )
    .await;
    s.settles(0, "fully promoted").await;
    eventually(
        Duration::from_secs(30),
        "the old revision to go",
        || async { s.split(&stable, &canary).await == (10, 0) },
    )
    .await;
    let r = s.rollout().await;
    assert_eq!(r.stable_revision.as_deref(), Some(canary.as_str()));
    assert_eq!(s.selector("kyb").await.get(REVISION), Some(&canary));
    let (code, history, _) = s.kybctl(&["history", "kyb"]).await;
    assert_eq!(code, 0);
    assert!(
        history.contains("registry.example.com/kybctl:2"),
        "{history}"
    );
    assert!(
        history.contains("registry.example.com/kybctl:1"),
        "{history}"
    );

    // Settled: a resync with nothing new writes nothing; a scaled revision Deployment is put back.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = s.op.metrics.writes.get();
    check(
        cluster()
            .await
            .kubectl()
            .args(["label", "-n", &s.ns, "kyb/kyb", "touched=yes"]),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        s.op.metrics.writes.get(),
        writes,
        "a no-op resync writes nothing"
    );
    check(cluster().await.kubectl().args([
        "scale",
        "-n",
        &s.ns,
        &format!("deployment/kyb-{canary}"),
        "--replicas=3",
    ]));
    let deployments = Api::<Deployment>::namespaced(cluster().await.client().await, &s.ns);
    eventually(Duration::from_secs(30), "the edit undone", || async {
        let d = deployments.get(&format!("kyb-{canary}")).await.unwrap();
        d.spec.unwrap().replicas == Some(10) && s.split(&stable, &canary).await == (10, 0)
    })
    .await;
    s.op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_with_a_gateway_api_route_sets_its_weights() {
    gateway::install_gateway_api_crds().await;
    let s = setup("canary-route").await;
    check_with_stdin(
        cluster()
            .await
            .kubectl()
            .args(["apply", "-n", &s.ns, "-f", "-"]),
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: kyb-route}
spec:
  parentRefs: [{name: public}]
  rules:
  - backendRefs:
    - {name: kyb, port: 80, weight: 100}
    - {name: kyb-canary, port: 80, weight: 0}
"#,
    );
    let steps = PLAN_STEPS.replace(
        "    canary:\n",
        "    canary:\n      trafficRouting: {gatewayAPI: {httpRoute: kyb-route}}\n",
    );
    s.apply(&format!("  image: registry.example.com/kybctl:1\n{steps}"))
        .await;
    s.settles(0, "first revision").await;
    let stable = s.rollout().await.stable_revision.unwrap();
    let routes = Api::<DynamicObject>::namespaced_with(
        cluster().await.client().await,
        &s.ns,
        &gateway::httproute_resource(),
    );
    let weights = || async {
        let r = routes.get("kyb-route").await.unwrap();
        let refs = r.data["spec"]["rules"][0]["backendRefs"].clone();
        (
            refs[0]["weight"].as_i64().unwrap(),
            refs[1]["weight"].as_i64().unwrap(),
        )
    };
    assert_eq!(weights().await, (100, 0));
    s.set_image("registry.example.com/kybctl:2").await;
    let mut seen = Vec::new();
    for step in [1, 3] {
        s.paused_at(step).await;
        s.settles(3, "a pause step").await;
        let r = s.rollout().await;
        assert_eq!(r.current_step_index, Some(step));
        let canary = r.canary_revision.unwrap();
        let want = [(2, 10), (4, 10)][step as usize / 2];
        s.reaches(&stable, &canary, want).await;
        seen.push(weights().await);
        assert_eq!(s.selector("kyb").await.get(REVISION), Some(&stable));
        assert_eq!(s.selector("kyb-canary").await.get(REVISION), Some(&canary));
        if step == 1 {
            s.kybctl(&["promote", "kyb"]).await;
        }
    }
    assert_eq!(
        seen,
        [(80, 20), (60, 40)],
        "stable keeps its full size throughout"
    );
    let started = Instant::now();
    let (code, out, err) = s.kybctl(&["abort", "kyb"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(Duration::from_secs(10), "canary weight 0", || async {
        weights().await == (100, 0)
    })
    .await;
    eprintln!("abort: route weight 0 after {:?}", started.elapsed());
    let canary = s.rollout().await.canary_revision.unwrap();
    eventually(Duration::from_secs(20), "no canary pods", || async {
        s.split(&stable, &canary).await == (0, 10)
    })
    .await;
    s.op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_previews_promotes_and_undoes_to_the_running_previous_revision() {
    let s = setup("blue-green").await;
    let spec = |image: &str| {
        format!("  image: {image}\n  replicas: 5\n  rollout:\n    strategy: BlueGreen\n    blueGreen: {{scaleDownDelaySeconds: 20}}\n")
    };
    s.apply(&spec("registry.example.com/kybctl:1")).await;
    s.settles(0, "first revision").await;
    let blue = s.rollout().await.stable_revision.unwrap();
    s.set_image("registry.example.com/kybctl:2").await;
    let out = s.settles(3, "preview ready, waiting for promotion").await;
    assert!(out.contains("Paused"), "{out}");
    let green = s.rollout().await.canary_revision.unwrap();
    assert_eq!(s.split(&blue, &green).await, (5, 5));
    assert_eq!(
        s.selector("kyb").await.get(REVISION),
        Some(&blue),
        "active unchanged"
    );
    assert_eq!(
        s.selector("kyb-preview").await.get(REVISION),
        Some(&green),
        "preview selects the new pods"
    );
    eventually(
        Duration::from_secs(20),
        "endpoints of active and preview",
        || async {
            s.endpoint_revisions("kyb").await == BTreeSet::from([blue.clone()])
                && s.endpoint_revisions("kyb-preview").await == BTreeSet::from([green.clone()])
        },
    )
    .await;

    let (code, out, err) = s.kybctl(&["promote", "kyb"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(
        Duration::from_secs(30),
        "green to become active",
        || async { s.rollout().await.stable_revision.as_deref() == Some(green.as_str()) },
    )
    .await;
    s.settles(0, "promoted").await;
    assert_eq!(
        s.selector("kyb").await.get(REVISION),
        Some(&green),
        "active switched"
    );
    assert_eq!(
        s.split(&blue, &green).await,
        (5, 5),
        "blue kept for the delay"
    );

    // Undo while blue still runs: straight back, no preview, no promotion.
    let (code, out, err) = s.kybctl(&["undo", "kyb"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually(Duration::from_secs(10), "active back on blue", || async {
        s.selector("kyb").await.get(REVISION) == Some(&blue)
    })
    .await;
    s.settles(0, "undone").await;
    let r = s.rollout().await;
    assert_eq!(r.stable_revision.as_deref(), Some(blue.as_str()));
    assert_eq!(
        s.platform().await.spec.image,
        "registry.example.com/kybctl:1"
    );
    // Green, now the previous revision, goes once its delay has passed.
    eventually(Duration::from_secs(40), "green scaled down", || async {
        s.split(&blue, &green).await == (0, 5)
    })
    .await;
    s.op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_migration_never_sends_traffic_to_the_canary() {
    let s = setup("canary-migration").await;
    s.apply(&format!(
        "  image: registry.example.com/kybctl:1\n{PLAN_STEPS}"
    ))
    .await;
    s.settles(0, "first revision").await;
    let stable = s.rollout().await.stable_revision.unwrap();
    let before = s.ready_pods().await[&stable].clone();
    check(cluster().await.kubectl().args([
        "patch", "-n", &s.ns, "kyb/kyb", "--type=merge", "-p",
        r#"{"spec":{"image":"registry.example.com/kybctl:2","migrations":{"podAnnotations":{"kwok.x-k8s.io/fail":"true"}}}}"#,
    ]));
    let out = s.settles(1, "migration failed").await;
    assert!(out.contains("MigrationFailed"), "{out}");
    let pods = s.ready_pods().await;
    assert_eq!(pods.len(), 1, "only stable has pods: {pods:?}");
    assert_eq!(pods[&stable], before, "stable untouched");
    let deployments = Api::<Deployment>::namespaced(cluster().await.client().await, &s.ns)
        .list(&ListParams::default().labels(API_PODS))
        .await
        .unwrap();
    assert_eq!(deployments.items.len(), 1, "no Deployment for the canary");
    assert!(s.rollout().await.message.contains("never got traffic"));
    s.op.stop().await;
}
