//! The operator against the real control plane: a KybPlatform becomes a running service, changes roll,
//! a failed migration keeps the old version serving, a missing Secret is reported, a no-op resync
//! writes nothing, and deletion garbage-collects everything.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/operator.rs"]
mod operator;
#[path = "common/upstream.rs"]
mod upstream;

use std::sync::Arc;
use std::time::Duration;

use cluster::{check, check_with_stdin, cluster, eventually, run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use kybctl::operator::controller;
use kybctl::operator::crd::KybPlatform;
use kybctl::operator::metrics::{OperatorMetrics, Outcome};
use operator::{condition, Operator};
use serde::Deserialize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_becomes_ready_rolls_changes_and_is_collected() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op").await;
    let op = Operator::start(&ns).await;
    operator::apply_platform(&ns, "kyb").await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    for kind in ["deployment", "service", "hpa", "pdb", "serviceaccount"] {
        let target = if kind.contains('/') {
            kind.to_owned()
        } else {
            format!("{kind}/kyb")
        };
        check(c.kubectl().args(["get", "-n", &ns, &target]));
    }
    let client = c.client().await;
    let kps = Api::<KybPlatform>::namespaced(client.clone(), &ns);
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let kp = kps.get("kyb").await.unwrap();
    let status = kp.status.clone().unwrap();
    assert_eq!(status.ready_replicas, 3);
    assert_eq!(
        status.image.as_deref(),
        Some("registry.example.com/kybctl:1")
    );
    assert_eq!(condition(&kp, "MigrationsApplied").unwrap().0, "True");
    let migrated = status
        .migrated_schema
        .clone()
        .expect("status.migratedSchema");
    let jobs = Api::<Job>::namespaced(client.clone(), &ns);
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &ns);
    let names = |list: Vec<String>| list.into_iter().collect::<std::collections::BTreeSet<_>>();
    let config_map_names = || async {
        names(
            config_maps
                .list(&ListParams::default().labels("app.kubernetes.io/component=config"))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|c| c.metadata.name.unwrap())
                .collect(),
        )
    };
    let job_names = || async {
        names(
            jobs.list(&ListParams::default().labels("kyb.io/migration-phase=expand"))
                .await
                .unwrap()
                .items
                .into_iter()
                .map(|j| j.metadata.name.unwrap())
                .collect(),
        )
    };
    // One immutable ConfigMap per configuration, named by it; the Job has a deadline and a TTL.
    let first_configs = config_map_names().await;
    assert_eq!(first_configs.len(), 1, "{first_configs:?}");
    let first_config = first_configs.iter().next().unwrap().clone();
    assert!(first_config.starts_with("kyb-config-"), "{first_config}");
    assert_eq!(
        config_maps.get(&first_config).await.unwrap().immutable,
        Some(true)
    );
    let first_jobs = job_names().await;
    assert_eq!(first_jobs.len(), 1, "{first_jobs:?}");
    let job = jobs.get(first_jobs.iter().next().unwrap()).await.unwrap();
    let job_spec = job.spec.unwrap();
    assert_eq!(job_spec.active_deadline_seconds, Some(600));
    assert_eq!(job_spec.ttl_seconds_after_finished, Some(3600));
    // Fully promoted (every pod on the spec's image, none left over): the contract steps run.
    eventually(
        Duration::from_secs(60),
        "the contract Job to succeed",
        || async {
            let kp = kps.get("kyb").await.unwrap();
            kp.status.unwrap_or_default().contracted_schema.as_deref() == Some(migrated.as_str())
        },
    )
    .await;
    let contract = jobs
        .list(&ListParams::default().labels("kyb.io/migration-phase=contract"))
        .await
        .unwrap()
        .items;
    assert_eq!(contract.len(), 1);
    let args = contract[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.iter().any(|a| a == "--contract"), "{args:?}");
    assert_eq!(
        status.endpoint.as_deref(),
        Some(format!("http://kyb.{ns}.svc:80").as_str())
    );
    // What each pod may open of the database's 200 connections, and the platform's own API key.
    let budget = status
        .database_connections
        .clone()
        .expect("the connection budget in status");
    assert!(budget.peak_pods * (budget.main + budget.relaxed + budget.analytics) <= 200);
    let key = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), &ns)
        .get("kyb-api-key")
        .await
        .expect("the generated API key's Secret");
    let data = key.data.unwrap();
    assert!(String::from_utf8_lossy(&data["key"].0).starts_with("kyb_"));
    assert!(
        key.metadata.owner_references.is_some(),
        "goes with the platform"
    );

    // A resync with nothing new writes nothing, and reads no child (they come from the watch caches):
    // touch a label (a watch event, same generation).
    let reconciled = || {
        op.metrics
            .reconciles
            .get_or_create(&Outcome {
                result: "ok".into(),
            })
            .get()
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (writes, reads, reconciles) = (
        op.metrics.writes.get(),
        op.metrics.reads.get(),
        reconciled(),
    );
    check(
        c.kubectl()
            .args(["label", "-n", &ns, "kyb/kyb", "touched=yes"]),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        op.metrics.writes.get(),
        writes,
        "a no-op reconcile must not write"
    );
    let noop_reconciles = reconciled() - reconciles;
    assert!(noop_reconciles >= 1, "the label change must be reconciled");
    // The only reads left are of the two referenced Secrets (kyb-db and the generated API key's):
    // RBAC allows no watch of Secrets.
    assert_eq!(
        op.metrics.reads.get() - reads,
        2 * noop_reconciles,
        "a no-op reconcile reads only its Secrets"
    );

    // A manual edit of an owned field is drift: undone within one resync (the edit's watch event
    // triggers it), while fields the operator does not own (an extra label) are left alone.
    let corrections = op.metrics.drift_corrections.get();
    check(c.kubectl().args([
        "set",
        "image",
        "-n",
        &ns,
        "deployment/kyb",
        "api=registry.example.com/kybctl:edited",
    ]));
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "pdb/kyb",
        "--type=merge",
        "-p",
        r#"{"spec":{"maxUnavailable":3},"metadata":{"labels":{"team":"payments"}}}"#,
    ]));
    eventually(
        Duration::from_secs(30),
        "the edits to be undone",
        || async {
            let d = deployments.get("kyb").await.unwrap();
            let image = d.spec.unwrap().template.spec.unwrap().containers[0]
                .image
                .clone();
            let (_, pdb, _) = run(c.kubectl().args([
                "get",
                "-n",
                &ns,
                "pdb/kyb",
                "-o",
                "jsonpath={.spec.maxUnavailable}/{.metadata.labels.team}",
            ]));
            image.as_deref() == Some("registry.example.com/kybctl:1") && pdb.trim() == "1/payments"
        },
    )
    .await;
    assert!(op.metrics.drift_corrections.get() >= corrections + 2);
    // Corrected, and then quiet again: nothing differs, nothing is written.
    operator::wait_ready(&ns, "kyb", "60s").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let writes = op.metrics.writes.get();
    check(c.kubectl().args([
        "label",
        "-n",
        &ns,
        "kyb/kyb",
        "touched=again",
        "--overwrite",
    ]));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(op.metrics.writes.get(), writes, "no writes once converged");

    // A configuration change rolls the pods (new config hash on the template).
    let hash = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["kyb.io/config-hash"]
            .clone()
    };
    let old_hash = hash(&deployments.get("kyb").await.unwrap());
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=merge",
        "-p",
        r#"{"spec":{"cache":{"l1Ttl":"1m"}}}"#,
    ]));
    eventually(
        Duration::from_secs(30),
        "the config change to reach the Deployment",
        || async { hash(&deployments.get("kyb").await.unwrap()) != old_hash },
    )
    .await;
    // A new ConfigMap for the new configuration; the old one stays for the old ReplicaSet's pods. No
    // schema moved, so no migration Job ran.
    let configs = config_map_names().await;
    assert_eq!(configs.len(), 2, "{configs:?}");
    assert!(configs.contains(&first_config));
    assert_eq!(
        job_names().await,
        first_jobs,
        "a cache setting migrates nothing"
    );

    // The finished Job is cleaned up (its TTL, done by hand here): status remembers the migration, so
    // no new Job is made for the same schema.
    for j in &first_jobs {
        check(
            c.kubectl()
                .args(["delete", "-n", &ns, "job", j, "--wait=true"]),
        );
    }
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=merge",
        "-p",
        r#"{"spec":{"cache":{"l1Ttl":"2m"}}}"#,
    ]));
    eventually(Duration::from_secs(30), "a third configuration", || async {
        config_map_names().await.len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        job_names().await.is_empty(),
        "the migration must not run again"
    );

    // A new shard is a new migration target: a config-only change that runs a migration Job.
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=merge",
        "-p",
        r#"{"spec":{"database":{"primary":null,"shards":[{"id":"a","primary":{"name":"kyb-db","key":"url"}}]}}}"#,
    ]));
    eventually(
        Duration::from_secs(60),
        "the new shard migrated",
        || async {
            let kp = kps.get("kyb").await.unwrap();
            let st = kp.status.unwrap_or_default();
            st.migrated_schema.is_some_and(|m| m != migrated) && !job_names().await.is_empty()
        },
    )
    .await;

    // Scaling through the scale subresource reaches the Deployment.
    check(
        c.kubectl()
            .args(["scale", "-n", &ns, "kyb/kyb", "--replicas=5"]),
    );
    eventually(Duration::from_secs(30), "5 replicas", || async {
        deployments.get("kyb").await.unwrap().spec.unwrap().replicas == Some(5)
    })
    .await;

    // A new image whose migration fails: Degraded, and the old image keeps serving.
    check(c.kubectl().args([
        "patch", "-n", &ns, "kyb/kyb", "--type=merge", "-p",
        r#"{"spec":{"image":"registry.example.com/kybctl:2","migrations":{"podAnnotations":{"kwok.x-k8s.io/fail":"true"}}}}"#,
    ]));
    eventually(
        Duration::from_secs(90),
        "Degraded/MigrationFailed",
        || async {
            condition(&kps.get("kyb").await.unwrap(), "Degraded")
                == Some(("True".into(), "MigrationFailed".into()))
        },
    )
    .await;
    let image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
            .unwrap()
    };
    assert_eq!(
        image(deployments.get("kyb").await.unwrap()),
        "registry.example.com/kybctl:1"
    );
    // Fixing the migration rolls the new image out.
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/migrations/podAnnotations"}]"#,
    ]));
    eventually(
        Duration::from_secs(60),
        "the new image to roll out",
        || async {
            image(deployments.get("kyb").await.unwrap()) == "registry.example.com/kybctl:2"
        },
    )
    .await;

    // Deleting the platform garbage-collects every child.
    check(
        c.kubectl()
            .args(["delete", "-n", &ns, "kyb/kyb", "--wait=true"]),
    );
    eventually(
        Duration::from_secs(60),
        "children to be garbage-collected",
        || async {
            let (_, out, _) = run(c.kubectl().args([
                "get",
                "-n",
                &ns,
                "deployment,service,hpa,pdb,configmap,job",
                "-l",
                "app.kubernetes.io/instance=kyb",
                "-o",
                "name",
            ]));
            out.trim().is_empty()
        },
    )
    .await;
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_is_reported_not_retried_hot() {
    let c = cluster().await;
    operator::install_crd().await;
    let ns = c.namespace("op-secret").await;
    let op = Operator::start(&ns).await;
    check_with_stdin(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        "apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {name: lonely}\nspec:\n  image: x:1\n  database: {primary: {name: nowhere, key: url}}\n",
    );
    let kps = Api::<KybPlatform>::namespaced(c.client().await, &ns);
    eventually(
        Duration::from_secs(30),
        "Degraded/SecretMissing",
        || async {
            condition(&kps.get("lonely").await.unwrap(), "Degraded")
                == Some(("True".into(), "SecretMissing".into()))
        },
    )
    .await;
    let reconciles = || {
        op.metrics
            .reconciles
            .get_or_create(&kybctl::operator::metrics::Outcome {
                result: "ok".into(),
            })
            .get()
    };
    let n = reconciles();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        reconciles() <= n + 1,
        "hot loop: {} reconciles in 3 s",
        reconciles() - n
    );
    let (_, out, _) = run(c
        .kubectl()
        .args(["get", "-n", &ns, "deployment", "-o", "name"]));
    assert!(
        out.trim().is_empty(),
        "nothing rolled out without its Secret"
    );
    op.stop().await;
}

/// The operator works under the ServiceAccount and RBAC that `kubectl apply -k manifests/` installs, and that
/// RBAC grants no more than it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_rbac_is_sufficient_and_least_privilege() {
    let c = cluster().await;
    // kubectl resolves httproutes through discovery.
    gateway::install_gateway_api_crds().await;
    operator::install_shipped().await;
    let sa = "system:serviceaccount:kyb-system:kybctl-operator";
    for (verb, resource, subresource, allowed) in [
        ("patch", "deployments", "", "yes"),
        ("patch", "kybplatforms.kyb.io", "status", "yes"),
        ("patch", "kybplatforms.kyb.io", "", "no"),
        ("get", "secrets", "", "yes"),
        ("get", "deployments", "", "no"), // children are read from the watch caches
        ("watch", "deployments", "", "yes"),
        ("list", "secrets", "", "no"),
        ("delete", "deployments", "", "yes"), // revisions past the history limit
        ("delete", "configmaps", "", "yes"),  // configurations past the revision history
        ("delete", "services", "", "yes"),    // a preview or canary Service no strategy uses
        ("patch", "httproutes.gateway.networking.k8s.io", "", "yes"), // canary weights
        ("list", "httproutes.gateway.networking.k8s.io", "", "no"),
        ("delete", "httproutes.gateway.networking.k8s.io", "", "no"),
        ("patch", "deployments", "scale", "no"),
        ("delete", "poddisruptionbudgets.policy", "", "yes"), // the workers' when they go
        ("create", "pods", "", "no"),
    ] {
        let sub = format!("--subresource={subresource}");
        let mut args = vec![
            "auth",
            "can-i",
            verb,
            resource,
            "--all-namespaces",
            "--as",
            sa,
        ];
        if !subresource.is_empty() {
            args.push(&sub);
        }
        let (_, out, _) = run(c.kubectl().args(&args));
        assert_eq!(
            out.trim(),
            allowed,
            "can the operator {verb} {resource} {subresource}?"
        );
    }
    let token = check(
        c.kubectl()
            .args(["create", "token", "kybctl-operator", "-n", "kyb-system"]),
    );
    let ns = operator::platform_namespace("op-rbac").await;
    let op = Operator::start_as(&ns, c.client_with_token(token.trim()).await).await;
    operator::apply_platform(&ns, "kyb").await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    // Events are written under the same identity.
    eventually(Duration::from_secs(10), "a Ready event", || async {
        let (_, out, _) = run(c.kubectl().args([
            "get",
            "events",
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].reason}",
        ]));
        out.split_whitespace().any(|r| r == "Ready")
    })
    .await;
    op.stop().await;
}

/// The namespaced install's Role grants exactly what the cluster-wide ClusterRole grants, so the two
/// installs cannot drift apart.
#[test]
fn namespaced_role_has_the_cluster_roles_rules() {
    let rules = |path: &str, kind: &str| -> serde_yaml::Value {
        let text = std::fs::read_to_string(format!("{}/{path}", operator::MANIFESTS)).unwrap();
        let doc = serde_yaml::Deserializer::from_str(&text)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .find(|doc| doc["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {path}"));
        doc["rules"].clone()
    };
    let cluster_wide = rules("cluster-role.yaml", "ClusterRole");
    assert!(cluster_wide.as_sequence().is_some_and(|r| !r.is_empty()));
    assert_eq!(
        rules("namespaced/watched-namespace.yaml", "Role"),
        cluster_wide
    );
}

/// The namespaced install, under its own token: with a Role in each watched namespace and nothing
/// cluster-wide, the operator reconciles the platforms of the namespaces it watches, may not touch any
/// other namespace, and leaves a platform there alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaced_install_reconciles_only_its_namespaces_under_roles() {
    let c = cluster().await;
    operator::install_crd().await;
    // Its own home namespace, so its ServiceAccount is not the cluster-wide install's.
    let home = c.namespace("op-home").await;
    let rendered = check(
        c.kubectl()
            .args(["kustomize", &format!("{}/namespaced", operator::MANIFESTS)]),
    )
    .replace("kyb-system", &home);
    check_with_stdin(c.kubectl().args(["apply", "-f", "-"]), &rendered);
    let watched = [
        operator::platform_namespace("op-ns-a").await,
        operator::platform_namespace("op-ns-b").await,
    ];
    let outside = operator::platform_namespace("op-ns-out").await;
    let role = std::fs::read_to_string(format!(
        "{}/namespaced/watched-namespace.yaml",
        operator::MANIFESTS
    ))
    .unwrap()
    .replace("namespace: kyb-system", &format!("namespace: {home}"));
    for ns in &watched {
        check_with_stdin(c.kubectl().args(["apply", "-n", ns, "-f", "-"]), &role);
    }
    let sa = format!("system:serviceaccount:{home}:kybctl-operator");
    let can = |verb: &str, resource: &str, scope: &[&str]| {
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &sa];
        args.extend_from_slice(scope);
        run(c.kubectl().args(&args)).1.trim().to_owned()
    };
    for ns in &watched {
        assert_eq!(can("patch", "deployments", &["-n", ns]), "yes");
        assert_eq!(can("get", "secrets", &["-n", ns]), "yes");
        assert_eq!(
            can(
                "patch",
                "kybplatforms.kyb.io",
                &["-n", ns, "--subresource=status"]
            ),
            "yes"
        );
    }
    for ns in [outside.as_str(), "kube-system", "default"] {
        assert_eq!(can("patch", "deployments", &["-n", ns]), "no", "in {ns}");
        assert_eq!(can("get", "secrets", &["-n", ns]), "no", "in {ns}");
        assert_eq!(
            can("watch", "kybplatforms.kyb.io", &["-n", ns]),
            "no",
            "in {ns}"
        );
    }
    for resource in ["kybplatforms.kyb.io", "deployments", "secrets"] {
        assert_eq!(
            can("list", resource, &["--all-namespaces"]),
            "no",
            "{resource} cluster-wide"
        );
    }

    let token = check(
        c.kubectl()
            .args(["create", "token", "kybctl-operator", "-n", &home]),
    );
    let op = Operator::start_watching(
        controller::Watch::of(watched.to_vec()),
        c.client_with_token(token.trim()).await,
    )
    .await;
    for ns in watched.iter().chain([&outside]) {
        operator::apply_platform(ns, "kyb").await;
    }
    for ns in &watched {
        operator::wait_ready(ns, "kyb", "120s").await;
    }
    // Both watched platforms are Ready, so the one outside has had every chance to be reconciled.
    let (_, children, _) = run(c.kubectl().args([
        "get",
        "deployments,services,configmaps",
        "-n",
        &outside,
        "-l",
        "app.kubernetes.io/managed-by",
        "-o",
        "name",
    ]));
    assert!(
        children.trim().is_empty(),
        "children outside the watched namespaces: {children}"
    );
    assert!(
        operator::platform(&outside, "kyb").await.status.is_none(),
        "status written outside the watched namespaces"
    );
    op.stop().await;
}

/// `spec.workers`: a worker Deployment (after the migration) and its PDB under the shipped RBAC; both
/// go when the field does, and the API Deployment is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_come_and_go_with_the_spec() {
    let c = cluster().await;
    let (ns, op) = Operator::start_shipped("op-workers").await;
    operator::apply(
        &ns,
        &format!(
            // 3: with the default autoscaling (25 API pods at peak) each pod gets 5 connections,
            // and a worker needs its concurrency + 2 (claims, the cache-invalidation listener).
            "{}  workers: {{replicas: 2, concurrency: 3, types: [classify]}}\n",
            operator::platform_yaml("kyb")
        ),
    )
    .await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    eventually(Duration::from_secs(30), "the worker Deployment", || async {
        deployments.get_opt("kyb-worker").await.unwrap().is_some()
    })
    .await;
    let worker = deployments.get("kyb-worker").await.unwrap().spec.unwrap();
    assert_eq!(worker.replicas, Some(2));
    let args = worker.template.spec.unwrap().containers[0]
        .args
        .clone()
        .unwrap();
    assert!(args.join(" ").contains("--types classify"), "{args:?}");
    let (_, pdb, _) = run(c
        .kubectl()
        .args(["get", "pdb", "kyb-worker", "-n", &ns, "-o", "name"]));
    assert_eq!(pdb.trim(), "poddisruptionbudget.policy/kyb-worker");

    check(c.kubectl().args([
        "patch",
        "kyb",
        "kyb",
        "-n",
        &ns,
        "--type",
        "json",
        "-p",
        r#"[{"op": "remove", "path": "/spec/workers"}]"#,
    ]));
    eventually(Duration::from_secs(30), "the workers to go", || async {
        let (_, left, _) = run(c.kubectl().args([
            "get",
            "deployment,pdb",
            "-n",
            &ns,
            "-l",
            "app.kubernetes.io/component=worker",
            "-o",
            "name",
        ]));
        left.trim().is_empty()
    })
    .await;
    assert!(deployments.get_opt("kyb").await.unwrap().is_some());
    op.stop().await;
}

/// Two platforms whose children's names collide (`kyb`'s worker Deployment is `kyb-worker`, the name
/// a platform `kyb-worker` gives its API Deployment): the second is refused in its status, saying
/// whose object it is, and the first's Deployment is left as it was, instead of both rewriting it on
/// every reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_does_not_take_over_another_platforms_child() {
    let c = cluster().await;
    let (ns, op) = Operator::start_shipped("op-taken").await;
    operator::apply(
        &ns,
        &format!(
            "{}  workers: {{replicas: 1, concurrency: 2, types: [classify]}}\n",
            operator::platform_yaml("kyb")
        ),
    )
    .await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    let before = deployments.get("kyb-worker").await.unwrap();
    operator::apply_platform(&ns, "kyb-worker").await;
    operator::wait_refused(
        &ns,
        "kyb-worker",
        "is controlled by KybPlatform kyb",
        Duration::from_secs(30),
    )
    .await;
    // Give a fight time to show: the platforms' reconciles keep running.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = deployments.get("kyb-worker").await.unwrap();
    assert_eq!(
        after.metadata.owner_references, before.metadata.owner_references,
        "still kyb's alone"
    );
    assert_eq!(
        after.metadata.generation, before.metadata.generation,
        "unchanged"
    );
    operator::wait_ready(&ns, "kyb", "30s").await;
    op.stop().await;
}

/// A Secret under the generated key's name that the platform did not make (its entry would be
/// mounted into the API pods as an accepted key) is refused, not used, and left as it is; once it is
/// gone the operator makes its own and the platform becomes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_api_key_secret_is_refused_not_used() {
    let c = cluster().await;
    let (ns, op) = Operator::start_shipped("op-planted").await;
    check(c.kubectl().args([
        "create",
        "secret",
        "generic",
        "kyb-api-key",
        "-n",
        &ns,
        "--from-literal=key=kyb_chosen",
        "--from-literal=keys.yaml=- client: planted\n",
    ]));
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client().await, &ns);
    let planted = secrets.get("kyb-api-key").await.unwrap();
    operator::apply_platform(&ns, "kyb").await;
    operator::wait_refused(
        &ns,
        "kyb",
        "Secret kyb-api-key exists and was not made",
        Duration::from_secs(30),
    )
    .await;
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    assert!(
        deployments.get_opt("kyb").await.unwrap().is_none(),
        "no API pods were given the planted key"
    );
    let after = secrets.get("kyb-api-key").await.unwrap();
    assert_eq!(
        after.data, planted.data,
        "the planted Secret is left as it is"
    );
    assert_eq!(after.metadata.owner_references, None);

    check(
        c.kubectl()
            .args(["delete", "secret", "kyb-api-key", "-n", &ns]),
    );
    operator::wait_ready(&ns, "kyb", "120s").await;
    let made = secrets.get("kyb-api-key").await.unwrap();
    assert!(
        made.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "KybPlatform" && o.name == "kyb"),
        "the operator's own, owned by the platform"
    );
    op.stop().await;
}

/// Who holds the operators' Lease in `ns`, as `kubectl` reads it.
fn holder_of_lease(c: &cluster::Cluster, ns: &str) -> String {
    let (_, out, _) = run(c.kubectl().args([
        "get",
        "lease",
        "kybctl-operator",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]));
    out.trim().to_owned()
}

/// An elected operator for platforms in `ns`, its Lease in `ns` too: its metrics, its stop, its task.
fn start_elected(
    client: kube::Client,
    ns: &str,
    identity: &str,
    lease: Duration,
) -> (
    Arc<OperatorMetrics>,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let metrics = Arc::new(OperatorMetrics::default());
    let stop = tokio_util::sync::CancellationToken::new();
    let elector = kybctl::operator::leader::LeaderElector::new(
        client.clone(),
        ns,
        "kybctl-operator",
        identity,
        lease,
    );
    let task = tokio::spawn(controller::run_elected(
        client,
        controller::Watch::namespace(ns),
        metrics.clone(),
        elector,
        stop.clone(),
    ));
    (metrics, stop, task)
}

/// Two operators with leader election: only the leader writes; when it stops, the other takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_writes_and_the_follower_takes_over() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-ha").await;
    let lease = Duration::from_secs(3);
    let start = |identity: &'static str| {
        let ns = ns.clone();
        async move { start_elected(cluster().await.client().await, &ns, identity, lease) }
    };
    let (a_metrics, a_stop, a_task) = start("operator-a").await;
    let lease_holder = || holder_of_lease(c, &ns);
    eventually(Duration::from_secs(15), "operator-a to lead", || async {
        lease_holder() == "operator-a"
    })
    .await;
    let (b_metrics, b_stop, b_task) = start("operator-b").await;
    operator::apply_platform(&ns, "kyb").await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    assert!(a_metrics.writes.get() > 0);
    assert_eq!(b_metrics.writes.get(), 0, "the follower must not write");

    // The leader stops (releasing the Lease); the follower takes over and reconciles the next change.
    a_stop.cancel();
    tokio::time::timeout(Duration::from_secs(15), a_task)
        .await
        .expect("leader stops")
        .unwrap();
    eventually(Duration::from_secs(15), "operator-b to lead", || async {
        lease_holder() == "operator-b"
    })
    .await;
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    check(
        c.kubectl()
            .args(["scale", "-n", &ns, "kyb/kyb", "--replicas=4"]),
    );
    eventually(
        Duration::from_secs(30),
        "the new leader to apply the change",
        || async { deployments.get("kyb").await.unwrap().spec.unwrap().replicas == Some(4) },
    )
    .await;
    assert!(b_metrics.writes.get() > 0);
    b_stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), b_task).await;
}

/// A leader killed outright (SIGKILL: no release, no last word): the follower, the real binary too,
/// takes the Lease once it has seen the record unchanged for a lease duration, not before, and
/// reconciles the next change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_after_one_lease() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-killed").await;
    let lease = Duration::from_secs(4);
    let spawn = |identity: &str| {
        let listen = format!("127.0.0.1:{}", kybctl::local::free_port().unwrap());
        tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"))
            .args([
                "operator",
                "--watch-namespace",
                &ns,
                "--lease-namespace",
                &ns,
            ])
            .args(["--identity", identity, "--listen", &listen])
            .args(["--leader-elect-lease-duration", "4s"])
            .env("KUBECONFIG", &c.kubeconfig)
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let lease_holder = || holder_of_lease(c, &ns);
    let mut a = spawn("operator-a");
    eventually(Duration::from_secs(20), "operator-a to lead", || async {
        lease_holder() == "operator-a"
    })
    .await;
    let _b = spawn("operator-b");
    operator::apply_platform(&ns, "kyb").await;
    operator::wait_ready(&ns, "kyb", "120s").await;

    a.start_kill().unwrap();
    a.wait().await.unwrap();
    let killed = std::time::Instant::now();
    eventually(Duration::from_secs(20), "operator-b to lead", || async {
        lease_holder() == "operator-b"
    })
    .await;
    let took = killed.elapsed();
    eprintln!("the follower took the Lease {took:?} after the kill");
    // The last renewal came at most one retry period (0.53 s) before the kill.
    assert!(
        took >= lease - Duration::from_secs(1),
        "taken {took:?} after the kill"
    );
    check(
        c.kubectl()
            .args(["scale", "-n", &ns, "kyb/kyb", "--replicas=3"]),
    );
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    eventually(
        Duration::from_secs(30),
        "the new leader to apply the change",
        || async { deployments.get("kyb").await.unwrap().spec.unwrap().replicas == Some(3) },
    )
    .await;
}

/// Skewed clocks: a holder whose clock runs an hour behind keeps its Lease for as long as it renews,
/// and one an hour ahead loses it a lease duration after it stops. A candidate that compared the
/// holder's `renewTime` with its own clock would get the first wrong at once and the second by an hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiry_ignores_the_holders_clock() {
    use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::{SignedDuration, Timestamp};
    use kube::api::{Patch, PatchParams, PostParams};

    let c = cluster().await;
    let ns = c.namespace("op-skew").await;
    let lease = Duration::from_secs(2);
    let leases = Api::<Lease>::namespaced(c.client().await, &ns);
    let renewed = |skew: SignedDuration| {
        serde_json::json!({ "spec": LeaseSpec {
            holder_identity: Some("skewed".into()),
            lease_duration_seconds: Some(lease.as_secs() as i32),
            renew_time: Some(MicroTime(Timestamp::now() + skew)),
            ..Default::default()
        }})
    };
    let behind = SignedDuration::from_hours(-1);
    let mut first: Lease = serde_json::from_value(renewed(behind)).unwrap();
    first.metadata.name = Some("kybctl-operator".into());
    leases.create(&PostParams::default(), &first).await.unwrap();
    let candidate = kybctl::operator::leader::LeaderElector::new(
        c.client().await,
        &ns,
        "kybctl-operator",
        "candidate",
        lease,
    );
    // The holder, an hour behind, renews every 300 ms for three lease durations.
    let renewing = std::time::Instant::now();
    while renewing.elapsed() < lease * 3 {
        leases
            .patch(
                "kybctl-operator",
                &PatchParams::default(),
                &Patch::Merge(renewed(behind)),
            )
            .await
            .unwrap();
        assert!(
            !candidate.try_lead().await.unwrap(),
            "taken from a holder that renews"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Its last renewal stamped an hour ahead; then it stops.
    leases
        .patch(
            "kybctl-operator",
            &PatchParams::default(),
            &Patch::Merge(renewed(SignedDuration::from_hours(1))),
        )
        .await
        .unwrap();
    let stopped = std::time::Instant::now();
    while !candidate.try_lead().await.unwrap() {
        assert!(
            stopped.elapsed() < lease * 5,
            "not taken {:?} after the holder stopped",
            stopped.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = stopped.elapsed();
    assert!(took >= lease, "taken {took:?} after the holder stopped");
    let held = leases.get("kybctl-operator").await.unwrap();
    assert_eq!(
        held.spec.unwrap().holder_identity.as_deref(),
        Some("candidate")
    );
}

/// Makes every reconcile of platform `name` fail: an immutable ConfigMap of someone else's holds the name
/// of the platform's own. Returns that name.
async fn take_config_map_name(ns: &str, name: &str) -> String {
    let taken = kybctl::operator::build::build(&operator::platform(ns, name).await)
        .unwrap()
        .config_map
        .metadata
        .name
        .unwrap();
    check_with_stdin(
        cluster().await.kubectl().args(["apply", "-n", ns, "-f", "-"]),
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {taken}}}\nimmutable: true\ndata: {{config.yaml: 'someone else'}}\n"),
    );
    taken
}

/// A spec whose pods cannot fit in the database's connections is refused in status, saying what to
/// change, with nothing deployed; raising the budget lets it through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spec_over_the_connection_budget_is_refused_until_it_fits() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-budget").await;
    let op = Operator::start(&ns).await;
    // 30 pods at most against 20 connections, 10 of them kept for Jobs: not one each.
    let spec = |max: u32| {
        format!(
            "apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata: {{name: kyb}}\nspec:\n  image: registry.example.com/kybctl:1\n  replicas: 30\n  autoscaling: {{enabled: false}}\n  database: {{primary: {{name: kyb-db, key: url}}, maxConnections: {max}}}\n"
        )
    };
    check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &spec(20));
    let refused = || async {
        operator::platform(&ns, "kyb")
            .await
            .status
            .is_some_and(|s| {
                s.conditions.iter().any(|c| {
                    c.type_ == "Degraded"
                        && c.status == "True"
                        && c.reason == "InvalidSpec"
                        && c.message.contains("maxConnections")
                })
            })
    };
    eventually(Duration::from_secs(30), "Degraded InvalidSpec", refused).await;
    let deployments: Api<Deployment> = Api::namespaced(c.client().await, &ns);
    assert!(
        deployments
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing deployed for a spec that cannot fit"
    );
    check_with_stdin(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        &spec(400),
    );
    eventually(Duration::from_secs(30), "the budget in status", || async {
        operator::platform(&ns, "kyb")
            .await
            .status
            .and_then(|s| s.database_connections)
            .is_some_and(|b| b.peak_pods >= 30 && b.peak_pods * b.main <= 390)
    })
    .await;
    op.stop().await;
}

/// A child the apiserver refuses (a ConfigMap of the operator's name already there, immutable, with
/// other data): the reconcile fails, a `ReconcileFailed` Event and the `Reconciled` condition say why,
/// retries back off, and once
/// the obstacle is gone the platform becomes Ready without anyone touching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_child_is_reported_and_retried_until_it_succeeds() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-refused").await;
    operator::apply_platform(&ns, "kyb").await;
    let name = take_config_map_name(&ns, "kyb").await;
    let op = Operator::start(&ns).await;
    let events = || {
        let (_, out, _) = run(c.kubectl().args([
            "get",
            "events",
            "-n",
            &ns,
            "--field-selector",
            "reason=ReconcileFailed",
            "-o",
            "jsonpath={.items[*].note}{.items[*].message}",
        ]));
        out
    };
    eventually(
        Duration::from_secs(30),
        "a ReconcileFailed Event",
        || async { events().contains(&name) },
    )
    .await;
    let reconciled = || async {
        let kp = operator::platform(&ns, "kyb").await;
        let c = kp.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Reconciled")
                .cloned()
        });
        c.map(|c| (c.status, c.reason, c.message))
    };
    eventually(
        Duration::from_secs(30),
        "Reconciled False in status",
        || async {
            reconciled().await.is_some_and(|(s, r, m)| {
                s == "False" && r == "ReconcileFailed" && m.contains(&name)
            })
        },
    )
    .await;
    check(c.kubectl().args(["delete", "configmap", &name, "-n", &ns]));
    operator::wait_ready(&ns, "kyb", "60s").await;
    let (status, reason, _) = reconciled().await.unwrap();
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ReconcileSucceeded")
    );
    op.stop().await;
}

/// A leader cut off from the apiserver (a partition: its calls hang) stops reconciling at its renew
/// deadline, by itself; the follower takes the Lease only after that, never while both would act.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_steps_down_before_the_follower_takes_over() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-partition").await;
    // A platform whose reconciles keep failing (a child's name is taken by an immutable ConfigMap),
    // so whoever leads keeps writing: failure notes to its status and Events, on a backoff.
    operator::apply_platform(&ns, "kyb").await;
    take_config_map_name(&ns, "kyb").await;
    let relay = cluster::Relay::start(c.apiserver_addr()).await;
    let lease = Duration::from_secs(6);
    let start =
        |client: kube::Client, identity: &'static str| start_elected(client, &ns, identity, lease);
    let (a, a_stop, a_task) = start(c.client_through(&relay).await, "operator-a");
    eventually(Duration::from_secs(15), "operator-a to lead", || async {
        a.leading.get() == 1
    })
    .await;
    let (b, b_stop, b_task) = start(c.client().await, "operator-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.leading.get(), 0, "the follower waits");

    relay.cut();
    let cut = std::time::Instant::now();
    // Sample both every 20 ms: the last moment A reconciles must come before the first moment B does.
    let (mut a_last, mut b_first) = (cut, None);
    while b_first.is_none() && cut.elapsed() < Duration::from_secs(30) {
        if a.leading.get() == 1 {
            a_last = std::time::Instant::now();
        }
        if b.leading.get() == 1 {
            b_first = Some(std::time::Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_first = b_first.expect("the follower took over within 30 s");
    let (stepped, took) = (a_last - cut, b_first - cut);
    eprintln!("after the cut: A reconciled until {stepped:?}, B from {took:?}");
    assert!(
        stepped < lease * 2 / 3 + Duration::from_secs(1),
        "A stopped {stepped:?} after the cut"
    );
    assert!(
        a_last < b_first,
        "A until {stepped:?}, B from {took:?}: both reconciled"
    );
    assert!(
        took >= lease - Duration::from_secs(1),
        "B took over {took:?} after the cut"
    );
    // Nothing A started before it stepped down writes afterwards (its failure notes included), while
    // B, on the same failing platform, does.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (a_writes, b_writes) = (a.writes.get(), b.writes.get());
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(a.writes.get(), a_writes, "A wrote after stepping down");
    assert!(
        b.writes.get() > b_writes,
        "B, leading, kept retrying the failing platform"
    );

    a_stop.cancel();
    b_stop.cancel();
    for task in [a_task, b_task] {
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("both stop promptly, the partitioned one included")
            .unwrap();
    }
}

/// An operator stopped mid-reconcile (after the migration Job was created, before the rollout) and a new
/// one started converge on exactly one of everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_mid_reconcile_converges_without_duplicates() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-restart").await;
    let first = Operator::start(&ns).await;
    operator::apply_platform(&ns, "kyb").await;
    let count = |kind: &'static str| {
        let ns = ns.clone();
        move || {
            // Jobs: the expand Job of the release (its contract Job follows the rollout).
            let (_, out, _) = run(c.kubectl().args([
                "get",
                kind,
                "-n",
                &ns,
                "-o",
                "name",
                "-l",
                if kind == "jobs" {
                    "kyb.io/migration-phase!=contract"
                } else {
                    "app.kubernetes.io/instance=kyb"
                },
            ]));
            out.lines().filter(|l| !l.trim().is_empty()).count()
        }
    };
    let jobs = count("jobs");
    eventually(Duration::from_secs(30), "the migration Job", || async {
        jobs() == 1
    })
    .await;
    first.stop().await;
    let second = Operator::start(&ns).await;
    operator::wait_ready(&ns, "kyb", "120s").await;
    assert_eq!(jobs(), 1, "one migration Job");
    assert_eq!(count("deployments")(), 1);
    assert_eq!(count("replicasets")(), 1, "no spurious rollout");
    assert_eq!(count("services")(), 1);
    second.stop().await;
}

/// `kybctl rollout status` as a CI job runs it: the binary, under an identity that may only get, list,
/// watch and patch KybPlatforms, with its documented exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_status_reports_each_state_with_its_exit_code() {
    let c = cluster().await;
    let ns = operator::platform_namespace("op-status").await;
    let kubeconfig = operator::rollouts_user(&ns, "ci").await;
    let status = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"));
        cmd.args(["rollout", "status", "-n", &ns])
            .args(args)
            .env("KUBECONFIG", &kubeconfig);
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        }
    };

    let op = Operator::start(&ns).await;
    operator::apply_platform(&ns, "kyb").await;
    let (code, out, err) = status(&["kyb", "--watch", "--timeout", "120s"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains("kyb: Healthy: 3/3 pods ready"), "{out}");

    // With no operator to observe it, a new spec is not settled: once (exit 4 at once) and watched
    // (exit 4 when the timeout passes).
    op.stop().await;
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=merge",
        "-p",
        r#"{"spec":{"cache":{"l1Ttl":"1m"}}}"#,
    ]));
    let (code, out, _) = status(&["kyb"]).await;
    assert_eq!(code, Some(4), "{out}");
    assert!(
        out.contains("waiting for the operator to observe generation"),
        "{out}"
    );
    let (code, _, err) = status(&["kyb", "--watch", "--timeout", "2s"]).await;
    assert_eq!(code, Some(4));
    assert!(err.contains("still progressing after 2s"), "{err}");

    // A failing migration: Degraded, exit 1, with the reason.
    let op = Operator::start(&ns).await;
    check(c.kubectl().args([
        "patch", "-n", &ns, "kyb/kyb", "--type=merge", "-p",
        r#"{"spec":{"image":"registry.example.com/kybctl:2","migrations":{"podAnnotations":{"kwok.x-k8s.io/fail":"true"}}}}"#,
    ]));
    let (code, out, err) = status(&["kyb", "--watch", "--timeout", "120s"]).await;
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("kyb: Degraded: MigrationFailed"), "{out}");

    let (code, _, err) = status(&["nope"]).await;
    assert_eq!(code, Some(2));
    assert!(err.contains("not found"), "{err}");

    // Pause, as the same limited user: a fixed spec is applied to the Deployment but not rolled out,
    // status says Paused (exit 3), a second pause changes nothing; resume rolls it out.
    let rollout = |verb: &'static str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kybctl"));
        cmd.args(["rollout", verb, "kyb", "-n", &ns])
            .env("KUBECONFIG", &kubeconfig);
        async move {
            let out = cmd.output().await.unwrap();
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            )
        }
    };
    assert_eq!(rollout("pause").await, (Some(0), "kyb: paused\n".into()));
    assert_eq!(
        rollout("pause").await,
        (Some(0), "kyb: already paused; nothing to do\n".into())
    );
    check(c.kubectl().args([
        "patch",
        "-n",
        &ns,
        "kyb/kyb",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/migrations/podAnnotations"}]"#,
    ]));
    let (code, out, err) = status(&["kyb", "--watch", "--timeout", "60s"]).await;
    assert_eq!(code, Some(3), "{out}{err}");
    assert!(out.contains("kyb: Paused: paused with"), "{out}");
    // Once its migration has run, the fixed spec reaches the Deployment, paused.
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    eventually(
        Duration::from_secs(60),
        "the new spec on the paused Deployment",
        || async {
            let spec = deployments.get("kyb").await.unwrap().spec.unwrap();
            spec.paused == Some(true)
                && spec.template.spec.unwrap().containers[0].image.as_deref()
                    == Some("registry.example.com/kybctl:2")
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let d = deployments.get("kyb").await.unwrap();
    assert_eq!(
        d.status.unwrap().updated_replicas.unwrap_or(0),
        0,
        "paused: no pod of the new spec"
    );
    assert_eq!(rollout("resume").await, (Some(0), "kyb: resumed\n".into()));
    let (code, out, err) = status(&["kyb", "--watch", "--timeout", "120s"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    let d = deployments.get("kyb").await.unwrap();
    assert!(!d.spec.unwrap().paused.unwrap_or(false), "resumed");
    op.stop().await;
}
