//! Classifying a business: local reference data, optionally confirmed by the external registry, cached
//! in every level under a key derived from the normalised input.

use std::sync::Arc;

use bytes::Bytes;

use crate::classify::{self, Alternative, BusinessInput, Classification, Method};
use crate::service::cache::{CacheStatus, Levels};
use crate::service::registry::{RegistryClient, RegistryRecord};
use crate::service::state::AppState;

/// A classification could not be serialised: a bug, never the caller's input.
#[derive(Debug, thiserror::Error)]
#[error("cannot serialise the classification: {0}")]
pub struct ClassifyError(#[from] Arc<serde_json::Error>);

/// The classification of `input` (already validated) as the JSON body served, and where it came from.
pub async fn classify_cached(
    state: &AppState,
    input: &BusinessInput,
) -> Result<(Bytes, CacheStatus), ClassifyError> {
    let normalised = classify::normalise(input);
    let key = classify::cache_key(&normalised);
    let registry = state.registry.as_ref();
    let (body, status) = state
        .cache
        .get_or_load(&key, Levels::All, || async move {
            let c = classify_business(registry, &normalised).await;
            serde_json::to_vec(&c).map(Bytes::from)
        })
        .await?;
    Ok((body, status))
}

pub async fn classify_business(
    registry: Option<&RegistryClient>,
    input: &BusinessInput,
) -> Classification {
    let local = classify::classify(input);
    let Some(registry) = registry else {
        return local;
    };
    match registry.lookup(input).await {
        Ok(Some(record)) => merge_registry(local, &record),
        Ok(None) => local,
        Err(e) => {
            tracing::debug!(error = %e, "registry lookup failed; classifying from local data");
            local
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
