//! Shared test harness: one real PostgreSQL and one real Redis per test binary (started on free
//! loopback ports, torn down when the binary exits), a fresh database per test, and the API service
//! started in-process. A missing PostgreSQL or Redis fails the tests; nothing is skipped.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use kybctl::config::{Config, Secret};
use kybctl::local::{TempPostgres, TempRedis};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub fn pg() -> &'static TempPostgres {
    static PG: OnceLock<TempPostgres> = OnceLock::new();
    PG.get_or_init(|| {
        TempPostgres::start().unwrap_or_else(|e| panic!("the tests need PostgreSQL: {e}"))
    })
}

pub fn redis() -> &'static TempRedis {
    static REDIS: OnceLock<TempRedis> = OnceLock::new();
    REDIS.get_or_init(|| TempRedis::start().unwrap_or_else(|e| panic!("the tests need Redis: {e}")))
}

/// Runs the kybctl binary with `args` to completion.
pub fn kybctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(args)
        .output()
        .expect("run kybctl")
}

/// A finished command's stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// A new, migrated database on `server`; returns its URL.
pub async fn migrated_db_on(server: &TempPostgres) -> String {
    let name = unique("t");
    server.create_database(&name).expect("create database");
    let url = server.url(&name);
    let pool = sqlx::PgPool::connect(&url)
        .await
        .expect("connect to the test database");
    kybctl::schema::migrate::up(&pool).await.expect("migrate");
    pool.close().await;
    url
}

pub async fn migrated_db() -> String {
    migrated_db_on(pg()).await
}

/// Small pools (many services share one test server) and a cache key prefix of its own.
pub fn config(db_url: &str, redis_url: Option<&str>) -> Config {
    let mut c = Config::default();
    c.database.url = Some(Secret::new(db_url));
    c.database.pool.max_connections = 10;
    c.database.pool.min_connections = 0;
    c.database.pool.acquire_timeout = Duration::from_secs(2);
    c.redis.url = redis_url.map(Secret::new);
    // Tests run in parallel with builds on two cores: be generous so a slow first connect is not an outage.
    c.redis.command_timeout = Duration::from_secs(2);
    c.cache.key_prefix = format!("{}:", unique("kt"));
    // Authentication has tests of its own (tests/auth.rs); elsewhere every caller may do anything.
    c.auth.insecure_no_auth = true;
    c
}

/// `cfg` over the databases at `urls` as hash shards `s0`, `s1`, ... (no replicas), in place of its
/// single database.
pub fn sharded(mut cfg: Config, urls: &[&str]) -> Config {
    use kybctl::config::{ShardConfig, ShardingStrategy};
    cfg.database.url = None;
    cfg.database.sharding.strategy = ShardingStrategy::Hash;
    cfg.database.sharding.shards = urls
        .iter()
        .enumerate()
        .map(|(i, url)| ShardConfig {
            id: format!("s{i}"),
            url: Some(Secret::new(*url)),
            url_file: None,
            replica_urls: vec![],
            replica_url_files: vec![],
            range_from: None,
            keys: vec![],
        })
        .collect();
    cfg
}

pub struct Service {
    pub base: String,
    /// Where `/metrics` is served (its own listener, off the API port).
    pub metrics_base: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Service {
    pub async fn start(mut config: Config) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_addr = metrics.local_addr().unwrap();
        config.listen = addr;
        config.metrics_listen = metrics_addr;
        let shutdown = CancellationToken::new();
        let handle = kybctl::cli::start_service(config, listener, metrics, shutdown.clone())
            .expect("service starts");
        Self {
            base: format!("http://{addr}"),
            metrics_base: format!("http://{metrics_addr}"),
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown,
            handle: Some(handle),
        }
    }

    /// Waits until every invalidation listener is connected: until then the service clears its L1
    /// when one connects, so a test about L1 hits must not race it.
    pub async fn wait_listening(&self) {
        let listening = || async {
            let Ok(r) = self.get("/ready").await.json::<serde_json::Value>().await else {
                return false;
            };
            r["checks"].as_array().is_some_and(|checks| {
                checks.iter().any(|c| {
                    c["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("cache invalidation"))
                        && c["ok"] == true
                })
            })
        };
        assert!(
            eventually(Duration::from_secs(10), listening).await,
            "the cache invalidation listeners did not connect within 10 s"
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn metrics(&self) -> String {
        let url = format!("{}/metrics", self.metrics_base);
        self.http
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Signals shutdown and waits for in-flight requests to drain.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            h.await.unwrap();
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn take_handle(&mut self) -> tokio::task::JoinHandle<()> {
        self.handle.take().unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Value of a metric line (`name{labels} value`) whose text starts with `prefix`; 0 when absent.
pub fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn business(name: &str, description: &str) -> serde_json::Value {
    serde_json::json!({"name": name, "description": description, "country": "US", "website": "https://example.com"})
}
