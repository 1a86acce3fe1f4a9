//! The child objects a KybPlatform asks for. Pure: the same KybPlatform always yields the same objects,
//! so a no-op resync has nothing to write.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, SeccompProfile, Secret, SecretProjection,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction,
    TopologySpreadConstraint, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as PolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

use super::render::{
    self, Rendered, CONFIG_DIR, CONFIG_FILE, HTTP_PORT, METRICS_PORT, SECRETS_DIR,
};
use crate::operator::commands::{REVISION_NUMBER, REVISION_SPEC};
use crate::operator::crd::{KybPlatform, NetworkPolicySpec, PullPolicy};

pub const FIELD_MANAGER: &str = "kybctl-operator";
pub const CONFIG_HASH_ANNOTATION: &str = "kyb.io/config-hash";
/// On every pod (and on each revision Deployment of a blue-green or canary platform): its revision.
pub const REVISION_LABEL: &str = "kyb.io/revision";
/// Non-root user of the distroless-style image.
const RUN_AS_USER: i64 = 65532;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the KybPlatform has no {0} (not read from the apiserver?)")]
    Missing(&'static str),
    #[error("spec.{field}: {value:?} is not a whole number of seconds")]
    Duration { field: &'static str, value: String },
    #[error("{0}")]
    Connections(String),
    #[error("spec.database.shards: {0}")]
    Sharding(String),
}

/// Everything the operator applies for one KybPlatform.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    /// Absent when autoscaling is disabled (and then deleted if it exists).
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// Present with `spec.networkPolicy` (and deleted if it exists when that goes).
    pub network_policy: Option<NetworkPolicy>,
    pub pdb: PodDisruptionBudget,
    /// The migration Job for the spec's image (expand steps); absent when migrations are disabled.
    pub migration_job: Option<Job>,
    /// `migrate up --contract`, run once the rollout has fully promoted; absent with migrations off.
    pub contract_job: Option<Job>,
    /// The job workers' Deployment `<name>-worker` and its PodDisruptionBudget, with
    /// `spec.workers` (deleted if they exist when that goes).
    pub workers: Option<(Deployment, PodDisruptionBudget)>,
    /// KEDA's objects for the workers, with `spec.workers.maxReplicas`; applied only where KEDA's
    /// CRDs are installed (see `keda`).
    pub worker_scaling: Option<super::keda::Scaling>,
    /// The PodMonitor and PrometheusRule (as JSON objects), with `spec.monitoring.enabled`; applied
    /// only where the Prometheus Operator's CRDs are installed (see `monitoring`).
    pub monitoring: Option<(serde_json::Value, serde_json::Value)>,
    /// The Grafana dashboard ConfigMap `<name>-dashboard`, with monitoring and its dashboard on.
    pub dashboard: Option<ConfigMap>,
    /// What an object must show to be this platform's: its controlling owner reference and labels
    /// (see `ownership`). Children of kinds not cached are judged against it before a delete.
    pub claim: ObjectMeta,
    /// Short hash of image and configuration: marks the revision in status and on its pods.
    pub revision: String,
    /// Short hash of what a migration depends on (the image and the databases it migrates): names the
    /// migration Job, and `status.migratedSchema` records it once that Job succeeded.
    pub schema: String,
}

/// ReplicaSets the Deployment keeps for `kubectl rollout undo`; set explicitly because the number of
/// configuration ConfigMaps kept follows from it.
pub const REVISION_HISTORY_LIMIT: i32 = 10;

/// The configuration ConfigMaps of a platform to delete: all but the current one and the newest
/// `REVISION_HISTORY_LIMIT` others. Every new configuration makes a new ReplicaSet, so the ConfigMap of
/// any ReplicaSet the Deployment still keeps is among those newest ones. `existing` holds each
/// ConfigMap's name and creation time (RFC 3339, so it sorts as text).
pub fn stale_config_maps(current: &str, existing: &[(String, String)]) -> Vec<String> {
    let mut others: Vec<&(String, String)> =
        existing.iter().filter(|(n, _)| n != current).collect();
    // Newest first; the name breaks ties so the answer does not depend on the cache's order.
    others.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    others
        .into_iter()
        .skip(REVISION_HISTORY_LIMIT as usize)
        .map(|(n, _)| n.clone())
        .collect()
}

/// The name of a configuration's ConfigMap: immutable, one per configuration, so a pod of an older
/// revision that restarts mid-rollout still reads the configuration it was built for.
fn config_map_name(name: &str, config_hash: &str) -> String {
    format!("{name}-config-{config_hash}")
}

fn labels(kp: &KybPlatform, component: &str) -> BTreeMap<String, String> {
    let name = kp.metadata.name.clone().unwrap_or_default();
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "kyb-api".into()),
        ("app.kubernetes.io/instance".into(), name),
        ("app.kubernetes.io/component".into(), component.into()),
        ("app.kubernetes.io/part-of".into(), "kyb-platform".into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
    ])
}

/// The labels that select the service's pods (a subset of `labels`, never changed after creation).
pub fn selector_labels(kp: &KybPlatform) -> BTreeMap<String, String> {
    let mut l = labels(kp, "api");
    l.retain(|k, _| {
        k == "app.kubernetes.io/name"
            || k == "app.kubernetes.io/instance"
            || k == "app.kubernetes.io/component"
    });
    l
}

/// `key=value,...` form of the selector, for the scale subresource's status.selector.
pub fn selector_string(kp: &KybPlatform) -> String {
    selector_labels(kp)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn owner(kp: &KybPlatform) -> Result<OwnerReference, BuildError> {
    kp.controller_owner_ref(&())
        .ok_or(BuildError::Missing("uid"))
}

/// Name, namespace, the platform's labels for `component`, and the platform as controlling owner.
pub(super) fn meta(
    kp: &KybPlatform,
    name: String,
    component: &str,
) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: kp.metadata.namespace.clone(),
        labels: Some(labels(kp, component)),
        owner_references: Some(vec![owner(kp)?]),
        ..Default::default()
    })
}

/// The metadata of [`generated_key_secret`]: what the Secret found under its name is checked against.
pub fn generated_key_meta(kp: &KybPlatform) -> Result<ObjectMeta, BuildError> {
    let name = kp
        .metadata
        .name
        .as_deref()
        .ok_or(BuildError::Missing("name"))?;
    meta(kp, render::generated_key_secret(name), "api-key")
}

/// The Secret of the platform's generated API key: the key itself and its hashed entry (the API pods
/// mount only the entry). The key is made by the caller, so this stays pure. Owned by the platform,
/// so it goes with it.
pub fn generated_key_secret(
    kp: &KybPlatform,
    key: &str,
    entry_yaml: &str,
) -> Result<Secret, BuildError> {
    Ok(Secret {
        metadata: generated_key_meta(kp)?,
        type_: Some("Opaque".into()),
        string_data: Some(BTreeMap::from([
            (render::GENERATED_KEY.into(), key.to_owned()),
            (render::GENERATED_KEY_ENTRY.into(), entry_yaml.to_owned()),
        ])),
        ..Default::default()
    })
}

/// Seconds of a `30s` / `1m` style duration, for probe fields that take whole seconds.
fn seconds(field: &'static str, value: &str) -> Result<i32, BuildError> {
    let err = || BuildError::Duration {
        field,
        value: value.to_owned(),
    };
    let d = humantime::parse_duration(value).map_err(|_| err())?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(err());
    }
    i32::try_from(d.as_secs()).map_err(|_| err())
}

fn hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..5])
}

pub(crate) fn restricted_container_context() -> SecurityContext {
    SecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn volumes(config_map: &str, rendered: &Rendered) -> Vec<Volume> {
    let mut by_secret: BTreeMap<&str, Vec<KeyToPath>> = BTreeMap::new();
    for m in &rendered.mounts {
        by_secret.entry(&m.secret).or_default().push(KeyToPath {
            key: m.key.clone(),
            path: m.path.clone(),
            mode: None,
        });
    }
    let sources = by_secret
        .into_iter()
        .map(|(secret, items)| VolumeProjection {
            secret: Some(SecretProjection {
                name: secret.to_owned(),
                items: Some(items),
                optional: Some(false),
            }),
            ..Default::default()
        })
        .collect();
    vec![
        Volume {
            name: "config".into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config_map.to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: "secrets".into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(sources),
                default_mode: Some(0o440),
            }),
            ..Default::default()
        },
        Volume {
            name: "tmp".into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

fn volume_mounts() -> Vec<VolumeMount> {
    [
        ("config", CONFIG_DIR),
        ("secrets", SECRETS_DIR),
        ("tmp", "/tmp"),
    ]
    .into_iter()
    .map(|(name, path)| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(name != "tmp"),
        ..Default::default()
    })
    .collect()
}

/// The OpenTelemetry SDK's standard variables for `spec.tracing` in the API or worker container (the
/// processes that make spans); none without it. The resource names the platform as the service and
/// the container and namespace as Kubernetes attributes, so a trace backend tells them apart.
fn tracing_env(kp: &KybPlatform, container: &str) -> Vec<EnvVar> {
    let Some(t) = &kp.spec.tracing else {
        return vec![];
    };
    let namespace = kp.metadata.namespace.as_deref().unwrap_or("default");
    vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), t.endpoint.clone()),
        (
            "OTEL_SERVICE_NAME".into(),
            kp.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "OTEL_RESOURCE_ATTRIBUTES".into(),
            format!("k8s.namespace.name={namespace},k8s.container.name={container}"),
        ),
        (
            "OTEL_TRACES_SAMPLER".into(),
            "parentbased_traceidratio".into(),
        ),
        ("OTEL_TRACES_SAMPLER_ARG".into(), t.sample_ratio.to_string()),
    ]
    .into_iter()
    .map(|(name, value): (String, String)| EnvVar {
        name,
        value: Some(value),
        ..Default::default()
    })
    .collect()
}

fn container(kp: &KybPlatform, name: &str, args: &[&str]) -> Container {
    let spec = &kp.spec;
    Container {
        name: name.into(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(
            match spec.image_pull_policy {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .into(),
        ),
        args: Some(args.iter().map(|a| a.to_string()).collect()),
        env: Some(vec![EnvVar {
            name: "KYB_LOG_FORMAT".into(),
            value: Some("json".into()),
            ..Default::default()
        }]),
        volume_mounts: Some(volume_mounts()),
        security_context: Some(restricted_container_context()),
        ..Default::default()
    }
}

fn probe(path: &str, period: i32, timeout: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("http".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(timeout),
        failure_threshold: Some(failures),
        ..Default::default()
    }
}

pub fn build(kp: &KybPlatform) -> Result<Children, BuildError> {
    let name = kp
        .metadata
        .name
        .clone()
        .ok_or(BuildError::Missing("name"))?;
    kp.metadata
        .namespace
        .as_ref()
        .ok_or(BuildError::Missing("namespace"))?;
    let spec = &kp.spec;
    crate::operator::connections::budget(spec).map_err(BuildError::Connections)?;
    let rendered = render::render(&name, spec);
    // The service refuses at start a shard layout it cannot route (a key pinned to two shards, no
    // range starting at ""); refuse it here with the service's own check, before a pod crash-loops.
    let config = crate::config::Config::from_yaml(&rendered.config_yaml)
        .map_err(|e| BuildError::Sharding(format!("rendered configuration unreadable: {e}")))?;
    crate::service::db::shard::ShardRouter::from_config(&config.database.sharding)
        .map_err(|e| BuildError::Sharding(e.to_string()))?;
    let config_arg = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let config_hash = hash(&[&rendered.config_yaml, &format!("{:?}", rendered.mounts)]);
    let config_map_name = config_map_name(&name, &hash(&[&rendered.config_yaml]));
    let db = &spec.database;
    let shard_primaries: Vec<(&str, &crate::operator::crd::SecretKeyRef)> = db
        .shards
        .iter()
        .map(|s| (s.id.as_str(), &s.primary))
        .collect();
    let schema = hash(&[
        &spec.image,
        &format!("{:?}", (&db.primary, shard_primaries)),
    ]);

    let service_account = ServiceAccount {
        metadata: meta(kp, name.clone(), "api")?,
        // The service never talks to the apiserver.
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let config_map = ConfigMap {
        metadata: meta(kp, config_map_name.clone(), "config")?,
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            rendered.config_yaml.clone(),
        )])),
        immutable: Some(true),
        ..Default::default()
    };

    let hc = &spec.health_check;
    let period = seconds("healthCheck.interval", &hc.interval)?;
    let timeout = seconds("healthCheck.timeout", &hc.timeout)?;
    let mut api = container(kp, "api", &["serve", "--config", &config_arg]);
    api.env
        .get_or_insert_with(Vec::new)
        .extend(tracing_env(kp, "api"));
    api.ports = Some(vec![
        ContainerPort {
            name: Some("http".into()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        },
        ContainerPort {
            name: Some("metrics".into()),
            container_port: METRICS_PORT,
            protocol: Some("TCP".into()),
            ..Default::default()
        },
    ]);
    api.liveness_probe = Some(probe(&hc.path, period, timeout, hc.retries));
    api.readiness_probe = Some(probe("/ready", period.min(10), timeout, hc.retries));
    api.resources = spec.resources.clone();
    // A terminating pod leaves the Service's endpoints while the kubelet already stops it; kube-proxy
    // and the load balancers learn of it a moment later and keep sending new connections meanwhile.
    // The kubelet's own sleep (no shell in the image) keeps the pod serving through that moment;
    // SIGTERM then stops new connections and drains the open ones (server shutdown grace).
    api.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: PRE_STOP_SLEEP_SECONDS,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });

    let selector = selector_labels(kp);
    let pod_labels = labels(kp, "api");
    // While autoscaling, spec.replicas is written by the HPA through the KybPlatform's scale subresource
    // (one source of truth, also for `kubectl scale`); before its first write, start at the minimum.
    let replicas = spec.replicas.unwrap_or(if spec.autoscaling.enabled {
        spec.autoscaling.min_replicas
    } else {
        1
    });
    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.into(),
                config_hash,
            )])),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(name.clone()),
            automount_service_account_token: Some(false),
            security_context: Some(pod_security_context()),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            containers: vec![api],
            volumes: Some(volumes(&config_map_name, &rendered)),
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 1,
                topology_key: "kubernetes.io/hostname".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: Some(LabelSelector {
                    match_labels: Some(selector.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    if let Some(pod) = template.spec.as_mut() {
        spec.scheduling.place(pod);
    }
    // A revision is its pod template: anything that changes a pod (image, configuration, resources,
    // probes, placement) makes a new one, which blue-green and canary then roll out as a whole.
    let revision = hash(&[&serde_json::to_string(&template).unwrap_or_default()]);
    template
        .metadata
        .get_or_insert_with(Default::default)
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), revision.clone());
    let deployment = Deployment {
        metadata: meta(kp, name.clone(), "api")?,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
            progress_deadline_seconds: Some(spec.rollout.progress_deadline_seconds),
            // Only when paused: resuming drops the field from the apply, and server-side apply then
            // takes it off the Deployment.
            paused: spec.rollout.paused.then_some(true),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(int_or_percent(&spec.rollout.max_surge)),
                    max_unavailable: Some(int_or_percent(&spec.rollout.max_unavailable)),
                }),
            }),
            template,
            ..Default::default()
        }),
        ..Default::default()
    };

    let service = Service {
        metadata: meta(kp, name.clone(), "api")?,
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: 80,
                target_port: Some(IntOrString::String("http".into())),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };

    let a = &spec.autoscaling;
    let hpa = a
        .enabled
        .then(|| -> Result<HorizontalPodAutoscaler, BuildError> {
            let rules = |p: &crate::operator::crd::ScalingPolicy| HPAScalingRules {
                policies: Some(vec![HPAScalingPolicy {
                    type_: "Percent".into(),
                    value: p.percent,
                    period_seconds: p.period_seconds,
                }]),
                stabilization_window_seconds: Some(p.stabilization_window_seconds),
                ..Default::default()
            };
            let resource = |res: &str, pct: i32| MetricSpec {
                type_: "Resource".into(),
                resource: Some(ResourceMetricSource {
                    name: res.into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(pct),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            };
            Ok(HorizontalPodAutoscaler {
                metadata: meta(kp, name.clone(), "api")?,
                spec: HorizontalPodAutoscalerSpec {
                    scale_target_ref: CrossVersionObjectReference {
                        api_version: Some("kyb.io/v1alpha1".into()),
                        kind: "KybPlatform".into(),
                        name: name.clone(),
                    },
                    min_replicas: Some(a.min_replicas),
                    max_replicas: a.max_replicas,
                    metrics: Some(vec![
                        resource("cpu", a.target_cpu_utilization_percentage),
                        resource("memory", a.target_memory_utilization_percentage),
                    ]),
                    behavior: Some(HorizontalPodAutoscalerBehavior {
                        scale_up: Some(rules(&a.scale_up)),
                        scale_down: Some(rules(&a.scale_down)),
                    }),
                },
                ..Default::default()
            })
        })
        .transpose()?;

    let pdb = one_at_a_time(meta(kp, name.clone(), "api")?, selector);

    // Named by what it migrates and how, so a new image, a new shard or a fixed pod annotation gets a
    // fresh Job instead of finding the failed one (Jobs are immutable anyway), while a change that
    // moves no schema (a cache TTL) needs none.
    let job_hash = hash(&[&schema, &format!("{:?}", spec.migrations)]);
    let job = |phase: MigrationPhase| {
        migration_job(kp, &name, phase, &job_hash, &config_map_name, &rendered)
    };
    let (migration_job, contract_job) = if spec.migrations.enabled {
        (
            Some(job(MigrationPhase::Expand)?),
            Some(job(MigrationPhase::Contract)?),
        )
    } else {
        (None, None)
    };

    let network_policy = spec
        .network_policy
        .as_ref()
        .map(|np| network_policy(kp, &name, np))
        .transpose()?;
    let workers = spec
        .workers
        .as_ref()
        .map(|w| workers(kp, &name, w, &config_map_name, &rendered))
        .transpose()?;
    let worker_scaling = match &spec.workers {
        Some(w) => super::keda::render(kp, &name, w)?,
        None => None,
    };
    let m = &spec.monitoring;
    let monitoring = if m.enabled {
        Some((
            super::monitoring::pod_monitor(kp, m, meta(kp, name.clone(), "monitoring")?),
            super::monitoring::prometheus_rule(kp, m, meta(kp, name.clone(), "monitoring")?),
        ))
    } else {
        None
    };
    let dashboard = if m.enabled && m.dashboard {
        Some(super::monitoring::dashboard_config_map(
            kp,
            meta(kp, dashboard_name(&name), "monitoring")?,
        ))
    } else {
        None
    };

    Ok(Children {
        service_account,
        config_map,
        deployment,
        service,
        hpa,
        network_policy,
        pdb,
        migration_job,
        contract_job,
        workers,
        worker_scaling,
        monitoring,
        dashboard,
        claim: ObjectMeta {
            labels: Some(labels(kp, "platform")),
            owner_references: Some(vec![owner(kp)?]),
            ..Default::default()
        },
        revision,
        schema,
    })
}

/// The Grafana dashboard ConfigMap's name.
pub fn dashboard_name(platform: &str) -> String {
    format!("{platform}-dashboard")
}

pub fn worker_name(platform: &str) -> String {
    format!("{platform}-worker")
}

/// The Deployment's replica count while an autoscaler (KEDA's HPA) owns it: the count it has now
/// (`live`), so applying the rest of the Deployment never changes it. Leaving the field out instead
/// would drop it, and the Deployment's default of 1 would apply until the autoscaler acts. Before
/// the Deployment exists, the spec's count stands.
pub fn replicas_as_autoscaled(d: &mut Deployment, live: Option<i32>) {
    if let (Some(spec), Some(now)) = (d.spec.as_mut(), live) {
        spec.replicas = Some(now);
    }
}

/// Extra time a stopping worker pod gets beyond its job timeout, for its last commits and hand-back.
const WORKER_STOP_MARGIN_SECONDS: i32 = 15;

/// `kybctl worker` pods: a Deployment that replaces pods without a surge (their connections are in
/// the budget) and whose stopping pods may finish a job of the full timeout, and a PDB.
fn workers(
    kp: &KybPlatform,
    name: &str,
    w: &crate::operator::crd::WorkersSpec,
    config_map_name: &str,
    rendered: &Rendered,
) -> Result<(Deployment, PodDisruptionBudget), BuildError> {
    let timeout = seconds("workers.jobTimeout", &w.job_timeout)?;
    let config_arg = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let (concurrency, job_timeout) = (w.concurrency.to_string(), format!("{timeout}s"));
    let mut args = vec![
        "worker",
        "--config",
        &config_arg,
        "--concurrency",
        &concurrency,
        "--job-timeout",
        &job_timeout,
        "--grace",
        &job_timeout,
    ];
    let types = w
        .types
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(",");
    if !types.is_empty() {
        args.extend(["--types", &types]);
    }
    let mut c = container(kp, "worker", &args);
    c.env
        .get_or_insert_with(Vec::new)
        .extend(tracing_env(kp, "worker"));
    c.env.get_or_insert_with(Vec::new).push(EnvVar {
        // The worker's identity in leases (a boot id is added).
        name: "POD_NAME".into(),
        value_from: Some(k8s_openapi::api::core::v1::EnvVarSource {
            field_ref: Some(k8s_openapi::api::core::v1::ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c.ports = Some(vec![ContainerPort {
        name: Some("metrics".into()),
        container_port: METRICS_PORT,
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    c.liveness_probe = Some(Probe {
        http_get: Some(k8s_openapi::api::core::v1::HTTPGetAction {
            path: Some("/health".into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(10),
        failure_threshold: Some(3),
        ..Default::default()
    });
    c.resources = w.resources.clone();
    let labels = labels(kp, "worker");
    let selector: BTreeMap<String, String> = labels
        .iter()
        .filter(|(k, _)| {
            ["name", "instance", "component"]
                .map(|n| format!("app.kubernetes.io/{n}"))
                .contains(k)
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut pod = PodSpec {
        service_account_name: Some(name.to_owned()),
        automount_service_account_token: Some(false),
        security_context: Some(pod_security_context()),
        termination_grace_period_seconds: Some((timeout + WORKER_STOP_MARGIN_SECONDS).into()),
        containers: vec![c],
        volumes: Some(volumes(config_map_name, rendered)),
        ..Default::default()
    };
    kp.spec.scheduling.place(&mut pod);
    let deployment = Deployment {
        metadata: meta(kp, worker_name(name), "worker")?,
        spec: Some(DeploymentSpec {
            replicas: Some(w.replicas),
            revision_history_limit: Some(REVISION_HISTORY_LIMIT),
            selector: LabelSelector {
                match_labels: Some(selector.clone()),
                ..Default::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(0)),
                    max_unavailable: Some(IntOrString::Int(1)),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(pod),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let pdb = one_at_a_time(meta(kp, worker_name(name), "worker")?, selector);
    Ok((deployment, pdb))
}

/// A PodDisruptionBudget that lets voluntary disruptions take one of the `selector`'s pods at a time.
fn one_at_a_time(metadata: ObjectMeta, selector: BTreeMap<String, String>) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Who may reach the API pods: the declared clients and the platform's own analysis Jobs on the API
/// port, the declared Prometheus on the metrics port; nothing else.
fn network_policy(
    kp: &KybPlatform,
    name: &str,
    np: &NetworkPolicySpec,
) -> Result<NetworkPolicy, BuildError> {
    let port = |p: i32| {
        Some(vec![NetworkPolicyPort {
            port: Some(IntOrString::Int(p)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }])
    };
    let analysis_jobs = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([
                ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
                (
                    "app.kubernetes.io/component".into(),
                    crate::operator::analysis::jobs::COMPONENT.into(),
                ),
                ("app.kubernetes.io/instance".into(), name.to_owned()),
            ])),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut ingress = vec![NetworkPolicyIngressRule {
        from: Some(np.clients.iter().cloned().chain([analysis_jobs]).collect()),
        ports: port(HTTP_PORT),
    }];
    if !np.prometheus.is_empty() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(np.prometheus.clone()),
            ports: port(METRICS_PORT),
        });
    }
    Ok(NetworkPolicy {
        metadata: meta(kp, name.to_owned(), "api")?,
        spec: Some(PolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector_labels(kp)),
                ..Default::default()
            }),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(ingress),
            ..Default::default()
        }),
    })
}

/// The name of a revision's Deployment (blue-green and canary platforms).
pub fn revision_deployment_name(platform: &str, revision: &str) -> String {
    format!("{platform}-{revision}")
}

/// The Deployment of one revision of a blue-green or canary platform: the spec's Deployment renamed
/// `<name>-<revision>`, selecting only that revision's pods, at `replicas`. Its template never
/// changes (the revision is the template), so it never rolls by itself: the operator only scales it.
/// `number` and `spec` (the spec fields it was built from) are what `kybctl rollout history|undo`
/// read back.
pub fn revision_deployment(
    base: &Deployment,
    revision: &str,
    number: i64,
    spec: String,
    replicas: i32,
) -> Deployment {
    let mut d = base.clone();
    let platform = base.metadata.name.clone().unwrap_or_default();
    d.metadata.name = Some(revision_deployment_name(&platform, revision));
    d.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(REVISION_LABEL.into(), revision.into());
    let annotations = d.metadata.annotations.get_or_insert_with(Default::default);
    annotations.insert(REVISION_NUMBER.into(), number.to_string());
    annotations.insert(REVISION_SPEC.into(), spec);
    if let Some(s) = d.spec.as_mut() {
        s.replicas = Some(replicas);
        // Pausing holds the scales the operator sets; a revision's template has nothing to roll.
        s.paused = None;
        s.revision_history_limit = Some(0);
        s.selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(REVISION_LABEL.into(), revision.into());
    }
    d
}

/// The Service `base` narrowed to one revision's pods (`None`: every revision's).
pub fn pinned_service(base: &Service, revision: Option<&str>) -> Service {
    let mut svc = base.clone();
    if let (Some(rev), Some(spec)) = (revision, svc.spec.as_mut()) {
        spec.selector
            .get_or_insert_with(Default::default)
            .insert(REVISION_LABEL.into(), rev.into());
    }
    svc
}

/// `<name>-canary` or `<name>-preview`: the Service `base` renamed, selecting one revision.
pub fn side_service(base: &Service, suffix: &str, revision: &str) -> Service {
    let mut svc = pinned_service(base, Some(revision));
    let name = format!(
        "{}-{suffix}",
        base.metadata.name.clone().unwrap_or_default()
    );
    svc.metadata.name = Some(name);
    svc
}

/// The two migration Jobs of a release: expand steps before its pods get traffic, contract steps once
/// no pod of the previous release is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MigrationPhase {
    Expand,
    Contract,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::Expand => "expand",
            MigrationPhase::Contract => "contract",
        }
    }
}

/// How long a terminating API pod keeps serving before SIGTERM: longer than endpoint removal takes to
/// reach kube-proxy (about a second here; a few on a loaded cluster).
const PRE_STOP_SLEEP_SECONDS: i64 = 5;
/// The pre-stop sleep, the service's 30 s drain (`server.shutdown_grace`) and a margin.
const TERMINATION_GRACE_SECONDS: i64 = PRE_STOP_SLEEP_SECONDS + 30 + 5;

/// The label that tells the two Jobs apart.
pub const MIGRATION_PHASE_LABEL: &str = "kyb.io/migration-phase";

fn migration_job(
    kp: &KybPlatform,
    name: &str,
    phase: MigrationPhase,
    job_hash: &str,
    config_map: &str,
    rendered: &Rendered,
) -> Result<Job, BuildError> {
    let spec = &kp.spec;
    let config_arg = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let mut args = vec!["migrate", "up", "--config", &config_arg];
    if phase == MigrationPhase::Contract {
        args.push("--contract");
    }
    let mut c = container(kp, "migrate", &args);
    c.resources = spec.resources.clone();
    let mut labels = labels(kp, "migrations");
    labels.insert(MIGRATION_PHASE_LABEL.into(), phase.as_str().into());
    let job_name = match phase {
        MigrationPhase::Expand => format!("{name}-migrate-{job_hash}"),
        MigrationPhase::Contract => format!("{name}-contract-{job_hash}"),
    };
    let mut metadata = meta(kp, job_name, "migrations")?;
    metadata.labels = Some(labels.clone());
    Ok(Job {
        metadata,
        spec: Some(JobSpec {
            backoff_limit: Some(2),
            // A migration stuck behind a lock fails the Job (and the rollout says so) rather than
            // holding the rollout forever.
            active_deadline_seconds: Some(spec.migrations.active_deadline_seconds),
            // status.migratedSchema remembers the success, so finished Jobs need not pile up.
            ttl_seconds_after_finished: Some(spec.migrations.ttl_seconds_after_finished),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: (!spec.migrations.pod_annotations.is_empty())
                        .then(|| spec.migrations.pod_annotations.clone()),
                    ..Default::default()
                }),
                spec: Some({
                    let mut pod = PodSpec {
                        restart_policy: Some("Never".into()),
                        service_account_name: Some(name.to_owned()),
                        automount_service_account_token: Some(false),
                        security_context: Some(pod_security_context()),
                        containers: vec![c],
                        volumes: Some(volumes(config_map, rendered)),
                        ..Default::default()
                    };
                    spec.scheduling.place(&mut pod);
                    pod
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn int_or_percent(v: &str) -> IntOrString {
    v.parse::<i32>()
        .map(IntOrString::Int)
        .unwrap_or_else(|_| IntOrString::String(v.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(sample: &str) -> KybPlatform {
        let mut kp: KybPlatform = serde_yaml::from_str(sample).unwrap();
        kp.metadata.namespace = Some("team".into());
        kp.metadata.uid = Some("0f7a-uid".into());
        kp
    }

    fn minimal() -> KybPlatform {
        platform(include_str!("../../manifests/samples/minimal.yaml"))
    }

    #[test]
    fn network_policy_admits_only_the_declared_clients_analysis_and_prometheus() {
        assert!(
            build(&minimal()).unwrap().network_policy.is_none(),
            "opt-in"
        );
        let kp = platform(include_str!("../../manifests/samples/full.yaml"));
        let np = build(&kp).unwrap().network_policy.unwrap();
        let spec = np.spec.unwrap();
        assert_eq!(
            spec.pod_selector.unwrap().match_labels.unwrap(),
            selector_labels(&kp)
        );
        assert_eq!(spec.policy_types.unwrap(), vec!["Ingress"]);
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2);
        let port = |r: &NetworkPolicyIngressRule| r.ports.as_ref().unwrap()[0].port.clone();
        assert_eq!(port(&rules[0]), Some(IntOrString::Int(HTTP_PORT)));
        let api_from = rules[0].from.as_ref().unwrap();
        assert_eq!(
            api_from.len(),
            2,
            "the onboarding pods and the platform's analysis Jobs"
        );
        let analysis = api_from[1]
            .pod_selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap();
        assert_eq!(analysis["app.kubernetes.io/component"], "analysis");
        assert_eq!(analysis["app.kubernetes.io/instance"], "kyb-full");
        assert_eq!(port(&rules[1]), Some(IntOrString::Int(METRICS_PORT)));
    }

    #[test]
    fn the_generated_key_secret_is_owned_and_holds_the_key_and_its_entry() {
        let kp = minimal();
        let s = generated_key_secret(&kp, "kyb_abc", "- client: x\n").unwrap();
        assert_eq!(s.metadata.name.as_deref(), Some("kyb-api-key"));
        assert!(s.metadata.owner_references.is_some());
        let data = s.string_data.unwrap();
        assert_eq!(data["key"], "kyb_abc");
        assert_eq!(data["keys.yaml"], "- client: x\n");
    }

    #[test]
    fn tracing_renders_the_sdk_variables_into_the_api_and_worker_containers_only_when_asked() {
        let env_of = |d: &Deployment| -> BTreeMap<String, String> {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .env
                .as_ref()
                .unwrap()
                .iter()
                .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
                .collect()
        };
        let mut kp = platform(include_str!("../../manifests/samples/full.yaml"));
        kp.spec.workers = Some(serde_yaml::from_str("{concurrency: 2, replicas: 1}").unwrap());
        let traced = kp.spec.tracing.take().expect("the full sample traces");
        let untraced = build(&kp).unwrap();
        assert!(env_of(&untraced.deployment)
            .keys()
            .all(|k| !k.starts_with("OTEL_")));
        kp.spec.tracing = Some(crate::operator::crd::TracingSpec {
            sample_ratio: 0.25,
            ..traced
        });
        let c = build(&kp).unwrap();
        let api = env_of(&c.deployment);
        assert_eq!(
            api["OTEL_EXPORTER_OTLP_ENDPOINT"],
            "http://otel-collector.observability:4318"
        );
        assert_eq!(api["OTEL_SERVICE_NAME"], "kyb-full");
        assert_eq!(
            api["OTEL_RESOURCE_ATTRIBUTES"],
            "k8s.namespace.name=team,k8s.container.name=api"
        );
        assert_eq!(api["OTEL_TRACES_SAMPLER"], "parentbased_traceidratio");
        assert_eq!(api["OTEL_TRACES_SAMPLER_ARG"], "0.25");
        assert_eq!(api["KYB_LOG_FORMAT"], "json");
        let worker = env_of(&c.workers.as_ref().unwrap().0);
        assert_eq!(
            worker["OTEL_RESOURCE_ATTRIBUTES"],
            "k8s.namespace.name=team,k8s.container.name=worker"
        );
        // The migration Job makes no spans.
        let job = c.migration_job.as_ref().unwrap();
        let job_env = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
            .env
            .as_ref()
            .unwrap();
        assert!(job_env.iter().all(|e| !e.name.starts_with("OTEL_")));
    }

    #[test]
    fn every_child_is_owned_and_labelled() {
        let kp = minimal();
        let c = build(&kp).unwrap();
        let metas = [
            &c.service_account.metadata,
            &c.config_map.metadata,
            &c.deployment.metadata,
            &c.service.metadata,
            &c.hpa.as_ref().unwrap().metadata,
            &c.pdb.metadata,
            &c.migration_job.as_ref().unwrap().metadata,
            &c.contract_job.as_ref().unwrap().metadata,
        ];
        for m in metas {
            let owner = &m.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
                ("KybPlatform", "0f7a-uid", Some(true))
            );
            assert_eq!(m.namespace.as_deref(), Some("team"));
            let l = m.labels.as_ref().unwrap();
            assert_eq!(l["app.kubernetes.io/instance"], "kyb");
            assert_eq!(l["app.kubernetes.io/managed-by"], FIELD_MANAGER);
            // The claim a delete of an uncached kind is judged by covers every child, and a
            // platform of another uid claims none.
            assert_eq!(super::super::ownership::conflict(m, &c.claim), None);
            let mut other = kp.clone();
            other.metadata.uid = Some("other-uid".into());
            let theirs = build(&other).unwrap().claim;
            assert!(super::super::ownership::conflict(m, &theirs).is_some());
        }
    }

    #[test]
    fn deployment_is_restricted_and_probed_from_the_spec() {
        let c = build(&minimal()).unwrap();
        let d = c.deployment.spec.unwrap();
        assert_eq!(
            d.replicas,
            Some(3),
            "autoscaled platforms start at minReplicas"
        );
        let pod = d.template.spec.unwrap();
        let api = &pod.containers[0];
        assert_eq!(
            api.args.as_ref().unwrap(),
            &["serve", "--config", "/etc/kyb/config.yaml"]
        );
        let sc = api.security_context.as_ref().unwrap();
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(),
            &["ALL"]
        );
        assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
        let live = api.liveness_probe.as_ref().unwrap();
        assert_eq!(
            live.http_get.as_ref().unwrap().path.as_deref(),
            Some("/health")
        );
        assert_eq!(
            (
                live.period_seconds,
                live.timeout_seconds,
                live.failure_threshold
            ),
            (Some(30), Some(5), Some(3))
        );
        assert_eq!(
            api.readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap()
                .path
                .as_deref(),
            Some("/ready")
        );
        let secrets = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "secrets")
            .unwrap();
        let names: Vec<&str> = secrets
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()
            .iter()
            .map(|s| s.secret.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            vec!["kyb-api-key", "kyb-db"],
            "the generated key's entry and the database's"
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn hpa_has_the_plans_metrics_and_behaviour_on_the_scale_subresource() {
        let hpa = build(&minimal()).unwrap().hpa.unwrap().spec;
        assert_eq!(hpa.scale_target_ref.kind, "KybPlatform");
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 20));
        let targets: Vec<(String, Option<i32>)> = hpa
            .metrics
            .unwrap()
            .into_iter()
            .map(|m| {
                let r = m.resource.unwrap();
                (r.name, r.target.average_utilization)
            })
            .collect();
        assert_eq!(
            targets,
            vec![("cpu".into(), Some(70)), ("memory".into(), Some(80))]
        );
        let b = hpa.behavior.unwrap();
        let up = b.scale_up.unwrap();
        assert_eq!(up.stabilization_window_seconds, Some(60));
        assert_eq!(up.policies.unwrap()[0].value, 100);
        let down = b.scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(300));
        assert_eq!(
            (
                down.policies.as_ref().unwrap()[0].value,
                down.policies.unwrap()[0].period_seconds
            ),
            (10, 60)
        );
    }

    #[test]
    fn config_changes_roll_pods_and_image_changes_name_a_new_migration() {
        let a = build(&minimal()).unwrap();
        assert_eq!(
            a,
            build(&minimal()).unwrap(),
            "deterministic: a resync has nothing to change"
        );
        let hash = |c: &Children| {
            c.deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[CONFIG_HASH_ANNOTATION]
                .clone()
        };
        let mut kp = minimal();
        kp.spec.cache.l1_ttl = "1m".into();
        let b = build(&kp).unwrap();
        assert_ne!(
            hash(&a),
            hash(&b),
            "a config change must change the pod template"
        );
        let job_name = |c: &Children| c.migration_job.as_ref().unwrap().metadata.name.clone();
        let volume = |c: &Children| {
            c.deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .volumes
                .as_ref()
                .unwrap()[0]
                .config_map
                .as_ref()
                .unwrap()
                .name
                .clone()
        };
        assert_ne!(a.config_map.metadata.name, b.config_map.metadata.name);
        assert_eq!(b.config_map.immutable, Some(true));
        assert_eq!(volume(&b), b.config_map.metadata.name.clone().unwrap());
        assert_eq!(a.schema, b.schema, "a cache setting moves no schema");
        assert_eq!(job_name(&a), job_name(&b));
        let mut kp = minimal();
        kp.spec.image = "registry.example.com/kybctl:0.2.0".into();
        let c = build(&kp).unwrap();
        assert_eq!(hash(&a), hash(&c));
        assert_eq!(a.config_map, c.config_map);
        assert_ne!(a.schema, c.schema);
        assert_ne!(
            job_name(&a),
            job_name(&c),
            "a new image gets its own migration Job"
        );
        let mut kp = minimal();
        kp.spec.database.shards = vec![crate::operator::crd::ShardSpec {
            id: "a".into(),
            primary: kp.spec.database.primary.clone().unwrap(),
            replicas: vec![],
            range_from: None,
            keys: vec![],
        }];
        let d = build(&kp).unwrap();
        assert_ne!(a.schema, d.schema, "a new shard is a new migration target");
        assert_ne!(job_name(&a), job_name(&d));
        let job = d.migration_job.clone().unwrap().spec.unwrap();
        assert_eq!(job.active_deadline_seconds, Some(600));
        assert_eq!(job.ttl_seconds_after_finished, Some(3600));
        let args = |j: &Job| {
            j.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers[0]
                .args
                .clone()
                .unwrap()
        };
        assert!(!args(d.migration_job.as_ref().unwrap()).contains(&"--contract".to_owned()));
        assert!(args(d.contract_job.as_ref().unwrap()).contains(&"--contract".to_owned()));
    }

    #[test]
    fn scheduling_places_the_api_pods_and_the_migration_jobs() {
        let mut kp = platform(include_str!("../../manifests/samples/minimal.yaml"));
        let unplaced = build(&kp).unwrap().deployment.spec.unwrap().template;
        kp.spec.scheduling = serde_yaml::from_str(
            "nodeSelector: {kyb.io/real-node: \"true\"}\ntolerations: [{key: kyb.io/real-node, operator: Exists}]",
        )
        .unwrap();
        let d = build(&kp).unwrap();
        let pods = [
            d.deployment.spec.clone().unwrap().template,
            d.migration_job.clone().unwrap().spec.unwrap().template,
            d.contract_job.clone().unwrap().spec.unwrap().template,
        ];
        for pod in pods.map(|t| t.spec.unwrap()) {
            assert_eq!(pod.node_selector.unwrap()["kyb.io/real-node"], "true");
            assert_eq!(
                pod.tolerations.unwrap()[0].key.as_deref(),
                Some("kyb.io/real-node")
            );
        }
        assert_ne!(
            unplaced,
            d.deployment.spec.unwrap().template,
            "a new placement is a new revision"
        );
    }

    #[test]
    fn config_maps_beyond_the_revision_history_are_stale() {
        let at = |n: usize| {
            (
                format!("kyb-config-{n:02}"),
                format!("2026-11-30T10:{n:02}:00Z"),
            )
        };
        let existing: Vec<(String, String)> = (0..14).map(at).collect();
        // The current one (an old name reused: the configuration went back) is always kept; of the
        // others the newest ten stay.
        let stale = stale_config_maps("kyb-config-01", &existing);
        assert_eq!(
            stale,
            vec!["kyb-config-03", "kyb-config-02", "kyb-config-00"]
        );
        assert!(stale_config_maps("kyb-config-10", &existing[..11]).is_empty());
        assert_eq!(
            stale_config_maps("new", &existing[..11]),
            vec!["kyb-config-00"]
        );
        assert!(stale_config_maps("x", &[]).is_empty());
    }

    #[test]
    fn optional_children_follow_the_spec() {
        let mut kp = minimal();
        kp.spec.autoscaling.enabled = false;
        kp.spec.replicas = Some(2);
        kp.spec.migrations.enabled = false;
        let c = build(&kp).unwrap();
        assert!(c.hpa.is_none());
        assert!(c.migration_job.is_none());
        assert!(c.contract_job.is_none());
        assert_eq!(c.deployment.spec.unwrap().replicas, Some(2));
    }

    #[test]
    fn unusable_specs_are_errors_not_panics() {
        let mut kp = minimal();
        kp.metadata.uid = None;
        assert_eq!(build(&kp).unwrap_err(), BuildError::Missing("uid"));
        let mut kp = minimal();
        kp.spec.health_check.interval = "500ms".into();
        assert!(matches!(
            build(&kp).unwrap_err(),
            BuildError::Duration {
                field: "healthCheck.interval",
                ..
            }
        ));
        assert_eq!(selector_string(&minimal()), "app.kubernetes.io/component=api,app.kubernetes.io/instance=kyb,app.kubernetes.io/name=kyb-api");
    }

    #[test]
    fn workers_get_a_deployment_that_can_finish_its_jobs_and_a_pdb() {
        let mut kp = minimal();
        assert!(build(&kp).unwrap().workers.is_none(), "opt-in");
        kp.spec.workers = Some(
            serde_yaml::from_str(
                "{replicas: 2, concurrency: 3, types: [classify, risk_assessment], jobTimeout: 2m}",
            )
            .unwrap(),
        );
        let c = build(&kp).unwrap();
        let (d, pdb) = c.workers.unwrap();
        assert_eq!(d.metadata.name.as_deref(), Some("kyb-worker"));
        let spec = d.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let rolling = spec.strategy.unwrap().rolling_update.unwrap();
        assert_eq!(
            rolling.max_surge,
            Some(IntOrString::Int(0)),
            "no pod beyond the budget"
        );
        let selector = spec.selector.match_labels.unwrap();
        assert_eq!(selector["app.kubernetes.io/component"], "worker");
        assert_ne!(
            selector,
            selector_labels(&kp),
            "the API Service never selects workers"
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.termination_grace_period_seconds,
            Some(120 + 15),
            "longer than the job timeout"
        );
        let worker = &pod.containers[0];
        let args = worker.args.clone().unwrap().join(" ");
        assert!(args.starts_with("worker --config "), "{args}");
        for part in [
            "--concurrency 3",
            "--job-timeout 120s",
            "--grace 120s",
            "--types classify,risk_assessment",
        ] {
            assert!(args.contains(part), "{part} in {args}");
        }
        assert!(worker
            .env
            .as_ref()
            .unwrap()
            .iter()
            .any(|e| e.name == "POD_NAME"));
        assert_eq!(
            pod.volumes,
            c.deployment.spec.unwrap().template.spec.unwrap().volumes,
            "the API pods' configuration and Secrets"
        );
        assert_eq!(
            pdb.spec.unwrap().selector.unwrap().match_labels.unwrap(),
            selector
        );
        kp.spec.workers.as_mut().unwrap().job_timeout = "1500ms".into();
        assert!(matches!(
            build(&kp).unwrap_err(),
            BuildError::Duration {
                field: "workers.jobTimeout",
                ..
            }
        ));
    }

    #[test]
    fn directory_keys_reach_the_service_and_a_key_pinned_twice_is_refused() {
        let sharded = |b_keys: &str| {
            let mut kp = minimal();
            kp.spec.database = serde_yaml::from_str(&format!(
                "shardingStrategy: directory\nshards:\n- {{id: a, primary: {{name: s, key: a}}, keys: [big-1, big-2]}}\n- {{id: b, primary: {{name: s, key: b}}, keys: [{b_keys}]}}\n"
            ))
            .unwrap();
            kp
        };
        let c = build(&sharded("big-3")).unwrap();
        let yaml = c.config_map.data.unwrap()[CONFIG_FILE].clone();
        let config = crate::config::Config::from_yaml(&yaml).unwrap();
        let router =
            crate::service::db::shard::ShardRouter::from_config(&config.database.sharding).unwrap();
        assert_eq!(
            ["big-1", "big-2", "big-3"].map(|k| router.route(k)),
            [0, 0, 1]
        );
        assert_eq!(
            build(&sharded("big-2")).unwrap_err(),
            BuildError::Sharding("key \"big-2\" is listed under two shards".into())
        );
    }
}
