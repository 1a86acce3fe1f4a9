//! `kybctl worker`: runs jobs from the queue, with `/metrics` beside it.

use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::config::{Config, Overrides};
use crate::jobs::policy::{worker_identity, Policy};
use crate::jobs::schedule::{self, Schedule};
use crate::jobs::worker::{self, WorkerConfig};
use crate::jobs::JobKind;
use crate::service::state::AppState;

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    overrides: Overrides,
    /// Job kinds to run (repeat or comma-separate; default all): classify, risk_assessment,
    /// industry_report, reclassify_all, noop.
    #[arg(long = "types", value_delimiter = ',', value_parser = parse_kind)]
    types: Vec<JobKind>,
    /// Jobs run at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    concurrency: u16,
    #[arg(long, default_value = crate::jobs::queue::DEFAULT_QUEUE)]
    queue: String,
    /// A claimed job is this worker's for this long unless renewed (renewed every third of it).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// How long a job may run before its attempt fails.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    job_timeout: Duration,
    /// On SIGTERM, how long in-flight jobs may take before they are handed back untried (keep it
    /// under the pod's termination grace period).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// How often an idle worker looks for jobs when no Redis wake-up comes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Finished jobs (succeeded, cancelled) are deleted this long after they finished; dead ones
    /// stay with their dead letters.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// This worker's name in leases (default: the pod name, else the host name); a boot id is added.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

fn parse_kind(s: &str) -> Result<JobKind, String> {
    JobKind::parse(s).ok_or_else(|| {
        let all: Vec<&str> = JobKind::ALL.iter().map(|k| k.as_str()).collect();
        format!("unknown job type {s:?} (one of {})", all.join(", "))
    })
}

pub async fn run(args: WorkerArgs) -> u8 {
    let config = match Config::load(&args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let metrics_listener = match TcpListener::bind(config.metrics_listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", config.metrics_listen);
            return exit::USAGE;
        }
    };
    let state = match AppState::build_without_api(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let shutdown = CancellationToken::new();
    state.spawn_background(shutdown.clone());
    let metrics_app = crate::service::api::metrics_router(state.clone())
        .route("/health", axum::routing::get(|| async { "ok" }));
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name = args.identity.unwrap_or(host);
    let mut cfg = WorkerConfig::new(worker_identity(&name, uuid::Uuid::new_v4()));
    cfg.queue = args.queue;
    if !args.types.is_empty() {
        cfg.kinds = args.types;
    }
    cfg.concurrency = args.concurrency.into();
    cfg.job_timeout = args.job_timeout;
    cfg.grace = args.grace;
    cfg.poll = args.poll;
    cfg.retention = args.retention;
    cfg.policy = Policy {
        lease: args.lease,
        ..Policy::default()
    };
    let schedules = match state
        .config
        .jobs
        .schedules
        .iter()
        .map(Schedule::parse)
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: jobs.schedules: {e}");
            return exit::USAGE;
        }
    };
    // Every worker schedules: each tick's job is enqueued once however many do.
    tokio::spawn(schedule::run(
        state.db.shards()[0].primary.clone(),
        cfg.policy.clone(),
        schedules,
        shutdown.clone(),
    ));
    let stop_jobs = CancellationToken::new();
    let on_signal = stop_jobs.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight jobs");
        on_signal.cancel();
    });
    worker::run(state, cfg, crate::jobs::handlers::standard(), stop_jobs).await;
    shutdown.cancel();
    exit::OK
}
