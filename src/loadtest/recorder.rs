//! What a load test measures: every request's latency in microseconds in an HDR histogram per request
//! type, status codes, transport errors and cache statuses.
//!
//! Each virtual user records into its own `Recorder` (no lock, no shared cache line on the hot path)
//! and merges it into the run's total when it stops; only a request counter for the progress bar is
//! shared. goose's own figures are not used: they are rounded to 10–100 ms steps above 100 ms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::scenario::RequestType;
use crate::slo::result::Summary;

/// Highest latency a histogram tracks exactly: 10 minutes, far above any request timeout. Slower
/// samples are clamped to it rather than dropped, so the count stays right.
const MAX_TRACKED_US: u64 = 600_000_000;

/// 3 significant digits: 0.1 % relative error, the HdrHistogram default for latency.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_US, 3).expect("valid histogram bounds")
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status; `cache` is its `X-Cache-Status`, if any.
    Status { code: u16, cache: Option<CacheHit> },
    /// No (complete) response: connection refused or reset, timeout, body cut short.
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheHit {
    Hit,
    Miss,
}

impl CacheHit {
    /// `HIT-L1`, `HIT-L2`, `HIT-L3` are hits, `MISS` a miss; anything else is not a lookup.
    pub fn from_header(value: &str) -> Option<Self> {
        let v = value.trim();
        if v.eq_ignore_ascii_case("MISS") {
            Some(CacheHit::Miss)
        } else if v.len() >= 3 && v[..3].eq_ignore_ascii_case("HIT") {
            Some(CacheHit::Hit)
        } else {
            None
        }
    }
}

/// Counts and latencies of one request type.
#[derive(Debug, Clone)]
pub struct TypeStats {
    pub latency: Histogram<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub cache_hits: u64,
    pub cache_lookups: u64,
}

impl Default for TypeStats {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            by_status: BTreeMap::new(),
            transport_errors: 0,
            cache_hits: 0,
            cache_lookups: 0,
        }
    }
}

impl TypeStats {
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    /// Transport errors and 5xx, as the result schema defines errors (a 4xx is the client's doing).
    pub fn errors(&self) -> u64 {
        self.transport_errors
            + self
                .by_status
                .iter()
                .filter(|(code, _)| **code >= 500)
                .map(|(_, n)| n)
                .sum::<u64>()
    }

    fn merge(&mut self, other: &TypeStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        for (code, n) in &other.by_status {
            *self.by_status.entry(*code).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.cache_hits += other.cache_hits;
        self.cache_lookups += other.cache_lookups;
    }
}

/// One user's (or, merged, the run's) measurements.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub by_type: BTreeMap<RequestType, TypeStats>,
    /// Requests that started inside the steady window (after ramp-up, before the stop): the basis of
    /// the achieved rate, so a ramp-up does not read as a generator that fell short.
    pub steady_requests: u64,
}

impl Recorder {
    pub fn record(&mut self, t: RequestType, latency: Duration, outcome: Outcome, steady: bool) {
        let stats = self.by_type.entry(t).or_default();
        let us = (latency.as_micros() as u64).clamp(1, MAX_TRACKED_US);
        stats
            .latency
            .record(us)
            .expect("clamped into the histogram's range");
        match outcome {
            Outcome::Status { code, cache } => {
                *stats.by_status.entry(code).or_default() += 1;
                if let Some(c) = cache {
                    stats.cache_lookups += 1;
                    if c == CacheHit::Hit {
                        stats.cache_hits += 1;
                    }
                }
            }
            Outcome::Transport => stats.transport_errors += 1,
        }
        if steady {
            self.steady_requests += 1;
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (t, stats) in &other.by_type {
            self.by_type.entry(*t).or_default().merge(stats);
        }
        self.steady_requests += other.steady_requests;
    }

    /// All types together.
    pub fn overall(&self) -> TypeStats {
        let mut all = TypeStats::default();
        for stats in self.by_type.values() {
            all.merge(stats);
        }
        all
    }
}

/// Percentiles of a histogram in microseconds, as the result file carries them.
pub fn summary(h: &Histogram<u64>) -> Summary {
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64
        }
    };
    Summary {
        count: h.len(),
        p50: q(0.50),
        p90: q(0.90),
        p95: q(0.95),
        p99: q(0.99),
        p99_9: q(0.999),
        max: if h.is_empty() { 0.0 } else { h.max() as f64 },
    }
}

/// The request-rate target shared by all users: request n may start at `start + n / rate`. One atomic
/// add per request, so it stays out of the way at high rates. A generator that falls behind sends the
/// overdue requests at once (the schedule is open-loop); the recorded latency starts when the request
/// is sent, not when it was due, so the figures compare with wrk's (closed-loop) ones, and the shortfall
/// shows in the achieved rate instead.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    interval_ns: u64,
    next: AtomicU64,
}

impl Pacer {
    pub fn new(rate_per_second: f64, start: Instant) -> Self {
        Self {
            start,
            interval_ns: (1e9 / rate_per_second).max(1.0) as u64,
            next: AtomicU64::new(0),
        }
    }

    /// When the next request may start.
    pub fn next_slot(&self) -> Instant {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        self.start + Duration::from_nanos(n.saturating_mul(self.interval_ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_statuses() {
        assert_eq!(CacheHit::from_header("HIT-L1"), Some(CacheHit::Hit));
        assert_eq!(CacheHit::from_header("HIT-L3"), Some(CacheHit::Hit));
        assert_eq!(CacheHit::from_header("MISS"), Some(CacheHit::Miss));
        assert_eq!(CacheHit::from_header("BYPASS"), None);
    }

    #[test]
    fn records_merge_and_summarise_in_microseconds() {
        let mut a = Recorder::default();
        let mut b = Recorder::default();
        let hit = Outcome::Status {
            code: 200,
            cache: Some(CacheHit::Hit),
        };
        for ms in 1..=100 {
            a.record(
                RequestType::Classify,
                Duration::from_millis(ms),
                hit,
                ms > 10,
            );
        }
        b.record(
            RequestType::MerchantRead,
            Duration::from_micros(250),
            Outcome::Status {
                code: 503,
                cache: None,
            },
            true,
        );
        b.record(
            RequestType::MerchantRead,
            Duration::from_secs(2),
            Outcome::Transport,
            true,
        );
        a.merge(&b);
        let all = a.overall();
        assert_eq!(all.count(), 102);
        assert_eq!(all.errors(), 2);
        assert_eq!((all.cache_hits, all.cache_lookups), (100, 100));
        assert_eq!(a.steady_requests, 92);
        let s = summary(&a.by_type[&RequestType::Classify].latency);
        assert_eq!(s.count, 100);
        // 0.1 % precision: p50 of 1..=100 ms is 50 ms.
        assert!((s.p50 - 50_000.0).abs() <= 50.0, "{s:?}");
        assert!((s.max - 100_000.0).abs() <= 100.0, "{s:?}");
        // Above 100 ms the figures keep microsecond resolution (goose's would be rounded).
        let mut slow = Recorder::default();
        slow.record(
            RequestType::Health,
            Duration::from_micros(123_456),
            hit,
            true,
        );
        let s = summary(&slow.by_type[&RequestType::Health].latency);
        assert!((s.p50 - 123_456.0).abs() / 123_456.0 < 0.001, "{s:?}");
        assert_eq!(summary(&new_histogram()).p99, 0.0);
    }

    #[test]
    fn pacer_spaces_slots_by_the_rate() {
        let start = Instant::now();
        let p = Pacer::new(100.0, start);
        assert_eq!(p.next_slot(), start);
        assert_eq!(p.next_slot(), start + Duration::from_millis(10));
        assert_eq!(p.next_slot(), start + Duration::from_millis(20));
    }
}
