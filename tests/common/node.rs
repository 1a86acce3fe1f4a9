//! What tests on the real node need (see `tests/cluster/real-node.sh`): the `kybctl` image built from
//! this build's binary and imported into the node's containerd, and a PostgreSQL its pods can reach on
//! the bridge's host address.
#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kybctl::local::TempPostgres;

/// The node's address on its bridge: pods reach this machine's services here.
pub const NODE_IP: &str = "198.18.0.1";
/// The image tests run; `imagePullPolicy: Never` (there is no registry).
pub const IMAGE: &str = "kybctl.local/kybctl:test";
/// Pod spec lines that put a pod on the real node (indented for `spec:` of a Pod).
pub const ON_REAL_NODE: &str = "  nodeSelector: {kyb.io/real-node: \"true\"}\n  tolerations: [{key: kyb.io/real-node, operator: Exists}]\n";

fn cluster_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cluster")
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image of this build's `kybctl`, imported into the node's containerd once per test binary.
pub fn kybctl_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| import(Path::new(env!("CARGO_BIN_EXE_kybctl")), IMAGE));
    IMAGE
}

/// The next release the zero-loss tests roll out: this build's binary with one more expand migration
/// (`tests/fixtures/next_release.rs`, built here when `cargo test` did not build examples).
pub const NEXT_IMAGE: &str = "kybctl.local/kybctl:next";
/// The version of the next release's extra migration.
pub const NEXT_MIGRATION: i64 = 20301201000001;

pub fn next_release_image() -> &'static str {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let kybctl = Path::new(env!("CARGO_BIN_EXE_kybctl"));
        let next = kybctl.parent().unwrap().join("examples/next_release");
        let stale = |p: &Path| {
            let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
            modified(p) < modified(kybctl)
        };
        if stale(&next) {
            run(
                Command::new(env!("CARGO"))
                    .args(["build", "--example", "next_release"])
                    .current_dir(env!("CARGO_MANIFEST_DIR")),
                "cargo build --example next_release",
            );
        }
        import(&next, NEXT_IMAGE);
    });
    NEXT_IMAGE
}

/// Packs `binary` as the release image does (stripped at /usr/local/bin/kybctl, the shared libraries
/// it links at the paths ldd resolves them to, a passwd entry for uid 65532) and imports it as `name`.
/// `tests/cluster/kybctl-image` (the Dockerfile's layout, built without an engine), imported into the
/// node's containerd as `name`.
fn import(binary: &Path, name: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let archive = dir.path().join("image.tar");
    run(
        Command::new(cluster_dir().join("kybctl-image"))
            .arg(binary)
            .arg(name)
            .arg(&archive),
        "kybctl-image",
    );
    let _ = ctr().args(["images", "rm", name]).output();
    run(
        ctr().args(["images", "import"]).arg(&archive),
        "ctr images import",
    );
}

fn ctr() -> Command {
    let bin = Command::new(cluster_dir().join("build"))
        .arg("--print")
        .output()
        .expect("tests/cluster/build --print");
    let bin = String::from_utf8_lossy(&bin.stdout).trim().to_owned();
    let mut cmd = Command::new(Path::new(&bin).join("ctr"));
    cmd.args([
        "--address",
        "/run/kybctl-node/containerd.sock",
        "-n",
        "k8s.io",
    ]);
    cmd
}

/// A PostgreSQL that the node's pods reach at `NODE_IP:port` (trust authentication: test only).
pub fn postgres_for_pods() -> TempPostgres {
    TempPostgres::start_with_hba(
        &[&format!("listen_addresses=127.0.0.1,{NODE_IP}")],
        Some("local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all 198.18.0.0/16 trust\nhost replication all 127.0.0.1/32 trust\n"),
    )
    .expect("PostgreSQL for the real node's pods")
}

/// `url` (on 127.0.0.1) as the node's pods reach it.
pub fn from_pods(url: &str) -> String {
    url.replace("127.0.0.1", NODE_IP)
}
