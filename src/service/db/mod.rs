//! PostgreSQL access: pools by role, the shard router and the service's queries.

pub mod direct;
pub mod freshness;
pub mod merchant_reads;
pub mod merchants;
pub mod pools;
pub mod risk_assessments;
pub mod shard;

use std::sync::Arc;

use crate::config::{Config, ConfigError};
use crate::service::metrics::Metrics;
pub use pools::{PoolStats, PrimaryConn, Role, Serving, ShardPools};
use shard::ShardRouter;

/// Every shard's pools plus the router that picks one for a business id.
pub struct Database {
    shards: Vec<Arc<ShardPools>>,
    router: ShardRouter,
}

impl Database {
    /// Creates the pools lazily: the service starts (and reports not-ready) while databases are down.
    pub fn connect_lazy(
        config: &Config,
        serving: Serving,
        metrics: &Metrics,
    ) -> Result<Self, ConfigError> {
        let db = &config.database;
        let router = ShardRouter::from_config(&db.sharding)
            .map_err(|e| ConfigError::Invalid(format!("database.sharding: {e}")))?;
        let shards = if db.sharding.shards.is_empty() {
            let url = config.require_database_url()?;
            vec![ShardPools::connect_lazy(
                "default",
                url,
                &db.replica_urls,
                db.analytics_url.as_ref(),
                db,
                serving,
                &metrics.db_read_batches,
            )?]
        } else {
            db.sharding
                .shards
                .iter()
                .map(|s| {
                    let url = s.url.as_ref().ok_or_else(|| {
                        ConfigError::Invalid(format!("shard {}: url is required", s.id))
                    })?;
                    ShardPools::connect_lazy(
                        &s.id,
                        url,
                        &s.replica_urls,
                        None,
                        db,
                        serving,
                        &metrics.db_read_batches,
                    )
                })
                .collect::<Result<_, _>>()?
        };
        Ok(Self {
            shards: shards.into_iter().map(Arc::new).collect(),
            router,
        })
    }

    /// The shard that holds `business_id`.
    pub fn shard_for(&self, business_id: &str) -> &Arc<ShardPools> {
        &self.shards[self.shard_index_for(business_id)]
    }

    /// The position in [`Self::shards`] of the shard that holds `business_id`.
    pub fn shard_index_for(&self, business_id: &str) -> usize {
        self.router.route(business_id)
    }

    pub fn shards(&self) -> &[Arc<ShardPools>] {
        &self.shards
    }

    /// Shard 0 also holds shard-independent data: reference tables and the L3 cache table.
    pub fn catalog(&self) -> &Arc<ShardPools> {
        &self.shards[0]
    }

    /// Starts the per-shard health monitors (primary reachability, replica recovery).
    pub fn spawn_monitors(&self, shutdown: tokio_util::sync::CancellationToken) {
        for shard in &self.shards {
            tokio::spawn(shard.clone().monitor(shutdown.clone()));
        }
    }
}
