//! The reconcile loop: observe, build (pure), apply what changed, write status when it changed.
//!
//! Every write is a server-side apply under one field manager. Each child carries the hash of what was
//! last applied, so a resync that finds nothing new performs no write at all.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::build::{self, Children, FIELD_MANAGER};
use super::metrics::OperatorMetrics;
use super::render;
use super::status::{self, Blocker, Migration, Observed, Rollout};
use crate::crd::KybPlatform;

const APPLIED_HASH: &str = "kyb.io/applied-hash";
/// Periodic resync: catches drift the watches cannot see (a Secret created later, for example).
const RESYNC: Duration = Duration::from_secs(300);
const WAIT_FOR_JOB: Duration = Duration::from_secs(5);
const SECRET_RECHECK: Duration = Duration::from_secs(30);
const RECONCILE_CONCURRENCY: u16 = 16;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("cannot serialise {0}: {1}")]
    Serialise(&'static str, serde_json::Error),
}

impl Error {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api_error",
            Error::Kube(_) => "transport",
            Error::Serialise(..) => "serialise",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub metrics: Arc<OperatorMetrics>,
    pub recorder: Recorder,
}

fn hash_of<T: Serialize>(obj: &T) -> Result<String, Error> {
    let bytes = serde_json::to_vec(obj).map_err(|e| Error::Serialise("child", e))?;
    Ok(hex::encode(&Sha256::digest(&bytes)[..8]))
}

/// Applies `desired` unless the live object already carries its hash. Returns the live object.
async fn apply<K>(
    client: &Client,
    ns: &str,
    mut desired: K,
    metrics: &OperatorMetrics,
) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let hash = hash_of(&desired)?;
    let name = desired.name_any();
    let api = Api::<K>::namespaced(client.clone(), ns);
    if let Some(live) = api.get_opt(&name).await? {
        if live.annotations().get(APPLIED_HASH) == Some(&hash) {
            return Ok(live);
        }
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
    Ok(applied)
}

async fn delete_if_present<K>(
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
    let api = Api::<K>::namespaced(client.clone(), ns);
    if api.get_opt(name).await?.is_some() {
        metrics.writes.inc();
        api.delete(name, &DeleteParams::background()).await?;
    }
    Ok(())
}

/// Referenced Secret keys that do not exist, as a blocker.
async fn missing_secrets(
    client: &Client,
    ns: &str,
    kp: &KybPlatform,
) -> Result<Option<Blocker>, Error> {
    let rendered = render::render(&kp.spec);
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    for (name, keys) in render::referenced_secrets(&rendered.mounts) {
        let Some(secret) = api.get_opt(name).await? else {
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
    if kp.status.as_ref() == Some(&next) {
        return Ok(());
    }
    let previous_phase = kp.status.as_ref().and_then(|s| s.phase.clone());
    if next.phase != previous_phase {
        announce(ctx, kp, &next).await;
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
async fn announce(ctx: &Context, kp: &KybPlatform, next: &crate::crd::KybPlatformStatus) {
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

pub async fn reconcile(kp: Arc<KybPlatform>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = reconcile_inner(&kp, &ctx).await;
    ctx.metrics
        .observe(started.elapsed(), result.as_ref().err().map(Error::reason));
    result
}

async fn reconcile_inner(kp: &KybPlatform, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let metrics = &ctx.metrics;
    let ns = kp.namespace().unwrap_or_default();
    let name = kp.name_any();
    let base = Observed {
        blocker: None,
        migration: Migration::Disabled,
        rollout: Rollout::default(),
        revision: None,
        selector: build::selector_string(kp),
        endpoint: Some(format!("http://{name}.{ns}.svc:80")),
    };
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
    let live = deployments.get_opt(&name).await?;

    let children: Children = match build::build(kp) {
        Ok(c) => c,
        Err(e) => {
            let obs = Observed {
                blocker: Some(Blocker {
                    reason: "InvalidSpec",
                    message: e.to_string(),
                }),
                rollout: rollout(live.as_ref(), 0),
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
    if let Some(blocker) = missing_secrets(client, &ns, kp).await? {
        let obs = Observed {
            blocker: Some(blocker),
            rollout: rollout(live.as_ref(), desired_replicas),
            ..base
        };
        write_status(ctx, &ns, kp, &obs).await?;
        return Ok(Action::requeue(SECRET_RECHECK));
    }

    apply(client, &ns, children.service_account.clone(), metrics).await?;
    apply(client, &ns, children.config_map.clone(), metrics).await?;
    apply(client, &ns, children.service.clone(), metrics).await?;
    apply(client, &ns, children.pdb.clone(), metrics).await?;
    match &children.hpa {
        Some(hpa) => {
            apply(client, &ns, hpa.clone(), metrics).await?;
        }
        None => delete_if_present::<HorizontalPodAutoscaler>(client, &ns, &name, metrics).await?,
    }

    let serving = rollout(live.as_ref(), desired_replicas).image;
    let migration = match &children.migration_job {
        None => {
            let jobs = Api::<Job>::namespaced(client.clone(), &ns);
            let selector =
                format!("app.kubernetes.io/instance={name},app.kubernetes.io/component=migrations");
            for job in jobs.list(&ListParams::default().labels(&selector)).await? {
                delete_if_present::<Job>(client, &ns, &job.name_any(), metrics).await?;
            }
            Migration::Disabled
        }
        Some(job) => {
            let live_job = Api::<Job>::namespaced(client.clone(), &ns)
                .get_opt(&job.name_any())
                .await?;
            match live_job {
                Some(j) => job_state(&j),
                // The Job for this revision was never created: run it, unless this image already serves
                // (then it migrated before, and its Job has been cleaned up).
                None if serving.as_deref() == Some(kp.spec.image.as_str()) => {
                    Migration::Succeeded {
                        job: job.name_any(),
                    }
                }
                None => job_state(&apply(client, &ns, job.clone(), metrics).await?),
            }
        }
    };

    let may_roll_out = matches!(migration, Migration::Disabled | Migration::Succeeded { .. });
    let deployment = if may_roll_out {
        Some(apply(client, &ns, children.deployment.clone(), metrics).await?)
    } else {
        live
    };
    let obs = Observed {
        migration: migration.clone(),
        rollout: rollout(deployment.as_ref(), desired_replicas),
        revision: Some(children.revision.clone()),
        ..base
    };
    write_status(ctx, &ns, kp, &obs).await?;
    Ok(match migration {
        Migration::Running { .. } => Action::requeue(WAIT_FOR_JOB),
        // A failed migration needs a new spec (image or migrations) to move on.
        Migration::Failed { .. } => Action::await_change(),
        _ => Action::requeue(RESYNC),
    })
}

/// Transient errors back off; they are logged and counted by reason.
pub fn error_policy(kp: Arc<KybPlatform>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(platform = %kp.name_any(), namespace = ?kp.namespace(), error = %err, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

/// Runs the controller until `shutdown` resolves. `namespace`: watch one namespace, or all when `None`.
pub async fn run(
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
    let ctx = Arc::new(Context {
        client: client.clone(),
        metrics,
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: std::env::var("POD_NAME").ok(),
            },
        ),
    });
    Controller::new(
        api::<KybPlatform>(&client, &namespace),
        watcher::Config::default(),
    )
    // Bounded: a burst of new KybPlatforms queues instead of opening a thousand reconciles at once,
    // each holding its requests and responses (memory) and all competing for the apiserver (latency).
    .with_config(kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
    .trigger_backoff(super::backoff::WatchBackoff::default())
    .owns(api::<Deployment>(&client, &namespace), owned.clone())
    .owns(api::<Job>(&client, &namespace), owned.clone())
    .owns(api::<ConfigMap>(&client, &namespace), owned.clone())
    .owns(api::<Service>(&client, &namespace), owned.clone())
    .owns(api::<ServiceAccount>(&client, &namespace), owned.clone())
    .owns(
        api::<PodDisruptionBudget>(&client, &namespace),
        owned.clone(),
    )
    .owns(api::<HorizontalPodAutoscaler>(&client, &namespace), owned)
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
pub async fn run_elected(
    client: Client,
    namespace: Option<String>,
    metrics: Arc<OperatorMetrics>,
    elector: super::leader::LeaderElector,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let (tx, mut leading) = tokio::sync::watch::channel(false);
    let stop = shutdown.clone();
    let election = tokio::spawn(elector.run(tx, async move { stop.cancelled().await }));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            won = leading.wait_for(|l| *l) => if won.is_err() { break },
        }
        tracing::info!("leading: reconciling");
        let mut lost = leading.clone();
        let stop = shutdown.clone();
        run(
            client.clone(),
            namespace.clone(),
            metrics.clone(),
            async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = lost.wait_for(|l| !*l) => {}
                }
            },
        )
        .await;
        tracing::info!("not leading: reconciling stopped");
    }
    let _ = election.await;
}
