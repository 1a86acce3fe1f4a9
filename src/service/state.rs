//! The service's shared state, built once from the configuration, and its background tasks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::service::auth::Authenticator;
use crate::service::cache::{l2::RedisCache, l3::DbCache, MultiLevelCache};
use crate::service::db::{Database, Serving};
use crate::service::metrics::Metrics;
use crate::service::registry::RegistryClient;

pub struct AppState {
    pub config: Config,
    /// `None` only with `auth.insecure_no_auth`.
    pub auth: Option<Arc<Authenticator>>,
    pub db: Database,
    pub cache: Arc<MultiLevelCache>,
    pub registry: Option<RegistryClient>,
    pub metrics: Arc<Metrics>,
}

/// How often a degraded Redis is probed in the background.
const REDIS_PROBE_EVERY: Duration = Duration::from_millis(250);

const L3_PURGE_EVERY: Duration = Duration::from_secs(60);

impl AppState {
    /// Builds pools and clients without connecting: the service starts while its dependencies are down
    /// and reports not-ready until they come up.
    pub fn build(config: Config) -> Result<Arc<Self>, ConfigError> {
        let auth = Authenticator::from_config(&config.auth)?.map(Arc::new);
        if auth.is_none() {
            tracing::warn!("AUTHENTICATION IS OFF (--insecure-no-auth): anyone who reaches this service may read and change every merchant. For local work only.");
        }
        Self::build_with(config, auth, Serving::Api)
    }

    /// The state of a process that serves no API (`kybctl worker`): no authentication to configure.
    pub fn build_without_api(config: Config) -> Result<Arc<Self>, ConfigError> {
        Self::build_with(config, None, Serving::NoApi)
    }

    fn build_with(
        config: Config,
        auth: Option<Arc<Authenticator>>,
        serving: Serving,
    ) -> Result<Arc<Self>, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let db = Database::connect_lazy(&config, serving, &metrics)?;
        let c = &config.cache;
        let l2 = RedisCache::from_config(&config.redis, &c.key_prefix, c.l2_ttl, metrics.clone())?;
        let l3 = DbCache::new(
            db.catalog().primary.clone(),
            &c.key_prefix,
            c.l3_ttl,
            metrics.clone(),
        );
        let cache = Arc::new(MultiLevelCache::new(c, l2, Some(l3), metrics.clone()));
        let registry = RegistryClient::from_config(&config.registry, metrics.clone())?;
        Ok(Arc::new(Self {
            config,
            auth,
            db,
            cache,
            registry,
            metrics,
        }))
    }

    /// Health monitors, cache invalidation listeners (one per shard primary) and L3 expiry.
    pub fn spawn_background(self: &Arc<Self>, shutdown: CancellationToken) {
        self.db.spawn_monitors(shutdown.clone());
        if let Some(auth) = &self.auth {
            tokio::spawn(auth.clone().maintain(shutdown.clone()));
        }
        let cache = self.cache.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let Some(redis) = cache.redis() else { return };
            // Connect now rather than on the first request, and learn which server answers.
            redis.probe().await;
            // While Redis is unreachable requests skip it, and the probe that finds it back drops
            // the records the outage may have left stale; while it answers, the probe checks that
            // the same server does (a restarted one may hold older records than it acknowledged).
            let mut tick = tokio::time::interval(REDIS_PROBE_EVERY);
            // A probe of a Redis that is down waits out the command timeout; no burst after it.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                redis.probe().await;
            }
        });
        for shard in self.db.shards() {
            tokio::spawn(
                self.cache
                    .clone()
                    .listen(shard.primary.clone(), shutdown.clone()),
            );
        }
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(L3_PURGE_EVERY);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {}
                }
                if let Some(l3) = state.cache.l3() {
                    if let Err(e) = l3.purge_expired().await {
                        tracing::debug!(error = %e, "L3 purge failed");
                    }
                }
            }
        });
    }
}
