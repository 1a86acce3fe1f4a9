//! The OpenAPI document, generated from the handlers' annotations.

use std::collections::BTreeMap;

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{AdditionalProperties, Object, Schema, Type};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{Content, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use super::{classifications, error, health, imports, jobs, merchants, reports, risk_assessments};
use crate::classify;
use crate::service::model;

#[derive(OpenApi)]
#[openapi(
    modifiers(&Contract),
    info(
        title = "KYB API",
        description = "Business classification, merchants and risk assessments."
    ),
    paths(
        classifications::create,
        merchants::create,
        imports::import,
        merchants::get,
        merchants::update,
        merchants::list,
        merchants::status_changes,
        risk_assessments::create,
        risk_assessments::list,
        reports::industries,
        jobs::get,
        health::health,
        health::ready,
    ),
    components(schemas(
        imports::ImportResult,
        imports::ImportedLine,
        imports::FailedLine,
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
        crate::jobs::queue::JobView,
        model::AcceptedMerchant,
        error::Problem,
    ))
)]
pub struct ApiDoc;

/// What every route can answer besides what its handler documents, and how callers authenticate:
/// added to the document here once, so it cannot drift from the middleware that produces them.
struct Contract;

fn problem(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                Content::new(Some(Ref::from_schema_name("Problem"))),
            )
            .build(),
    )
}

/// Adds each answer the shared layers can give, unless the handler documented it itself.
fn add_answers(op: &mut Operation, public: bool) {
    let has_body = op.request_body.is_some();
    let has_input = has_body || op.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let mut answers = vec![(
        "503",
        "A dependency (database, issuer's keys) is unavailable, or the request timed out; retry after Retry-After",
    )];
    if has_input {
        answers.push(("400", "Malformed request: an invalid id, query or JSON"));
    }
    if has_body {
        answers.extend([
            ("413", "Request body larger than the limit"),
            ("415", "Content-Type is not application/json"),
            (
                "422",
                "A field is missing, unknown, of the wrong type or invalid",
            ),
        ]);
    }
    if !public {
        answers.extend([
            (
                "401",
                "No credentials, or ones that do not check out (WWW-Authenticate says which)",
            ),
            ("403", "The credentials lack the scope this needs"),
            (
                "429",
                "This client is over its rate limit; retry after Retry-After",
            ),
        ]);
        op.security = Some(vec![
            SecurityRequirement::new("bearer", Vec::<String>::new()),
            SecurityRequirement::new("apiKey", Vec::<String>::new()),
        ]);
    }
    for (code, why) in answers {
        op.responses
            .responses
            .entry(code.to_owned())
            .or_insert_with(|| problem(why));
    }
}

/// serde's `flatten` comes out of utoipa as `allOf` of the flattened type and the struct's own fields.
/// A flattened type that refuses unknown fields (`BusinessInput`) has `additionalProperties: false`,
/// under which no object satisfies the `allOf` (each part refuses the other's fields): each such
/// schema becomes the one object serde reads and writes, closed when a part is. A schema with a part
/// that is not an object is left as it is (the test below says when that happens).
fn merge_all_of(schemas: &mut BTreeMap<String, RefOr<Schema>>) {
    let part = |schemas: &BTreeMap<String, RefOr<Schema>>, p: &RefOr<Schema>| -> Option<Object> {
        let schema = match p {
            RefOr::T(s) => s,
            RefOr::Ref(r) => {
                match schemas.get(r.ref_location.strip_prefix("#/components/schemas/")?)? {
                    RefOr::T(s) => s,
                    RefOr::Ref(_) => return None,
                }
            }
        };
        match schema {
            Schema::Object(o) => Some(o.clone()),
            _ => None,
        }
    };
    let mut merged = Vec::new();
    for (name, schema) in schemas.iter() {
        let RefOr::T(Schema::AllOf(all)) = schema else {
            continue;
        };
        let Some(parts) = all
            .items
            .iter()
            .map(|p| part(schemas, p))
            .collect::<Option<Vec<Object>>>()
        else {
            continue;
        };
        let mut object = Object::with_type(Type::Object);
        object.description = all.description.clone();
        for p in parts {
            object.properties.extend(p.properties);
            object.required.extend(p.required);
            if matches!(
                p.additional_properties.as_deref(),
                Some(AdditionalProperties::FreeForm(false))
            ) {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
        merged.push((name.clone(), object));
    }
    for (name, object) in merged {
        schemas.insert(name, RefOr::T(Schema::Object(object)));
    }
}

impl Modify for Contract {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        merge_all_of(&mut components.schemas);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An OIDC access token (JWT) or an API key (kyb_...)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
        bound_import_lines(doc);
        for (path, item) in doc.paths.paths.iter_mut() {
            let public = !path.starts_with("/v1/");
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_answers(op, public);
            }
        }
    }
}

/// The import's lines as an array of 1 to [`imports::MAX_LINES`]: utoipa's `request_body` takes no
/// bounds for a `Vec`, and a fuzzer must know an empty or oversized import is refused.
fn bound_import_lines(doc: &mut utoipa::openapi::OpenApi) {
    let body = doc
        .paths
        .paths
        .get_mut("/v1/merchants:import")
        .and_then(|item| item.post.as_mut())
        .and_then(|op| op.request_body.as_mut());
    for content in body.into_iter().flat_map(|b| b.content.values_mut()) {
        if let Some(RefOr::T(Schema::Array(lines))) = content.schema.as_mut() {
            lines.min_items = Some(1);
            lines.max_items = Some(imports::MAX_LINES);
        }
    }
}

pub async fn document() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_lists_what_the_shared_layers_answer() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
        let mut checked = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let codes = op["responses"].as_object().unwrap();
                let has = |c: &str| codes.contains_key(c);
                assert!(has("503"), "{method} {path}");
                let input = op.get("requestBody").is_some()
                    || op
                        .get("parameters")
                        .is_some_and(|p| !p.as_array().unwrap().is_empty());
                assert_eq!(has("400"), input, "{method} {path}");
                if path.starts_with("/v1/") {
                    assert!(has("401") && has("403") && has("429"), "{method} {path}");
                    assert!(op["security"].is_array(), "{method} {path}");
                } else {
                    assert!(!has("401"), "{method} {path} is public");
                }
                if op.get("requestBody").is_some() {
                    assert!(has("413") && has("415") && has("422"), "{method} {path}");
                }
                checked += 1;
            }
        }
        assert!(checked >= 11, "{checked} operations");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for (name, schema) in schemas {
            assert!(schema.get("allOf").is_none(), "{name} is still an allOf");
        }
        // Creation takes the business fields and `status`, and nothing else.
        let new = &schemas["NewMerchant"];
        assert_eq!(new["additionalProperties"], false);
        assert_eq!(new["required"], serde_json::json!(["name"]));
        for field in ["name", "country", "declared_mcc", "status"] {
            assert!(new["properties"].get(field).is_some(), "{field}");
        }
        assert!(schemas["Merchant"]["properties"].get("version").is_some());
        let lines = &doc["paths"]["/v1/merchants:import"]["post"]["requestBody"]["content"]
            ["application/x-ndjson"]["schema"];
        assert_eq!(
            (&lines["minItems"], &lines["maxItems"]),
            (
                &serde_json::json!(1),
                &serde_json::json!(imports::MAX_LINES)
            ),
            "{lines}"
        );
        assert!(
            doc["paths"].get("/metrics").is_none(),
            "not on the API port"
        );
    }
}
