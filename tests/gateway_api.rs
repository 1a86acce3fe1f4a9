//! The Gateway API standard-channel CRDs (upstream `sigs.k8s.io/gateway-api`, downloaded by
//! `tests/cluster/upstream-crds gateway-api`) install into the test control plane, and an HTTPRoute splitting
//! traffic between two Services is accepted, defaulted and read back through kube-rs `DynamicObject`.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/gateway.rs"]
mod gateway;
#[path = "common/upstream.rs"]
mod upstream;

use cluster::{check, cluster};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

/// An HTTPRoute in `ns` sending `weights.0` to Service `web` and `weights.1` to Service `web-canary`.
fn route(ns: &str, name: &str, weights: (u32, u32)) -> DynamicObject {
    DynamicObject::new(name, &gateway::httproute_resource())
        .within(ns)
        .data(json!({
            "spec": {
                "rules": [{
                    "backendRefs": [
                        { "name": "web", "port": 80, "weight": weights.0 },
                        { "name": "web-canary", "port": 80, "weight": weights.1 },
                    ],
                }],
            },
        }))
}

/// `(name, weight)` of every backendRef of the route's first rule.
fn backends(route: &DynamicObject) -> Vec<(String, u64)> {
    route.data["spec"]["rules"][0]["backendRefs"]
        .as_array()
        .unwrap_or_else(|| panic!("no backendRefs in {:#}", route.data))
        .iter()
        .map(|b| {
            (
                b["name"].as_str().expect("backendRef name").to_string(),
                b["weight"].as_u64().expect("backendRef weight"),
            )
        })
        .collect()
}

#[tokio::test]
async fn standard_crds_install_and_an_httproute_round_trips() {
    gateway::install_gateway_api_crds().await;
    // A second call (any test of this process) is a no-op.
    gateway::install_gateway_api_crds().await;
    let c = cluster().await;

    // Every standard-channel CRD is served, at the pinned bundle version.
    let names = gateway::crd_names();
    for kind in [
        "gatewayclasses",
        "gateways",
        "httproutes",
        "grpcroutes",
        "referencegrants",
    ] {
        assert!(
            names.contains(&format!("{kind}.{}", gateway::GROUP)),
            "{kind} missing from {names:?}"
        );
    }
    let version = check(c.kubectl().args([
        "get",
        "crd",
        gateway::HTTPROUTE_CRD,
        "-o",
        "jsonpath={.metadata.annotations.gateway\\.networking\\.k8s\\.io/bundle-version} \
         {.metadata.annotations.gateway\\.networking\\.k8s\\.io/channel}",
    ]));
    // The version pinned in tests/cluster/upstream-crds (`.../gateway-api@v1.6.3/config/...`).
    let dir = gateway::crds_dir();
    let pinned = dir
        .ancestors()
        .find_map(|d| d.file_name()?.to_str()?.strip_prefix("gateway-api@"))
        .expect("module version in the CRD directory");
    assert_eq!(version.trim(), format!("{pinned} standard"));

    let ns = c.namespace("gateway-api").await;
    let routes: Api<DynamicObject> =
        Api::namespaced_with(c.client().await, &ns, &gateway::httproute_resource());
    routes
        .create(&PostParams::default(), &route(&ns, "web", (100, 0)))
        .await
        .unwrap_or_else(|e| panic!("create HTTPRoute web in {ns}: {e}"));

    let got = routes.get("web").await.expect("read the HTTPRoute back");
    assert_eq!(
        got.types
            .as_ref()
            .map(|t| (t.api_version.as_str(), t.kind.as_str())),
        Some(("gateway.networking.k8s.io/v1", "HTTPRoute"))
    );
    assert_eq!(
        backends(&got),
        [("web".to_string(), 100), ("web-canary".to_string(), 0)]
    );
    // The CRD's defaults were applied: a core Service reference and a match on every path.
    let first = &got.data["spec"]["rules"][0];
    assert_eq!(first["backendRefs"][1]["kind"], "Service");
    assert_eq!(first["backendRefs"][1]["group"], "");
    assert_eq!(
        first["matches"],
        json!([{ "path": { "type": "PathPrefix", "value": "/" } }])
    );

    // kubectl sees the same object.
    let weights = check(c.kubectl().args([
        "get",
        "httproute",
        "web",
        "-n",
        &ns,
        "-o",
        "jsonpath={.spec.rules[0].backendRefs[*].weight}",
    ]));
    assert_eq!(weights.trim(), "100 0");
}

/// `spec.rules` and `spec.rules[].backendRefs` are `x-kubernetes-list-type: atomic`: a server-side
/// apply owns the whole list, so shifting weights replaces it, and another field manager applying
/// different weights conflicts on `.spec.rules` as a whole until it forces.
#[tokio::test]
async fn server_side_apply_of_weights_owns_the_whole_rules_list() {
    gateway::install_gateway_api_crds().await;
    let c = cluster().await;
    let ns = c.namespace("gateway-ssa").await;
    let routes: Api<DynamicObject> =
        Api::namespaced_with(c.client().await, &ns, &gateway::httproute_resource());
    let apply = |manager: &str, force: bool| {
        let mut pp = PatchParams::apply(manager);
        pp.force = force;
        pp
    };

    routes
        .patch(
            "web",
            &apply("kybctl-test", false),
            &Patch::Apply(route(&ns, "web", (100, 0))),
        )
        .await
        .expect("apply HTTPRoute 100/0");
    let got = routes
        .patch(
            "web",
            &apply("kybctl-test", false),
            &Patch::Apply(route(&ns, "web", (90, 10))),
        )
        .await
        .expect("apply HTTPRoute 90/10");
    assert_eq!(
        backends(&got),
        [("web".to_string(), 90), ("web-canary".to_string(), 10)]
    );

    let err = routes
        .patch(
            "web",
            &apply("someone-else", false),
            &Patch::Apply(route(&ns, "web", (50, 50))),
        )
        .await
        .expect_err("a second manager changing the weights must conflict");
    let kube::Error::Api(status) = &err else {
        panic!("expected an API error, got {err}");
    };
    assert_eq!(status.code, 409, "{status:?}");
    assert!(status.message.contains(".spec.rules"), "{}", status.message);

    let got = routes
        .patch(
            "web",
            &apply("someone-else", true),
            &Patch::Apply(route(&ns, "web", (50, 50))),
        )
        .await
        .expect("forced apply 50/50");
    assert_eq!(
        backends(&got),
        [("web".to_string(), 50), ("web-canary".to_string(), 50)]
    );
    // The forced apply took `.spec.rules` (the atomic list) away from the first manager entirely.
    let managed: Value = serde_json::to_value(&got.metadata.managed_fields).expect("managedFields");
    let owners: Vec<&str> = managed
        .as_array()
        .expect("managedFields list")
        .iter()
        .filter(|m| m["fieldsV1"]["f:spec"]["f:rules"].is_object())
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert_eq!(owners, ["someone-else"], "{managed:#}");
}
