//! `kybctl alerts render -f FILE` and `kybctl dashboard render -f FILE`: what the operator renders for
//! a KybPlatform's monitoring, printed from a manifest with no cluster, for users without the
//! operator or the Prometheus Operator.

use std::path::PathBuf;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::exit;
use crate::operator::crd::KybPlatform;
use crate::operator::monitoring;

#[derive(Debug, clap::Subcommand)]
pub enum AlertsCommand {
    /// Print the alerting and recording rules of a KybPlatform manifest.
    Render(AlertsArgs),
}

#[derive(Debug, clap::Args)]
pub struct AlertsArgs {
    /// A KybPlatform manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// `prometheus-rule`: a PrometheusRule object (`kubectl apply -f -`); `rules`: a Prometheus rule
    /// file (`rule_files:`, `promtool check rules`).
    #[arg(short = 'o', long, value_enum, default_value_t = AlertsFormat::PrometheusRule)]
    output: AlertsFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AlertsFormat {
    PrometheusRule,
    Rules,
}

#[derive(Debug, clap::Subcommand)]
pub enum DashboardCommand {
    /// Print the Grafana dashboard of a KybPlatform manifest.
    Render(DashboardArgs),
}

#[derive(Debug, clap::Args)]
pub struct DashboardArgs {
    /// A KybPlatform manifest (YAML or JSON); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// `json`: the dashboard model (Grafana's import); `configmap`: the ConfigMap Grafana's sidecar
    /// loads (`kubectl apply -f -`).
    #[arg(short = 'o', long, value_enum, default_value_t = DashboardFormat::Json)]
    output: DashboardFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DashboardFormat {
    Json,
    Configmap,
}

/// The manifest at `file`, its namespace defaulted to `default` as kubectl would.
fn read(file: &std::path::Path) -> Result<KybPlatform, String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("standard input: {e}"))?
    } else {
        std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?
    };
    let mut kp: KybPlatform = serde_yaml::from_str(&text)
        .map_err(|e| format!("{}: not a KybPlatform: {e}", file.display()))?;
    if kp.metadata.name.as_deref().unwrap_or_default().is_empty() {
        return Err(format!("{}: metadata.name is missing", file.display()));
    }
    kp.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    Ok(kp)
}

/// Name, namespace and the platform's labels; no owner (there is no object in a cluster to own it).
fn meta(kp: &KybPlatform, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: kp.metadata.namespace.clone(),
        labels: Some(
            [
                (
                    "app.kubernetes.io/instance",
                    kp.metadata.name.clone().unwrap_or_default(),
                ),
                ("app.kubernetes.io/part-of", "kyb-platform".to_owned()),
                ("app.kubernetes.io/component", "monitoring".to_owned()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..Default::default()
    }
}

fn print_yaml<T: serde::Serialize>(value: &T) -> u8 {
    match serde_yaml::to_string(value) {
        Ok(y) => {
            print!("{y}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit::CHECK_FAILED
        }
    }
}

pub fn alerts(cmd: AlertsCommand) -> u8 {
    let AlertsCommand::Render(args) = cmd;
    let kp = match read(&args.file) {
        Ok(kp) => kp,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let m = &kp.spec.monitoring;
    match args.output {
        AlertsFormat::PrometheusRule => print_yaml(&monitoring::prometheus_rule(
            &kp,
            m,
            meta(&kp, kp.metadata.name.clone().unwrap_or_default()),
        )),
        AlertsFormat::Rules => {
            print_yaml(&serde_json::json!({"groups": monitoring::rule_groups(&kp, m)}))
        }
    }
}

pub fn dashboard(cmd: DashboardCommand) -> u8 {
    let DashboardCommand::Render(args) = cmd;
    let kp = match read(&args.file) {
        Ok(kp) => kp,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    match args.output {
        DashboardFormat::Json => match serde_json::to_string_pretty(&monitoring::dashboard(&kp)) {
            Ok(j) => {
                println!("{j}");
                exit::OK
            }
            Err(e) => {
                eprintln!("error: {e}");
                exit::CHECK_FAILED
            }
        },
        DashboardFormat::Configmap => {
            let name = crate::operator::build::dashboard_name(
                kp.metadata.name.as_deref().unwrap_or_default(),
            );
            print_yaml(&monitoring::dashboard_config_map(&kp, meta(&kp, name)))
        }
    }
}
