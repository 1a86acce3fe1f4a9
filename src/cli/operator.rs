//! `kybctl operator`: reconciles KybPlatforms, with `/metrics` and `/health` beside it.

use std::sync::Arc;

use axum::routing::get;
use tokio::net::TcpListener;

use super::exit;
use crate::operator::controller;
use crate::operator::metrics::OperatorMetrics;

#[derive(Debug, clap::Args)]
pub struct OperatorArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, short = 'n', env = "KYB_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the /metrics and /health endpoints.
    #[arg(long, default_value = "0.0.0.0:8081", env = "KYB_OPERATOR_LISTEN")]
    listen: std::net::SocketAddr,
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
    tracing::info!(namespace = ?args.namespace, listen = %args.listen, "KybPlatform operator running");
    controller::run(client, args.namespace, metrics, super::shutdown_signal()).await;
    exit::OK
}
