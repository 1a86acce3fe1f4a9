//! Risk scoring: a pure function of the merchant and its classification, so every level can be explained
//! by the factors that produced it.

use crate::service::model::{Merchant, MerchantStatus, RiskFactor, RiskLevel};

/// Card-network high-risk categories (money transfer, quasi-cash and crypto, gambling, adult and
/// telemarketing, dating, securities).
const HIGH_RISK_MCC: &[&str] = &[
    "4829", "5933", "5966", "5967", "6051", "6211", "7273", "7995",
];
/// Restricted but common categories (alcohol, tobacco, subscriptions, games, digital goods).
const ELEVATED_MCC: &[&str] = &["5816", "5921", "5968", "5993", "7994", "5122"];
/// NAICS industries with a regulatory money-laundering profile: gambling, money transmission and
/// check cashing, pawn shops, precious metals dealers.
const HIGH_RISK_NAICS_PREFIXES: &[&str] =
    &["7132", "522390", "522320", "458310", "423940", "459510"];
/// FATF "call for action" jurisdictions.
const FATF_BLACKLIST: &[&str] = &["KP", "IR", "MM"];
/// FATF jurisdictions under increased monitoring (a published snapshot; refresh with the list).
const FATF_GREYLIST: &[&str] = &[
    "AO", "BG", "BO", "BF", "CM", "CI", "CD", "DZ", "HT", "KE", "LA", "LB", "MC", "ML", "MZ", "NA",
    "NG", "NP", "SS", "SY", "TZ", "VE", "VG", "VN", "YE", "ZA",
];

pub struct Assessment {
    pub level: RiskLevel,
    pub score: f64,
    pub factors: Vec<RiskFactor>,
}

fn factor(code: &str, weight: f64, detail: String) -> RiskFactor {
    RiskFactor {
        code: code.to_owned(),
        weight,
        detail,
    }
}

/// A new assessment of `m` as of now, ready to store.
pub fn assessment(m: &Merchant) -> crate::service::model::RiskAssessment {
    let a = assess(m);
    crate::service::model::RiskAssessment {
        id: uuid::Uuid::now_v7(),
        business_id: m.id,
        risk_level: a.level,
        risk_score: a.score,
        factors: a.factors,
        assessment_date: chrono::Utc::now(),
    }
}

pub fn assess(m: &Merchant) -> Assessment {
    let mut factors = Vec::new();
    let c = m.classification.as_ref();
    let mcc = c
        .and_then(|c| c.mcc.as_deref())
        .or(m.business.declared_mcc.as_deref());
    if let Some(mcc) = mcc {
        if HIGH_RISK_MCC.contains(&mcc) {
            factors.push(factor(
                "high_risk_mcc",
                35.0,
                format!("MCC {mcc} is a high-risk category"),
            ));
        } else if ELEVATED_MCC.contains(&mcc) {
            factors.push(factor(
                "elevated_mcc",
                15.0,
                format!("MCC {mcc} is a restricted category"),
            ));
        }
    }
    if let Some(c) = c {
        if let Some(p) = HIGH_RISK_NAICS_PREFIXES
            .iter()
            .find(|p| c.naics_code.starts_with(*p))
        {
            factors.push(factor(
                "high_risk_industry",
                25.0,
                format!("NAICS {} ({}) falls under {p}", c.naics_code, c.naics_title),
            ));
        }
        if c.confidence < 0.3 {
            factors.push(factor(
                "uncertain_industry",
                15.0,
                format!(
                    "classification confidence {:.2} is below 0.30",
                    c.confidence
                ),
            ));
        } else if c.confidence < 0.6 {
            factors.push(factor(
                "weak_industry_match",
                8.0,
                format!(
                    "classification confidence {:.2} is below 0.60",
                    c.confidence
                ),
            ));
        }
        if let (Some(declared), Some(inferred)) =
            (m.business.declared_mcc.as_deref(), c.mcc.as_deref())
        {
            if declared != inferred {
                factors.push(factor(
                    "mcc_mismatch",
                    10.0,
                    format!("declared MCC {declared} differs from the inferred {inferred}"),
                ));
            }
        }
    } else {
        factors.push(factor(
            "unclassified",
            20.0,
            "no industry classification".into(),
        ));
    }
    match m.business.country.as_deref() {
        Some(cc) if FATF_BLACKLIST.contains(&cc) => factors.push(factor(
            "sanctioned_jurisdiction",
            60.0,
            format!("{cc} is on the FATF call-for-action list"),
        )),
        Some(cc) if FATF_GREYLIST.contains(&cc) => factors.push(factor(
            "monitored_jurisdiction",
            20.0,
            format!("{cc} is under FATF increased monitoring"),
        )),
        Some(_) => {}
        None => factors.push(factor(
            "unknown_jurisdiction",
            10.0,
            "country not given".into(),
        )),
    }
    if m.business
        .website
        .as_deref()
        .is_none_or(|w| w.trim().is_empty())
    {
        factors.push(factor("no_web_presence", 5.0, "no website given".into()));
    }
    if m.status == MerchantStatus::Suspended {
        factors.push(factor("suspended", 20.0, "merchant is suspended".into()));
    }
    let score = factors.iter().map(|f| f.weight).sum::<f64>().min(100.0);
    Assessment {
        level: level_for(score),
        score,
        factors,
    }
}

pub fn level_for(score: f64) -> RiskLevel {
    match score {
        s if s >= 70.0 => RiskLevel::Critical,
        s if s >= 45.0 => RiskLevel::High,
        s if s >= 20.0 => RiskLevel::Medium,
        _ => RiskLevel::Low,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{BusinessInput, Classification, Method};
    use chrono::Utc;
    use uuid::Uuid;

    fn merchant(
        country: Option<&str>,
        mcc: Option<&str>,
        naics: &str,
        confidence: f64,
    ) -> Merchant {
        Merchant {
            id: Uuid::nil(),
            business: BusinessInput {
                name: "x".into(),
                description: None,
                website: Some("example.com".into()),
                country: country.map(Into::into),
                declared_mcc: None,
            },
            status: MerchantStatus::Active,
            classification: Some(Classification {
                naics_code: naics.into(),
                naics_title: "t".into(),
                mcc: mcc.map(Into::into),
                mcc_description: None,
                confidence,
                method: Method::Keyword,
                matched_terms: vec![],
                alternatives: vec![],
            }),
            version: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn plain_bakery_is_low() {
        let a = assess(&merchant(Some("US"), Some("5462"), "311811", 0.9));
        assert_eq!(a.level, RiskLevel::Low);
        assert!(a.factors.is_empty());
    }

    #[test]
    fn casino_in_greylist_country_is_critical() {
        let a = assess(&merchant(Some("VN"), Some("7995"), "713210", 0.9));
        let codes: Vec<_> = a.factors.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(
            codes,
            [
                "high_risk_mcc",
                "high_risk_industry",
                "monitored_jurisdiction"
            ]
        );
        assert_eq!(a.score, 80.0);
        assert_eq!(a.level, RiskLevel::Critical);
    }

    #[test]
    fn sanctioned_country_alone_is_high() {
        let a = assess(&merchant(Some("KP"), None, "311811", 0.9));
        assert_eq!(a.level, RiskLevel::High);
    }

    #[test]
    fn mismatch_and_weak_match_add_up_to_medium() {
        let mut m = merchant(Some("US"), Some("5812"), "722511", 0.5);
        m.business.declared_mcc = Some("5814".into());
        let a = assess(&m);
        assert_eq!(a.score, 18.0);
        assert_eq!(a.level, RiskLevel::Low);
        m.business.website = None;
        assert_eq!(assess(&m).level, RiskLevel::Medium);
    }

    #[test]
    fn score_is_capped() {
        let mut m = merchant(Some("KP"), Some("7995"), "713210", 0.1);
        m.status = MerchantStatus::Suspended;
        m.business.website = None;
        let a = assess(&m);
        assert_eq!(a.score, 100.0);
        assert_eq!(a.level, RiskLevel::Critical);
    }

    #[test]
    fn thresholds() {
        assert_eq!(level_for(0.0), RiskLevel::Low);
        assert_eq!(level_for(19.9), RiskLevel::Low);
        assert_eq!(level_for(20.0), RiskLevel::Medium);
        assert_eq!(level_for(45.0), RiskLevel::High);
        assert_eq!(level_for(70.0), RiskLevel::Critical);
    }
}
