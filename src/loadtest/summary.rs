//! From measurements to the result file (schema v2) and the verdict on the generator itself: pure
//! functions, so the decisions are unit-tested without a server.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

use super::recorder::{summary, Recorder, TypeStats};
use super::scenario::RequestType;
use crate::slo::result::{
    Cache, Generator, Latency, LoadTestResult, Requests, Second, Warmup, VERSION,
};

/// Below this share of the requested rate the run did not deliver the load it was asked for. The same
/// share `slo check` uses to call a throughput check inconclusive.
pub const MIN_ACHIEVED_SHARE: f64 = 0.95;
/// The generator's own CPU use, as a share of the cores it may use, from which it is the bottleneck.
pub const MAX_CPU_SHARE: f64 = 0.90;

/// What the run measured about the generator, besides the requests.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorFacts {
    pub requested_rps: Option<f64>,
    /// Requests started in the steady window divided by its length.
    pub achieved_rps: f64,
    /// CPU seconds (user + system) of this process over the run divided by wall seconds × cores.
    pub cpu_share: f64,
}

/// Why the run's numbers are limited by the generator, if they are; empty when they can be trusted.
pub fn saturation_reasons(g: &GeneratorFacts) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(requested) = g.requested_rps {
        if g.achieved_rps < MIN_ACHIEVED_SHARE * requested {
            reasons.push(format!(
                "achieved {:.1} rps of the {:.1} requested ({:.0}%): more --users may be needed, or the target is the limit",
                g.achieved_rps,
                requested,
                100.0 * g.achieved_rps / requested
            ));
        }
    }
    if g.cpu_share >= MAX_CPU_SHARE {
        reasons.push(format!(
            "the load generator used {:.0}% of its CPU: it, not the target, may have set the pace",
            100.0 * g.cpu_share
        ));
    }
    reasons
}

/// The result file of a finished run: the steady window's figures (`steady_secs` long), the warm-up
/// beside them, and the per-second series of the whole run (`elapsed`).
pub fn build_result(
    rec: &Recorder,
    started_at: String,
    steady_secs: f64,
    elapsed: Duration,
    g: &GeneratorFacts,
) -> LoadTestResult {
    let all = rec.overall();
    let secs = steady_secs.max(1e-9);
    let cache = (all.cache_lookups > 0).then_some(Cache {
        hits: all.cache_hits,
        lookups: all.cache_lookups,
    });
    let warm = rec.warmup_overall();
    LoadTestResult {
        version: VERSION,
        started_at,
        duration_seconds: round3(secs),
        requests: requests(&all),
        throughput_rps: round3(all.count() as f64 / secs),
        cache,
        latency_us: latency(&all, &rec.by_type, |s| &s.latency),
        service_time_us: Some(latency(&all, &rec.by_type, |s| &s.service)),
        warmup: Some(Warmup {
            duration_seconds: round3((elapsed.as_secs_f64() - secs).max(0.0)),
            requests: requests(&warm),
            latency_us: latency(&warm, &rec.warmup, |s| &s.latency),
        }),
        timeseries: rec
            .seconds
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let q = summary(&s.latency);
                Second {
                    second: i as u32,
                    requests: s.requests,
                    errors: s.errors,
                    p50: q.p50,
                    p95: q.p95,
                    p99: q.p99,
                }
            })
            .collect(),
        generator: Generator {
            requested_rps: g.requested_rps,
            achieved_rps: round3(g.achieved_rps),
            saturated: !saturation_reasons(g).is_empty(),
        },
    }
}

fn requests(all: &TypeStats) -> Requests {
    Requests {
        total: all.count(),
        errors: all.errors(),
        by_status: all
            .by_status
            .iter()
            .map(|(code, n)| (code.to_string(), *n))
            .collect(),
    }
}

/// Percentiles overall and per type, of the histogram `which` picks (response or service time).
fn latency(
    all: &TypeStats,
    by_type: &BTreeMap<RequestType, TypeStats>,
    which: impl Fn(&TypeStats) -> &Histogram<u64>,
) -> Latency {
    Latency {
        overall: summary(which(all)),
        by_type: by_type
            .iter()
            .map(|(t, s)| (t.name().to_owned(), summary(which(s))))
            .collect(),
    }
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// CPU time (user + system) this process has used so far.
pub fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// `cpu` over `wall` on `cores` cores, 0 to 1.
pub fn cpu_share(cpu: Duration, wall: Duration, cores: usize) -> f64 {
    let capacity = wall.as_secs_f64() * cores.max(1) as f64;
    if capacity <= 0.0 {
        0.0
    } else {
        (cpu.as_secs_f64() / capacity).min(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::recorder::{CacheHit, Outcome};
    use crate::loadtest::scenario::RequestType;

    fn facts(requested: Option<f64>, achieved: f64, cpu: f64) -> GeneratorFacts {
        GeneratorFacts {
            requested_rps: requested,
            achieved_rps: achieved,
            cpu_share: cpu,
        }
    }

    #[test]
    fn saturation_verdicts() {
        assert!(saturation_reasons(&facts(Some(100.0), 99.0, 0.3)).is_empty());
        assert!(saturation_reasons(&facts(Some(100.0), 95.0, 0.3)).is_empty());
        let r = saturation_reasons(&facts(Some(100.0), 80.0, 0.3));
        assert_eq!(r.len(), 1);
        assert!(
            r[0].contains("achieved 80.0 rps of the 100.0 requested"),
            "{r:?}"
        );
        let r = saturation_reasons(&facts(None, 5000.0, 0.95));
        assert!(r[0].contains("95% of its CPU"), "{r:?}");
        assert!(saturation_reasons(&facts(None, 5000.0, 0.89)).is_empty());
        assert_eq!(saturation_reasons(&facts(Some(10.0), 1.0, 1.0)).len(), 2);
    }

    #[test]
    fn cpu_shares() {
        let s = Duration::from_secs;
        assert_eq!(cpu_share(s(1), s(1), 2), 0.5);
        assert_eq!(cpu_share(s(3), s(1), 2), 1.0);
        assert_eq!(cpu_share(s(1), Duration::ZERO, 2), 0.0);
        assert!(process_cpu_time() > Duration::ZERO);
    }

    #[test]
    fn result_follows_schema_v2() {
        use crate::loadtest::recorder::{Phase, Sample};
        let mut rec = Recorder::default();
        for i in 0..12u64 {
            let outcome = if i == 9 {
                Outcome::Transport
            } else {
                Outcome::Status {
                    code: match i {
                        8 => 503,
                        7 => 404,
                        _ => 200,
                    },
                    cache: Some(if i < 6 { CacheHit::Hit } else { CacheHit::Miss }),
                }
            };
            rec.record(&Sample {
                t: RequestType::Classify,
                // The first two are the ramp-up.
                phase: if i < 2 { Phase::Warmup } else { Phase::Steady },
                second: i as usize / 4,
                response: Duration::from_millis(2 * (i + 1)),
                service: Duration::from_millis(i + 1),
                outcome,
                failed: matches!(outcome, Outcome::Transport)
                    || matches!(outcome, Outcome::Status { code, .. } if code >= 400),
            });
        }
        let r = build_result(
            &rec,
            "2026-01-01T00:00:00Z".into(),
            2.0,
            Duration::from_secs(3),
            &facts(Some(10.0), 5.0, 0.1),
        );
        assert_eq!(r.version, 2);
        assert_eq!(r.requests.total, 10);
        // The transport error, the 503 and the unexpected 404.
        assert_eq!(r.requests.errors, 3);
        assert_eq!(r.requests.by_status["200"], 7);
        assert_eq!(r.throughput_rps, 5.0);
        assert_eq!(r.duration_seconds, 2.0);
        assert_eq!(r.cache.as_ref().unwrap().hits, 4);
        assert_eq!(r.cache.as_ref().unwrap().lookups, 9);
        assert_eq!(r.latency_us.by_type["classify"].count, 10);
        // Response time counts from when due, service time from the send: here twice as long.
        let (resp, svc) = (
            &r.latency_us.overall,
            &r.service_time_us.as_ref().unwrap().overall,
        );
        assert!((resp.max - 2.0 * svc.max).abs() < 30.0, "{resp:?} {svc:?}");
        let warm = r.warmup.as_ref().unwrap();
        assert_eq!((warm.requests.total, warm.duration_seconds), (2, 1.0));
        let per_second: Vec<u64> = r.timeseries.iter().map(|s| s.requests).collect();
        assert_eq!(per_second, [4, 4, 4]);
        assert_eq!(r.timeseries[2].errors, 2); // 8 (503) and 9 (transport) were due in second 2
        assert!(r.generator.saturated);
        // What we write, `slo check` reads (deny_unknown_fields both ways).
        let text = serde_json::to_string(&r).unwrap();
        let back: LoadTestResult = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
