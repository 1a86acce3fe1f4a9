//! Asynchronous work: a job queue in PostgreSQL (the merchants' database, so a job is enqueued in the
//! transaction of the write that needs it), workers that claim jobs under short fenced leases, and
//! the job types' effects.
//!
//! - [`policy`]: the decisions, pure (claim order with aging, batch sizes, retries).
//! - [`queue`]: the SQL.
//! - [`handlers`]: what each kind of job does; its effect commits with its completion.
//! - [`failure`]: why an attempt failed, for operators and for the job's caller.
//! - [`worker`]: claiming, heartbeats, rescue of expired leases, graceful shutdown.
//! - [`schedule`]: recurring jobs, each tick enqueued once across every scheduler.
//! - [`wake`]: an optional Redis nudge after a commit, so idle workers need not wait for their poll.

pub mod failure;
pub mod handlers;
pub mod policy;
pub mod queue;
pub mod schedule;
pub mod wake;
pub mod worker;

use serde::{Deserialize, Serialize};

/// The kinds of job (the `jobs.kind` check lists the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// Classify one merchant (`POST /v1/merchants?async=true`, or re-classification).
    Classify,
    /// Assess one merchant's risk.
    RiskAssessment,
    /// Materialise the industry report.
    IndustryReport,
    /// Enqueue a classification of every merchant (after the reference data changed).
    ReclassifyAll,
    /// Does nothing: for smoke checks and the queue's own benchmark.
    Noop,
}

impl JobKind {
    pub const ALL: [JobKind; 5] = [
        JobKind::Classify,
        JobKind::RiskAssessment,
        JobKind::IndustryReport,
        JobKind::ReclassifyAll,
        JobKind::Noop,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Classify => "classify",
            JobKind::RiskAssessment => "risk_assessment",
            JobKind::IndustryReport => "industry_report",
            JobKind::ReclassifyAll => "reclassify_all",
            JobKind::Noop => "noop",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl std::fmt::Display for JobKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The payload of the jobs about one merchant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MerchantJob {
    pub merchant_id: uuid::Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in JobKind::ALL {
            assert_eq!(JobKind::parse(k.as_str()), Some(k));
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
        assert_eq!(JobKind::parse("email"), None);
    }

    #[test]
    fn every_kind_is_allowed_by_the_schema() {
        let sql = include_str!("../../migrations/20261202000001_jobs.up.sql");
        for k in JobKind::ALL {
            assert!(sql.contains(&format!("'{}'", k.as_str())), "{k}");
        }
    }
}
