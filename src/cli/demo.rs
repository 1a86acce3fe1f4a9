//! `kybctl demo`: the whole loop on one machine. Throwaway PostgreSQL (and Redis when installed),
//! migrations, indexes, the API service, seed data, a load test at the plan's profile, and the SLO gate
//! on its result; the exit code is the gate's. `--keep` leaves the service running afterwards.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::{exit, output, progress};
use crate::loadtest::report as load_report;
use crate::loadtest::run::{self as load_run, RunConfig};
use crate::loadtest::scenario::Scenario;
use crate::loadtest::summary::saturation_reasons;
use crate::local::{self as process, TempPostgres, TempRedis};
use crate::schema::{indexes, migrate};
use crate::service::auth::api_keys;
use crate::service::auth::scopes::Scope;
use crate::slo::threshold::{self, DEFAULTS};
use crate::slo::{evaluate_all, render, Outcome, Report};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  kybctl demo\n  kybctl demo --duration 60s --rate 2000\n  kybctl demo --keep"
)]
pub struct DemoArgs {
    /// Address for the API service (a free port is used when it is taken).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Virtual users of the load test (the plan's profile: 1,000 concurrent users).
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// How long the load test runs once every user has started.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Time over which the users start.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ramp_up: Duration,
    /// Requests per second of all users together: 1,000/s is 60,000 per minute, six times the plan's
    /// 10,000 per minute. 0 runs closed-loop (as fast as the service answers).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Merchants created (through the API) before the load test, so lists and reports have data.
    #[arg(long, default_value_t = 2000)]
    merchants: usize,
    /// Also write the load-test result (the input of `kybctl slo check`) to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Keep the service running after the gate, until Ctrl-C.
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, thiserror::Error)]
enum DemoError {
    #[error("{0}")]
    Local(#[from] crate::local::LocalError),
    #[error("cannot set up the demo database: {0}")]
    Setup(String),
    #[error("the API service did not become ready within {timeout:?}: {why}\n{log}")]
    NotReady {
        timeout: Duration,
        why: String,
        log: String,
    },
    #[error("seeding merchants: {0}")]
    Seed(String),
    #[error(transparent)]
    Load(#[from] load_run::RunError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub async fn run(args: DemoArgs) -> u8 {
    match demo(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

async fn demo(args: DemoArgs) -> Result<u8, DemoError> {
    let started = Instant::now();
    let step = progress::spinner("starting a throwaway PostgreSQL");
    let pg = tokio::task::spawn_blocking(TempPostgres::start)
        .await
        .map_err(|e| DemoError::Setup(e.to_string()))??;
    pg.create_database("kyb")?;
    let redis = if TempRedis::installed() {
        step.set_message("starting a throwaway Redis");
        Some(
            tokio::task::spawn_blocking(TempRedis::start)
                .await
                .map_err(|e| DemoError::Setup(e.to_string()))??,
        )
    } else {
        None
    };
    step.finish_and_clear();
    eprintln!("PostgreSQL {}", pg.url("kyb"));
    match &redis {
        Some(r) => eprintln!("Redis      {}", r.url()),
        None => eprintln!("Redis      not installed: running without the L2 cache"),
    }

    let step = progress::spinner("migrating and creating indexes");
    prepare_database(&pg.url("kyb")).await?;
    step.finish_and_clear();
    eprintln!(
        "schema at version {}, indexes built",
        migrate::expected_version()
    );

    let workdir = process::owned_temp_dir("kybctl-demo-")?;
    let step = progress::spinner("starting the API service");
    let mut service = Service::start(&args, &pg, redis.as_ref(), workdir.path()).await?;
    step.finish_and_clear();
    eprintln!(
        "API service on {} (log: {})",
        service.base,
        service.log.display()
    );

    seed(&service.base, &service.api_key, args.merchants).await?;

    let rate = (args.rate > 0.0).then_some(args.rate);
    eprintln!(
        "load test: {} users, {:?} ramp-up, {:?}, {}",
        args.users,
        args.ramp_up,
        args.duration,
        rate.map_or("closed-loop".to_owned(), |r| format!(
            "{r:.0} requests/s ({:.0}/min)",
            r * 60.0
        ))
    );
    let outcome = load_run::run(RunConfig {
        target: service.base.clone(),
        users: args.users,
        duration: args.duration,
        ramp_up: args.ramp_up,
        rate,
        scenario: Scenario::load("kyb-mix").map_err(|e| DemoError::Setup(e.to_string()))?,
        request_timeout: Duration::from_secs(10),
        seed: 1,
        progress: true,
        credential: Some(service.api_key.clone()),
    })
    .await?;
    let result = &outcome.result;
    let errors = outcome.errors_by_type();
    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(result).expect("the result serialises");
        std::fs::write(path, format!("{json}\n")).map_err(|source| DemoError::Write {
            path: path.clone(),
            source,
        })?;
    }
    print!("{}", load_report::table(result, &errors));
    for w in saturation_reasons(&outcome.facts) {
        eprintln!("warning: generator saturated: {w}");
    }

    // The plan's KPIs, exactly as `kybctl slo check` applies them when given no threshold.
    let thresholds = DEFAULTS
        .iter()
        .map(|e| threshold::parse(e).expect("the built-in thresholds parse"))
        .collect::<Vec<_>>();
    let report = Report::new(evaluate_all(&thresholds, result, 100));
    println!();
    print!("{}", render::table(&report, output::color_on_stdout()));
    let code = match report.outcome {
        Outcome::Pass => exit::OK,
        Outcome::Fail => exit::CHECK_FAILED,
        Outcome::Inconclusive => exit::INCONCLUSIVE,
    };
    eprintln!(
        "demo finished in {:.0} s: SLO gate {} (exit {code})",
        started.elapsed().as_secs_f64(),
        match report.outcome {
            Outcome::Pass => "passed",
            Outcome::Fail => "failed",
            Outcome::Inconclusive => "inconclusive",
        }
    );

    if args.keep {
        let auth = format!(
            "-H \"authorization: Bearer $(cat {})\"",
            service.api_key_file.display()
        );
        println!("\nThe service keeps running on {}:", service.base);
        println!(
            "  curl -s -XPOST {}/v1/classifications {auth} -H 'content-type: application/json' \\\n       -d '{{\"name\":\"Sunrise Bakery\",\"description\":\"artisan bread and pastries\"}}'",
            service.base
        );
        println!("  curl -s '{}/v1/merchants?limit=3' {auth}", service.base);
        println!("  PostgreSQL: {}", pg.url("kyb"));
        println!("Ctrl-C stops everything and removes the data.");
        super::shutdown_signal().await;
    }
    service.stop();
    drop(redis);
    drop(pg);
    Ok(code)
}

/// Migrations, then the indexes, as an operator would run them (`migrate up`, `db indexes apply`).
async fn prepare_database(url: &str) -> Result<(), DemoError> {
    let setup = |e: &dyn std::fmt::Display| DemoError::Setup(e.to_string());
    let pool = sqlx::PgPool::connect(url).await.map_err(|e| setup(&e))?;
    migrate::up(&pool).await.map_err(|e| setup(&e))?;
    indexes::apply(&pool, &indexes::ApplyOptions::default())
        .await
        .map_err(|e| setup(&e))?;
    pool.close().await;
    Ok(())
}

/// The API service as a process of its own (`kybctl serve`), as it runs in production: the load
/// generator then measures the service across a real socket, and its CPU-saturation check sees only
/// the generator's own CPU, not the service's.
struct Service {
    base: String,
    log: PathBuf,
    child: Child,
    /// The run's own key (every scope), made for it: the demo measures the API with
    /// authentication on, as it is deployed.
    api_key: String,
    /// Where the key is kept for `--keep` (mode 0600 in the demo's directory).
    api_key_file: PathBuf,
}

impl Service {
    async fn start(
        args: &DemoArgs,
        pg: &TempPostgres,
        redis: Option<&TempRedis>,
        workdir: &Path,
    ) -> Result<Self, DemoError> {
        let addr = match std::net::TcpListener::bind(args.listen) {
            Ok(l) => l.local_addr()?,
            Err(e) => {
                eprintln!("cannot listen on {} ({e}); using a free port", args.listen);
                std::net::SocketAddr::from(([127, 0, 0, 1], process::free_port()?))
            }
        };
        let log = workdir.join("service.log");
        let (api_key, entry) = api_keys::generate("demo", &Scope::ALL);
        let keys_file = workdir.join("api-keys.yaml");
        let api_key_file = workdir.join("api-key");
        let entries = serde_yaml::to_string(&[entry]).expect("a key entry serialises");
        write_private(&keys_file, &entries)?;
        write_private(&api_key_file, &format!("{api_key}\n"))?;
        let metrics = std::net::SocketAddr::from(([127, 0, 0, 1], process::free_port()?));
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("serve")
            .env("KYB_LISTEN", addr.to_string())
            .env("KYB_METRICS_LISTEN", metrics.to_string())
            .env("KYB_API_KEYS_FILES", &keys_file)
            .env_remove("KYB_INSECURE_NO_AUTH")
            // Credentials through the environment, not argv (visible to every user in `ps`).
            .env("KYB_DATABASE_URL", pg.url("kyb"))
            .env_remove("KYB_CONFIG")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?);
        match redis {
            Some(r) => cmd.env("KYB_REDIS_URL", r.url()),
            None => cmd.env_remove("KYB_REDIS_URL"),
        };
        let child = process::spawn_tied(cmd, None, libc::SIGTERM)?;
        let mut service = Service {
            base: format!("http://{addr}"),
            log,
            child,
            api_key,
            api_key_file,
        };
        service.wait_ready(Duration::from_secs(60)).await?;
        Ok(service)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), DemoError> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + timeout;
        let not_ready = |why: String, log: &Path| DemoError::NotReady {
            timeout,
            why,
            log: process::tail(log, 20),
        };
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(not_ready(format!("it exited ({status})"), &self.log));
            }
            match http.get(format!("{}/ready", self.base)).send().await {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) if Instant::now() >= deadline => {
                    return Err(not_ready(
                        format!("/ready answers {}", r.status()),
                        &self.log,
                    ))
                }
                Err(e) if Instant::now() >= deadline => {
                    return Err(not_ready(e.to_string(), &self.log))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// SIGTERM: the service drains in-flight requests and exits.
    fn stop(&mut self) {
        process::stop(&mut self.child, libc::SIGTERM);
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A file only its owner can read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// What seeded merchants look like: a spread of industries and countries, so listings, reports and
/// risk factors (high-risk MCCs, FATF jurisdictions) all have something to show.
const SEED_BUSINESSES: [(&str, &str, &str); 12] = [
    ("Bakery", "artisan bread, pastries and cakes", "US"),
    ("Trattoria", "family restaurant serving Italian food", "IT"),
    ("Motors", "used car dealer and auto repair", "DE"),
    ("Travel", "travel agency and tour operator", "FR"),
    ("Pharmacy", "retail pharmacy and drug store", "GB"),
    (
        "Software",
        "custom software development and IT consulting",
        "IN",
    ),
    ("Jewellers", "jewelry, watches and precious stones", "AE"),
    ("Casino", "online gambling and sports betting", "MT"),
    ("Freight", "trucking and freight transportation", "MX"),
    ("Clinic", "dental clinic and orthodontics", "CA"),
    ("Exchange", "money transfer and currency exchange", "NG"),
    ("Outfitters", "clothing and sports apparel store", "AU"),
];

/// Creates `count` merchants through the API (32 at a time), with a risk assessment for every fifth.
async fn seed(base: &str, api_key: &str, count: usize) -> Result<(), DemoError> {
    if count == 0 {
        return Ok(());
    }
    let mut auth = reqwest::header::HeaderMap::new();
    let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {api_key}"))
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    bearer.set_sensitive(true);
    auth.insert(reqwest::header::AUTHORIZATION, bearer);
    let http = reqwest::Client::builder()
        .default_headers(auth)
        .build()
        .map_err(|e| DemoError::Setup(e.to_string()))?;
    let bar = progress::bar(count as u64, "merchants seeded");
    let results = futures::stream::iter(0..count)
        .map(|i| {
            let (http, bar) = (http.clone(), bar.clone());
            async move {
                let (kind, description, country) = SEED_BUSINESSES[i % SEED_BUSINESSES.len()];
                let body = serde_json::json!({
                    "name": format!("Demo {kind} {i}"),
                    "description": description,
                    "country": country,
                    "website": format!("https://demo-{i}.example.com"),
                });
                let created = http
                    .post(format!("{base}/v1/merchants"))
                    .json(&body)
                    .send()
                    .await
                    .and_then(|r| r.error_for_status())
                    .map_err(|e| e.to_string())?;
                if i % 5 == 0 {
                    let merchant: serde_json::Value =
                        created.json().await.map_err(|e| e.to_string())?;
                    let id = merchant["id"].as_str().unwrap_or_default();
                    http.post(format!("{base}/v1/merchants/{id}/risk-assessments"))
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .map_err(|e| e.to_string())?;
                }
                bar.inc(1);
                Ok::<(), String>(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    bar.finish_and_clear();
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if let Some(first) = failed.first() {
        return Err(DemoError::Seed(format!(
            "{} of {count} failed; first: {first}",
            failed.len()
        )));
    }
    eprintln!(
        "seeded {count} merchants ({} risk assessments)",
        count.div_ceil(5)
    );
    Ok(())
}
