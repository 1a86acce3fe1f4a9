//! What `kybctl rollout promote|abort|retry` ask of the operator. A command is an annotation on the
//! KybPlatform (so a user who may only patch KybPlatforms can give it, and `kubectl annotate` works
//! too) whose value names exactly what it applies to: the canary revision, and for `promote` the step
//! it promotes from. The operator acts on a command only while its target is current, so repeating one
//! is a no-op, never a second step.

use std::collections::BTreeMap;

use crate::operator::crd::AbortStatus;

/// `<revision>:<step>` promotes past that step; `<revision>:full` skips every remaining step.
pub const PROMOTE: &str = "kyb.io/promote";
/// `<revision>`: abort the rollout of that revision.
pub const ABORT: &str = "kyb.io/abort";
/// The value of [`retry_token`] of the abort to undo: start that revision's rollout again.
pub const RETRY: &str = "kyb.io/retry";
/// On each revision's Deployment: the KybPlatform spec fields that made it (JSON), for `undo`.
pub const REVISION_SPEC: &str = "kyb.io/revision-spec";
/// On each revision's Deployment: its number (1, 2, ...), as `kybctl rollout history` lists them.
pub const REVISION_NUMBER: &str = "kyb.io/revision-number";

/// The spec fields a revision does not consist of: `undo` leaves them as they are.
pub const NOT_REVISIONED: &[&str] = &["replicas", "autoscaling", "rollout"];

/// The spec fields that make a revision, as a JSON object (what `undo` restores).
pub fn revision_spec(spec: &crate::operator::crd::KybPlatformSpec) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| !NOT_REVISIONED.contains(&k.as_str()));
    }
    value.to_string()
}

pub fn promote_token(revision: &str, step: i32) -> String {
    format!("{revision}:{step}")
}

pub fn promote_full_token(revision: &str) -> String {
    format!("{revision}:full")
}

/// Names one abort (a revision may be aborted, retried and aborted again).
pub fn retry_token(abort: &AbortStatus) -> String {
    format!("{}@{}", abort.revision, abort.at.0)
}

/// The commands on a KybPlatform's annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Commands {
    pub promote: Option<String>,
    pub abort: Option<String>,
    pub retry: Option<String>,
}

impl Commands {
    pub fn from_annotations(annotations: Option<&BTreeMap<String, String>>) -> Self {
        let get = |k: &str| annotations.and_then(|a| a.get(k)).cloned();
        Self {
            promote: get(PROMOTE),
            abort: get(ABORT),
            retry: get(RETRY),
        }
    }
}
