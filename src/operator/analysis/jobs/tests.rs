use super::*;
use crate::operator::analysis::crd::{KybAnalysisRunSpec, Provider, SloScenario};
use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

fn platform() -> KybPlatform {
    let mut kp: KybPlatform =
        serde_yaml::from_str(include_str!("../../../../manifests/samples/minimal.yaml")).unwrap();
    kp.metadata.namespace = Some("team".into());
    kp
}

fn run(purpose: &str) -> KybAnalysisRun {
    let mut r = KybAnalysisRun::new(
        "kyb-abc-step-1-1",
        KybAnalysisRunSpec {
            platform: "kyb".into(),
            revision: "abc".into(),
            purpose: purpose.into(),
            templates: vec!["t".into()],
            args: vec![Arg {
                name: "service-name".into(),
                value: Some("kyb-canary".into()),
            }],
            metrics: vec![],
        },
    );
    r.metadata.namespace = Some("team".into());
    r.metadata.uid = Some("uid-1".into());
    r
}

fn metric(provider: Provider) -> Metric {
    Metric::new("smoke", provider)
}

fn job_metric(spec: Value, deadline: i64) -> Metric {
    metric(Provider {
        job: Some(JobProvider {
            metadata: Default::default(),
            spec,
            deadline_seconds: deadline,
        }),
        ..Default::default()
    })
}

fn slo_metric(s: SloProvider) -> Metric {
    metric(Provider {
        slo: Some(s),
        ..Default::default()
    })
}

#[test]
fn job_names_fit_a_label_and_stay_distinct() {
    assert_eq!(
        job_name("kyb-abc-step-1-1", "smoke", 2),
        "kyb-abc-step-1-1-smoke-2"
    );
    let long_run = "a-very-long-platform-name-0123456789-abcdef0123-post-promotion-12";
    let a = job_name(long_run, "error-ratio", 1);
    let b = job_name(long_run, "error-ratio", 2);
    assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(a, job_name(long_run, "error-ratio", 1), "deterministic");
    assert!(!a.contains("--"));
}

#[test]
fn a_job_metric_becomes_its_template_with_arguments_and_a_capped_deadline() {
    let spec = json!({
        "activeDeadlineSeconds": 9999,
        "backoffLimit": 0,
        "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "smoke", "image": "curl:8",
                "args": ["-f", "http://{{args.service-name}}/ready"]}]
        }}
    });
    let (job, what) = build(&run("step-1"), &platform(), &job_metric(spec, 30), 2).unwrap();
    assert_eq!(
        job.metadata.name.as_deref(),
        Some("kyb-abc-step-1-1-smoke-2")
    );
    let spec = job.spec.as_ref().unwrap();
    assert_eq!(
        spec.active_deadline_seconds,
        Some(30),
        "capped at the deadline"
    );
    assert_eq!(spec.ttl_seconds_after_finished, Some(KEEP_FINISHED_SECONDS));
    let c = &spec.template.spec.as_ref().unwrap().containers[0];
    assert_eq!(c.args.as_ref().unwrap()[1], "http://kyb-canary/ready");
    assert_eq!(
        what,
        "Job kyb-abc-step-1-1-smoke-2: curl:8 -f http://kyb-canary/ready"
    );
    let labels = job.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[RUN_LABEL], "kyb-abc-step-1-1");
    assert_eq!(labels["app.kubernetes.io/instance"], "kyb");
    assert_eq!(labels["app.kubernetes.io/component"], COMPONENT);
    let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("KybAnalysisRun", "uid-1")
    );

    let shorter =
        json!({"activeDeadlineSeconds": 5, "template": {"spec": {"containers": [{"name": "x"}]}}});
    let (job, _) = build(&run("step-1"), &platform(), &job_metric(shorter, 30), 1).unwrap();
    assert_eq!(
        job.spec.unwrap().active_deadline_seconds,
        Some(5),
        "a shorter own deadline stays"
    );

    let wrong = json!({"template": {"spec": {"containers": "not a list"}}});
    let err = build(&run("step-1"), &platform(), &job_metric(wrong, 30), 1).unwrap_err();
    assert!(err.contains("not a batch/v1 JobSpec"), "{err}");
}

#[test]
fn substitution_cannot_change_the_documents_shape() {
    let mut v = json!({"a": ["{{args.x}}", {"b": "{{args.x}}"}], "n": 1});
    let args = [Arg {
        name: "x".into(),
        value: Some(r#"", "evil": "1"#.into()),
    }];
    substitute_strings(&mut v, &args);
    assert_eq!(v["a"][0], r#"", "evil": "1"#);
    assert_eq!(v["a"][1]["b"], r#"", "evil": "1"#);
    assert_eq!(v.as_object().unwrap().len(), 2);
}

#[test]
fn a_slo_metric_loads_the_revision_under_analysis_with_the_platforms_slos() {
    let kp = platform();
    let s = SloProvider {
        users: 20,
        duration: "1m".into(),
        rate: Some(50),
        scenario: SloScenario::ClassifyCached,
        ..Default::default()
    };
    let args = slo_command(&kp, &s, "step-2", Some(500)).unwrap();
    let value = |flag: &str| {
        let i = args.iter().position(|a| a == flag).unwrap();
        args[i + 1].clone()
    };
    assert_eq!(args[0], "loadtest");
    assert_eq!(value("--target"), "http://kyb-canary.team.svc");
    assert_eq!(value("--scenario"), "classify-cached");
    assert_eq!(value("--users"), "20");
    assert_eq!(value("--duration"), "1m");
    assert_eq!(value("--rate"), "50");
    assert_eq!(value("--min-samples"), "500");
    let thresholds: Vec<String> = args
        .iter()
        .zip(args.iter().skip(1))
        .filter(|(f, _)| *f == "--threshold")
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(
        thresholds,
        thresholds_of(&kp.spec.slos).unwrap(),
        "the same expressions `kybctl loadtest --platform` gives `slo check`"
    );

    let target = |purpose: &str, service: Option<SloService>| {
        let s = SloProvider {
            service,
            ..Default::default()
        };
        slo_command(&kp, &s, purpose, None).unwrap()[2].clone()
    };
    assert_eq!(target("pre-promotion", None), "http://kyb-preview.team.svc");
    assert_eq!(target("post-promotion", None), "http://kyb.team.svc");
    assert_eq!(target("background", None), "http://kyb-canary.team.svc");
    assert_eq!(
        target("step-1", Some(SloService::Stable)),
        "http://kyb.team.svc"
    );
    assert!(slo_command(&kp, &SloProvider::default(), "step-1", None)
        .unwrap()
        .windows(2)
        .any(|w| w == ["--min-samples", "100"]));
}

#[test]
fn a_slo_job_is_restricted_and_fails_fast_on_a_verdict() {
    let s = SloProvider {
        duration: "30s".into(),
        pod_annotations: BTreeMap::from([("sidecar.istio.io/inject".into(), "false".into())]),
        ..Default::default()
    };
    let (job, what) = build(&run("step-1"), &platform(), &slo_metric(s), 1).unwrap();
    assert!(what.starts_with("Job kyb-abc-step-1-1-smoke-1: kybctl loadtest --target "));
    let spec = job.spec.unwrap();
    assert_eq!(
        spec.active_deadline_seconds,
        Some(150),
        "30 s of load plus two minutes"
    );
    let rule = &spec.pod_failure_policy.unwrap().rules[0];
    assert_eq!(rule.action, "FailJob");
    assert_eq!(rule.on_exit_codes.as_ref().unwrap().values, vec![1, 2, 3]);
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
    assert_eq!(pod.automount_service_account_token, Some(false));
    let c = &pod.containers[0];
    assert_eq!(c.image.as_deref(), Some(platform().spec.image.as_str()));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        spec.template.metadata.unwrap().annotations.unwrap()["sidecar.istio.io/inject"],
        "false"
    );
}

fn job_with(condition: Option<(&str, &str, &str)>, created: i64) -> Job {
    let mut j = Job::default();
    j.metadata.name = Some("j".into());
    j.metadata.creation_timestamp = Some(Time(Timestamp::from_second(created).unwrap()));
    j.status = Some(JobStatus {
        conditions: condition.map(|(t, reason, message)| {
            vec![JobCondition {
                type_: t.into(),
                status: "True".into(),
                reason: Some(reason.into()),
                message: Some(message.into()),
                ..Default::default()
            }]
        }),
        ..Default::default()
    });
    j
}

#[test]
fn a_finished_job_is_read_by_its_conditions_and_exit_code() {
    let policy = |code: i32| {
        format!(
            "Container loadtest for pod team/j-x failed with exit code {code} matching FailJob rule at index 0"
        )
    };
    let phase = |o: Option<Observation>| match o {
        Some(Observation::Finished(v, _)) => format!("{v:?}"),
        Some(Observation::Error(_)) => "Error".into(),
        other => format!("{other:?}"),
    };
    assert_eq!(phase(outcome(&job_with(None, 0), true)), "None");
    assert_eq!(
        phase(outcome(&job_with(Some(("Complete", "", "")), 0), true)),
        "Passed"
    );
    let failed = |reason: &str, message: &str| job_with(Some(("Failed", reason, message)), 0);
    assert_eq!(
        phase(outcome(&failed("PodFailurePolicy", &policy(1)), true)),
        "Failed"
    );
    assert_eq!(
        phase(outcome(&failed("PodFailurePolicy", &policy(3)), true)),
        "Undecided"
    );
    assert_eq!(
        phase(outcome(&failed("PodFailurePolicy", &policy(2)), true)),
        "Error"
    );
    assert_eq!(
        phase(outcome(&failed("BackoffLimitExceeded", "x"), true)),
        "Error"
    );
    assert_eq!(
        phase(outcome(
            &failed("DeadlineExceeded", "Job was active longer"),
            true
        )),
        "Failed"
    );
    // A `job` metric: failing is failing, whatever the code.
    assert_eq!(
        phase(outcome(&failed("PodFailurePolicy", &policy(3)), false)),
        "Failed"
    );
    assert_eq!(
        phase(outcome(&failed("BackoffLimitExceeded", "x"), false)),
        "Failed"
    );
    let Some(Observation::Finished(_, why)) =
        outcome(&failed("PodFailurePolicy", &policy(1)), true)
    else {
        unreachable!()
    };
    assert!(
        why.contains("exit code 1"),
        "the record keeps the Job's own words: {why}"
    );
}

#[test]
fn an_unfinished_job_is_overdue_after_its_deadline_and_the_grace() {
    let now = |s: i64| Timestamp::from_second(s).unwrap();
    let running = job_with(None, 1000);
    assert!(!overdue(&running, 30, now(1000 + 30 + GRACE_SECONDS)));
    assert!(overdue(&running, 30, now(1000 + 31 + GRACE_SECONDS)));
    let done = job_with(Some(("Complete", "", "")), 1000);
    assert!(
        !overdue(&done, 30, now(5000)),
        "a finished Job is never overdue"
    );
}

#[test]
fn an_empty_slo_provider_is_its_default() {
    assert_eq!(
        serde_json::from_value::<SloProvider>(json!({})).unwrap(),
        SloProvider::default()
    );
}
