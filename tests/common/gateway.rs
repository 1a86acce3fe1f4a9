//! Gateway API standard-channel CRDs (HTTPRoute, Gateway, GatewayClass, GRPCRoute, ReferenceGrant,
//! BackendTLSPolicy, ...) in the test control plane, from the upstream Go module `sigs.k8s.io/gateway-api`
//! (version pinned in `tests/cluster/upstream-crds`, which downloads it into the Go module cache and
//! prints the directory of the YAML; nothing of it is committed; see `upstream.rs`).
//!
//! Include it next to the cluster harness:
//!
//! ```ignore
//! #[path = "common/cluster.rs"]
//! mod cluster;
//! #[path = "common/upstream.rs"]
//! mod upstream;
//! #[path = "common/gateway.rs"]
//! mod gateway;
//! ```
#![allow(dead_code)] // each test binary uses a different part

use std::path::PathBuf;

use kube::api::{ApiResource, GroupVersionKind};
use tokio::sync::OnceCell;

use crate::cluster::{cluster, Cluster};

pub const GROUP: &str = "gateway.networking.k8s.io";
/// The CRD that [`install_gateway_api_crds`] waits for at least (it waits for every CRD it applied).
pub const HTTPROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";

/// `gateway.networking.k8s.io/v1` HTTPRoute, for `Api::<DynamicObject>::namespaced_with`.
pub fn httproute_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(GROUP, "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// The directory with the standard-channel YAML (in the Go module cache).
pub fn crds_dir() -> PathBuf {
    crate::upstream::crds_dir("gateway-api")
}

/// Names (`<plural>.gateway.networking.k8s.io`) of the CRDs in [`crds_dir`]. Upstream names each file
/// `gateway.networking.k8s.io_<plural>.yaml`; the directory also holds a ValidatingAdmissionPolicy
/// (`..._vap_safeupgrades.yaml`), which is applied too but is no CRD.
pub fn crd_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(crds_dir())
        .unwrap_or_else(|e| panic!("{}: {e}", crds_dir().display()))
        .filter_map(|entry| {
            let file = entry.ok()?.file_name().into_string().ok()?;
            let plural = file
                .strip_prefix(&format!("{GROUP}_"))?
                .strip_suffix(".yaml")?;
            (!plural.starts_with("vap_")).then(|| format!("{plural}.{GROUP}"))
        })
        .collect();
    names.sort();
    assert!(
        names.iter().any(|n| n == HTTPROUTE_CRD),
        "no HTTPRoute CRD in {}: {names:?}",
        crds_dir().display()
    );
    names
}

/// Installs the Gateway API standard channel into the test control plane (once per test process; later
/// calls return at once) and waits until every CRD, HTTPRoute included, is Established.
///
/// Server-side apply (`--force-conflicts`): the HTTPRoute CRD (~430 KB) is too large for client-side
/// apply's last-applied annotation, and re-applying is a no-op, so test processes sharing a control plane,
/// or a control plane that already has (another version of) the CRDs, end up with the pinned version.
pub async fn install_gateway_api_crds() {
    static INSTALLED: OnceCell<()> = OnceCell::const_new();
    INSTALLED
        .get_or_init(|| async {
            let c: &'static Cluster = cluster().await;
            tokio::task::spawn_blocking(move || install(c))
                .await
                .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        })
        .await;
}

fn install(c: &Cluster) {
    crate::upstream::install(c, "gateway-api", &[], &crd_names());
}
