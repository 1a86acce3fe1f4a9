//! Read-your-writes: remembers recent writes per key so their next reads avoid stale replicas.

use std::time::Duration;

use sqlx::PgPool;

use crate::config::ReadYourWrites;
use crate::telemetry::spans;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteMark {
    /// A replica may serve the read once it has replayed this WAL position.
    Lsn(String),
    /// Read from the primary until the window passes.
    PrimaryOnly,
}

pub struct Freshness {
    rule: ReadYourWrites,
    recent: Option<moka::sync::Cache<String, WriteMark>>,
}

/// Bound on remembered writes; past it the oldest marks go and their keys may read stale briefly.
const MAX_MARKS: u64 = 100_000;

impl Freshness {
    pub fn new(rule: &ReadYourWrites) -> Self {
        let ttl = match rule {
            ReadYourWrites::Lsn { remember_for } => Some(*remember_for),
            ReadYourWrites::PrimaryWindow { window } => Some(*window),
            ReadYourWrites::Off => None,
        };
        Self {
            rule: rule.clone(),
            recent: ttl.map(|ttl| {
                moka::sync::Cache::builder()
                    .max_capacity(MAX_MARKS)
                    .time_to_live(ttl.max(Duration::from_millis(1)))
                    .build()
            }),
        }
    }

    pub fn mark(&self, key: &str) -> Option<WriteMark> {
        self.recent.as_ref()?.get(key)
    }

    pub async fn note(&self, key: &str, primary: &PgPool) {
        let Some(recent) = &self.recent else { return };
        let mark = match self.rule {
            ReadYourWrites::Lsn { .. } => {
                // Asked after commit, so the position covers the commit record. The insert position, not
                // pg_current_wal_lsn(): with synchronous_commit=off the commit record may not be written
                // out yet, and the write position would then be behind our own commit.
                match spans::db(
                    "SELECT",
                    "pg_current_wal_insert_lsn",
                    sqlx::query_scalar::<_, String>("SELECT pg_current_wal_insert_lsn()::text")
                        .fetch_one(primary),
                )
                .await
                {
                    Ok(lsn) => WriteMark::Lsn(lsn),
                    Err(_) => WriteMark::PrimaryOnly,
                }
            }
            _ => WriteMark::PrimaryOnly,
        };
        recent.insert(key.to_owned(), mark);
    }
}
