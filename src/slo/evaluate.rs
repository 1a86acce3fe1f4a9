//! Judging thresholds against a result: pass, fail, or inconclusive when the run cannot tell.

use serde::{Serialize, Serializer};

use super::result::{LoadTestResult, Summary};
use super::threshold::{format_value, Metric, Op, Percentile, Threshold, Unit};

/// A run whose generator reached less than this share of its requested rate measured the generator, not
/// the service.
const MIN_ACHIEVED_SHARE: f64 = 0.95;

/// A percentile is only trusted with at least this many samples beyond it: an estimate of p99 from 200
/// samples rests on 2 requests. So p50 needs 20 samples, p90 100, p95 200, p99 1,000, p99.9 10,000.
const MIN_TAIL_SAMPLES: u64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A threshold as given.
    Threshold,
    /// A comparison with the `--baseline` result.
    Baseline,
}

/// One row of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Check {
    /// The expression (`p95<500ms`) or the baseline comparison (`p95 vs baseline`).
    pub name: String,
    pub kind: Kind,
    /// The request type, or `overall`.
    pub scope: String,
    pub metric: &'static str,
    /// The unit `measured` and `limit` are in: the one the threshold was written in.
    #[serde(serialize_with = "unit_label")]
    pub unit: Unit,
    /// `<`, `<=`, `>` or `>=`: the comparison that has to hold between `measured` and `limit`.
    pub op: &'static str,
    /// `None` when the result has no such value.
    pub measured: Option<f64>,
    /// `None` for a baseline comparison whose baseline has no such value.
    pub limit: Option<f64>,
    pub outcome: Outcome,
    /// Why it failed or was inconclusive; for baseline rows, the change. Empty for a plain pass.
    pub detail: String,
}

impl Check {
    pub fn measured_display(&self) -> String {
        self.measured
            .map(|m| format_value(m, self.unit))
            .unwrap_or_else(|| "-".to_owned())
    }

    pub fn limit_display(&self) -> String {
        match self.limit {
            Some(l) => format!("{}{}", self.op, format_value(l, self.unit)),
            None => "-".to_owned(),
        }
    }
}

/// A canonical value in `unit`, rounded to 6 decimals so that 0.96 shows as 96%, not 95.99999999999999%.
fn in_unit(unit: Unit, canonical: f64) -> f64 {
    (unit.from_canonical(canonical) * 1e6).round() / 1e6
}

fn unit_label<S: Serializer>(unit: &Unit, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match unit {
        Unit::Fraction => "fraction",
        u => u.suffix(),
    })
}

/// Every check of a run, with the overall outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Fail if any check failed, else inconclusive if any was, else pass.
    pub outcome: Outcome,
    pub passed: usize,
    pub failed: usize,
    pub inconclusive: usize,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(checks: Vec<Check>) -> Self {
        let count = |o| checks.iter().filter(|c| c.outcome == o).count();
        let (passed, failed, inconclusive) = (
            count(Outcome::Pass),
            count(Outcome::Fail),
            count(Outcome::Inconclusive),
        );
        let outcome = if failed > 0 {
            Outcome::Fail
        } else if inconclusive > 0 {
            Outcome::Inconclusive
        } else {
            Outcome::Pass
        };
        Self {
            outcome,
            passed,
            failed,
            inconclusive,
            checks,
        }
    }
}

/// A metric read from a result.
#[derive(Debug, Clone, PartialEq)]
enum Measurement {
    /// In canonical units.
    Judgeable(f64),
    /// The run cannot tell; the value is shown when there is one.
    Unjudgeable { value: Option<f64>, why: String },
}

impl Measurement {
    fn value(&self) -> Option<f64> {
        match self {
            Measurement::Judgeable(v) => Some(*v),
            Measurement::Unjudgeable { value, .. } => *value,
        }
    }

    fn missing(why: String) -> Self {
        Measurement::Unjudgeable { value: None, why }
    }

    /// `value`, unless one of the reasons (checked in order) says it cannot be judged.
    fn unless(value: f64, reasons: Option<String>) -> Self {
        match reasons {
            None => Measurement::Judgeable(value),
            Some(why) => Measurement::Unjudgeable {
                value: Some(value),
                why,
            },
        }
    }
}

fn too_few(count: u64, min_samples: u64, what: &str) -> Option<String> {
    (count < min_samples).then(|| format!("{count} {what}, fewer than --min-samples {min_samples}"))
}

fn measure(
    metric: Metric,
    scope: Option<&str>,
    r: &LoadTestResult,
    min_samples: u64,
) -> Measurement {
    match metric {
        Metric::Latency(p) => {
            let summary: &Summary = match scope {
                None => &r.latency_us.overall,
                Some(s) => match r.latency_us.by_type.get(s) {
                    Some(summary) => summary,
                    None => return Measurement::missing(format!("no `{s}` requests recorded")),
                },
            };
            if summary.count == 0 {
                return Measurement::missing("no requests recorded".to_owned());
            }
            Measurement::unless(
                summary.get(p),
                too_few(summary.count, min_samples, "requests")
                    .or_else(|| thin_tail(p, summary.count)),
            )
        }
        Metric::ErrorRate => {
            let total = r.requests.total;
            if total == 0 {
                return Measurement::missing("no requests recorded".to_owned());
            }
            Measurement::unless(
                r.requests.errors as f64 / total as f64,
                too_few(total, min_samples, "requests"),
            )
        }
        Metric::CacheHitRate => match &r.cache {
            Some(c) if c.lookups > 0 => Measurement::unless(
                c.hits as f64 / c.lookups as f64,
                too_few(c.lookups, min_samples, "cache lookups"),
            ),
            _ => Measurement::missing("no cache lookups recorded".to_owned()),
        },
        Metric::Throughput => Measurement::unless(
            r.throughput_rps,
            too_few(r.requests.total, min_samples, "requests").or_else(|| generator_limited(r)),
        ),
    }
}

fn thin_tail(p: Percentile, count: u64) -> Option<String> {
    let per_mille = p.per_mille()?;
    let needed = (MIN_TAIL_SAMPLES * 1000).div_ceil(1000 - per_mille);
    (count < needed).then(|| {
        format!(
            "{} needs at least {needed} samples ({MIN_TAIL_SAMPLES} beyond it), got {count}",
            p.name()
        )
    })
}

/// Why the generator, not the service, set the throughput, if it did.
fn generator_limited(r: &LoadTestResult) -> Option<String> {
    let g = &r.generator;
    if g.saturated {
        return Some("the load generator was saturated".to_owned());
    }
    let requested = g.requested_rps?;
    (g.achieved_rps < MIN_ACHIEVED_SHARE * requested).then(|| {
        format!(
            "the load generator achieved {:.1} rps of the {:.1} requested (below {:.0}%)",
            g.achieved_rps,
            requested,
            MIN_ACHIEVED_SHARE * 100.0
        )
    })
}

pub fn evaluate(t: &Threshold, r: &LoadTestResult, min_samples: u64) -> Check {
    let m = measure(t.metric, t.scope.as_deref(), r, min_samples);
    let measured = m.value().map(|v| in_unit(t.unit, v));
    let (outcome, detail) = match m {
        Measurement::Unjudgeable { why, .. } => (Outcome::Inconclusive, why),
        Measurement::Judgeable(v) if t.op.holds(v, t.limit) => (Outcome::Pass, String::new()),
        Measurement::Judgeable(v) => (
            Outcome::Fail,
            format!(
                "{} is {}, expected {}{}",
                t.metric.name(),
                format_value(t.unit.from_canonical(v), t.unit),
                t.op.symbol(),
                t.limit_display()
            ),
        ),
    };
    Check {
        name: t.expr.clone(),
        kind: Kind::Threshold,
        scope: t.scope_name().to_owned(),
        metric: t.metric.name(),
        unit: t.unit,
        op: t.op.symbol(),
        measured,
        limit: Some(in_unit(t.unit, t.limit)),
        outcome,
        detail,
    }
}

pub fn evaluate_all(thresholds: &[Threshold], r: &LoadTestResult, min_samples: u64) -> Vec<Check> {
    thresholds
        .iter()
        .map(|t| evaluate(t, r, min_samples))
        .collect()
}

/// For every latency percentile and throughput among the thresholds (once per scope and metric), a check
/// that the current run did not regress from `baseline` by more than `tolerance` (a fraction): latency
/// may grow by at most that share, throughput may drop by at most that share.
pub fn compare_with_baseline(
    thresholds: &[Threshold],
    current: &LoadTestResult,
    baseline: &LoadTestResult,
    tolerance: f64,
    min_samples: u64,
) -> Vec<Check> {
    let mut seen: Vec<(Option<&str>, Metric)> = Vec::new();
    let mut checks = Vec::new();
    for t in thresholds {
        let key = (t.scope.as_deref(), t.metric);
        let latency = match t.metric {
            Metric::Latency(_) => true,
            Metric::Throughput => false,
            Metric::ErrorRate | Metric::CacheHitRate => continue,
        };
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);

        let cur = measure(t.metric, key.0, current, min_samples);
        let base = measure(t.metric, key.0, baseline, min_samples);
        let (op, sign) = if latency {
            (Op::Le, 1.0)
        } else {
            (Op::Ge, -1.0)
        };
        let allowed = |b: f64| b * (1.0 + sign * tolerance);
        let limit = base.value().map(allowed);
        let (outcome, detail) = match (&cur, &base) {
            (Measurement::Unjudgeable { why, .. }, _) => (Outcome::Inconclusive, why.clone()),
            (_, Measurement::Unjudgeable { why, .. }) => {
                (Outcome::Inconclusive, format!("baseline: {why}"))
            }
            (Measurement::Judgeable(c), Measurement::Judgeable(b)) => {
                let change = if *b == 0.0 {
                    "baseline is 0".to_owned()
                } else {
                    format!(
                        "{:+.1}% vs baseline {} (tolerance {:.1}%)",
                        (c - b) / b * 100.0,
                        format_value(t.unit.from_canonical(*b), t.unit),
                        tolerance * 100.0
                    )
                };
                if op.holds(*c, allowed(*b)) {
                    (Outcome::Pass, change)
                } else {
                    let verb = if latency { "regressed" } else { "dropped" };
                    (Outcome::Fail, format!("{verb}: {change}"))
                }
            }
        };
        let scope_prefix = key.0.map(|s| format!("{s}:")).unwrap_or_default();
        checks.push(Check {
            name: format!("{scope_prefix}{} vs baseline", t.metric.name()),
            kind: Kind::Baseline,
            scope: t.scope_name().to_owned(),
            metric: t.metric.name(),
            unit: t.unit,
            op: op.symbol(),
            measured: cur.value().map(|v| in_unit(t.unit, v)),
            limit: limit.map(|l| in_unit(t.unit, l)),
            outcome,
            detail,
        });
    }
    checks
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::slo::result::{Cache, Generator, Latency, Requests};
    use crate::slo::threshold::parse;

    pub fn summary(count: u64, p95_ms: f64) -> Summary {
        Summary {
            count,
            p50: p95_ms * 500.0,
            p90: p95_ms * 800.0,
            p95: p95_ms * 1000.0,
            p99: p95_ms * 2000.0,
            p99_9: p95_ms * 4000.0,
            max: p95_ms * 8000.0,
        }
    }

    /// 20,000 requests, p95 at `p95_ms`, 10 errors, 96% cache hits, 200 rps at 200 requested.
    pub fn result(p95_ms: f64) -> LoadTestResult {
        LoadTestResult {
            version: 1,
            started_at: "2026-11-29T03:00:00Z".into(),
            duration_seconds: 100.0,
            requests: Requests {
                total: 20_000,
                errors: 10,
                by_status: BTreeMap::new(),
            },
            throughput_rps: 200.0,
            cache: Some(Cache {
                hits: 19_200,
                lookups: 20_000,
            }),
            latency_us: Latency {
                overall: summary(20_000, p95_ms),
                by_type: BTreeMap::from([("classify".to_owned(), summary(5_000, p95_ms * 2.0))]),
            },
            service_time_us: None,
            warmup: None,
            timeseries: Vec::new(),
            generator: Generator {
                requested_rps: Some(200.0),
                achieved_rps: 200.0,
                saturated: false,
            },
        }
    }

    fn outcome(expr: &str, r: &LoadTestResult) -> Outcome {
        evaluate(&parse(expr).unwrap(), r, 100).outcome
    }

    #[test]
    fn latency_boundaries() {
        let r = result(500.0);
        assert_eq!(outcome("p95<500ms", &r), Outcome::Fail);
        assert_eq!(outcome("p95<=500ms", &r), Outcome::Pass);
        assert_eq!(outcome("p95<0.5s", &r), Outcome::Fail);
        assert_eq!(outcome("p95<500001us", &r), Outcome::Pass);
        assert_eq!(outcome("classify:p95<1s", &r), Outcome::Fail);
        assert_eq!(outcome("classify:p95<=1s", &r), Outcome::Pass);
    }

    #[test]
    fn rates_and_throughput() {
        let r = result(100.0);
        // 10 errors in 20,000 is 0.05%.
        assert_eq!(outcome("error_rate<0.1%", &r), Outcome::Pass);
        assert_eq!(outcome("error_rate<0.05%", &r), Outcome::Fail);
        assert_eq!(outcome("error_rate<=0.0005", &r), Outcome::Pass);
        assert_eq!(outcome("cache_hit_rate>95%", &r), Outcome::Pass);
        assert_eq!(outcome("cache_hit_rate>96%", &r), Outcome::Fail);
        assert_eq!(outcome("throughput>=12000rpm", &r), Outcome::Pass);
        assert_eq!(outcome("throughput>12000rpm", &r), Outcome::Fail);
        assert_eq!(outcome("throughput>199rps", &r), Outcome::Pass);
    }

    #[test]
    fn fail_detail_names_the_measurement() {
        let c = evaluate(&parse("p95<500ms").unwrap(), &result(510.0), 100);
        assert_eq!(c.detail, "p95 is 510ms, expected <500ms");
        assert_eq!(c.measured, Some(510.0));
        assert_eq!(c.limit_display(), "<500ms");
    }

    #[test]
    fn too_few_samples_is_inconclusive() {
        let mut r = result(100.0);
        r.requests.total = 99;
        r.latency_us.overall.count = 99;
        for expr in ["p50<1s", "error_rate<1%", "throughput>1rps"] {
            let c = evaluate(&parse(expr).unwrap(), &r, 100);
            assert_eq!(c.outcome, Outcome::Inconclusive, "{expr}");
            assert!(
                c.detail.contains("fewer than --min-samples 100"),
                "{expr}: {}",
                c.detail
            );
        }
        assert_eq!(
            evaluate(&parse("p50<1s").unwrap(), &r, 99).outcome,
            Outcome::Pass
        );
    }

    #[test]
    fn thin_tails_are_inconclusive() {
        let mut r = result(100.0);
        r.latency_us.overall.count = 9_999;
        let c = evaluate(&parse("p99.9<1s").unwrap(), &r, 100);
        assert_eq!(c.outcome, Outcome::Inconclusive);
        assert!(c.detail.contains("at least 10000 samples"), "{}", c.detail);
        r.latency_us.overall.count = 10_000;
        assert_eq!(outcome("p99.9<1s", &r), Outcome::Pass);
        r.latency_us.overall.count = 999;
        assert_eq!(outcome("p99<1s", &r), Outcome::Inconclusive);
        assert_eq!(outcome("p95<1s", &r), Outcome::Pass);
        assert_eq!(outcome("max<1s", &r), Outcome::Pass);
        r.latency_us.overall.count = 199;
        assert_eq!(outcome("p95<1s", &r), Outcome::Inconclusive);
    }

    #[test]
    fn missing_metrics_are_inconclusive() {
        let mut r = result(100.0);
        assert_eq!(outcome("search:p95<1s", &r), Outcome::Inconclusive);
        r.cache = None;
        assert_eq!(outcome("cache_hit_rate>95%", &r), Outcome::Inconclusive);
        r.cache = Some(Cache {
            hits: 0,
            lookups: 0,
        });
        let c = evaluate(&parse("cache_hit_rate>95%").unwrap(), &r, 100);
        assert_eq!((c.outcome, c.measured), (Outcome::Inconclusive, None));
        assert_eq!(c.detail, "no cache lookups recorded");
    }

    #[test]
    fn a_limited_generator_makes_throughput_inconclusive() {
        let mut r = result(100.0);
        r.generator.achieved_rps = 190.0; // exactly 95%: still trusted
        assert_eq!(outcome("throughput>1rps", &r), Outcome::Pass);
        r.generator.achieved_rps = 189.9;
        assert_eq!(outcome("throughput>1rps", &r), Outcome::Inconclusive);
        // Latency is still judged: the requests that were made were timed.
        assert_eq!(outcome("p95<1s", &r), Outcome::Pass);
        r.generator.achieved_rps = 200.0;
        r.generator.saturated = true;
        assert_eq!(outcome("throughput>1rps", &r), Outcome::Inconclusive);
        r.generator.saturated = false;
        r.generator.requested_rps = None;
        assert_eq!(outcome("throughput>1rps", &r), Outcome::Pass);
    }

    #[test]
    fn report_outcome_is_the_worst() {
        let r = result(100.0);
        let ts: Vec<_> = ["p95<1s", "search:p95<1s"]
            .map(|e| parse(e).unwrap())
            .into();
        let report = Report::new(evaluate_all(&ts, &r, 100));
        assert_eq!(report.outcome, Outcome::Inconclusive);
        let ts: Vec<_> = ["p95<1ms", "search:p95<1s"]
            .map(|e| parse(e).unwrap())
            .into();
        let report = Report::new(evaluate_all(&ts, &r, 100));
        assert_eq!(
            (report.outcome, report.failed, report.inconclusive),
            (Outcome::Fail, 1, 1)
        );
        assert_eq!(Report::new(Vec::new()).outcome, Outcome::Pass);
    }

    #[test]
    fn baseline_regressions() {
        let ts: Vec<_> = [
            "p95<1000ms",
            "p95<2000ms",
            "throughput>1rps",
            "error_rate<1%",
        ]
        .map(|e| parse(e).unwrap())
        .into();
        let base = result(100.0);
        // +10% latency is within a 10% tolerance; throughput unchanged.
        let checks = compare_with_baseline(&ts, &result(110.0), &base, 0.10, 100);
        assert_eq!(
            checks.len(),
            2,
            "one row per metric and scope, none for error_rate"
        );
        assert_eq!(checks[0].name, "p95 vs baseline");
        assert_eq!(checks[0].kind, Kind::Baseline);
        assert_eq!(checks[0].outcome, Outcome::Pass);
        assert!(
            checks[0].detail.contains("+10.0% vs baseline 100ms"),
            "{}",
            checks[0].detail
        );
        assert_eq!(checks[1].outcome, Outcome::Pass);

        let checks = compare_with_baseline(&ts, &result(111.0), &base, 0.10, 100);
        assert_eq!(checks[0].outcome, Outcome::Fail);
        assert!(
            checks[0].detail.starts_with("regressed: +11.0%"),
            "{}",
            checks[0].detail
        );

        let mut slow = result(100.0);
        slow.throughput_rps = 179.0;
        let checks = compare_with_baseline(&ts, &slow, &base, 0.10, 100);
        assert_eq!(checks[0].outcome, Outcome::Pass);
        assert_eq!(checks[1].name, "throughput vs baseline");
        assert_eq!(checks[1].outcome, Outcome::Fail);
        assert!(
            checks[1].detail.starts_with("dropped: -10.5%"),
            "{}",
            checks[1].detail
        );
        slow.throughput_rps = 180.0;
        let checks = compare_with_baseline(&ts, &slow, &base, 0.10, 100);
        assert_eq!(checks[1].outcome, Outcome::Pass);
    }

    #[test]
    fn baseline_without_samples_is_inconclusive() {
        let ts = vec![parse("classify:p99<1s").unwrap()];
        let mut base = result(100.0);
        base.latency_us.by_type.clear();
        let checks = compare_with_baseline(&ts, &result(100.0), &base, 0.10, 100);
        assert_eq!(checks[0].name, "classify:p99 vs baseline");
        assert_eq!(checks[0].outcome, Outcome::Inconclusive);
        assert!(
            checks[0].detail.starts_with("baseline: no `classify`"),
            "{}",
            checks[0].detail
        );
    }
}
