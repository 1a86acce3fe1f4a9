//! Prometheus metrics of the API service (prometheus-client, text exposition format).

mod per_thread;

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::Method;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use per_thread::{RequestCount, RequestLatency, LATENCY_BOUNDS};

/// A request's labels. Built on every request, so they hold what the request already has (the
/// method, the route table's template) rather than new strings.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: MethodLabel,
    pub route: RouteLabel,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct MethodLabel(pub axum::http::Method);

impl EncodeLabelValue for MethodLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.0.as_str(), encoder)
    }
}

/// The route template a request matched, or none.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteLabel {
    Matched(&'static str),
    Unmatched,
}

impl RouteLabel {
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteLabel::Matched(route) => route,
            RouteLabel::Unmatched => "unmatched",
        }
    }
}

impl EncodeLabelValue for RouteLabel {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// The request families' series each (method, route, status) has used, kept at hand so that a request
/// finds its counter and histogram without the families' lookups. Each lookup hashes the whole label set
/// (SipHash) under the family's lock; the two were ~900 instructions of a `GET /health` (callgrind,
/// BENCHMARKS.md), a tenth of what the service's middleware adds to a bare axum route. A clone of a
/// request metric ([`per_thread`]) shares its shards, so a series held here is the family's own (the
/// request families are never cleared).
///
/// Written out rather than a concurrent map: the slots are filled in order and never emptied, so a
/// lookup is a few atomic loads and comparisons, with no lock and no reference count written from the
/// two cores at once. A route is compared by its template's address first: every request of a route
/// carries the route table's one string, so the text is compared only between different routes.
struct RequestSeries {
    slots: [OnceLock<Series>; SERIES_KEPT],
}

/// Series kept at hand: the API's routes times the statuses each answers with fit many times over.
/// A request past them (a client probing odd paths and methods) goes to the families directly.
const SERIES_KEPT: usize = 64;

struct Series {
    method: Method,
    route: Option<&'static str>,
    status: u16,
    requests: RequestCount,
    duration: RequestLatency,
}

impl Series {
    fn is(&self, method: &Method, route: Option<&str>, status: u16) -> bool {
        self.status == status
            && self.method == *method
            && match (self.route, route) {
                (None, None) => true,
                (Some(a), Some(b)) => std::ptr::eq(a, b) || a == b,
                _ => false,
            }
    }

    fn record(&self, elapsed: Duration) {
        self.requests.inc();
        self.duration.observe(elapsed);
    }
}

impl Default for RequestSeries {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| OnceLock::new()),
        }
    }
}

impl RequestSeries {
    /// Records one request in its series, which `make` finds in the families the first time.
    fn record(
        &self,
        method: &Method,
        route: Option<&'static str>,
        status: u16,
        elapsed: Duration,
        make: impl FnOnce() -> (RequestCount, RequestLatency),
    ) {
        let mut make = Some(make);
        let series_of = |(requests, duration): (RequestCount, RequestLatency)| Series {
            method: method.clone(),
            route,
            status,
            requests,
            duration,
        };
        for slot in &self.slots {
            if slot.get().is_none() {
                // The first empty slot: every series before it was looked at and none is this one.
                let Some(make) = make.take() else { break };
                if let Err(new) = slot.set(series_of(make())) {
                    // Another request took the slot first; if for another series, this one is
                    // counted all the same (it is the family's) and kept by a later request.
                    if !slot.get().is_some_and(|s| s.is(method, route, status)) {
                        new.record(elapsed);
                        return;
                    }
                }
            }
            if let Some(s) = slot.get().filter(|s| s.is(method, route, status)) {
                s.record(elapsed);
                return;
            }
        }
        if let Some(make) = make {
            series_of(make()).record(elapsed);
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Level {
    L1,
    L2,
    L3,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LevelLabel {
    pub level: Level,
}

impl LevelLabel {
    pub fn l1() -> Self {
        Self { level: Level::L1 }
    }
    pub fn l2() -> Self {
        Self { level: Level::L2 }
    }
    pub fn l3() -> Self {
        Self { level: Level::L3 }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub shard: String,
    pub role: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BreakerLabels {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub name: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobOutcomeLabels {
    pub kind: String,
    /// succeeded, failed (retried later), dead (buried), lost (the lease was lost).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueDepthLabels {
    pub queue: String,
    pub kind: String,
    pub priority: i16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    pub queue: String,
}

pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, RequestCount>,
    http_duration: Family<RequestLabels, RequestLatency>,
    /// The two families' series by request, for [`Metrics::observe_request`].
    http_series: RequestSeries,
    pub cache_hits: Family<LevelLabel, Counter>,
    pub cache_misses: Family<LevelLabel, Counter>,
    pub cache_errors: Family<LevelLabel, Counter>,
    pub cache_invalidations: Counter,
    pub cache_degraded: Gauge,
    pub db_connections: Family<PoolLabels, Gauge>,
    pub db_read_batches: Family<ShardLabels, Histogram>,
    pub breaker_state: Family<BreakerLabels, Gauge>,
    pub outbound_calls: Family<OutcomeLabels, Counter>,
    pub job_attempts: Family<JobOutcomeLabels, Counter>,
    pub job_start_delay: Family<JobLabels, Histogram>,
    pub jobs_running: Gauge,
    pub queue_depth: Family<QueueDepthLabels, Gauge>,
    pub queue_oldest_ready: Family<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub dead_letters: Family<QueueLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kyb");
        let http_requests = Family::<RequestLabels, RequestCount>::default();
        let http_duration = Family::<RequestLabels, RequestLatency>::default();
        let cache_hits = Family::<LevelLabel, Counter>::default();
        let cache_misses = Family::<LevelLabel, Counter>::default();
        let cache_errors = Family::<LevelLabel, Counter>::default();
        let cache_invalidations = Counter::default();
        let cache_degraded = Gauge::default();
        let db_connections = Family::<PoolLabels, Gauge>::default();
        let db_read_batches = Family::<ShardLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
        });
        let breaker_state = Family::<BreakerLabels, Gauge>::default();
        let outbound_calls = Family::<OutcomeLabels, Counter>::default();
        let job_attempts = Family::<JobOutcomeLabels, Counter>::default();
        let job_start_delay =
            Family::<JobLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BOUNDS));
        let jobs_running = Gauge::default();
        let queue_depth = Family::<QueueDepthLabels, Gauge>::default();
        let queue_oldest_ready =
            Family::<QueueLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let dead_letters = Family::<QueueLabels, Gauge>::default();
        registry.register(
            "http_requests",
            "HTTP requests served",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            http_duration.clone(),
        );
        registry.register("cache_hits", "Cache hits by level", cache_hits.clone());
        registry.register(
            "cache_misses",
            "Cache misses by level",
            cache_misses.clone(),
        );
        registry.register(
            "cache_errors",
            "Cache operations that failed, by level",
            cache_errors.clone(),
        );
        registry.register(
            "cache_invalidations",
            "Invalidation events applied to the local cache",
            cache_invalidations.clone(),
        );
        registry.register(
            "cache_degraded",
            "1 while the Redis cache is unreachable",
            cache_degraded.clone(),
        );
        registry.register(
            "db_pool_connections",
            "Database pool connections by shard, role and state",
            db_connections.clone(),
        );
        registry.register(
            "db_merchant_read_batch_size",
            "Merchant reads by id answered per statement, by shard",
            db_read_batches.clone(),
        );
        registry.register(
            "circuit_breaker_state",
            "Circuit breaker state: 0 closed, 1 open, 2 half-open",
            breaker_state.clone(),
        );
        registry.register(
            "outbound_calls",
            "Outbound calls by target and outcome",
            outbound_calls.clone(),
        );
        registry.register(
            "job_attempts",
            "Job attempts finished, by kind and outcome",
            job_attempts.clone(),
        );
        registry.register(
            "job_start_delay_seconds",
            "From when a job was ready (enqueued, or its retry delay over) to its start",
            job_start_delay.clone(),
        );
        registry.register(
            "jobs_running",
            "Jobs this worker is running",
            jobs_running.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs ready to run, by queue, kind and priority (as last counted)",
            queue_depth.clone(),
        );
        registry.register(
            "queue_oldest_ready_seconds",
            "Age of the oldest ready job, by queue (as last counted)",
            queue_oldest_ready.clone(),
        );
        registry.register(
            "queue_dead_letters",
            "Dead letters not replayed, by queue (as last counted)",
            dead_letters.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            http_series: RequestSeries::default(),
            cache_hits,
            cache_misses,
            cache_errors,
            cache_invalidations,
            cache_degraded,
            db_connections,
            db_read_batches,
            breaker_state,
            outbound_calls,
            job_attempts,
            job_start_delay,
            jobs_running,
            queue_depth,
            queue_oldest_ready,
            dead_letters,
        }
    }

    /// Counts a served request and its latency under its method, route template (`None`: no route
    /// matched) and status.
    pub fn observe_request(
        &self,
        method: &Method,
        route: Option<&'static str>,
        status: u16,
        elapsed: Duration,
    ) {
        self.http_series.record(method, route, status, elapsed, || {
            let labels = RequestLabels {
                method: MethodLabel(method.clone()),
                route: route.map_or(RouteLabel::Unmatched, RouteLabel::Matched),
                status,
            };
            (
                self.http_requests.get_or_create_owned(&labels),
                self.http_duration.get_or_create_owned(&labels),
            )
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod request_label_tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn request_labels_read_as_method_route_and_status() {
        let mut registry = Registry::default();
        let family = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "test", family.clone());
        let labels = |route| RequestLabels {
            method: MethodLabel(axum::http::Method::GET),
            route,
            status: 200,
        };
        family.get_or_create(&labels(RouteLabel::Unmatched)).inc();
        family.get_or_create(&labels(RouteLabel::Unmatched)).inc();
        let mut out = String::new();
        encode(&mut out, &registry).unwrap();
        assert!(
            out.contains(r#"requests_total{method="GET",route="unmatched",status="200"} 2"#),
            "{out}"
        );
    }

    /// Requests land in the families' series whether their series is kept at hand, kept by a
    /// second look, or past the kept ones.
    #[test]
    fn requests_are_counted_in_the_families_kept_at_hand_or_not() {
        let metrics = Metrics::new();
        let get = axum::http::Method::GET;
        metrics.observe_request(&get, None, 404, Duration::from_millis(1));
        metrics.observe_request(&get, None, 404, Duration::from_millis(2));
        // The same template from two strings (a route compared by address, then by text).
        let copy: &'static str = String::from("/v1/things/{id}").leak();
        metrics.observe_request(&get, Some("/v1/things/{id}"), 200, Duration::ZERO);
        metrics.observe_request(&get, Some(copy), 200, Duration::ZERO);
        metrics.observe_request(
            &axum::http::Method::POST,
            None,
            404,
            Duration::from_millis(1),
        );
        // Twice as many series as are kept: the ones past them go to the families directly.
        for status in 0..(2 * SERIES_KEPT as u16) {
            metrics.observe_request(&get, None, 600 + status, Duration::from_millis(1));
        }
        metrics.observe_request(
            &get,
            None,
            600 + 2 * SERIES_KEPT as u16 - 1,
            Duration::from_millis(1),
        );
        let out = metrics.encode();
        let count = |labels: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("kyb_http_requests_total{{{labels}}} ")))
                .unwrap_or_else(|| panic!("no series {labels} in\n{out}"))
                .to_owned()
        };
        assert_eq!(count(r#"method="GET",route="unmatched",status="404""#), "2");
        assert_eq!(
            count(r#"method="GET",route="/v1/things/{id}",status="200""#),
            "2"
        );
        assert_eq!(
            count(r#"method="POST",route="unmatched",status="404""#),
            "1"
        );
        assert_eq!(count(r#"method="GET",route="unmatched",status="600""#), "1");
        let last = 600 + 2 * SERIES_KEPT - 1;
        assert_eq!(
            count(&format!(
                r#"method="GET",route="unmatched",status="{last}""#
            )),
            "2"
        );
        assert!(
            out.contains(r#"kyb_http_request_duration_seconds_count{method="GET",route="unmatched",status="404"} 2"#),
            "{out}"
        );
        assert!(metrics.http_series.slots.iter().all(|s| s.get().is_some()));
    }
}
