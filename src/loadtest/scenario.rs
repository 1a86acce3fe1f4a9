//! Scenarios as data: which request types a load test sends, in what proportions, and how often a
//! classification repeats a known business. The files live in `loadtests/`; the three the CLI knows
//! by name are embedded so the binary works without the repository.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rand::Rng;
use serde::Deserialize;

/// Built-in scenarios by name: the realistic mix and the two the benchmark compares with wrk.
pub const BUILTIN: [(&str, &str); 3] = [
    ("kyb-mix", include_str!("../../loadtests/kyb-mix.yaml")),
    ("trivial", include_str!("../../loadtests/trivial.yaml")),
    (
        "classify-cached",
        include_str!("../../loadtests/classify-cached.yaml"),
    ),
];

/// One kind of request; its name keys `latency_us.by_type` in the result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestType {
    /// `POST /v1/classifications`
    Classify,
    /// `GET /v1/merchants/{id}`
    MerchantRead,
    /// `POST /v1/merchants`
    MerchantCreate,
    /// `POST /v1/merchants/{id}/risk-assessments`
    RiskAssess,
    /// `GET /health`
    Health,
}

impl RequestType {
    pub const ALL: [RequestType; 5] = [
        RequestType::Classify,
        RequestType::MerchantRead,
        RequestType::MerchantCreate,
        RequestType::RiskAssess,
        RequestType::Health,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RequestType::Classify => "classify",
            RequestType::MerchantRead => "merchant_read",
            RequestType::MerchantCreate => "merchant_create",
            RequestType::RiskAssess => "risk_assess",
            RequestType::Health => "health",
        }
    }

    /// The service's route template for this type, as its `/metrics` labels it.
    pub fn route(self) -> &'static str {
        match self {
            RequestType::Classify => "/v1/classifications",
            RequestType::MerchantRead => "/v1/merchants/{id}",
            RequestType::MerchantCreate => "/v1/merchants",
            RequestType::RiskAssess => "/v1/merchants/{id}/risk-assessments",
            RequestType::Health => "/health",
        }
    }

    /// Reads and risk assessments need a merchant id.
    pub fn needs_merchant(self) -> bool {
        matches!(self, RequestType::MerchantRead | RequestType::RiskAssess)
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub weights: BTreeMap<RequestType, usize>,
    #[serde(default)]
    pub classify: ClassifyMix,
    #[serde(default)]
    pub seed_merchants_per_user: usize,
    /// `[min, max]` pause in milliseconds between one user's requests; none by default.
    #[serde(default)]
    pub think_time_ms: Option<[u64; 2]>,
    /// 4xx statuses this scenario expects (a probe for missing records sends 404s on purpose). Any
    /// other 4xx is a failed request, as k6 counts them: a run of all 400s must not pass the gate.
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyMix {
    /// Share (0 to 1) of classifications that repeat a known business, so cache hit rates are realistic.
    pub repeat_share: f64,
    /// How many distinct known businesses the repeats cycle through.
    pub hot_businesses: usize,
}

impl Default for ClassifyMix {
    fn default() -> Self {
        Self {
            repeat_share: 0.9,
            hot_businesses: 200,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid scenario {name}: {source}")]
    Parse {
        name: String,
        source: serde_yaml::Error,
    },
    #[error("invalid scenario {name}: {reason}")]
    Invalid { name: String, reason: String },
    #[error("unknown scenario `{0}`: give a built-in name (kyb-mix, trivial, classify-cached) or a YAML file")]
    Unknown(String),
}

impl Scenario {
    /// A built-in name, or a path to a YAML file (anything with a `/` or a `.yaml`/`.yml` suffix).
    pub fn load(name_or_path: &str) -> Result<Self, ScenarioError> {
        if let Some((_, text)) = BUILTIN.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name_or_path);
        }
        let looks_like_path = name_or_path.contains('/')
            || name_or_path.ends_with(".yaml")
            || name_or_path.ends_with(".yml");
        if !looks_like_path {
            return Err(ScenarioError::Unknown(name_or_path.to_owned()));
        }
        let path = Path::new(name_or_path);
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, name_or_path)
    }

    pub fn parse(text: &str, name: &str) -> Result<Self, ScenarioError> {
        let s: Scenario = serde_yaml::from_str(text).map_err(|source| ScenarioError::Parse {
            name: name.to_owned(),
            source,
        })?;
        s.validate().map_err(|reason| ScenarioError::Invalid {
            name: name.to_owned(),
            reason,
        })?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.active().next().is_none() {
            return Err("no request type has a weight above 0".into());
        }
        let needs_merchant = self.active().any(|(t, _)| t.needs_merchant());
        let creates =
            self.seed_merchants_per_user > 0 || self.weight(RequestType::MerchantCreate) > 0;
        if needs_merchant && !creates {
            return Err("merchant_read and risk_assess need merchants: set seed_merchants_per_user or a merchant_create weight".into());
        }
        let c = &self.classify;
        if !(0.0..=1.0).contains(&c.repeat_share) {
            return Err(format!(
                "classify.repeat_share must be between 0 and 1, not {}",
                c.repeat_share
            ));
        }
        if c.repeat_share > 0.0 && c.hot_businesses == 0 {
            return Err("classify.hot_businesses must be at least 1 when repeat_share > 0".into());
        }
        if let Some(c) = self
            .expected_statuses
            .iter()
            .find(|c| !(400..500).contains(*c))
        {
            return Err(format!(
                "expected_statuses lists {c}: only 4xx statuses can be expected"
            ));
        }
        if let Some([min, max]) = self.think_time_ms {
            if min > max {
                return Err(format!("think_time_ms [{min}, {max}]: min above max"));
            }
        }
        Ok(())
    }

    /// Whether a response with `code` failed: 5xx always, 4xx unless expected. (No response at all
    /// is a failure too; the recorder counts those apart.)
    pub fn fails(&self, code: u16) -> bool {
        code >= 500 || (code >= 400 && !self.expected_statuses.contains(&code))
    }

    pub fn weight(&self, t: RequestType) -> usize {
        self.weights.get(&t).copied().unwrap_or(0)
    }

    /// A request type drawn with probability proportional to its weight. Drawn per request rather than
    /// walking a fixed weighted list, so every stretch of a user's requests, however short, keeps the
    /// weights in expectation, and users do not move in lockstep.
    pub fn pick(&self, rng: &mut impl Rng) -> RequestType {
        let total: usize = self.active().map(|(_, w)| w).sum();
        let mut ticket = rng.random_range(0..total.max(1));
        for (t, w) in self.active() {
            if ticket < w {
                return t;
            }
            ticket -= w;
        }
        RequestType::Health // unreachable for a validated scenario (some weight is above 0)
    }

    /// The request types with a weight above 0, in a stable order.
    pub fn active(&self) -> impl Iterator<Item = (RequestType, usize)> + '_ {
        self.weights
            .iter()
            .filter(|(_, w)| **w > 0)
            .map(|(t, w)| (*t, *w))
    }
}

/// The request body of a business: one of the hot businesses (a repeat, cacheable) or a new one.
/// `unique` must differ between calls that pick a new business (a counter is enough).
pub fn business(mix: &ClassifyMix, rng: &mut impl Rng, unique: u64) -> serde_json::Value {
    let repeat = mix.repeat_share > 0.0 && rng.random_bool(mix.repeat_share);
    if repeat {
        let i = rng.random_range(0..mix.hot_businesses);
        let (desc, country) = DESCRIPTIONS[i % DESCRIPTIONS.len()];
        serde_json::json!({
            "name": format!("Loadtest Business {i}"),
            "description": desc,
            "country": country,
            "website": format!("https://business-{i}.example.com"),
        })
    } else {
        let (desc, country) = DESCRIPTIONS[(unique as usize) % DESCRIPTIONS.len()];
        serde_json::json!({
            "name": format!("Loadtest New Business {unique:x}"),
            "description": format!("{desc} ({unique:x})"),
            "country": country,
            "website": format!("https://new-{unique:x}.example.com"),
        })
    }
}

/// Realistic descriptions so the classifier does real work (and different businesses land in different
/// industries).
const DESCRIPTIONS: [(&str, &str); 8] = [
    ("Family restaurant serving Italian food and pizza", "US"),
    ("Online retailer of running shoes and sports apparel", "GB"),
    ("Software consulting and custom web development", "DE"),
    ("Independent coffee shop and bakery", "US"),
    ("Auto repair garage, tyres and brake service", "FR"),
    (
        "Dental clinic offering general and cosmetic dentistry",
        "US",
    ),
    ("Boutique hotel with 40 rooms and a bar", "ES"),
    ("Freight trucking and logistics between warehouses", "NL"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn builtins_parse_and_validate() {
        for (name, _) in BUILTIN {
            let s = Scenario::load(name).unwrap();
            assert_eq!(s.name, name);
        }
        let mix = Scenario::load("kyb-mix").unwrap();
        assert_eq!(mix.weight(RequestType::Classify), 60);
        assert_eq!(mix.classify.repeat_share, 0.97);
        assert!(mix.seed_merchants_per_user > 0);
    }

    #[test]
    fn picks_follow_the_weights() {
        let mix = Scenario::load("kyb-mix").unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut counts = BTreeMap::new();
        for _ in 0..100_000 {
            *counts.entry(mix.pick(&mut rng)).or_insert(0usize) += 1;
        }
        for (t, w) in mix.active() {
            let share = counts[&t] as f64 / 100_000.0;
            let expected = w as f64 / 100.0;
            assert!(
                (share - expected).abs() < 0.01,
                "{t:?}: {share} vs {expected}"
            );
        }
        assert!(!counts.contains_key(&RequestType::Health));
    }

    #[test]
    fn a_4xx_fails_unless_the_scenario_expects_it() {
        let s = Scenario::parse(
            "name: x\nweights: {classify: 1}\nexpected_statuses: [404]\n",
            "x",
        )
        .unwrap();
        assert!(!s.fails(200) && !s.fails(201) && !s.fails(404));
        assert!(s.fails(400) && s.fails(422) && s.fails(500) && s.fails(503));
        let strict = Scenario::load("kyb-mix").unwrap();
        assert!(strict.fails(404));
    }

    #[test]
    fn invalid_scenarios_say_why() {
        let err = Scenario::parse("name: x\nweights: {classify: 0}\n", "x").unwrap_err();
        assert!(err.to_string().contains("no request type"), "{err}");
        let err = Scenario::parse("name: x\nweights: {merchant_read: 1}\n", "x").unwrap_err();
        assert!(err.to_string().contains("need merchants"), "{err}");
        let err = Scenario::parse(
            "name: x\nweights: {classify: 1}\nclassify: {repeat_share: 1.5}\n",
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("between 0 and 1"), "{err}");
        let err = Scenario::parse("name: x\nweights: {clasify: 1}\n", "x").unwrap_err();
        assert!(err.to_string().starts_with("invalid scenario x"), "{err}");
        let err = Scenario::parse(
            "name: x\nweights: {classify: 1}\nexpected_statuses: [503]\n",
            "x",
        )
        .unwrap_err();
        assert!(err.to_string().contains("only 4xx"), "{err}");
        assert!(matches!(
            Scenario::load("nope"),
            Err(ScenarioError::Unknown(_))
        ));
        assert!(matches!(
            Scenario::load("/no/such/file.yaml"),
            Err(ScenarioError::Read { .. })
        ));
    }

    #[test]
    fn repeat_share_controls_how_often_a_hot_business_comes_back() {
        let mix = ClassifyMix {
            repeat_share: 0.9,
            hot_businesses: 5,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let n = 10_000;
        let repeats = (0..n)
            .filter(|i| {
                business(&mix, &mut rng, *i)["name"]
                    .as_str()
                    .unwrap()
                    .starts_with("Loadtest Business ")
            })
            .count();
        let share = repeats as f64 / n as f64;
        assert!((0.88..0.92).contains(&share), "{share}");
        // The same hot business is the same body, byte for byte, so it hits the same cache key.
        let one = ClassifyMix {
            repeat_share: 1.0,
            hot_businesses: 1,
        };
        assert_eq!(business(&one, &mut rng, 1), business(&one, &mut rng, 2));
    }
}
