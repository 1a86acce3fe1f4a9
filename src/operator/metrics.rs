//! The operator's Prometheus metrics: reconciles by outcome, their duration, and the reads and
//! writes they send to the apiserver.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

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
        Self {
            registry,
            reconciles,
            duration,
            writes,
            reads,
            drift_corrections,
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
