//! What the operator does with APIs a cluster may or may not have, against the real control plane
//! with their CRDs from the upstream Go modules (`tests/cluster/upstream-crds`; the CRDs only, no
//! KEDA or Prometheus Operator runs, so the apiserver validates what the operator applies against
//! their own schemas, and nothing here scales a pod or scrapes one):
//!
//! - KEDA: job workers sized to their queue; the queue's figures in status are read from a real
//!   PostgreSQL holding real jobs.
//! - The Prometheus Operator: a PodMonitor and a PrometheusRule per platform; the Grafana dashboard
//!   ConfigMap either way.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/operator.rs"]
mod operator;
#[path = "common/upstream.rs"]
mod upstream;

use std::time::Duration;

use cluster::{check, cluster, eventually};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject};
use kybctl::jobs::policy::Policy;
use kybctl::jobs::queue::{self, NewJob};
use kybctl::jobs::JobKind;
use kybctl::operator::crd::KybPlatform;
use kybctl::operator::{keda, monitoring};
use operator::{condition, Operator};

const CRDS: [&str; 2] = ["scaledobjects.keda.sh", "triggerauthentications.keda.sh"];
const MONITORING_CRDS: [&str; 2] = [
    "podmonitors.monitoring.coreos.com",
    "prometheusrules.monitoring.coreos.com",
];

fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

async fn operator_for(ns: &str) -> Operator {
    let c = cluster().await;
    let token = check(
        c.kubectl()
            .args(["create", "token", "kybctl-operator", "-n", "kyb-system"]),
    );
    Operator::start_as(ns, c.client_with_token(token.trim()).await).await
}

/// Without KEDA the workers stay at `replicas` and a condition says why; once KEDA's CRDs are
/// installed a ScaledObject (one postgresql trigger, authenticated from the pods' own Secret) takes
/// over `replicas`; without `maxReplicas` it goes again. Throughout, status shows the queue as the
/// database holds it (1,200 ready jobs), under the shipped RBAC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keda_sizes_the_workers_once_installed_and_status_shows_the_queue() {
    let c = cluster().await;
    // A control plane this test ran on before still has them.
    upstream::uninstall(&CRDS).await;

    let db = common::migrated_db().await;
    let pool = sqlx::PgPool::connect(&db).await.unwrap();
    let jobs: Vec<NewJob> = (0..1_200)
        .map(|_| NewJob::new(JobKind::Noop, serde_json::json!({})))
        .collect();
    let mut conn = pool.acquire().await.unwrap();
    queue::enqueue(&mut conn, &Policy::default(), &jobs)
        .await
        .unwrap();
    drop(conn);

    let (ns, op) = Operator::start_shipped("op-keda").await;
    check(c.kubectl().args([
        "create",
        "secret",
        "generic",
        "kyb-queue-db",
        "-n",
        &ns,
        &format!("--from-literal=url={db}"),
    ]));
    let platform = |workers: &str| {
        format!(
            // Few API pods, so the workers' connections fit the database's budget.
            "{}  autoscaling: {{enabled: false}}\n  workers: {workers}\n",
            operator::platform_yaml("kyb").replace("kyb-db", "kyb-queue-db")
        )
    };
    operator::apply(
        &ns,
        &platform("{replicas: 3, maxReplicas: 6, concurrency: 5, types: [noop]}"),
    )
    .await;
    let platforms = Api::<KybPlatform>::namespaced(c.client().await, &ns);
    let deployments = Api::<Deployment>::namespaced(c.client().await, &ns);
    eventually(
        Duration::from_secs(60),
        "KEDANotInstalled and the queue in status",
        || async {
            let kp = platforms.get("kyb").await.unwrap();
            let queue = kp.status.as_ref().and_then(|s| s.queue.clone());
            condition(&kp, "WorkersAutoscaled") == Some(("False".into(), "KEDANotInstalled".into()))
                && queue.is_some_and(|q| q.ready == 1_200 && q.error.is_none())
        },
    )
    .await;
    let (_, columns, _) = cluster::run(c.kubectl().args(["get", "kyb", "kyb", "-n", &ns]));
    assert!(columns.contains("QUEUE"), "{columns}");
    eventually(Duration::from_secs(60), "the worker Deployment", || async {
        deployments.get_opt("kyb-worker").await.unwrap().is_some()
    })
    .await;
    let d = deployments.get("kyb-worker").await.unwrap();
    assert_eq!(replicas(&d), Some(3));
    op.stop().await;

    // KEDA installed: a new operator (as after an upgrade) finds it at once.
    upstream::install(
        c,
        "keda",
        &[
            "keda.sh_scaledobjects.yaml",
            "keda.sh_triggerauthentications.yaml",
        ],
        &CRDS.map(String::from),
    );
    let op = operator_for(&ns).await;
    let scaled = Api::<DynamicObject>::namespaced_with(
        c.client().await,
        &ns,
        &keda::scaled_object_resource(),
    );
    let auths = Api::<DynamicObject>::namespaced_with(
        c.client().await,
        &ns,
        &keda::trigger_authentication_resource(),
    );
    eventually(Duration::from_secs(60), "the ScaledObject", || async {
        scaled.get_opt("kyb-worker").await.unwrap().is_some()
    })
    .await;
    let so = scaled.get("kyb-worker").await.unwrap();
    let spec = &so.data["spec"];
    assert_eq!(spec["scaleTargetRef"]["name"], "kyb-worker", "{spec}");
    assert_eq!(
        (&spec["minReplicaCount"], &spec["maxReplicaCount"]),
        (&3.into(), &6.into())
    );
    let trigger = &spec["triggers"][0];
    assert_eq!(trigger["type"], "postgresql");
    assert_eq!(trigger["metadata"]["targetQueryValue"], "5");
    // The trigger's query counts what status counts, on the same database.
    let query = trigger["metadata"]["query"].as_str().unwrap();
    let backlog: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query.to_owned()))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(backlog, 1_200, "{query}");
    let auth = auths.get("kyb-worker-primary").await.unwrap();
    assert_eq!(
        auth.data["spec"]["secretTargetRef"][0],
        serde_json::json!({"parameter": "connection", "name": "kyb-queue-db", "key": "url"})
    );
    eventually(Duration::from_secs(60), "WorkersAutoscaled", || async {
        let kp = platforms.get("kyb").await.unwrap();
        condition(&kp, "WorkersAutoscaled") == Some(("True".into(), "KEDA".into()))
    })
    .await;
    // The switch kept the 3 pods; KEDA's HPA then scales through the scale subresource (done here
    // by hand: no KEDA runs) and the operator, woken by the change, keeps its choice.
    assert_eq!(
        replicas(&deployments.get("kyb-worker").await.unwrap()),
        Some(3)
    );
    check(
        c.kubectl()
            .args(["scale", "deployment/kyb-worker", "--replicas=5", "-n", &ns]),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        replicas(&deployments.get("kyb-worker").await.unwrap()),
        Some(5),
        "the operator reset the autoscaler's choice"
    );

    // Fixed again: KEDA's objects go, replicas is the spec's once more.
    operator::apply(
        &ns,
        &platform("{replicas: 2, concurrency: 5, types: [noop]}"),
    )
    .await;
    eventually(Duration::from_secs(60), "KEDA's objects to go", || async {
        let kp = platforms.get("kyb").await.unwrap();
        let d = deployments.get("kyb-worker").await.unwrap();
        scaled.get_opt("kyb-worker").await.unwrap().is_none()
            && auths.get_opt("kyb-worker-primary").await.unwrap().is_none()
            && condition(&kp, "WorkersAutoscaled").is_none()
            && replicas(&d) == Some(2)
    })
    .await;
    op.stop().await;
    upstream::uninstall(&CRDS).await;
}

/// Without the Prometheus Operator the dashboard ConfigMap is there and the Monitoring condition
/// says what is missing; once its CRDs are installed the PodMonitor and PrometheusRule are applied
/// (accepted by its own schemas) under the shipped RBAC; `spec.monitoring.enabled: false` removes
/// all three, and a rule of the user's own under the platform's name is neither deleted nor taken
/// over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitoring_is_rendered_where_the_prometheus_operator_is_installed() {
    let c = cluster().await;
    upstream::uninstall(&MONITORING_CRDS).await;
    let (ns, op) = Operator::start_shipped("op-monitoring").await;
    operator::apply(
        &ns,
        &format!(
            "{}  monitoring: {{labels: {{release: prometheus}}}}\n",
            operator::platform_yaml("kyb")
        ),
    )
    .await;
    let platforms = Api::<KybPlatform>::namespaced(c.client().await, &ns);
    let config_maps =
        Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(c.client().await, &ns);
    eventually(
        Duration::from_secs(60),
        "PrometheusOperatorNotInstalled",
        || async {
            let kp = platforms.get("kyb").await.unwrap();
            condition(&kp, "Monitoring")
                == Some(("False".into(), "PrometheusOperatorNotInstalled".into()))
        },
    )
    .await;
    let dashboard = config_maps.get("kyb-dashboard").await.unwrap();
    assert_eq!(
        dashboard.metadata.labels.as_ref().unwrap()["grafana_dashboard"],
        "1"
    );
    let model: serde_json::Value =
        serde_json::from_str(&dashboard.data.unwrap()["kyb-kyb.json"]).unwrap();
    assert!(model["panels"].as_array().unwrap().len() >= 9, "{model}");
    op.stop().await;

    upstream::install(
        c,
        "prometheus-operator",
        &[
            "monitoring.coreos.com_podmonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ],
        &MONITORING_CRDS.map(String::from),
    );
    let op = operator_for(&ns).await;
    let monitors = Api::<DynamicObject>::namespaced_with(
        c.client().await,
        &ns,
        &monitoring::resource("PodMonitor", "podmonitors"),
    );
    let rules = Api::<DynamicObject>::namespaced_with(
        c.client().await,
        &ns,
        &monitoring::resource("PrometheusRule", "prometheusrules"),
    );
    eventually(Duration::from_secs(60), "Monitoring Rendered", || async {
        let kp = platforms.get("kyb").await.unwrap();
        condition(&kp, "Monitoring") == Some(("True".into(), "Rendered".into()))
    })
    .await;
    let pm = monitors.get("kyb").await.unwrap();
    assert_eq!(
        pm.metadata.labels.as_ref().unwrap()["release"],
        "prometheus"
    );
    assert_eq!(pm.data["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
    let owner = &pm.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "KybPlatform");
    let rule = rules.get("kyb").await.unwrap();
    let alerts: Vec<&str> = rule.data["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for a in [
        "KybHighErrorRate",
        "KybHighLatency",
        "KybQueueDeep",
        "KybErrorBudgetBurn",
    ] {
        assert!(alerts.contains(&a), "{a} in {alerts:?}");
    }

    // An edit of an owned field (the error-rate alert's expression) is undone at the next reconcile,
    // woken here by a spec change that leaves the rules as they were (no rule reads the throughput).
    let groups = rule.data["spec"]["groups"].as_array().unwrap();
    let (g, r) = groups
        .iter()
        .enumerate()
        .find_map(|(g, group)| {
            let rules = group["rules"].as_array().unwrap();
            let r = rules
                .iter()
                .position(|r| r["alert"] == "KybHighErrorRate")?;
            Some((g, r))
        })
        .unwrap();
    let original = groups[g]["rules"][r]["expr"].clone();
    let edit = serde_json::json!([{
        "op": "replace",
        "path": format!("/spec/groups/{g}/rules/{r}/expr"),
        "value": "vector(0) > 1",
    }]);
    check(c.kubectl().args([
        "patch",
        "prometheusrule",
        "kyb",
        "-n",
        &ns,
        "--type",
        "json",
        "-p",
        &edit.to_string(),
    ]));
    check(c.kubectl().args([
        "patch",
        "kyb",
        "kyb",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"slos": {"throughputRpm": 12345}}}"#,
    ]));
    eventually(Duration::from_secs(60), "the edit undone", || async {
        rules.get("kyb").await.unwrap().data["spec"]["groups"][g]["rules"][r]["expr"] == original
    })
    .await;

    operator::apply(
        &ns,
        &format!(
            "{}  monitoring: {{enabled: false}}\n",
            operator::platform_yaml("kyb")
        ),
    )
    .await;
    eventually(Duration::from_secs(60), "monitoring to go", || async {
        let kp = platforms.get("kyb").await.unwrap();
        monitors.get_opt("kyb").await.unwrap().is_none()
            && rules.get_opt("kyb").await.unwrap().is_none()
            && config_maps
                .get_opt("kyb-dashboard")
                .await
                .unwrap()
                .is_none()
            && condition(&kp, "Monitoring").is_none()
    })
    .await;

    // A PrometheusRule of the user's own under the platform's name: not deleted while monitoring is
    // off, not taken over when it is turned on (the platform is refused, naming it), and once the
    // user removes it the platform's own is applied by the retries alone.
    let foreign: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "kyb", "namespace": ns},
        "spec": {"groups": [{"name": "mine", "rules": [{"record": "mine", "expr": "vector(1)"}]}]},
    }))
    .unwrap();
    rules
        .create(&Default::default(), &foreign)
        .await
        .expect("the user's rule");
    check(c.kubectl().args([
        "patch",
        "kyb",
        "kyb",
        "-n",
        &ns,
        "--type",
        "merge",
        "-p",
        r#"{"spec": {"slos": {"throughputRpm": 23456}}}"#,
    ]));
    eventually(Duration::from_secs(60), "the change observed", || async {
        let kp = platforms.get("kyb").await.unwrap();
        kp.status.as_ref().and_then(|s| s.observed_generation) == kp.metadata.generation
    })
    .await;
    assert!(
        rules.get_opt("kyb").await.unwrap().is_some(),
        "the user's rule was deleted"
    );
    operator::apply(
        &ns,
        &format!(
            "{}  monitoring: {{labels: {{release: prometheus}}}}\n",
            operator::platform_yaml("kyb")
        ),
    )
    .await;
    operator::wait_refused(
        &ns,
        "kyb",
        "PrometheusRule kyb exists and was not made by this operator",
        Duration::from_secs(60),
    )
    .await;
    let kept = rules.get("kyb").await.unwrap();
    assert_eq!(kept.data["spec"]["groups"][0]["name"], "mine", "taken over");
    assert!(kept.metadata.owner_references.is_none(), "taken over");
    rules.delete("kyb", &Default::default()).await.unwrap();
    eventually(Duration::from_secs(60), "Monitoring Rendered", || async {
        let kp = platforms.get("kyb").await.unwrap();
        condition(&kp, "Monitoring") == Some(("True".into(), "Rendered".into()))
            && rules.get_opt("kyb").await.unwrap().is_some_and(|r| {
                r.metadata
                    .owner_references
                    .is_some_and(|o| o[0].kind == "KybPlatform")
            })
    })
    .await;
    op.stop().await;
    upstream::uninstall(&MONITORING_CRDS).await;
}
