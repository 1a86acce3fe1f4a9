//! Merchant queries. Every value is a bind parameter; the only SQL built at run time is the fixed set
//! of filter clauses in [`list`].

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use crate::classify::{self, Alternative, BusinessInput, Classification, Method};
use crate::db_error::DbError;
use crate::db_row;
use crate::service::model::{Merchant, MerchantStatus, StatusChange};
use crate::telemetry::spans;

/// The merchant columns, active classification included: one primary-key lookup, no join (the
/// classification is copied onto the row; see the `merchant_active_classification` migration). A macro
/// so the statements below are literals, built at compile time.
macro_rules! select_merchants {
    () => {
        "SELECT m.id, m.name, m.description, m.website, m.country, m.declared_mcc, m.status,
            m.version, m.created_at, m.updated_at, m.industry_id, m.mcc, m.confidence_score,
            m.classification_method, m.matched_terms, m.alternatives
       FROM merchants m"
    };
}

struct Row {
    id: Uuid,
    name: String,
    description: Option<String>,
    website: Option<String>,
    country: Option<String>,
    declared_mcc: Option<String>,
    status: MerchantStatus,
    version: i32,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    industry_id: Option<String>,
    mcc: Option<String>,
    confidence_score: Option<f64>,
    classification_method: Option<String>,
    matched_terms: Option<Vec<String>>,
    alternatives: Option<sqlx::types::Json<Vec<Alternative>>>,
}

db_row::from_row!(Row {
    id,
    name,
    description,
    website,
    country,
    declared_mcc,
    status,
    version,
    created_at,
    updated_at,
    industry_id,
    mcc,
    confidence_score,
    classification_method,
    matched_terms,
    alternatives
});

impl From<Row> for Merchant {
    fn from(r: Row) -> Self {
        let classification = r.industry_id.map(|code| Classification {
            naics_title: classify::naics_title(&code).unwrap_or_default().to_owned(),
            naics_code: code,
            mcc_description: r
                .mcc
                .as_deref()
                .and_then(classify::mcc_description)
                .map(str::to_owned),
            mcc: r.mcc,
            confidence: r.confidence_score.unwrap_or(0.0),
            method: r
                .classification_method
                .as_deref()
                .and_then(Method::parse)
                .unwrap_or(Method::Keyword),
            matched_terms: r.matched_terms.unwrap_or_default(),
            alternatives: r.alternatives.map(|j| j.0).unwrap_or_default(),
        });
        Merchant {
            id: r.id,
            business: BusinessInput {
                name: r.name,
                description: r.description,
                website: r.website,
                country: r.country,
                declared_mcc: r.declared_mcc,
            },
            status: r.status,
            classification,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

pub async fn get<'e>(db: impl PgExecutor<'e>, id: Uuid) -> Result<Option<Merchant>, sqlx::Error> {
    let row: Option<Row> = spans::db(
        "SELECT",
        "merchants",
        sqlx::query_as(concat!(select_merchants!(), " WHERE m.id = $1"))
            .bind(id)
            .fetch_optional(db),
    )
    .await?;
    Ok(row.map(Into::into))
}

/// The merchants of `ids` that exist, in no particular order: one statement for several reads
/// (`merchant_reads`), traced under the spans of the requests that asked (`callers`).
pub async fn get_many(
    db: &mut PgConnection,
    ids: &[Uuid],
    callers: &[tracing::Span],
) -> Result<Vec<Merchant>, sqlx::Error> {
    let rows: Vec<Row> = spans::db_batch(
        "SELECT",
        "merchants",
        callers,
        sqlx::query_as(concat!(select_merchants!(), " WHERE m.id = ANY($1)"))
            .bind(ids)
            .fetch_all(db),
    )
    .await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Same as [`get`] inside a transaction, locking the row for an update.
pub async fn get_for_update(
    tx: &mut PgConnection,
    id: Uuid,
) -> Result<Option<Merchant>, sqlx::Error> {
    let row: Option<Row> = spans::db(
        "SELECT",
        "merchants",
        sqlx::query_as(concat!(select_merchants!(), " WHERE m.id = $1 FOR UPDATE"))
            .bind(id)
            .fetch_optional(tx),
    )
    .await?;
    Ok(row.map(Into::into))
}

/// What the database assigns to a new merchant.
pub struct Stamp {
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

db_row::from_row!(Stamp {
    version,
    created_at,
    updated_at
});

/// Inserts a merchant and its active classification in one statement: one round trip and its own
/// transaction, where BEGIN, two INSERTs, a read-back and COMMIT took five (issue 9). The caller
/// already holds everything the response needs except what the database assigns.
///
/// `None` when a merchant `id` exists already (a keyed creation sent again; `digest` is its
/// `Idempotency-Key` digest): nothing is written then, not even the classification's history row.
pub async fn insert<'e>(
    db: impl PgExecutor<'e>,
    id: Uuid,
    input: &BusinessInput,
    status: MerchantStatus,
    c: &Classification,
    digest: Option<&[u8]>,
) -> Result<Option<Stamp>, sqlx::Error> {
    spans::db(
        "INSERT",
        "merchants",
        sqlx::query_as(
            "WITH m AS (
             INSERT INTO merchants (id, name, description, website, country, declared_mcc, status,
                                    industry_id, mcc, confidence_score, classification_method,
                                    matched_terms, alternatives, idempotency_digest)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15)
             ON CONFLICT (id) DO NOTHING
             RETURNING version, created_at, updated_at
         ), c AS (
             INSERT INTO classifications (id, business_id, industry_id, mcc, confidence_score,
                                          classification_method, matched_terms, alternatives)
             SELECT $14, $1, $8, $9, $10, $11, $12, $13 FROM m
         )
         SELECT version, created_at, updated_at FROM m",
        )
        .bind(id)
        .bind(&input.name)
        .bind(&input.description)
        .bind(&input.website)
        .bind(&input.country)
        .bind(&input.declared_mcc)
        .bind(status)
        .bind(&c.naics_code)
        .bind(&c.mcc)
        .bind(c.confidence)
        .bind(c.method.as_str())
        .bind(&c.matched_terms)
        .bind(sqlx::types::Json(&c.alternatives))
        .bind(Uuid::now_v7())
        .bind(digest)
        .fetch_optional(db),
    )
    .await
}

/// Inserts a merchant not classified yet (`POST /v1/merchants?async=true`: a job classifies it), on
/// the caller's connection, so the job that classifies it commits with it. `None` as for [`insert`].
pub async fn insert_unclassified(
    conn: &mut PgConnection,
    id: Uuid,
    input: &BusinessInput,
    status: MerchantStatus,
    digest: Option<&[u8]>,
) -> Result<Option<Stamp>, DbError> {
    Ok(spans::db(
        "INSERT",
        "merchants",
        sqlx::query_as(
            "INSERT INTO merchants (id, name, description, website, country, declared_mcc, status,
                                    idempotency_digest)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (id) DO NOTHING
         RETURNING version, created_at, updated_at",
        )
        .bind(id)
        .bind(&input.name)
        .bind(&input.description)
        .bind(&input.website)
        .bind(&input.country)
        .bind(&input.declared_mcc)
        .bind(status)
        .bind(digest)
        .fetch_optional(conn),
    )
    .await?)
}

/// A merchant of an import, not classified yet.
pub struct UnclassifiedRow<'a> {
    pub id: Uuid,
    pub business: &'a BusinessInput,
    pub status: MerchantStatus,
    /// Under an `Idempotency-Key`: what the row was made from (`api::idempotency::digest`).
    pub digest: Option<Vec<u8>>,
}

/// Inserts many merchants not classified yet in one statement (`POST /v1/merchants:import`), on the
/// caller's connection so their jobs commit with them. A row whose id exists already (a keyed retry)
/// is left as it is. Returns the ids inserted, in the order given.
pub async fn insert_unclassified_many(
    conn: &mut PgConnection,
    rows: &[UnclassifiedRow<'_>],
) -> Result<Vec<Uuid>, DbError> {
    let mut ids = Vec::with_capacity(rows.len());
    let (mut names, mut descriptions, mut websites) = (vec![], vec![], vec![]);
    let (mut countries, mut mccs, mut statuses, mut digests) = (vec![], vec![], vec![], vec![]);
    for r in rows {
        let b = r.business;
        ids.push(r.id);
        names.push(b.name.as_str());
        descriptions.push(b.description.as_deref());
        websites.push(b.website.as_deref());
        countries.push(b.country.as_deref());
        mccs.push(b.declared_mcc.as_deref());
        statuses.push(r.status.as_str());
        digests.push(r.digest.as_deref());
    }
    // `WITH ORDINALITY` and the ORDER BY give the ids back in the order of `rows`: RETURNING alone
    // promises no order.
    let inserted: Vec<(i64, Uuid)> = spans::db(
        "INSERT",
        "merchants",
        sqlx::query_as(
            "WITH input AS (
             SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                  $6::text[], $7::text[], $8::bytea[])
                      WITH ORDINALITY AS t(id, name, description, website, country, declared_mcc,
                                           status, idempotency_digest, n)
         ), inserted AS (
             INSERT INTO merchants (id, name, description, website, country, declared_mcc, status,
                                    idempotency_digest)
             SELECT id, name, description, website, country, declared_mcc, status,
                    idempotency_digest FROM input
             ON CONFLICT (id) DO NOTHING
             RETURNING id
         )
         SELECT input.n, inserted.id FROM inserted JOIN input USING (id) ORDER BY input.n",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&descriptions)
        .bind(&websites)
        .bind(&countries)
        .bind(&mccs)
        .bind(&statuses)
        .bind(&digests)
        .fetch_all(conn),
    )
    .await?;
    Ok(inserted.into_iter().map(|(_, id)| id).collect())
}

/// The `Idempotency-Key` digests of the merchants `ids` that exist (none for a merchant made without
/// a key), read on the caller's connection: inside an import's transaction, after its inserts.
pub async fn idempotency_digests(
    conn: &mut PgConnection,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, Option<Vec<u8>>)>, DbError> {
    Ok(spans::db(
        "SELECT",
        "merchants",
        sqlx::query_as("SELECT id, idempotency_digest FROM merchants WHERE id = ANY($1)")
            .bind(ids)
            .fetch_all(conn),
    )
    .await?)
}

async fn insert_classification(
    tx: &mut PgConnection,
    business_id: Uuid,
    c: &Classification,
) -> Result<(), DbError> {
    spans::db(
        "INSERT",
        "classifications",
        sqlx::query(
            "INSERT INTO classifications (id, business_id, industry_id, mcc, confidence_score,
                                      classification_method, matched_terms, alternatives)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7())
        .bind(business_id)
        .bind(&c.naics_code)
        .bind(&c.mcc)
        .bind(c.confidence)
        .bind(c.method.as_str())
        .bind(&c.matched_terms)
        .bind(sqlx::types::Json(&c.alternatives))
        .execute(tx),
    )
    .await?;
    Ok(())
}

/// Writes the merchant's new state; a new classification supersedes the active one.
pub async fn update(
    tx: &mut PgConnection,
    id: Uuid,
    input: &BusinessInput,
    status: MerchantStatus,
    reclassified: Option<&Classification>,
) -> Result<(), DbError> {
    spans::db("UPDATE", "merchants", sqlx::query(
        "UPDATE merchants SET name = $2, description = $3, website = $4, country = $5, declared_mcc = $6,
                status = $7, version = version + 1, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(&input.name)
    .bind(&input.description)
    .bind(&input.website)
    .bind(&input.country)
    .bind(&input.declared_mcc)
    .bind(status)
    .execute(&mut *tx)
    ).await?;
    if let Some(c) = reclassified {
        spans::db("UPDATE", "classifications", sqlx::query("UPDATE classifications SET status = 'superseded' WHERE business_id = $1 AND status = 'active'")
            .bind(id)
            .execute(&mut *tx)
            ).await?;
        // The columns the trigger on `classifications` would copy, written here so it finds nothing to do.
        spans::db(
            "UPDATE",
            "merchants",
            sqlx::query(
                "UPDATE merchants SET industry_id = $2, mcc = $3, confidence_score = $4,
                    classification_method = $5, matched_terms = $6, alternatives = $7
              WHERE id = $1",
            )
            .bind(id)
            .bind(&c.naics_code)
            .bind(&c.mcc)
            .bind(c.confidence)
            .bind(c.method.as_str())
            .bind(&c.matched_terms)
            .bind(sqlx::types::Json(&c.alternatives))
            .execute(&mut *tx),
        )
        .await?;
        insert_classification(tx, id, c).await?;
    }
    Ok(())
}

/// Records a status change in the transaction that makes it.
pub async fn record_status_change(
    tx: &mut PgConnection,
    merchant: Uuid,
    change: &StatusChange,
) -> Result<(), DbError> {
    spans::db(
        "INSERT",
        "merchant_status_changes",
        sqlx::query(
            "INSERT INTO merchant_status_changes
             (id, merchant_id, from_status, to_status, from_version, to_version, actor, request_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(Uuid::now_v7())
        .bind(merchant)
        .bind(change.from_status)
        .bind(change.to_status)
        .bind(change.from_version)
        .bind(change.to_version)
        .bind(&change.actor)
        .bind(&change.request_id)
        .execute(tx),
    )
    .await?;
    Ok(())
}

/// The newest `limit` status changes of a merchant.
pub async fn status_changes(
    pool: &PgPool,
    merchant: Uuid,
    limit: i64,
) -> Result<Vec<StatusChange>, sqlx::Error> {
    spans::db(
        "SELECT",
        "merchant_status_changes",
        sqlx::query_as(
            "SELECT from_status, to_status, from_version, to_version, actor, request_id, changed_at
           FROM merchant_status_changes WHERE merchant_id = $1
          ORDER BY changed_at DESC, id DESC LIMIT $2",
        )
        .bind(merchant)
        .bind(limit)
        .fetch_all(pool),
    )
    .await
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListFilter {
    /// NAICS code or prefix ("72" matches every 72xxxx).
    pub industry: Option<String>,
    pub status: Option<MerchantStatus>,
    pub min_confidence: Option<f64>,
    /// Exclusive lower bound of the keyset.
    pub after: Option<Uuid>,
    pub limit: u32,
}

/// One page in id order: creation order for merchants made without an `Idempotency-Key` (UUIDv7
/// ids), while a keyed merchant's id is derived from its key and sorts where it falls. Fetches
/// `limit + 1` rows to know if there is a next page.
pub async fn list(pool: PgPool, f: &ListFilter) -> Result<Vec<Merchant>, sqlx::Error> {
    let mut q: QueryBuilder<Postgres> = QueryBuilder::new(select_merchants!());
    q.push(" WHERE true");
    if let Some(industry) = &f.industry {
        // A range on the "C"-collated column, so the prefix filter uses idx_merchants_industry_id;
        // ':' sorts right after '9'.
        q.push(" AND m.industry_id >= ").push_bind(industry.clone());
        q.push(" AND m.industry_id < ")
            .push_bind(format!("{industry}:"));
    }
    if let Some(status) = f.status {
        q.push(" AND m.status = ").push_bind(status);
    }
    if let Some(min) = f.min_confidence {
        q.push(" AND m.confidence_score >= ").push_bind(min);
    }
    if let Some(after) = f.after {
        q.push(" AND m.id > ").push_bind(after);
    }
    q.push(" ORDER BY m.id LIMIT ")
        .push_bind(i64::from(f.limit) + 1);
    let rows: Vec<Row> =
        spans::db("SELECT", "merchants", q.build_query_as().fetch_all(&pool)).await?;
    Ok(rows.into_iter().map(Into::into).collect())
}

/// Merchants per industry with average confidence: the reporting query, run on the analytics pool.
/// `limit: None` returns every industry.
pub async fn industry_report(
    pool: &PgPool,
    limit: Option<i64>,
) -> Result<Vec<(String, i64, f64)>, sqlx::Error> {
    spans::db(
        "SELECT",
        "merchants",
        sqlx::query_as(
            "SELECT industry_id, count(*), coalesce(avg(confidence_score), 0)::float8
           FROM merchants WHERE industry_id IS NOT NULL
          GROUP BY industry_id ORDER BY count(*) DESC, industry_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(pool),
    )
    .await
}
