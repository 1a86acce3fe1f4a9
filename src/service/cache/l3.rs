//! L3: the `cache_entries` table on the catalog shard's primary. Survives Redis outages and restarts.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use sqlx::PgPool;

use crate::service::metrics::{LevelLabel, Metrics};
use crate::telemetry::spans;

pub struct DbCache {
    pool: PgPool,
    prefix: String,
    ttl: Duration,
    metrics: Arc<Metrics>,
}

impl DbCache {
    pub fn new(pool: PgPool, prefix: &str, ttl: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            ttl,
            metrics,
        }
    }

    fn failed(&self, e: sqlx::Error) {
        tracing::debug!(error = %e, "L3 cache operation failed");
        self.metrics
            .cache_errors
            .get_or_create(&LevelLabel::l3())
            .inc();
    }

    pub async fn get(&self, key: &str) -> Option<Bytes> {
        let r: Result<Option<String>, _> = spans::db(
            "SELECT",
            "cache_entries",
            sqlx::query_scalar(
                "SELECT value FROM cache_entries WHERE key = $1 AND expires_at > now()",
            )
            .bind(format!("{}{key}", self.prefix))
            .fetch_optional(&self.pool),
        )
        .await;
        r.map_err(|e| self.failed(e))
            .ok()
            .flatten()
            .map(Bytes::from)
    }

    pub async fn set(&self, key: &str, value: &Bytes) {
        let Ok(text) = std::str::from_utf8(value) else {
            return;
        };
        let r = spans::db("INSERT", "cache_entries", sqlx::query(
            "INSERT INTO cache_entries (key, value, expires_at)
             VALUES ($1, $2, now() + make_interval(secs => $3))
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at",
        )
        .bind(format!("{}{key}", self.prefix))
        .bind(text)
        .bind(self.ttl.as_secs_f64())
        .execute(&self.pool)
        ).await;
        if let Err(e) = r {
            self.failed(e);
        }
    }

    pub async fn delete(&self, keys: &[String]) {
        let keys: Vec<String> = keys.iter().map(|k| format!("{}{k}", self.prefix)).collect();
        if let Err(e) = spans::db(
            "DELETE",
            "cache_entries",
            sqlx::query("DELETE FROM cache_entries WHERE key = ANY($1)")
                .bind(&keys)
                .execute(&self.pool),
        )
        .await
        {
            self.failed(e);
        }
    }

    /// Drops expired rows; run periodically so the table does not grow without bound.
    pub async fn purge_expired(&self) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM cache_entries WHERE expires_at <= now()")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
