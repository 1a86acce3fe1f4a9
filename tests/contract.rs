//! The OpenAPI document is the contract: schemathesis, driven only by the service's own
//! `/openapi.json`, sends every operation requests valid and invalid by the document (plus its
//! stateful phase, which follows the document's links from created merchants), and every check must
//! pass: answers the document lists, with its schemas and content types; valid requests accepted,
//! invalid ones refused; credentials required. Authentication is on, as in production.

mod common;

use std::time::Instant;

use common::{business, config, migrated_db, redis, Service};
use kybctl::service::auth::api_keys;
use kybctl::service::auth::scopes::Scope;
use serde_json::json;

/// tests/contract/install pins the version here and installs it outside the checkout.
const REQUIREMENTS: &str = include_str!("contract/requirements.txt");

/// `st`: `$KYB_SCHEMATHESIS` (tests/run sets it), else where tests/contract/install puts it.
fn schemathesis() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("KYB_SCHEMATHESIS") {
        return path.into();
    }
    let version = REQUIREMENTS
        .lines()
        .find_map(|l| l.strip_prefix("schemathesis=="))
        .expect("tests/contract/requirements.txt pins schemathesis");
    let tools = std::env::var_os("KYB_TOOLS_CACHE").map_or_else(
        || {
            std::path::Path::new(&std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/kybctl/tools")
        },
        Into::into,
    );
    tools.join(format!("schemathesis-{version}/bin/st"))
}

/// A few merchants, one with an assessment and a status change, so that listings, reports and the
/// audit trail answer with items for the response schemas to be checked against.
async fn seed(s: &Service, key: &str) {
    let auth = format!("Bearer {key}");
    for (name, what) in [
        ("Contract Bakery", "artisan bread and pastry bakery"),
        ("Contract Garage", "car repair and maintenance"),
        ("Contract Books", "independent bookstore"),
    ] {
        let r = s
            .http
            .post(s.url("/v1/merchants"))
            .header("authorization", &auth)
            .json(&business(name, what))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "seeding {name}");
        let id = r.json::<serde_json::Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let merchant = s.url(&format!("/v1/merchants/{id}"));
        let r = s
            .http
            .patch(&merchant)
            .header("authorization", &auth)
            .json(&json!({"status": "suspended"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "suspending {name}");
        let r = s
            .http
            .post(format!("{merchant}/risk-assessments"))
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "assessing {name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_keeps_its_openapi_contract() {
    let st = schemathesis();
    if !st.exists() {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        panic!(
            "{} is missing{}: run tests/run, or tests/contract/install, which installs it",
            st.display(),
            if ci { " in CI" } else { "" }
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let (key, entry) = api_keys::generate("contract", &Scope::ALL);
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, serde_yaml::to_string(&[entry]).unwrap()).unwrap();
    let mut cfg = config(&migrated_db().await, Some(&redis().url()));
    cfg.auth.insecure_no_auth = false;
    cfg.auth.api_key_files = vec![keys];
    let s = Service::start(cfg).await;
    seed(&s, &key).await;

    let started = Instant::now();
    let settings = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/schemathesis.toml"
    );
    let out = tokio::process::Command::new(&st)
        .env(
            "SCHEMATHESIS_HOOKS",
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contract/hooks.py"),
        )
        .args(["--config-file", settings, "--no-color", "run"])
        .arg(s.url("/openapi.json"))
        .args(["--checks", "all"])
        .args(["--header", &format!("Authorization: Bearer {key}")])
        // Any file it writes lands in the temporary directory, not in the checkout.
        .current_dir(dir.path())
        .output()
        .await
        .expect("run schemathesis");
    let (stdout, stderr) = common::text(&out);
    assert!(
        out.status.success(),
        "schemathesis found the service and its OpenAPI document disagreeing ({:?}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!(
        "schemathesis passed in {:.0?}:\n{stdout}",
        started.elapsed()
    );
}
