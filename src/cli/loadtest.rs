//! `kybctl loadtest`: load a KYB service with a realistic traffic mix and write the result `slo check`
//! reads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::exit;
use super::output::Format;
use crate::loadtest::platform;
use crate::loadtest::report;
use crate::loadtest::run::{self, RunConfig, RunError};
use crate::loadtest::scenario::{Scenario, ScenarioError};
use crate::loadtest::summary::saturation_reasons;
use crate::slo::threshold::{self, ThresholdError};
use crate::slo::{evaluate_all, render, Outcome, Report};

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Scenarios (--scenario): a built-in name or a YAML file like those in loadtests/:
  kyb-mix          classification (97% repeated businesses), merchant reads and creation, risk assessments
  trivial          GET /health only (the generator's own ceiling)
  classify-cached  one business classified again and again (cache hits)

Latencies are measured by kybctl in microseconds (HDR histograms per request type), from sending a
request to its last body byte. The result (JSON, schema v1) is what `kybctl slo check --result` reads.
The run is flagged saturated (a warning, and generator.saturated in the result, which `slo check`
turns into an inconclusive throughput check) when the achieved rate fell below 95% of --rate or the
generator used 90% or more of its CPU: then the numbers measure the generator, not the target.

With --threshold the run is also judged, by the same code as `kybctl slo check` on its result (the
SLO report follows the result; on stderr with -o json or yaml), and the exit code is the verdict.

Exit codes: 0 the run completed (and, with --threshold, every check passed), 1 a check failed, 3 a
check was inconclusive and none failed, 2 usage or environment error (bad flag or threshold,
unreachable target, unreadable scenario, unwritable file). Without --threshold errors and saturation
are reported and judging is `slo check`'s job.

Examples:
  kybctl loadtest --target http://localhost:8080 --users 50 --duration 30s
  kybctl loadtest --target http://localhost:8080 --users 20 --duration 1m --rate 500 --out result.json --html report.html
  kybctl loadtest --target http://localhost:8080 --scenario classify-cached -o json > result.json
  kybctl loadtest --target http://kyb-canary:8080 --duration 1m --threshold 'p95<500ms' --threshold 'error_rate<0.1%'
  kybctl loadtest --platform kyb -n prod --duration 5m --out result.json && kybctl slo check --result result.json")]
pub struct LoadtestArgs {
    /// Base URL of the service, such as http://localhost:8080.
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "platform",
        conflicts_with = "platform"
    )]
    target: Option<String>,
    /// Load the service of this KybPlatform (its status endpoint), with its SLOs as default thresholds.
    #[arg(long, value_name = "NAME")]
    platform: Option<String>,
    /// Namespace of --platform.
    #[arg(short = 'n', long, default_value = "default", value_name = "NS")]
    namespace: String,
    /// Concurrent virtual users, each with its own connection.
    #[arg(long, default_value_t = 10, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    users: u32,
    /// How long every user runs once all have started (whole seconds: 30s, 5m).
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    duration: Duration,
    /// Time over which the users start; they all start at once by default.
    #[arg(long, default_value = "0s", value_parser = parse_ramp, value_name = "DURATION")]
    ramp_up: Duration,
    /// Target requests per second for all users together; without it users go as fast as they can.
    #[arg(long, value_name = "RPS", value_parser = parse_rate)]
    rate: Option<f64>,
    /// Traffic mix: a built-in scenario name or a YAML file.
    #[arg(long, default_value = "kyb-mix", value_name = "NAME|FILE")]
    scenario: String,
    /// Write the result (JSON, schema v1) to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write a self-contained HTML report to FILE.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,
    /// With --platform: write its SLOs as a thresholds file for `slo check --thresholds-file`.
    #[arg(long, value_name = "FILE", requires = "platform")]
    thresholds_out: Option<PathBuf>,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    timeout: Duration,
    /// File holding the API key (or token) sent as `Authorization: Bearer` on every request: a
    /// mounted Secret. `KYB_API_KEY` holds the key itself instead.
    #[arg(long, env = "KYB_API_KEY_FILE", value_name = "FILE")]
    api_key_file: Option<PathBuf>,
    /// Seed of the users' random choices (which business, which merchant).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Judge the run against a threshold as `kybctl slo check --threshold` would; repeat for several.
    #[arg(long = "threshold", value_name = "EXPR")]
    thresholds: Vec<String>,
    /// With --threshold: fewer requests than this (per scope) make a check inconclusive.
    #[arg(long, default_value_t = 100, value_name = "N", requires = "thresholds")]
    min_samples: u64,
    /// Result format on stdout: a table, or the result file itself (json, yaml).
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Format,
    /// No progress bar (it is already hidden when stderr is not a terminal).
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, thiserror::Error)]
enum LoadtestError {
    #[error("invalid --target `{target}`: {reason}")]
    Target { target: String, reason: String },
    #[error(transparent)]
    Scenario(#[from] ScenarioError),
    #[error(transparent)]
    Platform(#[from] platform::PlatformError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error("cannot read the API key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {what} file {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub async fn run(args: LoadtestArgs) -> u8 {
    match loadtest(args).await {
        Ok(None) => exit::OK,
        Ok(Some(outcome)) => exit::of(outcome),
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

/// Runs the load test; with `--threshold`, also judges it and returns the verdict.
async fn loadtest(args: LoadtestArgs) -> Result<Option<Outcome>, LoadtestError> {
    let scenario = Scenario::load(&args.scenario)?;
    // Parsed before the run: a typo in a threshold should not cost a whole load test.
    let gate = args
        .thresholds
        .iter()
        .map(|e| threshold::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    let (target, thresholds, platform_key) = match (&args.target, &args.platform) {
        (Some(t), _) => (normalise_target(t)?, None, None),
        (None, Some(name)) => {
            let p = platform::fetch(name, &args.namespace).await?;
            eprintln!(
                "KybPlatform {}/{name}: target {}, SLOs {}",
                args.namespace,
                p.endpoint,
                p.thresholds.join(", ")
            );
            (p.endpoint, Some(p.thresholds), p.credential)
        }
        (None, None) => unreachable!("clap requires --target or --platform"),
    };
    if let (Some(path), Some(t)) = (&args.thresholds_out, &thresholds) {
        let yaml = serde_yaml::to_string(t).expect("a list of strings serialises");
        write(path, "thresholds", &yaml)?;
    }

    let credential = match &args.api_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|source| LoadtestError::KeyFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_owned(),
        ),
        None => std::env::var("KYB_API_KEY")
            .ok()
            .filter(|k| !k.is_empty())
            .or(platform_key),
    };
    let cfg = RunConfig {
        credential,
        target: target.clone(),
        users: args.users as usize,
        duration: args.duration,
        ramp_up: args.ramp_up,
        rate: args.rate,
        scenario: scenario.clone(),
        request_timeout: args.timeout,
        seed: args.seed,
        progress: !args.no_progress,
    };
    let outcome = run::run(cfg).await?;
    let result = &outcome.result;
    let warnings = saturation_reasons(&outcome.facts);
    let errors = outcome.errors_by_type();

    if let Some(path) = &args.out {
        let json = serde_json::to_string_pretty(result).expect("the result serialises");
        write(path, "result", &format!("{json}\n"))?;
    }
    if let Some(path) = &args.html {
        let title = format!("kybctl loadtest: {} against {target}", scenario.name);
        write(
            path,
            "HTML",
            &report::html(result, &errors, &title, &warnings),
        )?;
    }
    match args.output {
        Format::Table => print!("{}", report::table(result, &errors)),
        Format::Json | Format::Yaml => print!(
            "{}",
            super::output::render(args.output, result, comfy_table::Table::new)
        ),
    }
    for w in &warnings {
        eprintln!("warning: generator saturated: {w}");
    }
    if let Some(t) = &thresholds {
        let result_file = args
            .out
            .as_deref()
            .map_or_else(|| "RESULT.json".to_owned(), |p| p.display().to_string());
        let flags: Vec<String> = t.iter().map(|e| format!("--threshold '{e}'")).collect();
        eprintln!(
            "check against the platform's SLOs: kybctl slo check --result {result_file} {}",
            flags.join(" ")
        );
    }
    if gate.is_empty() {
        return Ok(None);
    }
    let report = Report::new(evaluate_all(&gate, result, args.min_samples));
    let verdict = render::table(&report, false);
    match args.output {
        Format::Table => print!("{verdict}"),
        Format::Json | Format::Yaml => eprint!("{verdict}"),
    }
    Ok(Some(report.outcome))
}

/// `http://host:port` without a trailing slash; anything but an http(s) URL with a host is refused.
fn normalise_target(t: &str) -> Result<String, LoadtestError> {
    let invalid = |reason: String| LoadtestError::Target {
        target: t.to_owned(),
        reason,
    };
    let url = url::Url::parse(t).map_err(|e| invalid(e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme `{}`: expected http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none() {
        return Err(invalid("no host".into()));
    }
    Ok(t.trim_end_matches('/').to_owned())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < Duration::from_secs(1) || d.subsec_nanos() != 0 {
        return Err("expected whole seconds, at least 1s (30s, 5m)".into());
    }
    Ok(d)
}

fn parse_ramp(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err("expected requests per second above 0, such as 500".into()),
    }
}

fn write(path: &Path, what: &'static str, text: &str) -> Result<(), LoadtestError> {
    std::fs::write(path, text).map_err(|source| LoadtestError::Write {
        what,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loadtest_flag_parsing() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("500ms").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert_eq!(parse_rate("250"), Ok(250.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("-1").is_err());
        assert_eq!(
            normalise_target("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(normalise_target("ftp://x").is_err());
        assert!(normalise_target("localhost:8080").is_err());
    }
}
