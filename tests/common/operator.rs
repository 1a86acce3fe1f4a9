//! The operator run in-process against the test control plane, and waiting helpers for its tests.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::Duration;

use kybctl::operator::controller;
use kybctl::operator::crd::{KybPlatform, RolloutStatus};
use kybctl::operator::metrics::OperatorMetrics;

use crate::cluster::{check, check_with_stdin, cluster, wait_established};

const CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");

/// Installs the project's CRDs (idempotent) and waits until they are served.
pub async fn install_crd() {
    let c = cluster().await;
    check(c.kubectl().args(["apply", "--server-side", "-f", CRDS]));
    wait_established(
        c,
        &[
            "crd/kybplatforms.kyb.io".into(),
            "crd/kybanalysistemplates.kyb.io".into(),
            "crd/kybanalysisruns.kyb.io".into(),
        ],
    );
}

/// The shipped manifests' directory (`kubectl apply -k` installs).
pub const MANIFESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests");

/// The CRDs and the cluster-wide install (`kubectl apply -k manifests/`), once per test binary: two
/// concurrent client-side applies both try to create the namespace and the second fails with
/// AlreadyExists.
pub async fn install_shipped() {
    install_crd().await;
    static SHIPPED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    SHIPPED
        .get_or_init(|| async {
            check(cluster().await.kubectl().args(["apply", "-k", MANIFESTS]));
        })
        .await;
}

/// A minimal KybPlatform `name` referencing the Secret that [`platform_namespace`] creates.
pub fn platform_yaml(name: &str) -> String {
    format!(
        "apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {{name: {name}}}\nspec:\n  image: registry.example.com/kybctl:1\n  database: {{primary: {{name: kyb-db, key: url}}}}\n"
    )
}

/// `kubectl apply` of [`platform_yaml`] in `ns`.
pub async fn apply_platform(ns: &str, name: &str) {
    let c = cluster().await;
    check_with_stdin(
        c.kubectl().args(["apply", "-n", ns, "-f", "-"]),
        &platform_yaml(name),
    );
}

/// `kubectl wait --for=condition=Ready kyb/NAME`, as a user would.
pub async fn wait_ready(ns: &str, name: &str, timeout: &str) {
    let c = cluster().await;
    check(c.kubectl().args([
        "wait",
        "-n",
        ns,
        "--for=condition=Ready",
        &format!("--timeout={timeout}"),
        &format!("kyb/{name}"),
    ]));
}

/// The CRD, and a new namespace holding the Secret `kyb-db` (key `url`) that test platforms reference.
pub async fn platform_namespace(prefix: &str) -> String {
    let c = cluster().await;
    install_crd().await;
    let ns = c.namespace(prefix).await;
    check(c.kubectl().args([
        "create",
        "secret",
        "generic",
        "kyb-db",
        "-n",
        &ns,
        "--from-literal=url=postgres://kyb@db/kyb",
    ]));
    ns
}

/// A kubeconfig for ServiceAccount `name` in `ns`, which may only get, list, watch and patch
/// KybPlatforms there: what a CI job or a release engineer driving `kybctl rollout` is given.
pub async fn rollouts_user(ns: &str, name: &str) -> std::path::PathBuf {
    let c = cluster().await;
    check_with_stdin(
        c.kubectl().args(["apply", "-n", ns, "-f", "-"]),
        &format!(
            r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: rollouts}}
rules:
- apiGroups: [kyb.io]
  resources: [kybplatforms]
  verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {name}-rollouts}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: rollouts}}
subjects: [{{kind: ServiceAccount, name: {name}}}]
"#
        ),
    );
    let token = check(c.kubectl().args(["create", "token", name, "-n", ns]));
    c.kubeconfig_for_token(token.trim())
}

/// `kubectl apply -n NS -f -` of `yaml`.
pub async fn apply(ns: &str, yaml: &str) {
    check_with_stdin(
        cluster()
            .await
            .kubectl()
            .args(["apply", "-n", ns, "-f", "-"]),
        yaml,
    );
}

/// A new image for KybPlatform `name`, as `kubectl patch` would: a new revision to roll out.
pub async fn set_image(ns: &str, name: &str, image: &str) {
    check(cluster().await.kubectl().args([
        "patch",
        "-n",
        ns,
        &format!("kyb/{name}"),
        "--type=merge",
        "-p",
        &format!(r#"{{"spec":{{"image":"{image}"}}}}"#),
    ]));
}

pub async fn platform(ns: &str, name: &str) -> KybPlatform {
    kube::Api::<KybPlatform>::namespaced(cluster().await.client().await, ns)
        .get(name)
        .await
        .unwrap()
}

/// Waits until the platform is refused: `Reconciled` False with a message containing `why`.
pub async fn wait_refused(ns: &str, name: &str, why: &str, timeout: Duration) {
    crate::cluster::eventually(timeout, &format!("{name} refused: {why}"), || async {
        platform(ns, name)
            .await
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Reconciled"))
            .is_some_and(|c| c.status == "False" && c.message.contains(why))
    })
    .await;
}

/// The platform's rollout status (the default until the operator has written one).
pub async fn rollout_status(ns: &str, name: &str) -> RolloutStatus {
    platform(ns, name)
        .await
        .status
        .and_then(|s| s.rollout)
        .unwrap_or_default()
}

/// Polls the rollout status of `name` until `done` holds for it, and returns it.
pub async fn until_rollout(
    ns: &str,
    name: &str,
    timeout: Duration,
    what: &str,
    mut done: impl FnMut(&RolloutStatus) -> bool,
) -> RolloutStatus {
    let start = std::time::Instant::now();
    loop {
        let r = rollout_status(ns, name).await;
        if done(&r) {
            return r;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out waiting for {what}: {r:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn condition(kp: &KybPlatform, kind: &str) -> Option<(String, String)> {
    kp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub struct Operator {
    pub metrics: Arc<OperatorMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn start(ns: &str) -> Self {
        Self::start_as(ns, cluster().await.client().await).await
    }

    /// The shipped RBAC applied and the operator started in a new namespace (see
    /// [`platform_namespace`]) under the token of the shipped ServiceAccount, so every test that uses
    /// it also proves that RBAC sufficient.
    pub async fn start_shipped(prefix: &str) -> (String, Self) {
        let c = cluster().await;
        install_shipped().await;
        let ns = platform_namespace(prefix).await;
        let token =
            check(
                c.kubectl()
                    .args(["create", "token", "kybctl-operator", "-n", "kyb-system"]),
            );
        let op = Self::start_as(&ns, c.client_with_token(token.trim()).await).await;
        (ns, op)
    }

    pub async fn start_as(ns: &str, client: kube::Client) -> Self {
        Self::start_watching(controller::Watch::namespace(ns), client).await
    }

    pub async fn start_watching(watch: controller::Watch, client: kube::Client) -> Self {
        let metrics = Arc::new(OperatorMetrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let m = metrics.clone();
        let task = tokio::spawn(async move {
            controller::run(client, watch, m, async move {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
