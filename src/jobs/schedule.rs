//! Recurring jobs: each schedule's cron expression enqueues its job once per tick, however many
//! schedulers run (every `kybctl worker` runs one). Exactly once because each tick's job carries the
//! key `schedule:<name>:<tick>`, which the queue accepts once; the schedulers need no election.

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use croner::Cron;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::policy::Policy;
use super::queue::{self, NewJob, QueueError};
use crate::config::ScheduleConfig;

/// A schedule ready to run: its cron expression parsed.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub name: String,
    pub cron: Cron,
    pub config: ScheduleConfig,
}

impl Schedule {
    /// Five fields (minute to weekday), or six with seconds first.
    pub fn parse(config: &ScheduleConfig) -> Result<Self, String> {
        let cron = croner::parser::CronParser::builder()
            .seconds(croner::parser::Seconds::Optional)
            .build()
            .parse(&config.cron)
            .map_err(|e| format!("schedule {:?}: cron {:?}: {e}", config.name, config.cron))?;
        Ok(Self {
            name: config.name.clone(),
            cron,
            config: config.clone(),
        })
    }

    /// The ticks after `after` up to and including `upto`, oldest first, at most `max` (the newest:
    /// after a long outage one catch-up run is enough, not one per missed tick).
    pub fn due(&self, after: DateTime<Utc>, upto: DateTime<Utc>, max: usize) -> Vec<DateTime<Utc>> {
        // Not croner's `iter_after`: with a seconds field it yields every other second.
        // Ticks fall on whole seconds; croner keeps the fraction of the instant it starts from.
        let mut ticks = std::collections::VecDeque::new();
        let mut at = after.trunc_subsecs(0);
        while let Ok(next) = self.cron.find_next_occurrence(&at, false) {
            if next > upto {
                break;
            }
            ticks.push_back(next);
            if ticks.len() > max {
                ticks.pop_front();
            }
            at = next;
        }
        ticks.into()
    }

    /// The key that makes a tick's job unique across schedulers.
    pub fn key(&self, tick: DateTime<Utc>) -> String {
        format!("schedule:{}:{}", self.name, tick.to_rfc3339())
    }

    fn job(&self, tick: DateTime<Utc>) -> NewJob {
        NewJob {
            unique_key: Some(self.key(tick)),
            ..NewJob::new(
                self.config.kind,
                json!({ "schedule": self.name, "tick": tick }),
            )
            .priority(self.config.priority)
        }
    }
}

/// Enqueues `ticks` of `schedule` (those another scheduler enqueued already are skipped); returns
/// how many this call enqueued.
pub async fn enqueue_ticks(
    pool: &PgPool,
    policy: &Policy,
    schedule: &Schedule,
    ticks: &[DateTime<Utc>],
) -> Result<usize, QueueError> {
    let jobs: Vec<NewJob> = ticks.iter().map(|t| schedule.job(*t)).collect();
    let mut conn = pool.acquire().await?;
    Ok(queue::enqueue(&mut conn, policy, &jobs).await?.len())
}

/// The most ticks of one schedule one round enqueues.
const CATCH_UP: usize = 60;

/// Runs `schedules` until shutdown, enqueueing into `pool` (the first shard's primary). On start it
/// catches up the latest tick missed while no scheduler ran.
pub async fn run(
    pool: PgPool,
    policy: Policy,
    schedules: Vec<Schedule>,
    shutdown: CancellationToken,
) {
    if schedules.is_empty() {
        return;
    }
    let mut last: Vec<DateTime<Utc>> = schedules
        .iter()
        .map(|s| {
            let now = Utc::now().trunc_subsecs(0);
            s.cron
                .find_previous_occurrence(&now, true)
                .map(|prev| prev - chrono::Duration::milliseconds(1))
                .unwrap_or(now)
        })
        .collect();
    loop {
        let now = Utc::now();
        for (s, after) in schedules.iter().zip(last.iter_mut()) {
            // A round late by a few seconds (a busy machine) still enqueues every tick it missed; only
            // a long outage is caught up with fewer (the newest CATCH_UP).
            let ticks = s.due(*after, now, CATCH_UP);
            if ticks.is_empty() {
                continue;
            }
            match enqueue_ticks(&pool, &policy, s, &ticks).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(schedule = %s.name, tick = %ticks[ticks.len() - 1], "scheduled job enqueued");
                    }
                    *after = now;
                }
                // Tried again next round; the unique key keeps a retry from doubling it.
                Err(e) => {
                    tracing::warn!(schedule = %s.name, error = %e, "cannot enqueue a scheduled job")
                }
            }
        }
        // Wake for the next tick of any schedule, at most a second from now (a clock that jumps, a
        // failed enqueue to retry).
        let next = schedules
            .iter()
            .filter_map(|s| s.cron.find_next_occurrence(&Utc::now(), false).ok())
            .min();
        let wait = next
            .and_then(|n| (n - Utc::now()).to_std().ok())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_secs(1));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::JobKind;
    use chrono::TimeZone;

    fn every(cron: &str) -> Schedule {
        Schedule::parse(&ScheduleConfig {
            name: "test".into(),
            cron: cron.into(),
            kind: JobKind::Noop,
            priority: 0,
        })
        .unwrap()
    }

    fn t(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, h, m, s).unwrap()
    }

    #[test]
    fn ticks_between_two_instants() {
        let hourly = every("0 * * * *");
        assert_eq!(
            hourly.due(t(9, 30, 0), t(12, 0, 0), 10),
            vec![t(10, 0, 0), t(11, 0, 0), t(12, 0, 0)]
        );
        assert_eq!(
            hourly.due(t(9, 30, 0), t(12, 0, 0), 1),
            vec![t(12, 0, 0)],
            "the newest only"
        );
        assert!(
            hourly.due(t(10, 0, 0), t(10, 59, 59), 10).is_empty(),
            "after is exclusive"
        );
        let secondly = every("* * * * * *");
        assert_eq!(secondly.due(t(9, 0, 0), t(9, 0, 3), 10).len(), 3);
    }

    #[test]
    fn bad_expressions_say_which_schedule() {
        let e = Schedule::parse(&ScheduleConfig {
            name: "report".into(),
            cron: "every hour".into(),
            kind: JobKind::IndustryReport,
            priority: 0,
        })
        .unwrap_err();
        assert!(e.contains("\"report\"") && e.contains("every hour"), "{e}");
    }

    #[test]
    fn a_tick_has_one_key_whoever_computes_it() {
        let s = every("*/5 * * * *");
        assert_eq!(
            s.key(t(10, 5, 0)),
            "schedule:test:2026-12-01T10:05:00+00:00"
        );
        assert_eq!(s.job(t(10, 5, 0)).unique_key, Some(s.key(t(10, 5, 0))));
    }
}
