//! The `kybctl` command line: one binary whose subcommands are the service, the migrator and the demo.

mod auth;
mod db;
mod demo;
mod jobs;
mod loadtest;
mod migrate;
mod monitoring;
mod operator;
mod output;
mod progress;
mod rollout;
mod rollout_actions;
mod rollout_status;
mod rollout_view;
mod serve;
mod shard_report;
mod slo;
mod worker;

pub use serve::start as start_service;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::service::db::{Database, Serving};
use crate::service::metrics::Metrics;
use crate::telemetry::{self, LogFormat};

/// Exit codes, the same for every command.
pub mod exit {
    pub const OK: u8 = 0;
    /// The command's check failed.
    pub const CHECK_FAILED: u8 = 1;
    /// Bad usage or environment: a flag, a file, an unreachable dependency.
    pub const USAGE: u8 = 2;
    /// The check could not decide (too few samples, a missing metric, a limited load generator) and
    /// nothing failed; CI can tell "not proven" from "broken".
    pub const INCONCLUSIVE: u8 = 3;
    /// `rollout status`: the rollout is paused (the same code as INCONCLUSIVE: it is waiting for a
    /// decision, neither done nor failed).
    pub const PAUSED: u8 = 3;
    /// Not settled yet: `rollout status` found the rollout still progressing.
    pub const NOT_SETTLED: u8 = 4;

    /// An SLO verdict's code, the same from `slo check` and `loadtest --threshold`.
    pub fn of(outcome: crate::slo::Outcome) -> u8 {
        match outcome {
            crate::slo::Outcome::Pass => OK,
            crate::slo::Outcome::Fail => CHECK_FAILED,
            crate::slo::Outcome::Inconclusive => INCONCLUSIVE,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "kybctl",
    version,
    about = "Run and operate the KYB platform: API service, operator, migrations, indexes, demo, SLO gate",
    after_help = "Exit codes: 0 success, 1 the command's check failed (or, for rollout promote|abort|retry|undo, the rollout's state does not allow it), 2 usage or environment error, 3 the check was inconclusive (slo check) or the rollout is paused (rollout status), 4 not settled yet (rollout status).\n\nExamples:\n  kybctl demo\n  kybctl serve --listen 0.0.0.0:8080 --database-url postgres://kyb@db/kyb --redis-url redis://cache:6379/\n  kybctl migrate up --database-url postgres://kyb@db/kyb\n  kybctl migrate status -o json\n  kybctl db indexes verify --database-url postgres://kyb@db/kyb\n  kybctl loadtest --target http://localhost:8080 --users 50 --duration 30s --out result.json\n  kybctl slo check --result result.json --junit slo.xml\n  kybctl crd | kubectl apply --server-side -f -\n  kybctl operator --watch-namespace team-a,team-b\n  kybctl rollout status kyb -n prod --watch --timeout 10m\n  kybctl rollout pause kyb -n prod\n  kybctl rollout get kyb -n prod\n  kybctl rollout promote kyb -n prod\n  kybctl rollout undo kyb -n prod --to-revision 3\n  source <(kybctl completions bash)"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "human",
        env = "KYB_LOG_FORMAT"
    )]
    log_format: LogFormat,
    /// No colours in logs, tables and progress (also when NO_COLOR is set; colours need a terminal anyway).
    #[arg(long, global = true, env = "NO_COLOR")]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the KYB API service.
    Serve(serve::ServeArgs),
    /// Apply, revert, inspect and lint the embedded schema migrations.
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Database upkeep on live data.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// API keys for `kybctl serve`: `auth new-key` makes one.
    #[command(subcommand)]
    Auth(auth::AuthCommand),
    /// Run queued jobs (classification, risk assessment, reports) until SIGTERM.
    Worker(worker::WorkerArgs),
    /// Inspect and steer the job queue: list, show, stats, retry, cancel, dead-letters, replay.
    #[command(subcommand)]
    Jobs(jobs::JobsCommand),
    /// Run the service on a throwaway local PostgreSQL (and Redis when installed).
    Demo(demo::DemoArgs),
    /// Print the CustomResourceDefinitions (KybPlatform, KybAnalysisTemplate, KybAnalysisRun) as YAML,
    /// for `kubectl apply -f -`; `--dir DIR` writes them as the files of `crds/` instead.
    Crd {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Reconcile KybPlatform resources into running, autoscaled API services.
    Operator(operator::OperatorArgs),
    /// Check service level objectives against a load-test result.
    #[command(subcommand)]
    Slo(slo::SloCommand),
    /// Load a KYB service with a realistic traffic mix; write the result `slo check` reads.
    Loadtest(loadtest::LoadtestArgs),
    /// Follow and steer a KybPlatform's rollout: status, get, history, pause, resume, promote, abort,
    /// retry, undo.
    #[command(subcommand)]
    Rollout(rollout::RolloutCommand),
    /// Alerting and recording rules of a KybPlatform: `alerts render -f FILE`.
    #[command(subcommand)]
    Alerts(monitoring::AlertsCommand),
    /// The Grafana dashboard of a KybPlatform: `dashboard render -f FILE`.
    #[command(subcommand)]
    Dashboard(monitoring::DashboardCommand),
    /// Print a shell completion script: `source <(kybctl completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Parses arguments, runs the command and returns its exit code.
pub fn main() -> u8 {
    main_with(&crate::schema::migrate::MIGRATOR)
}

/// [`main`] of a binary built with other migrations than `migrations/` (see
/// [`crate::schema::migrate::embed`]).
pub fn main_with(migrations: &'static sqlx::migrate::Migrator) -> u8 {
    crate::schema::migrate::embed(migrations);
    let cli = Cli::parse();
    output::set_color_allowed(!cli.no_color);
    let color_logs = !cli.no_color && std::io::IsTerminal::is_terminal(&std::io::stderr());
    // Before the trace exporter builds its HTTP client, so that client uses the build's one provider.
    crate::tls::ensure_crypto_provider();
    // Held to the end: dropping it flushes the traces still batched.
    let _telemetry = telemetry::init(cli.log_format, color_logs);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return exit::USAGE;
        }
    };
    rt.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Migrate(cmd) => migrate::run(cmd).await,
            Command::Db(cmd) => db::run(cmd).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Worker(args) => worker::run(args).await,
            Command::Jobs(cmd) => jobs::run(cmd).await,
            Command::Auth(cmd) => auth::run(cmd),
            Command::Operator(args) => operator::run(args).await,
            Command::Crd { dir } => crd(dir.as_deref()),
            Command::Slo(cmd) => slo::run(cmd),
            Command::Loadtest(args) => loadtest::run(args).await,
            Command::Rollout(cmd) => rollout::run(cmd).await,
            Command::Alerts(cmd) => monitoring::alerts(cmd),
            Command::Dashboard(cmd) => monitoring::dashboard(cmd),
            Command::Completions { shell } => {
                use clap::CommandFactory;
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "kybctl",
                    &mut std::io::stdout(),
                );
                exit::OK
            }
        }
    })
}

/// The configured shards' pools (connected lazily), or the exit code after printing why not.
fn database(overrides: &Overrides) -> Result<Database, u8> {
    Config::load(overrides)
        .and_then(|config| Database::connect_lazy(&config, Serving::NoApi, &Metrics::new()))
        .map_err(|e| {
            eprintln!("error: {e}");
            exit::USAGE
        })
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// `kybctl crd [--dir DIR]`.
fn crd(dir: Option<&std::path::Path>) -> u8 {
    let files = match crate::operator::crd::crd_files() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: cannot render the CRDs: {e}");
            return exit::USAGE;
        }
    };
    let Some(dir) = dir else {
        let all: Vec<String> = files.into_iter().map(|(_, y)| y).collect();
        print!("{}", all.join("---\n"));
        return exit::OK;
    };
    for (file, yaml) in files {
        let path = dir.join(file);
        if let Err(e) = std::fs::write(&path, yaml) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return exit::USAGE;
        }
    }
    exit::OK
}
