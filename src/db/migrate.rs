//! The embedded schema migrations (sqlx's migrator, so the container image alone can migrate).

use sqlx::migrate::Migrator;
use sqlx::PgPool;

use super::DbError;

pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// The schema version this binary expects: its newest embedded migration.
pub fn expected_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
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

/// Applies pending migrations (sqlx takes a per-database advisory lock, so concurrent runners apply each
/// once) and then refreshes the reference tables.
pub async fn up(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await?;
    super::reference::sync(pool).await?;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Db(#[from] DbError),
}
