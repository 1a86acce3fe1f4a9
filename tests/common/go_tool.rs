//! Tools the tests build from their upstream Go modules (`tests/cluster/*/build`): the build script
//! prints the binary's path as its last line, and reuses a cached binary when there is one.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs the build script at `script` (relative to the crate) and returns the binary's path.
pub fn build(script: &str) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .expect("the binary's path")
        .trim()
        .into()
}
