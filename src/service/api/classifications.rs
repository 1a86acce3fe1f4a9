//! `POST /v1/classifications`.

use axum::http::StatusCode;

use super::error::{ApiError, ApiJson, Problem};
use super::{CachedJson, State};
use crate::classify::{self, BusinessInput, Classification};
use crate::service::classify_cached::classify_cached;

/// Classify a business into NAICS 2022 and MCC.
#[utoipa::path(
    post,
    path = "/v1/classifications",
    request_body = BusinessInput,
    responses(
        (status = 200, description = "The classification; `X-Cache-Status` says which cache level answered", body = Classification),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid or unknown", body = Problem, content_type = "application/problem+json"),
    ),
    tag = "classifications"
)]
pub async fn create(
    axum::extract::State(state): State,
    ApiJson(input): ApiJson<BusinessInput>,
) -> Result<CachedJson, ApiError> {
    classify::validate(&input).map_err(|e| ApiError::invalid(e.field, e.message))?;
    let (body, cache) = classify_cached(&state, &input).await?;
    Ok(CachedJson {
        status: StatusCode::OK,
        body,
        cache,
    })
}
