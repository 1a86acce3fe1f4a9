//! L2: Redis (single node through a reconnecting `ConnectionManager`, or Redis Cluster).
//!
//! Every failure is absorbed here: the caller sees a miss, a metric and one log line per outage say the
//! cache is degraded, and the connection heals by itself.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;

use crate::config::{ConfigError, RedisConfig};
use crate::service::metrics::Metrics;
use crate::telemetry::spans;

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
    metrics: Arc<Metrics>,
    /// Record keys whose write or repair failed here; dropped from Redis before it serves again.
    missed: std::sync::Mutex<HashSet<String>>,
    /// Every record may be stale: more writes missed than `MAX_MISSED`, or a different server
    /// answers. The next recovery drops every record.
    lost_track: AtomicBool,
    /// `run_id` of the Redis server last seen (single node only).
    server_id: std::sync::Mutex<Option<String>>,
}

/// Versioned records (see `records`) live under their own key space: a hash of `v` (the version)
/// and `b` (the body), never read by an older release that stores plain strings.
const RECORDS: &str = "rec:";

/// Bound on the keys remembered as missed during an outage.
const MAX_MISSED: usize = 100_000;

/// Sets a record unless Redis already holds a newer version; a bare floor (empty body) at the
/// version Redis holds keeps that version's body.
const SET_RECORD: &str = r"
local cur = tonumber(redis.call('HGET', KEYS[1], 'v'))
local v = tonumber(ARGV[1])
if cur and (cur > v or (cur == v and ARGV[2] == '')) then return 0 end
if ARGV[2] == '' then
  redis.call('HDEL', KEYS[1], 'b')
  redis.call('HSET', KEYS[1], 'v', ARGV[1])
else
  redis.call('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

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
            metrics,
            missed: Default::default(),
            lost_track: AtomicBool::new(false),
            server_id: Default::default(),
        }))
    }

    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// A command, or `None` at once while degraded: requests skip L2 instead of each waiting out the
    /// command timeout, and only the probe ([`probe`](Self::probe)) goes to Redis until it is back.
    async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        if self.is_degraded() {
            return None;
        }
        self.raw(cmd).await
    }

    /// One command, no degraded-mode gate: failures still mark the cache degraded.
    async fn raw<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let command = match cmd.args_iter().next() {
            Some(redis::Arg::Simple(name)) => std::str::from_utf8(name).unwrap_or("redis"),
            _ => "redis",
        };
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
        // The timeout inside the span: a command that never answered is a failed span.
        let result = spans::redis(command, async {
            match tokio::time::timeout(self.timeout, fut).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            }
        })
        .await;
        match result {
            Ok(v) => Some(v),
            Err(e) => {
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

    /// A record's version and body, or `None` when Redis cannot answer (as opposed to a miss,
    /// `Some(None)`). A record may be a bare version floor with no body yet.
    pub async fn get_record(&self, key: &str) -> Option<Option<(i64, Option<Bytes>)>> {
        let (version, body): (Option<i64>, Option<Vec<u8>>) = self
            .run(
                redis::cmd("HMGET")
                    .arg(self.record_key(key))
                    .arg("v")
                    .arg("b"),
            )
            .await?;
        Some(version.map(|v| (v, body.map(Bytes::from))))
    }

    /// Stores `body` as version `version` of a record, or with `None` raises its version floor (the
    /// body of an older version goes). Never lowers a version, so a load that read the database
    /// before a write cannot overwrite the write's result. False when Redis did not take it; the key
    /// is then remembered and dropped when Redis answers again.
    pub async fn set_record(&self, key: &str, version: i64, body: Option<&Bytes>) -> bool {
        // EVAL, not EVALSHA: the script is a few hundred bytes, sent on writes and misses only, and
        // needs no load step after a Redis restart.
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SET_RECORD)
            .arg(1)
            .arg(self.record_key(key))
            .arg(version)
            .arg(body.map(|b| b.as_ref()).unwrap_or(b""))
            .arg(self.ttl.as_millis() as u64);
        let done = self.run::<i64>(&cmd).await.is_some();
        if !done {
            self.remember_missed(key);
        }
        done
    }

    /// Drops a record whatever its version: for a notice from the release before versions.
    pub async fn drop_record(&self, key: &str) {
        let dropped: Option<i64> = self
            .run(redis::cmd("UNLINK").arg(self.record_key(key)))
            .await;
        if dropped.is_none() {
            self.remember_missed(key);
        }
    }

    fn record_key(&self, key: &str) -> String {
        format!("{}{RECORDS}{key}", self.prefix)
    }

    fn remember_missed(&self, key: &str) {
        let mut missed = self.missed.lock().unwrap_or_else(|p| p.into_inner());
        if missed.len() < MAX_MISSED {
            missed.insert(key.to_owned());
        } else {
            self.lost_track.store(true, Ordering::Relaxed);
        }
    }

    /// Runs from the probe while degraded: Redis serves again once the records this instance
    /// failed to write are gone from it.
    ///
    /// Not every record of the namespace, as long as Redis kept what it acknowledged: a record is
    /// then stale only where a write did not reach it, and such a write is remembered by its writer
    /// and by every instance that could not apply the repair the writer announced (`records`).
    /// Dropping everything made one slow command on a saturated core (an "outage" of one command
    /// timeout) cost a reload of the whole working set from the primary. Everything is dropped
    /// when Redis may have lost acknowledged writes (a different server answers: restarted from a
    /// snapshot, or failed over to a replica) or this instance lost count of its misses.
    async fn recover(&self) -> bool {
        if !self.check_server().await || !self.drop_records().await {
            return false;
        }
        self.degraded.store(false, Ordering::Relaxed);
        // Writes skipped while this recovery ran were remembered after the snapshot it dropped.
        if !self.drop_records().await {
            return false;
        }
        self.metrics.cache_degraded.set(0);
        tracing::info!("redis cache reachable again; the records it missed were dropped");
        true
    }

    /// Compares the server's `run_id` (new on every start, and another server's after a failover)
    /// with the one last seen; a change means Redis may have come back with older records than it
    /// acknowledged, so every record goes. False when Redis did not answer. Redis Cluster answers
    /// from any node, each with its own id: only a round trip there.
    async fn check_server(&self) -> bool {
        if matches!(self.backend, Backend::Cluster { .. }) {
            return self.raw::<String>(&redis::cmd("PING")).await.is_some();
        }
        let Some(info) = self.raw::<String>(redis::cmd("INFO").arg("server")).await else {
            return false;
        };
        let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
        else {
            return true;
        };
        let mut seen = self.server_id.lock().unwrap_or_else(|p| p.into_inner());
        if seen.as_ref().is_some_and(|s| *s != id) {
            tracing::warn!("a different redis server answers (restarted or failed over); every record is dropped");
            self.lost_track.store(true, Ordering::Relaxed);
        }
        *seen = Some(id);
        true
    }

    async fn drop_records(&self) -> bool {
        let missed: Vec<String> = self
            .missed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        for key in &missed {
            if self
                .raw::<i64>(redis::cmd("UNLINK").arg(self.record_key(key)))
                .await
                .is_none()
            {
                return false;
            }
            // Taken out only once gone from Redis: a failed attempt keeps the rest for the next.
            self.missed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
        }
        // Taken before the scan: a count lost during it is kept for the next recovery.
        if !self.lost_track.swap(false, Ordering::Relaxed) {
            return true;
        }
        match self.backend {
            Backend::Single(_) => {
                tracing::warn!("dropping every record of the namespace");
                let done = self.unlink_matching(&self.record_key("*")).await;
                if !done {
                    self.lost_track.store(true, Ordering::Relaxed);
                }
                done
            }
            // A SCAN through the cluster client reaches one node only.
            Backend::Cluster { .. } => {
                tracing::error!("more than {MAX_MISSED} cache writes missed during the outage on a Redis Cluster; records may be stale until their TTL");
                true
            }
        }
    }

    async fn unlink_matching(&self, pattern: &str) -> bool {
        let mut cursor = 0u64;
        loop {
            let Some((next, keys)): Option<(u64, Vec<String>)> = self
                .raw(
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000),
                )
                .await
            else {
                return false;
            };
            if !keys.is_empty()
                && self
                    .raw::<i64>(redis::cmd("UNLINK").arg(&keys))
                    .await
                    .is_none()
            {
                return false;
            }
            if next == 0 {
                return true;
            }
            cursor = next;
        }
    }

    /// PUBLISH `message` on `channel` (a nudge to whoever listens; nothing is lost if nobody does).
    pub async fn publish(&self, channel: &str, message: &str) -> bool {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(message);
        self.run::<i64>(&cmd).await.is_some()
    }

    /// The probe, for the one task that calls it every 250 ms (the service's and the worker's
    /// background; concurrent probes would only repeat each other's UNLINKs). While degraded it tries to bring the cache back ([`recover`](Self::recover)), so no request
    /// waits on a Redis that is down; otherwise it checks that the same server still answers. True
    /// when the cache serves from Redis afterwards.
    pub async fn probe(&self) -> bool {
        if !self.is_degraded() {
            if !self.check_server().await {
                return false;
            }
            if !self.lost_track.load(Ordering::Relaxed) {
                return true;
            }
            // A new server: stop serving from it until its records are gone.
            self.degraded.store(true, Ordering::Relaxed);
            self.metrics.cache_degraded.set(1);
        }
        self.recover().await
    }
}
