//! The analysis runs a rollout asks for (`progressive::Wanted`): each becomes a KybAnalysisRun owned by
//! the KybPlatform, made from its templates, measured by the operator when a measurement is due and
//! judged by `assess`. Its status holds every measurement, so a promotion or an abort can be traced to
//! the numbers behind it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::assess::{self, Observation, Verdict, ERROR, RUNNING};
use super::crd::{
    Arg, KybAnalysisRun, KybAnalysisRunSpec, KybAnalysisRunStatus, KybAnalysisTemplate,
    KybAnalysisTemplateSpec, Measurement, Metric, MetricResult,
};
use super::{jobs, providers};
use crate::operator::build::FIELD_MANAGER;
use crate::operator::controller::{cached, delete, Context, Error};
use crate::operator::crd::{AnalysisRef, AnalysisStatus, KybPlatform};
use crate::operator::progressive::Wanted;

/// `<platform>-<revision>-<purpose>-<attempt>`: one run per rollout attempt and purpose.
pub fn run_name(platform: &str, w: &Wanted) -> String {
    format!("{platform}-{}-{}-{}", w.revision, w.purpose, w.attempt)
}

/// Arguments every run has without declaring them: the KybPlatform's own SLOs, so one SLO spec serves
/// `kybctl slo check` in CI and the rollout (`result <= {{args.slo-p95-latency-seconds}}`).
pub fn platform_args(kp: &KybPlatform) -> Vec<Arg> {
    let slos = &kp.spec.slos;
    let p95 = humantime::parse_duration(&slos.p95_latency)
        .map(|d| d.as_secs_f64().to_string())
        .unwrap_or_default();
    [
        ("slo-p95-latency-seconds", p95),
        (
            "slo-error-ratio",
            (slos.error_rate_percent / 100.0).to_string(),
        ),
        (
            "slo-cache-hit-ratio",
            (slos.cache_hit_rate_percent / 100.0).to_string(),
        ),
        ("slo-throughput-rpm", slos.throughput_rpm.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| Arg {
        name: name.into(),
        value: Some(value),
    })
    .collect()
}

/// A run's arguments and metrics from its templates: the platform's arguments, each template's
/// defaults, then the values the rollout gives; arguments are substituted in the conditions too. An
/// argument left without a value, or two metrics of one name, is an error.
pub fn resolve(
    templates: &[(String, KybAnalysisTemplateSpec)],
    reference: &AnalysisRef,
    implicit: &[Arg],
) -> Result<(Vec<Arg>, Vec<Metric>), String> {
    let mut args: BTreeMap<String, Option<String>> = implicit
        .iter()
        .map(|a| (a.name.clone(), a.value.clone()))
        .collect();
    let mut metrics: Vec<Metric> = Vec::new();
    for (name, t) in templates {
        for a in &t.args {
            args.entry(a.name.clone()).or_insert(a.value.clone());
        }
        for m in &t.metrics {
            if metrics.iter().any(|x| x.name == m.name) {
                return Err(format!("metric {} appears twice (template {name})", m.name));
            }
            metrics.push(m.clone());
        }
    }
    for a in &reference.args {
        if !args.contains_key(&a.name) {
            return Err(format!(
                "argument {} is not declared by the templates",
                a.name
            ));
        }
        args.insert(a.name.clone(), Some(a.value.clone()));
    }
    let args = args
        .into_iter()
        .map(|(name, value)| match value {
            Some(v) => Ok(Arg {
                name,
                value: Some(v),
            }),
            None => Err(format!("argument {name} has no value")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    for m in &mut metrics {
        for c in [&mut m.success_condition, &mut m.failure_condition]
            .into_iter()
            .flatten()
        {
            *c = providers::substitute(c, &args);
        }
        if let Some(j) = &m.provider.job {
            jobs::validate(j, &args).map_err(|e| format!("metric {}: {e}", m.name))?;
        }
    }
    Ok((args, metrics))
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// The run's status at creation: Running with an empty result per metric, or Error saying why it
/// cannot run.
fn initial_status(metrics: &[Metric], problem: Option<String>) -> KybAnalysisRunStatus {
    KybAnalysisRunStatus {
        phase: if problem.is_some() { ERROR } else { RUNNING }.into(),
        message: problem.unwrap_or_default(),
        started_at: Some(Time(now())),
        metric_results: metrics
            .iter()
            .map(|m| MetricResult {
                name: m.name.clone(),
                phase: RUNNING.into(),
                dry_run: m.dry_run,
                ..Default::default()
            })
            .collect(),
    }
}

async fn templates(
    ctx: &Context,
    ns: &str,
    reference: &AnalysisRef,
) -> Result<Result<Vec<(String, KybAnalysisTemplateSpec)>, String>, Error> {
    let api = Api::<KybAnalysisTemplate>::namespaced(ctx.client.clone(), ns);
    let mut out = Vec::new();
    for t in &reference.templates {
        ctx.metrics.reads.inc();
        match api.get_opt(&t.template_name).await? {
            Some(found) => out.push((t.template_name.clone(), found.spec)),
            None => {
                return Ok(Err(format!(
                    "KybAnalysisTemplate {} not found in namespace {ns}",
                    t.template_name
                )))
            }
        }
    }
    Ok(Ok(out))
}

async fn create(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    name: &str,
    w: &Wanted,
) -> Result<KybAnalysisRun, Error> {
    let resolved = match templates(ctx, ns, &w.reference).await? {
        Ok(t) => resolve(&t, &w.reference, &platform_args(kp)),
        Err(e) => Err(e),
    };
    let (args, metrics, problem) = match resolved {
        Ok((a, m)) => (a, m, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e)),
    };
    let platform = kp.name_any();
    let run = KybAnalysisRun {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/instance".into(), platform.clone()),
                ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
                ("kyb.io/revision".into(), w.revision.clone()),
                ("kyb.io/analysis-purpose".into(), w.purpose.clone()),
            ])),
            owner_references: kp.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: KybAnalysisRunSpec {
            platform,
            revision: w.revision.clone(),
            purpose: w.purpose.clone(),
            templates: w
                .reference
                .templates
                .iter()
                .map(|t| t.template_name.clone())
                .collect(),
            args,
            metrics: metrics.clone(),
        },
        status: None,
    };
    let api = Api::<KybAnalysisRun>::namespaced(ctx.client.clone(), ns);
    ctx.metrics.writes.inc();
    let mut created = api
        .patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&run),
        )
        .await?;
    let status = initial_status(&metrics, problem);
    write_status(ctx, &api, name, &status).await?;
    created.status = Some(status);
    Ok(created)
}

async fn write_status(
    ctx: &Context,
    api: &Api<KybAnalysisRun>,
    name: &str,
    status: &KybAnalysisRunStatus,
) -> Result<(), Error> {
    ctx.metrics.writes.inc();
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}

/// Header values of a web metric, resolved from Secrets here and never written anywhere.
async fn headers(
    ctx: &Context,
    ns: &str,
    metric: &Metric,
) -> Result<Result<BTreeMap<String, String>, String>, Error> {
    let mut out = BTreeMap::new();
    let Some(web) = &metric.provider.web else {
        return Ok(Ok(out));
    };
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    for h in &web.headers {
        let value = match (&h.value, &h.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(r)) => {
                ctx.metrics.reads.inc();
                let found = secrets.get_opt(&r.name).await?;
                let bytes = found
                    .and_then(|s| s.data)
                    .and_then(|d| d.get(&r.key).cloned());
                match bytes.map(|b| String::from_utf8(b.0)) {
                    Some(Ok(v)) => v,
                    _ => {
                        return Ok(Err(format!(
                            "header {}: Secret {} has no UTF-8 key {}",
                            h.name, r.name, r.key
                        )))
                    }
                }
            }
            (None, None) => String::new(),
        };
        out.insert(h.name.clone(), value);
    }
    Ok(Ok(out))
}

/// How often a running measurement Job is looked at when no event about it arrives first (the Job
/// watch normally brings the reconcile as soon as it finishes).
const JOB_POLL: SignedDuration = SignedDuration::from_secs(5);

/// Takes measurement `n` of `metric`. `None`: its Job is still running.
async fn observe(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    run: &KybAnalysisRun,
    metric: &Metric,
    n: i32,
) -> Result<Option<(String, Observation)>, Error> {
    let p = &metric.provider;
    let args = &run.spec.args;
    Ok(Some(match (&p.prometheus, &p.web) {
        (Some(prom), _) => {
            let (query, obs) = providers::prometheus(&ctx.http, prom, args).await;
            // The value query, and the sample count's unless the first failed or was empty.
            let sent = match (&obs, &prom.samples_query) {
                (Observation::Value { .. }, Some(_)) => 2,
                _ => 1,
            };
            ctx.metrics.analysis_requests.inc_by(sent);
            (query, obs)
        }
        (None, Some(web)) => match headers(ctx, ns, metric).await? {
            Ok(h) => {
                ctx.metrics.analysis_requests.inc();
                providers::web(&ctx.http, web, args, &h).await
            }
            Err(e) => (web.url.clone(), Observation::Error(e)),
        },
        (None, None) => return observe_job(ctx, ns, kp, run, metric, n).await,
    }))
}

/// Measurement `n` of a `job` or `slo` metric: its Job is made when first due and read from the
/// operator's Job cache after that; one past its deadline is deleted and fails the measurement.
async fn observe_job(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    run: &KybAnalysisRun,
    metric: &Metric,
    n: i32,
) -> Result<Option<(String, Observation)>, Error> {
    let (job, what) = match jobs::build(run, kp, metric, n) {
        Ok(built) => built,
        Err(e) => return Ok(Some((String::new(), Observation::Error(e)))),
    };
    let name = job.name_any();
    let live = match cached(&ctx.caches.jobs, ns, &name) {
        Some(live) => (*live).clone(),
        None => {
            let api = Api::<Job>::namespaced(ctx.client.clone(), ns);
            ctx.metrics.writes.inc();
            match api.create(&PostParams::default(), &job).await {
                Ok(created) => {
                    ctx.metrics.analysis_requests.inc();
                    created
                }
                // Made by an earlier reconcile the cache has not caught up with.
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
                // Refused (an invalid JobSpec in the template): the apiserver's reason is the record.
                Err(kube::Error::Api(e)) if e.code == 422 || e.code == 400 => {
                    return Ok(Some((
                        what,
                        Observation::Error(format!("Job {name} refused: {}", e.message)),
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if let Some(obs) = jobs::outcome(&live, metric.provider.slo.is_some()) {
        return Ok(Some((what, obs)));
    }
    let deadline = jobs::deadline(metric);
    if jobs::overdue(&live, deadline, now()) {
        delete::<Job>(&ctx.client, ns, &name, &ctx.metrics).await?;
        let why = format!(
            "Job {name} did not finish within its deadline of {deadline} s (and {} s of grace); deleted",
            jobs::GRACE_SECONDS
        );
        return Ok(Some((what, Observation::Finished(Verdict::Failed, why))));
    }
    Ok(None)
}

/// Deletes the platform's analysis Jobs that are still running for a run that no longer needs them:
/// decided (another metric failed it), or no longer wanted by the rollout (aborted, promoted).
async fn stop_unneeded_jobs(
    ctx: &Context,
    ns: &str,
    platform: &str,
    running: &BTreeSet<String>,
) -> Result<(), Error> {
    let unneeded = ctx.caches.jobs.state_filter(|j| {
        let labels = j.labels();
        j.namespace().as_deref() == Some(ns)
            && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(platform)
            && labels
                .get("app.kubernetes.io/component")
                .map(String::as_str)
                == Some(jobs::COMPONENT)
            && !jobs::finished(j)
            && labels
                .get(jobs::RUN_LABEL)
                .is_none_or(|run| !running.contains(run))
    });
    for job in unneeded {
        delete::<Job>(&ctx.client, ns, &job.name_any(), &ctx.metrics).await?;
    }
    Ok(())
}

/// Takes every measurement that is due, judges it, and returns the run's new status (unchanged when
/// nothing was due) and when the next measurement is due.
async fn measure(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    run: &KybAnalysisRun,
) -> Result<(KybAnalysisRunStatus, Option<Timestamp>), Error> {
    let mut status = run.status.clone().unwrap_or_default();
    let started = status.started_at.as_ref().map_or_else(now, |t| t.0);
    let mut next: Option<Timestamp> = None;
    for metric in &run.spec.metrics {
        let Some(i) = status
            .metric_results
            .iter()
            .position(|r| r.name == metric.name)
        else {
            continue;
        };
        let Some(due) = assess::due(metric, &status.metric_results[i], started) else {
            continue;
        };
        if due > now() {
            next = Some(next.map_or(due, |n| n.min(due)));
            continue;
        }
        let n = status.metric_results[i].count + 1;
        let Some((query, obs)) = observe(ctx, ns, kp, run, metric, n).await? else {
            let poll = now().checked_add(JOB_POLL).unwrap_or_else(|_| now());
            next = Some(next.map_or(poll, |t| t.min(poll)));
            continue;
        };
        let (phase, message) = assess::judge(metric, &obs);
        let (value, samples) = match &obs {
            Observation::Value { value, samples } => (Some(value.to_string()), *samples),
            _ => (None, None),
        };
        ctx.metrics
            .observe_measurement(ns, &run.spec.platform, &metric.name, phase);
        let result = &mut status.metric_results[i];
        assess::record(
            metric,
            result,
            Measurement {
                phase: phase.into(),
                query,
                value,
                samples,
                message,
                at: Time(now()),
            },
        );
        if let Some(due) = assess::due(metric, result, started) {
            next = Some(next.map_or(due, |n| n.min(due)));
        }
    }
    let phase = assess::run_phase(&status.metric_results);
    if phase != status.phase {
        ctx.metrics.observe_run(ns, &run.spec.platform, phase);
    }
    status.message = status
        .metric_results
        .iter()
        .filter(|r| !r.dry_run && r.phase == phase)
        .map(|r| format!("{}: {}", r.name, r.message))
        .next()
        .unwrap_or_default();
    status.phase = phase.into();
    Ok((status, next))
}

/// Creates the wanted runs that do not exist, measures those that are running, and returns each one's
/// state by purpose and how soon a measurement is next due.
pub async fn drive(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    wanted: &[Wanted],
) -> Result<(BTreeMap<String, AnalysisStatus>, Option<Duration>), Error> {
    let api = Api::<KybAnalysisRun>::namespaced(ctx.client.clone(), ns);
    let mut out = BTreeMap::new();
    let mut soonest: Option<Duration> = None;
    let mut running = BTreeSet::new();
    for w in wanted {
        let name = run_name(&kp.name_any(), w);
        ctx.metrics.reads.inc();
        let run = match api.get_opt(&name).await? {
            Some(run) if run.status.is_some() => run,
            _ => create(ctx, ns, kp, &name, w).await?,
        };
        let mut status = run.status.clone().unwrap_or_default();
        if status.phase == RUNNING {
            let (next, due) = measure(ctx, ns, kp, &run).await?;
            if next != status {
                write_status(ctx, &api, &name, &next).await?;
            }
            status = next;
            if let Some(due) = due {
                let wait = due.duration_since(now());
                let wait = Duration::from_millis(wait.as_millis().max(0) as u64);
                soonest = Some(soonest.map_or(wait, |s| s.min(wait)));
            }
        }
        if status.phase == RUNNING {
            running.insert(name.clone());
        }
        out.insert(
            w.purpose.clone(),
            AnalysisStatus {
                purpose: w.purpose.clone(),
                run: name,
                phase: status.phase.clone(),
                message: status.message.clone(),
            },
        );
    }
    stop_unneeded_jobs(ctx, ns, &kp.name_any(), &running).await?;
    Ok((out, soonest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::analysis::crd::{PrometheusProvider, Provider};
    use crate::operator::crd::{AnalysisArg, AnalysisTemplateRef};

    fn template(args: &[(&str, Option<&str>)], metric: &str) -> KybAnalysisTemplateSpec {
        KybAnalysisTemplateSpec {
            args: args
                .iter()
                .map(|(n, v)| Arg {
                    name: (*n).into(),
                    value: v.map(str::to_owned),
                })
                .collect(),
            metrics: vec![Metric {
                interval: "5s".into(),
                success_condition: Some("result <= {{args.slo-error-ratio}}".into()),
                ..Metric::new(
                    metric,
                    Provider {
                        prometheus: Some(PrometheusProvider {
                            address: "http://p".into(),
                            query: "q".into(),
                            samples_query: None,
                        }),
                        ..Default::default()
                    },
                )
            }],
        }
    }

    fn reference(args: &[(&str, &str)]) -> AnalysisRef {
        AnalysisRef {
            templates: vec![AnalysisTemplateRef {
                template_name: "t".into(),
            }],
            args: args
                .iter()
                .map(|(n, v)| AnalysisArg {
                    name: (*n).into(),
                    value: (*v).into(),
                })
                .collect(),
            starting_step: None,
        }
    }

    #[test]
    fn arguments_resolve_from_defaults_then_the_rollout() {
        let t = vec![(
            "t".to_string(),
            template(&[("service-name", None), ("window", Some("1m"))], "m"),
        )];
        let implicit = [Arg {
            name: "slo-error-ratio".into(),
            value: Some("0.001".into()),
        }];
        let (args, metrics) =
            resolve(&t, &reference(&[("service-name", "kyb-canary")]), &implicit).unwrap();
        assert_eq!(
            metrics[0].success_condition.as_deref(),
            Some("result <= 0.001"),
            "arguments reach the conditions"
        );
        assert_eq!(metrics.len(), 1);
        let get = |n: &str| args.iter().find(|a| a.name == n).unwrap().value.clone();
        assert_eq!(get("service-name").as_deref(), Some("kyb-canary"));
        assert_eq!(get("window").as_deref(), Some("1m"));
        assert!(resolve(&t, &reference(&[]), &[])
            .unwrap_err()
            .contains("service-name has no value"));
        assert!(resolve(&t, &reference(&[("nope", "x")]), &[])
            .unwrap_err()
            .contains("not declared"));
        let twice = vec![t[0].clone(), ("u".to_string(), template(&[], "m"))];
        assert!(resolve(&twice, &reference(&[("service-name", "x")]), &[])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn the_platforms_slos_are_arguments() {
        let kp: KybPlatform =
            serde_yaml::from_str(include_str!("../../../manifests/samples/minimal.yaml")).unwrap();
        let args = platform_args(&kp);
        let get = |n: &str| args.iter().find(|a| a.name == n).unwrap().value.clone();
        assert_eq!(get("slo-p95-latency-seconds").as_deref(), Some("0.5"));
        assert_eq!(get("slo-error-ratio").as_deref(), Some("0.001"));
    }

    #[test]
    fn run_names_differ_by_attempt() {
        let w = |attempt| Wanted {
            purpose: "step-3".into(),
            revision: "abc".into(),
            attempt,
            reference: AnalysisRef::default(),
        };
        assert_eq!(run_name("kyb", &w(1)), "kyb-abc-step-3-1");
        assert_ne!(run_name("kyb", &w(1)), run_name("kyb", &w(2)));
    }
}
