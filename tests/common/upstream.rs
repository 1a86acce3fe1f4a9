//! Upstream projects' CRDs in the test control plane, from their Go modules: `tests/cluster/upstream-crds
//! NAME` pins each version, downloads it into the Go module cache and prints the directory of the YAML
//! (nothing of it is committed). Used by `gateway.rs` (Gateway API) and the KEDA tests.
//!
//! Include it next to the cluster harness:
//!
//! ```ignore
//! #[path = "common/cluster.rs"]
//! mod cluster;
//! #[path = "common/upstream.rs"]
//! mod upstream;
//! ```
#![allow(dead_code)] // each test binary uses a different part

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::cluster::{check, cluster, wait_established, Cluster};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster/upstream-crds")
}

/// The directory with `name`'s CRD YAML (in the Go module cache). Runs the script once per name and
/// test process; panics with its stderr when it fails (e.g. the module proxy cannot be reached).
pub fn crds_dir(name: &str) -> PathBuf {
    static DIRS: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let mut dirs = DIRS.get_or_init(Default::default).lock().unwrap();
    let dir = dirs.entry(name.to_owned()).or_insert_with(|| {
        let out = Command::new(script())
            .arg(name)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        if !out.status.success() || !dir.is_dir() {
            return Err(format!(
                "{} {name} failed ({})\nstdout: {stdout}\nstderr: {stderr}",
                script().display(),
                out.status
            ));
        }
        Ok(dir)
    });
    match dir {
        Ok(dir) => dir.clone(),
        Err(e) => panic!("the {name} CRDs are not available:\n{e}"),
    }
}

/// Applies `files` of `name`'s CRD directory (all of it when empty) to the test control plane and waits
/// until each of `crds` (`<plural>.<group>`) is Established.
///
/// Server-side apply (`--force-conflicts`): some CRDs (HTTPRoute, ~430 KB) are too large for
/// client-side apply's last-applied annotation, and re-applying is a no-op, so test processes sharing a
/// control plane, or a control plane that already has (another version of) the CRDs, end up with the
/// pinned version.
pub fn install(c: &Cluster, name: &str, files: &[&str], crds: &[String]) {
    let start = Instant::now();
    let dir = crds_dir(name);
    let fetched = start.elapsed();
    let paths: Vec<String> = if files.is_empty() {
        vec![dir.to_str().expect("UTF-8 path").to_owned()]
    } else {
        files
            .iter()
            .map(|f| dir.join(f).to_str().expect("UTF-8 path").to_owned())
            .collect()
    };
    let mut apply = c.kubectl();
    apply
        .args(["apply", "--server-side", "--force-conflicts"])
        .arg(format!("--field-manager=kybctl-tests-{name}"));
    for p in &paths {
        apply.args(["-f", p]);
    }
    check(&mut apply);
    let applied = start.elapsed();
    let crds: Vec<String> = crds.iter().map(|n| format!("crd/{n}")).collect();
    wait_established(c, &crds);
    eprintln!(
        "upstream: installed {} {name} CRDs from {} in {:.1?} (script {fetched:.1?}, apply {:.1?}, \
         Established {:.1?})",
        crds.len(),
        dir.display(),
        start.elapsed(),
        applied - fetched,
        start.elapsed() - applied,
    );
}

/// Deletes CRDs `crds` (and so every object of them) and waits until they are gone.
pub async fn uninstall(crds: &[&str]) {
    let c = cluster().await;
    let mut delete = c.kubectl();
    delete.args([
        "delete",
        "crd",
        "--ignore-not-found",
        "--wait=true",
        "--timeout=60s",
    ]);
    delete.args(crds);
    check(&mut delete);
}
