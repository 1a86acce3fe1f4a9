//! Keeps the `industry_codes` table equal to the reference data compiled into the binary.

use sqlx::PgPool;

use crate::classify;
use crate::db_error::DbError;

/// Upserts every NAICS 2022 and MCC entry; rows already equal are left untouched (no dead tuples).
pub async fn sync(pool: &PgPool) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    for (system, rows) in [
        ("naics2022", classify::naics_table()),
        ("mcc", classify::mcc_table()),
    ] {
        let (codes, titles): (Vec<&str>, Vec<&str>) = rows.into_iter().unzip();
        sqlx::query(
            "INSERT INTO industry_codes (system, code, title)
             SELECT $1, c, t FROM UNNEST($2::text[], $3::text[]) AS u(c, t)
             ON CONFLICT (system, code) DO UPDATE SET title = EXCLUDED.title
             WHERE industry_codes.title IS DISTINCT FROM EXCLUDED.title",
        )
        .bind(system)
        .bind(&codes)
        .bind(&titles)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
