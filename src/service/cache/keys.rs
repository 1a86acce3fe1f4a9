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
    format!("{MERCHANT_LIST_PREFIX}{query_fingerprint}")
}

const MERCHANT_LIST_PREFIX: &str = "merchants:list:";

pub const MERCHANT_LISTS: &str = "merchants:list:*";

pub fn is_merchant_list(key: &str) -> bool {
    key.starts_with(MERCHANT_LIST_PREFIX)
}

/// What a pattern can drop from the listing pages' L1 table, which holds the keys [`is_merchant_list`]
/// accepts and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListsReach {
    /// Every listing page: the table can be emptied outright.
    All,
    /// Some listing pages and nothing else: only that table need be searched.
    Some,
    /// Other keys too (a pattern this release does not send itself): both tables are searched.
    Beyond,
}

pub fn lists_reach(pattern: &str) -> ListsReach {
    if pattern == MERCHANT_LISTS {
        ListsReach::All
    } else if is_merchant_list(pattern) {
        // A pattern that starts with the prefix literally can only match keys that start with it.
        ListsReach::Some
    } else {
        ListsReach::Beyond
    }
}

/// What a write means for the caches.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    MerchantCreated,
    /// `previous_classification_key`: the classification cache key of the merchant's input before the
    /// change, whose cached result is dropped with the merchant.
    MerchantUpdated {
        id: Uuid,
        version: i64,
        previous_classification_key: String,
    },
    /// `version`: the merchant's `risk_version` after the assessment.
    RiskAssessed {
        id: Uuid,
        version: i64,
    },
}

/// Records are cached with the version they were read at (see `cache::records`).
pub fn is_record(key: &str) -> bool {
    key.starts_with("merchant:")
}

/// A record's version after a committed write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordVersion {
    pub key: String,
    pub version: i64,
}

/// Exact keys drop from every level; patterns (`*` = any run of characters) apply to L1 only.
///
/// `records` name the versions a write produced; receivers never serve an older one after hearing of
/// it. A notice that carries `records` names record keys in `keys` only for the release before this
/// one (which has no versions); a notice without `records` comes from that release, and its record
/// keys are dropped outright.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Invalidation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patterns: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<RecordVersion>,
    /// Records whose new version the writer could not store in Redis: receivers that can reach it
    /// raise the version there on the writer's behalf.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repairs: Vec<RecordVersion>,
}

impl Invalidation {
    /// A notice asking other instances to raise versions in Redis that the writer could not.
    pub fn repair(records: Vec<RecordVersion>) -> Self {
        Self {
            repairs: records,
            ..Self::default()
        }
    }

    /// Record keys this notice drops without a version (from the previous release).
    pub fn unversioned_records(&self) -> impl Iterator<Item = &str> {
        let legacy = self.records.is_empty();
        self.keys
            .iter()
            .map(String::as_str)
            .filter(move |k| legacy && is_record(k))
    }
}

pub fn invalidation_for(event: &Event) -> Invalidation {
    match event {
        Event::MerchantCreated => Invalidation {
            patterns: vec![MERCHANT_LISTS.into()],
            ..Invalidation::default()
        },
        Event::MerchantUpdated {
            id,
            version,
            previous_classification_key,
        } => Invalidation {
            keys: vec![
                merchant(*id),
                risk_assessments(*id),
                previous_classification_key.clone(),
            ],
            patterns: vec![MERCHANT_LISTS.into()],
            records: vec![RecordVersion {
                key: merchant(*id),
                version: *version,
            }],
            repairs: vec![],
        },
        Event::RiskAssessed { id, version } => Invalidation {
            keys: vec![risk_assessments(*id)],
            records: vec![RecordVersion {
                key: risk_assessments(*id),
                version: *version,
            }],
            ..Invalidation::default()
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
            version: 3,
            previous_classification_key: "classification:v1:ab".into(),
        });
        assert_eq!(
            inv.records,
            vec![RecordVersion {
                key: merchant(id),
                version: 3
            }]
        );
        assert_eq!(
            inv.unversioned_records().count(),
            0,
            "keys are for the old release only"
        );
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
    fn a_pattern_reaches_the_listing_pages_alone_only_when_it_starts_with_their_prefix() {
        assert_eq!(lists_reach(MERCHANT_LISTS), ListsReach::All);
        assert_eq!(lists_reach("merchants:list:status=*"), ListsReach::Some);
        for wider in ["merchants:*", "*", "merchant*:list:*", "merchant:*"] {
            assert_eq!(lists_reach(wider), ListsReach::Beyond, "{wider}");
        }
        // `All` is only claimed where the pattern matches every key the table can hold.
        assert!(glob_match(MERCHANT_LISTS, &merchant_list("")));
        assert!(is_merchant_list(&merchant_list("x")));
        assert!(!is_merchant_list(&merchant(Uuid::nil())));
    }

    #[test]
    fn creation_only_drops_lists() {
        let inv = invalidation_for(&Event::MerchantCreated);
        assert!(inv.keys.is_empty());
        assert_eq!(inv.patterns, vec![MERCHANT_LISTS.to_string()]);
    }

    #[test]
    fn wire_format_round_trips() {
        let inv = invalidation_for(&Event::RiskAssessed {
            id: Uuid::nil(),
            version: 7,
        });
        let json = serde_json::to_string(&inv).unwrap();
        assert_eq!(serde_json::from_str::<Invalidation>(&json).unwrap(), inv);
    }

    #[test]
    fn a_notice_from_the_previous_release_drops_its_records_outright() {
        let id = Uuid::nil();
        // What the release before versioned records sends on an update.
        let old: Invalidation = serde_json::from_str(&format!(
            r#"{{"keys":["merchant:{id}","merchant:{id}:risk-assessments","classification:v1:ab"],"patterns":["merchants:list:*"]}}"#
        ))
        .unwrap();
        assert_eq!(
            old.unversioned_records().collect::<Vec<_>>(),
            vec![merchant(id), risk_assessments(id)]
        );
        // And what this release sends still names the keys that release drops.
        let new = invalidation_for(&Event::RiskAssessed { id, version: 1 });
        let seen_by_old: serde_json::Value = serde_json::to_value(&new).unwrap();
        assert_eq!(seen_by_old["keys"][0], risk_assessments(id));
    }
}
