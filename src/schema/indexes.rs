//! The indexes the service's queries need, and their upkeep on live data: concurrent builds that never
//! block writes, repair of builds that were interrupted, and proof that each hot query uses its index.
//!
//! The migrations create these indexes with their tables; this module is for databases that are
//! already busy: an index added later, or an INVALID index left by a `CREATE INDEX CONCURRENTLY` that
//! was cancelled, timed out or hit a constraint violation (PostgreSQL keeps such an index, maintains
//! it on every write, and never uses it).

use std::time::{Duration, Instant};

use rand::Rng;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use crate::db_error::{is_connection_error, DbError};

/// An index the service relies on.
#[derive(Debug, Clone, Copy)]
pub struct IndexDef {
    pub name: &'static str,
    pub table: &'static str,
    pub unique: bool,
    /// Columns and optional predicate, as written after `ON table`.
    pub definition: &'static str,
    /// What needs it.
    pub purpose: &'static str,
}

impl IndexDef {
    /// The statement that builds it without blocking writes (outside any transaction).
    pub fn create_sql(&self) -> String {
        format!(
            "CREATE {}INDEX CONCURRENTLY IF NOT EXISTS {} ON {} {}",
            if self.unique { "UNIQUE " } else { "" },
            self.name,
            self.table,
            self.definition
        )
    }
}

/// Every managed index; each also exists in a migration (a unit test checks it), so a freshly
/// migrated database has them all and `apply` is for repairs and live databases.
pub const INDEXES: &[IndexDef] = &[
    IndexDef {
        name: "idx_merchants_industry_id",
        table: "merchants",
        unique: false,
        definition: "(industry_id, id)",
        purpose: "merchant listing by industry code or prefix",
    },
    IndexDef {
        name: "idx_merchants_status_id",
        table: "merchants",
        unique: false,
        definition: "(status, id)",
        purpose: "merchant listing by status",
    },
    IndexDef {
        name: "idx_merchants_created_industry",
        table: "merchants",
        unique: false,
        definition: "(created_at, industry_id)",
        purpose: "the plan's recent-merchants analytics",
    },
    IndexDef {
        name: "idx_classifications_business_industry",
        table: "classifications",
        unique: false,
        definition: "(business_id, industry_id) WHERE status = 'active'",
        purpose: "the plan's active classification by business and industry",
    },
    IndexDef {
        name: "idx_classifications_one_active",
        table: "classifications",
        unique: true,
        definition: "(business_id) WHERE status = 'active'",
        purpose: "one active classification per merchant",
    },
    IndexDef {
        name: "idx_classifications_active_confidence",
        table: "classifications",
        unique: false,
        definition: "(confidence_score DESC) WHERE status = 'active'",
        purpose: "the plan's optimized classification query (most confident first)",
    },
    IndexDef {
        name: "idx_risk_assessments_business",
        table: "business_risk_assessments",
        unique: false,
        definition: "(business_id, assessment_date DESC, id DESC)",
        purpose: "a merchant's risk assessments, newest first",
    },
    IndexDef {
        name: "idx_risk_assessments_business_date",
        table: "business_risk_assessments",
        unique: false,
        definition: "(business_id, assessment_date DESC) WHERE risk_level IN ('high', 'critical')",
        purpose: "the plan's high-risk review queue",
    },
];

/// A query on the service's hot path and the index it must use.
#[derive(Debug, Clone, Copy)]
pub struct HotQuery {
    pub name: &'static str,
    /// The query as the service runs it, with `$1` bound to `sample`'s result when it has one.
    pub sql: &'static str,
    /// Picks a realistic `$1` from the current data (falling back to a value that matches nothing).
    pub sample: Option<&'static str>,
    pub index: &'static str,
}

/// The shapes of `merchants::get`, `merchants::list` with an industry filter, `risk_assessments::list`, and the
/// plan's "Optimized classification query" verbatim.
pub const HOT_QUERIES: &[HotQuery] = &[
    HotQuery {
        name: "merchant by id",
        sql: "SELECT m.id, m.name, c.industry_id FROM merchants m
              LEFT JOIN classifications c ON c.business_id = m.id AND c.status = 'active'
              WHERE m.id = $1::uuid",
        sample: Some(
            "SELECT coalesce((SELECT id::text FROM merchants LIMIT 1), '00000000-0000-0000-0000-000000000000')",
        ),
        index: "merchants_pkey",
    },
    HotQuery {
        name: "merchant listing by industry prefix",
        sql: "SELECT m.id, m.name, c.industry_id FROM merchants m
              LEFT JOIN classifications c ON c.business_id = m.id AND c.status = 'active'
              WHERE m.industry_id >= $1::text AND m.industry_id < $1::text || ':'
              ORDER BY m.id LIMIT 51",
        // The rarest industry code: a selective page, as most industry pages are. (For a prefix that
        // matches a large share of merchants, walking the primary key in id order is rightly cheaper.)
        sample: Some(
            "SELECT coalesce((SELECT industry_id FROM merchants WHERE industry_id IS NOT NULL
                               GROUP BY 1 ORDER BY count(*), 1 LIMIT 1), '000000')",
        ),
        index: "idx_merchants_industry_id",
    },
    HotQuery {
        name: "risk assessments by merchant",
        sql: "SELECT id, business_id, risk_level, risk_score, factors, assessment_date
              FROM business_risk_assessments WHERE business_id = $1::uuid
              ORDER BY assessment_date DESC, id DESC LIMIT 20",
        sample: Some(
            "SELECT coalesce((SELECT business_id::text FROM business_risk_assessments LIMIT 1),
                             '00000000-0000-0000-0000-000000000000')",
        ),
        index: "idx_risk_assessments_business",
    },
    HotQuery {
        name: "classification query (plan)",
        sql: "SELECT b.id, b.name, c.industry_id, c.confidence_score, c.classification_method
              FROM merchants b JOIN classifications c ON b.id = c.business_id
              WHERE b.status = 'active' AND c.status = 'active' AND c.confidence_score > 0.8
              ORDER BY c.confidence_score DESC LIMIT 100",
        sample: None,
        index: "idx_classifications_active_confidence",
    },
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexState {
    Valid,
    /// Left by an interrupted concurrent build: maintained on writes, never used by queries.
    Invalid,
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct IndexStatus {
    pub name: &'static str,
    pub table: &'static str,
    pub state: IndexState,
    pub size_bytes: i64,
    /// `pg_stat_user_indexes.idx_scan`: index scans since statistics were last reset.
    pub scans: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Created,
    AlreadyValid,
    /// An INVALID leftover was dropped and built again.
    Rebuilt,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Created => "created",
            Outcome::AlreadyValid => "already valid",
            Outcome::Rebuilt => "rebuilt",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub name: &'static str,
    pub outcome: Outcome,
    /// Builds that failed on the lock timeout before the one that succeeded.
    pub retries: u32,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// `lock_timeout` of each build: the build needs a SHARE UPDATE EXCLUSIVE lock, and one queued
    /// behind (say) a long ALTER would make the writes queued behind it wait too.
    pub lock_timeout: Duration,
    /// Builds per index before giving up on lock timeouts.
    pub attempts: u32,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(2),
            attempts: 5,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{index}: {source}")]
    Build {
        index: &'static str,
        source: DbError,
    },
    #[error("{index}: still waiting for locks after {attempts} attempts ({lock_timeout:?} lock timeout each)")]
    LockTimeouts {
        index: &'static str,
        attempts: u32,
        lock_timeout: Duration,
    },
    #[error("{0}: EXPLAIN returned no plan in the expected JSON shape")]
    UnexpectedPlan(&'static str),
    #[error("{index}: another session (pid {pid}) is building it now; run again when it is done")]
    BuildInProgress { index: &'static str, pid: i32 },
}

impl From<sqlx::Error> for IndexError {
    fn from(e: sqlx::Error) -> Self {
        IndexError::Db(e.into())
    }
}

impl IndexError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, IndexError::Db(DbError::Unavailable(_)))
    }
}

/// The index's state, and the pid of a session building it right now (its entry is INVALID then too,
/// but must not be dropped under the builder).
async fn state(
    conn: &mut PgConnection,
    name: &str,
) -> Result<(IndexState, Option<i32>), sqlx::Error> {
    let row: Option<(bool, Option<i32>)> = sqlx::query_as(
        "SELECT i.indisvalid,
                (SELECT p.pid FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid LIMIT 1)
           FROM pg_class c JOIN pg_index i ON i.indexrelid = c.oid
          WHERE c.relname = $1 AND c.relnamespace = current_schema()::text::regnamespace",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?;
    Ok(match row {
        None => (IndexState::Missing, None),
        Some((true, _)) => (IndexState::Valid, None),
        Some((false, pid)) => (IndexState::Invalid, pid),
    })
}

/// SQLSTATE 55P03 lock_not_available: what `lock_timeout` raises.
fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// Builds every missing index and rebuilds every INVALID one, one at a time, concurrently (writes go
/// on), on a connection of its own with no statement timeout (a build on a big table takes as long as
/// it takes) and a short lock timeout retried with jittered backoff.
pub async fn apply(pool: &PgPool, opts: &ApplyOptions) -> Result<Vec<Applied>, IndexError> {
    let mut conn = pool.acquire().await.map_err(DbError::from)?.detach();
    let sql = format!(
        "SET lock_timeout = '{}ms'; SET statement_timeout = 0",
        opts.lock_timeout.as_millis()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await?;
    let mut report = Vec::new();
    for def in INDEXES {
        let started = Instant::now();
        let (initial, _) = state(&mut conn, def.name).await?;
        if initial == IndexState::Valid {
            report.push(Applied {
                name: def.name,
                outcome: Outcome::AlreadyValid,
                retries: 0,
                elapsed: started.elapsed(),
            });
            continue;
        }
        let retries = build(&mut conn, def, opts).await?;
        report.push(Applied {
            name: def.name,
            outcome: if initial == IndexState::Missing {
                Outcome::Created
            } else {
                Outcome::Rebuilt
            },
            retries,
            elapsed: started.elapsed(),
        });
    }
    conn.close().await.ok();
    Ok(report)
}

/// Drops an INVALID leftover (a failed attempt leaves one too) and builds; returns the retries used.
async fn build(
    conn: &mut PgConnection,
    def: &IndexDef,
    opts: &ApplyOptions,
) -> Result<u32, IndexError> {
    let build_err = |e: sqlx::Error| IndexError::Build {
        index: def.name,
        source: e.into(),
    };
    for attempt in 0..opts.attempts.max(1) {
        if attempt > 0 {
            // 200 ms doubling, each wait jittered by up to half so retrying builds do not line up.
            let base = 200u64 << attempt.min(6);
            let jitter = rand::rng().random_range(0..=base / 2);
            tokio::time::sleep(Duration::from_millis(base + jitter)).await;
        }
        match state(conn, def.name).await? {
            (IndexState::Valid, _) => return Ok(attempt),
            (IndexState::Invalid, Some(pid)) => {
                return Err(IndexError::BuildInProgress {
                    index: def.name,
                    pid,
                })
            }
            (IndexState::Invalid, None) => {
                let drop = format!("DROP INDEX CONCURRENTLY IF EXISTS {}", def.name);
                match sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => {}
                    Err(e) if is_lock_timeout(&e) => continue,
                    Err(e) => return Err(build_err(e)),
                }
            }
            (IndexState::Missing, _) => {}
        }
        match sqlx::raw_sql(sqlx::AssertSqlSafe(def.create_sql()))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => return Ok(attempt),
            Err(e) if is_lock_timeout(&e) => {
                tracing::info!(
                    index = def.name,
                    attempt,
                    "index build hit the lock timeout; retrying"
                );
            }
            Err(e) if is_connection_error(&e) => return Err(IndexError::Db(e.into())),
            Err(e) => return Err(build_err(e)),
        }
    }
    Err(IndexError::LockTimeouts {
        index: def.name,
        attempts: opts.attempts,
        lock_timeout: opts.lock_timeout,
    })
}

/// Size, scans and validity of every managed index.
pub async fn status(pool: &PgPool) -> Result<Vec<IndexStatus>, IndexError> {
    let names: Vec<&str> = INDEXES.iter().map(|d| d.name).collect();
    let rows: Vec<(String, bool, i64, i64)> = sqlx::query_as(
        "SELECT c.relname::text, i.indisvalid, pg_relation_size(c.oid), coalesce(s.idx_scan, 0)
           FROM pg_class c
           JOIN pg_index i ON i.indexrelid = c.oid
           LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = c.oid
          WHERE c.relname = ANY($1) AND c.relnamespace = current_schema()::text::regnamespace",
    )
    .bind(&names)
    .fetch_all(pool)
    .await?;
    Ok(INDEXES
        .iter()
        .map(|d| {
            let row = rows.iter().find(|r| r.0 == d.name);
            IndexStatus {
                name: d.name,
                table: d.table,
                state: match row {
                    None => IndexState::Missing,
                    Some(r) if r.1 => IndexState::Valid,
                    Some(_) => IndexState::Invalid,
                },
                size_bytes: row.map_or(0, |r| r.2),
                scans: row.map_or(0, |r| r.3),
            }
        })
        .collect())
}

/// What `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` said about one hot query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanSummary {
    /// Node types, outermost first, depth first (`Limit`, `Nested Loop`, `Index Scan`, ...).
    pub nodes: Vec<String>,
    /// Every index any node reads.
    pub indexes: Vec<String>,
    pub rows: f64,
    pub execution_ms: f64,
    pub shared_hit: i64,
    pub shared_read: i64,
}

impl PlanSummary {
    /// Reads the summary out of EXPLAIN's JSON (an array holding one object with a `Plan`).
    pub fn from_explain(json: &serde_json::Value) -> Option<Self> {
        let top = json.get(0)?;
        let plan = top.get("Plan")?;
        let mut summary = PlanSummary {
            nodes: Vec::new(),
            indexes: Vec::new(),
            rows: plan.get("Actual Rows")?.as_f64()?,
            execution_ms: top.get("Execution Time")?.as_f64()?,
            shared_hit: plan
                .get("Shared Hit Blocks")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
            shared_read: plan
                .get("Shared Read Blocks")
                .and_then(|v| v.as_i64())
                .unwrap_or(0),
        };
        walk(plan, &mut summary);
        Some(summary)
    }

    pub fn uses(&self, index: &str) -> bool {
        self.indexes.iter().any(|i| i == index)
    }
}

fn walk(node: &serde_json::Value, out: &mut PlanSummary) {
    if let Some(t) = node.get("Node Type").and_then(|v| v.as_str()) {
        out.nodes.push(t.to_owned());
    }
    if let Some(i) = node.get("Index Name").and_then(|v| v.as_str()) {
        if !out.indexes.iter().any(|x| x == i) {
            out.indexes.push(i.to_owned());
        }
    }
    for child in node
        .get("Plans")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
    {
        walk(child, out);
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Verified {
    pub query: &'static str,
    pub index: &'static str,
    pub uses_index: bool,
    pub plan: PlanSummary,
}

/// Runs each hot query under `EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)` and says whether it used its
/// index.
///
/// With `enable_seqscan = off` (for this transaction only): the question is whether the index *can*
/// serve the query shape (columns, operator, collation, partial predicate), which does not depend on
/// data volume, while the planner's choice does: on a table of a few pages a sequential scan is
/// rightly cheaper, so checking the natural plan would fail every small database and prove nothing on
/// it. With sequential scans priced out the planner still picks the cheapest *index* path, so a query
/// that would take the wrong index (or a bitmap over another one) still fails.
pub async fn verify(pool: &PgPool) -> Result<Vec<Verified>, IndexError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL enable_seqscan = off")
        .execute(&mut *tx)
        .await?;
    let mut out = Vec::new();
    for q in HOT_QUERIES {
        let explain =
            sqlx::AssertSqlSafe(format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {}", q.sql));
        let json: serde_json::Value = match q.sample {
            Some(sample) => {
                let value: String = sqlx::query_scalar(sample).fetch_one(&mut *tx).await?;
                sqlx::query_scalar(explain)
                    .bind(value)
                    .fetch_one(&mut *tx)
                    .await?
            }
            None => sqlx::query_scalar(explain).fetch_one(&mut *tx).await?,
        };
        let plan = PlanSummary::from_explain(&json).ok_or(IndexError::UnexpectedPlan(q.name))?;
        out.push(Verified {
            query: q.name,
            index: q.index,
            uses_index: plan.uses(q.index),
            plan,
        });
    }
    tx.rollback().await?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_is_also_created_by_a_migration() {
        for d in INDEXES {
            assert!(
                super::super::migrate::MIGRATOR
                    .iter()
                    .any(|m| m.migration_type.is_up_migration() && m.sql.as_str().contains(d.name)),
                "{} is in no migration",
                d.name
            );
        }
    }

    #[test]
    fn every_hot_query_names_a_known_index() {
        for q in HOT_QUERIES {
            assert!(
                q.index == "merchants_pkey" || INDEXES.iter().any(|d| d.name == q.index),
                "{}: unknown index {}",
                q.name,
                q.index
            );
        }
    }

    #[test]
    fn create_sql_is_concurrent_and_idempotent() {
        let d = INDEXES
            .iter()
            .find(|d| d.name == "idx_classifications_one_active")
            .unwrap();
        assert_eq!(
            d.create_sql(),
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_classifications_one_active ON classifications (business_id) WHERE status = 'active'"
        );
    }

    #[test]
    fn plan_summary_walks_every_node() {
        let json = serde_json::json!([{
            "Plan": {
                "Node Type": "Limit", "Actual Rows": 3.0, "Shared Hit Blocks": 7, "Shared Read Blocks": 1,
                "Plans": [{
                    "Node Type": "Nested Loop",
                    "Plans": [
                        {"Node Type": "Index Scan", "Index Name": "idx_a"},
                        {"Node Type": "Bitmap Heap Scan", "Plans": [
                            {"Node Type": "Bitmap Index Scan", "Index Name": "idx_b"}
                        ]}
                    ]
                }]
            },
            "Planning Time": 0.1,
            "Execution Time": 0.42
        }]);
        let s = PlanSummary::from_explain(&json).unwrap();
        assert_eq!(
            s.nodes,
            [
                "Limit",
                "Nested Loop",
                "Index Scan",
                "Bitmap Heap Scan",
                "Bitmap Index Scan"
            ]
        );
        assert_eq!(s.indexes, ["idx_a", "idx_b"]);
        assert!(s.uses("idx_b") && !s.uses("idx_c"));
        assert_eq!(
            (s.rows, s.execution_ms, s.shared_hit, s.shared_read),
            (3.0, 0.42, 7, 1)
        );
    }
}
