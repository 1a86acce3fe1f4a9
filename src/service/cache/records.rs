//! Versioned records: cached documents whose every write has a version that only grows (a merchant's
//! row version, its list of risk assessments' `risk_version`).
//!
//! The rule: a read never returns a version older than the newest one acknowledged to any client
//! before the read began.
//! - A writer stores its new version in Redis (or, without Redis, this process's L1) after the commit
//!   and before it answers; Redis keeps whichever version is newer, so a load that read the database
//!   before the write cannot put the older one back.
//! - With Redis configured, records are never served from L1: another instance's write would reach
//!   this L1 only when its notice arrives, after the writer has answered.
//! - A miss reads the primary, never a replica: a replica may not have replayed a write another
//!   instance acknowledged, and what a miss loads is cached for the TTL.
//! - While Redis is unreachable, records are read from the primary and nothing is stored; before
//!   Redis serves again the records this instance failed to write, or to repair for another, are
//!   dropped from it (`l2::RedisCache::recover`).
//! - Every instance remembers the newest version it has heard of per key (from its own writes and
//!   from every instance's notices) and refuses anything older from any level: the guard for a
//!   writer that could not reach Redis while others could, within the time its notice takes.
//!
//! Without Redis, several instances agree only once each has heard the other's notice (milliseconds,
//! through PostgreSQL): strict read-after-write across instances needs the shared level.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::keys::RecordVersion;
use super::{CacheStatus, Entry, MultiLevelCache};
use crate::service::metrics::LevelLabel;

/// A record as read from the primary.
pub struct Loaded {
    pub version: i64,
    pub body: Bytes,
}

/// A record as served.
pub struct Record {
    pub version: i64,
    pub body: Bytes,
    pub status: CacheStatus,
}

/// What a read asks of the caches: its request's `Cache-Control` directives (RFC 9111 §5.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No directive: a servable cached copy answers; a miss loads and stores.
    Cached,
    /// `no-cache`: the primary answers, and what it answered refreshes the cache.
    Refresh,
    /// `no-store`: the primary answers and nothing of it is stored.
    Bypass,
}

/// Whether a cached version may be served, given the newest version this instance has heard of.
pub fn servable(cached: i64, heard: Option<i64>) -> bool {
    heard.is_none_or(|h| cached >= h)
}

impl MultiLevelCache {
    /// Serves `key` from the shared level (or L1 without Redis) unless it is older than a version
    /// heard of; otherwise `load` reads it from the primary. `lookup` says whether a cached copy may
    /// answer and whether what was loaded is stored.
    #[tracing::instrument(level = "debug", name = "cache.get_record", skip_all, fields(cache.key = key, cache.status))]
    pub async fn get_record<F, Fut, E>(
        &self,
        key: &str,
        lookup: Lookup,
        load: F,
    ) -> Result<Record, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Loaded, E>>,
    {
        let heard = self.heard.get(key);
        if lookup == Lookup::Cached {
            if let Some(hit) = self.cached_record(key, heard).await {
                tracing::Span::current().record("cache.status", hit.status.header_value());
                return Ok(hit);
            }
        }
        let loaded = load().await?;
        if lookup != Lookup::Bypass && servable(loaded.version, heard) {
            self.store_record(key, loaded.version, Some(&loaded.body))
                .await;
        }
        tracing::Span::current().record("cache.status", CacheStatus::Miss.header_value());
        Ok(Record {
            version: loaded.version,
            body: loaded.body,
            status: CacheStatus::Miss,
        })
    }

    async fn cached_record(&self, key: &str, heard: Option<i64>) -> Option<Record> {
        match &self.l2 {
            Some(l2) => {
                // `None`: Redis is unreachable; the primary answers and nothing counts as a miss.
                let found = l2.get_record(key).await?;
                let hit = found.and_then(|(version, body)| {
                    Some((version, body?)).filter(|_| servable(version, heard))
                });
                self.count(LevelLabel::l2(), hit.is_some());
                hit.map(|(version, body)| Record {
                    version,
                    body,
                    status: CacheStatus::HitL2,
                })
            }
            None => {
                let hit = self
                    .l1
                    .get(key)
                    .await
                    .filter(|e| servable(e.version, heard));
                self.count(LevelLabel::l1(), hit.is_some());
                hit.map(|e| Record {
                    version: e.version,
                    body: e.body.clone(),
                    status: CacheStatus::HitL1,
                })
            }
        }
    }

    /// After a committed write, before answering: records `version` of `key` as heard and stores it
    /// (`body: None` when the writer does not hold the new document: a version floor). False when
    /// Redis did not take it; the caller then asks the other instances to raise it ([`publish`]
    /// a [`super::Invalidation::repair`]).
    ///
    /// [`publish`]: MultiLevelCache::publish
    pub async fn put_record(&self, key: &str, version: i64, body: Option<&Bytes>) -> bool {
        self.hear(key, version);
        self.store_record(key, version, body).await
    }

    /// [`put_record`](Self::put_record) for every record a committed write's notice names, with the
    /// new document where the writer holds it; what Redis did not take is announced as a repair on
    /// `pool` (the primary), for the instances that can reach Redis.
    pub async fn publish_versions<'b>(
        &self,
        pool: &sqlx::PgPool,
        inv: &super::Invalidation,
        body_for: impl Fn(&str) -> Option<&'b Bytes>,
    ) {
        let mut missed = Vec::new();
        for r in &inv.records {
            if !self.put_record(&r.key, r.version, body_for(&r.key)).await {
                missed.push(r.clone());
            }
        }
        if missed.is_empty() {
            return;
        }
        tracing::warn!(
            records = missed.len(),
            "redis did not take a new version; asking the other instances to raise it"
        );
        if let Err(e) = Self::publish(pool, &super::Invalidation::repair(missed)).await {
            tracing::warn!(error = %e, "could not announce the repair; other instances rely on the versions they heard");
        }
    }

    /// Everything a committed write owes the caches before it answers: the new versions (see
    /// [`publish_versions`](Self::publish_versions)), then the shared and local entries it staled.
    pub async fn after_commit<'b>(
        &self,
        pool: &sqlx::PgPool,
        inv: &super::Invalidation,
        body_for: impl Fn(&str) -> Option<&'b Bytes>,
    ) {
        self.publish_versions(pool, inv, body_for).await;
        self.invalidate_shared(inv).await;
        self.invalidate_local(inv).await;
    }

    async fn store_record(&self, key: &str, version: i64, body: Option<&Bytes>) -> bool {
        if let Some(l2) = &self.l2 {
            return l2.set_record(key, version, body).await;
        }
        let entry = body.map(|b| {
            Arc::new(Entry {
                body: b.clone(),
                origin: CacheStatus::HitL1,
                version,
            })
        });
        self.l1
            .entry_by_ref(key)
            .and_compute_with(|current| {
                let keep = current.is_some_and(|c| c.value().version >= version);
                std::future::ready(match (keep, entry) {
                    (true, _) => moka::ops::compute::Op::Nop,
                    (false, Some(e)) => moka::ops::compute::Op::Put(e),
                    (false, None) => moka::ops::compute::Op::Remove,
                })
            })
            .await;
        true
    }

    /// Remembers that `version` of `key` exists, so nothing older is served here again.
    pub(super) fn hear(&self, key: &str, version: i64) {
        self.heard
            .entry_by_ref(key)
            .and_compute_with(|current| match current {
                Some(c) if *c.value() >= version => moka::ops::compute::Op::Nop,
                _ => moka::ops::compute::Op::Put(version),
            });
    }

    /// Applies the record part of a notice from any instance.
    pub(super) async fn apply_records(&self, inv: &super::Invalidation) {
        for RecordVersion { key, version } in &inv.records {
            self.hear(key, *version);
            self.l1
                .entry_by_ref(key)
                .and_compute_with(|current| {
                    std::future::ready(match current {
                        Some(c) if c.value().version < *version => moka::ops::compute::Op::Remove,
                        _ => moka::ops::compute::Op::Nop,
                    })
                })
                .await;
        }
        let Some(l2) = &self.l2 else { return };
        for RecordVersion { key, version } in &inv.repairs {
            l2.set_record(key, *version, None).await;
        }
        for key in inv.unversioned_records() {
            l2.drop_record(key).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_than_heard_is_never_served() {
        assert!(servable(3, None));
        assert!(servable(3, Some(3)));
        assert!(servable(4, Some(3)));
        assert!(!servable(2, Some(3)));
    }
}
