//! Bearer JWTs from an OpenID Connect issuer, checked against its JSON Web Key Set.
//!
//! The key set is fetched at start, every `refresh_every`, and when a token names a key not seen
//! yet (at most once per `REFETCH_AT_MOST_EVERY`, so a flood of forged key ids cannot make us hammer
//! the issuer). Only asymmetric keys are used: a JWKS `oct` key or an `HS*` token would let anyone
//! who knows the key set sign tokens. A verified token is remembered until it expires (at most
//! `TOKEN_CACHE_TTL`, cleared when the key set changes), so a client's repeated calls cost one
//! lookup, not one signature check each.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::scopes::Scopes;
use super::AuthError;
use crate::config::JwtConfig;

const REFETCH_AT_MOST_EVERY: Duration = Duration::from_secs(2);
const TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);
const TOKEN_CACHE_ENTRIES: u64 = 10_000;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct TokenHolder {
    pub client: Arc<str>,
    pub scopes: Scopes,
    expires: SystemTime,
}

struct Key {
    decoding: DecodingKey,
    /// The algorithms this key may verify: the JWK's own `alg`, else every one of its family.
    algorithms: Vec<Algorithm>,
}

#[derive(Deserialize)]
struct Claims {
    exp: u64,
    sub: Option<String>,
    client_id: Option<String>,
    azp: Option<String>,
    /// Space-separated (RFC 8693, Keycloak, Dex).
    scope: Option<String>,
    /// An array (Okta, Azure AD).
    scp: Option<Vec<String>>,
}

pub struct JwtVerifier {
    config: JwtConfig,
    http: reqwest::Client,
    keys: RwLock<Arc<HashMap<String, Key>>>,
    fetched_at: tokio::sync::Mutex<Option<Instant>>,
    verified: moka::sync::Cache<String, TokenHolder>,
}

/// Which algorithms a key of this type may verify when its JWK names none.
fn family(params: &AlgorithmParameters) -> Vec<Algorithm> {
    use Algorithm::*;
    match params {
        AlgorithmParameters::RSA(_) => vec![RS256, RS384, RS512, PS256, PS384, PS512],
        AlgorithmParameters::EllipticCurve(_) => vec![ES256, ES384],
        AlgorithmParameters::OctetKeyPair(_) => vec![EdDSA],
        // Symmetric: never trusted from a key set (see the module comment).
        AlgorithmParameters::OctetKey(_) => vec![],
    }
}

/// The usable keys of a key set, by key id.
fn usable_keys(set: &JwkSet) -> HashMap<String, Key> {
    set.keys
        .iter()
        .filter_map(|jwk| {
            let kid = jwk.common.key_id.clone()?;
            let family = family(&jwk.algorithm);
            let algorithms = match jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok())
            {
                Some(alg) if family.contains(&alg) => vec![alg],
                Some(_) => return None,
                None => family,
            };
            if algorithms.is_empty() {
                return None;
            }
            let decoding = DecodingKey::from_jwk(jwk).ok()?;
            Some((
                kid,
                Key {
                    decoding,
                    algorithms,
                },
            ))
        })
        .collect()
}

impl JwtVerifier {
    pub fn new(config: JwtConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_default();
        Self {
            config,
            http,
            keys: RwLock::new(Arc::default()),
            fetched_at: tokio::sync::Mutex::new(None),
            verified: moka::sync::Cache::builder()
                .max_capacity(TOKEN_CACHE_ENTRIES)
                .time_to_live(TOKEN_CACHE_TTL)
                .build(),
        }
    }

    pub fn refresh_every(&self) -> Duration {
        self.config.refresh_every
    }

    /// Fetches the key set now (unless `only_if_stale` and it was fetched within the last
    /// `REFETCH_AT_MOST_EVERY`). Concurrent callers wait for one fetch.
    pub async fn refresh(&self, only_if_stale: bool) -> Result<(), AuthError> {
        let mut fetched_at = self.fetched_at.lock().await;
        if only_if_stale && fetched_at.is_some_and(|t| t.elapsed() < REFETCH_AT_MOST_EVERY) {
            return Ok(());
        }
        *fetched_at = Some(Instant::now());
        let unavailable = |e: String| {
            AuthError::Unavailable(format!(
                "cannot fetch the token issuer's keys from {}: {e}",
                self.config.jwks_url
            ))
        };
        let resp = self
            .http
            .get(self.config.jwks_url.clone())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| unavailable(e.to_string()))?;
        let set: JwkSet = resp.json().await.map_err(|e| unavailable(e.to_string()))?;
        let keys = usable_keys(&set);
        let mut current = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let mut before: Vec<&String> = current.keys().collect();
        let mut after: Vec<&String> = keys.keys().collect();
        before.sort();
        after.sort();
        if before != after {
            tracing::info!(keys = keys.len(), "token issuer's key set changed");
            // A key that left the set must stop vouching for tokens at once.
            self.verified.invalidate_all();
        }
        *current = Arc::new(keys);
        Ok(())
    }

    fn key_set(&self) -> Arc<HashMap<String, Key>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub async fn verify(&self, token: &str) -> Result<TokenHolder, AuthError> {
        if let Some(h) = self.verified.get(token) {
            if h.expires > SystemTime::now() {
                return Ok(h);
            }
            self.verified.invalidate(token);
        }
        let invalid = |why: String| AuthError::Invalid(why);
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        let kid = header
            .kid
            .ok_or_else(|| invalid("the token names no key (kid)".into()))?;
        if !self.key_set().contains_key(&kid) {
            self.refresh(true).await?;
        }
        let keys = self.key_set();
        let key = keys
            .get(&kid)
            .ok_or_else(|| invalid(format!("key {kid:?} is not in the issuer's key set")))?;
        if !key.algorithms.contains(&header.alg) {
            return Err(invalid(format!(
                "algorithm {:?} is not allowed for key {kid:?}",
                header.alg
            )));
        }
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.config.issuer]);
        v.set_audience(&[&self.config.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = self.config.leeway.as_secs();
        let claims = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => invalid(format!("token refused: {e}")),
            })?
            .claims;
        let client = claims
            .client_id
            .or(claims.azp)
            .or(claims.sub)
            .ok_or_else(|| invalid("the token names no client (client_id, azp or sub)".into()))?;
        let scopes = match (&claims.scope, &claims.scp) {
            (Some(s), _) => Scopes::from_names(s.split_whitespace()),
            (None, Some(list)) => Scopes::from_names(list.iter().map(String::as_str)),
            (None, None) => Scopes::default(),
        };
        let holder = TokenHolder {
            client: client.into(),
            scopes,
            expires: SystemTime::UNIX_EPOCH + Duration::from_secs(claims.exp),
        };
        self.verified.insert(token.to_owned(), holder.clone());
        Ok(holder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symmetric_keys_and_mismatched_algorithms_are_dropped() {
        let set: JwkSet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "oct", "kid": "shared", "k": "c2VjcmV0"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "lying", "alg": "RS256", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}))
        .unwrap();
        let keys = usable_keys(&set);
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(keys["ed"].algorithms, vec![Algorithm::EdDSA]);
    }
}
