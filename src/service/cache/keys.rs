//! Cache keys and what each write event invalidates. Pure, so the rules are testable on their own.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub fn merchant(id: Uuid) -> String {
    format!("merchant:{id}")
}

pub fn risk_assessments(id: Uuid) -> String {
    format!("merchant:{id}:risk-assessments")
}

/// Listing pages live only in L1 (they change with every write), so a pattern over them never has to
/// scan Redis or the database.
pub fn merchant_list(query_fingerprint: &str) -> String {
    format!("merchants:list:{query_fingerprint}")
}

pub const MERCHANT_LISTS: &str = "merchants:list:*";

/// What a write means for the caches.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    MerchantCreated,
    /// `previous_classification_key`: the classification cache key of the merchant's input before the
    /// change, whose cached result is dropped with the merchant.
    MerchantUpdated {
        id: Uuid,
        previous_classification_key: String,
    },
    RiskAssessed {
        id: Uuid,
    },
}

/// Exact keys drop from every level; patterns (`*` = any run of characters) apply to L1 only.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invalidation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
}

pub fn invalidation_for(event: &Event) -> Invalidation {
    match event {
        Event::MerchantCreated => Invalidation {
            keys: vec![],
            patterns: vec![MERCHANT_LISTS.into()],
        },
        Event::MerchantUpdated {
            id,
            previous_classification_key,
        } => Invalidation {
            keys: vec![
                merchant(*id),
                risk_assessments(*id),
                previous_classification_key.clone(),
            ],
            patterns: vec![MERCHANT_LISTS.into()],
        },
        Event::RiskAssessed { id } => Invalidation {
            keys: vec![risk_assessments(*id)],
            patterns: vec![],
        },
    }
}

/// Glob match with `*` only, iterative so no input can blow the stack.
pub fn glob_match(pattern: &str, key: &str) -> bool {
    let (p, k) = (pattern.as_bytes(), key.as_bytes());
    let (mut pi, mut ki) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ki < k.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ki));
            pi += 1;
        } else if pi < p.len() && p[pi] == k[ki] {
            pi += 1;
            ki += 1;
        } else if let Some((sp, sk)) = star {
            pi = sp + 1;
            ki = sk + 1;
            star = Some((sp, sk + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob() {
        assert!(glob_match("merchants:list:*", "merchants:list:abc"));
        assert!(glob_match("merchants:list:*", "merchants:list:"));
        assert!(!glob_match("merchants:list:*", "merchant:1"));
        assert!(glob_match(
            "merchant:*:risk*",
            "merchant:42:risk-assessments"
        ));
        assert!(!glob_match("merchant:*:risk*", "merchant:42"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
    }

    #[test]
    fn update_drops_merchant_classification_and_lists() {
        let id = Uuid::nil();
        let inv = invalidation_for(&Event::MerchantUpdated {
            id,
            previous_classification_key: "classification:v1:ab".into(),
        });
        assert_eq!(
            inv.keys,
            vec![
                merchant(id),
                risk_assessments(id),
                "classification:v1:ab".to_string()
            ]
        );
        assert!(inv
            .patterns
            .iter()
            .any(|p| glob_match(p, &merchant_list("x"))));
        assert!(!inv.patterns.iter().any(|p| glob_match(p, &merchant(id))));
    }

    #[test]
    fn creation_only_drops_lists() {
        let inv = invalidation_for(&Event::MerchantCreated);
        assert!(inv.keys.is_empty());
        assert_eq!(inv.patterns, vec![MERCHANT_LISTS.to_string()]);
    }

    #[test]
    fn wire_format_round_trips() {
        let inv = invalidation_for(&Event::RiskAssessed { id: Uuid::nil() });
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Invalidation>(&json).unwrap(), inv);
    }
}
