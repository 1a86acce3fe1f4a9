//! The external business registry: an optional HTTP lookup that can confirm a business's industry.
//! Timeouts, jittered retries and a circuit breaker keep a slow or failing registry from slowing the
//! classification path; when it is unavailable, classification proceeds on local data alone.

pub mod breaker;

use std::sync::Arc;
use std::time::Instant;

use backon::{ExponentialBuilder, Retryable};
use serde::Deserialize;

use crate::classify::BusinessInput;
use crate::config::{ConfigError, RegistryConfig};
use crate::service::metrics::{BreakerLabels, Metrics, OutcomeLabels};
use crate::telemetry::traces;
use breaker::CircuitBreaker;
use tracing::Instrument;

/// What the registry knows about a business.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct RegistryRecord {
    pub naics_code: Option<String>,
    pub mcc: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("circuit open")]
    CircuitOpen,
    #[error("registry request failed: {0}")]
    Transport(String),
    #[error("registry answered {0}")]
    Status(u16),
    #[error("registry answer unreadable: {0}")]
    Body(String),
}

impl RegistryError {
    fn retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Status(s) => *s >= 500 || *s == 429,
            _ => false,
        }
    }
}

pub struct RegistryClient {
    http: reqwest::Client,
    base: url::Url,
    retries: u32,
    breaker: CircuitBreaker,
    metrics: Arc<Metrics>,
}

const NAME: &str = "business_registry";

impl RegistryClient {
    /// `Ok(None)` when no registry is configured.
    pub fn from_config(
        cfg: &RegistryConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Option<Self>, ConfigError> {
        let Some(base) = cfg.base_url.clone() else {
            return Ok(None);
        };
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &cfg.token {
            let mut v =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
                    .map_err(|_| {
                        ConfigError::Invalid("registry.token is not a valid header value".into())
                    })?;
            // Never printed by reqwest's Debug.
            v.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, v);
        }
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout)
            .default_headers(headers)
            .build()
            .map_err(|e| ConfigError::Invalid(format!("registry HTTP client: {e}")))?;
        metrics
            .breaker_state
            .get_or_create(&BreakerLabels { name: NAME.into() })
            .set(0);
        Ok(Some(Self {
            http,
            base,
            retries: cfg.retries,
            breaker: CircuitBreaker::new(&cfg.circuit_breaker),
            metrics,
        }))
    }

    fn record(&self, outcome: &str) {
        self.metrics
            .outbound_calls
            .get_or_create(&OutcomeLabels {
                name: NAME.into(),
                outcome: outcome.into(),
            })
            .inc();
        self.metrics
            .breaker_state
            .get_or_create(&BreakerLabels { name: NAME.into() })
            .set(self.breaker.state(Instant::now()).gauge());
    }

    /// Looks the business up. `Ok(None)`: the registry does not know it.
    pub async fn lookup(
        &self,
        input: &BusinessInput,
    ) -> Result<Option<RegistryRecord>, RegistryError> {
        // Spans made here and recorded through their handles: with traces off they are disabled, and
        // `Span::current()` would be the request's span, whose status fields are the response's.
        let span =
            tracing::debug_span!("registry.lookup", otel.status_code = tracing::field::Empty);
        let result = self.lookup_guarded(input).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        result
    }

    async fn lookup_guarded(
        &self,
        input: &BusinessInput,
    ) -> Result<Option<RegistryRecord>, RegistryError> {
        let Ok(permit) = self.breaker.try_acquire(Instant::now()) else {
            self.record("rejected");
            return Err(RegistryError::CircuitOpen);
        };
        let attempt = || self.lookup_once(input);
        let result = attempt
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(std::time::Duration::from_millis(50))
                    .with_max_delay(std::time::Duration::from_millis(500))
                    .with_max_times(self.retries as usize)
                    .with_jitter(),
            )
            .when(RegistryError::retryable)
            .await;
        match &result {
            Ok(_) => {
                permit.success();
                self.record("success");
            }
            Err(_) => {
                permit.failure(Instant::now());
                self.record("failure");
            }
        }
        result
    }

    /// One attempt: an HTTP client span (one per retry), whose trace context goes with the request.
    /// The span (named `METHOD url-template`, so it is not taken for Redis's `GET`) gives the URL
    /// without its query, which carries the business's name, or any credentials.
    async fn lookup_once(
        &self,
        input: &BusinessInput,
    ) -> Result<Option<RegistryRecord>, RegistryError> {
        let mut url = self
            .base
            .join("v1/businesses/lookup")
            .map_err(|e| RegistryError::Transport(e.to_string()))?;
        let span = tracing::debug_span!(
            "GET /v1/businesses/lookup",
            otel.kind = "client",
            http.request.method = "GET",
            url.full = tracing::field::Empty,
            server.address = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        if !span.is_disabled() {
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            span.record("url.full", shown.as_str());
            if let Some(host) = url.host_str() {
                span.record("server.address", host);
            }
        }
        url.query_pairs_mut().append_pair("name", &input.name);
        if let Some(c) = &input.country {
            url.query_pairs_mut().append_pair("country", c);
        }
        self.send(url, &span).instrument(span.clone()).await
    }

    async fn send(
        &self,
        url: url::Url,
        span: &tracing::Span,
    ) -> Result<Option<RegistryRecord>, RegistryError> {
        let mut headers = reqwest::header::HeaderMap::new();
        traces::inject(&mut headers);
        let resp = self
            .http
            .get(url)
            .headers(headers)
            .send()
            .await
            .map_err(|e| {
                span.record("otel.status_code", "error");
                RegistryError::Transport(e.to_string())
            })?;
        let status = resp.status().as_u16();
        span.record("http.response.status_code", status);
        if status >= 400 && status != 404 {
            span.record("otel.status_code", "error");
        }
        match status {
            200 => resp
                .json::<RegistryRecord>()
                .await
                .map(Some)
                .map_err(|e| RegistryError::Body(e.to_string())),
            404 => Ok(None),
            s => Err(RegistryError::Status(s)),
        }
    }
}
