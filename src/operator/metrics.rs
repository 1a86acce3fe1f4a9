//! The operator's Prometheus metrics: reconciles by outcome, their duration, and the reads and
//! writes they send to the apiserver.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::operator::crd::{KybPlatform, KybPlatformStatus};

/// One platform's rollout, for the phase and weight gauges.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Platform {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformPhase {
    pub namespace: String,
    pub name: String,
    pub phase: String,
}

const PHASES: [&str; 5] = ["Healthy", "Progressing", "Paused", "Degraded", "Aborted"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalysisMeasurement {
    pub namespace: String,
    pub platform: String,
    pub metric: String,
    pub phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Outcome {
    /// `ok` or the error reason.
    pub result: String,
}

pub struct OperatorMetrics {
    registry: Registry,
    pub reconciles: Family<Outcome, Counter>,
    pub duration: Histogram,
    /// Create, apply, delete and status requests sent to the apiserver.
    pub writes: Counter,
    /// GET requests sent by reconciles. Children come from the watch caches, so these are only the
    /// Secret checks (RBAC allows no list/watch of Secrets).
    pub reads: Counter,
    /// Applies made because a child's owned field had been edited (the applied hash still matched).
    pub drift_corrections: Counter,
    /// 1 for the phase each platform's rollout is in, 0 for the others.
    pub rollout_phase: Family<PlatformPhase, Gauge>,
    /// Percent of traffic on the canary or preview as the pods or route give it.
    pub canary_weight: Family<Platform, Gauge>,
    /// The step each platform's rollout is at (-1 without one).
    pub rollout_step: Family<Platform, Gauge>,
    /// Analysis measurements by platform, metric and verdict.
    pub analysis_measurements: Family<AnalysisMeasurement, Counter>,
    /// Analysis runs reaching a phase, by platform (the `metric` label is empty).
    pub analysis_runs: Family<AnalysisMeasurement, Counter>,
    /// Requests sent to analysis providers (Prometheus queries, web GETs).
    pub analysis_requests: Counter,
    /// 1 while this replica reconciles (it holds the Lease, or runs without election).
    pub leading: Gauge,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("kyb_operator");
        let reconciles = Family::<Outcome, Counter>::default();
        let duration = Histogram::new([
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        let writes = Counter::default();
        let reads = Counter::default();
        let drift_corrections = Counter::default();
        registry.register(
            "reconciles",
            "Reconciliations by result",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Reconciliation latency",
            duration.clone(),
        );
        registry.register(
            "writes",
            "Write requests sent to the apiserver",
            writes.clone(),
        );
        registry.register(
            "reads",
            "Read requests sent to the apiserver by reconciles",
            reads.clone(),
        );
        registry.register(
            "drift_corrections",
            "Children re-applied because an owned field had been edited",
            drift_corrections.clone(),
        );
        let rollout_phase = Family::<PlatformPhase, Gauge>::default();
        let canary_weight = Family::<Platform, Gauge>::default();
        let rollout_step = Family::<Platform, Gauge>::default();
        registry.register(
            "rollout_phase",
            "Rollout phase of each KybPlatform (1 = current)",
            rollout_phase.clone(),
        );
        registry.register(
            "rollout_canary_weight_percent",
            "Effective percent of traffic on the canary or preview",
            canary_weight.clone(),
        );
        registry.register(
            "rollout_step",
            "Canary step index of each KybPlatform (-1: none)",
            rollout_step.clone(),
        );
        let analysis_measurements = Family::<AnalysisMeasurement, Counter>::default();
        let analysis_runs = Family::<AnalysisMeasurement, Counter>::default();
        registry.register(
            "analysis_measurements",
            "Analysis measurements by platform, metric and verdict",
            analysis_measurements.clone(),
        );
        registry.register(
            "analysis_runs",
            "Analysis runs reaching a phase, by platform",
            analysis_runs.clone(),
        );
        let analysis_requests = Counter::default();
        registry.register(
            "analysis_requests",
            "Requests sent to analysis providers (Prometheus queries, web GETs)",
            analysis_requests.clone(),
        );
        let leading = Gauge::default();
        registry.register(
            "leading",
            "1 while this replica reconciles (holds the Lease)",
            leading.clone(),
        );
        Self {
            registry,
            leading,
            analysis_measurements,
            analysis_runs,
            analysis_requests,
            reconciles,
            duration,
            writes,
            reads,
            drift_corrections,
            rollout_phase,
            canary_weight,
            rollout_step,
        }
    }
}

impl OperatorMetrics {
    pub fn observe(&self, elapsed: Duration, error: Option<&'static str>) {
        self.duration.observe(elapsed.as_secs_f64());
        self.reconciles
            .get_or_create(&Outcome {
                result: error.unwrap_or("ok").to_owned(),
            })
            .inc();
    }

    /// Sets the rollout gauges from a status about to be written (or already current).
    pub fn observe_rollout(&self, kp: &KybPlatform, status: &KybPlatformStatus) {
        let Some(r) = &status.rollout else { return };
        let namespace = kp.metadata.namespace.clone().unwrap_or_default();
        let name = kp.metadata.name.clone().unwrap_or_default();
        for phase in PHASES {
            self.rollout_phase
                .get_or_create(&PlatformPhase {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    phase: phase.into(),
                })
                .set(i64::from(r.phase == phase));
        }
        let platform = Platform { namespace, name };
        self.canary_weight
            .get_or_create(&platform)
            .set(i64::from(r.weights.effective));
        self.rollout_step
            .get_or_create(&platform)
            .set(r.current_step_index.map_or(-1, i64::from));
    }

    pub fn observe_measurement(&self, namespace: &str, platform: &str, metric: &str, phase: &str) {
        self.analysis_measurements
            .get_or_create(&AnalysisMeasurement {
                namespace: namespace.into(),
                platform: platform.into(),
                metric: metric.into(),
                phase: phase.into(),
            })
            .inc();
    }

    pub fn observe_run(&self, namespace: &str, platform: &str, phase: &str) {
        self.analysis_runs
            .get_or_create(&AnalysisMeasurement {
                namespace: namespace.into(),
                platform: platform.into(),
                metric: String::new(),
                phase: phase.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
