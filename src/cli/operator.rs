//! `kybctl operator`: reconciles KybPlatforms, with `/metrics` and `/health` beside it.

use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;

use super::exit;
use crate::operator::controller;
use crate::operator::leader::LeaderElector;
use crate::operator::metrics::OperatorMetrics;

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Reconcile only KybPlatforms in these namespaces (repeat or comma-separate; default: all
    /// namespaces). A namespaced install needs only a Role in each (manifests/namespaced).
    #[arg(
        long,
        short = 'n',
        alias = "namespace",
        env = "WATCH_NAMESPACE",
        value_delimiter = ','
    )]
    watch_namespace: Vec<String>,
    /// Address of the /metrics and /health endpoints.
    #[arg(long, default_value = "0.0.0.0:8081", env = "KYB_OPERATOR_LISTEN")]
    listen: std::net::SocketAddr,
    /// Reconcile only while holding the Lease, so several replicas can run (`--leader-elect=false` for one).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KYB_OPERATOR_LEADER_ELECT")]
    leader_elect: bool,
    /// How long a Lease lasts unrenewed before another replica may take it; the renew deadline is two
    /// thirds of it, the retry period two fifteenths (client-go's 15 s / 10 s / 2 s, scaled).
    #[arg(long, default_value = "15s", value_parser = parse_lease_duration)]
    leader_elect_lease_duration: std::time::Duration,
    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, default_value = "kyb-system", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// Name of the Lease: one per install, so two installs in one namespace (say, two namespaced
    /// Helm releases) do not take turns reconciling each other's platforms.
    #[arg(
        long,
        default_value = "kybctl-operator",
        env = "KYB_OPERATOR_LEASE_NAME"
    )]
    lease_name: String,
    /// This replica's identity in the Lease (default: the pod name, else host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

/// At least 1 s: shorter leases renew faster than an apiserver round trip under load.
fn parse_lease_duration(text: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if d < std::time::Duration::from_secs(1) {
        return Err("must be at least 1s".into());
    }
    Ok(d)
}

pub async fn run(args: OperatorArgs) -> u8 {
    // KUBECONFIG, ~/.kube/config or the in-cluster ServiceAccount, like kubectl.
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cannot build a Kubernetes client: {e}");
            return exit::USAGE;
        }
    };
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", args.listen);
            return exit::USAGE;
        }
    };
    let metrics = Arc::new(OperatorMetrics::default());
    let m = metrics.clone();
    let app = axum::Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(move || async move { m.encode() }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let watch = controller::Watch::of(args.watch_namespace);
    tracing::info!(watch = ?watch, listen = %args.listen, "KybPlatform operator running");
    if !args.leader_elect {
        controller::run_bounded(
            client,
            watch,
            metrics,
            super::shutdown_signal(),
            controller::STOP_WORK_WITHIN,
        )
        .await;
        return exit::OK;
    }
    let identity = args.identity.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let elector = LeaderElector::new(
        client.clone(),
        &args.lease_namespace,
        &args.lease_name,
        &identity,
        args.leader_elect_lease_duration,
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        super::shutdown_signal().await;
        on_signal.cancel();
    });
    controller::run_elected(client, watch, metrics, elector, shutdown).await;
    exit::OK
}
