use super::*;
use crate::operator::analysis::crd::{PrometheusProvider, Provider};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn metric(success: Option<&str>, failure: Option<&str>) -> Metric {
    let prometheus = PrometheusProvider {
        address: "http://p".into(),
        query: "q".into(),
        samples_query: None,
    };
    Metric {
        interval: "5s".into(),
        count: 3,
        success_condition: success.map(str::to_owned),
        failure_condition: failure.map(str::to_owned),
        consecutive_error_limit: 2,
        ..Metric::new(
            "success-rate",
            Provider {
                prometheus: Some(prometheus),
                ..Default::default()
            },
        )
    }
}

fn value(v: f64) -> Observation {
    Observation::Value {
        value: v,
        samples: Some(100),
    }
}

#[test]
fn conditions_decide_a_measurement() {
    let m = metric(Some("result <= 0.01"), None);
    assert_eq!(judge(&m, &value(0.0)).0, SUCCESSFUL);
    assert_eq!(judge(&m, &value(0.5)).0, FAILED);
    let m = metric(None, Some("result > 0.05"));
    assert_eq!(judge(&m, &value(0.5)).0, FAILED);
    assert_eq!(judge(&m, &value(0.01)).0, SUCCESSFUL);
    let both = metric(Some("result < 0.01"), Some("result > 0.05"));
    assert_eq!(judge(&both, &value(0.03)).0, INCONCLUSIVE);
    let samples = metric(Some("result < 0.01 && samples >= 50"), None);
    assert_eq!(judge(&samples, &value(0.0)).0, SUCCESSFUL);
}

#[test]
fn no_data_never_passes() {
    let mut m = metric(Some("result <= 0.01"), None);
    m.min_samples = Some(10);
    for obs in [
        Observation::Empty,
        value(f64::NAN),
        Observation::Value {
            value: 0.0,
            samples: Some(3),
        },
        Observation::Value {
            value: 0.0,
            samples: None,
        },
    ] {
        assert_eq!(judge(&m, &obs).0, INCONCLUSIVE, "{obs:?}");
        let mut fail = m.clone();
        fail.no_data = NoData::Fail;
        assert_eq!(judge(&fail, &obs).0, FAILED, "{obs:?}");
    }
}

#[test]
fn a_broken_condition_is_an_error_not_a_verdict() {
    let m = metric(Some("result <"), None);
    let (phase, message) = judge(&m, &value(0.0));
    assert_eq!(phase, ERROR);
    assert!(message.contains("result <"), "{message}");
    let m = metric(Some("result + 1.0"), None);
    assert_eq!(judge(&m, &value(0.0)).0, ERROR);
}

fn measurement(phase: &str, secs: i64) -> Measurement {
    Measurement {
        phase: phase.into(),
        query: "q".into(),
        value: None,
        samples: None,
        message: String::new(),
        at: Time(Timestamp::from_second(secs).unwrap()),
    }
}

#[test]
fn limits_decide_a_metric() {
    let m = metric(Some("result <= 0.01"), None);
    let mut r = MetricResult::default();
    record(&m, &mut r, measurement(SUCCESSFUL, 1));
    assert_eq!(r.phase, RUNNING);
    record(&m, &mut r, measurement(FAILED, 2));
    assert_eq!(r.phase, FAILED, "failureLimit 0: the first failure fails");

    let mut lenient = m.clone();
    lenient.failure_limit = 1;
    let mut r = MetricResult::default();
    for (i, p) in [SUCCESSFUL, FAILED, SUCCESSFUL].into_iter().enumerate() {
        record(&lenient, &mut r, measurement(p, i as i64));
    }
    assert_eq!(r.phase, SUCCESSFUL, "one failure tolerated, count reached");

    // Errors: tolerated up to the limit, not counted towards `count`, then no data.
    let mut r = MetricResult::default();
    for i in 0..3 {
        record(&m, &mut r, measurement(ERROR, i));
    }
    assert_eq!(r.phase, INCONCLUSIVE);
    let mut r = MetricResult::default();
    for (i, p) in [ERROR, ERROR, SUCCESSFUL, SUCCESSFUL, SUCCESSFUL]
        .into_iter()
        .enumerate()
    {
        record(&m, &mut r, measurement(p, i as i64));
    }
    assert_eq!(r.phase, SUCCESSFUL);
    assert_eq!((r.error, r.consecutive_error), (2, 0));
}

#[test]
fn a_run_is_decided_by_its_deciding_metrics() {
    let r = |phase: &str, dry_run: bool| MetricResult {
        phase: phase.into(),
        dry_run,
        ..Default::default()
    };
    assert_eq!(
        run_phase(&[r(SUCCESSFUL, false), r(FAILED, true)]),
        SUCCESSFUL
    );
    assert_eq!(run_phase(&[r(RUNNING, false), r(FAILED, false)]), FAILED);
    assert_eq!(
        run_phase(&[r(INCONCLUSIVE, false), r(RUNNING, false)]),
        INCONCLUSIVE
    );
    assert_eq!(
        run_phase(&[r(SUCCESSFUL, false), r(RUNNING, false)]),
        RUNNING
    );
    assert_eq!(run_phase(&[r("", false)]), RUNNING);
}

#[test]
fn measurements_are_due_after_the_delay_then_every_interval() {
    let mut m = metric(Some("result <= 0.01"), None);
    m.initial_delay = Some("10s".into());
    let start = Timestamp::from_second(1000).unwrap();
    let mut r = MetricResult::default();
    assert_eq!(
        due(&m, &r, start),
        Some(Timestamp::from_second(1010).unwrap())
    );
    record(&m, &mut r, measurement(SUCCESSFUL, 1012));
    assert_eq!(
        due(&m, &r, start),
        Some(Timestamp::from_second(1017).unwrap())
    );
    record(&m, &mut r, measurement(FAILED, 1017));
    assert_eq!(due(&m, &r, start), None, "decided");
}

#[test]
fn a_jobs_verdict_decides_and_undecided_is_no_data() {
    let mut m = metric(None, None);
    let fin = |v, why: &str| Observation::Finished(v, why.into());
    assert_eq!(judge(&m, &fin(Verdict::Passed, "Complete")).0, SUCCESSFUL);
    assert_eq!(judge(&m, &fin(Verdict::Failed, "exit code 1")).0, FAILED);
    let (phase, why) = judge(&m, &fin(Verdict::Undecided, "exit code 3"));
    assert_eq!(
        (phase, why.as_str()),
        (INCONCLUSIVE, "no data: exit code 3")
    );
    m.no_data = NoData::Fail;
    assert_eq!(
        judge(&m, &fin(Verdict::Undecided, "exit code 3")).0,
        FAILED,
        "undecided is never a pass"
    );
}
