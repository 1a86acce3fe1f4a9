//! `kybctl jobs list|show|stats|enqueue|retry|cancel|dead-letters|replay`: the queue of every shard.

use uuid::Uuid;

use super::exit;
use super::output::{self, Format};
use crate::config::Overrides;
use crate::jobs::policy::Policy;
use crate::jobs::queue::{self, NewJob, QueueError};
use crate::jobs::{JobKind, MerchantJob};
use crate::service::db::Database;

#[derive(Debug, clap::Subcommand)]
pub enum JobsCommand {
    /// The newest jobs, optionally of one status and kind.
    List {
        #[command(flatten)]
        overrides: Overrides,
        /// queued, running, succeeded, failed, dead or cancelled.
        #[arg(long, value_parser = ["queued", "running", "succeeded", "failed", "dead", "cancelled"])]
        status: Option<String>,
        #[arg(long, value_parser = parse_kind)]
        kind: Option<JobKind>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// One job, whole.
    Show {
        id: Uuid,
        #[command(flatten)]
        overrides: Overrides,
        #[arg(short, long, value_enum, default_value = "yaml")]
        output: Format,
    },
    /// Jobs by queue, kind, priority and status (unfinished, and finished within the hour), with the
    /// age of the oldest ready one.
    Stats {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Enqueue a job: `classify` and `risk_assessment` need `--merchant`.
    Enqueue {
        #[arg(value_parser = parse_kind)]
        kind: JobKind,
        #[arg(long)]
        merchant: Option<Uuid>,
        /// -10 to 10; higher runs first (a lower one still runs: priorities age).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(i16).range(-10..=10))]
        priority: i16,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Run a job that waits for its retry delay now.
    Retry {
        id: Uuid,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Cancel a job that has not started (or waits for its retry).
    Cancel {
        id: Uuid,
        #[command(flatten)]
        overrides: Overrides,
    },
    /// Jobs that used up their attempts, with each attempt's error.
    DeadLetters {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Enqueue a dead job again, once: replaying it a second time prints the first copy.
    Replay {
        id: Uuid,
        #[command(flatten)]
        overrides: Overrides,
    },
}

fn parse_kind(s: &str) -> Result<JobKind, String> {
    JobKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown job type {s:?} (one of {})", all.join(", "))
    })
}

fn fail(e: impl std::fmt::Display) -> u8 {
    eprintln!("error: {e}");
    exit::CHECK_FAILED
}

pub async fn run(cmd: JobsCommand) -> u8 {
    let overrides = match &cmd {
        JobsCommand::List { overrides, .. }
        | JobsCommand::Show { overrides, .. }
        | JobsCommand::Stats { overrides, .. }
        | JobsCommand::Enqueue { overrides, .. }
        | JobsCommand::Retry { overrides, .. }
        | JobsCommand::Cancel { overrides, .. }
        | JobsCommand::DeadLetters { overrides, .. }
        | JobsCommand::Replay { overrides, .. } => overrides,
    };
    let db = match super::database(overrides) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let policy = Policy::default();
    match cmd {
        JobsCommand::List {
            status,
            kind,
            limit,
            output,
            ..
        } => {
            let mut jobs = Vec::new();
            for shard in db.shards() {
                match queue::list(
                    &shard.primary,
                    status.as_deref(),
                    kind.map(|k| k.as_str()),
                    limit,
                )
                .await
                {
                    Ok(mut j) => jobs.append(&mut j),
                    Err(e) => return fail(e),
                }
            }
            jobs.sort_by(|a, b| b.enqueued_at.cmp(&a.enqueued_at).then(b.id.cmp(&a.id)));
            jobs.truncate(limit as usize);
            print!(
                "{}",
                output::render(output, &jobs, || {
                    let mut t = output::table(vec![
                        "ID",
                        "KIND",
                        "STATUS",
                        "PRIORITY",
                        "ATTEMPTS",
                        "ENQUEUED",
                        "LAST ERROR",
                    ]);
                    for j in &jobs {
                        t.add_row(vec![
                            j.id.to_string(),
                            j.kind.clone(),
                            j.status.clone(),
                            j.priority.to_string(),
                            format!("{}/{}", j.attempts, j.max_attempts),
                            j.enqueued_at.to_rfc3339(),
                            j.last_error.clone().unwrap_or_default(),
                        ]);
                    }
                    t
                })
            );
            exit::OK
        }
        JobsCommand::Show { id, output, .. } => match find(&db, id).await {
            Ok(Some((job, _))) => {
                print!(
                    "{}",
                    output::render(output, &job, || {
                        let mut t = output::table(vec!["FIELD", "VALUE"]);
                        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&job) {
                            for (k, v) in fields {
                                t.add_row(vec![k, v.to_string()]);
                            }
                        }
                        t
                    })
                );
                exit::OK
            }
            Ok(None) => fail(QueueError::NotFound(id)),
            Err(e) => fail(e),
        },
        JobsCommand::Stats { output, .. } => {
            let mut rows = Vec::new();
            for shard in db.shards() {
                match queue::stats(&shard.primary).await {
                    Ok(mut r) => rows.append(&mut r),
                    Err(e) => return fail(e),
                }
            }
            print!(
                "{}",
                output::render(output, &rows, || {
                    let mut t = output::table(vec![
                        "QUEUE",
                        "KIND",
                        "PRIORITY",
                        "STATUS",
                        "JOBS",
                        "OLDEST READY (s)",
                    ]);
                    for r in &rows {
                        t.add_row(vec![
                            r.queue.clone(),
                            r.kind.clone(),
                            r.priority.to_string(),
                            r.status.clone(),
                            r.jobs.to_string(),
                            r.oldest_ready_seconds
                                .map(|s| format!("{s:.1}"))
                                .unwrap_or_default(),
                        ]);
                    }
                    t
                })
            );
            exit::OK
        }
        JobsCommand::Enqueue {
            kind,
            merchant,
            priority,
            ..
        } => {
            let needs_merchant = matches!(kind, JobKind::Classify | JobKind::RiskAssessment);
            let (payload, shard) = match (needs_merchant, merchant) {
                (true, Some(id)) => (
                    serde_json::to_value(MerchantJob { merchant_id: id }).unwrap_or_default(),
                    db.shard_for(&id.to_string()),
                ),
                (true, None) => {
                    eprintln!("error: a {kind} job needs --merchant ID");
                    return exit::USAGE;
                }
                (false, Some(_)) => {
                    eprintln!("error: a {kind} job takes no --merchant");
                    return exit::USAGE;
                }
                (false, None) => (serde_json::json!({}), &db.shards()[0]),
            };
            let job = NewJob::new(kind, payload).priority(priority);
            let enqueued = async {
                let mut conn = shard.primary.acquire().await.map_err(QueueError::from)?;
                queue::enqueue(&mut conn, &policy, &[job]).await
            };
            match enqueued.await {
                Ok(ids) => {
                    for id in ids {
                        println!("{id}");
                    }
                    exit::OK
                }
                Err(e) => fail(e),
            }
        }
        JobsCommand::Retry { id, .. } => {
            on_its_shard(&db, id, |pool| async move {
                queue::retry_now(&pool, &policy, id)
                    .await
                    .map(|()| format!("job {id} runs now"))
            })
            .await
        }
        JobsCommand::Cancel { id, .. } => {
            on_its_shard(&db, id, |pool| async move {
                queue::cancel(&pool, id)
                    .await
                    .map(|()| format!("job {id} cancelled"))
            })
            .await
        }
        JobsCommand::DeadLetters { limit, output, .. } => {
            let mut letters = Vec::new();
            for shard in db.shards() {
                match queue::dead_letters(&shard.primary, limit).await {
                    Ok(mut l) => letters.append(&mut l),
                    Err(e) => return fail(e),
                }
            }
            letters.sort_by_key(|l| std::cmp::Reverse(l.died_at));
            letters.truncate(limit as usize);
            print!(
                "{}",
                output::render(output, &letters, || {
                    let mut t = output::table(vec![
                        "JOB",
                        "KIND",
                        "DIED",
                        "ATTEMPTS",
                        "LAST ERROR",
                        "REPLAYED AS",
                    ]);
                    for l in &letters {
                        let errors = l.errors.as_array().cloned().unwrap_or_default();
                        t.add_row(vec![
                            l.job_id.to_string(),
                            l.kind.clone(),
                            l.died_at.to_rfc3339(),
                            errors.len().to_string(),
                            errors
                                .last()
                                .and_then(|e| e["error"].as_str())
                                .unwrap_or_default()
                                .to_owned(),
                            l.replay_job_id.map(|r| r.to_string()).unwrap_or_default(),
                        ]);
                    }
                    t
                })
            );
            exit::OK
        }
        JobsCommand::Replay { id, .. } => {
            on_its_shard(&db, id, |pool| async move {
                queue::replay(&pool, &policy, id).await.map(|(copy, new)| {
                    if new {
                        format!("{copy}")
                    } else {
                        format!("{copy} (replayed before; not enqueued again)")
                    }
                })
            })
            .await
        }
    }
}

/// The job and the index of the shard that holds it.
async fn find(db: &Database, id: Uuid) -> Result<Option<(queue::JobView, usize)>, QueueError> {
    for (i, shard) in db.shards().iter().enumerate() {
        if let Some(job) = queue::get(&shard.primary, id).await? {
            return Ok(Some((job, i)));
        }
    }
    Ok(None)
}

/// Runs `action` on the shard that holds job (or dead letter) `id`, printing what it says.
async fn on_its_shard<F, Fut>(db: &Database, id: Uuid, action: F) -> u8
where
    F: FnOnce(sqlx::PgPool) -> Fut,
    Fut: std::future::Future<Output = Result<String, QueueError>>,
{
    let shard = match find(db, id).await {
        Ok(Some((_, i))) => &db.shards()[i],
        Ok(None) => return fail(QueueError::NotFound(id)),
        Err(e) => return fail(e),
    };
    match action(shard.primary.clone()).await {
        Ok(said) => {
            println!("{said}");
            exit::OK
        }
        Err(e) => fail(e),
    }
}
