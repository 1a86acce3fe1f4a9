//! What a load test measures: every request's latency in microseconds in an HDR histogram per request
//! type, status codes, transport errors and cache statuses.
//!
//! Each request is recorded twice over: its response time (from when it was due) and its service
//! time (from when it was sent), in the steady window or the warm-up, and in a per-second series.
//! goose's own figures are not used: they are rounded to 10–100 ms steps above 100 ms.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Which part of a run a request belongs to, by the time it was due: only the steady window (after
/// the ramp-up, before the stop) is judged; ramp-up, the users' set-up requests and stragglers are
/// reported apart as warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Steady,
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub t: RequestType,
    pub phase: Phase,
    /// Whole seconds from the start of the run to when the request was due: its time-series bucket.
    pub second: usize,
    /// From when the schedule said it was due to the last byte: what a user feels, including any wait
    /// for a generator or connection that was behind (coordinated omission corrected, as wrk2 does).
    /// Equals `service` in a closed-loop run, where nothing is due.
    pub response: Duration,
    /// From when it was actually sent to the last byte.
    pub service: Duration,
    pub outcome: Outcome,
    /// A transport error, a 5xx, or a 4xx the scenario does not expect.
    pub failed: bool,
}

/// Counts and latencies of one request type.
#[derive(Debug, Clone)]
pub struct TypeStats {
    /// Response time (see [`Sample::response`]): what the gate judges.
    pub latency: Histogram<u64>,
    pub service: Histogram<u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub failed: u64,
    pub cache_hits: u64,
    pub cache_lookups: u64,
}

impl Default for TypeStats {
    fn default() -> Self {
        Self {
            latency: new_histogram(),
            service: new_histogram(),
            by_status: BTreeMap::new(),
            transport_errors: 0,
            failed: 0,
            cache_hits: 0,
            cache_lookups: 0,
        }
    }
}

fn record_us(h: &mut Histogram<u64>, d: Duration) {
    let us = (d.as_micros() as u64).clamp(1, MAX_TRACKED_US);
    h.record(us).expect("clamped into the histogram's range");
}

impl TypeStats {
    pub fn count(&self) -> u64 {
        self.latency.len()
    }

    /// Failed requests: transport errors, 5xx and unexpected 4xx.
    pub fn errors(&self) -> u64 {
        self.failed
    }

    fn record(&mut self, s: &Sample) {
        record_us(&mut self.latency, s.response);
        record_us(&mut self.service, s.service);
        match s.outcome {
            Outcome::Status { code, cache } => {
                *self.by_status.entry(code).or_default() += 1;
                if let Some(c) = cache {
                    self.cache_lookups += 1;
                    if c == CacheHit::Hit {
                        self.cache_hits += 1;
                    }
                }
            }
            Outcome::Transport => self.transport_errors += 1,
        }
        if s.failed {
            self.failed += 1;
        }
    }

    fn merge(&mut self, other: &TypeStats) {
        self.latency
            .add(&other.latency)
            .expect("histograms with the same bounds merge");
        self.service
            .add(&other.service)
            .expect("histograms with the same bounds merge");
        for (code, n) in &other.by_status {
            *self.by_status.entry(*code).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.failed += other.failed;
        self.cache_hits += other.cache_hits;
        self.cache_lookups += other.cache_lookups;
    }
}

/// Requests due within one second of the run, for the time series.
#[derive(Debug, Clone)]
pub struct SecondStats {
    pub requests: u64,
    pub errors: u64,
    /// Response times; 2 significant digits are plenty for a chart and keep a second small.
    pub latency: Histogram<u64>,
}

impl Default for SecondStats {
    fn default() -> Self {
        Self {
            requests: 0,
            errors: 0,
            latency: Histogram::new_with_bounds(1, MAX_TRACKED_US, 2)
                .expect("valid histogram bounds"),
        }
    }
}

/// A share of the run's measurements (see [`Recorders`]), or, merged, all of them.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    /// The steady window, by request type: what the result's main figures and the gate use.
    pub by_type: BTreeMap<RequestType, TypeStats>,
    /// Ramp-up, set-up and stragglers after the window, by request type.
    pub warmup: BTreeMap<RequestType, TypeStats>,
    /// Every request, both phases, by the second it was due.
    pub seconds: Vec<SecondStats>,
}

impl Recorder {
    pub fn record(&mut self, s: &Sample) {
        let phase = match s.phase {
            Phase::Steady => &mut self.by_type,
            Phase::Warmup => &mut self.warmup,
        };
        phase.entry(s.t).or_default().record(s);
        if self.seconds.len() <= s.second {
            self.seconds.resize_with(s.second + 1, SecondStats::default);
        }
        let sec = &mut self.seconds[s.second];
        sec.requests += 1;
        sec.errors += u64::from(s.failed);
        record_us(&mut sec.latency, s.response);
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (mine, theirs) in [
            (&mut self.by_type, &other.by_type),
            (&mut self.warmup, &other.warmup),
        ] {
            for (t, stats) in theirs {
                mine.entry(*t).or_default().merge(stats);
            }
        }
        if self.seconds.len() < other.seconds.len() {
            self.seconds
                .resize_with(other.seconds.len(), SecondStats::default);
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(&other.seconds) {
            mine.requests += theirs.requests;
            mine.errors += theirs.errors;
            mine.latency
                .add(&theirs.latency)
                .expect("histograms with the same bounds merge");
        }
    }

    /// Requests in the steady window.
    pub fn steady_requests(&self) -> u64 {
        self.by_type.values().map(TypeStats::count).sum()
    }

    /// All types of the steady window together.
    pub fn overall(&self) -> TypeStats {
        merged(self.by_type.values())
    }

    /// All types of the warm-up together.
    pub fn warmup_overall(&self) -> TypeStats {
        merged(self.warmup.values())
    }
}

fn merged<'a>(stats: impl Iterator<Item = &'a TypeStats>) -> TypeStats {
    let mut all = TypeStats::default();
    for s in stats {
        all.merge(s);
    }
    all
}

/// The run's recorders, shared by all virtual users: a few mutex-guarded shards (a user writes to
/// the shard of its index), merged once at the end. One recorder per user would hold thousands of
/// histograms (a 3-digit histogram up to 10 minutes is ~160 KB: a gigabyte at 1,000 users); one
/// lock for everyone would be contended at tens of thousands of requests per second.
#[derive(Debug)]
pub struct Recorders(Vec<Mutex<Recorder>>);

impl Recorders {
    pub fn new(shards: usize) -> Self {
        Self((0..shards.max(1)).map(|_| Mutex::default()).collect())
    }

    pub fn record(&self, user: usize, s: &Sample) {
        self.0[user % self.0.len()]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(s);
    }

    pub fn merged(&self) -> Recorder {
        let mut all = Recorder::default();
        for shard in &self.0 {
            all.merge(&shard.lock().unwrap_or_else(|p| p.into_inner()));
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

/// The request-rate target shared by all users: request n is due at `start + n / rate`. One atomic
/// add per request, so it stays out of the way at high rates. The schedule is open-loop: a generator
/// or a target that falls behind gets overdue requests sent at once, and their response time counts
/// from when they were due, so the wait shows in the latency (coordinated omission corrected), not
/// only in the achieved rate.
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

/// tokio's timer fires on whole milliseconds, so a request woken for its slot starts up to 1 ms after
/// it even when nothing is behind. That lateness is the generator's clock, not a wait a user would
/// see: up to this much of it is forgiven; anything beyond (a backlog, a starved generator) counts.
pub const TIMER_SLACK: Duration = Duration::from_millis(1);

/// When a request counts as due: its slot, moved later by the timer's own lateness up to
/// [`TIMER_SLACK`].
pub fn effective_due(slot: Instant, started: Instant) -> Instant {
    slot + started.saturating_duration_since(slot).min(TIMER_SLACK)
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

    fn sample(t: RequestType, ms: u64, outcome: Outcome, phase: Phase) -> Sample {
        let failed = match outcome {
            Outcome::Status { code, .. } => code >= 400,
            Outcome::Transport => true,
        };
        Sample {
            t,
            phase,
            second: (ms / 10) as usize,
            response: Duration::from_millis(ms),
            service: Duration::from_millis(ms / 2),
            outcome,
            failed,
        }
    }

    #[test]
    fn records_merge_and_summarise_in_microseconds() {
        let rec = Recorders::new(3);
        let hit = Outcome::Status {
            code: 200,
            cache: Some(CacheHit::Hit),
        };
        for ms in 1..=100 {
            let phase = if ms > 10 {
                Phase::Steady
            } else {
                Phase::Warmup
            };
            rec.record(ms as usize, &sample(RequestType::Classify, ms, hit, phase));
        }
        let failed = Outcome::Status {
            code: 503,
            cache: None,
        };
        rec.record(
            7,
            &sample(RequestType::MerchantRead, 1, failed, Phase::Steady),
        );
        let transport = Outcome::Transport;
        rec.record(
            8,
            &sample(RequestType::MerchantRead, 2000, transport, Phase::Steady),
        );
        let a = rec.merged();
        let all = a.overall();
        assert_eq!(all.count(), 92);
        assert_eq!(a.steady_requests(), 92);
        assert_eq!(a.warmup_overall().count(), 10);
        assert_eq!(all.errors(), 2);
        assert_eq!((all.cache_hits, all.cache_lookups), (90, 90));
        let s = summary(&a.by_type[&RequestType::Classify].latency);
        assert_eq!(s.count, 90);
        // 0.1 % precision: p50 of 11..=100 ms is 55 ms; service time is half of it here.
        assert!((s.p50 - 55_000.0).abs() <= 55.0, "{s:?}");
        assert!((s.max - 100_000.0).abs() <= 100.0, "{s:?}");
        let svc = summary(&a.by_type[&RequestType::Classify].service);
        assert!((svc.p50 - 27_000.0).abs() <= 30.0, "{svc:?}");
        // The series holds both phases by the second they were due.
        assert_eq!(a.seconds.iter().map(|s| s.requests).sum::<u64>(), 102);
        assert_eq!(a.seconds[0].requests, 10); // 1..=9 ms and the 1 ms read
        assert_eq!(a.seconds[200].errors, 1);
        // Above 100 ms the figures keep microsecond resolution (goose's would be rounded).
        let mut slow = Recorder::default();
        let mut s = sample(RequestType::Health, 0, hit, Phase::Steady);
        s.response = Duration::from_micros(123_456);
        slow.record(&s);
        let s = summary(&slow.by_type[&RequestType::Health].latency);
        assert!((s.p50 - 123_456.0).abs() / 123_456.0 < 0.001, "{s:?}");
        assert_eq!(summary(&new_histogram()).p99, 0.0);
    }

    #[test]
    fn only_the_timers_own_lateness_is_forgiven() {
        let slot = Instant::now();
        let ms = Duration::from_millis;
        // Woken 0.6 ms late by the timer: on time.
        let started = slot + Duration::from_micros(600);
        assert_eq!(effective_due(slot, started), started);
        // 5 ms behind: 4 ms of it is a wait the response time must show.
        assert_eq!(effective_due(slot, slot + ms(5)), slot + ms(1));
        // Early (never happens with sleep_until, but must not move the slot back).
        assert_eq!(effective_due(slot + ms(2), slot), slot + ms(2));
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
