//! What `kybctl rollout promote|abort|retry|undo` comes to: a [`Decision`] (the patch to send, a
//! no-op, or a refusal that says why and what to do instead), a pure function of the KybPlatform.
//! `promote`, `abort` and `retry` write the operator's command annotations (see
//! `operator::commands`); `undo` restores a kept revision's spec. `rollout` sends the patch.
//! `rollout_view` uses [`step_kind`] and [`no_history_hint`] too, so `get` and `history` word steps
//! and the RollingUpdate hint as these messages do.

use serde_json::{json, Map, Value};

use crate::operator::commands::{self, Commands, NOT_REVISIONED};
use crate::operator::crd::{
    CanaryStep, KybPlatform, KybPlatformSpec, RevisionStatus, RolloutStatus, RolloutStrategy,
};
use crate::operator::progressive::{ABORTED, DEGRADED as ROLLOUT_DEGRADED};

/// What `promote`, `abort`, `retry` or `undo` comes to. Messages are printed after `NAME: `.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send this JSON merge patch; print `done` once it is accepted (exit 0).
    Merge { patch: Value, done: String },
    /// Send these JSON patch (RFC 6902) operations; print `done` once accepted (exit 0).
    Json { ops: Vec<Value>, done: String },
    /// Already done: print why nothing is sent (exit 0).
    NoOp(String),
    /// The rollout's state does not allow it: print why and what to do instead (exit 1).
    Refused(String),
}

fn annotation_patch(values: &[(&str, Option<&str>)]) -> Value {
    let annotations: Map<String, Value> = values
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.map_or(Value::Null, |v| json!(v))))
        .collect();
    json!({"metadata": {"annotations": annotations}})
}

/// `status.rollout` when it is current, or the refusal of `verb`.
fn current_rollout<'a>(kp: &'a KybPlatform, verb: &str) -> Result<&'a RolloutStatus, Decision> {
    let strategy = kp.spec.rollout.strategy;
    if strategy == RolloutStrategy::RollingUpdate {
        return Err(Decision::Refused(format!(
            "cannot {verb}: strategy RollingUpdate has no canary or preview; {verb} needs strategy BlueGreen or Canary"
        )));
    }
    let Some(status) = &kp.status else {
        return Err(Decision::Refused(format!(
            "cannot {verb}: no status yet (is the operator running?)"
        )));
    };
    let generation = kp.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Err(Decision::Refused(format!(
            "cannot {verb}: the operator has not observed generation {generation} yet; try again"
        )));
    }
    status.rollout.as_ref().ok_or_else(|| {
        Decision::Refused(format!(
            "cannot {verb}: no rollout status yet (is the operator running?)"
        ))
    })
}

fn no_rollout(verb: &str, r: &RolloutStatus) -> Decision {
    Decision::Refused(format!(
        "cannot {verb}: no rollout in progress{}",
        r.stable_revision
            .as_deref()
            .map(|s| format!(" (stable revision {s})"))
            .unwrap_or_default()
    ))
}

/// What a canary step is, as messages name it.
pub fn step_kind(step: &CanaryStep) -> String {
    if let Some(w) = step.set_weight {
        format!("setWeight {w}")
    } else if let Some(p) = &step.pause {
        match &p.duration {
            Some(d) => format!("pause {d}"),
            None => "pause".into(),
        }
    } else if step.set_canary_scale.is_some() {
        "setCanaryScale".into()
    } else if step.analysis.is_some() {
        "analysis".into()
    } else {
        "empty step".into()
    }
}

/// Steps the operator passes by itself (no promotion needed).
fn completes_on_its_own(step: &CanaryStep) -> bool {
    step.set_weight.is_some() || step.set_canary_scale.is_some()
}

fn canary_steps(kp: &KybPlatform) -> &[CanaryStep] {
    kp.spec
        .rollout
        .canary
        .as_ref()
        .map_or(&[], |c| c.steps.as_slice())
}

/// The BlueGreen steps as the operator numbers them.
const BG_PREVIEW: i32 = 0;
const BG_AWAIT_PROMOTION: i32 = 1;
const BG_SWITCH: i32 = 2;

/// `kybctl rollout promote [--full]`.
pub fn promote(kp: &KybPlatform, full: bool) -> Decision {
    let r = match current_rollout(kp, "promote") {
        Ok(r) => r,
        Err(d) => return d,
    };
    let cmds = Commands::from_annotations(kp.metadata.annotations.as_ref());
    let name = kp.metadata.name.as_deref().unwrap_or("NAME");
    let Some(canary) = r.canary_revision.as_deref() else {
        // Promoted all the way already (a repeated promote after the rollout finished).
        if let (Some(stable), Some(token)) = (r.stable_revision.as_deref(), &cmds.promote) {
            if token.starts_with(&format!("{stable}:")) {
                return Decision::NoOp(format!("already promoted: revision {stable} is stable"));
            }
        }
        return no_rollout("promote", r);
    };
    let Some(stable) = r.stable_revision.as_deref() else {
        return Decision::Refused(format!(
            "cannot promote: revision {canary} is the first revision: it has no steps and becomes stable once its pods are ready"
        ));
    };
    if let Some(a) = r.abort.as_ref().filter(|a| a.revision == canary) {
        return Decision::Refused(format!(
            "cannot promote: revision {canary} was aborted ({}); `kybctl rollout retry {name}` starts it again",
            a.reason
        ));
    }
    if r.phase == ABORTED || cmds.abort.as_deref() == Some(canary) {
        return Decision::Refused(format!(
            "cannot promote: revision {canary} is being aborted; `kybctl rollout retry {name}` starts it again"
        ));
    }
    if kp.spec.rollout.paused {
        return Decision::Refused(format!(
            "cannot promote: the rollout is paused (spec.rollout.paused); `kybctl rollout resume {name}` first"
        ));
    }
    if r.phase == ROLLOUT_DEGRADED {
        return Decision::Refused(format!(
            "cannot promote: the rollout is Degraded: {}; `kybctl rollout abort {name}` or `undo` returns to stable revision {stable}",
            r.message
        ));
    }
    let full_token = commands::promote_full_token(canary);
    if cmds.promote.as_deref() == Some(full_token.as_str()) {
        return Decision::NoOp("already promoting fully; waiting for the operator".into());
    }
    let step = r.current_step_index.unwrap_or(0).max(0);
    let promote_with = |token: String, done: String| Decision::Merge {
        patch: annotation_patch(&[(commands::PROMOTE, Some(&token))]),
        done,
    };
    if kp.spec.rollout.strategy == RolloutStrategy::BlueGreen {
        if step >= BG_SWITCH {
            return Decision::NoOp(format!(
                "preview revision {canary} already promoted; the active Service switches once its pods are ready"
            ));
        }
        if full {
            return promote_with(
                full_token,
                format!("promoting fully: skipping steps {step}..{BG_SWITCH}"),
            );
        }
        if step == BG_PREVIEW {
            return Decision::Refused(format!(
                "cannot promote: the preview of revision {canary} is not ready yet (step 0); promote once it is, or --full switches without waiting"
            ));
        }
        let token = commands::promote_token(canary, BG_AWAIT_PROMOTION);
        if cmds.promote.as_deref() == Some(token.as_str()) {
            return Decision::NoOp(format!(
                "step {BG_AWAIT_PROMOTION} already promoted; waiting for the operator"
            ));
        }
        return promote_with(
            token,
            format!("promoted past step {BG_AWAIT_PROMOTION} (awaiting promotion)"),
        );
    }
    let steps = canary_steps(kp);
    let n = i32::try_from(steps.len()).unwrap_or(i32::MAX);
    let Some(at) = usize::try_from(step).ok().and_then(|i| steps.get(i)) else {
        return Decision::NoOp(format!(
            "every step is done; revision {canary} becomes stable once its pods are ready"
        ));
    };
    if full {
        return promote_with(
            full_token,
            format!("promoting fully: skipping steps {step}..{n}"),
        );
    }
    let token = commands::promote_token(canary, step);
    if cmds.promote.as_deref() == Some(token.as_str()) {
        return Decision::NoOp(format!(
            "step {step} already promoted; waiting for the operator"
        ));
    }
    if completes_on_its_own(at) {
        // A promote repeated just after the first one took effect: the rollout went from the promoted
        // step straight on to this one.
        if let Some(k) = promoted_step(cmds.promote.as_deref(), canary) {
            let between = usize::try_from(k.saturating_add(1))
                .ok()
                .zip(usize::try_from(step).ok())
                .and_then(|(from, to)| steps.get(from..to));
            if k < step && between.is_some_and(|s| s.iter().all(completes_on_its_own)) {
                return Decision::NoOp(format!(
                    "step {k} already promoted; step {step} ({}) completes on its own",
                    step_kind(at)
                ));
            }
        }
        return Decision::Refused(format!(
            "cannot promote: step {step} ({}) completes on its own; --full skips every remaining step",
            step_kind(at)
        ));
    }
    // As the operator names the wait: an analysis step, else a pause.
    let kind = if at.analysis.is_some() {
        "analysis"
    } else {
        "pause"
    };
    promote_with(token, format!("promoted past step {step} ({kind})"))
}

/// The step a promote token of `revision` names.
fn promoted_step(token: Option<&str>, revision: &str) -> Option<i32> {
    token?
        .strip_prefix(revision)?
        .strip_prefix(':')?
        .parse()
        .ok()
}

/// `kybctl rollout abort`.
pub fn abort(kp: &KybPlatform) -> Decision {
    let r = match current_rollout(kp, "abort") {
        Ok(r) => r,
        Err(d) => return d,
    };
    let cmds = Commands::from_annotations(kp.metadata.annotations.as_ref());
    let Some(canary) = r.canary_revision.as_deref() else {
        return no_rollout("abort", r);
    };
    let Some(stable) = r.stable_revision.as_deref() else {
        return Decision::Refused(format!(
            "cannot abort: revision {canary} is the first revision: there is no stable revision to return to"
        ));
    };
    if r.abort.as_ref().is_some_and(|a| a.revision == canary) {
        return Decision::NoOp(format!("revision {canary} already aborted"));
    }
    if cmds.abort.as_deref() == Some(canary) {
        return Decision::NoOp(format!(
            "abort of revision {canary} already requested; waiting for the operator"
        ));
    }
    Decision::Merge {
        patch: annotation_patch(&[(commands::ABORT, Some(canary))]),
        done: format!("aborting revision {canary}: traffic returns to stable revision {stable}"),
    }
}

/// `kybctl rollout retry`: the retry token, and the abort and promote commands removed (or the
/// rollout would abort again at once, and an old promote could skip a step).
pub fn retry(kp: &KybPlatform) -> Decision {
    let r = match current_rollout(kp, "retry") {
        Ok(r) => r,
        Err(d) => return d,
    };
    let cmds = Commands::from_annotations(kp.metadata.annotations.as_ref());
    let Some(canary) = r.canary_revision.as_deref() else {
        return no_rollout("retry", r);
    };
    let Some(aborted) = r.abort.as_ref().filter(|a| a.revision == canary) else {
        let retried = cmds
            .retry
            .as_deref()
            .and_then(|t| t.strip_prefix(canary))
            .is_some_and(|t| t.starts_with('@'));
        if retried && cmds.abort.as_deref() != Some(canary) {
            return Decision::NoOp(format!(
                "revision {canary} already retried; the rollout is running again"
            ));
        }
        return Decision::Refused(format!(
            "cannot retry: revision {canary} is not aborted (phase {}); nothing to retry",
            r.phase
        ));
    };
    let token = commands::retry_token(aborted);
    if cmds.retry.as_deref() == Some(token.as_str()) {
        return Decision::NoOp(format!(
            "retry of revision {canary} already requested; waiting for the operator"
        ));
    }
    Decision::Merge {
        patch: annotation_patch(&[
            (commands::RETRY, Some(&token)),
            (commands::ABORT, None),
            (commands::PROMOTE, None),
        ]),
        done: format!("retrying revision {canary}: the rollout starts again from step 0"),
    }
}

/// A stored revision spec as a JSON object.
fn spec_object(spec: &str) -> Option<Map<String, Value>> {
    match serde_json::from_str(spec) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// A stored revision spec as this version of the CRD's types reads it (defaults filled in), so specs
/// written by another operator version compare equal when they ask for the same thing.
fn normalized_spec(spec: &str) -> Option<Map<String, Value>> {
    serde_json::from_str::<KybPlatformSpec>(spec)
        .ok()
        .and_then(|s| spec_object(&commands::revision_spec(&s)))
        .or_else(|| spec_object(spec))
}

/// The kept revision the spec asks for now: the newest whose stored spec is the spec's; failing that
/// (an operator of another version wrote it), what an up-to-date status says: the canary, else the
/// stable revision.
pub fn spec_revision(kp: &KybPlatform) -> Option<&RevisionStatus> {
    let r = kp.status.as_ref()?.rollout.as_ref()?;
    let current = spec_object(&commands::revision_spec(&kp.spec));
    if let Some(found) = r
        .revisions
        .iter()
        .find(|rev| current.is_some() && normalized_spec(&rev.spec) == current)
    {
        return Some(found);
    }
    let status = kp.status.as_ref()?;
    if status.observed_generation.unwrap_or(0) < kp.metadata.generation.unwrap_or(0) {
        return None;
    }
    let asked = r.canary_revision.as_ref().or(r.stable_revision.as_ref())?;
    r.revisions.iter().find(|rev| &rev.revision == asked)
}

fn kept(revisions: &[RevisionStatus]) -> String {
    let mut numbers: Vec<i64> = revisions.iter().map(|r| r.number).collect();
    numbers.sort_unstable();
    numbers.dedup();
    numbers
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// A JSON pointer token (RFC 6901).
fn pointer_token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

pub fn no_history_hint(kp: &KybPlatform, verb: &str) -> String {
    let name = kp.metadata.name.as_deref().unwrap_or("NAME");
    format!(
        "strategy RollingUpdate keeps no revision history in the KybPlatform: `kubectl rollout {verb} deployment/{name}` needs rights on Deployments; or switch to strategy BlueGreen or Canary, which keep revision history"
    )
}

/// `kybctl rollout undo [--to-revision N]`.
pub fn undo(kp: &KybPlatform, to_revision: Option<i64>) -> Decision {
    let revisions: &[RevisionStatus] = kp
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map_or(&[], |r| r.revisions.as_slice());
    if revisions.is_empty() {
        return Decision::Refused(
            if kp.spec.rollout.strategy == RolloutStrategy::RollingUpdate {
                format!("cannot undo: {}", no_history_hint(kp, "undo"))
            } else {
                "cannot undo: no revisions kept yet (is the operator running?)".into()
            },
        );
    }
    let rollout = kp.status.as_ref().and_then(|s| s.rollout.as_ref());
    let stable = rollout
        .and_then(|r| r.stable_revision.as_ref())
        .and_then(|s| revisions.iter().find(|rev| &rev.revision == s));
    let asked = spec_revision(kp);
    let target = match to_revision {
        Some(n) => match revisions.iter().find(|r| r.number == n) {
            Some(t) => t,
            None => {
                return Decision::Refused(format!(
                    "cannot undo: revision {n} is not kept; kept: {}",
                    kept(revisions)
                ))
            }
        },
        None => {
            let default = match (asked, stable) {
                // A canary or preview in progress: back to stable.
                (Some(a), Some(s)) if a.revision != s.revision => Some(s),
                (Some(a), _) => revisions
                    .iter()
                    .filter(|r| r.number < a.number)
                    .max_by_key(|r| r.number),
                // The spec asks for a revision not built yet.
                (None, Some(s)) => Some(s),
                (None, None) => revisions.iter().max_by_key(|r| r.number),
            };
            match default {
                Some(t) => t,
                None => {
                    return Decision::Refused(format!(
                        "cannot undo: no revision before revision {} is kept; kept: {}",
                        asked.map_or(0, |a| a.number),
                        kept(revisions)
                    ))
                }
            }
        }
    };
    // Only a stored spec this version can read as a spec is restored (never an empty object, which
    // would remove the image and databases).
    let readable = serde_json::from_str::<KybPlatformSpec>(&target.spec).is_ok();
    let Some(stored) = spec_object(&target.spec).filter(|_| readable) else {
        return Decision::Refused(format!(
            "cannot undo: revision {} has no stored spec to restore",
            target.number
        ));
    };
    let current = spec_object(&commands::revision_spec(&kp.spec));
    if asked.is_some_and(|a| a.revision == target.revision)
        || (current.is_some() && current == normalized_spec(&target.spec))
    {
        return Decision::NoOp(format!(
            "already at revision {}; nothing to undo",
            target.number
        ));
    }
    let mut ops = Vec::new();
    if let Some(rv) = &kp.metadata.resource_version {
        ops.push(json!({"op": "test", "path": "/metadata/resourceVersion", "value": rv}));
    }
    let revisioned = |k: &String| !NOT_REVISIONED.contains(&k.as_str());
    for (key, value) in stored.iter().filter(|(k, _)| revisioned(k)) {
        ops.push(
            json!({"op": "add", "path": format!("/spec/{}", pointer_token(key)), "value": value}),
        );
    }
    for key in current.iter().flat_map(|c| c.keys()) {
        if revisioned(key) && !stored.contains_key(key) {
            ops.push(json!({"op": "remove", "path": format!("/spec/{}", pointer_token(key))}));
        }
    }
    let annotations = kp.metadata.annotations.as_ref();
    for key in [commands::ABORT, commands::PROMOTE] {
        if annotations.is_some_and(|a| a.contains_key(key)) {
            ops.push(json!({"op": "remove", "path": format!("/metadata/annotations/{}", pointer_token(key))}));
        }
    }
    Decision::Json {
        ops,
        done: format!(
            "rolling back to revision {} ({}, image {})",
            target.number, target.revision, target.image
        ),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cli::output::Format;
    use crate::cli::rollout_status::verdict;
    use crate::cli::rollout_view;
    use crate::operator::crd::{AbortStatus, CanarySpec, KybPlatformStatus, PauseStep, Weights};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::Patch;

    // ---- fixtures for the actions ----

    const T0: i64 = 1_800_000_000;

    fn time(offset: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(T0 + offset).unwrap())
    }

    fn step_weight(w: i32) -> CanaryStep {
        CanaryStep {
            set_weight: Some(w),
            ..Default::default()
        }
    }

    fn step_pause(d: Option<&str>) -> CanaryStep {
        CanaryStep {
            pause: Some(PauseStep {
                duration: d.map(str::to_owned),
            }),
            ..Default::default()
        }
    }

    fn step_analysis() -> CanaryStep {
        CanaryStep {
            analysis: Some(Default::default()),
            ..Default::default()
        }
    }

    fn spec_with_image(spec: &KybPlatformSpec, image: &str) -> String {
        let mut s = spec.clone();
        s.image = image.into();
        commands::revision_spec(&s)
    }

    fn revision(number: i64, rev: &str, spec: String, role: &str) -> RevisionStatus {
        RevisionStatus {
            number,
            revision: rev.into(),
            image: serde_json::from_str::<Value>(&spec)
                .ok()
                .and_then(|v| v["image"].as_str().map(str::to_owned))
                .unwrap_or_default(),
            role: role.into(),
            replicas: 5,
            ready_replicas: 4,
            spec,
        }
    }

    /// `kyb` (minimal.yaml) as a Canary with steps setWeight 20, pause, setWeight 40, pause 10m,
    /// analysis; image :3 rolling out as revision c3 (number 3) over stable s2 (:2, number 2), with
    /// o1 (:1, number 1) kept; the rollout waits at step `step`.
    pub(crate) fn canary(step: i32) -> KybPlatform {
        let mut kp: KybPlatform =
            serde_yaml::from_str(include_str!("../../manifests/samples/minimal.yaml")).unwrap();
        kp.metadata.namespace = Some("prod".into());
        kp.metadata.generation = Some(7);
        kp.metadata.resource_version = Some("4242".into());
        kp.spec.image = "registry.example.com/kybctl:3".into();
        kp.spec.rollout.strategy = RolloutStrategy::Canary;
        kp.spec.rollout.canary = Some(CanarySpec {
            steps: vec![
                step_weight(20),
                step_pause(None),
                step_weight(40),
                step_pause(Some("10m")),
                step_analysis(),
            ],
            ..Default::default()
        });
        let spec = kp.spec.clone();
        kp.status = Some(KybPlatformStatus {
            observed_generation: Some(7),
            rollout: Some(RolloutStatus {
                phase: "Paused".into(),
                message: format!("step {step}: paused"),
                current_step_index: Some(step),
                stable_revision: Some("s2".into()),
                canary_revision: Some("c3".into()),
                weights: Weights {
                    desired: 20,
                    effective: 20,
                },
                step_started_at: Some(time(0)),
                pause_conditions: vec![crate::operator::crd::PauseCondition {
                    reason: "CanaryPauseStep".into(),
                    start_time: time(0),
                }],
                revisions: vec![
                    revision(3, "c3", commands::revision_spec(&spec), "canary"),
                    revision(
                        2,
                        "s2",
                        spec_with_image(&spec, "registry.example.com/kybctl:2"),
                        "stable",
                    ),
                    revision(
                        1,
                        "o1",
                        spec_with_image(&spec, "registry.example.com/kybctl:1"),
                        "old",
                    ),
                ],
                ..Default::default()
            }),
            ..Default::default()
        });
        kp
    }

    /// `canary(0)` as BlueGreen at step `step`.
    pub(crate) fn blue_green(step: i32) -> KybPlatform {
        let mut kp = canary(step);
        kp.spec.rollout.strategy = RolloutStrategy::BlueGreen;
        kp.spec.rollout.canary = None;
        kp.spec.rollout.blue_green = Some(Default::default());
        let r = rollout_mut(&mut kp);
        r.weights = Weights::default();
        for rev in &mut r.revisions {
            if rev.role == "canary" {
                rev.role = "preview".into();
            }
        }
        kp
    }

    /// `canary(0)` after the rollout finished: c3 stable, s2 old.
    pub(crate) fn settled() -> KybPlatform {
        let mut kp = canary(0);
        let r = rollout_mut(&mut kp);
        r.phase = "Healthy".into();
        r.stable_revision = Some("c3".into());
        r.canary_revision = None;
        r.current_step_index = None;
        r.pause_conditions.clear();
        r.weights = Weights::default();
        r.revisions[0].role = "stable".into();
        r.revisions[1].role = "old".into();
        kp
    }

    fn rollout_mut(kp: &mut KybPlatform) -> &mut RolloutStatus {
        kp.status.as_mut().unwrap().rollout.as_mut().unwrap()
    }

    fn annotate(kp: &mut KybPlatform, key: &str, value: &str) {
        kp.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
    }

    fn aborted(mut kp: KybPlatform) -> KybPlatform {
        let r = rollout_mut(&mut kp);
        r.phase = "Aborted".into();
        r.abort = Some(AbortStatus {
            revision: "c3".into(),
            reason: "AbortedByUser".into(),
            message: "rollout of revision c3 aborted by `kybctl rollout abort`".into(),
            at: time(60),
        });
        kp
    }

    fn merge(patch: Value, done: &str) -> Decision {
        Decision::Merge {
            patch,
            done: done.into(),
        }
    }

    fn refused(d: Decision) -> String {
        match d {
            Decision::Refused(m) => m,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn promote_past_a_pause_or_analysis_step_once() {
        assert_eq!(
            promote(&canary(1), false),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:1"}}}),
                "promoted past step 1 (pause)"
            )
        );
        assert_eq!(
            promote(&canary(3), false),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:3"}}}),
                "promoted past step 3 (pause)"
            )
        );
        assert_eq!(
            promote(&canary(4), false),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:4"}}}),
                "promoted past step 4 (analysis)"
            )
        );
        // Repeated: the token is there, the operator has not moved yet.
        let mut again = canary(1);
        annotate(&mut again, commands::PROMOTE, "c3:1");
        assert_eq!(
            promote(&again, false),
            Decision::NoOp("step 1 already promoted; waiting for the operator".into())
        );
        // Repeated after the operator moved on to the setWeight step that follows.
        rollout_mut(&mut again).current_step_index = Some(2);
        assert_eq!(
            promote(&again, false),
            Decision::NoOp(
                "step 1 already promoted; step 2 (setWeight 40) completes on its own".into()
            )
        );
        // A token of another revision promotes nothing here.
        let mut other = canary(1);
        annotate(&mut other, commands::PROMOTE, "s2:1");
        assert!(matches!(promote(&other, false), Decision::Merge { .. }));
    }

    #[test]
    fn promote_refuses_a_set_weight_step_but_full_skips_it() {
        assert_eq!(
            refused(promote(&canary(2), false)),
            "cannot promote: step 2 (setWeight 40) completes on its own; --full skips every remaining step"
        );
        assert_eq!(
            refused(promote(&canary(0), false)),
            "cannot promote: step 0 (setWeight 20) completes on its own; --full skips every remaining step"
        );
        // A promote of a step long gone (a pause step before another pause) does not excuse it.
        let mut old = canary(2);
        annotate(&mut old, commands::PROMOTE, "c3:0");
        assert!(matches!(promote(&old, false), Decision::Refused(_)));
        assert_eq!(
            promote(&canary(2), true),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:full"}}}),
                "promoting fully: skipping steps 2..5"
            )
        );
        let mut full = canary(2);
        annotate(&mut full, commands::PROMOTE, "c3:full");
        for f in [true, false] {
            assert_eq!(
                promote(&full, f),
                Decision::NoOp("already promoting fully; waiting for the operator".into())
            );
        }
        for f in [true, false] {
            assert_eq!(
                promote(&canary(5), f),
                Decision::NoOp(
                    "every step is done; revision c3 becomes stable once its pods are ready".into()
                )
            );
        }
    }

    #[test]
    fn promote_refuses_what_the_state_does_not_allow() {
        let mut stale = canary(1);
        stale.metadata.generation = Some(8);
        assert_eq!(
            refused(promote(&stale, false)),
            "cannot promote: the operator has not observed generation 8 yet; try again"
        );
        assert_eq!(
            refused(promote(&aborted(canary(3)), false)),
            "cannot promote: revision c3 was aborted (AbortedByUser); `kybctl rollout retry kyb` starts it again"
        );
        let mut aborting = canary(3);
        annotate(&mut aborting, commands::ABORT, "c3");
        assert!(refused(promote(&aborting, true)).contains("retry"));
        let mut paused = canary(1);
        paused.spec.rollout.paused = true;
        assert_eq!(
            refused(promote(&paused, false)),
            "cannot promote: the rollout is paused (spec.rollout.paused); `kybctl rollout resume kyb` first"
        );
        let mut rolling = canary(1);
        rolling.spec.rollout.strategy = RolloutStrategy::RollingUpdate;
        assert!(refused(promote(&rolling, false)).contains("needs strategy BlueGreen or Canary"));
        let mut first = canary(1);
        rollout_mut(&mut first).stable_revision = None;
        assert!(refused(promote(&first, false)).contains("first revision"));
        assert_eq!(
            refused(promote(&settled(), false)),
            "cannot promote: no rollout in progress (stable revision c3)"
        );
        let mut done = settled();
        annotate(&mut done, commands::PROMOTE, "c3:full");
        assert_eq!(
            promote(&done, true),
            Decision::NoOp("already promoted: revision c3 is stable".into())
        );
    }

    #[test]
    fn promote_blue_green() {
        assert_eq!(
            refused(promote(&blue_green(0), false)),
            "cannot promote: the preview of revision c3 is not ready yet (step 0); promote once it is, or --full switches without waiting"
        );
        assert_eq!(
            promote(&blue_green(0), true),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:full"}}}),
                "promoting fully: skipping steps 0..2"
            )
        );
        assert_eq!(
            promote(&blue_green(1), false),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/promote": "c3:1"}}}),
                "promoted past step 1 (awaiting promotion)"
            )
        );
        let mut again = blue_green(1);
        annotate(&mut again, commands::PROMOTE, "c3:1");
        assert_eq!(
            promote(&again, false),
            Decision::NoOp("step 1 already promoted; waiting for the operator".into())
        );
        for f in [true, false] {
            assert_eq!(
                promote(&blue_green(2), f),
                Decision::NoOp("preview revision c3 already promoted; the active Service switches once its pods are ready".into())
            );
        }
        // The switch done: a repeated promote is still a no-op.
        let mut switched = settled();
        switched.spec.rollout.strategy = RolloutStrategy::BlueGreen;
        switched.spec.rollout.canary = None;
        annotate(&mut switched, commands::PROMOTE, "c3:1");
        assert_eq!(
            promote(&switched, false),
            Decision::NoOp("already promoted: revision c3 is stable".into())
        );
    }

    #[test]
    fn actions_never_panic_on_missing_or_odd_status() {
        let mut bare = canary(1);
        bare.status = None;
        bare.metadata = Default::default();
        let mut no_rollout = canary(1);
        no_rollout.status.as_mut().unwrap().rollout = None;
        let mut odd = canary(-3);
        rollout_mut(&mut odd).revisions[0].spec = "not json".into();
        let mut huge = canary(i32::MAX);
        rollout_mut(&mut huge).revisions.clear();
        let mut overflow = canary(2);
        annotate(
            &mut overflow,
            commands::PROMOTE,
            &format!("c3:{}", i32::MAX),
        );
        rollout_mut(&mut overflow).current_step_index = Some(i32::MIN);
        let mut bg = blue_green(-1);
        rollout_mut(&mut bg).current_step_index = None;
        for kp in [bare, no_rollout, odd, huge, overflow, bg] {
            for full in [false, true] {
                let _ = promote(&kp, full);
            }
            let _ = abort(&kp);
            let _ = retry(&kp);
            for to in [None, Some(1), Some(-1), Some(i64::MAX)] {
                let _ = undo(&kp, to);
            }
            let _ = verdict(&kp);
            let _ = rollout_view::render_get(&kp, "ns", Format::Table);
            let _ = rollout_view::render_get(&kp, "ns", Format::Json);
            let _ = rollout_view::render_history(&kp);
        }
        let mut bare = canary(1);
        bare.status = None;
        assert_eq!(
            refused(abort(&bare)),
            "cannot abort: no status yet (is the operator running?)"
        );
    }

    #[test]
    fn abort_names_the_canary_once() {
        assert_eq!(
            abort(&canary(3)),
            merge(
                json!({"metadata": {"annotations": {"kyb.io/abort": "c3"}}}),
                "aborting revision c3: traffic returns to stable revision s2"
            )
        );
        let mut asked = canary(3);
        annotate(&mut asked, commands::ABORT, "c3");
        assert_eq!(
            abort(&asked),
            Decision::NoOp(
                "abort of revision c3 already requested; waiting for the operator".into()
            )
        );
        assert_eq!(
            abort(&aborted(canary(3))),
            Decision::NoOp("revision c3 already aborted".into())
        );
        assert_eq!(
            refused(abort(&settled())),
            "cannot abort: no rollout in progress (stable revision c3)"
        );
        let mut stale = canary(3);
        stale.metadata.generation = Some(9);
        assert_eq!(
            refused(abort(&stale)),
            "cannot abort: the operator has not observed generation 9 yet; try again"
        );
        // An older revision's abort annotation does not make this one aborted.
        let mut old = canary(3);
        annotate(&mut old, commands::ABORT, "s2");
        assert!(matches!(abort(&old), Decision::Merge { .. }));
    }

    #[test]
    fn retry_clears_abort_and_promote_in_the_same_patch() {
        let kp = aborted(canary(3));
        let token = commands::retry_token(rollout_mut(&mut kp.clone()).abort.as_ref().unwrap());
        assert_eq!(token, format!("c3@{}", time(60).0));
        assert_eq!(
            retry(&kp),
            merge(
                json!({"metadata": {"annotations": {
                    "kyb.io/retry": token,
                    "kyb.io/abort": null,
                    "kyb.io/promote": null,
                }}}),
                "retrying revision c3: the rollout starts again from step 0"
            )
        );
        let mut asked = kp.clone();
        annotate(&mut asked, commands::RETRY, &token);
        assert_eq!(
            retry(&asked),
            Decision::NoOp(
                "retry of revision c3 already requested; waiting for the operator".into()
            )
        );
        // Done: the operator cleared the abort; the token stays.
        let mut done = canary(1);
        annotate(&mut done, commands::RETRY, &token);
        assert_eq!(
            retry(&done),
            Decision::NoOp("revision c3 already retried; the rollout is running again".into())
        );
        assert_eq!(
            refused(retry(&canary(1))),
            "cannot retry: revision c3 is not aborted (phase Paused); nothing to retry"
        );
        assert!(refused(retry(&settled())).starts_with("cannot retry: no rollout in progress"));
        // Aborted again after a retry: a new token.
        let mut again = kp.clone();
        annotate(&mut again, commands::RETRY, "c3@2020-01-01T00:00:00Z");
        assert!(matches!(retry(&again), Decision::Merge { .. }));
    }

    fn json_ops(d: Decision) -> (Vec<Value>, String) {
        match d {
            Decision::Json { ops, done } => {
                // What the I/O layer sends: valid RFC 6902 operations.
                let _: Patch<()> = Patch::Json(serde_json::from_value(json!(ops)).unwrap());
                (ops, done)
            }
            other => panic!("expected a JSON patch, got {other:?}"),
        }
    }

    fn path_ops(ops: &[Value], op: &str) -> Vec<String> {
        ops.iter()
            .filter(|o| o["op"] == op)
            .map(|o| o["path"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn undo_during_a_canary_returns_to_stable() {
        let mut kp = aborted(canary(3));
        annotate(&mut kp, commands::ABORT, "c3");
        annotate(&mut kp, commands::PROMOTE, "c3:1");
        annotate(&mut kp, "unrelated", "x");
        let (ops, done) = json_ops(undo(&kp, None));
        assert_eq!(
            done,
            "rolling back to revision 2 (s2, image registry.example.com/kybctl:2)"
        );
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "4242"})
        );
        let image = ops.iter().find(|o| o["path"] == "/spec/image").unwrap();
        assert_eq!(
            image,
            &json!({"op": "add", "path": "/spec/image", "value": "registry.example.com/kybctl:2"})
        );
        let added = path_ops(&ops, "add");
        for left_alone in NOT_REVISIONED {
            assert!(!added.contains(&format!("/spec/{left_alone}")));
        }
        assert!(added.contains(&"/spec/database".to_owned()));
        assert_eq!(
            path_ops(&ops, "remove"),
            [
                "/metadata/annotations/kyb.io~1abort",
                "/metadata/annotations/kyb.io~1promote"
            ]
        );
        // Without the annotations there is nothing to remove.
        let (ops, _) = json_ops(undo(&canary(3), None));
        assert!(path_ops(&ops, "remove").is_empty());
    }

    #[test]
    fn undo_when_settled_goes_to_the_revision_before_stable() {
        let (ops, done) = json_ops(undo(&settled(), None));
        assert_eq!(
            done,
            "rolling back to revision 2 (s2, image registry.example.com/kybctl:2)"
        );
        assert!(ops
            .iter()
            .any(|o| o["value"] == "registry.example.com/kybctl:2"));
        let (_, done) = json_ops(undo(&settled(), Some(1)));
        assert_eq!(
            done,
            "rolling back to revision 1 (o1, image registry.example.com/kybctl:1)"
        );
        assert_eq!(
            undo(&settled(), Some(3)),
            Decision::NoOp("already at revision 3; nothing to undo".into())
        );
        assert_eq!(
            refused(undo(&settled(), Some(9))),
            "cannot undo: revision 9 is not kept; kept: 1, 2, 3"
        );
        // The oldest kept revision has nothing before it.
        let mut oldest = settled();
        rollout_mut(&mut oldest).revisions.truncate(1);
        assert_eq!(
            refused(undo(&oldest, None)),
            "cannot undo: no revision before revision 3 is kept; kept: 3"
        );
        // The spec's revision is found by its stored spec even when the status lags behind.
        let mut lagging = settled();
        lagging.spec.image = "registry.example.com/kybctl:2".into();
        lagging.metadata.generation = Some(8);
        assert_eq!(
            undo(&lagging, Some(2)),
            Decision::NoOp("already at revision 2; nothing to undo".into())
        );
        // ... and a second plain undo goes back to the stable revision, as `kubectl rollout undo`
        // twice does.
        let (_, done) = json_ops(undo(&lagging, None));
        assert!(done.starts_with("rolling back to revision 3 "), "{done}");
        // A spec not built yet: back to stable.
        let mut unbuilt = settled();
        unbuilt.spec.image = "registry.example.com/kybctl:4".into();
        unbuilt.metadata.generation = Some(8);
        let (_, done) = json_ops(undo(&unbuilt, None));
        assert!(done.starts_with("rolling back to revision 3 "), "{done}");
    }

    #[test]
    fn undo_removes_fields_the_revision_did_not_have() {
        let mut kp = settled();
        kp.spec.resources = Some(Default::default());
        kp.spec.replicas = Some(5);
        let (ops, _) = json_ops(undo(&kp, Some(2)));
        assert_eq!(path_ops(&ops, "remove"), ["/spec/resources"]);
        // A stored spec that names an unrevisioned field does not touch it; keys are escaped.
        let mut odd = settled();
        rollout_mut(&mut odd).revisions[1].spec =
            json!({"image": "x:1", "database": {"primary": {"name": "db", "key": "url"}}, "replicas": 99, "a/b~c": 1}).to_string();
        let (ops, _) = json_ops(undo(&odd, Some(2)));
        let added = path_ops(&ops, "add");
        assert!(added.contains(&"/spec/a~1b~0c".to_owned()));
        assert!(!added.contains(&"/spec/replicas".to_owned()));
        assert!(path_ops(&ops, "remove").contains(&"/spec/cache".to_owned()));
        let mut not_a_spec = settled();
        rollout_mut(&mut not_a_spec).revisions[1].spec = "{}".into();
        assert_eq!(
            refused(undo(&not_a_spec, Some(2))),
            "cannot undo: revision 2 has no stored spec to restore"
        );
        let mut empty = settled();
        rollout_mut(&mut empty).revisions[1].spec = String::new();
        assert_eq!(
            refused(undo(&empty, Some(2))),
            "cannot undo: revision 2 has no stored spec to restore"
        );
    }

    #[test]
    fn undo_and_history_of_a_rolling_update_give_a_hint() {
        let mut kp = settled();
        kp.spec.rollout.strategy = RolloutStrategy::RollingUpdate;
        kp.spec.rollout.canary = None;
        rollout_mut(&mut kp).revisions.clear();
        let hint = "strategy RollingUpdate keeps no revision history in the KybPlatform: `kubectl rollout undo deployment/kyb` needs rights on Deployments; or switch to strategy BlueGreen or Canary, which keep revision history";
        assert_eq!(refused(undo(&kp, None)), format!("cannot undo: {hint}"));
        assert_eq!(
            rollout_view::render_history(&kp),
            format!("kyb: {}\n", hint.replace("rollout undo", "rollout history"))
        );
        let mut none = canary(1);
        rollout_mut(&mut none).revisions.clear();
        assert_eq!(
            refused(undo(&none, None)),
            "cannot undo: no revisions kept yet (is the operator running?)"
        );
    }
}
