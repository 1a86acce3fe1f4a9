//! Merchants: create (classifies), read (cached, from replicas), update (invalidates), list (keyset).

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem};
use super::idempotency::{self, Idempotency};
use super::middleware::RequestId;
use super::{cache_lookup, json_bytes, CachedJson, State};
use crate::classify::{self, BusinessInput, Classification};
use crate::jobs::policy::Policy;
use crate::jobs::queue::{self, NewJob, QueueError};
use crate::jobs::{wake, JobKind, MerchantJob};
use crate::service::auth::scopes::Scope;
use crate::service::auth::Principal;
use crate::service::cache::records::{Loaded, Lookup};
use crate::service::cache::{keys, CacheStatus, Event, Levels, MultiLevelCache};
use crate::service::classify_cached::classify_cached;
use crate::service::db::merchants::{self as q, ListFilter};
use crate::service::model::{
    AcceptedMerchant, Merchant, MerchantPage, MerchantPatch, MerchantStatus, NewMerchant,
    StatusChange, StatusChangeList,
};
use crate::service::state::AppState;
use crate::telemetry::spans;

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 500;

/// Validates the fields as sent (the limits the document states), then trims the free text; an
/// empty text field becomes none.
pub(super) fn tidy(mut b: BusinessInput) -> Result<BusinessInput, ApiError> {
    classify::validate(&b).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let trim = |o: Option<String>| o.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    b.name = b.name.trim().to_owned();
    b.description = trim(b.description);
    b.website = trim(b.website);
    Ok(b)
}

async fn classification_for(
    state: &AppState,
    input: &BusinessInput,
) -> Result<Classification, ApiError> {
    let (body, _) = classify_cached(state, input).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::Internal(format!("cached classification unreadable: {e}")))
}

fn etag(version: i64) -> HeaderValue {
    // Digits and quotes only: always a valid header value.
    HeaderValue::from_str(&format!("\"v{version}\"")).unwrap_or(HeaderValue::from_static("\"v0\""))
}

fn with_etag(mut resp: Response, version: i64) -> Response {
    resp.headers_mut().insert(header::ETAG, etag(version));
    resp
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// `true`: answer at once (202) and classify in a job (`Location: /v1/jobs/{id}`), instead of
    /// classifying before answering (201).
    #[serde(rename = "async")]
    #[param(rename = "async", inline)]
    asynchronous: Option<Asynchronous>,
}

/// The literal `true` or `false` (no other spelling of a boolean), so the document states exactly
/// what is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
pub enum Asynchronous {
    #[serde(rename = "true")]
    True,
    #[serde(rename = "false")]
    False,
}

/// Create a merchant; it is classified on the way in, or with `async=true` by a job. With an
/// `Idempotency-Key`, the same request sent again makes nothing new: it is answered with the merchant
/// the key made (`Idempotent-Replayed: true`), as it is now.
#[utoipa::path(
    post,
    path = "/v1/merchants",
    params(CreateParams,
           ("Idempotency-Key" = Option<String>, Header, nullable = false,
            pattern = r#"^([!#-~]{1,255}|"[!#-~]{1,255}")$"#,
            description = "The caller's key for this creation: sent again with the same body, it \
                           is answered with the merchant it made instead of making another; sent \
                           with another body, it is refused (422)")),
    request_body = NewMerchant,
    responses(
        (status = 201, description = "Created (or, for a key sent again, created before)", body = Merchant),
        (status = 202, description = "Created; its classification is queued (see Location)", body = AcceptedMerchant),
        (status = 422, description = "Invalid field, or an Idempotency-Key sent before with another merchant", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Primary database unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn create(
    axum::extract::State(state): State,
    ApiQuery(params): ApiQuery<CreateParams>,
    axum::Extension(caller): axum::Extension<Principal>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewMerchant>,
) -> Result<Response, ApiError> {
    let key = Idempotency::from_headers(&headers, &caller.client)?;
    let status = new.status.unwrap_or(MerchantStatus::Active);
    let input = tidy(new.business)?;
    let id = key.as_ref().map_or_else(Uuid::now_v7, |k| k.merchant_id(0));
    let digest = key.as_ref().map(|_| idempotency::digest(&input, status));
    let asynchronous = params.asynchronous == Some(Asynchronous::True);
    let shard = state.db.shard_for(&id.to_string());
    let primary = shard.writable()?;
    let (merchant, job) = if asynchronous {
        // The merchant and the job that classifies it commit together, or neither does.
        let mut tx = spans::db("BEGIN", "", primary.begin()).await?;
        let inserted =
            q::insert_unclassified(&mut tx, id, &input, status, digest.as_deref()).await?;
        let Some(stamp) = inserted else {
            drop(tx);
            return replay(primary, id, digest, asynchronous).await;
        };
        let job = classify_job(id, digest.is_some());
        let ids = queue::enqueue(&mut tx, &Policy::default(), &[job])
            .await
            .map_err(queue_error)?;
        spans::db("COMMIT", "", tx.commit()).await?;
        let key_prefix = &state.config.cache.key_prefix;
        wake::nudge(state.cache.redis(), key_prefix, queue::DEFAULT_QUEUE).await;
        (
            stamped(id, input, status, None, stamp),
            ids.first().copied(),
        )
    } else {
        let classification = classification_for(&state, &input).await?;
        let mut conn = shard.primary_conn().await?;
        let inserted = q::insert(
            conn.conn(),
            id,
            &input,
            status,
            &classification,
            digest.as_deref(),
        )
        .await;
        let Some(stamp) = conn.finish(inserted)? else {
            return replay(primary, id, digest, asynchronous).await;
        };
        (
            stamped(id, input, status, Some(classification), stamp),
            None,
        )
    };
    let key = keys::merchant(id);
    // A creation only stales L1 listing pages, so it is announced after the commit rather than inside
    // the transaction: a NOTIFY in a transaction holds PostgreSQL's notification-queue lock through the
    // commit's WAL flush, which serialises concurrent creations. A crash between the two costs other
    // instances a stale listing for at most the L1 TTL.
    let inv = keys::invalidation_for(&Event::MerchantCreated);
    state.cache.invalidate_local(&inv).await;
    let body = json_bytes(&merchant)?;
    // The announcement, the read-your-writes mark and the write-through are independent of each other,
    // so their round trips overlap. The write-through may fail harmlessly: no older version of a new
    // merchant exists anywhere to be served instead.
    let (announced, (), _) = tokio::join!(
        MultiLevelCache::publish(&shard.relaxed, &inv),
        shard.note_write(keys::MERCHANT_LISTS),
        // A merchant is usually read right after it is created (onboarding shows it, a risk
        // assessment follows), and the new row is exactly what a read would load.
        state
            .cache
            .put_record(&key, merchant.version.into(), Some(&body)),
    );
    if let Err(e) = announced {
        tracing::warn!(error = %e, "could not announce the new merchant to other instances");
    }
    let version = merchant.version.into();
    if let Some(job_id) = job {
        let job = queue::get(primary, job_id)
            .await
            .map_err(queue_error)?
            .ok_or_else(|| ApiError::Internal(format!("job {job_id} vanished")))?;
        let mut resp = (
            StatusCode::ACCEPTED,
            axum::Json(AcceptedMerchant { merchant, job }),
        )
            .into_response();
        if let Ok(loc) = HeaderValue::from_str(&format!("/v1/jobs/{job_id}")) {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        return Ok(with_etag(resp, version));
    }
    let json = HeaderValue::from_static("application/json");
    let mut resp = (StatusCode::CREATED, [(header::CONTENT_TYPE, json)], body).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/v1/merchants/{id}")) {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    Ok(with_etag(resp, version))
}

/// The answer to a keyed creation whose merchant exists already: that merchant as it is now, if it
/// was made from the same content (422 if not); with its job while it is kept when `asynchronous`.
async fn replay(
    primary: &sqlx::PgPool,
    id: Uuid,
    digest: Option<Vec<u8>>,
    asynchronous: bool,
) -> Result<Response, ApiError> {
    let mut conn = primary.acquire().await?;
    let stored = q::idempotency_digests(&mut conn, &[id]).await?;
    if stored.first().map(|(_, d)| d) != Some(&digest) {
        return Err(ApiError::Invalid {
            field: "Idempotency-Key".into(),
            message: "sent before with another merchant; send that request as it was, or use a \
                      new key"
                .into(),
        });
    }
    let merchant = q::get(&mut *conn, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    drop(conn);
    let version = merchant.version.into();
    let job_id = idempotency::classify_job_id(id);
    let job = if asynchronous {
        queue::get(primary, job_id).await.map_err(queue_error)?
    } else {
        None
    };
    let (mut resp, location) = match job {
        Some(job) => (
            (
                StatusCode::ACCEPTED,
                axum::Json(AcceptedMerchant { merchant, job }),
            )
                .into_response(),
            format!("/v1/jobs/{job_id}"),
        ),
        // Synchronous, or the job finished and was pruned: the merchant is classified by now.
        None => (
            (StatusCode::CREATED, axum::Json(merchant)).into_response(),
            format!("/v1/merchants/{id}"),
        ),
    };
    let h = resp.headers_mut();
    h.insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    if let Ok(loc) = HeaderValue::from_str(&location) {
        h.insert(header::LOCATION, loc);
    }
    Ok(with_etag(resp, version))
}

/// Stripe's name for the mark on a replayed answer.
static IDEMPOTENT_REPLAYED: header::HeaderName =
    header::HeaderName::from_static("idempotent-replayed");

fn stamped(
    id: Uuid,
    business: BusinessInput,
    status: MerchantStatus,
    classification: Option<Classification>,
    stamp: q::Stamp,
) -> Merchant {
    Merchant {
        id,
        business,
        status,
        classification,
        version: stamp.version,
        created_at: stamp.created_at,
        updated_at: stamp.updated_at,
    }
}

/// The job that classifies a new merchant. A keyed merchant's job is named by it, so a retry of the
/// request can report the job without looking it up.
pub(super) fn classify_job(merchant_id: Uuid, keyed: bool) -> NewJob {
    NewJob {
        id: keyed.then(|| idempotency::classify_job_id(merchant_id)),
        ..NewJob::new(
            JobKind::Classify,
            serde_json::json!(MerchantJob { merchant_id }),
        )
    }
}

pub(super) fn queue_error(e: QueueError) -> ApiError {
    match e {
        QueueError::Db(e) => e.into(),
        other => ApiError::Internal(other.to_string()),
    }
}

/// Read a merchant (cached; `Cache-Control: no-cache` reads the primary and refreshes the cache,
/// `no-store` reads the primary and stores nothing).
#[utoipa::path(
    get,
    path = "/v1/merchants/{id}",
    params(("id" = Uuid, Path, description = "Merchant id")),
    responses(
        (status = 200, description = "The merchant", body = Merchant),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn get(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = keys::merchant(id);
    let record = state
        .cache
        .get_record(&key, cache_lookup(&headers), || async {
            // The primary, never a replica: see `cache::records`.
            let m = state
                .db
                .shard_for(&id.to_string())
                .merchant(id)
                .await?
                .ok_or(ApiError::NotFound("merchant"))?;
            Ok::<_, ApiError>(Loaded {
                version: m.version.into(),
                body: json_bytes(&m)?,
            })
        })
        .await?;
    let resp = CachedJson {
        status: StatusCode::OK,
        body: record.body,
        cache: record.status,
    }
    .into_response();
    Ok(with_etag(resp, record.version))
}

/// The version `If-Match` names; `*` or absent matches any version. Taken are exactly the forms the
/// document's pattern for it (`update`) states: an ETag this API issues (`"v3"`, also weak: `W/"v3"`)
/// or the bare version (`3`), eighteen digits at most so that every version fits an `i64`. Anything
/// else is refused rather than guessed at.
fn expected_version(headers: &HeaderMap) -> Result<Option<i64>, ApiError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let refused = || ApiError::BadRequest(format!("If-Match {v:?} is not an ETag this API issued"));
    let s = v.to_str().map_err(|_| refused())?;
    if s == "*" {
        return Ok(None);
    }
    let digits = s
        .strip_prefix("W/")
        .unwrap_or(s)
        .strip_prefix("\"v")
        .and_then(|t| t.strip_suffix('"'))
        .or_else(|| (!s.starts_with("W/")).then_some(s))
        .filter(|d| (1..=18).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(refused)?;
    digits.parse().map(Some).map_err(|_| refused())
}

/// Update a merchant; business changes re-classify it and drop its cached entries everywhere.
#[utoipa::path(
    patch,
    path = "/v1/merchants/{id}",
    params(("id" = Uuid, Path, description = "Merchant id"),
           ("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^(\*|(W/)?"v[0-9]{1,18}"|[0-9]{1,18})$"#,
            description = "The ETag of a previous read (`\"v3\"`), or the bare version (`3`); `*` matches any")),
    request_body = MerchantPatch,
    responses(
        (status = 200, description = "Updated", body = Merchant),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The merchant changed since the ETag was issued", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn update(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
    axum::Extension(caller): axum::Extension<Principal>,
    headers: HeaderMap,
    request_id: RequestId,
    ApiJson(patch): ApiJson<MerchantPatch>,
) -> Result<Response, ApiError> {
    let expected = expected_version(&headers)?;
    let shard = state.db.shard_for(&id.to_string());
    let primary = shard.writable()?;
    let current = q::get(primary, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    let before = current.business.clone();
    // An invalid patch is refused as such whatever version it names: what is wrong with the request
    // comes before whether the merchant's state allows it.
    let after = tidy(patch.apply_to(&before))?;
    if expected.is_some_and(|v| v != i64::from(current.version)) {
        return Err(ApiError::PreconditionFailed(format!(
            "merchant is at version {}, not {}",
            current.version,
            expected.unwrap_or_default()
        )));
    }
    let new_status = patch.status.filter(|s| *s != current.status);
    if new_status.is_some() && !caller.scopes.has(Scope::Status) {
        return Err(ApiError::Forbidden(
            "changing a merchant's status needs scope merchants:status".into(),
        ));
    }
    if after != before && !caller.scopes.has(Scope::Write) {
        return Err(ApiError::Forbidden(
            "changing a merchant's details needs scope merchants:write".into(),
        ));
    }
    // Classify before taking the row lock: the registry may be slow.
    let reclassified = if after != before {
        Some(classification_for(&state, &after).await?)
    } else {
        None
    };
    let mut tx = spans::db("BEGIN", "", primary.begin()).await?;
    let locked = q::get_for_update(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    if locked.version != current.version {
        return Err(ApiError::PreconditionFailed(
            "merchant changed concurrently; read it again and retry".into(),
        ));
    }
    let status = new_status.unwrap_or(current.status);
    q::update(&mut tx, id, &after, status, reclassified.as_ref()).await?;
    let merchant = q::get_for_update(&mut tx, id)
        .await?
        .ok_or(ApiError::NotFound("merchant"))?;
    if let Some(to_status) = new_status {
        let change = StatusChange {
            from_status: current.status,
            to_status,
            from_version: current.version,
            to_version: merchant.version,
            actor: caller.actor(),
            request_id: request_id.as_str().map(str::to_owned),
            changed_at: merchant.updated_at,
        };
        q::record_status_change(&mut tx, id, &change).await?;
    }
    let inv = keys::invalidation_for(&Event::MerchantUpdated {
        id,
        version: merchant.version.into(),
        previous_classification_key: classify::cache_key(&classify::normalise(&before)),
    });
    MultiLevelCache::publish(&mut *tx, &inv).await?;
    spans::db("COMMIT", "", tx.commit()).await?;
    let body = json_bytes(&merchant)?;
    // Before answering: once the client knows of the new version, no instance may serve the old one.
    state
        .cache
        .after_commit(&shard.relaxed, &inv, |key| {
            (key == keys::merchant(id)).then_some(&body)
        })
        .await;
    shard.note_write(keys::MERCHANT_LISTS).await;
    let json = HeaderValue::from_static("application/json");
    let resp = (StatusCode::OK, [(header::CONTENT_TYPE, json)], body).into_response();
    Ok(with_etag(resp, merchant.version.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatusChangeParams {
    /// At most this many, newest first (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
}

/// A merchant's status changes, newest first: who changed it, from what, to what (scope `ops`).
#[utoipa::path(
    get,
    path = "/v1/merchants/{id}/status-changes",
    params(("id" = Uuid, Path, description = "Merchant id"), StatusChangeParams),
    responses(
        (status = 200, description = "The audit trail", body = StatusChangeList),
        (status = 404, description = "No such merchant", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`limit` out of range", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn status_changes(
    axum::extract::State(state): State,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(p): ApiQuery<StatusChangeParams>,
) -> Result<axum::Json<StatusChangeList>, ApiError> {
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 500"));
    }
    let shard = state.db.shard_for(&id.to_string());
    let primary = shard.writable()?;
    let items = q::status_changes(primary, id, limit).await?;
    if items.is_empty() && q::get(primary, id).await?.is_none() {
        return Err(ApiError::NotFound("merchant"));
    }
    Ok(axum::Json(StatusChangeList { items }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// NAICS code or prefix (2 to 6 digits).
    #[param(pattern = "^[0-9]{2,6}$")]
    industry: Option<String>,
    status: Option<MerchantStatus>,
    /// Minimum classification confidence.
    #[param(minimum = 0.0, maximum = 1.0)]
    min_confidence: Option<f64>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 500)]
    limit: Option<u32>,
    /// `next_cursor` of the previous page: 16 bytes in unpadded base64url, whose 22nd character
    /// carries two zero bits.
    #[param(pattern = "^[A-Za-z0-9_-]{21}[AQgw]$")]
    cursor: Option<String>,
}

fn parse_filter(p: &ListParams) -> Result<ListFilter, ApiError> {
    if let Some(i) = &p.industry {
        if !(2..=6).contains(&i.len()) || !i.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ApiError::invalid(
                "industry",
                "must be a NAICS code or prefix of 2 to 6 digits",
            ));
        }
    }
    if let Some(c) = p.min_confidence {
        if !(0.0..=1.0).contains(&c) {
            return Err(ApiError::invalid(
                "min_confidence",
                "must be between 0 and 1",
            ));
        }
    }
    let limit = p.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = p.cursor.as_deref().map(decode_cursor).transpose()?;
    Ok(ListFilter {
        industry: p.industry.clone(),
        status: p.status,
        min_confidence: p.min_confidence,
        after,
        limit,
    })
}

fn encode_cursor(id: Uuid) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id.as_bytes())
}

fn decode_cursor(c: &str) -> Result<Uuid, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()
        .and_then(|b| Uuid::from_slice(&b).ok())
        .ok_or_else(|| ApiError::invalid("cursor", "not a cursor this API issued"))
}

/// Merges per-shard pages (each sorted by id) into one page.
fn merge_pages(mut rows: Vec<Merchant>, limit: u32) -> MerchantPage {
    rows.sort_by_key(|m| m.id);
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|m| encode_cursor(m.id))
    } else {
        None
    };
    MerchantPage {
        items: rows,
        next_cursor,
    }
}

/// List merchants in id order (keyset pagination, read from replicas, every shard): creation order,
/// except for merchants made under an `Idempotency-Key`, whose ids are derived from the key.
#[utoipa::path(
    get,
    path = "/v1/merchants",
    params(ListParams),
    responses(
        (status = 200, description = "A page of merchants", body = MerchantPage),
        (status = 422, description = "Invalid parameter", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn list(
    axum::extract::State(state): State,
    ApiQuery(params): ApiQuery<ListParams>,
    headers: HeaderMap,
) -> Result<CachedJson, ApiError> {
    let filter = parse_filter(&params)?;
    let load = || async {
        let mut rows = Vec::new();
        for shard in state.db.shards() {
            let (page, _) = shard
                .read(Some(keys::MERCHANT_LISTS), |pool| {
                    let f = filter.clone();
                    async move { q::list(pool, &f).await }
                })
                .await?;
            rows.extend(page);
        }
        json_bytes(&merge_pages(rows, filter.limit))
    };
    // Pages live in L1 only and a directive skips them both ways: a page is cheap to build again.
    let (body, cache) = if cache_lookup(&headers) != Lookup::Cached {
        (load().await?, CacheStatus::Miss)
    } else {
        let key = keys::merchant_list(&format!("{filter:?}"));
        state.cache.get_or_load(&key, Levels::L1, load).await?
    };
    Ok(CachedJson {
        status: StatusCode::OK,
        body,
        cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_rejects_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)).unwrap(), id);
        assert!(decode_cursor("not a cursor!").is_err());
        assert!(decode_cursor("AAAA").is_err());
    }

    #[test]
    fn a_keyed_merchants_job_is_named_by_the_merchant() {
        let merchant = Uuid::now_v7();
        let keyed = classify_job(merchant, true);
        assert_eq!(keyed.id, Some(idempotency::classify_job_id(merchant)));
        assert_eq!(keyed.kind, JobKind::Classify);
        let payload: MerchantJob = serde_json::from_value(keyed.payload).unwrap();
        assert_eq!(payload.merchant_id, merchant);
        assert_eq!(classify_job(merchant, false).id, None);
    }

    #[test]
    fn filter_validation() {
        let p = |industry: Option<&str>, min: Option<f64>, limit: Option<u32>| ListParams {
            industry: industry.map(Into::into),
            status: None,
            min_confidence: min,
            limit,
            cursor: None,
        };
        assert!(parse_filter(&p(Some("7225"), Some(0.5), Some(10))).is_ok());
        assert!(parse_filter(&p(Some("7"), None, None)).is_err());
        assert!(parse_filter(&p(Some("72x5"), None, None)).is_err());
        assert!(parse_filter(&p(None, Some(1.5), None)).is_err());
        assert!(parse_filter(&p(None, None, Some(0))).is_err());
        assert!(parse_filter(&p(None, None, Some(501))).is_err());
    }

    #[test]
    fn if_match_forms() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::IF_MATCH, HeaderValue::from_str(v).unwrap());
            m
        };
        assert_eq!(expected_version(&h("\"v3\"")).unwrap(), Some(3));
        assert_eq!(expected_version(&h("W/\"v3\"")).unwrap(), Some(3));
        assert_eq!(expected_version(&h("7")).unwrap(), Some(7));
        assert_eq!(expected_version(&h("*")).unwrap(), None);
        assert_eq!(
            expected_version(&h(&"9".repeat(18))).unwrap(),
            Some(999_999_999_999_999_999)
        );
        for refused in [
            "\"abc\"",
            "v3",
            "\"3\"",
            "W/3",
            "\"v\"",
            "",
            "1, 2",
            &"9".repeat(19),
        ] {
            assert!(expected_version(&h(refused)).is_err(), "{refused}");
        }
        assert_eq!(expected_version(&HeaderMap::new()).unwrap(), None);
    }
}
