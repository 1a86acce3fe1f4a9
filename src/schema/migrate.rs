//! The embedded schema migrations (sqlx's migrator, so the container image alone can migrate), and
//! the `kybctl migrate` operations on top of it: guarded `up`, `down`, `status` and their dry runs.
//!
//! sqlx applies and reverts; this module decides what to run (pure functions over the embedded set and
//! the `_sqlx_migrations` rows), refuses unsafe migrations, and runs sqlx on one dedicated connection
//! with the run's lock and statement timeouts.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use rand::Rng;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Connection, PgConnection, PgPool, SqlSafeStr};

use super::lint::{self, QueryCorpus};
use crate::db_error::{is_connection_error, DbError};
use crate::db_row;

/// The `migrations/` folder, embedded: every migration is reversible, an `.up.sql` and a
/// `.down.sql` file named `<version>_<name>`.
///
/// Listed by hand rather than read by `sqlx::migrate!`: that macro (sqlx's proc macro) made the
/// build compile sqlx, tokio and their dependencies a second time, for the compiler (BENCHMARKS.md,
/// twenty-fifth pass). `the_embedded_list_is_what_sqlx_reads_from_the_folder` checks this list
/// against sqlx's own reading of the folder, so a file missing here or edited there fails the tests.
macro_rules! reversible_migrations {
    ($($version:literal $name:literal),* $(,)?) => {
        [$((
            $version,
            $name,
            include_str!(concat!("../../migrations/", $version, "_", $name, ".up.sql")),
            include_str!(concat!("../../migrations/", $version, "_", $name, ".down.sql")),
        )),*]
    };
}

const MIGRATION_FILES: &[(i64, &str, &str, &str)] = &reversible_migrations![
    20261128000001 "schema",
    20261129000001 "classification_confidence_index",
    20261130000001 "merchant_active_classification",
    20261201000001 "merchant_risk_version",
    20261201000002 "merchant_status_changes",
    20261202000001 "jobs",
    20261203000001 "job_error_kind",
    20261203000002 "jobs_fillfactor_reset",
    20261203000003 "merchant_idempotency_digest",
];

pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    Migrator::with_migrations(
        MIGRATION_FILES
            .iter()
            .flat_map(|&(version, name, up, down)| reversible(version, name, up, down))
            .collect(),
    )
});

/// The two halves of a reversible migration, as sqlx reads them from `<version>_<name>.up.sql` and
/// `.down.sql`: underscores in the name read as spaces, and a script whose first line is
/// `-- no-transaction` runs outside a transaction.
pub fn reversible(
    version: i64,
    name: &str,
    up: &'static str,
    down: &'static str,
) -> [Migration; 2] {
    let description = name.replace('_', " ");
    [
        (MigrationType::ReversibleUp, up),
        (MigrationType::ReversibleDown, down),
    ]
    .map(|(kind, sql)| {
        Migration::new(
            version,
            description.clone().into(),
            kind,
            sql.into_sql_str(),
            sql.starts_with("-- no-transaction"),
        )
    })
}

static EMBEDDED: std::sync::OnceLock<&'static Migrator> = std::sync::OnceLock::new();

/// The migrations this binary applies (`migrate`) and needs before it is ready (`/ready`): the
/// `migrations/` folder, unless the binary's `main` chose others with [`embed`]. A process-wide value
/// because it is a property of the build, like the folder [`MIGRATOR`] embeds at compile time.
pub fn embedded() -> &'static Migrator {
    EMBEDDED.get_or_init(|| &*MIGRATOR)
}

/// Makes `migrator` this binary's migrations; for a `main` built with other ones (the next-release
/// fixture of the zero-loss tests: `examples/next_release.rs`). Only before anything used
/// [`embedded`]; false when it was too late.
pub fn embed(migrator: &'static Migrator) -> bool {
    EMBEDDED.set(migrator).is_ok()
}

/// The newest migration embedded in this binary.
pub fn expected_version() -> i64 {
    embedded().iter().map(|m| m.version).max().unwrap_or(0)
}

/// Whether a migration is a contract step (`-- contract`): it runs only once no instance of the
/// previous release is left, so this release's binaries must work before it is applied.
pub fn is_contract_step(m: &Migration) -> bool {
    m.migration_type.is_up_migration() && lint::is_contract(m.sql.as_str())
}

/// The migrations a run may apply: every one in a contract run, otherwise all but the contract steps.
/// Versions recorded in the database but absent here (applied by a newer release, or contract steps
/// held back) are not this run's business, so sqlx is told to ignore them: an older binary's
/// `migrate up` on a newer schema applies nothing and succeeds.
pub fn runnable(migrator: &Migrator, contract: bool) -> Migrator {
    let mut m = Migrator::with_migrations(
        migrator
            .iter()
            .filter(|m| contract || !is_contract_step(m))
            .cloned()
            .collect(),
    );
    m.set_ignore_missing(true);
    m
}

/// The embedded migrations this binary needs before it may serve: every expand step. Contract steps
/// and migrations of newer releases do not matter (expand/contract: a newer schema only adds).
pub fn missing_for_readiness(migrator: &Migrator, applied: &[i64]) -> Vec<i64> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration() && !is_contract_step(m))
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect()
}

/// The successfully applied versions, or `None` before the first migration.
pub async fn applied_versions(pool: &PgPool) -> Result<Option<Vec<i64>>, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(Some(
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await?,
    ))
}

/// The newest successfully applied migration, or `None` before the first one.
pub async fn applied_version(pool: &PgPool) -> Result<Option<i64>, DbError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(None);
    }
    Ok(
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await?,
    )
}

/// Applies every pending embedded migration, contract steps included (concurrent runners apply each
/// once), and then refreshes the reference tables: what the demo and the tests need, where no older
/// release is running.
pub async fn up(pool: &PgPool) -> Result<(), MigrateError> {
    let opts = RunOptions {
        contract: true,
        ..RunOptions::default()
    };
    up_with(pool, embedded(), &opts).await?;
    super::reference::sync(pool).await?;
    Ok(())
}

/// Per-run settings of `up` and `down`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `lock_timeout` of the migrating session: a migration queued behind a long lock fails fast
    /// instead of making every later query on that table queue behind it. Zero disables.
    pub lock_timeout: Duration,
    /// `statement_timeout` of the migrating session. Zero disables.
    pub statement_timeout: Duration,
    /// Apply migrations even when lint finds something.
    pub allow_unsafe: bool,
    /// Apply contract steps too (only once every instance runs this release).
    pub contract: bool,
}

impl Default for RunOptions {
    /// The `kybctl migrate` flags' defaults.
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(60),
            allow_unsafe: false,
            contract: false,
        }
    }
}

/// One migration that was (or in a dry run, would be) applied or reverted.
#[derive(Debug, Clone)]
pub struct Step {
    pub version: i64,
    pub description: String,
    /// Lint findings of the SQL that runs (the up or the down script).
    pub findings: Vec<lint::Finding>,
    /// How long it took; `None` in a dry run.
    pub elapsed: Option<Duration>,
}

/// A row of `_sqlx_migrations`.
#[derive(Debug, Clone)]
pub struct AppliedRow {
    pub version: i64,
    pub description: String,
    pub success: bool,
    pub checksum: Vec<u8>,
}

db_row::from_row!(AppliedRow {
    version,
    description,
    success,
    checksum
});

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Applied,
    Pending,
    /// Recorded with `success = false`: sqlx refuses to go on until it is fixed.
    Failed,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub state: State,
    /// Short hex of the embedded script's SHA-384 (of the applied one when this binary lacks it).
    pub checksum: String,
    /// The applied script's checksum differs from the embedded one: it was edited after applying.
    pub checksum_mismatch: bool,
    /// False for a migration the database has but this binary does not.
    pub embedded: bool,
    /// Not embedded and newer than every embedded migration: a newer release applied it, which
    /// expand/contract allows. An unknown migration among known ones is a diverged history.
    pub newer_release: bool,
    /// A contract step (`-- contract`): `migrate up` holds it back until `--contract`.
    pub contract: bool,
}

impl MigrationStatus {
    /// Whether this row fails `migrate status`'s check.
    pub fn is_problem(&self) -> bool {
        self.checksum_mismatch
            || self.state == State::Failed
            || (!self.embedded && !self.newer_release)
    }
}

/// Hex of the first 8 bytes: enough to tell scripts apart in a listing.
pub fn short_hex(checksum: &[u8]) -> String {
    hex::encode(&checksum[..checksum.len().min(8)])
}

/// The embedded up migrations not yet recorded, oldest first.
pub fn pending<'m>(migrator: &'m Migrator, applied: &[AppliedRow]) -> Vec<&'m Migration> {
    migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .filter(|m| !applied.iter().any(|a| a.version == m.version))
        .collect()
}

/// The down scripts of the newest `steps` applied migrations, newest first, each with the version to
/// undo to (the next older applied one, or 0). Fails when one of them has no down script, rather than
/// letting sqlx skip it silently.
pub fn to_revert<'m>(
    migrator: &'m Migrator,
    applied: &[AppliedRow],
    steps: usize,
) -> Result<Vec<(&'m Migration, i64)>, MigrateError> {
    let mut versions: Vec<i64> = applied
        .iter()
        .filter(|a| a.success)
        .map(|a| a.version)
        .collect();
    versions.sort_unstable_by(|a, b| b.cmp(a));
    versions
        .iter()
        .take(steps)
        .enumerate()
        .map(|(k, &v)| {
            let down = migrator
                .iter()
                .find(|m| m.version == v && m.migration_type.is_down_migration())
                .ok_or(MigrateError::NotReversible(v))?;
            Ok((down, versions.get(k + 1).copied().unwrap_or(0)))
        })
        .collect()
}

/// Every migration, embedded or recorded, by version.
pub fn merge_status(migrator: &Migrator, applied: &[AppliedRow]) -> Vec<MigrationStatus> {
    let recorded: HashMap<i64, &AppliedRow> = applied.iter().map(|a| (a.version, a)).collect();
    let mut rows: Vec<MigrationStatus> = migrator
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| {
            let row = recorded.get(&m.version);
            MigrationStatus {
                version: m.version,
                description: m.description.to_string(),
                state: match row {
                    None => State::Pending,
                    Some(a) if a.success => State::Applied,
                    Some(_) => State::Failed,
                },
                checksum: short_hex(&m.checksum),
                checksum_mismatch: row.is_some_and(|a| a.checksum != *m.checksum),
                embedded: true,
                newer_release: false,
                contract: is_contract_step(m),
            }
        })
        .collect();
    let newest_embedded = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    for a in applied {
        if !rows.iter().any(|r| r.version == a.version) {
            rows.push(MigrationStatus {
                version: a.version,
                description: a.description.clone(),
                state: if a.success {
                    State::Applied
                } else {
                    State::Failed
                },
                checksum: short_hex(&a.checksum),
                checksum_mismatch: false,
                embedded: false,
                newer_release: a.version > newest_embedded,
                contract: false,
            });
        }
    }
    rows.sort_by_key(|r| r.version);
    rows
}

fn step(m: &Migration, elapsed: Option<Duration>) -> Step {
    Step {
        version: m.version,
        description: m.description.to_string(),
        findings: lint::lint(
            m.sql.as_str(),
            &QueryCorpus::service(),
            lint::Script::of(m.sql.as_str(), m.migration_type.is_down_migration()),
        ),
        elapsed,
    }
}

/// The recorded migrations; empty before the first run.
pub async fn applied_rows(conn: &mut PgConnection) -> Result<Vec<AppliedRow>, MigrateError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !exists {
        return Ok(Vec::new());
    }
    Ok(sqlx::query_as(
        "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(conn)
    .await?)
}

pub async fn status(
    pool: &PgPool,
    migrator: &Migrator,
) -> Result<Vec<MigrationStatus>, MigrateError> {
    let mut conn = pool.acquire().await?;
    Ok(merge_status(migrator, &applied_rows(&mut conn).await?))
}

/// What `up` would apply, with lint findings; takes no lock and changes nothing.
pub async fn plan_up(
    pool: &PgPool,
    migrator: &Migrator,
    contract: bool,
) -> Result<Vec<Step>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let applied = applied_rows(&mut conn).await?;
    Ok(pending(&runnable(migrator, contract), &applied)
        .into_iter()
        .map(|m| step(m, None))
        .collect())
}

/// The contract steps not yet applied: what `up` without `--contract` leaves for later.
pub async fn held_back(pool: &PgPool, migrator: &Migrator) -> Result<Vec<Step>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let applied = applied_rows(&mut conn).await?;
    Ok(pending(migrator, &applied)
        .into_iter()
        .filter(|m| is_contract_step(m))
        .map(|m| step(m, None))
        .collect())
}

/// What `down --steps` would revert, newest first.
pub async fn plan_down(
    pool: &PgPool,
    migrator: &Migrator,
    steps: usize,
) -> Result<Vec<Step>, MigrateError> {
    let mut conn = pool.acquire().await?;
    let applied = applied_rows(&mut conn).await?;
    Ok(to_revert(migrator, &applied, steps)?
        .into_iter()
        .map(|(m, _)| step(m, None))
        .collect())
}

/// Applies the pending migrations one by one under the migration lock, refusing (before applying any)
/// when one fails lint and `allow_unsafe` is off. Returns what it applied.
pub async fn up_with(
    pool: &PgPool,
    migrator: &Migrator,
    opts: &RunOptions,
) -> Result<Vec<Step>, MigrateError> {
    let migrator = &runnable(migrator, opts.contract);
    let mut conn = session(pool, opts).await?;
    let applied = applied_rows(&mut conn).await?;
    let pending = pending(migrator, &applied);
    if !opts.allow_unsafe {
        for m in &pending {
            let s = step(m, None);
            if !s.findings.is_empty() {
                return Err(MigrateError::Unsafe {
                    version: s.version,
                    findings: s.findings,
                });
            }
        }
    }
    let mut done = Vec::new();
    for m in pending {
        let started = Instant::now();
        // run_to validates every applied checksum again and applies up to this version; the advisory
        // lock it takes is ours already (session advisory locks nest).
        migrator.run_to(m.version, &mut conn).await?;
        done.push(step(m, Some(started.elapsed())));
    }
    // With nothing (more) to apply this only validates: it fails when an applied migration was
    // modified or left failed, as a plain sqlx run would.
    migrator.run(&mut conn).await?;
    conn.close().await.ok();
    Ok(done)
}

/// Reverts the newest `steps` applied migrations, newest first, under the migration lock.
pub async fn down(
    pool: &PgPool,
    migrator: &Migrator,
    steps: usize,
    opts: &RunOptions,
) -> Result<Vec<Step>, MigrateError> {
    let mut conn = session(pool, opts).await?;
    let applied = applied_rows(&mut conn).await?;
    let mut done = Vec::new();
    for (m, target) in to_revert(migrator, &applied, steps)? {
        let started = Instant::now();
        migrator.undo(&mut conn, target).await?;
        done.push(step(m, Some(started.elapsed())));
    }
    conn.close().await.ok();
    Ok(done)
}

/// A connection of its own (its settings must not leak into the pool) holding sqlx's migration lock,
/// with the run's timeouts set once the lock is held.
async fn session(pool: &PgPool, opts: &RunOptions) -> Result<PgConnection, MigrateError> {
    let mut conn = pool.acquire().await?.detach();
    lock(&mut conn).await?;
    for (name, value) in [
        ("lock_timeout", opts.lock_timeout),
        ("statement_timeout", opts.statement_timeout),
    ] {
        let sql = format!("SET {name} = '{}ms'", value.as_millis());
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    Ok(conn)
}

/// sqlx's advisory lock id for a database (sqlx-postgres `generate_lock_id`, which is private), so our
/// lock and sqlx's are the same lock.
fn lock_id(database: &str) -> i64 {
    const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * i64::from(CRC.checksum(database.as_bytes()))
}

/// Takes the migration lock by polling `pg_try_advisory_lock` instead of blocking in
/// `pg_advisory_lock` as sqlx does: a session blocked in that call holds a snapshot, a
/// `CREATE INDEX CONCURRENTLY` in the lock holder's migration waits for every older snapshot, and the
/// two would deadlock. Waiting here is unbounded (it blocks no traffic) and not subject to the run's
/// lock_timeout, which is set only once the lock is held.
async fn lock(conn: &mut PgConnection) -> Result<(), MigrateError> {
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut *conn)
        .await?;
    let id = lock_id(&database);
    let mut announced = false;
    loop {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(id)
            .fetch_one(&mut *conn)
            .await?;
        if got {
            return Ok(());
        }
        if !announced {
            tracing::info!(database = %database, "waiting for another migrator to finish");
            announced = true;
        }
        let jitter = rand::rng().random_range(0..100);
        tokio::time::sleep(Duration::from_millis(100 + jitter)).await;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("migration {version} fails lint ({}); rerun with --allow-unsafe to apply it anyway", rule_list(.findings))]
    Unsafe {
        version: i64,
        findings: Vec<lint::Finding>,
    },
    #[error("migration {0} has no down script; it cannot be reverted")]
    NotReversible(i64),
}

fn rule_list(findings: &[lint::Finding]) -> String {
    findings
        .iter()
        .map(|f| format!("line {}: {}", f.line, f.rule))
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<sqlx::Error> for MigrateError {
    fn from(e: sqlx::Error) -> Self {
        MigrateError::Db(e.into())
    }
}

impl MigrateError {
    /// The database was not reachable (as opposed to a migration or check failing).
    pub fn is_unreachable(&self) -> bool {
        match self {
            MigrateError::Db(DbError::Unavailable(_)) => true,
            MigrateError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                is_connection_error(e)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded list is the folder, as sqlx itself reads it (what `sqlx::migrate!` embedded):
    /// every file, with the same version, description, kind, script, checksum and transaction mode.
    #[tokio::test]
    async fn the_embedded_list_is_what_sqlx_reads_from_the_folder() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let read = Migrator::new(folder).await.unwrap();
        let key = |m: &Migration| {
            (
                m.version,
                m.description.to_string(),
                m.migration_type,
                m.sql.as_str().to_owned(),
                m.checksum.to_vec(),
                m.no_tx,
            )
        };
        let read: Vec<_> = read.iter().map(key).collect();
        let embedded: Vec<_> = MIGRATOR.iter().map(key).collect();
        assert_eq!(
            embedded.len(),
            read.len(),
            "files in migrations/ not embedded, or gone"
        );
        for (e, r) in embedded.iter().zip(&read) {
            assert_eq!(e, r);
        }
        // The folder has one migration that must run outside a transaction; it stays so.
        assert!(MIGRATOR.iter().any(|m| m.no_tx));
    }

    fn migrator() -> Migrator {
        let m =
            |v, t, sql: &'static str| Migration::new(v, "m".into(), t, sql.into_sql_str(), false);
        Migrator::with_migrations(vec![
            m(1, MigrationType::ReversibleUp, "CREATE TABLE a (x int)"),
            m(1, MigrationType::ReversibleDown, "DROP TABLE a"),
            m(2, MigrationType::ReversibleUp, "CREATE TABLE b (x int)"),
            m(2, MigrationType::ReversibleDown, "DROP TABLE b"),
            m(3, MigrationType::Simple, "CREATE TABLE c (x int)"),
        ])
    }

    fn row(version: i64, success: bool, checksum: &[u8]) -> AppliedRow {
        AppliedRow {
            version,
            description: "m".into(),
            success,
            checksum: checksum.to_vec(),
        }
    }

    #[test]
    fn pending_skips_applied_and_down_scripts() {
        let m = migrator();
        let applied = [row(1, true, &m.iter().next().unwrap().checksum)];
        let p: Vec<i64> = pending(&m, &applied).iter().map(|m| m.version).collect();
        assert_eq!(p, vec![2, 3]);
    }

    #[test]
    fn revert_targets_the_next_older_applied_version() {
        let m = migrator();
        let applied = [row(1, true, b""), row(2, true, b"")];
        let r: Vec<(i64, i64)> = to_revert(&m, &applied, 5)
            .unwrap()
            .iter()
            .map(|(m, t)| (m.version, *t))
            .collect();
        assert_eq!(r, vec![(2, 1), (1, 0)]);
        let applied = [row(1, true, b""), row(3, true, b"")];
        assert!(matches!(
            to_revert(&m, &applied, 1),
            Err(MigrateError::NotReversible(3))
        ));
    }

    #[test]
    fn status_flags_edits_failures_and_diverged_versions_not_newer_ones() {
        let m = migrator();
        let first = m.iter().next().unwrap().checksum.to_vec();
        let applied = [
            row(0, true, b"z"),
            row(1, true, &first),
            row(2, false, b"x"),
            row(9, true, b"y"),
        ];
        let s = merge_status(&m, &applied);
        let summary: Vec<(i64, State, bool, bool)> = s
            .iter()
            .map(|r| (r.version, r.state, r.checksum_mismatch, r.embedded))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, State::Applied, false, false),
                (1, State::Applied, false, true),
                (2, State::Failed, true, true),
                (3, State::Pending, false, true),
                (9, State::Applied, false, false),
            ]
        );
        assert_eq!(s[1].checksum, short_hex(&first));
        assert_eq!(s[1].checksum.len(), 16);
        let problems: Vec<bool> = s.iter().map(MigrationStatus::is_problem).collect();
        // 0 is unknown and older than the newest embedded one: a diverged history. 9 is a newer
        // release's, which expand/contract allows.
        assert_eq!(problems, vec![true, false, true, false, false]);
        assert!(s[4].newer_release && !s[0].newer_release);
    }
}
