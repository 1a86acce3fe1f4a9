//! `kybctl demo`: the service on throwaway local servers, for trying it out on one machine.

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::exit;
use crate::config::{Config, Secret};
use crate::db::migrate;
use crate::local::{TempPostgres, TempRedis};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address for the API service.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
}

pub async fn run(args: DemoArgs) -> u8 {
    match demo(args).await {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: {e}");
            exit::USAGE
        }
    }
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    eprintln!("starting a throwaway PostgreSQL ...");
    let pg = tokio::task::spawn_blocking(TempPostgres::start).await??;
    pg.create_database("kyb")?;
    let mut config = Config::default();
    config.database.url = Some(Secret::new(pg.url("kyb")));
    config.database.pool.min_connections = 2;
    let redis = if TempRedis::installed() {
        eprintln!("starting a throwaway Redis ...");
        let r = tokio::task::spawn_blocking(TempRedis::start).await??;
        config.redis.url = Some(Secret::new(r.url()));
        Some(r)
    } else {
        eprintln!("redis-server not installed: running without the L2 cache");
        None
    };
    let pool = sqlx::PgPool::connect(&pg.url("kyb")).await?;
    migrate::up(&pool).await?;
    pool.close().await;
    let listener = match TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {} ({e}); using a free port", args.listen);
            TcpListener::bind(("127.0.0.1", 0)).await?
        }
    };
    let addr = listener.local_addr()?;
    config.listen = addr;
    let shutdown = CancellationToken::new();
    let running = super::serve::start(config, listener, shutdown.clone())?;
    println!("KYB API listening on http://{addr}");
    println!("  PostgreSQL: {}", pg.url("kyb"));
    if let Some(r) = &redis {
        println!("  Redis:      {}", r.url());
    }
    println!("try:");
    println!(
        "  curl -s -XPOST http://{addr}/v1/classifications -H 'content-type: application/json' \\\n       -d '{{\"name\":\"Sunrise Bakery\",\"description\":\"artisan bread and pastries\"}}'"
    );
    println!("  curl -s http://{addr}/openapi.json | head -c 300");
    println!("Ctrl-C stops everything and removes the data.");
    super::shutdown_signal().await;
    shutdown.cancel();
    let _ = running.await;
    drop(redis);
    drop(pg);
    Ok(())
}
