//! `kybctl serve`.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::config::{Config, Overrides};
use crate::service::state::AppState;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    overrides: Overrides,
}

pub async fn run(args: ServeArgs) -> u8 {
    let config = match Config::load(&args.overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut listeners = Vec::new();
    for addr in [config.listen, config.metrics_listen] {
        match TcpListener::bind(addr).await {
            Ok(l) => listeners.push(l),
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return exit::USAGE;
            }
        }
    }
    let (Some(metrics), Some(api)) = (listeners.pop(), listeners.pop()) else {
        return exit::USAGE;
    };
    let shutdown = CancellationToken::new();
    let running = match start(config, api, metrics, shutdown.clone()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    super::shutdown_signal().await;
    tracing::info!("shutting down: draining in-flight requests");
    shutdown.cancel();
    let _ = running.await;
    exit::OK
}

/// Builds the state, starts background tasks and serves the API on `listener` and `/metrics` on
/// `metrics` until `shutdown`; the returned handle finishes once in-flight requests have drained.
/// Used by `serve`, `demo` and the tests.
pub fn start(
    config: Config,
    listener: TcpListener,
    metrics: TcpListener,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, crate::config::ConfigError> {
    let state = AppState::build(config)?;
    state.spawn_background(shutdown.clone());
    let addr = listener.local_addr().ok();
    let metrics_app = crate::service::api::metrics_router(state.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(metrics, metrics_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the metrics listener failed");
        }
    });
    tracing::info!(
        listen = ?addr,
        auth = state.auth.is_some(),
        shards = state.db.shards().len(),
        replicas = state.db.shards().iter().map(|s| s.replicas.len()).sum::<usize>(),
        redis = state.cache.redis().is_some(),
        registry = state.registry.is_some(),
        "KYB API service listening"
    );
    let app = crate::service::api::router(state.clone());
    let server_cfg = state.config.server.clone();
    Ok(tokio::spawn(async move {
        crate::service::http_server::serve(listener, app, &server_cfg, shutdown).await;
    }))
}
