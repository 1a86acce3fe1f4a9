//! The API's one error type, rendered as RFC 9457 `application/problem+json`, and the extractors whose
//! rejections it replaces (so malformed input never produces axum's plain-text answers).

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::db_error::DbError;
use crate::service::classify_cached::ClassifyError;
use crate::service::state::AppState;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    /// The body parsed but a field is wrong.
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    UnprocessableJson(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The route exists, but not with this method; carries the methods it has, for `Allow`.
    #[error("this route answers only {0}")]
    MethodNotAllowed(String),
    /// No credentials, or ones that do not check out.
    #[error("{0}")]
    Unauthorized(String),
    /// Valid credentials without the scope this needs.
    #[error("{0}")]
    Forbidden(String),
    #[error("too many requests from this client; retry after the Retry-After interval")]
    TooManyRequests(std::time::Duration),
    #[error("request body larger than the limit")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Conflict(String),
    /// A dependency the request needs is down; the client should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The request ran past the server's limit (`server.write_timeout`) and was cut off; a write may
    /// or may not have taken effect.
    #[error("the request took longer than the server's limit of {}; a write may have taken effect, so read before retrying one", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// Logged with its detail; the client sees only that it failed.
    #[error("internal error: {0}")]
    Internal(String),
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    /// The offending field, for validation problems.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            Invalid { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-field",
                "Invalid field",
            ),
            UnprocessableJson(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Body does not match the schema",
            ),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Forbidden"),
            TooManyRequests(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Payload too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "conflict", "Conflict"),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Timeout(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "timeout",
                "Request timed out",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why the server failed a request (a 5xx), for the log line the observation layer writes with the
/// request's id, method and route (`middleware::log_failure`); the caller is shown a generic detail.
/// Handed over on the response rather than logged here: a handler has no request id at hand, and at the
/// default log level there is no request span to lend it one.
#[derive(Debug, Clone)]
pub struct FailureCause {
    /// The problem type's slug (`internal`, `unavailable`, `timeout`).
    pub problem: &'static str,
    pub detail: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, slug, title) = self.parts();
        let (detail, cause) = match &self {
            ApiError::Internal(d) => (
                "the server failed to handle the request; see its logs".to_owned(),
                Some(d.clone()),
            ),
            // The detail names hosts and shards: for the logs, not for callers.
            ApiError::Unavailable(d) => (
                "a service this request needs is unavailable; retry after the Retry-After interval"
                    .to_owned(),
                Some(d.clone()),
            ),
            ApiError::Timeout(_) => {
                let d = self.to_string();
                (d.clone(), Some(d))
            }
            other => (other.to_string(), None),
        };
        let field = match &self {
            ApiError::Invalid { field, .. } => Some(field.clone()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("https://kyb.io/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail,
            field,
        };
        let mut resp = (status, axum::Json(problem)).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(detail) = cause {
            resp.extensions_mut().insert(FailureCause {
                problem: slug,
                detail,
            });
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let ApiError::MethodNotAllowed(allow) = &self {
            if let Ok(v) = HeaderValue::from_str(allow) {
                resp.headers_mut().insert(header::ALLOW, v);
            }
        }
        if let ApiError::TooManyRequests(wait) = &self {
            // Whole seconds, rounded up: a client that waits this long is admitted.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: tell the client which scheme, and whether its credential was refused.
            let challenge = if matches!(&self, ApiError::Unauthorized(d) if d.starts_with("no credentials"))
            {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Unavailable(d) => ApiError::Unavailable(d),
            DbError::NotFound => ApiError::NotFound("record"),
            DbError::Conflict(d) => ApiError::Conflict(d),
            DbError::Query(e) => ApiError::Internal(e.to_string()),
            DbError::Failed(d) => ApiError::Internal(d),
        }
    }
}

impl From<crate::service::auth::AuthError> for ApiError {
    fn from(e: crate::service::auth::AuthError) -> Self {
        use crate::service::auth::AuthError;
        match e {
            AuthError::Unavailable(d) => ApiError::Unavailable(d),
            other => ApiError::Unauthorized(other.to_string()),
        }
    }
}

impl From<ClassifyError> for ApiError {
    fn from(e: ClassifyError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        DbError::from(e).into()
    }
}

impl From<std::sync::Arc<ApiError>> for ApiError {
    fn from(e: std::sync::Arc<ApiError>) -> Self {
        (*e).clone()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        match r {
            JsonRejection::JsonDataError(e) => ApiError::UnprocessableJson(e.body_text()),
            JsonRejection::JsonSyntaxError(e) => {
                ApiError::BadRequest(format!("malformed JSON: {}", e.body_text()))
            }
            JsonRejection::MissingJsonContentType(_) => {
                ApiError::UnsupportedMediaType("expected `Content-Type: application/json`".into())
            }
            JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge
            }
            other => ApiError::BadRequest(other.body_text()),
        }
    }
}

/// `axum::Json` with problem+json rejections, read up to `server.max_body_bytes`.
///
/// The limit is applied here, where a body is read, rather than by a `DefaultBodyLimit` layer
/// around the router: that layer sets it on every request (a GET's too), an entry in each
/// request's extension map that was the one to make the map grow.
pub struct ApiJson<T>(pub T);

impl<T> FromRequest<Arc<AppState>> for ApiJson<T>
where
    axum::Json<T>: FromRequest<Arc<AppState>, Rejection = JsonRejection>,
{
    type Rejection = ApiError;

    async fn from_request(
        mut req: Request,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        DefaultBodyLimit::max(state.config.server.max_body_bytes).apply(&mut req);
        let axum::Json(v) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Self(v))
    }
}

/// `axum::extract::Path` with problem+json rejections.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    axum::extract::Path<T>: FromRequestParts<S, Rejection = PathRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid path: {}",
                e.body_text()
            ))),
        }
    }
}

/// `axum::extract::Query` with problem+json rejections.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    axum::extract::Query<T>: FromRequestParts<S, Rejection = QueryRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(Self(v)),
            Err(e) => Err(ApiError::BadRequest(format!(
                "invalid query: {}",
                e.body_text()
            ))),
        }
    }
}
