//! The Helm chart (`manifests/helm/kybctl`) with Helm built from its upstream Go module
//! (`tests/cluster/helm/build`): it lints, renders what the kustomize install renders (the same
//! RBAC rules), is accepted by the real apiserver (server-side dry run), and an install under each
//! mode gives the operator, running under the chart's ServiceAccount token, what it needs to bring a
//! KybPlatform to Ready, and no more than that.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/go_tool.rs"]
mod go_tool;
#[path = "common/operator.rs"]
mod operator;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use cluster::{check, check_with_stdin, cluster, run, Cluster};
use kybctl::operator::controller;
use operator::Operator;
use serde::Deserialize;
use serde_json::Value;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/helm/kybctl");

/// The Helm binary, built once per test process (reused from the cache across runs).
fn helm_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_tool::build("tests/cluster/helm/build"))
}

fn helm() -> Command {
    Command::new(helm_bin())
}

/// `helm` against the test control plane.
fn helm_on(c: &Cluster) -> Command {
    let mut cmd = helm();
    cmd.arg(format!("--kubeconfig={}", c.kubeconfig.display()));
    cmd
}

/// `helm template` with `args`; the documents, parsed.
fn template(args: &[&str]) -> Vec<Value> {
    let out = check(
        helm()
            .args(["template", "kyb", CHART, "--namespace", "kyb-system"])
            .args(args),
    );
    serde_yaml::Deserializer::from_str(&out)
        .filter_map(|d| {
            let v = serde_json::to_value(serde_yaml::Value::deserialize(d).ok()?).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

fn rules_of(docs: &[Value], kind: &str) -> Vec<Value> {
    docs.iter()
        .filter(|d| d["kind"] == kind)
        .map(|d| d["rules"].clone())
        .collect()
}

#[test]
fn the_chart_lints_and_renders_the_kustomize_installs_rules() {
    for values in [
        vec![],
        vec!["--set", "mode=namespaced", "--set", "watchNamespaces={a,b}"],
    ] {
        let out = check(helm().args(["lint", "--strict", CHART]).args(&values));
        assert!(out.contains("0 chart(s) failed"), "{out}");
    }
    // Cluster-wide: one ClusterRole whose rules are the kustomize install's.
    let docs = template(&[]);
    let cluster_role =
        std::fs::read_to_string(format!("{}/cluster-role.yaml", operator::MANIFESTS)).unwrap();
    let first = cluster_role.split("\n---\n").next().unwrap();
    let shipped: Value =
        serde_json::to_value(serde_yaml::from_str::<serde_yaml::Value>(first).unwrap()).unwrap();
    assert_eq!(
        rules_of(&docs, "ClusterRole"),
        vec![shipped["rules"].clone()]
    );
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["image"], "registry.example.com/kybctl:0.1.0");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(container["env"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["name"] != "WATCH_NAMESPACE"));
    // Its own Lease, and cluster-scoped names that carry the release's namespace.
    assert!(container["args"]
        .as_array()
        .unwrap()
        .contains(&Value::from("--lease-name=kyb")));
    let role = docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap();
    assert_eq!(role["metadata"]["name"], "kyb-kyb-system");

    // Namespaced: a Role with the same rules in each watched namespace, nothing cluster-wide.
    let docs = template(&["--set", "mode=namespaced", "--set", "watchNamespaces={a,b}"]);
    assert!(rules_of(&docs, "ClusterRole").is_empty());
    let roles: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "kyb")
        .collect();
    let namespaces: Vec<&Value> = roles.iter().map(|r| &r["metadata"]["namespace"]).collect();
    assert_eq!(namespaces, ["a", "b"]);
    assert!(roles.iter().all(|r| r["rules"] == shipped["rules"]));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    assert!(env
        .iter()
        .any(|e| e["name"] == "WATCH_NAMESPACE" && e["value"] == "a,b"));

    // Values that cannot work are refused, saying why.
    for (values, says) in [
        (vec!["--set", "mode=namespaced"], "needs watchNamespaces"),
        (
            vec!["--set", "mode=everywhere"],
            "mode must be cluster or namespaced",
        ),
    ] {
        let (ok, _, stderr) = run(helm().args(["template", "kyb", CHART]).args(&values));
        assert!(!ok && stderr.contains(says), "{values:?}: {stderr}");
    }
    let docs = template(&[
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "image.tag=9.9.9",
    ]);
    assert!(docs.iter().any(|d| d["kind"] == "ServiceMonitor"));
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.example.com/kybctl:9.9.9"
    );
}

/// The chart installs under `mode`, then the operator runs under the chart's ServiceAccount token
/// (in-process: kwok's pods run nothing) and brings a platform in `platform_ns` to Ready.
async fn install_and_reconcile(mode: &str) {
    let c = cluster().await;
    operator::install_crd().await;
    let release_ns = c.namespace(&format!("helm-{mode}")).await;
    let platform_ns = operator::platform_namespace(&format!("helm-{mode}-team")).await;
    let release = format!("kybctl-{mode}");
    // Server-side dry run of everything the chart renders, CRDs included, before the install: the
    // apiserver accepts it.
    let rendered = check(
        helm()
            .args([
                "template",
                &release,
                CHART,
                "--include-crds",
                "--namespace",
                &release_ns,
            ])
            .args(["--set", &format!("mode={mode}")])
            .args(["--set", &format!("watchNamespaces={{{platform_ns}}}")]),
    );
    check_with_stdin(
        c.kubectl()
            .args(["apply", "--dry-run=server", "--server-side", "-f", "-"]),
        &rendered,
    );

    let mut install = helm_on(c);
    install
        .args(["install", &release, CHART, "--namespace", &release_ns])
        .args(["--set", &format!("mode={mode}"), "--wait=false"]);
    if mode == "namespaced" {
        install.args(["--set", &format!("watchNamespaces={{{platform_ns}}}")]);
    }
    let out = check(&mut install);
    assert!(out.contains("STATUS: deployed"), "{out}");
    let token = check(
        c.kubectl()
            .args(["create", "token", &release, "-n", &release_ns]),
    );
    let client = c.client_with_token(token.trim()).await;
    let watch = match mode {
        "cluster" => controller::Watch::All,
        _ => controller::Watch::namespace(&platform_ns),
    };
    let op = Operator::start_watching(watch, client).await;
    operator::apply_platform(&platform_ns, "kyb").await;
    operator::wait_ready(&platform_ns, "kyb", "120s").await;
    // This operator did the work (no other one runs in this test binary meanwhile).
    assert!(op.metrics.writes.get() > 0);
    op.stop().await;

    // The chart's identity has no right outside what its mode grants.
    let sa = format!("system:serviceaccount:{release_ns}:{release}");
    let can = |verb: &str, what: &str, ns: &str| {
        let (_, out, _) = run(c
            .kubectl()
            .args(["auth", "can-i", verb, what, "-n", ns, "--as", &sa]));
        out.trim() == "yes"
    };
    assert!(can("create", "deployments", &platform_ns));
    assert!(!can("list", "secrets", &platform_ns), "never list Secrets");
    let elsewhere = c.namespace("helm-elsewhere").await;
    assert_eq!(can("create", "deployments", &elsewhere), mode == "cluster");
    check(helm_on(c).args(["uninstall", &release, "--namespace", &release_ns]));
}

/// One mode after the other: a cluster-wide operator running beside the namespaced one would
/// reconcile its platform too, and hide a Role that lacks a rule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_in_each_mode_reconciles_a_platform() {
    install_and_reconcile("namespaced").await;
    install_and_reconcile("cluster").await;
}
