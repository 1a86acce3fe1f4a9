//! The reconcile loop: observe, build (pure), apply what changed, write status when it changed.
//!
//! Every write is a server-side apply under one field manager. Each child carries the hash of what was
//! last applied, so a resync that finds nothing new performs no write at all.
//!
//! Children are read from the controller's own watch caches (one watch per kind, which also triggers
//! reconciles), never fetched: a reconcile that finds nothing new sends no request for them, and one
//! that does sends only its writes. Secrets are the exception: RBAC grants only `get` on them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::build::{self, Children, FIELD_MANAGER};
use super::drift;
use super::metrics::OperatorMetrics;
use super::ownership;
use super::queue_status;
use super::render;
use super::revisions;
use super::status::{self, Blocker, Migration, Observed, Rollout, WorkerScaling};
use crate::operator::crd::{KybPlatform, RolloutStrategy};
use crate::service::auth::api_keys;
use crate::service::auth::scopes::Scope;

const APPLIED_HASH: &str = "kyb.io/applied-hash";
/// Periodic resync: catches drift the watches cannot see (a Secret created later, for example).
const RESYNC: Duration = Duration::from_secs(300);
const WAIT_FOR_JOB: Duration = Duration::from_secs(5);
const WAIT_FOR_PODS: Duration = Duration::from_secs(10);
const SECRET_RECHECK: Duration = Duration::from_secs(30);
const RECONCILE_CONCURRENCY: u16 = 16;
/// How long a reconcile waits for the watch caches' first listing before giving up (and retrying later).
const CACHE_SYNC: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialise {0}: {1}")]
    Serialise(&'static str, serde_json::Error),
    #[error("the watch caches have not listed the children yet")]
    CacheNotSynced,
    #[error(transparent)]
    Build(#[from] build::BuildError),
    #[error(transparent)]
    NameTaken(#[from] ownership::NameTaken),
}

impl From<super::dynamic::Error> for Error {
    fn from(e: super::dynamic::Error) -> Self {
        match e {
            super::dynamic::Error::Kube(e) => Error::Kube(e),
            super::dynamic::Error::NameTaken(t) => Error::NameTaken(t),
        }
    }
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "transport",
            Error::Serialise(..) => "serialise",
            Error::CacheNotSynced => "cache_not_synced",
            Error::Build(_) => "invalid_spec",
            Error::NameTaken(_) => "name_taken",
        }
    }
}

pub struct Context {
    pub client: Client,
    /// For analysis measurements (Prometheus, web providers).
    pub http: reqwest::Client,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
    pub caches: Caches,
    /// Consecutive failed reconciles per platform, for the retry backoff.
    pub failures: std::sync::Mutex<std::collections::HashMap<ObjectRef<KybPlatform>, u32>>,
    /// Whether optional APIs (KEDA's, the Prometheus Operator's) were served when last asked, and
    /// when: asked again after [`OPTIONAL_API_RECHECK`], so installing one later takes effect
    /// without a restart.
    pub optional_apis:
        tokio::sync::Mutex<std::collections::HashMap<OptionalApi, (std::time::Instant, bool)>>,
    /// Cancelled when this controller stops or is abandoned (leadership lost): the failure notes
    /// `error_policy` writes off the reconcile's task end with it instead of outliving the leader.
    pub abandoned: tokio_util::sync::CancellationToken,
}

/// APIs the operator uses where they are installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OptionalApi {
    Keda,
    PrometheusOperator,
}

const OPTIONAL_API_RECHECK: Duration = Duration::from_secs(60);

impl Context {
    async fn installed(&self, api: OptionalApi) -> Result<bool, Error> {
        let mut known = self.optional_apis.lock().await;
        if let Some((at, installed)) = known.get(&api) {
            if at.elapsed() < OPTIONAL_API_RECHECK {
                return Ok(*installed);
            }
        }
        let installed = match api {
            OptionalApi::Keda => super::keda::installed(&self.client).await?,
            OptionalApi::PrometheusOperator => super::monitoring::installed(&self.client).await?,
        };
        known.insert(api, (std::time::Instant::now(), installed));
        Ok(installed)
    }

    /// Forgets what was known of `api`, so the next reconcile asks again: its CRDs were removed.
    async fn forget(&self, api: OptionalApi) {
        self.optional_apis.lock().await.remove(&api);
    }
}

/// The children as last seen by the controller's watches. Those whose fields can be edited are kept
/// whole, so a drifted field is found by comparing with the cache (see `drift`); ConfigMaps are
/// immutable, so their metadata is enough. managedFields are dropped from all: nothing reads them and
/// they are often the larger part of an object.
#[derive(Clone)]
pub struct Caches {
    pub deployments: Store<Deployment>,
    pub jobs: Store<Job>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
    pub services: Store<Service>,
    pub service_accounts: Store<ServiceAccount>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    pub network_policies: Store<NetworkPolicy>,
}

impl Caches {
    /// Until every watch has listed once, an empty cache would read as "child missing" and cause needless
    /// applies. Cheap once ready: readiness is never lost (a re-list after a watch error replaces the
    /// contents atomically when it completes).
    async fn wait_until_ready(&self) -> Result<(), Error> {
        let all = async {
            futures::try_join!(
                self.deployments.wait_until_ready(),
                self.jobs.wait_until_ready(),
                self.config_maps.wait_until_ready(),
                self.services.wait_until_ready(),
                self.service_accounts.wait_until_ready(),
                self.pdbs.wait_until_ready(),
                self.hpas.wait_until_ready(),
                self.network_policies.wait_until_ready(),
            )
        };
        match tokio::time::timeout(CACHE_SYNC, all).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Error::CacheNotSynced),
        }
    }
}

/// The cached object `ns/name`, if the watch has seen it.
pub(super) fn cached<K>(store: &Store<K>, ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource + Clone,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    store.get(&ObjectRef::new(name).within(ns))
}

pub(super) fn meta<K: Resource>(cached: &Option<Arc<K>>) -> Option<&ObjectMeta> {
    cached.as_deref().map(Resource::meta)
}

/// A store fed by `events`, and the stream of changed objects that drives it (and triggers reconciles).
fn cache<K>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>> + Send + 'static,
) -> (
    Store<K>,
    impl Stream<Item = watcher::Result<K>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = events
        .modify(|o| o.managed_fields_mut().clear())
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

fn hash_of(json: &[u8]) -> String {
    hex::encode(&Sha256::digest(json)[..8])
}

/// A child as JSON text, then as a JSON value, through the text. Not `serde_json::to_value`: the
/// apply already writes every child as text (its hash, the patch), and a second serialiser would
/// compile all of a Kubernetes type's serialisation again (the Pod template's tree above all), for
/// a build measurably longer (BENCHMARKS.md, twenty-fifth pass) and nothing at run time.
fn to_json<T: Serialize>(
    obj: &T,
    what: &'static str,
) -> Result<(Vec<u8>, serde_json::Value), Error> {
    let text = serde_json::to_vec(obj).map_err(|e| Error::Serialise(what, e))?;
    let value = serde_json::from_slice(&text).map_err(|e| Error::Serialise(what, e))?;
    Ok((text, value))
}

/// Whether a child must be applied: it is missing, or was last applied from another desired state.
/// `live` comes from a cache that may lag; at worst that causes an idempotent re-apply. (Edits of an
/// object applied from the same desired state are found by [`drift::drift`].)
fn needs_apply(live: Option<&ObjectMeta>, hash: &str) -> bool {
    let applied = live
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(APPLIED_HASH));
    applied.map(String::as_str) != Some(hash)
}

/// The cached child as JSON, for the drift comparison.
pub(super) fn object<K: Serialize>(
    cached: &Option<Arc<K>>,
) -> Result<Option<serde_json::Value>, Error> {
    cached
        .as_deref()
        .map(|k| to_json(k, "cached child").map(|(_, value)| value))
        .transpose()
}

/// Applies `desired` unless `live` (its cached metadata) already carries its hash and `live_object`
/// (the cached object, where the cache keeps it whole) still holds every desired field. Returns the
/// object the apiserver answered with, or `None` when nothing was sent.
pub(super) async fn apply<K>(
    client: &Client,
    ns: &str,
    mut desired: K,
    live: Option<&ObjectMeta>,
    live_object: Option<serde_json::Value>,
    metrics: &OperatorMetrics,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let (text, want) = to_json(&desired, "child")?;
    let hash = hash_of(&text);
    let drifted = live_object.and_then(|live| drift::drift(&want, &live));
    if !needs_apply(live, &hash) && drifted.is_none() {
        return Ok(None);
    }
    let name = desired.name_any();
    let api = Api::<K>::namespaced(client.clone(), ns);
    // The caches hold only this operator's labelled objects: a miss may still be someone else's.
    let found = match live {
        Some(m) => Some(m.clone()),
        None => api
            .list_metadata(&ListParams::default().fields(&format!("metadata.name={name}")))
            .await?
            .items
            .into_iter()
            .next()
            .map(|o| o.metadata),
    };
    if let Some(why) = found
        .as_ref()
        .and_then(|m| ownership::conflict(m, desired.meta()))
    {
        return Err(ownership::NameTaken {
            kind: K::kind(&()).into_owned(),
            name,
            why,
        }
        .into());
    }
    if let Some(path) = drifted {
        tracing::info!(kind = %K::kind(&()), name = %name, namespace = %ns, field = %path, "undoing an edit of an owned field");
        metrics.drift_corrections.inc();
    }
    desired.annotations_mut().insert(APPLIED_HASH.into(), hash);
    metrics.writes.inc();
    // Force: this operator owns these fields; a human edit of them is drift to undo.
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    Ok(Some(applied))
}

/// Deletes a child the cache says is present. Already gone (the cache lagged) is success.
pub(super) async fn delete<K>(
    client: &Client,
    ns: &str,
    name: &str,
    metrics: &OperatorMetrics,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    metrics.writes.inc();
    match Api::<K>::namespaced(client.clone(), ns)
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Whether `job` is a migration Job of the platform `instance` in `ns`.
fn is_migration_job_of(job: &ObjectMeta, ns: &str, instance: &str) -> bool {
    let empty = BTreeMap::new();
    let labels = job.labels.as_ref().unwrap_or(&empty);
    job.namespace.as_deref() == Some(ns)
        && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(instance)
        && labels
            .get("app.kubernetes.io/component")
            .map(String::as_str)
            == Some("migrations")
}

/// Deletes the configuration ConfigMaps no ReplicaSet the Deployment keeps can still need (see
/// [`build::stale_config_maps`]), including the single mutable `<name>-config` of older operators.
async fn prune_config_maps(
    ctx: &Context,
    ns: &str,
    instance: &str,
    current: &str,
) -> Result<(), Error> {
    let prefix = format!("{instance}-config");
    let existing: Vec<(String, String)> = ctx
        .caches
        .config_maps
        .state_filter(|cm| {
            let m = &cm.metadata;
            let name = m.name.as_deref().unwrap_or_default();
            m.namespace.as_deref() == Some(ns)
                && (name == prefix || name.starts_with(&format!("{prefix}-")))
                && m.labels
                    .as_ref()
                    .and_then(|l| l.get("app.kubernetes.io/instance"))
                    .map(String::as_str)
                    == Some(instance)
        })
        .iter()
        .map(|cm| {
            let created = cm
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            (cm.name_any(), created)
        })
        .collect();
    for stale in build::stale_config_maps(current, &existing) {
        delete::<ConfigMap>(&ctx.client, ns, &stale, &ctx.metrics).await?;
    }
    Ok(())
}

/// Referenced Secret keys that do not exist, as a blocker.
/// Fetched, not cached: RBAC grants only `get` on Secrets (no list/watch), on purpose.
async fn missing_secrets(
    client: &Client,
    ns: &str,
    kp: &KybPlatform,
    metrics: &OperatorMetrics,
) -> Result<Option<Blocker>, Error> {
    let rendered = render::render(&kp.name_any(), &kp.spec);
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let generated = render::generated_key_secret(&kp.name_any());
    for (name, keys) in render::referenced_secrets(&rendered.mounts) {
        metrics.reads.inc();
        let secret = match api.get_opt(name).await? {
            None if name == generated => Some(create_generated_key(&api, kp, metrics).await?),
            found => found,
        };
        // The generated key's entry is mounted into the API pods as an accepted key: a Secret under
        // its name that the platform did not make would let whoever made it choose a key.
        if let Some(s) = secret.as_ref().filter(|_| name == generated) {
            if let Some(why) = ownership::conflict(&s.metadata, &build::generated_key_meta(kp)?) {
                return Err(ownership::NameTaken {
                    kind: "Secret".into(),
                    name: name.to_owned(),
                    why,
                }
                .into());
            }
        }
        let Some(secret) = secret else {
            return Ok(Some(Blocker {
                reason: "SecretMissing",
                message: format!("Secret {name} not found in namespace {ns}"),
            }));
        };
        let data = secret.data.unwrap_or_default();
        if let Some(key) = keys.into_iter().find(|k| !data.contains_key(*k)) {
            return Ok(Some(Blocker {
                reason: "SecretKeyMissing",
                message: format!("Secret {name} has no key {key}"),
            }));
        }
    }
    Ok(None)
}

/// Makes the platform's own API key (see `AuthSpec`) once; a Secret made meanwhile by another
/// reconcile wins, and is what is returned.
async fn create_generated_key(
    api: &Api<Secret>,
    kp: &KybPlatform,
    metrics: &OperatorMetrics,
) -> Result<Secret, Error> {
    let client = format!("{}-operator", kp.name_any());
    let (key, entry) = api_keys::generate(&client, &[Scope::Read, Scope::Write]);
    let entry = serde_yaml::to_string(&[entry]).expect("a key entry serialises");
    let secret = build::generated_key_secret(kp, &key, &entry)?;
    metrics.writes.inc();
    match api.create(&PostParams::default(), &secret).await {
        Ok(created) => Ok(created),
        Err(kube::Error::Api(e)) if e.code == 409 => {
            metrics.reads.inc();
            Ok(api.get(&secret.name_any()).await?)
        }
        Err(e) => Err(e.into()),
    }
}

/// The state of `job` as the cache has it, creating it first when the cache has not seen it. (If the
/// cache merely lags, the create is an apply that changes nothing.)
async fn job_run(ctx: &Context, ns: &str, job: &Job) -> Result<Migration, Error> {
    if let Some(j) = cached(&ctx.caches.jobs, ns, &job.name_any()) {
        return Ok(job_state(&j));
    }
    Ok(
        match apply(&ctx.client, ns, job.clone(), None, None, &ctx.metrics).await? {
            Some(created) => job_state(&created),
            None => Migration::Running {
                job: job.name_any(),
            },
        },
    )
}

fn job_state(job: &Job) -> Migration {
    let name = job.name_any();
    let status = job.status.clone().unwrap_or_default();
    let conditions = status.conditions.unwrap_or_default();
    let has = |t: &str| {
        conditions
            .iter()
            .any(|c| c.type_ == t && c.status == "True")
    };
    if has("Complete") || status.succeeded.unwrap_or(0) > 0 {
        Migration::Succeeded { job: name }
    } else if has("Failed") {
        let message = conditions
            .iter()
            .find(|c| c.type_ == "Failed")
            .and_then(|c| c.reason.clone().or(c.message.clone()))
            .unwrap_or_else(|| "failed".into());
        Migration::Failed { job: name, message }
    } else {
        Migration::Running { job: name }
    }
}

fn rollout(d: Option<&Deployment>, desired: i32) -> Rollout {
    let Some(d) = d else {
        return Rollout {
            desired,
            ..Default::default()
        };
    };
    let st = d.status.clone().unwrap_or_default();
    // Counts only describe the current generation once the Deployment controller has seen it.
    let current = st.observed_generation >= d.metadata.generation;
    Rollout {
        replicas: st.replicas.unwrap_or(0),
        ready_replicas: st.ready_replicas.unwrap_or(0),
        updated_replicas: if current {
            st.updated_replicas.unwrap_or(0)
        } else {
            0
        },
        desired,
        image: d
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers.first())
            .and_then(|c| c.image.clone()),
    }
}

async fn write_status(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    obs: &Observed,
) -> Result<(), Error> {
    let (client, metrics) = (&ctx.client, &ctx.metrics);
    let next = status::next_status(kp, obs, &Time(k8s_openapi::jiff::Timestamp::now()));
    ctx.metrics.observe_rollout(kp, &next);
    if kp.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let previous_phase = kp.status.as_ref().and_then(|s| s.phase.clone());
    let step = next.rollout.as_ref().and_then(|r| {
        super::progressive::event(kp.status.as_ref().and_then(|s| s.rollout.as_ref()), r)
    });
    match step {
        // Blue-green and canary: every step, pause, promotion and abort.
        Some((warning, reason, note)) if obs.progressive.is_some() => {
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            publish(ctx, kp, type_, reason.into(), note).await;
        }
        _ if next.phase != previous_phase => announce(ctx, kp, &next).await,
        _ => {}
    }

    metrics.writes.inc();
    let patch = serde_json::json!({
        "apiVersion": "kyb.io/v1alpha1",
        "kind": "KybPlatform",
        "status": next,
    });
    Api::<KybPlatform>::namespaced(client.clone(), ns)
        .patch_status(
            &kp.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}

/// A Kubernetes Event for a phase change, for `kubectl describe` and event-based alerting. Best effort:
/// a rejected Event never fails the reconcile.
async fn announce(ctx: &Context, kp: &KybPlatform, next: &crate::operator::crd::KybPlatformStatus) {
    let phase = next.phase.clone().unwrap_or_default();
    let degraded = next
        .conditions
        .iter()
        .find(|c| c.type_ == status::DEGRADED && c.status == "True");
    let (type_, reason, note) = match degraded {
        Some(c) => (EventType::Warning, c.reason.clone(), c.message.clone()),
        None => (
            EventType::Normal,
            phase.clone(),
            format!("{}/{} pods ready", next.ready_replicas, next.replicas),
        ),
    };
    publish(ctx, kp, type_, reason, note).await;
}

async fn publish(ctx: &Context, kp: &KybPlatform, type_: EventType, reason: String, note: String) {
    let event = Event {
        type_,
        reason,
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    ctx.metrics.writes.inc();
    if let Err(e) = ctx.recorder.publish(&event, &kp.object_ref(&())).await {
        tracing::debug!(error = %e, "event not recorded");
    }
}

/// The rolling-update strategy: the Deployment `<name>` once the migration gate is open. Returns the
/// Deployment as now known.
async fn rolling_update(
    ctx: &Context,
    ns: &str,
    children: &Children,
    migration: &Migration,
    live: Option<Arc<Deployment>>,
) -> Result<Option<Arc<Deployment>>, Error> {
    let may_roll_out = matches!(migration, Migration::Disabled | Migration::Succeeded { .. });
    if !may_roll_out {
        return Ok(live);
    }
    Ok(
        match apply(
            &ctx.client,
            ns,
            children.deployment.clone(),
            meta(&live),
            object(&live)?,
            &ctx.metrics,
        )
        .await?
        {
            Some(applied) => Some(Arc::new(applied)),
            None => live,
        },
    )
}

pub async fn reconcile(kp: Arc<KybPlatform>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&kp, &ctx).await;
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ObjectRef::from_obj(&*kp));
    }
    ctx.metrics
        .observe(started.elapsed(), result.as_ref().err().map(Error::reason));
    result
}

async fn reconcile_inner(kp: &KybPlatform, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let metrics = &ctx.metrics;
    let caches = &ctx.caches;
    caches.wait_until_ready().await?;
    let ns = kp.namespace().unwrap_or_default();
    let name = kp.name_any();
    let base = Observed {
        blocker: None,
        migration: Migration::Disabled,
        rollout: Rollout::default(),
        revision: None,
        migrated_schema: None,
        contract: Migration::Disabled,
        contracted_schema: None,
        selector: build::selector_string(kp),
        endpoint: Some(format!("http://{name}.{ns}.svc:80")),
        progressive: None,
        worker_scaling: None,
        queue: None,
        monitoring: None,
    };
    let live = cached(&caches.deployments, &ns, &name);

    let children: Children = match build::build(kp) {
        Ok(c) => c,
        Err(e) => {
            let obs = Observed {
                blocker: Some(Blocker {
                    reason: "InvalidSpec",
                    message: e.to_string(),
                }),
                rollout: rollout(live.as_deref(), 0),
                ..base
            };
            write_status(ctx, &ns, kp, &obs).await?;
            // Nothing will change until the spec does.
            return Ok(Action::await_change());
        }
    };
    let desired_replicas = children
        .deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(0);
    if let Some(blocker) = missing_secrets(client, &ns, kp, metrics).await? {
        let obs = Observed {
            blocker: Some(blocker),
            rollout: rollout(live.as_deref(), desired_replicas),
            ..base
        };
        write_status(ctx, &ns, kp, &obs).await?;
        return Ok(Action::requeue(SECRET_RECHECK));
    }

    let sa = cached(
        &caches.service_accounts,
        &ns,
        &children.service_account.name_any(),
    );
    apply(
        client,
        &ns,
        children.service_account.clone(),
        meta(&sa),
        object(&sa)?,
        metrics,
    )
    .await?;
    let cm = cached(&caches.config_maps, &ns, &children.config_map.name_any());
    // Immutable: its data cannot drift, so existence and the hash are all there is to check.
    apply(
        client,
        &ns,
        children.config_map.clone(),
        meta(&cm),
        None,
        metrics,
    )
    .await?;
    let progressive = kp.spec.rollout.strategy != RolloutStrategy::RollingUpdate;
    if !progressive {
        // Blue-green and canary point the Service at revisions once they know which (revisions.rs).
        let svc = cached(&caches.services, &ns, &children.service.name_any());
        apply(
            client,
            &ns,
            children.service.clone(),
            meta(&svc),
            object(&svc)?,
            metrics,
        )
        .await?;
        revisions::delete_unused_side_services(ctx, &ns, &name, kp.spec.rollout.strategy).await?;
    }
    let pdb = cached(&caches.pdbs, &ns, &children.pdb.name_any());
    apply(
        client,
        &ns,
        children.pdb.clone(),
        meta(&pdb),
        object(&pdb)?,
        metrics,
    )
    .await?;
    let live_hpa = cached(&caches.hpas, &ns, &name);
    match &children.hpa {
        Some(hpa) => {
            apply(
                client,
                &ns,
                hpa.clone(),
                meta(&live_hpa),
                object(&live_hpa)?,
                metrics,
            )
            .await?;
        }
        None if live_hpa.is_some() => {
            delete::<HorizontalPodAutoscaler>(client, &ns, &name, metrics).await?
        }
        None => {}
    }
    let live_np = cached(&caches.network_policies, &ns, &name);
    match &children.network_policy {
        Some(np) => {
            apply(
                client,
                &ns,
                np.clone(),
                meta(&live_np),
                object(&live_np)?,
                metrics,
            )
            .await?;
        }
        None if live_np.is_some() => delete::<NetworkPolicy>(client, &ns, &name, metrics).await?,
        None => {}
    }

    let migrated = kp
        .status
        .as_ref()
        .and_then(|s| s.migrated_schema.as_deref());
    let migration = match &children.migration_job {
        None => {
            let stale = caches
                .jobs
                .state_filter(|j| is_migration_job_of(&j.metadata, &ns, &name));
            for job in stale {
                delete::<Job>(client, &ns, &job.name_any(), metrics).await?;
            }
            Migration::Disabled
        }
        // This image already migrated these databases; its Job may have been cleaned up since.
        Some(job) if migrated == Some(children.schema.as_str()) => Migration::Succeeded {
            job: job.name_any(),
        },
        Some(job) => job_run(ctx, &ns, job).await?,
    };
    let worker_scaling = apply_workers(ctx, &ns, &name, &children, &migration).await?;
    let monitoring = apply_monitoring(ctx, &ns, &name, &children).await?;
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let previous_queue = kp.status.as_ref().and_then(|s| s.queue.as_ref());
    let queue = match &kp.spec.workers {
        Some(_) if queue_status::due(previous_queue, &now) => {
            Some(queue_status::read(client, &ns, kp, now).await)
        }
        _ => None,
    };

    let (observed_rollout, fully_promoted, progressive_status, requeue, blocker) = if progressive {
        let outcome =
            revisions::reconcile(ctx, &ns, kp, &children, &migration, desired_replicas).await?;
        (
            outcome.rollout,
            outcome.fully_promoted,
            Some(outcome.status),
            outcome.requeue,
            outcome.blocker,
        )
    } else {
        let deployment = rolling_update(ctx, &ns, &children, &migration, live).await?;
        let observed = rollout(deployment.as_deref(), desired_replicas);
        let promoted = status::fully_promoted(&observed, &kp.spec.image);
        if promoted {
            // Back from blue-green or canary: the revision Deployments go once this one serves.
            for d in caches.deployments.state_filter(|d| {
                d.namespace().as_deref() == Some(ns.as_str())
                    && d.labels().get("app.kubernetes.io/instance") == Some(&name)
                    && d.labels().contains_key(build::REVISION_LABEL)
            }) {
                delete::<Deployment>(client, &ns, &d.name_any(), metrics).await?;
            }
        }
        (observed, promoted, None, None, None)
    };
    prune_config_maps(ctx, &ns, &name, &children.config_map.name_any()).await?;
    let contracted = kp
        .status
        .as_ref()
        .and_then(|s| s.contracted_schema.as_deref());
    let contract = match &children.contract_job {
        None => Migration::Disabled,
        Some(job) if contracted == Some(children.schema.as_str()) => Migration::Succeeded {
            job: job.name_any(),
        },
        Some(job) if matches!(migration, Migration::Succeeded { .. }) && fully_promoted => {
            job_run(ctx, &ns, job).await?
        }
        Some(_) => Migration::Waiting,
    };
    let obs = Observed {
        migrated_schema: matches!(migration, Migration::Succeeded { .. })
            .then(|| children.schema.clone()),
        contracted_schema: matches!(contract, Migration::Succeeded { .. })
            .then(|| children.schema.clone()),
        contract: contract.clone(),
        migration: migration.clone(),
        rollout: observed_rollout,
        revision: Some(children.revision.clone()),
        blocker,
        progressive: progressive_status,
        worker_scaling,
        queue,
        monitoring,
        ..base
    };
    let progressing = obs
        .progressive
        .as_ref()
        .is_some_and(|p| p.phase == super::progressive::PROGRESSING);
    write_status(ctx, &ns, kp, &obs).await?;
    let wait = match (migration, contract) {
        (Migration::Running { .. }, _) | (_, Migration::Running { .. }) => WAIT_FOR_JOB,
        // A failed migration needs a new spec (image or migrations) to move on; a blue-green or
        // canary platform still has its timers (a scale-down delay).
        (Migration::Failed { .. }, _) if requeue.is_none() => return Ok(Action::await_change()),
        // Pods moving: the Deployment watch wakes the reconcile, this is the safety net.
        _ if progressing => WAIT_FOR_PODS,
        // The queue's figures in status are read again on this clock.
        _ if kp.spec.workers.is_some() => queue_status::REFRESH.min(RESYNC),
        _ => RESYNC,
    };
    // A pause that ends or a delay that expires is due even if nothing else happens.
    Ok(Action::requeue(requeue.map_or(wait, |r| {
        r.min(wait).max(Duration::from_millis(100))
    })))
}

/// The job workers' Deployment and PDB, or their removal once `spec.workers` goes. Workers run the
/// release's code against its schema, so, like the API pods, they roll out only once its migration
/// is applied. With `maxReplicas` and KEDA installed, KEDA's ScaledObject sizes them: it is applied
/// first, and the Deployment then carries the replica count it has (KEDA's HPA's choice), so the
/// switch neither drops nor resets the pods. Returns who sizes them, when scaling was asked for.
async fn apply_workers(
    ctx: &Context,
    ns: &str,
    name: &str,
    children: &Children,
    migration: &Migration,
) -> Result<Option<WorkerScaling>, Error> {
    let (client, metrics, caches) = (&ctx.client, &ctx.metrics, &ctx.caches);
    let worker = build::worker_name(name);
    let live = cached(&caches.deployments, ns, &worker);
    let live_pdb = cached(&caches.pdbs, ns, &worker);
    let keda = ctx.installed(OptionalApi::Keda).await?;
    let scaling = match (&children.worker_scaling, keda) {
        (Some(_), true) => Some(WorkerScaling::Keda),
        (Some(_), false) => Some(WorkerScaling::KedaMissing),
        (None, _) => None,
    };
    if keda {
        // Wherever KEDA is installed, so that objects left by any earlier spec (or by a reconcile
        // that failed after applying them) go once the spec no longer asks for them.
        let wanted = children
            .worker_scaling
            .as_ref()
            .filter(|_| children.workers.is_some());
        match super::keda::reconcile(client, ns, name, wanted, &children.claim).await {
            Ok(writes) => {
                metrics.writes.inc_by(u64::from(writes));
            }
            // KEDA was uninstalled since it was discovered: asked again next time.
            Err(e) if e.kind_gone() => ctx.forget(OptionalApi::Keda).await,
            Err(e) => return Err(e.into()),
        };
    }
    match &children.workers {
        Some((deployment, pdb)) => {
            if matches!(migration, Migration::Disabled | Migration::Succeeded { .. }) {
                let mut deployment = deployment.clone();
                if scaling == Some(WorkerScaling::Keda) {
                    let now = live
                        .as_ref()
                        .and_then(|d| d.spec.as_ref())
                        .and_then(|s| s.replicas);
                    build::replicas_as_autoscaled(&mut deployment, now);
                }
                apply(client, ns, deployment, meta(&live), object(&live)?, metrics).await?;
            }
            apply(
                client,
                ns,
                pdb.clone(),
                meta(&live_pdb),
                object(&live_pdb)?,
                metrics,
            )
            .await?;
        }
        None => {
            if live.is_some() {
                delete::<Deployment>(client, ns, &worker, metrics).await?;
            }
            if live_pdb.is_some() {
                delete::<PodDisruptionBudget>(client, ns, &worker, metrics).await?;
            }
        }
    }
    Ok(scaling)
}

/// The dashboard ConfigMap, and the PodMonitor and PrometheusRule where the Prometheus Operator's
/// CRDs are installed; each deleted when the spec no longer asks for it. Returns what became of
/// monitoring, when enabled.
async fn apply_monitoring(
    ctx: &Context,
    ns: &str,
    name: &str,
    children: &Children,
) -> Result<Option<status::Monitoring>, Error> {
    let (client, metrics) = (&ctx.client, &ctx.metrics);
    let dashboard = build::dashboard_name(name);
    let live = cached(&ctx.caches.config_maps, ns, &dashboard);
    match &children.dashboard {
        Some(cm) => {
            apply(client, ns, cm.clone(), meta(&live), None, metrics).await?;
        }
        None if live.is_some() => delete::<ConfigMap>(client, ns, &dashboard, metrics).await?,
        None => {}
    }
    // Reconciled wherever the Prometheus Operator is installed, so that objects left by an earlier
    // spec go whatever the last status said.
    if !ctx.installed(OptionalApi::PrometheusOperator).await? {
        return Ok(children
            .monitoring
            .as_ref()
            .map(|_| status::Monitoring::PrometheusOperatorMissing));
    }
    let monitoring = children.monitoring.as_ref();
    match super::monitoring::reconcile(client, ns, name, monitoring, &children.claim).await {
        Ok(writes) => {
            metrics.writes.inc_by(u64::from(writes));
        }
        Err(e) if e.kind_gone() => {
            ctx.forget(OptionalApi::PrometheusOperator).await;
            return Ok(children
                .monitoring
                .as_ref()
                .map(|_| status::Monitoring::PrometheusOperatorMissing));
        }
        Err(e) => return Err(e.into()),
    }
    Ok(children
        .monitoring
        .as_ref()
        .map(|_| status::Monitoring::Rendered))
}

/// Transient errors back off; they are logged and counted by reason.
pub fn error_policy(kp: Arc<KybPlatform>, err: &Error, ctx: Arc<Context>) -> Action {
    let failures = {
        let mut f = ctx.failures.lock().unwrap_or_else(|p| p.into_inner());
        let n = f.entry(ObjectRef::from_obj(&*kp)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let wait = retry_after(failures);
    tracing::warn!(platform = %kp.name_any(), namespace = ?kp.namespace(), error = %err, failures, retry_in = ?wait, "reconcile failed");
    // Where `kubectl describe kyb` and the status show it; the backoff bounds how often.
    let note = format!("{err} (failure {failures} in a row; retrying in {wait:?})");
    // error_policy is synchronous, so the writes run on a task of their own, bound to this controller.
    let abandoned = ctx.abandoned.clone();
    tokio::spawn(abandoned.run_until_cancelled_owned(async move {
        record_failure(&ctx, &kp, note.clone()).await;
        publish(
            &ctx,
            &kp,
            EventType::Warning,
            "ReconcileFailed".into(),
            note,
        )
        .await;
    }));
    Action::requeue(wait)
}

/// `Reconciled` False with the error in the platform's status. A merge patch of the whole status as
/// last observed plus that condition: the next successful reconcile's apply flips it back. Best
/// effort, like the Event: the apiserver may be what failed.
async fn record_failure(ctx: &Context, kp: &KybPlatform, message: String) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let patch = serde_json::json!({ "status": status::failed(kp, message, &now) });
    ctx.metrics.writes.inc();
    let api =
        Api::<KybPlatform>::namespaced(ctx.client.clone(), &kp.namespace().unwrap_or_default());
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    if let Err(e) = api
        .patch_status(&kp.name_any(), &params, &Patch::Merge(&patch))
        .await
    {
        tracing::debug!(error = %e, "reconcile failure not recorded in status");
    }
}

/// Exponential backoff for a platform whose reconciles keep failing: 1 s doubling to 5 min, so a
/// broken platform (a rejected child, an admission webhook down) neither hammers the apiserver nor
/// waits long after the cause is fixed (its watch events still trigger at once).
pub fn retry_after(consecutive_failures: u32) -> Duration {
    let exp = consecutive_failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(300))
}

/// Which namespaces the operator reconciles: every namespace (the cluster-wide install, one watch per
/// kind), or the listed ones (the namespaced install, whose RBAC is a Role in each of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Watch {
    All,
    Namespaces(Vec<String>),
}

impl Watch {
    /// No namespace named means all of them (like kubectl's `--all-namespaces` default for operators).
    pub fn of(namespaces: Vec<String>) -> Self {
        let mut names: Vec<String> = namespaces
            .into_iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        names.sort();
        names.dedup();
        if names.is_empty() {
            Watch::All
        } else {
            Watch::Namespaces(names)
        }
    }

    pub fn namespace(ns: &str) -> Self {
        Watch::Namespaces(vec![ns.to_owned()])
    }
}

/// Runs the controller until `shutdown` resolves. A namespaced install runs one controller per
/// namespace: a watch across namespaces needs cluster-wide list and watch, which a Role cannot grant.
pub async fn run(
    client: Client,
    watch: Watch,
    metrics: Arc<OperatorMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let scopes = match watch {
        Watch::All => vec![None],
        Watch::Namespaces(names) => names.into_iter().map(Some).collect(),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let controllers = futures::future::join_all(scopes.into_iter().map(|ns| {
        let stop = stop.clone();
        run_scope(client.clone(), ns, metrics.clone(), async move {
            stop.cancelled().await
        })
    }));
    tokio::pin!(controllers);
    tokio::select! {
        _ = &mut controllers => return,
        _ = shutdown => stop.cancel(),
    }
    controllers.await;
}

/// One controller over one namespace, or over all when `namespace` is `None`.
async fn run_scope(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<OperatorMetrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, ns: &Option<String>) -> Api<K>
    where
        K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>,
    {
        match ns {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={FIELD_MANAGER}"));
    // One watch per kind feeds both a cache and the controller's triggers. Their errors reach the
    // controller, which retries them behind its shared trigger backoff (see backoff.rs).
    let (deployments, deployment_events) = cache(watcher(
        api::<Deployment>(&client, &namespace),
        owned.clone(),
    ));
    let (jobs, job_events) = cache(watcher(api::<Job>(&client, &namespace), owned.clone()));
    let (config_maps, config_map_events) = cache(watcher(
        api::<PartialObjectMeta<ConfigMap>>(&client, &namespace),
        owned.clone(),
    ));
    let (services, service_events) =
        cache(watcher(api::<Service>(&client, &namespace), owned.clone()));
    let (service_accounts, service_account_events) = cache(watcher(
        api::<ServiceAccount>(&client, &namespace),
        owned.clone(),
    ));
    let (pdbs, pdb_events) = cache(watcher(
        api::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
    ));
    let (hpas, hpa_events) = cache(watcher(
        api::<HorizontalPodAutoscaler>(&client, &namespace),
        owned.clone(),
    ));
    let (network_policies, network_policy_events) =
        cache(watcher(api::<NetworkPolicy>(&client, &namespace), owned));
    let abandoned = tokio_util::sync::CancellationToken::new();
    // Dropped when this function's future ends or is dropped (run_bounded abandoning it).
    let _abandon = abandoned.clone().drop_guard();
    let ctx = Arc::new(Context {
        abandoned,
        client: client.clone(),
        http: reqwest::Client::new(),
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
        failures: Default::default(),
        optional_apis: Default::default(),
        caches: Caches {
            deployments,
            jobs,
            config_maps,
            services,
            service_accounts,
            pdbs,
            hpas,
            network_policies,
        },
    });
    Controller::new(
        api::<KybPlatform>(&client, &namespace),
        watcher::Config::default(),
    )
    // Bounded: a burst of new KybPlatforms queues instead of opening a thousand reconciles at once,
    // each holding its requests and responses (memory) and all competing for the apiserver (latency).
    .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
    .trigger_backoff(super::backoff::WatchBackoff::default())
    .owns_stream(deployment_events)
    // Migration Jobs are owned by the KybPlatform, analysis Jobs by their KybAnalysisRun; both carry
    // the platform's instance label, which maps either to the platform to reconcile.
    .watches_stream(job_events, |job: Job| {
        let ns = job.namespace()?;
        let instance = job.labels().get("app.kubernetes.io/instance")?.clone();
        Some(ObjectRef::new(&instance).within(&ns))
    })
    .owns_stream(config_map_events)
    .owns_stream(service_events)
    .owns_stream(service_account_events)
    .owns_stream(pdb_events)
    .owns_stream(hpa_events)
    .owns_stream(network_policy_events)
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, ctx)
    .for_each(|res| async move {
        if let Err(e) = res {
            tracing::debug!(error = %e, "controller event");
        }
    })
    .await;
}

/// Runs the controller only while `elector` holds the Lease; stops reconciling the moment leadership is
/// lost and resumes if it is won back. Returns after `shutdown`, having released the Lease.
/// How long in-flight reconciles may take to finish once shutdown is asked without election.
pub const STOP_WORK_WITHIN: Duration = Duration::from_secs(3);

/// [`run`] until `stop`, then at most `within` more (abandoning in-flight reconciles: their requests
/// are dropped), whatever the apiserver does.
pub async fn run_bounded(
    client: Client,
    watch: Watch,
    metrics: Arc<OperatorMetrics>,
    stop: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    within: Duration,
) {
    let stopped = tokio_util::sync::CancellationToken::new();
    let signal = stopped.clone();
    metrics.leading.set(1);
    let controller = run(client, watch, metrics.clone(), async move {
        stop.await;
        signal.cancel();
    });
    tokio::pin!(controller);
    tokio::select! {
        _ = &mut controller => {}
        _ = async { stopped.cancelled().await; tokio::time::sleep(within).await } => {
            tracing::warn!(within = ?within, "reconciles did not finish in time; abandoning them");
        }
    }
    metrics.leading.set(0);
}

pub async fn run_elected(
    client: Client,
    watch: Watch,
    metrics: Arc<OperatorMetrics>,
    elector: super::leader::LeaderElector,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (tx, mut leading) = tokio::sync::watch::channel(false);
    let stop = shutdown.clone();
    // Work stops within half the gap between the renew deadline and the lease's end, so it is over
    // before any other replica may take the Lease.
    let within = elector.stop_work_within();
    let election = tokio::spawn(elector.run(tx, async move { stop.cancelled().await }));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            won = leading.wait_for(|l| *l) => if won.is_err() { break },
        }
        tracing::info!("leading: reconciling");
        let mut lost = leading.clone();
        let stop = shutdown.clone();
        run_bounded(
            client.clone(),
            watch.clone(),
            metrics.clone(),
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = lost.wait_for(|l| !*l) => {}
                }
            },
            within,
        )
        .await;
        tracing::info!("not leading: reconciling stopped");
    }
    let _ = election.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watching_no_namespace_means_all_of_them() {
        assert_eq!(Watch::of(vec![]), Watch::All);
        assert_eq!(Watch::of(vec![" ".into(), String::new()]), Watch::All);
        assert_eq!(
            Watch::of(vec!["b".into(), "a".into(), " b ".into()]),
            Watch::Namespaces(vec!["a".into(), "b".into()])
        );
    }

    #[test]
    fn failing_reconciles_back_off_exponentially() {
        let waits: Vec<u64> = (1..=11).map(|n| retry_after(n).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(retry_after(u32::MAX), Duration::from_secs(300));
    }

    fn meta(ns: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
        let map = |kv: &[(&str, &str)]| {
            Some(
                kv.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        ObjectMeta {
            namespace: Some(ns.into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        }
    }

    #[test]
    fn applies_only_what_is_missing_or_carries_another_hash() {
        assert!(needs_apply(None, "abc"), "missing from the cache");
        assert!(needs_apply(Some(&ObjectMeta::default()), "abc"), "no hash");
        let old = meta("ns", &[], &[(APPLIED_HASH, "old")]);
        assert!(needs_apply(Some(&old), "abc"), "another desired state");
        let current = meta("ns", &[], &[(APPLIED_HASH, "abc")]);
        assert!(!needs_apply(Some(&current), "abc"), "already applied");
    }

    #[test]
    fn migration_jobs_are_matched_by_namespace_instance_and_component() {
        let job = |ns, instance, component| {
            meta(
                ns,
                &[
                    ("app.kubernetes.io/instance", instance),
                    ("app.kubernetes.io/component", component),
                ],
                &[],
            )
        };
        assert!(is_migration_job_of(
            &job("a", "kyb", "migrations"),
            "a",
            "kyb"
        ));
        assert!(!is_migration_job_of(
            &job("b", "kyb", "migrations"),
            "a",
            "kyb"
        ));
        assert!(!is_migration_job_of(
            &job("a", "other", "migrations"),
            "a",
            "kyb"
        ));
        assert!(!is_migration_job_of(&job("a", "kyb", "api"), "a", "kyb"));
        assert!(!is_migration_job_of(&ObjectMeta::default(), "a", "kyb"));
    }
}
