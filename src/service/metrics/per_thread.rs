//! The request count and latency histogram, written by each worker thread into its own shard and
//! summed when scraped.
//!
//! prometheus-client's `Histogram` takes a mutex for every observation and its `Counter` is one
//! atomic, so every request wrote the same cache lines from whichever core served it: with two or
//! more worker threads busy, each request pulled those lines over from the other core. A shard per
//! thread (as Go's client splits a histogram into hot and cold halves) keeps the lines where they
//! are written; the sums are only formed on a scrape. Written here because prometheus-client has no
//! sharded metric; these implement its `EncodeMetric`, so families, registry and exposition are its.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

/// Latency bucket bounds in seconds, from 0.5 ms to 10 s: the service answers in well under a
/// millisecond from cache and the SLOs sit at 500 ms, so both ends need resolution.
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The bounds as whole nanoseconds, the unit a shard counts in (an integer sum needs no
/// compare-and-swap loop, as an `f64` in an atomic would).
const BOUNDS_NANOS: [u64; 14] = {
    let mut nanos = [0u64; 14];
    let mut i = 0;
    while i < nanos.len() {
        nanos[i] = (LATENCY_BOUNDS[i] * 1e9) as u64;
        i += 1;
    }
    nanos
};

/// How many shards a metric has: the machine's parallelism rounded up to a power of two (so a
/// thread's shard is a mask, not a division), at most 64. Threads past it share shards, which is
/// still correct (every update is atomic), only no longer free of contention.
fn shard_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, 64)
            .next_power_of_two()
    })
}

/// The calling thread's shard: threads are numbered as they first record.
fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, Relaxed) & (shard_count() - 1);
    }
    INDEX.with(|i| *i)
}

/// A value on cache lines of its own (128 bytes: x86 prefetches lines in adjacent pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// Requests served: a Prometheus counter.
#[derive(Clone, Debug)]
pub struct RequestCount(Arc<[Padded<AtomicU64>]>);

impl Default for RequestCount {
    fn default() -> Self {
        Self((0..shard_count()).map(|_| Padded::default()).collect())
    }
}

impl RequestCount {
    pub fn inc(&self) {
        self.0[shard_index()].0.fetch_add(1, Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Relaxed)).sum()
    }
}

impl TypedMetric for RequestCount {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for RequestCount {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// One thread's latency observations: a count per bucket (the last one past every bound) and the sum.
#[derive(Debug, Default)]
struct LatencyShard {
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

/// Request latency: a Prometheus histogram over [`LATENCY_BOUNDS`].
#[derive(Clone, Debug)]
pub struct RequestLatency(Arc<[Padded<LatencyShard>]>);

impl Default for RequestLatency {
    fn default() -> Self {
        Self((0..shard_count()).map(|_| Padded::default()).collect())
    }
}

/// The bucket a latency falls in: the first whose bound it does not exceed (Prometheus' `le`).
fn bucket_of(nanos: u64) -> usize {
    BOUNDS_NANOS.partition_point(|&bound| bound < nanos)
}

impl RequestLatency {
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.0[shard_index()].0;
        shard.buckets[bucket_of(nanos)].fetch_add(1, Relaxed);
        shard.sum_nanos.fetch_add(nanos, Relaxed);
    }

    /// Count, sum in seconds and the per-bucket counts (not cumulative, as prometheus-client's
    /// encoder takes them), over all shards. A scrape racing a request may see its bucket counted and
    /// not yet its sum; the next scrape sees both.
    fn snapshot(&self) -> (u64, f64, [(f64, u64); LATENCY_BOUNDS.len() + 1]) {
        let mut buckets = [(f64::INFINITY, 0u64); LATENCY_BOUNDS.len() + 1];
        for (b, bound) in buckets.iter_mut().zip(LATENCY_BOUNDS) {
            b.0 = bound;
        }
        let mut sum_nanos = 0u64;
        for shard in self.0.iter() {
            for (b, n) in buckets.iter_mut().zip(&shard.0.buckets) {
                b.1 += n.load(Relaxed);
            }
            sum_nanos = sum_nanos.saturating_add(shard.0.sum_nanos.load(Relaxed));
        }
        let count = buckets.iter().map(|b| b.1).sum();
        (count, sum_nanos as f64 / 1e9, buckets)
    }
}

impl TypedMetric for RequestLatency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for RequestLatency {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let (count, sum, buckets) = self.snapshot();
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;
    use prometheus_client::metrics::histogram::Histogram;
    use prometheus_client::registry::{Metric, Registry};

    #[test]
    fn a_latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(500_000), 0, "0.5 ms is within le=0.0005");
        assert_eq!(bucket_of(500_001), 1);
        assert_eq!(bucket_of(10_000_000_000), LATENCY_BOUNDS.len() - 1);
        assert_eq!(bucket_of(10_000_000_001), LATENCY_BOUNDS.len(), "+Inf");
        assert_eq!(bucket_of(u64::MAX), LATENCY_BOUNDS.len());
    }

    /// The same observations, made from several threads into the sharded metrics and into
    /// prometheus-client's own counter and histogram, read the same in the text exposition.
    #[test]
    fn exposition_matches_prometheus_clients_own_metrics() {
        let count = RequestCount::default();
        let latency = RequestLatency::default();
        let reference_count = prometheus_client::metrics::counter::Counter::<u64>::default();
        let reference = Histogram::new(LATENCY_BOUNDS);
        // Latencies across every bucket; the sums differ in rounding only (nanoseconds summed as
        // integers against seconds summed as floats), so they are compared with a tolerance.
        let latencies: Vec<Duration> = (0..2_000u64)
            .map(|i| Duration::from_micros(i * i * 7 % 12_000_000))
            .collect();
        std::thread::scope(|s| {
            for chunk in latencies.chunks(250) {
                let (count, latency) = (&count, &latency);
                let (reference_count, reference) = (&reference_count, &reference);
                s.spawn(move || {
                    for d in chunk {
                        count.inc();
                        latency.observe(*d);
                        reference_count.inc();
                        reference.observe(d.as_secs_f64());
                    }
                });
            }
        });
        fn text(requests: impl Metric, duration: impl Metric) -> String {
            let mut registry = Registry::default();
            registry.register("requests", "r", requests);
            registry.register("duration_seconds", "d", duration);
            let mut out = String::new();
            encode(&mut out, &registry).unwrap();
            out
        }
        let ours = text(count.clone(), latency);
        let theirs = text(reference_count, reference);
        let without_sum = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| !l.starts_with("duration_seconds_sum"))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(without_sum(&ours), without_sum(&theirs), "{ours}\n{theirs}");
        assert!(ours.contains("requests_total 2000"), "{ours}");
        let sum = |t: &str| -> f64 {
            t.lines()
                .find_map(|l| l.strip_prefix("duration_seconds_sum "))
                .unwrap()
                .parse()
                .unwrap()
        };
        assert!((sum(&ours) - sum(&theirs)).abs() < 1e-6, "{ours}\n{theirs}");
        assert_eq!(count.get(), 2000);
    }
}
