//! The operator rides out a kube-apiserver restart in the middle of reconciling: its watches and
//! requests fail, it retries with backoff, and once the apiserver is back everything converges with
//! exactly one of each child. A test binary of its own, because restarting the apiserver disturbs every
//! client of the control plane this binary shares.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/operator.rs"]
mod operator;

use std::time::Duration;

use cluster::{check, cluster, run};
use operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apiserver_restart_mid_reconcile_converges_without_duplicates() {
    // The operator's log is shown when the test fails (RUST_LOG=kybctl=debug for more).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "kybctl=info,kube_runtime=info".into()),
        )
        .with_test_writer()
        .try_init();
    let c = cluster().await;
    operator::install_shipped().await;
    let ns = operator::platform_namespace("op-apiserver").await;
    // Under the shipped ServiceAccount, as in production. The token is signed by the control plane's
    // key, so it stays valid across the restart.
    let token = check(
        c.kubectl()
            .args(["create", "token", "kybctl-operator", "-n", "kyb-system"]),
    );
    let op = Operator::start_as(&ns, c.client_with_token(token.trim()).await).await;

    let count_where = |kind: &str, selector: &str| {
        let mut args = vec!["get", kind, "-n", &ns, "-o", "name"];
        if !selector.is_empty() {
            args.extend(["-l", selector]);
        }
        let (_, out, _) = run(c.kubectl().args(&args));
        out.lines().filter(|l| !l.trim().is_empty()).count()
    };
    let count = |kind: &str| count_where(kind, "");
    // Mid-reconcile, for certain: the expand Job's pod is held (kwok never completes it), so the
    // platform's first children exist and it cannot be Ready when the apiserver goes away. Waiting on
    // kwok's readiness delays instead lost the race on a loaded CI machine.
    let before = operator::platform_yaml("before").replace(
        "spec:\n",
        "spec:\n  migrations: {podAnnotations: {kwok.x-k8s.io/hold: \"true\"}}\n",
    );
    cluster::check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &before);
    let held_pod = || {
        let (_, out, _) = run(c.kubectl().args([
            "get",
            "pods",
            "-n",
            &ns,
            "-l",
            "kyb.io/migration-phase=expand",
            "-o",
            "name",
        ]));
        out.lines().next().map(|l| l.trim().to_string())
    };
    cluster::eventually(
        Duration::from_secs(60),
        "the held expand Job's pod",
        || async { held_pod().is_some() },
    )
    .await;
    assert!(count("configmaps") >= 2, "the first children"); // kube-root-ca.crt and the platform's
    let (_, ready, _) = run(c.kubectl().args([
        "get",
        "kyb/before",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
    ]));
    assert_ne!(ready.trim(), "True", "the restart must come mid-reconcile");
    tokio::task::spawn_blocking(move || c.restart_apiserver())
        .await
        .expect("restart task");

    // The held pod is let go; the operator must notice its Job complete through resumed watches.
    let pod = held_pod().expect("the held pod survives the restart");
    check(c.kubectl().args([
        "annotate",
        "-n",
        &ns,
        &pod,
        "kwok.x-k8s.io/hold=false",
        "--overwrite",
    ]));
    // The operator's watches must have resumed: a platform created after the restart is reconciled.
    operator::apply_platform(&ns, "after").await;
    for name in ["before", "after"] {
        let (ok, _, err) = run(c.kubectl().args([
            "wait",
            "-n",
            &ns,
            "--for=condition=Ready",
            "--timeout=120s",
            &format!("kyb/{name}"),
        ]));
        if !ok {
            let (_, state, _) = run(c.kubectl().args([
                "get",
                "kyb,deploy,rs,job,pods,events",
                "-n",
                &ns,
                "-o",
                "wide",
            ]));
            let (_, kyb, _) = run(c.kubectl().args(["get", "kyb", "-n", &ns, "-o", "yaml"]));
            panic!("kyb/{name} did not become Ready: {err}\n{state}\n{kyb}");
        }
    }
    // Each platform's expand Job; its contract Job follows once its rollout has fully promoted.
    assert_eq!(
        count_where("jobs", "kyb.io/migration-phase=expand"),
        2,
        "expand Jobs: exactly one per platform"
    );
    cluster::eventually(
        Duration::from_secs(60),
        "one contract Job per platform",
        || async { count_where("jobs", "kyb.io/migration-phase=contract") == 2 },
    )
    .await;
    for (kind, n) in [
        ("jobs", 4),
        ("deployments", 2),
        ("replicasets", 2),
        ("services", 2),
        ("horizontalpodautoscalers", 2),
        ("poddisruptionbudgets", 2),
        ("serviceaccounts", 3), // default + one per platform
    ] {
        assert_eq!(count(kind), n, "{kind}: exactly one per platform");
    }
    op.stop().await;
}
