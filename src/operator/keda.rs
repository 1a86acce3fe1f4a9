//! KEDA: the job workers sized to their queue. With `spec.workers.maxReplicas` and KEDA's CRDs
//! installed, a `ScaledObject` targets the worker Deployment with one `postgresql` trigger per
//! database holding jobs (each shard's primary), each counting the jobs of the workers' types that are
//! ready or running; KEDA's HPA runs `ceil(count / concurrency)` pods, from `replicas` up to
//! `maxReplicas`. Each trigger reads its connection string through a `TriggerAuthentication` naming
//! the same Secret key the pods mount, so no credential is copied.
//!
//! One ScaledObject per worker Deployment, not per job type: KEDA refuses a second ScaledObject on
//! the same target, and one Deployment runs all of `spec.workers.types`. Its HPA takes the largest
//! of the triggers, so with several shards the workers are sized to the busiest shard.
//!
//! Rendering is pure ([`render`]); the rest is thin I/O through `dynamic`: whether the CRDs exist
//! (API discovery) and applying or deleting the objects.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

use super::build::{self, BuildError};
use super::crd::{KybPlatform, WorkersSpec};
use super::dynamic;
use crate::jobs::JobKind;

pub const GROUP: &str = "keda.sh";
pub const VERSION: &str = "v1alpha1";
/// How often KEDA reads the triggers (its default is 30 s; a queue fills faster than that).
const POLLING_SECONDS: i32 = 15;
/// How long an idle queue keeps its pods before KEDA scales to `replicas` (KEDA's default).
const COOLDOWN_SECONDS: i32 = 300;

pub fn scaled_object_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "ScaledObject"),
        "scaledobjects",
    )
}

pub fn trigger_authentication_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, VERSION, "TriggerAuthentication"),
        "triggerauthentications",
    )
}

/// What KEDA needs for one platform's workers.
#[derive(Debug, Clone, PartialEq)]
pub struct Scaling {
    pub scaled_object: DynamicObject,
    /// One per database, named in the triggers.
    pub authentications: Vec<DynamicObject>,
}

/// The SQL each trigger runs: jobs of `kinds` (all kinds when empty) ready to run or running. The
/// kinds come from [`JobKind`], never from user text, so they are written into the statement (KEDA
/// takes no parameters).
pub fn backlog_query(queue: &str, kinds: &[JobKind]) -> String {
    let mut sql = format!(
        "SELECT count(*) FROM jobs WHERE queue = '{}' AND (state = 'running' OR \
         (state IN ('queued', 'failed') AND run_at <= now()))",
        queue.replace('\'', "''")
    );
    if !kinds.is_empty() {
        let list: Vec<String> = kinds.iter().map(|k| format!("'{}'", k.as_str())).collect();
        sql.push_str(&format!(" AND kind IN ({})", list.join(", ")));
    }
    sql
}

fn object(
    ar: &ApiResource,
    meta: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    data: Value,
) -> DynamicObject {
    let mut o = DynamicObject::new(meta.name.as_deref().unwrap_or_default(), ar).data(data);
    o.metadata = meta;
    o
}

/// The ScaledObject and its TriggerAuthentications for `spec.workers`, or `None` without
/// `maxReplicas` (fixed replicas, no KEDA).
pub fn render(
    kp: &KybPlatform,
    name: &str,
    w: &WorkersSpec,
) -> Result<Option<Scaling>, BuildError> {
    let Some(max) = w.max_replicas else {
        return Ok(None);
    };
    let worker = build::worker_name(name);
    let query = backlog_query(crate::jobs::queue::DEFAULT_QUEUE, &w.types);
    let mut triggers = Vec::new();
    let mut authentications = Vec::new();
    for (db, secret) in super::queue_status::job_databases(kp) {
        let auth_name = format!("{worker}-{db}");
        authentications.push(object(
            &trigger_authentication_resource(),
            build::meta(kp, auth_name.clone(), "worker")?,
            json!({"spec": {"secretTargetRef": [
                {"parameter": "connection", "name": secret.name, "key": secret.key}
            ]}}),
        ));
        triggers.push(json!({
            "type": "postgresql",
            "name": db,
            "metadata": {
                "query": query,
                "targetQueryValue": w.concurrency.to_string(),
                // Any job wakes a platform scaled to none.
                "activationTargetQueryValue": "0",
            },
            "authenticationRef": {"name": auth_name},
        }));
    }
    let scaled_object = object(
        &scaled_object_resource(),
        build::meta(kp, worker.clone(), "worker")?,
        json!({"spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": worker},
            "minReplicaCount": w.replicas,
            "maxReplicaCount": max,
            "pollingInterval": POLLING_SECONDS,
            "cooldownPeriod": COOLDOWN_SECONDS,
            "triggers": triggers,
        }}),
    );
    Ok(Some(Scaling {
        scaled_object,
        authentications,
    }))
}

/// Whether the apiserver serves KEDA's ScaledObject (its CRDs are installed).
pub async fn installed(client: &Client) -> Result<bool, kube::Error> {
    dynamic::served(
        client,
        &GroupVersionKind::gvk(GROUP, VERSION, "ScaledObject"),
    )
    .await
}

/// Makes KEDA's objects for `name`'s workers match `scaling`: applied when present, deleted (with
/// any TriggerAuthentication of the platform's workers) when not; only objects the platform's
/// `claim` (see `dynamic::delete`) covers are deleted. Returns the objects written.
pub async fn reconcile(
    client: &Client,
    ns: &str,
    name: &str,
    scaling: Option<&Scaling>,
    claim: &ObjectMeta,
) -> Result<u32, dynamic::Error> {
    let objects =
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &scaled_object_resource());
    let auths = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &trigger_authentication_resource(),
    );
    let worker = build::worker_name(name);
    let mut writes = 0;
    let keep: Vec<String> = scaling
        .iter()
        .flat_map(|s| s.authentications.iter())
        .filter_map(|a| a.metadata.name.clone())
        .collect();
    if let Some(s) = scaling {
        for a in &s.authentications {
            writes += u32::from(dynamic::apply(&auths, a.clone()).await?);
        }
        writes += u32::from(dynamic::apply(&objects, s.scaled_object.clone()).await?);
    } else {
        writes += u32::from(dynamic::delete(&objects, &worker, claim).await?);
    }
    // TriggerAuthentications of databases no longer in the spec (or of all, without scaling).
    let selector = format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=worker");
    for a in auths
        .list(&kube::api::ListParams::default().labels(&selector))
        .await?
    {
        let n = a.metadata.name.clone().unwrap_or_default();
        if !keep.contains(&n) {
            writes += u32::from(dynamic::delete(&auths, &n, claim).await?);
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(yaml: &str) -> KybPlatform {
        let mut kp = KybPlatform::new("kyb", serde_yaml::from_str(yaml).unwrap());
        kp.metadata.namespace = Some("team".into());
        kp.metadata.uid = Some("u-1".into());
        kp
    }

    #[test]
    fn the_backlog_counts_ready_and_running_jobs_of_the_workers_types() {
        let all = backlog_query("kyb-processing", &[]);
        assert!(all.contains("queue = 'kyb-processing'"), "{all}");
        assert!(!all.contains("kind IN"), "{all}");
        let some = backlog_query("kyb-processing", &[JobKind::Classify, JobKind::Noop]);
        assert!(some.ends_with("AND kind IN ('classify', 'noop')"), "{some}");
        assert!(some.contains("state = 'running'"), "{some}");
        assert!(
            some.contains("run_at <= now()"),
            "retries still waiting are not backlog"
        );
        assert_eq!(backlog_query("it's", &[]).matches("'it''s'").count(), 1);
    }

    #[test]
    fn fixed_workers_get_no_scaled_object() {
        let kp = platform(
            "{image: kyb:1, database: {primary: {name: db, key: url}}, workers: {replicas: 2}}",
        );
        let w = kp.spec.workers.clone().unwrap();
        assert_eq!(render(&kp, "kyb", &w).unwrap(), None);
    }

    #[test]
    fn one_trigger_per_shard_each_authenticated_by_the_pods_secret() {
        let kp = platform(
            "image: kyb:1
database:
  shards:
  - {id: a, primary: {name: db-a, key: url}}
  - {id: b, primary: {name: db-b, key: dsn}}
workers: {replicas: 0, maxReplicas: 12, concurrency: 5, types: [classify]}",
        );
        let w = kp.spec.workers.clone().unwrap();
        let s = render(&kp, "kyb", &w).unwrap().unwrap();
        let spec = &s.scaled_object.data["spec"];
        assert_eq!(s.scaled_object.metadata.name.as_deref(), Some("kyb-worker"));
        assert_eq!(spec["scaleTargetRef"]["name"], "kyb-worker");
        assert_eq!(
            (&spec["minReplicaCount"], &spec["maxReplicaCount"]),
            (&json!(0), &json!(12))
        );
        let triggers = spec["triggers"].as_array().unwrap();
        assert_eq!(triggers.len(), 2);
        assert_eq!(triggers[1]["type"], "postgresql");
        assert_eq!(triggers[1]["metadata"]["targetQueryValue"], "5");
        assert!(triggers[1]["metadata"]["query"]
            .as_str()
            .unwrap()
            .contains("kind IN ('classify')"));
        assert_eq!(
            triggers[1]["authenticationRef"]["name"],
            "kyb-worker-shard-b"
        );
        let auth = &s.authentications[1];
        assert_eq!(auth.metadata.name.as_deref(), Some("kyb-worker-shard-b"));
        assert_eq!(
            auth.data["spec"]["secretTargetRef"][0],
            json!({"parameter": "connection", "name": "db-b", "key": "dsn"})
        );
        let owner = &s.scaled_object.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "u-1", "goes with the platform");
    }
}
