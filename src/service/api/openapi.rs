//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::OpenApi;

use super::{classifications, error, health, merchants, reports, risk_assessments};
use crate::classify;
use crate::service::model;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "KYB API",
        description = "Business classification, merchants and risk assessments."
    ),
    paths(
        classifications::create,
        merchants::create,
        merchants::get,
        merchants::update,
        merchants::list,
        merchants::status_changes,
        risk_assessments::create,
        risk_assessments::list,
        reports::industries,
        health::health,
        health::ready,
    ),
    components(schemas(
        classify::BusinessInput,
        classify::Classification,
        classify::Alternative,
        classify::Method,
        model::Merchant,
        model::MerchantStatus,
        model::NewMerchant,
        model::MerchantPatch,
        model::MerchantPage,
        model::RiskAssessment,
        model::RiskAssessmentList,
        model::RiskFactor,
        model::RiskLevel,
        model::StatusChange,
        model::StatusChangeList,
        reports::IndustryCount,
        error::Problem,
    ))
)]
pub struct ApiDoc;

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}
