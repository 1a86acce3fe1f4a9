//! Gateway API standard-channel CRDs (HTTPRoute, Gateway, GatewayClass, GRPCRoute, ReferenceGrant,
//! BackendTLSPolicy, ...) in the test control plane, from the upstream Go module `sigs.k8s.io/gateway-api`
//! (version pinned in `tests/cluster/gateway-api-crds`, which downloads it into the Go module cache and
//! prints the directory of the YAML; nothing of it is committed).
//!
//! Include it next to the cluster harness:
//!
//! ```ignore
//! #[path = "common/cluster.rs"]
//! mod cluster;
//! #[path = "common/gateway.rs"]
//! mod gateway;
//! ```
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use kube::api::{ApiResource, GroupVersionKind};
use tokio::sync::OnceCell;

use crate::cluster::{check, cluster, Cluster};

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

/// Path of `tests/cluster/gateway-api-crds`.
pub fn crds_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/gateway-api-crds")
}

/// The directory with the standard-channel YAML (in the Go module cache). Runs the script once per test
/// process; panics with its stderr when it fails (e.g. the module proxy cannot be reached).
pub fn crds_dir() -> &'static Path {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let out = Command::new(crds_script())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", crds_script().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            return Err(format!(
                "{} failed ({})\nstdout: {stdout}\nstderr: {stderr}",
                crds_script().display(),
                out.status
            ));
        }
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        if !dir.is_dir() {
            return Err(format!(
                "{} printed no directory\nstdout: {stdout}\nstderr: {stderr}",
                crds_script().display()
            ));
        }
        Ok(dir)
    });
    match dir {
        Ok(dir) => dir,
        Err(e) => panic!("the Gateway API CRDs are not available:\n{e}"),
    }
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
    let start = Instant::now();
    let dir = crds_dir();
    let fetched = start.elapsed();
    check(
        c.kubectl()
            .args(["apply", "--server-side", "--force-conflicts"])
            .args([
                "--field-manager=kybctl-tests-gateway-api",
                "-f",
                dir.to_str().expect("UTF-8 path"),
            ]),
    );
    let applied = start.elapsed();
    let crds: Vec<String> = crd_names().iter().map(|n| format!("crd/{n}")).collect();
    check(
        c.kubectl()
            .args(["wait", "--for=condition=Established", "--timeout=60s"])
            .args(&crds),
    );
    eprintln!(
        "gateway: installed {} Gateway API CRDs from {} in {:.1?} (script {fetched:.1?}, apply {:.1?}, \
         Established {:.1?})",
        crds.len(),
        dir.display(),
        start.elapsed(),
        applied - fetched,
        start.elapsed() - applied,
    );
}
