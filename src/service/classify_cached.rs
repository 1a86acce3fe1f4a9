//! Classifying a business: local reference data, optionally confirmed by the external registry, cached
//! in every level under a key derived from the normalised input.

use bytes::Bytes;

use crate::classify::{self, Alternative, BusinessInput, Classification, Method};
use crate::service::cache::{CacheStatus, Levels};
use crate::service::registry::{RegistryClient, RegistryRecord};
use crate::service::state::AppState;

/// A classification could not be serialised: a bug, never the caller's input.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise the classification: {0}")]
pub struct ClassifyError(String);

/// Why a load stores nothing.
#[derive(Debug)]
enum Uncached {
    Serialise(serde_json::Error),
    /// The registry could not be asked: this local answer is served but not cached, so the registry's
    /// answer replaces it as soon as the registry is back, not when a cached fallback expires.
    Degraded(Bytes),
}

/// The classification of `input` (already validated) as the JSON body served, and where it came from.
pub async fn classify_cached(
    state: &AppState,
    input: &BusinessInput,
) -> Result<(Bytes, CacheStatus), ClassifyError> {
    let normalised = classify::normalise(input);
    let key = classify::cache_key(&normalised);
    let registry = state.registry.as_ref();
    let loaded = state
        .cache
        .get_or_load(&key, Levels::All, || async move {
            let (c, complete) = classify_business(registry, &normalised).await;
            let body = serde_json::to_vec(&c)
                .map(Bytes::from)
                .map_err(Uncached::Serialise)?;
            if complete {
                Ok(body)
            } else {
                Err(Uncached::Degraded(body))
            }
        })
        .await;
    match loaded {
        Ok(found) => Ok(found),
        Err(e) => match &*e {
            Uncached::Degraded(body) => Ok((body.clone(), CacheStatus::Miss)),
            Uncached::Serialise(e) => Err(ClassifyError(e.to_string())),
        },
    }
}

/// The classification, and whether it is complete: false when a configured registry could not be
/// asked (the local answer alone).
pub async fn classify_business(
    registry: Option<&RegistryClient>,
    input: &BusinessInput,
) -> (Classification, bool) {
    let local = classify::classify(input);
    let Some(registry) = registry else {
        return (local, true);
    };
    match registry.lookup(input).await {
        Ok(Some(record)) => (merge_registry(local, &record), true),
        Ok(None) => (local, true),
        Err(e) => {
            tracing::debug!(error = %e, "registry lookup failed; classifying from local data");
            (local, false)
        }
    }
}

/// An authoritative registry code wins over keyword matching; the local best guess stays visible as an
/// alternative when they disagree. Codes the reference tables do not know are ignored.
pub fn merge_registry(local: Classification, record: &RegistryRecord) -> Classification {
    let Some(code) = record
        .naics_code
        .as_deref()
        .filter(|c| classify::naics_title(c).is_some())
    else {
        return local;
    };
    let agrees = code == local.naics_code;
    let mut alternatives = local.alternatives.clone();
    if !agrees {
        alternatives.retain(|a| a.naics_code != code);
        alternatives.insert(
            0,
            Alternative {
                naics_code: local.naics_code.clone(),
                naics_title: local.naics_title.clone(),
                confidence: local.confidence,
                matched_terms: local.matched_terms.clone(),
            },
        );
        alternatives.truncate(3);
    }
    let mcc = record
        .mcc
        .clone()
        .filter(|m| classify::is_known_mcc(m))
        .or(local.mcc.clone());
    Classification {
        naics_title: classify::naics_title(code).unwrap_or_default().to_owned(),
        naics_code: code.to_owned(),
        mcc_description: mcc
            .as_deref()
            .and_then(classify::mcc_description)
            .map(str::to_owned),
        mcc,
        confidence: if agrees { 0.99 } else { 0.9 },
        method: Method::Registry,
        matched_terms: local.matched_terms,
        alternatives,
    }
}
