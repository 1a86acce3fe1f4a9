//! The load-test result file, schema version 2: what a load test writes and `kybctl slo check` reads.
//!
//! ```json
//! {
//!   "version": 2,                          // this schema; version 1 files are read too
//!   "started_at": "2026-11-29T03:00:00Z",  // RFC 3339, informational
//!   "duration_seconds": 60.0,              // the steady window, which every figure below describes
//!   "requests": {"total": 120000, "errors": 12, "by_status": {"200": 119988, "503": 12}},
//!   "throughput_rps": 2000.0,              // completed requests per second over the run
//!   "cache": {"hits": 114000, "lookups": 120000},
//!   "latency_us": {                        // microseconds
//!     "overall": {"count": 120000, "p50": 900.0, "p90": 2100.0, "p95": 3000.0,
//!                 "p99": 8000.0, "p99.9": 20000.0, "max": 45000.0},
//!     "by_type": {"classify": {"count": 60000, "p50": 1200.0, "...": 0}}
//!   },
//!   "service_time_us": {"overall": {...}, "by_type": {...}},  // from send, not from when due
//!   "warmup": {"duration_seconds": 5.0, "requests": {...}, "latency_us": {...}},
//!   "timeseries": [{"second": 0, "requests": 980, "errors": 0, "p50": 900.0, "p95": 2900.0, "p99": 7900.0}],
//!   "generator": {"requested_rps": 2000.0, "achieved_rps": 1999.5, "saturated": false}
//! }
//! ```
//!
//! Version 2 judges the steady window only: requests due after the ramp-up and before the stop.
//! `latency_us` is the response time, from when the schedule said a request was due to its last byte,
//! so a generator or target that fell behind shows in it (coordinated omission corrected);
//! `service_time_us` counts from the actual send. The ramp-up and the users' set-up requests are in
//! `warmup`, reported and never judged; `timeseries` holds every request of both, by the second of
//! the run it was due. A version 1 file has none of these three and describes the whole run.
//!
//! `errors` counts failed requests (transport errors, 5xx, and 4xx the scenario does not expect);
//! `by_status` is informational. `cache` may be
//! absent when the target reports no cache status. `requested_rps` is null for a closed-loop run (as fast as
//! possible); `saturated` is true when the generator itself ran out of capacity (workers or connections)
//! and so limited the rate. Unknown fields are refused, so a typo does not silently drop a metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::threshold::Percentile;

/// The schema version this build writes.
pub const VERSION: u32 = 2;
/// The versions it reads.
const READS: [u32; 2] = [1, 2];

#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid {what} file {path}: {source}")]
    Parse {
        what: &'static str,
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{what} file {path} has schema version {found}; this kybctl reads versions 1 and 2")]
    Version {
        what: &'static str,
        path: PathBuf,
        found: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoadTestResult {
    pub version: u32,
    pub started_at: String,
    pub duration_seconds: f64,
    pub requests: Requests,
    pub throughput_rps: f64,
    #[serde(default)]
    pub cache: Option<Cache>,
    pub latency_us: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_time_us: Option<Latency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<Warmup>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeseries: Vec<Second>,
    pub generator: Generator,
}

/// The ramp-up and the users' set-up requests: reported, not judged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Warmup {
    pub duration_seconds: f64,
    pub requests: Requests,
    pub latency_us: Latency,
}

/// Requests due within one second of the run (both phases), with their response-time percentiles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Second {
    pub second: u32,
    pub requests: u64,
    pub errors: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requests {
    pub total: u64,
    pub errors: u64,
    #[serde(default)]
    pub by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub hits: u64,
    pub lookups: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    pub overall: Summary,
    #[serde(default)]
    pub by_type: BTreeMap<String, Summary>,
}

/// Latency percentiles of `count` requests, in microseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
}

impl Summary {
    pub fn get(&self, p: Percentile) -> f64 {
        match p {
            Percentile::P50 => self.p50,
            Percentile::P90 => self.p90,
            Percentile::P95 => self.p95,
            Percentile::P99 => self.p99,
            Percentile::P99_9 => self.p99_9,
            Percentile::Max => self.max,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Generator {
    pub requested_rps: Option<f64>,
    pub achieved_rps: f64,
    pub saturated: bool,
}

impl LoadTestResult {
    /// Reads a result file; `what` names it in errors ("result", "baseline").
    pub fn load(path: &Path, what: &'static str) -> Result<Self, ResultError> {
        let text = std::fs::read_to_string(path).map_err(|source| ResultError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path, what)
    }

    fn parse(text: &str, path: &Path, what: &'static str) -> Result<Self, ResultError> {
        // The version is checked first so a newer file gets "unsupported version", not a field error.
        #[derive(Deserialize)]
        struct Versioned {
            version: u32,
        }
        let parse_err = |source| ResultError::Parse {
            what,
            path: path.to_owned(),
            source,
        };
        let Versioned { version } = serde_json::from_str(text).map_err(parse_err)?;
        if !READS.contains(&version) {
            return Err(ResultError::Version {
                what,
                path: path.to_owned(),
                found: version,
            });
        }
        serde_json::from_str(text).map_err(parse_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"{
      "version": 1, "started_at": "2026-11-29T03:00:00Z", "duration_seconds": 60.0,
      "requests": {"total": 1000, "errors": 1, "by_status": {"200": 999, "503": 1}},
      "throughput_rps": 16.7, "cache": {"hits": 990, "lookups": 1000},
      "latency_us": {
        "overall": {"count": 1000, "p50": 1, "p90": 2, "p95": 3, "p99": 4, "p99.9": 5, "max": 6},
        "by_type": {"classify": {"count": 10, "p50": 1, "p90": 2, "p95": 3, "p99": 4, "p99.9": 5, "max": 6}}
      },
      "generator": {"requested_rps": null, "achieved_rps": 16.7, "saturated": false}
    }"#;

    #[test]
    fn parses_the_documented_schema() {
        let r = LoadTestResult::parse(EXAMPLE, Path::new("r.json"), "result").unwrap();
        assert_eq!(r.requests.total, 1000);
        assert_eq!(r.latency_us.overall.get(Percentile::P99_9), 5.0);
        assert_eq!(r.latency_us.by_type["classify"].count, 10);
        assert_eq!(r.generator.requested_rps, None);
    }

    #[test]
    fn other_versions_and_unknown_fields_are_refused() {
        let v3 = EXAMPLE.replace("\"version\": 1", "\"version\": 3");
        let err = LoadTestResult::parse(&v3, Path::new("r.json"), "result").unwrap_err();
        assert!(err.to_string().contains("schema version 3"), "{err}");
        let typo = EXAMPLE.replace("\"throughput_rps\"", "\"throughput\"");
        let err = LoadTestResult::parse(&typo, Path::new("r.json"), "result").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid result file r.json"),
            "{err}"
        );
    }
}
