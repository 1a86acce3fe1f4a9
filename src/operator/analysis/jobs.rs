//! The `job` and `slo` providers: one Kubernetes Job per measurement, owned by its KybAnalysisRun and
//! named for the run, the metric and the measurement's number, so a reconcile that finds it again reads
//! the same Job instead of starting another. Pure: which Job to make and what a Job's state means;
//! `runs` creates, reads and deletes them.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{
    Job, JobSpec, PodFailurePolicy, PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
};
use k8s_openapi::api::core::v1::{
    Container, KeyToPath, PodSpec, PodTemplateSpec, ResourceRequirements, SecretVolumeSource,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::assess::{Observation, Verdict};
use super::crd::{Arg, JobProvider, KybAnalysisRun, Metric, SloProvider, SloService};
use super::providers::substitute;
use crate::loadtest::platform::thresholds_of;
use crate::operator::build::{pod_security_context, restricted_container_context, FIELD_MANAGER};
use crate::operator::crd::{KybPlatform, PullPolicy};
use crate::operator::render::{generated_key_secret, GENERATED_KEY};

/// `app.kubernetes.io/component` of analysis Jobs (migration Jobs have `migrations`).
pub const COMPONENT: &str = "analysis";
/// The run a Job measures for.
pub const RUN_LABEL: &str = "kyb.io/analysis-run";
const METRIC_LABEL: &str = "kyb.io/analysis-metric";
/// How long past its deadline an unfinished Job may go before the operator fails the measurement
/// itself: the Job controller enforces `activeDeadlineSeconds`, this covers a Job it never started
/// (suspended, controller down) or a deadline the Job's spec does not carry.
pub const GRACE_SECONDS: i64 = 60;
/// Finished Jobs stay this long for their logs; the run keeps the measurement for good.
const KEEP_FINISHED_SECONDS: i32 = 3600;
/// The load-test container's name, which the pod failure policy matches.
const LOADTEST: &str = "loadtest";
/// Requests per check below which `kybctl slo check` says inconclusive, unless `minSamples` says.
const SLO_MIN_SAMPLES: i64 = 100;

/// `<run>-<metric>-<n>`, cut to 63 characters with a hash of the whole when longer: the Job controller
/// puts the name in a pod label, and label values stop at 63.
pub fn job_name(run: &str, metric: &str, n: i32) -> String {
    let full = format!("{run}-{metric}-{n}");
    if full.len() <= 63 {
        return full;
    }
    let hash = hex::encode(&Sha256::digest(full.as_bytes())[..5]);
    let head = full[..63 - 1 - hash.len()].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// The Job of measurement `n` of `metric`, and what it runs (recorded as the measurement's query).
pub fn build(
    run: &KybAnalysisRun,
    kp: &KybPlatform,
    metric: &Metric,
    n: i32,
) -> Result<(Job, String), String> {
    let (spec, labels, annotations, what) = match (&metric.provider.job, &metric.provider.slo) {
        (Some(j), _) => {
            let spec = job_spec(j, &run.spec.args)?;
            let what = describe(&spec);
            (
                spec,
                j.metadata.labels.clone(),
                j.metadata.annotations.clone(),
                what,
            )
        }
        (None, Some(s)) => {
            let command = slo_command(kp, s, &run.spec.purpose, metric.min_samples)?;
            let what = format!("kybctl {}", command.join(" "));
            let spec = slo_job_spec(kp, s, command);
            (spec, BTreeMap::new(), BTreeMap::new(), what)
        }
        (None, None) => return Err(format!("metric {} has no Job provider", metric.name)),
    };
    let run_name = run.name_any();
    let mut labels = labels;
    labels.extend([
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        (
            "app.kubernetes.io/instance".into(),
            run.spec.platform.clone(),
        ),
        ("app.kubernetes.io/component".into(), COMPONENT.into()),
        (RUN_LABEL.into(), run_name.clone()),
        (METRIC_LABEL.into(), metric.name.clone()),
    ]);
    let name = job_name(&run_name, &metric.name, n);
    let job = Job {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: run.namespace(),
            labels: Some(labels),
            annotations: (!annotations.is_empty()).then_some(annotations),
            owner_references: run.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    Ok((job, format!("Job {name}: {what}")))
}

/// Whether a `job` metric's spec makes a JobSpec with these arguments, so a run with a broken template
/// ends in Error at once, saying why, instead of after a Job per measurement.
pub fn validate(j: &JobProvider, args: &[Arg]) -> Result<(), String> {
    job_spec(j, args).map(drop)
}

/// The template's JobSpec with arguments substituted in every string, and its deadline capped.
fn job_spec(j: &JobProvider, args: &[Arg]) -> Result<JobSpec, String> {
    let mut raw = j.spec.clone();
    substitute_strings(&mut raw, args);
    // Read from text, not with `from_value`: the Jobs this operator watches are read from text
    // already, and a second deserialiser would compile all of the Pod template's again.
    let mut spec: JobSpec = serde_json::from_str(&raw.to_string())
        .map_err(|e| format!("spec is not a batch/v1 JobSpec: {e}"))?;
    spec.active_deadline_seconds = Some(
        spec.active_deadline_seconds
            .map_or(j.deadline_seconds, |d| d.min(j.deadline_seconds)),
    );
    spec.ttl_seconds_after_finished
        .get_or_insert(KEEP_FINISHED_SECONDS);
    Ok(spec)
}

/// `{{args.NAME}}` replaced in every string of a JSON document. Done on the parsed document, not its
/// text, so a value with a quote cannot change the document's shape.
fn substitute_strings(v: &mut Value, args: &[Arg]) {
    match v {
        Value::String(s) => *s = substitute(s, args),
        Value::Array(items) => items.iter_mut().for_each(|i| substitute_strings(i, args)),
        Value::Object(map) => map.values_mut().for_each(|i| substitute_strings(i, args)),
        _ => {}
    }
}

/// The first container's image and command line, for the record.
fn describe(spec: &JobSpec) -> String {
    let Some(c) = spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
    else {
        return String::new();
    };
    let words: Vec<String> = c
        .command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect();
    format!(
        "{} {}",
        c.image.as_deref().unwrap_or_default(),
        words.join(" ")
    )
    .trim()
    .to_owned()
}

/// The Service a `slo` metric loads: the one named, or the revision under analysis by purpose.
fn slo_service(kp: &KybPlatform, s: &SloProvider, purpose: &str) -> String {
    let name = kp.name_any();
    let which = s.service.unwrap_or(match purpose {
        "pre-promotion" => SloService::Preview,
        "post-promotion" => SloService::Stable,
        _ => SloService::Canary,
    });
    match which {
        SloService::Stable => name,
        SloService::Canary => format!("{name}-canary"),
        SloService::Preview => format!("{name}-preview"),
    }
}

/// The `kybctl` arguments of a `slo` measurement: a load test of the Service with the platform's
/// `spec.slos` as `--threshold`s (the expressions `kybctl loadtest --platform` hands to `slo check`),
/// judged in the same process by the code of `kybctl slo check`. Its exit code is the verdict.
pub fn slo_command(
    kp: &KybPlatform,
    s: &SloProvider,
    purpose: &str,
    min_samples: Option<i64>,
) -> Result<Vec<String>, String> {
    let thresholds = thresholds_of(&kp.spec.slos)?;
    let ns = kp.namespace().unwrap_or_else(|| "default".into());
    let target = format!("http://{}.{ns}.svc", slo_service(kp, s, purpose));
    let mut args: Vec<String> = [
        "loadtest",
        "--target",
        &target,
        "--scenario",
        s.scenario.name(),
        "--users",
        &s.users.to_string(),
        "--duration",
        &s.duration,
    ]
    .map(str::to_owned)
    .into();
    if let Some(rate) = s.rate {
        args.extend(["--rate".into(), rate.to_string()]);
    }
    if !kp.spec.auth.insecure_no_auth {
        args.extend([
            "--api-key-file".into(),
            format!("{CLIENT_KEY_DIR}/{GENERATED_KEY}"),
        ]);
    }
    args.extend([
        "--min-samples".into(),
        min_samples.unwrap_or(SLO_MIN_SAMPLES).max(0).to_string(),
        "--no-progress".into(),
    ]);
    for t in thresholds {
        args.extend(["--threshold".into(), t]);
    }
    Ok(args)
}

/// The longest a `slo` measurement may take: its `deadlineSeconds`, or the load's duration plus two
/// minutes (start-up, ramp, a slow last request).
fn slo_deadline(s: &SloProvider) -> i64 {
    s.deadline_seconds.unwrap_or_else(|| {
        let load = humantime::parse_duration(&s.duration).map_or(0, |d| d.as_secs() as i64);
        load + 120
    })
}

/// Where a `slo` Job finds the platform's generated API key.
const CLIENT_KEY_DIR: &str = "/var/run/secrets/kyb-client";

fn slo_job_spec(kp: &KybPlatform, s: &SloProvider, args: Vec<String>) -> JobSpec {
    let quantity = |q: &str| Quantity(q.into());
    // The generated key alone (not its entry, not other keys), read-only.
    let key_volume = (!kp.spec.auth.insecure_no_auth).then(|| Volume {
        name: "client-key".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(generated_key_secret(&kp.name_any())),
            items: Some(vec![KeyToPath {
                key: GENERATED_KEY.into(),
                path: GENERATED_KEY.into(),
                mode: None,
            }]),
            default_mode: Some(0o400),
            optional: None,
        }),
        ..Default::default()
    });
    let container = Container {
        volume_mounts: key_volume.as_ref().map(|v| {
            vec![VolumeMount {
                name: v.name.clone(),
                mount_path: CLIENT_KEY_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            }]
        }),
        name: LOADTEST.into(),
        image: Some(s.image.clone().unwrap_or_else(|| kp.spec.image.clone())),
        image_pull_policy: Some(
            match kp.spec.image_pull_policy {
                PullPolicy::Always => "Always",
                PullPolicy::IfNotPresent => "IfNotPresent",
                PullPolicy::Never => "Never",
            }
            .into(),
        ),
        args: Some(args),
        security_context: Some(restricted_container_context()),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), quantity("100m")),
                ("memory".into(), quantity("64Mi")),
            ])),
            limits: Some(BTreeMap::from([("memory".into(), quantity("256Mi"))])),
            ..Default::default()
        }),
        // On failure the log's tail (the SLO report) becomes the termination message.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    };
    JobSpec {
        // A verdict (1 failed, 3 inconclusive) or a usage error (2) is final; anything else (the pod
        // evicted, OOM-killed) is retried once.
        backoff_limit: Some(1),
        pod_failure_policy: Some(PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailJob".into(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(LOADTEST.into()),
                    operator: "In".into(),
                    values: vec![1, 2, 3],
                }),
                on_pod_conditions: None,
            }],
        }),
        active_deadline_seconds: Some(slo_deadline(s)),
        ttl_seconds_after_finished: Some(KEEP_FINISHED_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                // The instance label lets the platform's NetworkPolicy admit these pods.
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
                    ("app.kubernetes.io/component".into(), COMPONENT.into()),
                    ("app.kubernetes.io/instance".into(), kp.name_any()),
                ])),
                annotations: (!s.pod_annotations.is_empty()).then(|| s.pod_annotations.clone()),
                ..Default::default()
            }),
            spec: Some({
                let mut pod = PodSpec {
                    restart_policy: Some("Never".into()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(pod_security_context()),
                    containers: vec![container],
                    volumes: key_volume.map(|v| vec![v]),
                    ..Default::default()
                };
                kp.spec.scheduling.place(&mut pod);
                pod
            }),
        },
        ..Default::default()
    }
}

/// The longest one measurement of `metric` may take.
pub fn deadline(metric: &Metric) -> i64 {
    match (&metric.provider.job, &metric.provider.slo) {
        (Some(j), _) => j.deadline_seconds,
        (None, Some(s)) => slo_deadline(s),
        (None, None) => 0,
    }
}

fn condition<'a>(
    job: &'a Job,
    type_: &str,
) -> Option<&'a k8s_openapi::api::batch::v1::JobCondition> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
}

/// Whether the Job has finished, either way.
pub fn finished(job: &Job) -> bool {
    condition(job, "Complete").is_some() || condition(job, "Failed").is_some()
}

/// The exit code in the Job controller's pod-failure-policy message ("Container loadtest for pod
/// ns/p failed with exit code 3 matching FailJob rule at index 0").
fn exit_code(message: &str) -> Option<i32> {
    let rest = &message[message.find("exit code ")? + "exit code ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What a finished Job says (`None`: still running). A `job` metric's Job passes by completing and
/// fails by failing; a `slo` metric's says more by its exit code: 1 the SLOs failed, 3 the check could
/// not decide (no data), 2 the load test could not run (an error, like an unreachable Prometheus).
pub fn outcome(job: &Job, slo: bool) -> Option<Observation> {
    let name = job.name_any();
    if condition(job, "Complete").is_some() {
        let why = if slo { "every SLO passed" } else { "completed" };
        return Some(Observation::Finished(
            Verdict::Passed,
            format!("Job {name} {why}"),
        ));
    }
    let failed = condition(job, "Failed")?;
    let reason = failed.reason.clone().unwrap_or_default();
    let message = failed.message.clone().unwrap_or_default();
    let said = format!("Job {name} failed: {reason}: {message}");
    let code = exit_code(&message).filter(|_| reason == "PodFailurePolicy");
    Some(match (slo, reason.as_str(), code) {
        (_, "DeadlineExceeded", _) => Observation::Finished(Verdict::Failed, said),
        (false, _, _) => Observation::Finished(Verdict::Failed, said),
        (true, _, Some(1)) => {
            Observation::Finished(Verdict::Failed, format!("an SLO failed; {said}"))
        }
        (true, _, Some(3)) => Observation::Finished(
            Verdict::Undecided,
            format!("the SLO check was inconclusive; {said}"),
        ),
        (true, _, _) => Observation::Error(format!("the load test did not run; {said}")),
    })
}

/// Whether an unfinished Job is past its deadline and the grace after it.
pub fn overdue(job: &Job, deadline_seconds: i64, now: Timestamp) -> bool {
    let Some(created) = job.metadata.creation_timestamp.as_ref() else {
        return false;
    };
    let limit = SignedDuration::from_secs(deadline_seconds.saturating_add(GRACE_SECONDS));
    !finished(job) && created.0.checked_add(limit).is_ok_and(|t| now > t)
}

#[cfg(test)]
mod tests;
