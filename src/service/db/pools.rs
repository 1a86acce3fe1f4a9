//! One shard's pools by role: the primary (writes), replicas (reads, balanced, with fallback) and analytics.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::direct::{DirectPool, Lease};
use super::freshness::{Freshness, WriteMark};
use super::merchant_reads::MerchantReads;
use super::merchants;
use crate::config::{ConfigError, DatabaseConfig, PoolConfig, Secret, MIN_MAIN_POOL};
use crate::db_error::{is_connection_error, DbError};
use crate::service::metrics::ShardLabels;
use crate::service::model::Merchant;
use crate::telemetry::spans;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Primary,
    /// The primary, for writes that need no durability wait.
    Relaxed,
    Replica,
    Analytics,
    /// The primary, for one-statement requests (`direct`).
    Direct,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Relaxed => "primary_relaxed",
            Role::Replica => "replica",
            Role::Analytics => "analytics",
            Role::Direct => "primary_direct",
        }
    }
}

/// How long a replica that failed a read is skipped before it is tried again.
const REPLICA_PENALTY: Duration = Duration::from_secs(5);
/// Primary health probe period; also bounds how long /ready lags an outage.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub struct Replica {
    pub pool: PgPool,
    /// Milliseconds since `ShardPools::epoch` before which this replica is skipped.
    skip_until_ms: AtomicU64,
}

pub struct ShardPools {
    pub id: String,
    pub primary: PgPool,
    /// Part of the primary's connections, for one-statement requests of the API service (`direct`);
    /// `None` in processes that serve no API and where the configuration gives it none.
    pub direct: Option<DirectPool>,
    /// Merchant reads by id batched over the direct pool (`None` with no direct pool).
    pub merchant_reads: Option<MerchantReads>,
    /// The primary again, with `synchronous_commit=off`: for writes whose loss in a crash is harmless
    /// (cache rows, invalidation fan-out), so they never wait for a WAL flush.
    pub relaxed: PgPool,
    pub replicas: Vec<Replica>,
    pub analytics: PgPool,
    next_replica: AtomicUsize,
    primary_up: AtomicBool,
    epoch: Instant,
    pub freshness: Freshness,
    /// Host:port of the primary, for messages (never the credentials).
    pub primary_target: String,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
}

fn options(url: &Secret) -> Result<PgConnectOptions, ConfigError> {
    url.expose().parse::<PgConnectOptions>().map_err(|e| {
        // The error text of a DSN parse never includes the password, but be explicit about the target.
        ConfigError::Invalid(format!(
            "invalid database URL for {}: {e}",
            url.redacted_target()
        ))
    })
}

/// A connection used this recently is taken as alive without asking the server (HikariCP's
/// `aliveBypassWindowMs`, with its default). sqlx's `test_before_acquire` pings before every use; with
/// the ping sqlx always makes when a connection comes back to the pool (which drops one that broke in
/// use), that was three round trips for a one-statement request.
const ALIVE_BYPASS: Duration = Duration::from_millis(500);

/// Whether a pooled connection must be pinged before use: only one that has rested, and so may have
/// been closed by the server or the network meanwhile.
pub fn check_before_use(idle_for: Duration) -> bool {
    idle_for >= ALIVE_BYPASS
}

/// A connection of the primary taken for one statement ([`ShardPools::primary_conn`]).
pub enum PrimaryConn {
    Direct(Lease),
    Pooled(PoolConnection<Postgres>),
}

impl PrimaryConn {
    pub fn conn(&mut self) -> &mut PgConnection {
        match self {
            PrimaryConn::Direct(lease) => lease.conn(),
            PrimaryConn::Pooled(conn) => conn,
        }
    }

    /// Returns the connection (a broken one is closed instead) and passes the result on.
    pub fn finish<T>(self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        match self {
            PrimaryConn::Direct(lease) => lease.finish(result),
            PrimaryConn::Pooled(_) => result,
        }
    }
}

/// Whether the process serves the API (and so has one-statement requests for the direct pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serving {
    Api,
    NoApi,
}

/// How `max_connections` of the primary splits into (main pool, direct pool). The direct pool's
/// share comes out of the main pool, so a pod opens no more connections than the operator's budget
/// gave it; the main pool keeps at least [`MIN_MAIN_POOL`]: the cache-invalidation listener holds
/// one for good, and transactions and the primary's probe need another (with one left, the
/// listener took it and the service never became ready). A process serving no API (the job
/// worker, whose jobs each hold a main-pool connection) keeps them all.
pub fn split_primary(pool: &PoolConfig, serving: Serving) -> (u32, u32) {
    let max = pool.max_connections;
    let direct = match serving {
        Serving::NoApi => 0,
        Serving::Api => pool
            .direct_max_connections
            .unwrap_or(max / 2)
            .min(max.saturating_sub(MIN_MAIN_POOL)),
    };
    (max - direct, direct)
}

fn pool_with(opts: PgConnectOptions, cfg: &DatabaseConfig, max: u32) -> PgPool {
    let p = &cfg.pool;
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if check_before_use(meta.idle_for) {
                    // An error closes this connection and the pool tries another.
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .max_connections(max)
        .min_connections(p.min_connections.min(max))
        .max_lifetime(p.max_lifetime)
        .idle_timeout(p.idle_timeout)
        .acquire_timeout(p.acquire_timeout)
        .connect_lazy_with(opts)
}

fn pool(url: &Secret, cfg: &DatabaseConfig, max: u32) -> Result<PgPool, ConfigError> {
    Ok(pool_with(options(url)?, cfg, max))
}

impl ShardPools {
    pub fn connect_lazy(
        id: &str,
        url: &Secret,
        replica_urls: &[Secret],
        analytics_url: Option<&Secret>,
        cfg: &DatabaseConfig,
        serving: Serving,
        read_batches: &Family<ShardLabels, Histogram>,
    ) -> Result<Self, ConfigError> {
        let max = cfg.pool.max_connections;
        let (main, direct) = split_primary(&cfg.pool, serving);
        let primary = pool(url, cfg, main)?;
        let direct_size = direct as usize;
        let direct = if direct > 0 {
            Some(DirectPool::new(options(url)?, direct as usize, &cfg.pool))
        } else {
            None
        };
        // One worker per direct connection: a worker never waits for a connection another holds.
        let merchant_reads = direct.as_ref().map(|d| {
            let sizes = read_batches.get_or_create(&ShardLabels {
                shard: id.to_owned(),
            });
            MerchantReads::new(d.clone(), direct_size, sizes.clone())
        });
        let relaxed = pool_with(
            options(url)?.options([("synchronous_commit", "off")]),
            cfg,
            cfg.pool.relaxed_max_connections.unwrap_or((max / 4).max(2)),
        );
        let replicas = replica_urls
            .iter()
            .map(|u| {
                Ok(Replica {
                    pool: pool(u, cfg, max)?,
                    skip_until_ms: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        // Reporting gets a small pool of its own so long queries cannot starve the request path.
        let analytics_max = cfg
            .pool
            .analytics_max_connections
            .unwrap_or((max / 4).max(1));
        let analytics = match analytics_url.or(replica_urls.first()) {
            Some(u) => pool(u, cfg, analytics_max)?,
            None => pool(url, cfg, analytics_max)?,
        };
        Ok(Self {
            id: id.to_owned(),
            primary,
            direct,
            merchant_reads,
            relaxed,
            replicas,
            analytics,
            next_replica: AtomicUsize::new(0),
            primary_up: AtomicBool::new(true),
            epoch: Instant::now(),
            freshness: Freshness::new(&cfg.read_your_writes),
            primary_target: url.redacted_target(),
        })
    }

    pub fn primary_up(&self) -> bool {
        self.primary_up.load(Ordering::Relaxed)
    }

    /// Fails fast while the monitor sees the primary down, instead of every request waiting out
    /// the pool's acquire timeout.
    pub fn writable(&self) -> Result<&PgPool, DbError> {
        if self.primary_up() {
            Ok(&self.primary)
        } else {
            Err(DbError::Unavailable(format!(
                "primary {} of shard {} is unreachable",
                self.primary_target, self.id
            )))
        }
    }

    /// A primary connection for one statement: from the direct pool where this process has one (no
    /// ping when it comes back), else from the main pool. Give the statement's result to
    /// [`PrimaryConn::finish`].
    pub async fn primary_conn(&self) -> Result<PrimaryConn, DbError> {
        let primary = self.writable()?;
        Ok(match &self.direct {
            Some(direct) => PrimaryConn::Direct(direct.lease().await?),
            None => PrimaryConn::Pooled(primary.acquire().await?),
        })
    }

    /// The merchant `id` as the primary has it now: batched with other reads where this process
    /// has a direct pool, else one statement on the main pool.
    pub async fn merchant(&self, id: Uuid) -> Result<Option<Merchant>, DbError> {
        self.writable()?;
        match &self.merchant_reads {
            Some(reads) => reads.get(id).await,
            None => {
                let mut primary = self.primary_conn().await?;
                let found = merchants::get(primary.conn(), id).await;
                Ok(primary.finish(found)?)
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Round-robin over replicas not currently penalised.
    fn pick_replica(&self) -> Option<&Replica> {
        let n = self.replicas.len();
        if n == 0 {
            return None;
        }
        let now = self.now_ms();
        let start = self.next_replica.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .find(|r| r.skip_until_ms.load(Ordering::Relaxed) <= now)
    }

    /// Runs a read on a replica when the read-your-writes rule allows it, falling back to the primary
    /// when no replica is usable or the chosen one fails at the connection level.
    pub async fn read<T, F, Fut>(&self, key: Option<&str>, f: F) -> Result<(T, Role), DbError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let mark = key.and_then(|k| self.freshness.mark(k));
        if !matches!(mark, Some(WriteMark::PrimaryOnly)) {
            if let Some(replica) = self.pick_replica() {
                match self.replica_read(replica, mark.as_ref(), &f).await {
                    Ok(Some(v)) => return Ok((v, Role::Replica)),
                    Ok(None) => {} // replica behind the caller's write: use the primary
                    Err(e) if is_connection_error(&e) => {
                        replica.skip_until_ms.store(
                            self.now_ms() + REPLICA_PENALTY.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                        tracing::warn!(shard = %self.id, error = %e, "replica read failed; using the primary");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let v = f(self.primary.clone()).await?;
        Ok((v, Role::Primary))
    }

    async fn replica_read<T, F, Fut>(
        &self,
        replica: &Replica,
        mark: Option<&WriteMark>,
        f: &F,
    ) -> Result<Option<T>, sqlx::Error>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if let Some(WriteMark::Lsn(lsn)) = mark {
            let caught_up: Option<bool> = spans::db(
                "SELECT",
                "pg_last_wal_replay_lsn",
                sqlx::query_scalar("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
                    .bind(lsn)
                    .fetch_one(&replica.pool),
            )
            .await?;
            if caught_up != Some(true) {
                return Ok(None);
            }
        }
        f(replica.pool.clone()).await.map(Some)
    }

    /// Records that `key` was just written, so the read-your-writes rule can route its next reads.
    pub async fn note_write(&self, key: &str) {
        if self.replicas.is_empty() {
            return;
        }
        self.freshness.note(key, &self.primary).await;
    }

    pub fn stats(&self) -> Vec<(Role, PoolStats)> {
        let s = |p: &PgPool| PoolStats {
            size: p.size(),
            idle: p.num_idle() as u32,
        };
        let mut out = vec![
            (Role::Primary, s(&self.primary)),
            (Role::Relaxed, s(&self.relaxed)),
        ];
        out.extend(self.replicas.iter().map(|r| (Role::Replica, s(&r.pool))));
        out.push((Role::Analytics, s(&self.analytics)));
        if let Some(direct) = &self.direct {
            let (size, idle) = direct.stats();
            out.push((Role::Direct, PoolStats { size, idle }));
        }
        out
    }

    /// Probes the primary every second; flips `primary_up` and logs each transition once.
    pub async fn monitor(self: Arc<Self>, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(PROBE_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            if let Some(direct) = &self.direct {
                direct.reap_idle();
            }
            let ok = tokio::time::timeout(
                PROBE_INTERVAL * 2,
                sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&self.primary),
            )
            .await
            .map(|r| r.is_ok())
            .unwrap_or(false);
            let was = self.primary_up.swap(ok, Ordering::Relaxed);
            if was != ok {
                if ok {
                    tracing::info!(shard = %self.id, primary = %self.primary_target, "primary reachable again");
                } else {
                    tracing::error!(shard = %self.id, primary = %self.primary_target, "primary unreachable; writes answer 503");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_gives_half_the_primary_to_one_statement_requests_out_of_the_main_pool() {
        let pool = |max, direct| PoolConfig {
            max_connections: max,
            direct_max_connections: direct,
            ..PoolConfig::default()
        };
        assert_eq!(split_primary(&pool(100, None), Serving::Api), (50, 50));
        assert_eq!(split_primary(&pool(16, None), Serving::Api), (8, 8));
        assert_eq!(split_primary(&pool(3, None), Serving::Api), (2, 1));
        // The main pool keeps the listener's and one for transactions, whatever the setting asks.
        assert_eq!(split_primary(&pool(2, None), Serving::Api), (2, 0));
        assert_eq!(split_primary(&pool(10, Some(10)), Serving::Api), (2, 8));
        assert_eq!(split_primary(&pool(16, Some(15)), Serving::Api), (2, 14));
        assert_eq!(split_primary(&pool(10, Some(0)), Serving::Api), (10, 0));
        assert_eq!(split_primary(&pool(10, Some(3)), Serving::Api), (7, 3));
        // The job worker's jobs hold main-pool connections: it keeps them all.
        assert_eq!(split_primary(&pool(10, Some(3)), Serving::NoApi), (10, 0));
    }

    #[test]
    fn a_connection_is_asked_only_after_a_rest() {
        assert!(!check_before_use(Duration::from_millis(3)));
        assert!(!check_before_use(Duration::from_millis(499)));
        assert!(check_before_use(Duration::from_millis(500)));
        assert!(check_before_use(Duration::from_secs(30)));
    }
}
