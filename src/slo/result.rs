//! The load-test result file, schema version 1: what a load test writes and `kybctl slo check` reads.
//!
//! ```json
//! {
//!   "version": 1,                          // this schema; other versions are refused
//!   "started_at": "2026-11-29T03:00:00Z",  // RFC 3339, informational
//!   "duration_seconds": 60.0,
//!   "requests": {"total": 120000, "errors": 12, "by_status": {"200": 119988, "503": 12}},
//!   "throughput_rps": 2000.0,              // completed requests per second over the run
//!   "cache": {"hits": 114000, "lookups": 120000},
//!   "latency_us": {                        // microseconds
//!     "overall": {"count": 120000, "p50": 900.0, "p90": 2100.0, "p95": 3000.0,
//!                 "p99": 8000.0, "p99.9": 20000.0, "max": 45000.0},
//!     "by_type": {"classify": {"count": 60000, "p50": 1200.0, "...": 0}}
//!   },
//!   "generator": {"requested_rps": 2000.0, "achieved_rps": 1999.5, "saturated": false}
//! }
//! ```
//!
//! `errors` counts failed requests (transport errors and 5xx); `by_status` is informational. `cache` may be
//! absent when the target reports no cache status. `requested_rps` is null for a closed-loop run (as fast as
//! possible); `saturated` is true when the generator itself ran out of capacity (workers or connections)
//! and so limited the rate. Unknown fields are refused, so a typo does not silently drop a metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::threshold::Percentile;

/// The schema version this build reads and writes.
pub const VERSION: u32 = 1;

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
    #[error("{what} file {path} has schema version {found}; this kybctl reads version {VERSION}")]
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
    pub generator: Generator,
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
        if version != VERSION {
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
        let v2 = EXAMPLE.replace("\"version\": 1", "\"version\": 2");
        let err = LoadTestResult::parse(&v2, Path::new("r.json"), "result").unwrap_err();
        assert!(err.to_string().contains("schema version 2"), "{err}");
        let typo = EXAMPLE.replace("\"throughput_rps\"", "\"throughput\"");
        let err = LoadTestResult::parse(&typo, Path::new("r.json"), "result").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid result file r.json"),
            "{err}"
        );
    }
}
