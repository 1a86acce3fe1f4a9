//! L2: Redis (single node through a reconnecting `ConnectionManager`, or Redis Cluster).
//!
//! Every failure is absorbed here: the caller sees a miss, a metric and one log line per outage say the
//! cache is degraded, and the connection heals by itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::config::{ConfigError, RedisConfig};
use crate::service::metrics::Metrics;

enum Backend {
    Single(ConnectionManager),
    /// Connected on first use so a cluster that is down at start-up does not stop the service.
    Cluster {
        client: Box<ClusterClient>,
        conn: tokio::sync::OnceCell<ClusterConnection>,
    },
}

pub struct RedisCache {
    backend: Backend,
    prefix: String,
    ttl: Duration,
    timeout: Duration,
    degraded: AtomicBool,
    /// While degraded, one command per `RETRY_EVERY` goes to Redis; the rest skip L2 at once instead of
    /// each waiting out the command timeout.
    next_try_ms: AtomicU64,
    epoch: Instant,
    metrics: Arc<Metrics>,
}

const RETRY_EVERY: Duration = Duration::from_secs(1);

impl RedisCache {
    /// `None` when no Redis is configured.
    pub fn from_config(
        cfg: &RedisConfig,
        prefix: &str,
        ttl: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, ConfigError> {
        let backend = if !cfg.cluster_nodes.is_empty() {
            let client =
                ClusterClient::builder(cfg.cluster_nodes.iter().map(|s| s.expose().to_owned()))
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.command_timeout)
                    .retries(1)
                    .build()
                    .map_err(|e| ConfigError::Invalid(format!("redis.cluster_nodes: {e}")))?;
            Backend::Cluster {
                client: Box::new(client),
                conn: tokio::sync::OnceCell::new(),
            }
        } else if let Some(url) = &cfg.url {
            let client = redis::Client::open(url.expose()).map_err(|e| {
                ConfigError::Invalid(format!(
                    "invalid Redis URL for {}: {e}",
                    url.redacted_target()
                ))
            })?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(cfg.connect_timeout))
                .set_response_timeout(Some(cfg.command_timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(2));
            let manager = ConnectionManager::new_lazy_with_config(client, config)
                .map_err(|e| ConfigError::Invalid(format!("redis: {e}")))?;
            Backend::Single(manager)
        } else {
            return Ok(None);
        };
        Ok(Some(Self {
            backend,
            prefix: prefix.to_owned(),
            ttl,
            timeout: cfg.command_timeout,
            degraded: AtomicBool::new(false),
            next_try_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            metrics,
        }))
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if self.is_degraded() {
            let now = self.epoch.elapsed().as_millis() as u64;
            let next = self.next_try_ms.load(Ordering::Relaxed);
            let claimed = now >= next
                && self
                    .next_try_ms
                    .compare_exchange(
                        next,
                        now + RETRY_EVERY.as_millis() as u64,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok();
            if !claimed {
                return None;
            }
        }
        let fut = async {
            match &self.backend {
                Backend::Single(m) => cmd.query_async::<T>(&mut m.clone()).await,
                Backend::Cluster { client, conn } => {
                    let c = conn
                        .get_or_try_init(|| client.get_async_connection())
                        .await?;
                    cmd.query_async::<T>(&mut c.clone()).await
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match result {
            Ok(v) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("redis cache reachable again");
                    self.metrics.cache_degraded.set(0);
                }
                Some(v)
            }
            Err(e) => {
                let now = self.epoch.elapsed().as_millis() as u64;
                self.next_try_ms
                    .store(now + RETRY_EVERY.as_millis() as u64, Ordering::Relaxed);
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "redis cache unavailable; serving from L1, L3 and the database");
                    self.metrics.cache_degraded.set(1);
                }
                self.metrics
                    .cache_errors
                    .get_or_create(&crate::service::metrics::LevelLabel::l2())
                    .inc();
                None
            }
        }
    }

    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let v: Option<Vec<u8>> = self
            .run(redis::cmd("GET").arg(format!("{}{key}", self.prefix)))
            .await?;
        v.map(Bytes::from)
    }

    pub async fn set(&self, key: &str, value: &Bytes) {
        let _: Option<()> = self
            .run(
                redis::cmd("SET")
                    .arg(format!("{}{key}", self.prefix))
                    .arg(value.as_ref())
                    .arg("PX")
                    .arg(self.ttl.as_millis() as u64),
            )
            .await;
    }

    /// Removes exact keys one command each, so it works unchanged on Redis Cluster (keys in different
    /// slots cannot share a multi-key command).
    pub async fn delete(&self, keys: &[String]) {
        for key in keys {
            let _: Option<i64> = self
                .run(redis::cmd("UNLINK").arg(format!("{}{key}", self.prefix)))
                .await;
        }
    }

    /// A round trip, for readiness detail and tests.
    pub async fn ping(&self) -> bool {
        self.run::<String>(&redis::cmd("PING")).await.is_some()
    }
}
