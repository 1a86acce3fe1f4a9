//! `Idempotency-Key` on the creating POSTs (draft-ietf-httpapi-idempotency-key-header, as Stripe and
//! most payment APIs take it): a client that did not see the answer to a creation sends it again
//! with the same key and gets the same merchants, not new ones.
//!
//! No table of keys: a keyed creation's merchant id is derived from the caller, the key and the
//! line, so a retry lands on the same row of the same shard (the id picks the shard) and its
//! `INSERT ... ON CONFLICT (id) DO NOTHING` finds it there. That keeps the answer inside each
//! shard's own transaction, which a separate key store could not (an import spans shards), and it
//! makes a key good for as long as its merchants exist. Each keyed row keeps a digest of the line it
//! was made from, so a key sent again with different content is refused instead of answered with
//! merchants the client did not ask for.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::error::ApiError;
use crate::classify::BusinessInput;
use crate::service::model::MerchantStatus;

pub const HEADER: &str = "idempotency-key";
/// Stripe's limit; a UUID or a hash fits many times over.
const MAX_LEN: usize = 255;

/// A caller's key: only that caller's retries find its merchants.
#[derive(Debug, Clone)]
pub struct Idempotency {
    client: String,
    key: String,
}

impl Idempotency {
    /// The request's key, if it sent one. The draft sends it as a Structured Field string
    /// (`"abc"`); the bare token most clients send is taken too. Visible ASCII only, 1 to 255
    /// characters.
    pub fn from_headers(headers: &HeaderMap, client: &str) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let invalid = |message: &str| ApiError::Invalid {
            field: "Idempotency-Key".into(),
            message: message.into(),
        };
        if values.next().is_some() {
            return Err(invalid("sent more than once"));
        }
        let raw = value
            .to_str()
            .map_err(|_| invalid("not visible ASCII"))?
            .trim();
        let key = raw
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(raw);
        if key.is_empty() || key.len() > MAX_LEN {
            return Err(invalid("must be 1 to 255 characters"));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) || key.contains('"') {
            return Err(invalid("visible ASCII only, without quotes inside"));
        }
        Ok(Some(Self {
            client: client.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// The id of the merchant made from line `line` of a request with this key (`0` for a request
    /// of one merchant).
    pub fn merchant_id(&self, line: u32) -> Uuid {
        name_based(&[
            b"kyb merchant",
            self.client.as_bytes(),
            self.key.as_bytes(),
            &line.to_be_bytes(),
        ])
    }
}

/// The id of the job that classifies a keyed merchant: a retry can name it without looking it up.
pub fn classify_job_id(merchant: Uuid) -> Uuid {
    name_based(&[b"kyb classify job", merchant.as_bytes()])
}

/// What a keyed merchant was made from: a retry must send the same.
pub fn digest(business: &BusinessInput, status: MerchantStatus) -> Vec<u8> {
    let mut h = Sha256::new();
    // Length-prefixed fields, so no two inputs share an encoding.
    for field in [
        Some(business.name.as_str()),
        business.description.as_deref(),
        business.website.as_deref(),
        business.country.as_deref(),
        business.declared_mcc.as_deref(),
        Some(status.as_str()),
    ] {
        match field {
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
            None => h.update([0]),
        }
    }
    h.finalize().to_vec()
}

/// A UUIDv8 from SHA-256 of length-prefixed parts (RFC 9562 §6.5's name-based v8; v5 would need
/// SHA-1, which nothing else here uses).
fn name_based(parts: &[&[u8]]) -> Uuid {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let hash = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, v.parse().unwrap());
        }
        h
    }

    fn business(name: &str) -> BusinessInput {
        serde_json::from_value(serde_json::json!({"name": name})).unwrap()
    }

    #[test]
    fn a_key_is_taken_bare_or_quoted_and_bad_ones_are_refused() {
        assert!(Idempotency::from_headers(&HeaderMap::new(), "c")
            .unwrap()
            .is_none());
        let bare = Idempotency::from_headers(&headers(&["abc-1"]), "c").unwrap();
        let quoted = Idempotency::from_headers(&headers(&["\"abc-1\""]), "c").unwrap();
        assert_eq!(
            bare.unwrap().merchant_id(1),
            quoted.unwrap().merchant_id(1),
            "the same key either way"
        );
        for bad in [
            vec!["\"\""],
            vec![" "],
            vec!["a b"],
            vec!["a\"b"],
            vec!["a", "b"],
        ] {
            let e = Idempotency::from_headers(&headers(&bad), "c").unwrap_err();
            assert!(
                matches!(&e, ApiError::Invalid { field, .. } if field == "Idempotency-Key"),
                "{bad:?}: {e:?}"
            );
        }
        let long = "k".repeat(MAX_LEN + 1);
        assert!(Idempotency::from_headers(&headers(&[&long]), "c").is_err());
        assert!(Idempotency::from_headers(&headers(&[&long[1..]]), "c").is_ok());
    }

    #[test]
    fn ids_are_stable_per_client_key_and_line_and_apart_otherwise() {
        let k = |client: &str, key: &str| Idempotency {
            client: client.into(),
            key: key.into(),
        };
        let id = k("acme", "k1").merchant_id(1);
        assert_eq!(id, k("acme", "k1").merchant_id(1));
        assert_eq!(id.get_version_num(), 8);
        for other in [
            k("acme", "k1").merchant_id(2),
            k("acme", "k2").merchant_id(1),
            k("bolt", "k1").merchant_id(1),
            // Length prefixes: moving a byte between client and key is another id.
            k("acmek", "1").merchant_id(1),
        ] {
            assert_ne!(id, other);
        }
        assert_ne!(classify_job_id(id), id);
        assert_eq!(classify_job_id(id), classify_job_id(id));
    }

    #[test]
    fn the_digest_tells_any_changed_field() {
        let a = digest(&business("Acme"), MerchantStatus::Active);
        assert_eq!(a, digest(&business("Acme"), MerchantStatus::Active));
        assert_ne!(a, digest(&business("Acme"), MerchantStatus::Pending));
        assert_ne!(a, digest(&business("Acme "), MerchantStatus::Active));
        let mut with_site = business("Acme");
        with_site.website = Some("acme.example".into());
        assert_ne!(a, digest(&with_site, MerchantStatus::Active));
    }
}
