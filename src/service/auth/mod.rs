//! Who is calling and what they may do: API keys (hashed, from Secrets) and OIDC bearer JWTs, scopes
//! per route, and per-client rate limits. A thin middleware over pure parts (`scopes`).

pub mod api_keys;
pub mod jwt;
pub mod scopes;

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use crate::config::{AuthConfig, ConfigError};
use crate::service::api::error::ApiError;
use crate::service::api::middleware::RequestContext;
use crate::service::state::AppState;
use api_keys::ApiKeys;
use jwt::JwtVerifier;
use scopes::{Needs, Scope, Scopes};

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("no credentials: send `Authorization: Bearer <token or API key>`")]
    Missing,
    #[error("{0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    /// Credentials cannot be checked right now (the issuer's key set is unreachable).
    #[error("{0}")]
    Unavailable(String),
}

/// The caller of a request, in its extensions once authenticated.
#[derive(Debug, Clone)]
pub struct Principal {
    pub client: Arc<str>,
    /// `api-key`, `jwt`, or `anonymous` (only with `insecure_no_auth`).
    pub via: &'static str,
    pub scopes: Scopes,
}

impl Principal {
    /// How the audit trail names the caller.
    pub fn actor(&self) -> String {
        format!("{}:{}", self.via, self.client)
    }
}

const MAINTAIN_EVERY: Duration = Duration::from_secs(10);

pub struct Authenticator {
    keys: Option<ApiKeys>,
    jwt: Option<JwtVerifier>,
    limiter: Option<DefaultKeyedRateLimiter<Arc<str>>>,
}

impl Authenticator {
    /// `None` with `insecure_no_auth`; an error when nothing is configured, or both.
    pub fn from_config(cfg: &AuthConfig) -> Result<Option<Self>, ConfigError> {
        match (cfg.configured(), cfg.insecure_no_auth) {
            (false, false) => return Err(ConfigError::Invalid(crate::config::NO_AUTH.into())),
            (true, true) => {
                return Err(ConfigError::Invalid(
                    "insecure_no_auth is set beside API keys or JWT settings; choose one".into(),
                ))
            }
            (false, true) => return Ok(None),
            (true, false) => {}
        }
        let keys = (!cfg.api_key_files.is_empty())
            .then(|| ApiKeys::load(&cfg.api_key_files))
            .transpose()
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        let limiter = NonZeroU32::new(cfg.rate_limit.per_second).map(|rate| {
            let burst = NonZeroU32::new(cfg.rate_limit.burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst.max(rate)))
        });
        Ok(Some(Self {
            keys,
            jwt: cfg.jwt.clone().map(JwtVerifier::new),
            limiter,
        }))
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let credential = credential(headers)?;
        if credential.starts_with(api_keys::PREFIX) {
            let keys = self
                .keys
                .as_ref()
                .ok_or_else(|| AuthError::Invalid("this service takes no API keys".into()))?;
            let holder = keys
                .verify(credential)
                .ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
            return Ok(Principal {
                client: holder.client,
                via: "api-key",
                scopes: holder.scopes,
            });
        }
        let jwt = self.jwt.as_ref().ok_or_else(|| {
            AuthError::Invalid("not an API key, and this service takes no tokens".into())
        })?;
        let holder = jwt.verify(credential).await?;
        Ok(Principal {
            client: holder.client,
            via: "jwt",
            scopes: holder.scopes,
        })
    }

    /// `Err(wait)` when `client` is over its rate.
    pub fn check_rate(&self, client: &Arc<str>) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check_key(client)
            // The limiter's own clock: a new `DefaultClock` calibrates itself (CPUID, which traps in a
            // VM), and it cost ~17 % of the CPU of a stream of refused requests, the case the limiter
            // is for (perf, BENCHMARKS.md).
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    /// Re-reads changed key files, refreshes the issuer's key set, and forgets idle clients' rate
    /// state, until shutdown.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self
            .jwt
            .as_ref()
            .map_or(MAINTAIN_EVERY, |j| j.refresh_every().min(MAINTAIN_EVERY));
        let mut tick = tokio::time::interval(every);
        let mut jwks_fetched: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Some(keys) = &self.keys {
                keys.reload_if_changed();
            }
            if let Some(jwt) = &self.jwt {
                if jwks_fetched.is_none_or(|t| t.elapsed() >= jwt.refresh_every()) {
                    match jwt.refresh(false).await {
                        Ok(()) => jwks_fetched = Some(std::time::Instant::now()),
                        Err(e) => {
                            tracing::warn!(error = %e, "token issuer's key set not refreshed")
                        }
                    }
                }
            }
            if let Some(limiter) = &self.limiter {
                limiter.retain_recent();
            }
        }
    }
}

/// The credential of `Authorization: Bearer …` or `X-API-Key`.
fn credential(headers: &HeaderMap) -> Result<&str, AuthError> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v
            .to_str()
            .map_err(|_| AuthError::Invalid("Authorization is not text".into()))?;
        let (scheme, value) = v.split_once(' ').ok_or_else(|| {
            AuthError::Invalid("Authorization must be `Bearer <credential>`".into())
        })?;
        if !scheme.eq_ignore_ascii_case("bearer") || value.trim().is_empty() {
            return Err(AuthError::Invalid(
                "Authorization must be `Bearer <credential>`".into(),
            ));
        }
        return Ok(value.trim());
    }
    match headers.get("x-api-key") {
        Some(v) => v
            .to_str()
            .map_err(|_| AuthError::Invalid("X-API-Key is not text".into())),
        None => Err(AuthError::Missing),
    }
}

/// Everyone, with every scope: `insecure_no_auth`.
fn anonymous() -> Principal {
    Principal {
        client: Arc::from("anonymous"),
        via: "anonymous",
        scopes: Scopes::all(),
    }
}

/// Around the router: authenticates, limits the rate, checks the route's scope, and drops a
/// `no-cache` request directive from a caller without the `ops` scope (it would send every read to
/// the primary, and a listing to every shard).
///
/// The route is the template the observation layer matched ([`RequestContext`]); a request without
/// one (no route matched, or no observation layer outside) is refused as unknown, so nothing reaches
/// a handler unchecked.
///
/// A tower layer rather than `axum::middleware::from_fn`, which boxes the inner service and its future
/// on every request: public routes (`/health`, `/ready`) pass straight through, unboxed, and only a
/// request that must be authenticated pays for an async block (issue 9).
#[derive(Clone)]
pub struct RequireLayer {
    state: Arc<AppState>,
}

impl RequireLayer {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

impl<S> tower_layer::Layer<S> for RequireLayer {
    type Service = Require<S>;
    fn layer(&self, inner: S) -> Require<S> {
        Require {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Require<S> {
    inner: S,
    state: Arc<AppState>,
}

type Checked = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

impl<S, B> tower_service::Service<Request<B>> for Require<S>
where
    S: tower_service::Service<Request<B>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::Either<S::Future, Checked>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        use futures::future::Either;
        let route = req
            .extensions()
            .get::<RequestContext>()
            .and_then(RequestContext::route)
            .unwrap_or_default();
        let wanted = match scopes::needed(req.method(), route) {
            Some(Needs::Nothing) => return Either::Left(self.inner.call(req)),
            Some(Needs::AnyOf(wanted)) => wanted,
            // A method the route lacks is 405 with `Allow`, as the router would answer (this layer
            // sees the request first); a route the table lacks, or none, is refused as unknown.
            None => {
                let methods = scopes::allowed(route);
                let allow: Vec<&str> = methods.iter().map(|m| m.as_str()).collect();
                let refusal = if allow.is_empty() {
                    ApiError::NotFound("route")
                } else {
                    ApiError::MethodNotAllowed(allow.join(", "))
                };
                return Either::Right(Box::pin(std::future::ready(Ok(refusal.into_response()))));
            }
        };
        // The service that was polled ready serves this request; a clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let state = self.state.clone();
        Either::Right(Box::pin(async move {
            let principal = match &state.auth {
                None => anonymous(),
                Some(auth) => {
                    let principal = match auth.authenticate(req.headers()).await {
                        Ok(p) => p,
                        Err(e) => return Ok(ApiError::from(e).into_response()),
                    };
                    if let Err(wait) = auth.check_rate(&principal.client) {
                        return Ok(ApiError::TooManyRequests(wait).into_response());
                    }
                    principal
                }
            };
            if !principal.scopes.any_of(wanted) {
                let names: Vec<&str> = wanted.iter().map(|s| s.as_str()).collect();
                return Ok(
                    ApiError::Forbidden(format!("this needs scope {}", names.join(" or ")))
                        .into_response(),
                );
            }
            if !principal.scopes.has(Scope::Ops) {
                req.headers_mut().remove(header::CACHE_CONTROL);
                req.headers_mut().remove(header::PRAGMA);
            }
            req.extensions_mut().insert(principal);
            inner.call(req).await
        }))
    }
}
