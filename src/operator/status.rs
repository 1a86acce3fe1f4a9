//! The KybPlatform's status from what the operator observed. Pure: condition types are fixed and a
//! condition's `lastTransitionTime` moves only when its status flips, so an unchanged world yields an
//! identical status (and no write).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::operator::crd::{KybPlatform, KybPlatformStatus, RolloutStatus};
use crate::operator::progressive;

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const MIGRATIONS_APPLIED: &str = "MigrationsApplied";
/// Whether the last reconcile got through (False with the error while retries back off).
pub const RECONCILED: &str = "Reconciled";
/// With `spec.workers.maxReplicas`: whether KEDA sizes the workers to the queue.
pub const WORKERS_AUTOSCALED: &str = "WorkersAutoscaled";

/// With `spec.monitoring.enabled`: whether the PodMonitor and PrometheusRule are applied.
pub const MONITORING: &str = "Monitoring";

/// What became of `spec.monitoring`, when enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Monitoring {
    /// The PodMonitor and PrometheusRule are applied.
    Rendered,
    /// The Prometheus Operator's CRDs are not installed: only the dashboard is.
    PrometheusOperatorMissing,
}

/// Who sizes the job workers, when `spec.workers.maxReplicas` asks for scaling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerScaling {
    /// A ScaledObject is applied.
    Keda,
    /// KEDA's CRDs are not installed: the workers stay at `replicas`.
    KedaMissing,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Migration {
    Disabled,
    /// Not started yet: a contract Job waits for the rollout to fully promote.
    Waiting,
    /// The Job for the spec's image has not finished.
    Running {
        job: String,
    },
    Succeeded {
        job: String,
    },
    Failed {
        job: String,
        message: String,
    },
}

/// A reason the spec cannot be acted on (invalid, or referring to something missing).
#[derive(Debug, Clone, PartialEq)]
pub struct Blocker {
    pub reason: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Rollout {
    pub replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    pub desired: i32,
    /// The image the Deployment runs (the one serving), if it exists.
    pub image: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub blocker: Option<Blocker>,
    pub migration: Migration,
    pub rollout: Rollout,
    pub revision: Option<String>,
    /// The schema hash whose migration is known to have succeeded (kept from the previous status
    /// when `None`).
    pub migrated_schema: Option<String>,
    /// The contract Job (`migrate up --contract`) of the spec's release.
    pub contract: Migration,
    /// The schema hash whose contract Job is known to have succeeded (kept when `None`).
    pub contracted_schema: Option<String>,
    pub selector: String,
    pub endpoint: Option<String>,
    /// A blue-green or canary rollout's own status (see `progressive`); `None` for rolling updates.
    pub progressive: Option<RolloutStatus>,
    /// `None` without `spec.workers.maxReplicas`.
    pub worker_scaling: Option<WorkerScaling>,
    /// Freshly read queue figures; `None` keeps the previous ones (while `spec.workers` is set).
    pub queue: Option<crate::operator::crd::QueueStatus>,
    /// `None` with monitoring disabled (or not reached by this reconcile).
    pub monitoring: Option<Monitoring>,
}

/// Every desired pod runs the spec's image and is ready.
pub fn rolled_out(r: &Rollout, spec_image: &str) -> bool {
    r.image.as_deref() == Some(spec_image)
        && r.updated_replicas >= r.desired
        && r.ready_replicas >= r.desired
        && r.desired > 0
}

/// Rolled out and no pod of an earlier revision left (surge pods gone): the moment contract steps may
/// run, since nothing that still needs what they remove is serving.
pub fn fully_promoted(r: &Rollout, spec_image: &str) -> bool {
    rolled_out(r, spec_image) && r.replicas <= r.desired
}

/// The Degraded condition's reason for an aborted rollout.
fn abort_reason(reason: &str) -> &'static str {
    match reason {
        "ProgressDeadlineExceeded" => "ProgressDeadlineExceeded",
        "AnalysisFailed" => "AnalysisFailed",
        _ => "RolloutAborted",
    }
}

fn set(
    conds: &mut Vec<Condition>,
    kind: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) {
    let status = if ok { "True" } else { "False" }.to_owned();
    match conds.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.clone();
            }
            c.status = status;
            c.reason = reason.to_owned();
            c.message = message;
            c.observed_generation = generation;
        }
        None => conds.push(Condition {
            type_: kind.to_owned(),
            status,
            reason: reason.to_owned(),
            message,
            observed_generation: generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// The status after a failed reconcile: everything as last observed, and `Reconciled` False with the
/// error, so `kubectl get kyb -o yaml` (and whatever watches conditions) shows why nothing moves.
pub fn failed(kp: &KybPlatform, message: String, now: &Time) -> KybPlatformStatus {
    let mut status = kp.status.clone().unwrap_or_default();
    set(
        &mut status.conditions,
        RECONCILED,
        false,
        "ReconcileFailed",
        message,
        kp.metadata.generation,
        now,
    );
    status
}

pub fn next_status(kp: &KybPlatform, obs: &Observed, now: &Time) -> KybPlatformStatus {
    let previous = kp.status.clone().unwrap_or_default();
    let generation = kp.metadata.generation;
    let mut conds = previous.conditions.clone();
    set(
        &mut conds,
        RECONCILED,
        true,
        "ReconcileSucceeded",
        "every child is applied".into(),
        generation,
        now,
    );
    let r = &obs.rollout;
    let progressive = obs.progressive.as_ref();
    let rolled_out = match progressive {
        Some(p) => p.phase == progressive::HEALTHY,
        None => rolled_out(r, &kp.spec.image),
    };

    let (migrated, m_reason, m_message) = match &obs.migration {
        Migration::Disabled => (true, "Disabled", "migrations are disabled".to_owned()),
        Migration::Waiting => (false, "Waiting", "migration not started".to_owned()),
        Migration::Running { job } => (false, "Running", format!("migration Job {job} is running")),
        Migration::Succeeded { job } => {
            (true, "Succeeded", format!("migration Job {job} succeeded"))
        }
        Migration::Failed { job, message } => (
            false,
            "Failed",
            format!("migration Job {job} failed: {message}"),
        ),
    };
    // The contract steps never gate anything (the release serves without them); they are reported.
    let contract_note = match &obs.contract {
        Migration::Disabled => String::new(),
        Migration::Waiting => "; contract steps wait for the rollout to fully promote".into(),
        Migration::Running { job } => format!("; contract Job {job} is running"),
        Migration::Succeeded { job } => format!("; contract Job {job} succeeded"),
        Migration::Failed { job, message } => format!(
            "; contract Job {job} failed: {message} (the release serves; fix it and delete the Job to retry)"
        ),
    };
    set(
        &mut conds,
        MIGRATIONS_APPLIED,
        migrated,
        m_reason,
        format!("{m_message}{contract_note}"),
        generation,
        now,
    );

    let degraded = match (&obs.blocker, &obs.migration) {
        (Some(b), _) => Some((b.reason, b.message.clone())),
        (None, Migration::Failed { .. }) => Some((
            "MigrationFailed",
            match &r.image {
                Some(img) => format!("{m_message}; still serving {img}"),
                None => m_message.clone(),
            },
        )),
        _ => progressive
            .and_then(|p| p.abort.as_ref().filter(|_| p.phase == progressive::ABORTED))
            .map(|a| {
                (
                    abort_reason(&a.reason),
                    progressive.map(|p| p.message.clone()).unwrap_or_default(),
                )
            }),
    };
    match &degraded {
        Some((reason, message)) => set(
            &mut conds,
            DEGRADED,
            true,
            reason,
            message.clone(),
            generation,
            now,
        ),
        None => set(
            &mut conds,
            DEGRADED,
            false,
            "AsExpected",
            "no problems".into(),
            generation,
            now,
        ),
    }

    let paused = match progressive {
        Some(p) => p.phase == progressive::PAUSED,
        None => kp.spec.rollout.paused,
    };
    let progressing = degraded.is_none() && !rolled_out && !paused;
    let p_message = match &obs.migration {
        _ if progressive.is_some() => progressive.map(|p| p.message.clone()).unwrap_or_default(),
        _ if paused => format!(
            "paused with {}/{} pods ready on the spec's image: `kybctl rollout resume {}` continues",
            r.ready_replicas,
            r.desired,
            kp.metadata.name.as_deref().unwrap_or_default()
        ),
        Migration::Running { .. } => m_message,
        _ => format!(
            "{}/{} pods ready on the spec's image",
            r.ready_replicas, r.desired
        ),
    };
    let p_reason = match (progressing, paused) {
        (true, _) => "RollingOut",
        (false, true) => "Paused",
        (false, false) => "Stable",
    };
    let progressing_message = p_message.clone();
    set(
        &mut conds,
        PROGRESSING,
        progressing,
        p_reason,
        p_message,
        generation,
        now,
    );

    let ready = match progressive {
        Some(_) => rolled_out && degraded.is_none(),
        None => r.desired > 0 && r.ready_replicas >= r.desired && degraded.is_none() && rolled_out,
    };
    set(
        &mut conds,
        READY,
        ready,
        if ready { "Available" } else { "NotAvailable" },
        format!("{}/{} pods ready", r.ready_replicas, r.desired),
        generation,
        now,
    );

    match obs.worker_scaling {
        Some(WorkerScaling::Keda) => set(
            &mut conds,
            WORKERS_AUTOSCALED,
            true,
            "KEDA",
            "a KEDA ScaledObject sizes the workers to their queue".into(),
            generation,
            now,
        ),
        Some(WorkerScaling::KedaMissing) => set(
            &mut conds,
            WORKERS_AUTOSCALED,
            false,
            "KEDANotInstalled",
            "spec.workers.maxReplicas asks for scaling on the queue, but KEDA's CRDs \
             (scaledobjects.keda.sh) are not installed: the workers stay at spec.workers.replicas"
                .into(),
            generation,
            now,
        ),
        None => conds.retain(|c| c.type_ != WORKERS_AUTOSCALED),
    }
    match obs.monitoring {
        Some(Monitoring::Rendered) => set(
            &mut conds,
            MONITORING,
            true,
            "Rendered",
            "a PodMonitor and a PrometheusRule (alerts) are applied, and the Grafana dashboard".into(),
            generation,
            now,
        ),
        Some(Monitoring::PrometheusOperatorMissing) => set(
            &mut conds,
            MONITORING,
            false,
            "PrometheusOperatorNotInstalled",
            "the Prometheus Operator's CRDs (podmonitors and prometheusrules.monitoring.coreos.com) \
             are not installed: no scraping or alerts are rendered (`kybctl alerts render` prints \
             the rules)"
                .into(),
            generation,
            now,
        ),
        None if !kp.spec.monitoring.enabled => conds.retain(|c| c.type_ != MONITORING),
        None => {}
    }

    let aborted = progressive.is_some_and(|p| p.phase == progressive::ABORTED);
    let phase = if aborted {
        "Aborted"
    } else if degraded.is_some() {
        "Degraded"
    } else if paused {
        "Paused"
    } else if ready {
        "Ready"
    } else {
        "Progressing"
    };
    KybPlatformStatus {
        observed_generation: generation,
        conditions: conds,
        // The scale subresource's view: the desired total at most, never surge pods (the autoscaler
        // would read them as load it caused and scale out).
        replicas: r.replicas.min(r.desired),
        ready_replicas: r.ready_replicas,
        selector: Some(obs.selector.clone()),
        image: r.image.clone(),
        revision: obs.revision.clone().or(previous.revision),
        migrated_schema: obs.migrated_schema.clone().or(previous.migrated_schema),
        contracted_schema: obs.contracted_schema.clone().or(previous.contracted_schema),
        endpoint: obs.endpoint.clone(),
        phase: Some(phase.into()),
        database_connections: crate::operator::connections::budget(&kp.spec).ok(),
        queue: kp
            .spec
            .workers
            .as_ref()
            .and(obs.queue.clone().or(previous.queue)),
        rollout: Some(match progressive {
            Some(p) => p.clone(),
            None => RolloutStatus {
                phase: match phase {
                    "Ready" => progressive::HEALTHY,
                    "Paused" => progressive::PAUSED,
                    "Degraded" => progressive::DEGRADED,
                    _ => progressive::PROGRESSING,
                }
                .into(),
                message: degraded
                    .as_ref()
                    .map(|(_, m)| m.clone())
                    .unwrap_or_else(|| progressing_message.clone()),
                stable_revision: ready.then(|| obs.revision.clone()).flatten(),
                ..Default::default()
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp() -> KybPlatform {
        let mut kp: KybPlatform =
            serde_yaml::from_str(include_str!("../../manifests/samples/minimal.yaml")).unwrap();
        kp.metadata.generation = Some(2);
        kp
    }

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    fn observed(ready: i32, image: &str, migration: Migration) -> Observed {
        Observed {
            blocker: None,
            migration,
            rollout: Rollout {
                replicas: 3,
                ready_replicas: ready,
                updated_replicas: 3,
                desired: 3,
                image: Some(image.into()),
            },
            revision: Some("abc".into()),
            migrated_schema: None,
            contract: Migration::Disabled,
            contracted_schema: None,
            selector: "a=b".into(),
            endpoint: None,
            progressive: None,
            worker_scaling: None,
            queue: None,
            monitoring: None,
        }
    }

    #[test]
    fn workers_report_their_scaling_and_keep_the_last_queue_figures() {
        let mut k = kp();
        let obs = observed(3, &k.spec.image.clone(), Migration::Disabled);
        assert!(
            next_status(&k, &obs, &t(1)).queue.is_none(),
            "no workers, no queue"
        );
        k.spec.workers = Some(serde_yaml::from_str("{replicas: 1, maxReplicas: 4}").unwrap());
        let figures = crate::operator::crd::QueueStatus {
            ready: 1200,
            observed_at: Some(t(5)),
            ..Default::default()
        };
        let s = next_status(
            &k,
            &Observed {
                worker_scaling: Some(WorkerScaling::KedaMissing),
                queue: Some(figures.clone()),
                ..obs.clone()
            },
            &t(5),
        );
        assert_eq!(s.queue.as_ref(), Some(&figures));
        let c = cond(&s, WORKERS_AUTOSCALED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "KEDANotInstalled")
        );
        k.status = Some(s);
        // Not read this time: the last figures stay; KEDA installed since.
        let s = next_status(
            &k,
            &Observed {
                worker_scaling: Some(WorkerScaling::Keda),
                ..obs.clone()
            },
            &t(9),
        );
        assert_eq!(s.queue, Some(figures));
        assert_eq!(cond(&s, WORKERS_AUTOSCALED).status, "True");
        k.status = Some(s);
        k.spec.workers = None;
        let s = next_status(&k, &obs, &t(12));
        assert!(s.queue.is_none());
        assert!(!s.conditions.iter().any(|c| c.type_ == WORKERS_AUTOSCALED));
    }

    fn cond<'a>(s: &'a KybPlatformStatus, kind: &str) -> &'a Condition {
        s.conditions.iter().find(|c| c.type_ == kind).unwrap()
    }

    #[test]
    fn ready_when_all_pods_run_the_spec_image() {
        let k = kp();
        let s = next_status(
            &k,
            &observed(3, &k.spec.image, Migration::Succeeded { job: "j".into() }),
            &t(10),
        );
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, PROGRESSING).status, "False");
        assert_eq!(cond(&s, DEGRADED).status, "False");
        assert_eq!(cond(&s, MIGRATIONS_APPLIED).status, "True");
        assert_eq!(s.phase.as_deref(), Some("Ready"));
        assert_eq!(s.observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut k = kp();
        let first = next_status(
            &k,
            &observed(1, &k.spec.image.clone(), Migration::Disabled),
            &t(10),
        );
        k.status = Some(first.clone());
        let same = next_status(
            &k,
            &observed(2, &k.spec.image.clone(), Migration::Disabled),
            &t(20),
        );
        assert_eq!(
            cond(&same, READY).last_transition_time,
            t(10),
            "still not ready: no transition"
        );
        k.status = Some(same);
        let ready = next_status(
            &k,
            &observed(3, &k.spec.image.clone(), Migration::Disabled),
            &t(30),
        );
        assert_eq!(cond(&ready, READY).last_transition_time, t(30));
        assert_eq!(cond(&ready, DEGRADED).last_transition_time, t(10));
        k.status = Some(ready.clone());
        assert_eq!(
            next_status(
                &k,
                &observed(3, &k.spec.image.clone(), Migration::Disabled),
                &t(40)
            ),
            ready,
            "steady state is a fixed point"
        );
    }

    #[test]
    fn failed_migration_degrades_and_keeps_the_old_version() {
        let k = kp();
        let s = next_status(
            &k,
            &observed(
                3,
                "registry.example.com/kybctl:0.0.9",
                Migration::Failed {
                    job: "kyb-migrate-x".into(),
                    message: "BackoffLimitExceeded".into(),
                },
            ),
            &t(10),
        );
        let d = cond(&s, DEGRADED);
        assert_eq!(
            (d.status.as_str(), d.reason.as_str()),
            ("True", "MigrationFailed")
        );
        assert!(
            d.message
                .contains("still serving registry.example.com/kybctl:0.0.9"),
            "{}",
            d.message
        );
        assert_eq!(cond(&s, READY).status, "False");
        assert_eq!(
            s.image.as_deref(),
            Some("registry.example.com/kybctl:0.0.9")
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
    }

    #[test]
    fn a_failed_reconcile_is_a_condition_until_one_succeeds() {
        let mut platform = kp();
        let first = next_status(&platform, &observed(3, "kyb:1", Migration::Disabled), &t(0));
        assert_eq!(cond(&first, RECONCILED).status, "True");
        platform.status = Some(first.clone());
        let failed = failed(&platform, "configmaps \"x\" is immutable".into(), &t(10));
        let c = cond(&failed, RECONCILED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "ReconcileFailed")
        );
        assert!(c.message.contains("immutable"));
        assert_eq!(c.last_transition_time, t(10));
        assert_eq!(
            cond(&failed, READY),
            cond(&first, READY),
            "the rest as last observed"
        );
        platform.status = Some(failed);
        let again = next_status(
            &platform,
            &observed(3, "kyb:1", Migration::Disabled),
            &t(20),
        );
        let c = cond(&again, RECONCILED);
        assert_eq!(
            (c.status.as_str(), c.last_transition_time.clone()),
            ("True", t(20))
        );
    }

    #[test]
    fn blockers_name_their_reason() {
        let k = kp();
        let mut o = observed(0, &k.spec.image, Migration::Disabled);
        o.blocker = Some(Blocker {
            reason: "SecretMissing",
            message: "Secret kyb-db not found".into(),
        });
        let s = next_status(&k, &o, &t(1));
        assert_eq!(cond(&s, DEGRADED).reason, "SecretMissing");
    }
}
