//! Job workers sized by KEDA, against the real control plane with KEDA's CRDs from its upstream Go
//! module (`tests/cluster/upstream-crds keda`; the CRDs only, no KEDA operator runs, so nothing here
//! scales a pod: the apiserver validates what the operator applies against KEDA's own schema). The
//! queue's figures in status are read from a real PostgreSQL holding real jobs.

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
use kybctl::operator::keda;
use operator::{condition, Operator};

const CRDS: [&str; 2] = ["scaledobjects.keda.sh", "triggerauthentications.keda.sh"];

/// Whether the operator's own apply of `d` sets `spec.replicas` (KEDA's HPA must own it instead).
fn operator_sets_replicas(d: &Deployment) -> bool {
    d.metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(kybctl::operator::build::FIELD_MANAGER))
        .filter_map(|m| m.fields_v1.as_ref())
        .any(|f| f.0["f:spec"].get("f:replicas").is_some())
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
        &platform("{replicas: 1, maxReplicas: 6, concurrency: 5, types: [noop]}"),
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
    assert_eq!(d.spec.as_ref().unwrap().replicas, Some(1));
    assert!(operator_sets_replicas(&d));
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
        (&1.into(), &6.into())
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
        let d = deployments.get("kyb-worker").await.unwrap();
        condition(&kp, "WorkersAutoscaled") == Some(("True".into(), "KEDA".into()))
            && !operator_sets_replicas(&d)
    })
    .await;

    // Fixed again: KEDA's objects go, replicas is the operator's once more.
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
            && d.spec.and_then(|s| s.replicas) == Some(2)
    })
    .await;
    op.stop().await;
    upstream::uninstall(&CRDS).await;
}
