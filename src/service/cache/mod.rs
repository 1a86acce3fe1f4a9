//! The multi-level cache: L1 in-process (moka), L2 Redis, L3 the database table. A read fills the
//! levels above the one that hit; writes invalidate on events, and every instance's L1 hears about
//! them through PostgreSQL LISTEN/NOTIFY, sent in the writing transaction so it fires only on commit.

pub mod keys;
pub mod l2;
pub mod l3;
pub mod records;

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::config::CacheConfig;
use crate::service::metrics::{LevelLabel, Metrics};
use crate::telemetry::spans;
use keys::ListsReach;
pub use keys::{Event, Invalidation};
use l2::RedisCache;
use l3::DbCache;

pub const INVALIDATION_CHANNEL: &str = "kyb_cache_invalidation";

/// Where a response came from; the value of `X-Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    HitL1,
    HitL2,
    HitL3,
    Miss,
}

impl CacheStatus {
    pub fn header_value(self) -> &'static str {
        match self {
            Self::HitL1 => "HIT-L1",
            Self::HitL2 => "HIT-L2",
            Self::HitL3 => "HIT-L3",
            Self::Miss => "MISS",
        }
    }
}

/// Which levels a family of keys uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Levels {
    /// Per-process only (listings: they change with every write).
    L1,
    /// Expensive computed results worth keeping in the database too.
    All,
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    origin: CacheStatus,
    /// A record's version (see `records`); 0 for computed results, which have none.
    version: i64,
}

/// Bound on the record versions an instance remembers having heard of.
const MAX_HEARD: u64 = 100_000;

pub struct MultiLevelCache {
    l1: moka::future::Cache<String, Arc<Entry>>,
    /// Listing pages, apart from `l1`: every merchant write drops them all, and emptying a table of
    /// their own is one `invalidate_all`, where a predicate on a shared table is tested against every
    /// entry (classifications, records) and made each write's cost grow with the cache.
    lists: moka::future::Cache<String, Arc<Entry>>,
    l2: Option<RedisCache>,
    l3: Option<DbCache>,
    /// The newest version heard of per record key (see `records`).
    heard: moka::sync::Cache<String, i64>,
    metrics: Arc<Metrics>,
    /// Invalidation listeners connected and listening (one per shard primary when all are up).
    listening: std::sync::atomic::AtomicUsize,
}

impl MultiLevelCache {
    pub fn new(
        cfg: &CacheConfig,
        l2: Option<RedisCache>,
        l3: Option<DbCache>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (l1_entries, list_entries) = l1_shares(cfg.l1_max_entries);
        let table = |entries| {
            moka::future::Cache::builder()
                .max_capacity(entries)
                .time_to_live(cfg.l1_ttl)
                .support_invalidation_closures()
                .build()
        };
        let (l1, lists) = (table(l1_entries), table(list_entries));
        // A stale record can outlive a write in Redis for at most the L2 TTL.
        let heard = moka::sync::Cache::builder()
            .max_capacity(MAX_HEARD)
            .time_to_live(cfg.l2_ttl)
            .build();
        Self {
            l1,
            lists,
            l2,
            l3,
            heard,
            metrics,
            listening: Default::default(),
        }
    }

    /// How many invalidation listeners are connected. Until one is, L1 entries are cleared when it
    /// connects (notifications before then were missed), so readiness reports it.
    pub fn listeners_connected(&self) -> usize {
        self.listening.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn redis(&self) -> Option<&RedisCache> {
        self.l2.as_ref()
    }

    pub fn l3(&self) -> Option<&DbCache> {
        self.l3.as_ref()
    }

    fn count(&self, level: LevelLabel, hit: bool) {
        let family = if hit {
            &self.metrics.cache_hits
        } else {
            &self.metrics.cache_misses
        };
        family.get_or_create(&level).inc();
    }

    /// Returns the cached body for `key`, or runs `load` once however many requests miss at the same
    /// time (moka coalesces them), storing the result in every level of `levels`.
    #[tracing::instrument(level = "debug", name = "cache.get", skip_all, fields(cache.key = key, cache.status))]
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &str,
        levels: Levels,
        load: F,
    ) -> Result<(Bytes, CacheStatus), Arc<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
        E: Send + Sync + 'static,
    {
        let entry = self
            .table(key)
            .entry_by_ref(key)
            .or_try_insert_with(self.load_below_l1(key, levels, load))
            .await?;
        self.count(LevelLabel::l1(), !entry.is_fresh());
        let status = if entry.is_fresh() {
            entry.value().origin
        } else {
            CacheStatus::HitL1
        };
        tracing::Span::current().record("cache.status", status.header_value());
        Ok((entry.value().body.clone(), status))
    }

    async fn load_below_l1<F, Fut, E>(
        &self,
        key: &str,
        levels: Levels,
        load: F,
    ) -> Result<Arc<Entry>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes, E>>,
    {
        let l2 = self.l2.as_ref().filter(|_| levels == Levels::All);
        let l3 = self.l3.as_ref().filter(|_| levels == Levels::All);
        if let Some(l2) = l2 {
            let hit = l2.get(key).await;
            self.count(LevelLabel::l2(), hit.is_some());
            if let Some(body) = hit {
                return Ok(Arc::new(Entry {
                    body,
                    origin: CacheStatus::HitL2,
                    version: 0,
                }));
            }
        }
        if let Some(l3) = l3 {
            let hit = l3.get(key).await;
            self.count(LevelLabel::l3(), hit.is_some());
            if let Some(body) = hit {
                if let Some(l2) = l2 {
                    l2.set(key, &body).await;
                }
                return Ok(Arc::new(Entry {
                    body,
                    origin: CacheStatus::HitL3,
                    version: 0,
                }));
            }
        }
        let body = load().await?;
        if let Some(l2) = l2 {
            l2.set(key, &body).await;
        }
        if let Some(l3) = l3 {
            l3.set(key, &body).await;
        }
        Ok(Arc::new(Entry {
            body,
            origin: CacheStatus::Miss,
            version: 0,
        }))
    }

    /// Drops what `inv` names from this process's L1.
    pub async fn invalidate_local(&self, inv: &Invalidation) {
        // A versioned record's L1 copy goes only if it is older (`apply_records`): the writer's own
        // notice must not drop the new version it has just stored.
        let versioned = |k: &String| inv.records.iter().any(|r| &r.key == k);
        for key in inv.keys.iter().filter(|k| !versioned(k)) {
            self.table(key).invalidate(key).await;
        }
        for pattern in &inv.patterns {
            match keys::lists_reach(pattern) {
                ListsReach::All => self.lists.invalidate_all(),
                ListsReach::Some => drop_matching(&self.lists, pattern),
                ListsReach::Beyond => {
                    drop_matching(&self.lists, pattern);
                    drop_matching(&self.l1, pattern);
                }
            }
        }
        self.metrics.cache_invalidations.inc();
    }

    /// The L1 table that holds `key`.
    fn table(&self, key: &str) -> &moka::future::Cache<String, Arc<Entry>> {
        if keys::is_merchant_list(key) {
            &self.lists
        } else {
            &self.l1
        }
    }

    /// Drops exact keys from the shared levels, after the writing transaction commits: computed
    /// results, and the plain copies of records that the release before versioned records keeps in
    /// Redis (while it may still be running beside this one).
    pub async fn invalidate_shared(&self, inv: &Invalidation) {
        if inv.keys.is_empty() {
            return;
        }
        if let Some(l2) = &self.l2 {
            l2.delete(&inv.keys).await;
        }
        if let Some(l3) = &self.l3 {
            l3.delete(&inv.keys).await;
        }
    }

    pub fn clear_local(&self) {
        self.l1.invalidate_all();
        self.lists.invalidate_all();
    }

    /// Sends `inv` to every instance (this one included): inside a transaction it is delivered when the
    /// transaction commits; on a pool, at once.
    pub async fn publish<'e, E>(executor: E, inv: &Invalidation) -> Result<(), sqlx::Error>
    where
        E: sqlx::Executor<'e, Database = sqlx::Postgres>,
    {
        let payload = serde_json::to_string(inv).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        spans::db(
            "SELECT",
            "pg_notify",
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(INVALIDATION_CHANNEL)
                .bind(payload)
                .execute(executor),
        )
        .await?;
        Ok(())
    }

    /// Applies invalidations from one shard's primary to L1 until shutdown. Notifications sent while the
    /// connection was down are lost, so a reconnect clears L1 entirely.
    pub async fn listen(self: Arc<Self>, pool: sqlx::PgPool, shutdown: CancellationToken) {
        let mut delays = listener_delays();
        // Waits before the next attempt; false when shutdown came first.
        let wait = |delay: std::time::Duration| {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => false,
                    _ = tokio::time::sleep(delay) => true,
                }
            }
        };
        loop {
            let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::debug!(error = %e, "cache invalidation listener cannot connect yet");
                    if !wait(next_delay(&mut delays)).await {
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = listener.listen(INVALIDATION_CHANNEL).await {
                tracing::warn!(error = %e, "cannot LISTEN for cache invalidations");
                if !wait(next_delay(&mut delays)).await {
                    return;
                }
                continue;
            }
            let since = std::time::Instant::now();
            // Anything may have changed while we were not listening.
            self.clear_local();
            self.listening
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            loop {
                let next = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.try_recv() => n,
                };
                match next {
                    Ok(Some(n)) => match serde_json::from_str::<Invalidation>(n.payload()) {
                        Ok(inv) => {
                            self.invalidate_local(&inv).await;
                            self.apply_records(&inv).await;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring malformed cache invalidation")
                        }
                    },
                    Ok(None) => {
                        tracing::warn!("cache invalidation listener reconnecting; clearing L1");
                        self.clear_local();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cache invalidation listener lost its connection");
                        self.listening
                            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                        break;
                    }
                }
            }
            // A server that takes the connection and drops it at once must not be dialled in a loop:
            // the schedule starts over only after a connection that held.
            if held_long_enough(since.elapsed()) {
                delays = listener_delays();
            }
            if !wait(next_delay(&mut delays)).await {
                return;
            }
        }
    }
}

/// Drops the entries of `table` whose key `pattern` matches. moka tests the predicate against each
/// entry, so this is kept for patterns that no cheaper operation covers.
fn drop_matching(table: &moka::future::Cache<String, Arc<Entry>>, pattern: &str) {
    let pattern = pattern.to_owned();
    // Only fails when closures are not enabled on the builder, which `new` always does.
    let _ = table.invalidate_entries_if(move |k, _| keys::glob_match(&pattern, k));
}

/// How `cache.l1_max_entries` is shared between the two L1 tables: an eighth (at least one entry) for
/// listing pages, which every write empties anyway, the rest for records and computed results.
fn l1_shares(max_entries: u64) -> (u64, u64) {
    let lists = (max_entries / 8).max(1);
    (max_entries.saturating_sub(lists).max(1), lists)
}

/// How long a listener connection must have lasted for its loss to count as a fresh start.
const LISTENER_HELD: std::time::Duration = std::time::Duration::from_secs(30);

/// The listener's waits between attempts: 100 ms doubling to 5 s, with jitter so that the instances
/// that lost a restarted primary together do not come back in step; never gives up.
fn listener_delays() -> backon::ExponentialBackoff {
    backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(std::time::Duration::from_millis(100))
            .with_max_delay(std::time::Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times(),
    )
}

fn next_delay(delays: &mut backon::ExponentialBackoff) -> std::time::Duration {
    // `without_max_times` never ends; the cap stands in should that ever change.
    delays.next().unwrap_or(std::time::Duration::from_secs(5))
}

fn held_long_enough(held: std::time::Duration) -> bool {
    held >= LISTENER_HELD
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_listener_waits_longer_after_each_failure_up_to_a_cap_and_never_gives_up() {
        let mut delays = listener_delays();
        let waits: Vec<Duration> = (0..30).map(|_| next_delay(&mut delays)).collect();
        // Jitter adds up to one more delay on top of the exponential value.
        assert!(
            waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200),
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(100)));
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(10)),
            "{waits:?}"
        );
        assert!(
            waits[10..].iter().all(|w| *w >= Duration::from_secs(5)),
            "{waits:?}"
        );
        // Ten quick failures in a row wait out at least 100 ms × (2^6 - 1) + 5 s × 4.
        let first_ten: Duration = waits[..10].iter().sum();
        assert!(first_ten >= Duration::from_secs(26), "{first_ten:?}");
    }

    #[test]
    fn listing_pages_get_an_eighth_of_l1_and_neither_table_is_ever_unbounded_or_empty() {
        assert_eq!(l1_shares(1000), (875, 125));
        assert_eq!(l1_shares(8), (7, 1));
        // At the smallest sizes the two tables may hold one entry more than configured, never zero.
        assert_eq!(l1_shares(1), (1, 1));
        assert_eq!(l1_shares(u64::MAX).0 + l1_shares(u64::MAX).1, u64::MAX);
    }

    #[test]
    fn only_a_connection_that_held_starts_the_schedule_over() {
        assert!(!held_long_enough(Duration::ZERO));
        assert!(!held_long_enough(Duration::from_secs(29)));
        assert!(held_long_enough(LISTENER_HELD));
    }
}
