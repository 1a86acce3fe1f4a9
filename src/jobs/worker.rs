//! The worker: claims jobs into its free slots, runs each in a task of its own (a panic fails the
//! attempt, not the worker), renews their leases, rescues jobs whose worker died, and on shutdown
//! lets in-flight jobs finish within the grace period and hands the rest back untried.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use super::failure::{Failure, FailureKind};
use super::handlers::{Ctx, Handler, HandlerError};
use super::policy::{self, AfterFailure, Policy};
use super::queue::{self, Claimed, QueueError};
use super::{wake, JobKind};
use crate::service::metrics::{JobLabels, JobOutcomeLabels, QueueDepthLabels, QueueLabels};
use crate::service::state::AppState;

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub queue: String,
    pub kinds: Vec<JobKind>,
    /// Jobs run at once (the plan's 10 workers).
    pub concurrency: usize,
    /// How often an idle worker looks for jobs without a wake-up.
    pub poll: Duration,
    /// How often expired leases are rescued.
    pub sweep: Duration,
    /// How long a job may run before its attempt fails.
    pub job_timeout: Duration,
    /// On shutdown, how long in-flight jobs may take to finish before they are handed back.
    pub grace: Duration,
    /// Succeeded and cancelled jobs are deleted this long after they finished.
    pub retention: Duration,
    /// This process in leases and attempts (see [`policy::worker_identity`]).
    pub identity: String,
    pub policy: Policy,
}

impl WorkerConfig {
    pub fn new(identity: String) -> Self {
        Self {
            queue: queue::DEFAULT_QUEUE.into(),
            kinds: JobKind::ALL.to_vec(),
            concurrency: 10,
            poll: Duration::from_secs(1),
            sweep: Duration::from_secs(2),
            job_timeout: Duration::from_secs(60),
            grace: Duration::from_secs(20),
            retention: Duration::from_secs(7 * 24 * 3600),
            identity,
            policy: Policy::default(),
        }
    }
}

/// An attempt in flight: what renews it, and how to stop it.
struct InFlight {
    shard: usize,
    token: i64,
    abort: AbortHandle,
}

type Running = Arc<Mutex<HashMap<Uuid, InFlight>>>;

fn lock(running: &Running) -> std::sync::MutexGuard<'_, HashMap<Uuid, InFlight>> {
    running.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs jobs with `handler` until `shutdown`, then returns once every in-flight job has finished or
/// been handed back.
pub async fn run(
    state: Arc<AppState>,
    cfg: WorkerConfig,
    handler: Handler,
    shutdown: CancellationToken,
) {
    let cfg = Arc::new(cfg);
    let ctxs: Vec<Arc<Ctx>> = state
        .db
        .shards()
        .iter()
        .map(|shard| {
            Arc::new(Ctx {
                state: state.clone(),
                shard: shard.clone(),
                policy: cfg.policy.clone(),
            })
        })
        .collect();
    let slots = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let running: Running = Arc::default();
    let wakeup = Arc::new(Notify::new());
    // Background tasks end with `background`, after the in-flight jobs are dealt with.
    let background = CancellationToken::new();
    tokio::spawn({
        let (config, queue) = (state.config.clone(), cfg.queue.clone());
        let (wakeup, stop) = (wakeup.clone(), background.clone());
        async move { wake::listen(&config, &queue, wakeup, stop).await }
    });
    tokio::spawn(heartbeats(
        ctxs.clone(),
        running.clone(),
        cfg.clone(),
        background.clone(),
    ));
    tokio::spawn(housekeeping(ctxs.clone(), cfg.clone(), background.clone()));
    tracing::info!(worker = %cfg.identity, queue = %cfg.queue, concurrency = cfg.concurrency, "worker running");

    let kinds: Vec<&str> = cfg.kinds.iter().map(|k| k.as_str()).collect();
    let mut next_shard = 0;
    while !shutdown.is_cancelled() {
        let mut claimed_any = false;
        for i in 0..ctxs.len() {
            let n = policy::claim_size(slots.available_permits());
            if n == 0 {
                break;
            }
            let shard = (next_shard + i) % ctxs.len();
            let ctx = &ctxs[shard];
            let Ok(primary) = ctx.shard.writable() else {
                continue;
            };
            let lease = cfg.policy.lease;
            match queue::claim(primary, &cfg.queue, &kinds, &cfg.identity, n, lease).await {
                Ok(jobs) => {
                    claimed_any |= !jobs.is_empty();
                    for job in jobs {
                        // Claims never exceed the free slots, and only this loop takes them.
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let slot = Slot {
                            shard,
                            _permit: slot,
                        };
                        start(ctx.clone(), job, &handler, &running, &wakeup, &cfg, slot);
                    }
                }
                Err(e) => tracing::warn!(error = %e, shard = %ctx.shard.id, "cannot claim jobs"),
            }
        }
        next_shard = (next_shard + 1) % ctxs.len().max(1);
        if claimed_any && slots.available_permits() > 0 {
            // More may be ready: claim again at once.
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = wakeup.notified() => {}
            _ = tokio::time::sleep(cfg.poll) => {}
        }
    }

    // Shutdown: no more claims; in-flight jobs finish within the grace period or are handed back.
    let all = cfg.concurrency.max(1) as u32;
    let finished = tokio::time::timeout(cfg.grace, slots.acquire_many(all)).await;
    if finished.is_err() {
        let left: Vec<(Uuid, InFlight)> = lock(&running).drain().collect();
        for (_, f) in &left {
            f.abort.abort();
        }
        for (i, ctx) in ctxs.iter().enumerate() {
            let mine: Vec<(Uuid, i64)> = left
                .iter()
                .filter(|(_, f)| f.shard == i)
                .map(|(id, f)| (*id, f.token))
                .collect();
            if mine.is_empty() {
                continue;
            }
            let Ok(primary) = ctx.shard.writable() else {
                continue;
            };
            match queue::hand_back(primary, &mine).await {
                Ok(n) => tracing::info!(jobs = n, "handed back unfinished jobs"),
                Err(e) => {
                    tracing::warn!(error = %e, "could not hand jobs back; they are rescued when their lease expires")
                }
            }
        }
    }
    background.cancel();
    tracing::info!(worker = %cfg.identity, "worker stopped");
}

/// A free slot taken for a job of `shard`.
struct Slot {
    shard: usize,
    /// Held until the job is done; dropping it frees the slot.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// Runs `job` in a task of its own, holding `slot` until it is done.
fn start(
    ctx: Arc<Ctx>,
    job: Claimed,
    handler: &Handler,
    running: &Running,
    wakeup: &Arc<Notify>,
    cfg: &Arc<WorkerConfig>,
    slot: Slot,
) {
    let metrics = ctx.state.metrics.clone();
    let ready_since = job.run_at.max(job.enqueued_at);
    let waited = (chrono::Utc::now() - ready_since)
        .to_std()
        .unwrap_or_default();
    metrics
        .job_start_delay
        .get_or_create(&JobLabels {
            kind: job.kind.clone(),
        })
        .observe(waited.as_secs_f64());
    metrics.jobs_running.inc();
    // The handler runs in its own task: a panic ends that task, not this one.
    // Called inside the task too: a handler that panics before its future even exists is caught.
    // A job's own trace (traces only: a `debug` span), with its handler's statements and calls below.
    let span = tracing::debug_span!(
        "job",
        otel.name = %format_args!("job {}", job.kind),
        otel.kind = "consumer",
        job.id = %job.id,
        job.kind = %job.kind,
        job.attempt = job.attempts,
        otel.status_code = tracing::field::Empty,
    );
    let handler = {
        let (handler, ctx, job) = (handler.clone(), ctx.clone(), job.clone());
        tokio::spawn(async move { handler(ctx, job).await }.instrument(span.clone()))
    };
    lock(running).insert(
        job.id,
        InFlight {
            shard: slot.shard,
            token: job.lease_token,
            abort: handler.abort_handle(),
        },
    );
    let (running, wakeup, cfg) = (running.clone(), wakeup.clone(), cfg.clone());
    let abort = handler.abort_handle();
    tokio::spawn(async move {
        let outcome = match tokio::time::timeout(cfg.job_timeout, handler).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(HandlerError::Queue(QueueError::LeaseLost(_))))) => Err(None),
            Ok(Ok(Err(e))) => Err(Some(Failure::new(e.kind(), e.to_string()))),
            Ok(Err(joined)) if joined.is_panic() => Err(Some(Failure::new(
                FailureKind::Internal,
                format!("the job panicked: {}", panic_message(joined.into_panic())),
            ))),
            // Aborted: its lease was lost, or the worker is shutting down and hands it back.
            Ok(Err(_)) => Err(None),
            Err(_) => {
                // Dropping a task's handle detaches the task: without this, a hung handler would
                // keep its connection and its work after its slot went to the next job.
                abort.abort();
                Err(Some(Failure::new(
                    FailureKind::Timeout,
                    format!("timed out after {:?}", cfg.job_timeout),
                )))
            }
        };
        let label = match outcome {
            Ok(()) => "succeeded",
            Err(None) => "lost",
            Err(Some(failure)) => {
                span.record("otel.status_code", "error");
                record_failure(&ctx, &job, &failure).await
            }
        };
        metrics
            .job_attempts
            .get_or_create(&JobOutcomeLabels {
                kind: job.kind.clone(),
                outcome: label.into(),
            })
            .inc();
        metrics.jobs_running.dec();
        lock(&running).remove(&job.id);
        drop(slot);
        wakeup.notify_one();
    });
}

async fn record_failure(ctx: &Ctx, job: &Claimed, failure: &Failure) -> &'static str {
    let (error, kind) = (failure.detail.as_str(), failure.kind.as_str());
    let Ok(primary) = ctx.shard.writable() else {
        tracing::warn!(job = %job.id, error, "attempt failed and cannot be recorded; it is rescued when its lease expires");
        return "failed";
    };
    match queue::fail(primary, &ctx.policy, job, failure).await {
        Ok(AfterFailure::Retry { run_at }) => {
            tracing::info!(job = %job.id, kind = %job.kind, attempt = job.attempts, %run_at, error, failure = kind, "job failed; retrying");
            "failed"
        }
        Ok(AfterFailure::Dead) => {
            tracing::warn!(job = %job.id, kind = %job.kind, attempts = job.attempts, error, failure = kind, "job failed for the last time; moved to the dead letters");
            "dead"
        }
        Err(QueueError::LeaseLost(_)) => "lost",
        Err(e) => {
            tracing::warn!(job = %job.id, error = %e, "attempt failed and cannot be recorded; it is rescued when its lease expires");
            "failed"
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Renews the leases of in-flight jobs; stops the ones whose lease was lost (their commit would be
/// refused anyway: this only saves their work).
async fn heartbeats(
    ctxs: Vec<Arc<Ctx>>,
    running: Running,
    cfg: Arc<WorkerConfig>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(cfg.policy.heartbeat_every());
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for (i, ctx) in ctxs.iter().enumerate() {
            let mine: Vec<(Uuid, i64)> = lock(&running)
                .iter()
                .filter(|(_, f)| f.shard == i)
                .map(|(id, f)| (*id, f.token))
                .collect();
            let Ok(primary) = ctx.shard.writable() else {
                continue;
            };
            match queue::heartbeat(primary, &mine, cfg.policy.lease).await {
                Ok(lost) => {
                    for id in lost {
                        if let Some(f) = lock(&running).get(&id) {
                            tracing::warn!(job = %id, "lease lost; stopping the job");
                            f.abort.abort();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot renew job leases"),
            }
        }
    }
}

/// Rescues expired leases (any worker may: the query skips rows another holds), deletes finished
/// jobs past their retention and refreshes the queue gauges.
async fn housekeeping(ctxs: Vec<Arc<Ctx>>, cfg: Arc<WorkerConfig>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.sweep);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(first) = ctxs.first() else { return };
        let metrics = &first.state.metrics;
        metrics.queue_depth.clear();
        metrics.queue_oldest_ready.clear();
        metrics.dead_letters.clear();
        for ctx in &ctxs {
            let Ok(primary) = ctx.shard.writable() else {
                continue;
            };
            match queue::rescue_expired(primary).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(jobs = n, "rescued jobs whose worker stopped renewing"),
                Err(e) => tracing::warn!(error = %e, "cannot rescue expired jobs"),
            }
            if let Err(e) = queue::purge_finished(primary, cfg.retention).await {
                tracing::warn!(error = %e, "cannot delete old finished jobs");
            }
            if let Ok(g) = queue::gauges(primary).await {
                for (queue, kind, priority, n) in g.depth {
                    metrics
                        .queue_depth
                        .get_or_create(&QueueDepthLabels {
                            queue,
                            kind,
                            priority,
                        })
                        .inc_by(n);
                }
                for (queue, age) in g.oldest_ready_seconds {
                    let gauge = metrics
                        .queue_oldest_ready
                        .get_or_create(&QueueLabels { queue });
                    if age > gauge.get() {
                        gauge.set(age);
                    }
                }
                for (queue, n) in g.dead_letters {
                    metrics
                        .dead_letters
                        .get_or_create(&QueueLabels { queue })
                        .inc_by(n);
                }
            }
        }
    }
}
