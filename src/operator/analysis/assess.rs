//! Judging measurements and runs. Pure: a measurement's verdict comes from its value and the metric's
//! CEL conditions (evaluated by the `cel` crate, not a parser of our own), a metric's from its counts and
//! limits, a run's from its metrics. No data (an empty result, NaN, too few samples, a provider that keeps
//! failing) is never a pass: it counts as inconclusive or failed, as the metric's `noData` says.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::crd::{Measurement, Metric, MetricResult, NoData};

pub const RUNNING: &str = "Running";
pub const SUCCESSFUL: &str = "Successful";
pub const FAILED: &str = "Failed";
pub const INCONCLUSIVE: &str = "Inconclusive";
pub const ERROR: &str = "Error";

/// What a provider answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    Value {
        value: f64,
        samples: Option<i64>,
    },
    /// The query matched nothing (an empty vector: no traffic, or a wrong label).
    Empty,
    /// The provider could not answer (unreachable, bad query, bad JSON).
    Error(String),
    /// A Job's own verdict (the `job` and `slo` providers), with what it said.
    Finished(Verdict, String),
}

/// How a measuring Job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    Failed,
    /// It ran but could not decide (too few requests for `kybctl slo check`): no data.
    Undecided,
}

fn no_data(metric: &Metric, why: String) -> (&'static str, String) {
    match metric.no_data {
        NoData::Inconclusive => (INCONCLUSIVE, format!("no data: {why}")),
        NoData::Fail => (FAILED, format!("no data: {why}")),
    }
}

fn condition(expr: &str, value: f64, samples: Option<i64>) -> Result<bool, String> {
    let program = cel::Program::compile(expr).map_err(|e| format!("condition {expr:?}: {e}"))?;
    let mut ctx = cel::Context::default();
    ctx.add_variable_from_value("result", value);
    ctx.add_variable_from_value("samples", samples.unwrap_or(-1));
    match program.execute(&ctx) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(format!("condition {expr:?} gave {other:?}, not a bool")),
        Err(e) => Err(format!("condition {expr:?}: {e}")),
    }
}

/// The verdict on one measurement and why.
pub fn judge(metric: &Metric, obs: &Observation) -> (&'static str, String) {
    let (value, samples) = match obs {
        Observation::Error(e) => return (ERROR, e.clone()),
        Observation::Finished(Verdict::Passed, why) => return (SUCCESSFUL, why.clone()),
        Observation::Finished(Verdict::Failed, why) => return (FAILED, why.clone()),
        Observation::Finished(Verdict::Undecided, why) => return no_data(metric, why.clone()),
        Observation::Empty => return no_data(metric, "the query returned no series".into()),
        Observation::Value { value, samples } => (*value, *samples),
    };
    if value.is_nan() {
        return no_data(
            metric,
            "the value is NaN (0/0: no requests in the window?)".into(),
        );
    }
    if let (Some(min), Some(n)) = (metric.min_samples, samples) {
        if n < min {
            return no_data(metric, format!("{n} samples, fewer than minSamples {min}"));
        }
    }
    if metric.min_samples.is_some() && samples.is_none() {
        return no_data(
            metric,
            "minSamples is set but the provider gave no sample count".into(),
        );
    }
    let check = |c: &Option<String>| {
        c.as_deref()
            .map(|e| condition(e, value, samples))
            .transpose()
    };
    let (failure, success) = match (
        check(&metric.failure_condition),
        check(&metric.success_condition),
    ) {
        (Ok(f), Ok(s)) => (f, s),
        (Err(e), _) | (_, Err(e)) => return (ERROR, e),
    };
    match (failure, success) {
        (Some(true), _) => (FAILED, format!("failureCondition true for {value}")),
        (_, Some(true)) => (SUCCESSFUL, format!("successCondition true for {value}")),
        (Some(false), None) => (SUCCESSFUL, format!("failureCondition false for {value}")),
        (None, Some(false)) => (FAILED, format!("successCondition false for {value}")),
        // Both set and neither holds: Argo's meaning.
        _ => (INCONCLUSIVE, format!("neither condition holds for {value}")),
    }
}

/// Adds a measurement to the metric's result and recomputes its counts and phase.
pub fn record(metric: &Metric, result: &mut MetricResult, m: Measurement) {
    match m.phase.as_str() {
        SUCCESSFUL => result.successful += 1,
        FAILED => result.failed += 1,
        INCONCLUSIVE => result.inconclusive += 1,
        _ => result.error += 1,
    }
    if m.phase == ERROR {
        result.consecutive_error += 1;
    } else {
        result.consecutive_error = 0;
    }
    result.count += 1;
    result.message = m.message.clone();
    result.measurements.push(m);
    // Bounded: a long background analysis keeps its latest measurements (the counts keep all).
    let excess = result.measurements.len().saturating_sub(100);
    result.measurements.drain(..excess);
    result.phase = metric_phase(metric, result).into();
}

/// A metric's phase from its counts: a limit passed decides at once; otherwise it succeeds once every
/// measurement is taken.
pub fn metric_phase(metric: &Metric, r: &MetricResult) -> &'static str {
    if r.failed > metric.failure_limit {
        FAILED
    } else if r.consecutive_error > metric.consecutive_error_limit {
        // The provider kept failing: that is no data.
        match metric.no_data {
            NoData::Inconclusive => INCONCLUSIVE,
            NoData::Fail => FAILED,
        }
    } else if r.inconclusive > metric.inconclusive_limit {
        INCONCLUSIVE
    } else if r.count - r.error >= metric.count {
        SUCCESSFUL
    } else {
        RUNNING
    }
}

/// A run's phase: a failed metric fails it, then inconclusive, then still running; successful when every
/// deciding metric is. Dry-run metrics never decide.
pub fn run_phase(results: &[MetricResult]) -> &'static str {
    let deciding: Vec<&MetricResult> = results.iter().filter(|r| !r.dry_run).collect();
    let any = |p: &str| deciding.iter().any(|r| r.phase == p);
    if any(FAILED) {
        FAILED
    } else if any(INCONCLUSIVE) {
        INCONCLUSIVE
    } else if any(RUNNING) || deciding.iter().any(|r| r.phase.is_empty()) {
        RUNNING
    } else {
        SUCCESSFUL
    }
}

fn duration(s: &str) -> SignedDuration {
    humantime::parse_duration(s)
        .ok()
        .and_then(|d| SignedDuration::try_from(d).ok())
        .unwrap_or(SignedDuration::ZERO)
}

/// When the metric's next measurement is due (`None`: it has decided). The first waits for
/// `initialDelay` after the run started.
pub fn due(metric: &Metric, r: &MetricResult, started: Timestamp) -> Option<Timestamp> {
    if !r.phase.is_empty() && r.phase != RUNNING {
        return None;
    }
    match r.measurements.last() {
        None => started
            .checked_add(duration(metric.initial_delay.as_deref().unwrap_or("0s")))
            .ok(),
        Some(last) => last.at.0.checked_add(duration(&metric.interval)).ok(),
    }
}

#[cfg(test)]
mod tests;
