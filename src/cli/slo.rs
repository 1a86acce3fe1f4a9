//! `kybctl slo check`: the SLO gate CI pipelines run after a load test.

use super::output::{self, Format};
use std::path::{Path, PathBuf};

use super::exit;
use crate::slo::threshold::{self, ThresholdError, DEFAULTS};
use crate::slo::{
    compare_with_baseline, evaluate_all, parse_tolerance, render, LoadTestResult, Outcome, Report,
    Threshold,
};

#[derive(Debug, clap::Subcommand)]
pub enum SloCommand {
    /// Judge a load-test result against SLO thresholds.
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "\
Thresholds are written like k6's: [TYPE:]METRIC OP VALUE, with OP one of < <= > >=.
  p50 p90 p95 p99 p99.9 max   latency in us, ms or s       p95<500ms, classify:p99.9<2s
  error_rate, cache_hit_rate  a percentage or a fraction   error_rate<0.1%, cache_hit_rate>0.95
  throughput                  rps or rpm                   throughput>10000rpm
Without --threshold or --thresholds-file the plan's KPIs apply:
  p95<500ms, error_rate<0.1%, throughput>10000rpm, cache_hit_rate>95%

A threshold is inconclusive when the run cannot tell: fewer than --min-samples requests, fewer than 10
samples beyond the percentile (p99 needs 1,000, p99.9 10,000), a missing metric, or, for throughput, a
load generator that was saturated or reached less than 95% of its requested rate.

Exit codes: 0 every check passed, 1 a check failed, 3 a check was inconclusive and none failed,
2 usage or environment error (missing or invalid file, bad expression).

Example:
  kybctl slo check --result result.json --junit slo.xml --threshold 'p95<500ms' --threshold 'error_rate<0.1%'")]
pub struct CheckArgs {
    /// The load-test result (JSON, schema version 1).
    #[arg(long, value_name = "FILE")]
    result: PathBuf,
    /// A threshold expression; repeat for several.
    #[arg(long = "threshold", value_name = "EXPR")]
    thresholds: Vec<String>,
    /// A YAML list of threshold expressions, or a map {slos: [...]}; adds to --threshold.
    #[arg(long, value_name = "FILE")]
    thresholds_file: Option<PathBuf>,
    /// Also write a JUnit XML report (one testsuite `kybctl-slo`, one testcase per check).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Also write a Markdown table, for a CI job summary.
    #[arg(long, value_name = "FILE")]
    markdown: Option<PathBuf>,
    /// An earlier result: also fail latency percentiles that grew, or throughput that dropped, by more
    /// than --tolerance.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Allowed change against --baseline: a percentage (10%) or a fraction (0.1).
    #[arg(long, default_value = "10%", value_name = "TOLERANCE")]
    tolerance: String,
    /// Report format on stdout.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Format,
    /// Fewer requests than this (per scope; cache lookups for cache_hit_rate) make a check inconclusive.
    #[arg(long, default_value_t = 100, value_name = "N")]
    min_samples: u64,
}

#[derive(Debug, thiserror::Error)]
enum CheckError {
    #[error(transparent)]
    Threshold(#[from] ThresholdError),
    #[error(transparent)]
    Result(#[from] crate::slo::result::ResultError),
    #[error(transparent)]
    Tolerance(#[from] crate::slo::ToleranceError),
    #[error(transparent)]
    Render(#[from] render::RenderError),
    #[error("cannot read thresholds file {path}: {source}")]
    ReadThresholds {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid thresholds file {path}: {source}")]
    ThresholdsFile {
        path: PathBuf,
        source: ThresholdError,
    },
    #[error("cannot write {what} file {path}: {source}")]
    Write {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

pub fn run(cmd: SloCommand) -> u8 {
    let SloCommand::Check(args) = cmd;
    match check(&args) {
        Ok(outcome) => exit::of(outcome),
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

fn check(args: &CheckArgs) -> Result<Outcome, CheckError> {
    let thresholds = thresholds(args)?;
    let tolerance = parse_tolerance(&args.tolerance)?;
    let result = LoadTestResult::load(&args.result, "result")?;
    let mut checks = evaluate_all(&thresholds, &result, args.min_samples);
    if let Some(path) = &args.baseline {
        let baseline = LoadTestResult::load(path, "baseline")?;
        checks.extend(compare_with_baseline(
            &thresholds,
            &result,
            &baseline,
            tolerance,
            args.min_samples,
        ));
    }
    let report = Report::new(checks);

    if let Some(path) = &args.junit {
        write(path, "JUnit", &render::junit(&report))?;
    }
    if let Some(path) = &args.markdown {
        write(path, "Markdown", &render::markdown(&report))?;
    }
    let stdout = match args.output {
        Format::Table => render::table(&report, output::color_on_stdout()),
        Format::Json => render::json(&report)?,
        Format::Yaml => render::yaml(&report)?,
    };
    print!("{stdout}");
    Ok(report.outcome)
}

/// `--threshold`s, then the file's; the plan's defaults when neither gives any.
fn thresholds(args: &CheckArgs) -> Result<Vec<Threshold>, CheckError> {
    let mut out = args
        .thresholds
        .iter()
        .map(|e| threshold::parse(e))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = &args.thresholds_file {
        let text = std::fs::read_to_string(path).map_err(|source| CheckError::ReadThresholds {
            path: path.clone(),
            source,
        })?;
        out.extend(
            threshold::parse_file(&text).map_err(|source| CheckError::ThresholdsFile {
                path: path.clone(),
                source,
            })?,
        );
    }
    if out.is_empty() {
        out = DEFAULTS
            .iter()
            .map(|e| threshold::parse(e))
            .collect::<Result<_, _>>()?;
    }
    Ok(out)
}

fn write(path: &Path, what: &'static str, text: &str) -> Result<(), CheckError> {
    std::fs::write(path, text).map_err(|source| CheckError::Write {
        what,
        path: path.to_owned(),
        source,
    })
}
