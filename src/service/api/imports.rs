//! `POST /v1/merchants:import`: many merchants in one request, as NDJSON (one `NewMerchant` per
//! line). Every line is checked before anything is written; then each shard's merchants and the jobs
//! that classify them commit in one transaction per shard, so a shard holds all of its lines or none.
//! With an `Idempotency-Key` the same file sent again makes nothing new (see [`super::idempotency`]).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, Problem};
use super::idempotency::{self, Idempotency};
use super::State;
use crate::classify::BusinessInput;
use crate::jobs::policy::Policy;
use crate::jobs::queue::{self, NewJob};
use crate::jobs::wake;
use crate::service::auth::Principal;
use crate::service::cache::{keys, Event, MultiLevelCache};
use crate::service::db::merchants as q;
use crate::service::db::ShardPools;
use crate::service::model::{MerchantStatus, NewMerchant};
use crate::telemetry::spans;

/// Lines one request may carry: a request this size commits in well under a second per shard and
/// keeps its answer (one entry per line) small enough to read back.
pub const MAX_LINES: usize = 10_000;
/// Rows per INSERT: the statements of a large import stay modest, and a shard's transaction still
/// holds them all.
const BATCH: usize = 1_000;
/// The media types taken: NDJSON's registered-in-practice name and JSON Lines'.
const MEDIA_TYPES: [&str; 2] = ["application/x-ndjson", "application/jsonl"];

/// One imported line: the merchant made from it and the job that classifies it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportedLine {
    /// Line number in the request body, from 1.
    pub line: u32,
    pub id: Uuid,
    /// `GET /v1/jobs/{job}` follows its classification.
    pub job: Uuid,
    /// Made by an earlier request with this `Idempotency-Key`; nothing was written for it this time.
    pub replayed: bool,
}

/// A line that was valid but not imported: its shard's transaction failed, so send it again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailedLine {
    pub line: u32,
    pub detail: String,
}

/// The answer to an import: every valid line is in exactly one of the two lists.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ImportResult {
    pub imported: Vec<ImportedLine>,
    pub failed: Vec<FailedLine>,
}

/// A line read and checked, not written yet.
struct Parsed {
    line: u32,
    id: Uuid,
    business: BusinessInput,
    status: MerchantStatus,
    /// Under an `Idempotency-Key`: what the line's merchant is made from.
    digest: Option<Vec<u8>>,
}

/// Reads every non-blank line as a merchant; the first bad line fails the whole request, naming it.
/// Under `key`, each line's id is the key's for that line. Pure: nothing is written before all lines
/// pass.
fn parse(
    body: &[u8],
    max_line_bytes: usize,
    key: Option<&Idempotency>,
) -> Result<Vec<Parsed>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::BadRequest(format!("the body is not UTF-8: {e}")))?;
    let mut out = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            continue;
        }
        if out.len() == MAX_LINES {
            return Err(ApiError::Invalid {
                field: format!("line {line}"),
                message: format!("an import takes at most {MAX_LINES} merchants; split the file"),
            });
        }
        let at = |field: &str, message: String| ApiError::Invalid {
            field: format!("line {line}: {field}"),
            message,
        };
        if raw.len() > max_line_bytes {
            return Err(at(
                "(line)",
                format!("longer than {max_line_bytes} bytes, the limit of one merchant"),
            ));
        }
        let new: NewMerchant =
            serde_json::from_str(raw).map_err(|e| at("(line)", e.to_string()))?;
        let business = super::merchants::tidy(new.business).map_err(|e| match e {
            ApiError::Invalid { field, message } => at(&field, message),
            other => other,
        })?;
        let status = new.status.unwrap_or(MerchantStatus::Active);
        out.push(Parsed {
            line,
            id: key.map_or_else(Uuid::now_v7, |k| k.merchant_id(line)),
            digest: key.map(|_| idempotency::digest(&business, status)),
            business,
            status,
        });
    }
    if out.is_empty() {
        return Err(ApiError::Invalid {
            field: "(body)".into(),
            message: "no merchants: send one JSON object per line".into(),
        });
    }
    Ok(out)
}

fn check_media_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match given {
        Some(t) if MEDIA_TYPES.contains(&t.as_str()) => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "expected `Content-Type: {}` (one merchant per line)",
            MEDIA_TYPES[0]
        ))),
    }
}

/// What became of a line on a shard that committed.
struct Committed {
    job: Uuid,
    replayed: bool,
}

/// Writes one shard's lines and their jobs in one transaction; returns each line's job, in order. A
/// line whose merchant exists already (an `Idempotency-Key` sent again) is replayed if it was made
/// from the same content, and refuses the shard's lines if not.
async fn commit_shard(shard: &ShardPools, lines: &[&Parsed]) -> Result<Vec<Committed>, ApiError> {
    let primary = shard.writable()?;
    let mut tx = spans::db("BEGIN", "", primary.begin()).await?;
    let mut out = Vec::with_capacity(lines.len());
    for chunk in lines.chunks(BATCH) {
        let rows: Vec<_> = chunk
            .iter()
            .map(|p| q::UnclassifiedRow {
                id: p.id,
                business: &p.business,
                status: p.status,
                digest: p.digest.clone(),
            })
            .collect();
        let inserted: std::collections::HashSet<Uuid> = q::insert_unclassified_many(&mut tx, &rows)
            .await?
            .into_iter()
            .collect();
        let existing: Vec<Uuid> = chunk
            .iter()
            .map(|p| p.id)
            .filter(|id| !inserted.contains(id))
            .collect();
        if !existing.is_empty() {
            let stored: std::collections::HashMap<Uuid, Option<Vec<u8>>> =
                q::idempotency_digests(&mut tx, &existing)
                    .await?
                    .into_iter()
                    .collect();
            if let Some(p) = chunk
                .iter()
                .find(|p| !inserted.contains(&p.id) && stored.get(&p.id) != Some(&p.digest))
            {
                // Dropping the transaction rolls back this shard's new lines too.
                return Err(ApiError::Invalid {
                    field: format!("line {}", p.line),
                    message:
                        "this Idempotency-Key was sent before with other content on this line; \
                              send the request as it was, or use a new key"
                            .into(),
                });
            }
        }
        let new: Vec<NewJob> = chunk
            .iter()
            .filter(|p| inserted.contains(&p.id))
            .map(|p| super::merchants::classify_job(p.id, p.digest.is_some()))
            .collect();
        let ids = queue::enqueue(&mut tx, &Policy::default(), &new)
            .await
            .map_err(super::merchants::queue_error)?;
        if ids.len() != new.len() {
            // No unique key is set, so every job is inserted; anything else is a bug, and the
            // transaction is dropped (rolled back) rather than leave a merchant without its job.
            return Err(ApiError::Internal(format!(
                "{} of {} classification jobs enqueued",
                ids.len(),
                new.len()
            )));
        }
        let mut ids = ids.into_iter();
        for p in chunk {
            let replayed = !inserted.contains(&p.id);
            let job = if replayed {
                idempotency::classify_job_id(p.id)
            } else {
                ids.next()
                    .ok_or_else(|| ApiError::Internal("a job id went missing".into()))?
            };
            out.push(Committed { job, replayed });
        }
    }
    spans::db("COMMIT", "", tx.commit()).await?;
    Ok(out)
}

/// What a caller is told about a shard whose lines were not imported: retryable or not, without
/// naming the shard or its host.
fn failure_detail(e: &ApiError) -> String {
    match e {
        ApiError::Unavailable(_) => {
            "the database for these merchants is unavailable; nothing of them was written, send \
             them again"
                .into()
        }
        ApiError::Invalid { field, .. } => format!(
            "this Idempotency-Key was sent before with other content ({field}); nothing of these \
             merchants was written"
        ),
        _ => "these merchants could not be written (an internal error, logged); nothing of them \
              was written"
            .into(),
    }
}

/// The answer when no shard took its lines: 503 only when every shard was unavailable (worth
/// retrying as it is), 422 when every shard refused a reused `Idempotency-Key`, 500 otherwise.
fn nothing_imported(errors: Vec<ApiError>) -> ApiError {
    let all = |f: fn(&ApiError) -> bool| !errors.is_empty() && errors.iter().all(f);
    if all(|e| matches!(e, ApiError::Unavailable(_)))
        || all(|e| matches!(e, ApiError::Invalid { .. }))
    {
        return errors.into_iter().next().expect("not empty");
    }
    match errors.into_iter().next() {
        Some(e) => ApiError::Internal(format!("no shard took the import: {e}")),
        None => ApiError::Internal("nothing imported".into()),
    }
}

/// Import merchants from NDJSON (one `NewMerchant` per line, at most 10,000); each is classified by
/// a job. Every line is checked first: one bad line refuses the request, naming it, and nothing is
/// written. Merchants are then written per shard, each shard all-or-nothing: 202 when all were
/// imported, 207 when some shard failed (its lines are in `failed`: send them again), 503 when every
/// shard was unavailable, 500 when none took them otherwise. A 503 from the server's write timeout
/// leaves each shard all-or-nothing without saying which: with an `Idempotency-Key`, send the same
/// file again with the same key (what was written is replayed, the rest written); without one, look
/// before sending again.
#[utoipa::path(
    post,
    path = "/v1/merchants:import",
    params(("Idempotency-Key" = Option<String>, Header, nullable = false,
            pattern = r#"^([!#-~]{1,255}|"[!#-~]{1,255}")$"#,
            description = "Sent again with the same file, makes nothing new: each line's merchant \
                           made before is answered with `replayed: true`, the rest are written. \
                           The key is the caller's own; reused with another file it is refused \
                           for the lines that differ (422)")),
    request_body(
        content = Vec<NewMerchant>,
        content_type = "application/x-ndjson",
        description = "One JSON object per line, each a NewMerchant (blank lines are skipped)",
    ),
    responses(
        (status = 202, description = "All imported; each merchant's classification is queued", body = ImportResult),
        (status = 207, description = "Some imported; the lines in `failed` were not, send them again", body = ImportResult),
        (status = 400, description = "The body is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than the import limit", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not NDJSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A line is invalid (named in `field`); nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "No shard took the merchants, not all for unavailability; nothing was written", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No database could take the merchants; nothing was written", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "merchants"
)]
pub async fn import(
    axum::extract::State(state): State,
    axum::Extension(caller): axum::Extension<Principal>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_media_type(&headers)?;
    let body = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(r.body_text())
        }
    })?;
    let key = Idempotency::from_headers(&headers, &caller.client)?;
    let parsed = parse(&body, state.config.server.max_body_bytes, key.as_ref())?;

    let mut by_shard: BTreeMap<usize, Vec<&Parsed>> = BTreeMap::new();
    let shards = state.db.shards();
    for p in &parsed {
        let index = state.db.shard_index_for(&p.id.to_string());
        by_shard.entry(index).or_default().push(p);
    }
    // Shards commit at once: each is its own database, and one slow or down shard must not hold
    // the others' lines.
    let outcomes = futures::future::join_all(
        by_shard
            .iter()
            .map(|(i, lines)| commit_shard(&shards[*i], lines)),
    )
    .await;

    let mut result = ImportResult {
        imported: Vec::with_capacity(parsed.len()),
        failed: Vec::new(),
    };
    let mut errors = Vec::new();
    let inv = keys::invalidation_for(&Event::MerchantCreated);
    for ((i, lines), outcome) in by_shard.iter().zip(outcomes) {
        match outcome {
            Ok(committed) => {
                let shard = &shards[*i];
                // As for one creation: listings are stale, other instances are told, workers woken.
                if committed.iter().any(|c| !c.replayed) {
                    if let Err(e) = MultiLevelCache::publish(&shard.relaxed, &inv).await {
                        tracing::warn!(error = %e, "could not announce imported merchants");
                    }
                    shard.note_write(keys::MERCHANT_LISTS).await;
                }
                result
                    .imported
                    .extend(lines.iter().zip(committed).map(|(p, c)| ImportedLine {
                        line: p.line,
                        id: p.id,
                        job: c.job,
                        replayed: c.replayed,
                    }));
            }
            Err(e) => {
                tracing::warn!(error = %e, lines = lines.len(), "import: a shard's merchants were not written");
                let detail = failure_detail(&e);
                result.failed.extend(lines.iter().map(|p| FailedLine {
                    line: p.line,
                    detail: detail.clone(),
                }));
                errors.push(e);
            }
        }
    }
    if result.imported.is_empty() {
        return Err(nothing_imported(errors));
    }
    state.cache.invalidate_local(&inv).await;
    let key_prefix = &state.config.cache.key_prefix;
    wake::nudge(state.cache.redis(), key_prefix, queue::DEFAULT_QUEUE).await;
    result.imported.sort_by_key(|l| l.line);
    result.failed.sort_by_key(|l| l.line);
    let status = if result.failed.is_empty() {
        StatusCode::ACCEPTED
    } else {
        StatusCode::MULTI_STATUS
    };
    Ok((status, axum::Json(result)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reads_one_merchant_per_line_and_skips_blank_ones() {
        let body = b"{\"name\":\"Acme Bakery\"}\r\n\n  \n{\"name\":\"Bolt Garage\",\"status\":\"pending\"}";
        let got = parse(body, 1024, None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].line, got[1].line), (1, 4));
        assert_eq!(got[1].status, MerchantStatus::Pending);
        assert_ne!(got[0].id, got[1].id);
    }

    #[test]
    fn the_first_bad_line_is_named_and_nothing_passes() {
        let body = b"{\"name\":\"Acme\"}\n{\"name\":\"\"}\n{not json";
        assert!(field_of(parse(body, 1024, None).err().unwrap()).starts_with("line 2: name"));
        let body = b"{\"name\":\"Acme\"}\n{not json";
        assert_eq!(
            field_of(parse(body, 1024, None).err().unwrap()),
            "line 2: (line)"
        );
        let body = b"{\"name\":\"Acme\",\"colour\":\"red\"}";
        assert_eq!(
            field_of(parse(body, 1024, None).err().unwrap()),
            "line 1: (line)"
        );
    }

    #[test]
    fn empty_long_and_oversized_imports_are_refused() {
        assert_eq!(
            field_of(parse(b"\n \n", 1024, None).err().unwrap()),
            "(body)"
        );
        let long = format!("{{\"name\":\"{}\"}}", "a".repeat(100));
        assert_eq!(
            field_of(parse(long.as_bytes(), 50, None).err().unwrap()),
            "line 1: (line)"
        );
        let many = "{\"name\":\"Acme\"}\n".repeat(MAX_LINES + 1);
        assert_eq!(
            field_of(parse(many.as_bytes(), 1024, None).err().unwrap()),
            format!("line {}", MAX_LINES + 1)
        );
        assert!(matches!(
            parse(b"\xff", 1024, None),
            Err(ApiError::BadRequest(_))
        ));
    }

    #[test]
    fn under_a_key_each_line_has_the_keys_id_and_a_digest() {
        let mut h = HeaderMap::new();
        h.insert(idempotency::HEADER, "file-7".parse().unwrap());
        let key = Idempotency::from_headers(&h, "acme").unwrap().unwrap();
        let body = b"{\"name\":\"Acme\"}\n\n{\"name\":\"Bolt\"}";
        let once = parse(body, 1024, Some(&key)).unwrap();
        let again = parse(body, 1024, Some(&key)).unwrap();
        assert_eq!(
            once.iter().map(|p| p.id).collect::<Vec<_>>(),
            [key.merchant_id(1), key.merchant_id(3)]
        );
        assert_eq!(once[1].id, again[1].id, "the same file, the same ids");
        assert!(once.iter().all(|p| p.digest.is_some()));
        assert!(parse(body, 1024, None)
            .unwrap()
            .iter()
            .all(|p| p.digest.is_none()));
    }

    #[test]
    fn a_request_nothing_took_is_answered_for_what_stopped_it() {
        let down = || ApiError::Unavailable("down".into());
        let reused = || ApiError::Invalid {
            field: "line 2".into(),
            message: "reused".into(),
        };
        let status = |e: ApiError| e.into_response().status();
        assert_eq!(status(nothing_imported(vec![down(), down()])), 503);
        assert_eq!(status(nothing_imported(vec![reused(), reused()])), 422);
        assert_eq!(status(nothing_imported(vec![down(), reused()])), 500);
        let internal = ApiError::Internal("x".into());
        assert_eq!(status(nothing_imported(vec![down(), internal])), 500);
        assert_eq!(status(nothing_imported(vec![])), 500);
    }

    #[test]
    fn only_ndjson_is_taken() {
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            h
        };
        assert!(check_media_type(&with("application/x-ndjson")).is_ok());
        assert!(check_media_type(&with("Application/JSONL; charset=utf-8")).is_ok());
        assert!(check_media_type(&with("application/json")).is_err());
        assert!(check_media_type(&HeaderMap::new()).is_err());
    }
}
