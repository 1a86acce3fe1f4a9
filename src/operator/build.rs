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
    EnvVar, HTTPGetAction, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    ProjectedVolumeSource, SeccompProfile, SecretProjection, SecurityContext, Service,
    ServiceAccount, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;
use sha2::{Digest, Sha256};

use super::render::{self, Rendered, CONFIG_DIR, CONFIG_FILE, HTTP_PORT, SECRETS_DIR};
use crate::operator::crd::{KybPlatform, PullPolicy};

pub const FIELD_MANAGER: &str = "kybctl-operator";
pub const CONFIG_HASH_ANNOTATION: &str = "kyb.io/config-hash";
/// Non-root user of the distroless-style image.
const RUN_AS_USER: i64 = 65532;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("the KybPlatform has no {0} (not read from the apiserver?)")]
    Missing(&'static str),
    #[error("spec.healthCheck.{field}: {value:?} is not a whole number of seconds")]
    Duration { field: &'static str, value: String },
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
    pub pdb: PodDisruptionBudget,
    /// The migration Job for the spec's image; absent when migrations are disabled.
    pub migration_job: Option<Job>,
    /// Short hash of image and configuration: names the migration Job and marks the revision in status.
    pub revision: String,
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

fn meta(kp: &KybPlatform, name: String, component: &str) -> Result<ObjectMeta, BuildError> {
    Ok(ObjectMeta {
        name: Some(name),
        namespace: kp.metadata.namespace.clone(),
        labels: Some(labels(kp, component)),
        owner_references: Some(vec![owner(kp)?]),
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

fn restricted_container_context() -> SecurityContext {
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

fn pod_security_context() -> PodSecurityContext {
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

fn volumes(name: &str, rendered: &Rendered) -> Vec<Volume> {
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
                name: format!("{name}-config"),
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
    let rendered = render::render(spec);
    let config_arg = format!("{CONFIG_DIR}/{CONFIG_FILE}");
    let revision = hash(&[&spec.image, &rendered.config_yaml]);
    let config_hash = hash(&[&rendered.config_yaml, &format!("{:?}", rendered.mounts)]);

    let service_account = ServiceAccount {
        metadata: meta(kp, name.clone(), "api")?,
        // The service never talks to the apiserver.
        automount_service_account_token: Some(false),
        ..Default::default()
    };
    let config_map = ConfigMap {
        metadata: meta(kp, format!("{name}-config"), "api")?,
        data: Some(BTreeMap::from([(
            CONFIG_FILE.to_owned(),
            rendered.config_yaml.clone(),
        )])),
        ..Default::default()
    };

    let hc = &spec.health_check;
    let period = seconds("interval", &hc.interval)?;
    let timeout = seconds("timeout", &hc.timeout)?;
    let mut api = container(kp, "api", &["serve", "--config", &config_arg]);
    api.ports = Some(vec![ContainerPort {
        name: Some("http".into()),
        container_port: HTTP_PORT,
        protocol: Some("TCP".into()),
        ..Default::default()
    }]);
    api.liveness_probe = Some(probe(&hc.path, period, timeout, hc.retries));
    api.readiness_probe = Some(probe("/ready", period.min(10), timeout, hc.retries));
    api.resources = spec.resources.clone();

    let selector = selector_labels(kp);
    let mut pod_labels = labels(kp, "api");
    pod_labels.insert("kyb.io/revision".into(), revision.clone());
    // While autoscaling, spec.replicas is written by the HPA through the KybPlatform's scale subresource
    // (one source of truth, also for `kubectl scale`); before its first write, start at the minimum.
    let replicas = spec.replicas.unwrap_or(if spec.autoscaling.enabled {
        spec.autoscaling.min_replicas
    } else {
        1
    });
    let deployment = Deployment {
        metadata: meta(kp, name.clone(), "api")?,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
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
            template: PodTemplateSpec {
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
                    containers: vec![api],
                    volumes: Some(volumes(&name, &rendered)),
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
            },
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

    let pdb = PodDisruptionBudget {
        metadata: meta(kp, name.clone(), "api")?,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let migration_job = spec
        .migrations
        .enabled
        .then(|| -> Result<Job, BuildError> {
            let mut c = container(kp, "migrate", &["migrate", "up", "--config", &config_arg]);
            c.resources = spec.resources.clone();
            // Named by everything it runs, so any change to the migration (a new image, a fixed pod
            // annotation) gets a fresh Job instead of finding the failed one; Jobs are immutable anyway.
            let job_hash = hash(&[&revision, &format!("{:?}", spec.migrations.pod_annotations)]);
            Ok(Job {
                metadata: meta(kp, format!("{name}-migrate-{job_hash}"), "migrations")?,
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(labels(kp, "migrations")),
                            annotations: (!spec.migrations.pod_annotations.is_empty())
                                .then(|| spec.migrations.pod_annotations.clone()),
                            ..Default::default()
                        }),
                        spec: Some(PodSpec {
                            restart_policy: Some("Never".into()),
                            service_account_name: Some(name.clone()),
                            automount_service_account_token: Some(false),
                            security_context: Some(pod_security_context()),
                            containers: vec![c],
                            volumes: Some(volumes(&name, &rendered)),
                            ..Default::default()
                        }),
                    },
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
        .transpose()?;

    Ok(Children {
        service_account,
        config_map,
        deployment,
        service,
        hpa,
        pdb,
        migration_job,
        revision,
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
        let items = &secrets
            .projected
            .as_ref()
            .unwrap()
            .sources
            .as_ref()
            .unwrap()[0];
        assert_eq!(items.secret.as_ref().unwrap().name, "kyb-db");
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
        let mut kp = minimal();
        kp.spec.image = "registry.example.com/kybctl:0.2.0".into();
        let c = build(&kp).unwrap();
        assert_eq!(hash(&a), hash(&c));
        assert_ne!(
            a.migration_job.unwrap().metadata.name,
            c.migration_job.unwrap().metadata.name,
            "a new image gets its own migration Job"
        );
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
                field: "interval",
                ..
            }
        ));
        assert_eq!(selector_string(&minimal()), "app.kubernetes.io/component=api,app.kubernetes.io/instance=kyb,app.kubernetes.io/name=kyb-api");
    }
}
