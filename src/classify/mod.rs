//! Deterministic business-industry classifier: maps a business name,
//! description and website to a NAICS 2022 code and, where possible, a
//! merchant category code (MCC).
//!
//! Scoring is plain lexical matching against the Census NAICS titles and
//! descriptions and the ISO 18245 / Visa MCC lists (embedded from `data/`, see
//! `data/SOURCES.md`), so every result can be explained by `matched_terms`.
//! There is no randomness and no hash-order dependence: equal normalised
//! inputs give equal outputs on every platform.

pub mod fields;
mod index;
mod text;

use std::fmt;

pub use fields::validate;
use index::{Hit, Query, DATA};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusinessInput {
    #[schema(schema_with = fields::name)]
    pub name: String,
    #[serde(default)]
    #[schema(schema_with = fields::description)]
    pub description: Option<String>,
    #[serde(default)]
    #[schema(schema_with = fields::website)]
    pub website: Option<String>,
    #[serde(default)]
    #[schema(schema_with = fields::country)]
    pub country: Option<String>,
    #[serde(default)]
    #[schema(schema_with = fields::declared_mcc)]
    pub declared_mcc: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Classification {
    pub naics_code: String,
    pub naics_title: String,
    pub mcc: Option<String>,
    pub mcc_description: Option<String>,
    /// In [0, 1]; see [`confidence`] for how it is derived.
    pub confidence: f64,
    pub method: Method,
    pub matched_terms: Vec<String>,
    /// Up to three next-best NAICS codes, never including `naics_code`.
    pub alternatives: Vec<Alternative>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Alternative {
    pub naics_code: String,
    pub naics_title: String,
    pub confidence: f64,
    pub matched_terms: Vec<String>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Keyword,
    DeclaredMcc,
    /// The code came from the external business registry.
    Registry,
    Fallback,
}

impl Method {
    /// The stored and serialised name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Keyword => "keyword",
            Method::DeclaredMcc => "declared_mcc",
            Method::Registry => "registry",
            Method::Fallback => "fallback",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Method::Keyword,
            Method::DeclaredMcc,
            Method::Registry,
            Method::Fallback,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: &'static str,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ValidationError {}

/// "All Other Professional, Scientific, and Technical Services": a real 2022
/// code used when nothing matches, so callers never see an invented code.
const FALLBACK_NAICS: &str = "541990";

/// Bump when scoring or normalisation changes so cached results of the old
/// algorithm are not served.
const CACHE_PREFIX: &str = "classification:v1:";

/// Reduce a website to its bare lowercase host: no scheme, credentials,
/// "www.", port, path, query or fragment. Two URLs for the same site should
/// give the same cache key.
fn normalise_host(raw: &str) -> String {
    let mut s = raw.trim().to_lowercase();
    if let Some(i) = s.find("://") {
        s.drain(..i + 3);
    }
    if let Some(i) = s.find(['/', '?', '#']) {
        s.truncate(i);
    }
    if let Some(i) = s.rfind('@') {
        s.drain(..=i);
    }
    if let Some(i) = s.find(':') {
        s.truncate(i);
    }
    let s = s.trim_end_matches('.');
    s.strip_prefix("www.").unwrap_or(s).to_string()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn normalise(input: &BusinessInput) -> BusinessInput {
    BusinessInput {
        name: text::collapse_ws(&input.name).to_lowercase(),
        description: input
            .description
            .as_deref()
            .and_then(|d| non_empty(text::collapse_ws(d).to_lowercase())),
        website: input
            .website
            .as_deref()
            .and_then(|w| non_empty(normalise_host(w))),
        country: input
            .country
            .as_deref()
            .and_then(|c| non_empty(c.trim().to_uppercase())),
        declared_mcc: input
            .declared_mcc
            .as_deref()
            .and_then(|m| non_empty(m.trim().to_string())),
    }
}

/// 64-bit FNV-1a: tiny, dependency-free and, unlike `DefaultHasher`,
/// guaranteed stable across Rust versions, runs and platforms.
fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

pub fn cache_key(input: &BusinessInput) -> String {
    let n = normalise(input);
    let fields = [
        n.name.as_str(),
        n.description.as_deref().unwrap_or(""),
        n.website.as_deref().unwrap_or(""),
        n.country.as_deref().unwrap_or(""),
        n.declared_mcc.as_deref().unwrap_or(""),
    ];
    // U+001F (unit separator) cannot appear in normalised text, so field
    // boundaries are unambiguous.
    format!(
        "{CACHE_PREFIX}{:016x}",
        fnv1a64(fields.join("\u{1f}").as_bytes())
    )
}

pub fn naics_title(code: &str) -> Option<&'static str> {
    DATA.naics_titles.get(code.trim()).map(String::as_str)
}

pub fn mcc_description(code: &str) -> Option<&'static str> {
    DATA.mcc_descriptions.get(code.trim()).map(String::as_str)
}

pub fn is_known_mcc(code: &str) -> bool {
    mcc_description(code).is_some()
}

/// Every NAICS 2022 code with its title, sorted by code: the `industry_codes` reference rows.
pub fn naics_table() -> Vec<(&'static str, &'static str)> {
    sorted_table(&DATA.naics_titles)
}

/// Every known MCC with its description, sorted by code.
pub fn mcc_table() -> Vec<(&'static str, &'static str)> {
    sorted_table(&DATA.mcc_descriptions)
}

fn sorted_table(
    map: &'static std::collections::HashMap<String, String>,
) -> Vec<(&'static str, &'static str)> {
    let mut rows: Vec<_> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    rows.sort_unstable();
    rows
}

/// Below this a "match" is a single weak prefix hit in description prose,
/// which is noise rather than evidence.
const MIN_SCORE: f32 = 1.0;
/// Score scale for [`confidence`]: roughly one exact title-word match on a
/// moderately rare word.
const CONFIDENCE_SCALE: f64 = 8.0;
/// Share of the NAICS decision (by score contribution) an MCC's matched
/// words must account for before it is reported.
const MCC_MIN_EXPLAINED: f32 = 0.5;
/// A NAICS code inferred from the declared MCC's wording is second-hand.
const DECLARED_MCC_DISCOUNT: f64 = 0.5;

/// Confidence = strength × separation, clamped to [0, 1]:
/// - strength `1 - exp(-score / CONFIDENCE_SCALE)` saturates as evidence
///   accumulates, so more matched words help with diminishing returns;
/// - separation `0.5 + 0.5 * (best - runner_up) / best` halves it when the
///   runner-up is tied (the input doesn't tell the two apart) and leaves it
///   whole when nothing else scored.
///
/// Alternatives use their own strength times `0.5 * score / best`, which
/// keeps them at or below the main result.
fn confidence(score: f32, best: f32, runner_up: f32) -> f64 {
    let (s, b, r) = (f64::from(score), f64::from(best), f64::from(runner_up));
    if b <= 0.0 || s <= 0.0 {
        return 0.0;
    }
    let strength = 1.0 - (-s / CONFIDENCE_SCALE).exp();
    let sep = if s >= b {
        0.5 + 0.5 * ((b - r) / b).clamp(0.0, 1.0)
    } else {
        0.5 * (s / b)
    };
    round4((strength * sep).clamp(0.0, 1.0))
}

/// Four decimals are plenty for a score and keep JSON output tidy.
fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// The name is short and, when it names a trade at all, names the main one;
/// descriptions wander into side activities ("... we also run a cafe").
const NAME_WEIGHT: f32 = 1.5;
const DESCRIPTION_WEIGHT: f32 = 1.0;
/// Host words are usually a squashed copy of the name ("sunrisebakery").
const WEBSITE_WEIGHT: f32 = 1.0;

fn query_from(input: &BusinessInput) -> Query {
    let mut q = Query::default();
    q.add_field(&input.name, NAME_WEIGHT);
    if let Some(d) = &input.description {
        q.add_field(d, DESCRIPTION_WEIGHT);
    }
    if let Some(w) = &input.website {
        // The last label is the TLD ("de", "uk", "io"): never an industry.
        let labels: Vec<&str> = w.split('.').collect();
        let keep = labels.len().saturating_sub(1).max(1);
        q.add_field(&labels[..keep].join(" "), WEBSITE_WEIGHT);
    }
    q
}

fn words(query: &Query, hit: &Hit) -> Vec<String> {
    hit.contributions
        .iter()
        .map(|&(qi, _)| query.terms[qi].word.clone())
        .collect()
}

pub fn classify(input: &BusinessInput) -> Classification {
    let n = normalise(input);
    let data = &*DATA;
    let declared = n
        .declared_mcc
        .as_deref()
        .filter(|m| is_known_mcc(m))
        .map(str::to_string);

    let query = query_from(&n);
    let mut hits = data.naics.search(&query, 4);
    hits.retain(|h| h.score >= MIN_SCORE);
    let mut method = Method::Keyword;
    let mut used_query = query;
    let mut discount = 1.0;

    if hits.is_empty() {
        if let Some(mcc) = &declared {
            // No usable words, but the merchant told us its category: read
            // the NAICS code off the MCC's own wording.
            let mut q = Query::default();
            q.add_field(mcc_description(mcc).unwrap_or(""), 1.0);
            hits = data.naics.search(&q, 4);
            hits.retain(|h| h.score >= MIN_SCORE);
            used_query = q;
            method = Method::DeclaredMcc;
            discount = DECLARED_MCC_DISCOUNT;
        }
    }

    let Some(best) = hits.first() else {
        return Classification {
            naics_code: FALLBACK_NAICS.to_string(),
            naics_title: naics_title(FALLBACK_NAICS).unwrap_or_default().to_string(),
            mcc: declared.clone(),
            mcc_description: declared
                .as_deref()
                .and_then(mcc_description)
                .map(str::to_string),
            confidence: 0.0,
            method: if declared.is_some() {
                Method::DeclaredMcc
            } else {
                Method::Fallback
            },
            matched_terms: Vec::new(),
            alternatives: Vec::new(),
        };
    };
    let runner_up = hits.get(1).map_or(0.0, |h| h.score);
    let naics_docs = &data.naics.docs;
    let best_doc = &naics_docs[best.doc as usize];

    let mcc = declared.or_else(|| {
        // The MCC lists are short and generic, so the best MCC for the raw
        // words is often about a side word ("Iron Gym" -> metal service
        // centres, "commercial bank" -> commercial footwear). So the MCC is
        // searched with only the words that decided the NAICS code, each
        // weighted by its share of that decision, and accepted only if it
        // explains enough of the decision: no MCC beats a misleading one.
        let total = best.score.max(f32::EPSILON);
        let terms: Vec<index::QueryTerm> = best
            .contributions
            .iter()
            .map(|&(qi, c)| index::QueryTerm {
                mass: c / total,
                ..used_query.terms[qi].clone()
            })
            .collect();
        let mcc_query = Query {
            terms,
            bigrams: Vec::new(),
        };
        data.mcc
            .search(&mcc_query, 1)
            .into_iter()
            .find(|h| {
                let explained: f32 = h
                    .contributions
                    .iter()
                    .map(|c| mcc_query.terms[c.0].mass)
                    .sum();
                explained >= MCC_MIN_EXPLAINED
            })
            .map(|h| data.mcc.docs[h.doc as usize].code.clone())
    });

    let alternatives = hits[1..]
        .iter()
        .take(3)
        .map(|h| {
            let d = &naics_docs[h.doc as usize];
            Alternative {
                naics_code: d.code.clone(),
                naics_title: d.title.clone(),
                confidence: round4(confidence(h.score, best.score, runner_up) * discount),
                matched_terms: words(&used_query, h),
            }
        })
        .collect();

    Classification {
        naics_code: best_doc.code.clone(),
        naics_title: best_doc.title.clone(),
        mcc_description: mcc.as_deref().and_then(mcc_description).map(str::to_string),
        mcc,
        confidence: round4(confidence(best.score, best.score, runner_up) * discount),
        method,
        matched_terms: words(&used_query, best),
        alternatives,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, description: Option<&str>) -> BusinessInput {
        BusinessInput {
            name: name.to_string(),
            description: description.map(str::to_string),
            website: None,
            country: None,
            declared_mcc: None,
        }
    }

    fn code_of(name: &str, description: &str) -> Classification {
        let c = classify(&input(name, Some(description)));
        eprintln!(
            "{name:?} / {description:?} -> {} {:?} conf={} mcc={:?} terms={:?} alts={:?}",
            c.naics_code,
            c.naics_title,
            c.confidence,
            c.mcc,
            c.matched_terms,
            c.alternatives
                .iter()
                .map(|a| (a.naics_code.as_str(), a.confidence))
                .collect::<Vec<_>>()
        );
        assert_eq!(c.method, Method::Keyword);
        c
    }

    fn assert_code(c: &Classification, allowed: &[&str]) {
        assert!(
            allowed.contains(&c.naics_code.as_str()),
            "got {} {:?}, expected one of {allowed:?}; alternatives {:?}",
            c.naics_code,
            c.naics_title,
            c.alternatives
        );
    }

    #[test]
    fn bakery() {
        let c = code_of("Sunrise Bakery", "Artisan bread and pastry bakery");
        assert_code(&c, &["311811", "311812"]);
        assert!(c.matched_terms.iter().any(|t| t == "bakery"));
    }

    #[test]
    fn pizza_restaurant() {
        let c = code_of(
            "Joe's Pizza",
            "Neighbourhood pizza restaurant with dine-in and takeout",
        );
        assert_code(&c, &["722511", "722513"]);
    }

    #[test]
    fn software_publisher() {
        let c = code_of("Acme Software", "SaaS software publisher");
        assert_code(&c, &["513210", "541511"]);
    }

    #[test]
    fn gas_station() {
        let c = code_of("Shell gas station", "");
        assert_code(&c, &["457110", "457120"]);
    }

    #[test]
    fn dental_clinic() {
        let c = code_of("Bright Smile Dental Clinic", "Family dental clinic");
        assert_code(&c, &["621210"]);
    }

    #[test]
    fn trucking() {
        let c = code_of(
            "Miller Freight LLC",
            "Long-distance trucking company hauling freight",
        );
        assert!(c.naics_code.starts_with("484"), "got {}", c.naics_code);
    }

    #[test]
    fn hotel() {
        let c = code_of("Grand Plaza Hotel", "Downtown hotel with guest rooms");
        assert_code(&c, &["721110"]);
    }

    #[test]
    fn law_firm() {
        let c = code_of("Smith & Partners", "Law firm of attorneys");
        assert_code(&c, &["541110"]);
    }

    #[test]
    fn declared_mcc_is_used() {
        let mut i = input("Joe's Pizza", Some("pizza restaurant"));
        i.declared_mcc = Some("5812".to_string());
        assert_eq!(validate(&i), Ok(()));
        let c = classify(&i);
        assert_eq!(c.method, Method::Keyword);
        assert_eq!(c.mcc.as_deref(), Some("5812"));
        assert_eq!(
            c.mcc_description.as_deref(),
            Some("Eating places and restaurants")
        );
    }

    #[test]
    fn declared_mcc_without_keywords() {
        let mut i = input("Xqzv Holdings", None);
        i.declared_mcc = Some("5812".to_string());
        let c = classify(&i);
        assert_eq!(c.method, Method::DeclaredMcc);
        assert_eq!(c.mcc.as_deref(), Some("5812"));
        assert!(c.naics_code.starts_with("7225"), "got {}", c.naics_code);
        assert!(c.confidence <= 0.5);
    }

    #[test]
    fn mcc_inferred_from_keywords() {
        let c = classify(&input(
            "Sunrise Bakery",
            Some("Artisan bread and pastry bakery"),
        ));
        assert_eq!(c.mcc.as_deref(), Some("5462"));
        assert_eq!(c.mcc_description.as_deref(), mcc_description("5462"));
    }

    #[test]
    fn lookups() {
        assert_eq!(naics_title("513210"), Some("Software Publishers"));
        assert_eq!(naics_title("31-33"), Some("Manufacturing"));
        assert_eq!(naics_title("999999"), None);
        assert!(is_known_mcc("5812"));
        assert!(is_known_mcc("3000"), "brand-specific Visa codes are valid");
        assert!(!is_known_mcc("0000"));
        assert!(!is_known_mcc("58"));
        assert_eq!(
            mcc_description("5812"),
            Some("Eating places and restaurants")
        );
    }

    #[test]
    fn validation_errors() {
        let mut i = input("Acme", None);
        i.declared_mcc = Some("0000".to_string());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("declared_mcc"));
        i.declared_mcc = Some("58a2".to_string());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("declared_mcc"));
        // Codes are taken exactly as the document's enums list them.
        i.declared_mcc = Some(" 5812 ".to_string());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("declared_mcc"));
        i.declared_mcc = Some("5812".to_string());
        assert_eq!(validate(&i), Ok(()));

        let mut i = input("Acme", None);
        i.country = Some("USA".to_string());
        let e = validate(&i).expect_err("3-letter country must fail");
        assert_eq!(e.field, "country");
        assert!(e.to_string().starts_with("country: "));
        i.country = Some("XX".to_string());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("country"));
        i.country = Some("us".to_string());
        assert_eq!(validate(&i).map_err(|e| e.field), Err("country"));
        i.country = Some("US".to_string());
        assert_eq!(validate(&i), Ok(()));

        assert_eq!(
            validate(&input("   ", None)).map_err(|e| e.field),
            Err("name")
        );
        assert_eq!(validate(&input("", None)).map_err(|e| e.field), Err("name"));
        assert_eq!(
            validate(&input(&"x".repeat(201), None)).map_err(|e| e.field),
            Err("name")
        );
        assert_eq!(validate(&input(&"é".repeat(200), None)), Ok(()));
        assert_eq!(
            validate(&input("a", Some(&"d".repeat(5001)))).map_err(|e| e.field),
            Err("description")
        );
        let mut i = input("a", None);
        i.website = Some("w".repeat(501));
        assert_eq!(validate(&i).map_err(|e| e.field), Err("website"));
    }

    #[test]
    fn normalisation_and_cache_key() {
        let a = BusinessInput {
            name: "  Acme   Bakery ".to_string(),
            description: Some("Fresh\tbread\n and cakes".to_string()),
            website: Some("https://WWW.Acme-Bakery.com:443/about?x=1".to_string()),
            country: Some(" gb".to_string()),
            declared_mcc: Some("".to_string()),
        };
        let b = BusinessInput {
            name: "acme bakery".to_string(),
            description: Some("fresh bread and cakes".to_string()),
            website: Some("acme-bakery.com".to_string()),
            country: Some("GB".to_string()),
            declared_mcc: None,
        };
        assert_eq!(normalise(&a), normalise(&b));
        assert_eq!(normalise(&a).website.as_deref(), Some("acme-bakery.com"));
        assert_eq!(cache_key(&a), cache_key(&b));
        assert_eq!(classify(&a), classify(&b));
        assert_ne!(cache_key(&a), cache_key(&input("acme bakery", None)));
        let k = cache_key(&b);
        assert!(k.starts_with("classification:v1:"));
        assert_eq!(k.len(), "classification:v1:".len() + 16);
    }

    #[test]
    fn fnv_known_vectors() {
        // Published FNV-1a 64 test vectors pin the hash across platforms.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn deterministic() {
        let i = input("Sunrise Bakery", Some("Artisan bread and pastry bakery"));
        let first = classify(&i);
        for _ in 0..5 {
            assert_eq!(classify(&i), first);
        }
        assert_eq!(cache_key(&i), cache_key(&i.clone()));
    }

    #[test]
    fn confidence_and_alternatives_are_well_formed() {
        let cases = [
            ("Sunrise Bakery", "Artisan bread and pastry bakery"),
            ("Joe's Pizza", "pizza restaurant"),
            ("Acme Software", "SaaS software publisher"),
            ("Grand Plaza Hotel", "hotel"),
            ("Pet Grooming Studio", "dog grooming and pet boarding"),
            ("Green Lawn Care", "landscaping and lawn mowing"),
        ];
        for (n, d) in cases {
            let c = classify(&input(n, Some(d)));
            assert!((0.0..=1.0).contains(&c.confidence), "{n}: {}", c.confidence);
            assert!(c.confidence > 0.0, "{n}");
            assert!(c.alternatives.len() <= 3);
            let mut codes: Vec<&str> = c
                .alternatives
                .iter()
                .map(|a| a.naics_code.as_str())
                .collect();
            codes.push(&c.naics_code);
            let before = codes.len();
            codes.sort_unstable();
            codes.dedup();
            assert_eq!(codes.len(), before, "{n}: duplicate codes");
            for a in &c.alternatives {
                assert!((0.0..=c.confidence).contains(&a.confidence), "{n}: {a:?}");
                assert_eq!(naics_title(&a.naics_code), Some(a.naics_title.as_str()));
            }
            assert_eq!(naics_title(&c.naics_code), Some(c.naics_title.as_str()));
        }
    }

    #[test]
    fn gibberish_falls_back() {
        let c = classify(&input("xqzv", None));
        assert_eq!(c.method, Method::Fallback);
        assert_eq!(c.naics_code, "541990");
        assert_eq!(c.confidence, 0.0);
        assert!(c.matched_terms.is_empty());
        assert!(c.alternatives.is_empty());
        assert_eq!(c.mcc, None);
    }

    #[test]
    fn serde_shapes() {
        let i: BusinessInput = serde_json::from_str(r#"{"name":"Acme"}"#).expect("minimal input");
        assert_eq!(i, input("Acme", None));
        assert!(serde_json::from_str::<BusinessInput>(r#"{"name":"a","extra":1}"#).is_err());
        let c = classify(&input("Sunrise Bakery", None));
        let v = serde_json::to_value(&c).expect("serialise");
        assert_eq!(v["method"], "keyword");
        let back: Classification = serde_json::from_value(v).expect("round trip");
        assert_eq!(back, c);
        assert_eq!(
            serde_json::to_value(Method::DeclaredMcc).expect("serialise"),
            "declared_mcc"
        );
        for m in [
            Method::Keyword,
            Method::DeclaredMcc,
            Method::Registry,
            Method::Fallback,
        ] {
            assert_eq!(serde_json::to_value(m).expect("serialise"), m.as_str());
            assert_eq!(Method::parse(m.as_str()), Some(m));
        }
        assert_eq!(Method::parse("guess"), None);
    }
}
