//! The queue's decisions, pure: claim order (priorities with aging), how many jobs to claim, what a
//! failure leads to, and a worker's identity. `queue.rs` carries them out in SQL.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Priorities run from -10 to 10 (the schema's check); 0 is the default.
pub const MIN_PRIORITY: i16 = -10;
pub const MAX_PRIORITY: i16 = 10;

/// The plan's batches: a worker never claims more than this at once.
pub const MAX_BATCH: usize = 100;

/// How the queue behaves; the defaults are the plan's (`kyb-processing`: 3 retries 5 s apart,
/// batches of 100, 10 workers).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Each priority point is worth this much waiting: a job of priority p is claimed as if it had
    /// been ready p steps earlier. So a job of priority -10 is passed by jobs of priority 10 ready
    /// up to 20 steps after it, and by none ready later: it cannot starve.
    pub aging_step: Duration,
    /// Attempts in all: the first and the retries.
    pub max_attempts: i32,
    /// Delay before a failed job is tried again.
    pub retry_delay: Duration,
    /// A claimed job is the worker's for this long unless renewed.
    pub lease: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            aging_step: Duration::from_secs(1),
            max_attempts: 4,
            retry_delay: Duration::from_secs(5),
            lease: Duration::from_secs(15),
        }
    }
}

impl Policy {
    /// When a job becomes claimable in claim order: its `run_at`, moved earlier by its priority's
    /// head start. Claims take the smallest first.
    pub fn ready_at(&self, run_at: DateTime<Utc>, priority: i16) -> DateTime<Utc> {
        let p = priority.clamp(MIN_PRIORITY, MAX_PRIORITY);
        let head_start = chrono::Duration::from_std(self.aging_step * p.unsigned_abs().into())
            .unwrap_or_default();
        if p >= 0 {
            run_at - head_start
        } else {
            run_at + head_start
        }
    }

    /// Heartbeats renew leases three times per lease, so two lost renewals in a row still keep it.
    pub fn heartbeat_every(&self) -> Duration {
        self.lease / 3
    }

    /// What a failed attempt (`attempts` made so far, this one included) leads to.
    pub fn after_failure(&self, attempts: i32, now: DateTime<Utc>) -> AfterFailure {
        if attempts >= self.max_attempts {
            AfterFailure::Dead
        } else {
            AfterFailure::Retry {
                run_at: now + chrono::Duration::from_std(self.retry_delay).unwrap_or_default(),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AfterFailure {
    Retry {
        run_at: DateTime<Utc>,
    },
    /// Attempts used up: into the dead letters.
    Dead,
}

/// How many jobs to claim: never more than the free slots (a job claimed but not started is held
/// hostage: its lease runs while it waits), never more than a batch.
pub fn claim_size(free_slots: usize) -> usize {
    free_slots.min(MAX_BATCH)
}

/// A worker's identity in leases and attempts: the pod (or host) name and a per-process boot id, so
/// a restarted pod of the same name is a new worker and a dead one never looks alive.
pub fn worker_identity(pod_or_host: &str, boot: uuid::Uuid) -> String {
    let name = if pod_or_host.trim().is_empty() {
        "worker"
    } else {
        pod_or_host.trim()
    };
    let boot = boot.simple().to_string();
    format!("{name}/{}", &boot[boot.len() - 12..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn priority_is_a_head_start_in_claim_order() {
        let p = Policy::default();
        assert_eq!(p.ready_at(t(100), 0), t(100));
        assert_eq!(p.ready_at(t(100), 10), t(90));
        assert_eq!(p.ready_at(t(100), -10), t(110));
        assert_eq!(p.ready_at(t(100), 99), t(90), "clamped");
        // A high-priority job ready now goes before a low one ready a little earlier...
        assert!(p.ready_at(t(105), 10) < p.ready_at(t(100), -10));
        // ...but not before one that has waited longer than the gap between their priorities.
        assert!(p.ready_at(t(121), 10) > p.ready_at(t(100), -10));
    }

    #[test]
    fn failures_retry_after_the_delay_until_attempts_run_out() {
        let p = Policy::default();
        assert_eq!(
            p.after_failure(1, t(0)),
            AfterFailure::Retry { run_at: t(5) }
        );
        assert_eq!(
            p.after_failure(3, t(0)),
            AfterFailure::Retry { run_at: t(5) }
        );
        assert_eq!(p.after_failure(4, t(0)), AfterFailure::Dead);
        assert_eq!(p.after_failure(9, t(0)), AfterFailure::Dead);
    }

    #[test]
    fn claims_fit_the_free_slots_and_a_batch() {
        assert_eq!(claim_size(0), 0);
        assert_eq!(claim_size(7), 7);
        assert_eq!(claim_size(1000), 100);
    }

    #[test]
    fn identities_differ_per_boot() {
        let a = worker_identity("kyb-worker-0", uuid::Uuid::from_u128(1));
        let b = worker_identity("kyb-worker-0", uuid::Uuid::from_u128(2));
        assert_ne!(a, b);
        assert!(a.starts_with("kyb-worker-0/"));
        assert!(worker_identity(" ", uuid::Uuid::from_u128(1)).starts_with("worker/"));
    }
}
