//! The API's resources, shared by the HTTP layer, the queries and the cache (as serialised JSON).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::classify::{fields, BusinessInput, Classification};
use crate::db_row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MerchantStatus {
    Pending,
    Active,
    Suspended,
    Closed,
}

impl MerchantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Suspended => "suspended",
            Self::Closed => "closed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "active" => Self::Active,
            "suspended" => Self::Suspended,
            "closed" => Self::Closed,
            _ => return None,
        })
    }
}

db_row::text_enum!(MerchantStatus);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Merchant {
    pub id: Uuid,
    /// Name, description, website, country (ISO 3166-1 alpha-2) and declared MCC: what it is
    /// classified from.
    #[serde(flatten)]
    pub business: BusinessInput,
    pub status: MerchantStatus,
    /// The active classification.
    pub classification: Option<Classification>,
    /// Incremented by every update; send it back in `If-Match` to update safely.
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// The answer to `POST /v1/merchants?async=true` (202): the merchant as stored, not classified yet,
/// and the job that classifies it (also at `Location`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AcceptedMerchant {
    pub merchant: Merchant,
    pub job: crate::jobs::queue::JobView,
}

/// The body of `POST /v1/merchants`: the business, and optionally the status it starts in.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(try_from = "NewMerchantBody")]
pub struct NewMerchant {
    #[serde(flatten)]
    pub business: BusinessInput,
    #[serde(default)]
    pub status: Option<MerchantStatus>,
}

/// What [`NewMerchant`] is read through. serde cannot reject unknown fields through `flatten`, so
/// the fields neither part takes are collected here and refused, as `deny_unknown_fields` would.
#[derive(Deserialize)]
struct NewMerchantBody {
    #[serde(flatten)]
    business: BusinessInput,
    #[serde(default)]
    status: Option<MerchantStatus>,
    #[serde(flatten)]
    unknown: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

impl TryFrom<NewMerchantBody> for NewMerchant {
    type Error = String;

    fn try_from(b: NewMerchantBody) -> Result<Self, String> {
        match b.unknown.keys().next() {
            Some(field) => Err(format!(
                "unknown field `{field}`, expected one of `name`, `description`, `website`, \
                 `country`, `declared_mcc`, `status`"
            )),
            None => Ok(Self {
                business: b.business,
                status: b.status,
            }),
        }
    }
}

/// Fields to change; absent fields stay. `null` clears an optional field.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MerchantPatch {
    #[schema(schema_with = fields::name_or_null)]
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = fields::description)]
    pub description: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = fields::website)]
    pub website: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = fields::country)]
    pub country: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(schema_with = fields::declared_mcc)]
    pub declared_mcc: Option<Option<String>>,
    pub status: Option<MerchantStatus>,
}

impl MerchantPatch {
    /// The merchant as it will be after the patch (business fields only).
    pub fn apply_to(&self, current: &BusinessInput) -> BusinessInput {
        BusinessInput {
            name: self.name.clone().unwrap_or_else(|| current.name.clone()),
            description: pick(&self.description, &current.description),
            website: pick(&self.website, &current.website),
            country: pick(&self.country, &current.country),
            declared_mcc: pick(&self.declared_mcc, &current.declared_mcc),
        }
    }
}

fn pick(patch: &Option<Option<String>>, current: &Option<String>) -> Option<String> {
    match patch {
        Some(v) => v.clone(),
        None => current.clone(),
    }
}

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MerchantPage {
    pub items: Vec<Merchant>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
    Critical,
}

impl RiskLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Medium => "medium",
            Self::High => "high",
            Self::Critical => "critical",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "low" => Self::Low,
            "medium" => Self::Medium,
            "high" => Self::High,
            "critical" => Self::Critical,
            _ => return None,
        })
    }
}

db_row::text_enum!(RiskLevel);

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RiskFactor {
    /// Stable machine-readable name, e.g. `high_risk_mcc`.
    pub code: String,
    /// Points this factor added to the score.
    pub weight: f64,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct RiskAssessment {
    pub id: Uuid,
    pub business_id: Uuid,
    pub risk_level: RiskLevel,
    /// Sum of the factors' weights, 0 to 100.
    pub risk_score: f64,
    pub factors: Vec<RiskFactor>,
    pub assessment_date: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RiskAssessmentList {
    pub items: Vec<RiskAssessment>,
}

/// One status change of a merchant, from the audit trail.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusChange {
    pub from_status: MerchantStatus,
    pub to_status: MerchantStatus,
    pub from_version: i32,
    pub to_version: i32,
    /// Who made it: `api-key:<client>`, `jwt:<client>`, or `anonymous:anonymous` when the service
    /// ran without authentication.
    pub actor: String,
    pub request_id: Option<String>,
    pub changed_at: DateTime<Utc>,
}

db_row::from_row!(StatusChange {
    from_status,
    to_status,
    from_version,
    to_version,
    actor,
    request_id,
    changed_at,
});

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusChangeList {
    /// Newest first.
    pub items: Vec<StatusChange>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value's stored name is its JSON name and reads back as the same value.
    fn names_round_trip<T: Serialize + Copy + PartialEq + std::fmt::Debug>(
        all: &[T],
        as_str: fn(T) -> &'static str,
        parse: fn(&str) -> Option<T>,
    ) {
        for &v in all {
            assert_eq!(serde_json::to_value(v).unwrap(), as_str(v));
            assert_eq!(parse(as_str(v)), Some(v));
        }
    }

    /// The database stores the API's names: one spelling per value, read back as it was written.
    #[test]
    fn stored_names_are_the_json_names() {
        use MerchantStatus::*;
        use RiskLevel::*;
        names_round_trip(
            &[Pending, Active, Suspended, Closed],
            MerchantStatus::as_str,
            MerchantStatus::parse,
        );
        names_round_trip(
            &[Low, Medium, High, Critical],
            RiskLevel::as_str,
            RiskLevel::parse,
        );
        assert_eq!(MerchantStatus::parse("Active"), None);
        assert_eq!(RiskLevel::parse(""), None);
    }
}
