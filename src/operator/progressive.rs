//! Blue-green and canary rollouts as one pure decision: from the spec, the pods of each revision, the
//! previous rollout status, the migration gate and the user's commands, what each revision's
//! Deployment should scale to, what the Services select, the route's weight and the new status. The
//! controller only observes and applies; every rule of a rollout lives (and is tested) here.
//!
//! Each revision runs in its own Deployment, so promotion never recreates a pod: the canary's pods
//! simply become the stable ones. A plan is recomputed on every reconcile from what is observed, so
//! a lost write or a restarted operator converges without remembered state beyond `status.rollout`.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::analysis::assess::{ERROR, FAILED, INCONCLUSIVE, RUNNING, SUCCESSFUL};
use super::commands::{self, Commands};
use super::crd::{
    AbortStatus, AnalysisRef, AnalysisStatus, BlueGreenSpec, CanarySpec, CanaryStep,
    PauseCondition, RolloutSpec, RolloutStatus, RolloutStrategy, Weights,
};
use super::split::{self, CanaryScale, Pods, Split};

pub const HEALTHY: &str = "Healthy";
pub const PROGRESSING: &str = "Progressing";
pub const PAUSED: &str = "Paused";
pub const DEGRADED: &str = "Degraded";
pub const ABORTED: &str = "Aborted";

/// One revision's Deployment as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Live {
    /// The Deployment's `spec.replicas`.
    pub spec: i32,
    pub pods: Pods,
}

/// Whether the revision's migration Job lets its pods take traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Open,
    Waiting(String),
    Failed(String),
}

pub struct Input<'a> {
    pub rollout: &'a RolloutSpec,
    /// Pods the platform should run (the scale subresource's spec).
    pub total: i32,
    /// The spec's revision.
    pub desired: &'a str,
    /// Every revision Deployment of the platform.
    pub revisions: &'a BTreeMap<String, Live>,
    pub previous: Option<&'a RolloutStatus>,
    pub gate: Gate,
    pub commands: &'a Commands,
    /// The analysis runs of this rollout so far, by purpose (see [`Wanted`]).
    pub analyses: &'a BTreeMap<String, AnalysisStatus>,
    pub now: Timestamp,
}

/// An analysis run the rollout needs: of `revision`, for `purpose` (`step-N`, `background`,
/// `pre-promotion`, `post-promotion`), numbered by the rollout's `attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub purpose: String,
    pub revision: String,
    pub attempt: i32,
    pub reference: AnalysisRef,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The replicas of every revision Deployment (the spec's revision included when it should exist).
    pub scale: BTreeMap<String, i32>,
    /// The revision the Service `<name>` selects; `None`: every revision's pods (replica-ratio weights).
    pub stable_pin: Option<String>,
    /// The revision the canary or preview Service selects.
    pub canary_target: String,
    /// Percent of the route's traffic to the canary Service (gatewayAPI routing only).
    pub route_weight: Option<i32>,
    pub status: RolloutStatus,
    /// When to look again even if nothing changes (a pause ending, a deadline, a scale-down delay).
    pub requeue: Option<Duration>,
    /// Every pod runs the spec's revision and no other revision has pods: contract steps may run.
    pub fully_promoted: bool,
    /// The analysis runs to create or keep measuring.
    pub wanted: Vec<Wanted>,
}

fn pods(input: &Input, rev: &str) -> Pods {
    input.revisions.get(rev).map(|l| l.pods).unwrap_or_default()
}

fn routed(input: &Input) -> bool {
    input.rollout.strategy == RolloutStrategy::Canary
        && input
            .rollout
            .canary
            .as_ref()
            .is_some_and(|c| c.traffic_routing.is_some())
}

fn until(now: Timestamp, at: Timestamp) -> Duration {
    let d = at.duration_since(now);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

fn after(t: Timestamp, seconds: i64) -> Timestamp {
    t.checked_add(SignedDuration::from_secs(seconds))
        .unwrap_or(t)
}

struct Planner<'a, 'b> {
    input: &'b Input<'a>,
    prev: RolloutStatus,
    plan: Plan,
    /// Keep the previous revision whatever its scale-down time (a post-promotion analysis runs).
    hold_previous: bool,
}

impl Planner<'_, '_> {
    fn soonest(&mut self, d: Duration) {
        self.plan.requeue = Some(self.plan.requeue.map_or(d, |r| r.min(d)));
    }

    fn set(&mut self, rev: &str, replicas: i32) {
        self.plan.scale.insert(rev.to_owned(), replicas.max(0));
    }

    /// Keeps the start time of a pause that was already in place, so an unchanged wait writes nothing.
    fn pause(&mut self, reason: &str) {
        let start_time = self
            .prev
            .pause_conditions
            .iter()
            .find(|p| p.reason == reason)
            .map(|p| p.start_time.clone())
            .unwrap_or(Time(self.input.now));
        self.plan.status.pause_conditions = vec![PauseCondition {
            reason: reason.into(),
            start_time,
        }];
        self.plan.status.phase = PAUSED.into();
    }

    /// Asks for the analysis `purpose` of `revision`; its phase so far (Running until it has one).
    fn analysis(
        &mut self,
        purpose: &str,
        revision: &str,
        reference: &AnalysisRef,
    ) -> AnalysisStatus {
        self.plan.wanted.push(Wanted {
            purpose: purpose.into(),
            revision: revision.into(),
            attempt: self.plan.status.attempt,
            reference: reference.clone(),
        });
        let known = self.input.analyses.get(purpose).cloned();
        let status = known.unwrap_or(AnalysisStatus {
            purpose: purpose.into(),
            run: String::new(),
            phase: RUNNING.into(),
            message: "starting".into(),
        });
        self.plan.status.analysis.push(status.clone());
        status
    }

    /// The abort an analysis that failed (or could not run) causes.
    fn analysis_abort(&self, revision: &str, a: &AnalysisStatus) -> AbortStatus {
        AbortStatus {
            revision: revision.into(),
            reason: "AnalysisFailed".into(),
            message: format!(
                "{} analysis {} ({}): {}",
                a.purpose, a.phase, a.run, a.message
            ),
            at: Time(self.input.now),
        }
    }

    fn phase(&mut self, phase: &str, message: String) {
        self.plan.status.phase = phase.into();
        self.plan.status.message = message;
    }

    /// Every revision other than `keep` goes to zero, but only as fast as ready pods of `stable`
    /// replace them, and the previous revision of a blue-green promotion only after its delay.
    /// `at_once`: no waiting for stable pods (canaries replaced by a newer spec mid-rollout).
    fn retire_others(&mut self, stable: &str, keep: &[&str], at_once: bool) {
        let total = self.input.total;
        let ready = pods(self.input, stable).ready;
        let now = self.input.now;
        let delayed = match (&self.prev.previous_revision, &self.prev.scale_down_at) {
            (Some(rev), Some(at)) if at.0 > now => Some((rev.clone(), at.0)),
            _ => None,
        };
        let others: Vec<(String, Live)> = self
            .input
            .revisions
            .iter()
            .filter(|(r, _)| r.as_str() != stable && !keep.contains(&r.as_str()))
            .map(|(r, l)| (r.clone(), *l))
            .collect();
        for (rev, live) in others {
            let held =
                self.hold_previous && self.prev.previous_revision.as_deref() == Some(rev.as_str());
            if held {
                self.set(&rev, live.spec);
                self.plan.status.previous_revision = Some(rev.clone());
                self.plan.status.scale_down_at = self.prev.scale_down_at.clone();
                continue;
            }
            if let Some((_, at)) = delayed.as_ref().filter(|(r, _)| *r == rev) {
                self.set(&rev, live.spec);
                self.soonest(until(now, *at));
                continue;
            }
            let left = if at_once { 0 } else { (total - ready).max(0) };
            self.set(&rev, left.min(live.spec));
        }
        if let Some((rev, at)) = delayed {
            self.plan.status.previous_revision = Some(rev);
            self.plan.status.scale_down_at = Some(Time(at));
        }
    }

    /// No stable revision yet (a new platform, or one switching from RollingUpdate): the spec's
    /// revision starts at full size and becomes stable once every pod is ready. No steps: there is
    /// nothing to compare it with.
    fn initial(&mut self) {
        let (input, desired) = (self.input, self.input.desired);
        self.plan.status.canary_revision = Some(desired.to_owned());
        match &input.gate {
            Gate::Waiting(m) => return self.phase(PROGRESSING, m.clone()),
            Gate::Failed(m) => return self.phase(DEGRADED, m.clone()),
            Gate::Open => {}
        }
        self.set(desired, input.total);
        let ready = pods(input, desired).ready;
        if ready >= input.total && input.total > 0 {
            self.plan.status.stable_revision = Some(desired.to_owned());
            self.plan.status.canary_revision = None;
            self.settled(desired);
        } else {
            self.phase(
                PROGRESSING,
                format!("{ready}/{} pods of revision {desired} ready", input.total),
            );
        }
    }

    /// The spec's revision is the stable one.
    fn settled(&mut self, stable: &str) {
        if let Some(back) = self.post_promotion(stable) {
            return self.switch_back(stable, &back);
        }
        self.settle(stable);
    }

    /// Blue-green after a promotion: the post-promotion analysis of the new active revision, while the
    /// previous one still runs. Returns the revision to switch back to when the analysis failed.
    fn post_promotion(&mut self, stable: &str) -> Option<String> {
        let input = self.input;
        let reference = input
            .rollout
            .blue_green
            .as_ref()
            .and_then(|b| b.post_promotion_analysis.clone())
            .filter(|_| input.rollout.strategy == RolloutStrategy::BlueGreen)?;
        let previous = self.prev.previous_revision.clone()?;
        if previous == stable || !input.revisions.contains_key(&previous) {
            return None;
        }
        // Only after a promotion: not after a switch back or an undo to the previous revision.
        if self
            .prev
            .abort
            .as_ref()
            .is_some_and(|a| a.revision == previous)
        {
            return None;
        }
        let a = self.analysis("post-promotion", stable, &reference);
        match a.phase.as_str() {
            FAILED | ERROR => {
                let abort = self.analysis_abort(stable, &a);
                self.plan.status.abort = Some(abort);
                Some(previous)
            }
            SUCCESSFUL => None,
            _ => {
                // Undecided: the previous revision stays at full size past its delay.
                self.hold_previous = true;
                None
            }
        }
    }

    /// The post-promotion analysis failed: the active Service goes back to `back` (still at full size)
    /// at once; the failed revision is aborted and scaled away.
    fn switch_back(&mut self, failed: &str, back: &str) {
        let abort = self.plan.status.abort.clone();
        self.prev.previous_revision = Some(failed.to_owned());
        self.prev.scale_down_at = None;
        self.settle(back);
        self.plan.status.previous_revision = Some(failed.to_owned());
        self.plan.status.abort = abort;
        self.plan.fully_promoted = false;
        self.phase(
            ABORTED,
            format!(
                "post-promotion analysis of revision {failed} failed: active switched back to revision {back}; {}",
                self.plan.status.abort.as_ref().map(|a| a.message.clone()).unwrap_or_default()
            ),
        );
    }

    fn settle(&mut self, stable: &str) {
        let input = self.input;
        let s = &mut self.plan.status;
        s.stable_revision = Some(stable.to_owned());
        s.canary_revision = None;
        s.current_step_index = None;
        s.step_started_at = None;
        s.abort = None;
        s.weights = Weights::default();
        self.plan.stable_pin = Some(stable.to_owned());
        self.plan.canary_target = stable.to_owned();
        self.plan.route_weight = Some(0);
        self.set(stable, input.total);
        self.retire_others(stable, &[], false);
        let ready = pods(input, stable).ready;
        let others_gone = input
            .revisions
            .iter()
            .filter(|(r, _)| r.as_str() != stable)
            .all(|(_, l)| l.spec == 0 && l.pods.replicas == 0);
        self.plan.fully_promoted = ready >= input.total && input.total > 0 && others_gone;
        if input.rollout.paused {
            self.pause("Paused");
            self.plan.status.message = "paused; `kybctl rollout resume` continues".into();
        } else if ready >= input.total {
            self.phase(
                HEALTHY,
                format!("{ready}/{} pods of revision {stable} ready", input.total),
            );
        } else {
            self.phase(
                PROGRESSING,
                format!("{ready}/{} pods of revision {stable} ready", input.total),
            );
        }
    }

    /// Switches the stable Service to `to` (already at full size and ready).
    fn switch(&mut self, from: &str, to: &str, delay_seconds: i64) {
        self.plan.status.previous_revision = Some(from.to_owned());
        self.plan.status.scale_down_at = Some(Time(after(self.input.now, delay_seconds)));
        self.prev.previous_revision = self.plan.status.previous_revision.clone();
        self.prev.scale_down_at = self.plan.status.scale_down_at.clone();
        self.settled(to);
    }

    /// The canary (or preview) of `stable` was aborted: traffic back to stable at once, stable to full
    /// size, then the new revision's pods go.
    fn aborted(&mut self, stable: &str, canary: &str, abort: AbortStatus) {
        let input = self.input;
        self.plan.stable_pin = Some(stable.to_owned());
        self.plan.canary_target = stable.to_owned();
        self.plan.route_weight = Some(0);
        self.set(stable, input.total);
        let stable_ready = pods(input, stable).ready;
        let canary_live = input.revisions.get(canary).copied().unwrap_or_default();
        // With a route, stable never shrank: the canary can go now. By replica ratio it is removed as
        // stable pods come back.
        let keep = if routed(input) {
            0
        } else {
            (input.total - stable_ready).max(0).min(canary_live.spec)
        };
        if input.revisions.contains_key(canary) {
            self.set(canary, keep);
        }
        self.retire_others(stable, &[canary], false);
        self.plan.status.weights = Weights::default();
        self.plan.status.pause_conditions.clear();
        // The runs that led here stay in the status, so the abort can be traced to its numbers.
        if self.plan.status.analysis.is_empty() {
            self.plan.status.analysis = self.prev.analysis.clone();
        }
        self.phase(
            ABORTED,
            format!(
                "{}; stable revision {stable} {stable_ready}/{} ready; `kybctl rollout retry` starts again, `undo` returns the spec",
                abort.message, input.total
            ),
        );
        self.plan.status.abort = Some(abort);
    }

    /// A new revision next to a stable one: the strategy's steps.
    fn progress(&mut self, stable: &str) {
        let input = self.input;
        let now = input.now;
        let desired = input.desired;
        let s = &mut self.plan.status;
        s.stable_revision = Some(stable.to_owned());
        s.canary_revision = Some(desired.to_owned());
        let new = self.prev.canary_revision.as_deref() != Some(desired);
        let mut step = if new {
            0
        } else {
            self.prev.current_step_index.unwrap_or(0)
        };
        if new {
            self.plan.status.attempt += 1;
        }
        let mut abort = self.prev.abort.clone().filter(|a| a.revision == desired);
        if let Some(a) = &abort {
            if input.commands.retry.as_deref() == Some(commands::retry_token(a).as_str()) {
                abort = None;
                step = 0;
                self.prev.step_started_at = None;
                self.plan.status.attempt += 1;
            }
        }
        if abort.is_none() && input.commands.abort.as_deref() == Some(desired) {
            abort = Some(AbortStatus {
                revision: desired.to_owned(),
                reason: "AbortedByUser".into(),
                message: format!("rollout of revision {desired} aborted by `kybctl rollout abort`"),
                at: Time(now),
            });
        }
        if input.commands.promote.as_deref() == Some(commands::promote_full_token(desired).as_str())
        {
            step = i32::MAX;
        }
        // Earlier canaries (replaced by a newer spec mid-rollout) leave at once.
        self.retire_others(stable, &[desired], true);
        self.plan.stable_pin = Some(stable.to_owned());
        self.plan.canary_target = desired.to_owned();
        self.set(stable, input.total);
        self.plan.status.current_step_index = Some(step.min(self.step_count()));
        if let Some(a) = abort {
            return self.aborted(stable, desired, a);
        }
        match &input.gate {
            Gate::Open => {}
            Gate::Waiting(m) => {
                self.plan.status.step_started_at = None;
                self.keep_canary_at(desired, 0);
                return self.phase(
                    PROGRESSING,
                    format!("{m}; revision {desired} gets no pods or traffic until it succeeds"),
                );
            }
            Gate::Failed(m) => {
                self.keep_canary_at(desired, 0);
                return self.phase(
                    DEGRADED,
                    format!("{m}; revision {desired} never got traffic, stable revision {stable} untouched"),
                );
            }
        }
        if input.rollout.paused {
            // The clock restarts on resume: a pause is not progress.
            self.plan.status.step_started_at = None;
            let keep = input.revisions.get(desired).map_or(0, |l| l.spec);
            self.keep_canary_at(desired, keep);
            if let Some(l) = input.revisions.get(stable) {
                self.set(stable, l.spec);
            }
            self.plan.stable_pin = self.current_pin(stable);
            self.pause("Paused");
            self.plan.status.message =
                format!("paused at step {step}; `kybctl rollout resume` continues");
            return;
        }
        let started = if new {
            now
        } else {
            self.prev.step_started_at.as_ref().map_or(now, |t| t.0)
        };
        match input.rollout.strategy {
            RolloutStrategy::BlueGreen => self.blue_green(stable, step, started),
            _ => self.canary(stable, step, started),
        }
    }

    fn keep_canary_at(&mut self, canary: &str, replicas: i32) {
        if replicas > 0 || self.input.revisions.contains_key(canary) {
            self.set(canary, replicas);
        }
    }

    /// What `<name>` selects while a rollout holds still: every pod with replica-ratio weights
    /// (the split is the weight), only stable otherwise.
    fn current_pin(&self, stable: &str) -> Option<String> {
        match self.input.rollout.strategy {
            RolloutStrategy::Canary if !routed(self.input) => None,
            _ => Some(stable.to_owned()),
        }
    }

    fn step_count(&self) -> i32 {
        match self.input.rollout.strategy {
            RolloutStrategy::BlueGreen => 3,
            _ => self.canary_spec().steps.len() as i32,
        }
    }

    fn canary_spec(&self) -> CanarySpec {
        self.input.rollout.canary.clone().unwrap_or_default()
    }

    /// Starts step `step` now.
    fn advance(&mut self, step: &mut i32, started: &mut Timestamp) {
        *step += 1;
        *started = self.input.now;
    }

    /// A step that moves pods has until `progressDeadlineSeconds` after it started.
    fn deadline(&mut self, stable: &str, step: i32, started: Timestamp) -> bool {
        let seconds = i64::from(self.input.rollout.progress_deadline_seconds);
        let due = after(started, seconds);
        if self.input.now < due {
            self.soonest(until(self.input.now, due));
            return false;
        }
        let desired = self.input.desired;
        let abort = AbortStatus {
            revision: desired.to_owned(),
            reason: "ProgressDeadlineExceeded".into(),
            message: format!(
                "step {step} of revision {desired} did not complete within progressDeadlineSeconds ({seconds}s)"
            ),
            at: Time(self.input.now),
        };
        self.aborted(stable, desired, abort);
        true
    }

    fn blue_green(&mut self, stable: &str, mut step: i32, mut started: Timestamp) {
        const PREVIEW: i32 = 0;
        const AWAIT_PROMOTION: i32 = 1;
        let input = self.input;
        let preview = input.desired;
        let bg: BlueGreenSpec = input.rollout.blue_green.clone().unwrap_or_default();
        let total = input.total;
        let preview_size = bg
            .preview_replica_count
            .unwrap_or(total)
            .clamp(1, total.max(1));
        let live = pods(input, preview);
        if step == i32::MAX {
            step = AWAIT_PROMOTION + 1;
        }
        if step == PREVIEW {
            self.set(preview, preview_size);
            if live.ready >= preview_size {
                self.advance(&mut step, &mut started);
            } else {
                self.plan.status.current_step_index = Some(step);
                self.plan.status.step_started_at = Some(Time(started));
                if !self.deadline(stable, step, started) {
                    self.phase(
                        PROGRESSING,
                        format!(
                            "starting the preview: {}/{preview_size} pods of revision {preview} ready",
                            live.ready
                        ),
                    );
                }
                return;
            }
        }
        if step == AWAIT_PROMOTION {
            self.set(preview, preview_size);
            self.plan.status.current_step_index = Some(step);
            self.plan.status.step_started_at = Some(Time(started));
            if let Some(reference) = &bg.pre_promotion_analysis {
                let a = self.analysis("pre-promotion", preview, reference);
                match a.phase.as_str() {
                    SUCCESSFUL => {}
                    FAILED | ERROR => {
                        let abort = self.analysis_abort(preview, &a);
                        return self.aborted(stable, preview, abort);
                    }
                    INCONCLUSIVE => {
                        self.pause("AnalysisInconclusive");
                        self.plan.status.message = format!(
                            "pre-promotion analysis inconclusive ({}): {}; `kybctl rollout promote --full` switches anyway, `abort` stops",
                            a.run, a.message
                        );
                        return;
                    }
                    _ => {
                        return self.phase(
                            PROGRESSING,
                            format!(
                                "pre-promotion analysis of the preview running ({}): {}",
                                a.run, a.message
                            ),
                        )
                    }
                }
            }
            let token = commands::promote_token(preview, AWAIT_PROMOTION);
            let auto_at = bg
                .auto_promotion_enabled
                .then(|| after(started, i64::from(bg.auto_promotion_seconds.unwrap_or(0))));
            let promoted = input.commands.promote.as_deref() == Some(token.as_str())
                || auto_at.is_some_and(|at| input.now >= at);
            if promoted {
                self.advance(&mut step, &mut started);
            } else {
                if let Some(at) = auto_at {
                    self.soonest(until(input.now, at));
                }
                self.pause("BlueGreenPause");
                self.plan.status.message = format!(
                    "preview revision {preview} ready ({}/{preview_size}) behind the preview Service; `kybctl rollout promote` switches the active Service",
                    live.ready
                );
                return;
            }
        }
        // Promoting: the preview grows to full size, then the active Service switches to it.
        self.set(preview, total);
        self.plan.status.current_step_index = Some(step);
        self.plan.status.step_started_at = Some(Time(started));
        if live.ready >= total {
            return self.switch(stable, preview, i64::from(bg.scale_down_delay_seconds));
        }
        if !self.deadline(stable, step, started) {
            self.phase(
                PROGRESSING,
                format!(
                    "scaling the preview to full size before the switch: {}/{total} pods of revision {preview} ready",
                    live.ready
                ),
            );
        }
    }

    /// The canary's pods (and route weight) for `weight`, approached within the surge; whether reached.
    fn weigh(&mut self, stable: &str, weight: i32, scale: CanaryScale) -> bool {
        let input = self.input;
        let canary = input.desired;
        let total = input.total;
        let (s, c) = (pods(input, stable), pods(input, canary));
        self.plan.status.weights.desired = weight;
        if routed(input) {
            let target = split::by_route(total, weight, scale);
            self.set(stable, total);
            self.set(canary, target.canary);
            let canary_up = c.ready >= target.canary;
            // The route sends nothing to pods that are not there yet.
            let previous = self.prev.weights.effective.min(weight);
            let route = if canary_up { weight } else { previous };
            self.plan.route_weight = Some(route);
            self.plan.status.weights.effective = route;
            return canary_up && s.ready >= total;
        }
        let target: Split = split::by_replicas(total, weight);
        let surge = split::surge_pods(&self.canary_spec().max_surge, total);
        let (stable_scale, canary_scale) = split::step_towards(total, surge, target, s, c);
        self.set(stable, stable_scale);
        self.set(canary, canary_scale);
        self.plan.stable_pin = None;
        self.plan.status.weights.effective = split::percent(c.ready, c.ready + s.ready);
        s.replicas == target.stable
            && s.ready >= target.stable
            && c.replicas == target.canary
            && c.ready >= target.canary
    }

    /// The weight and canary scale in force at `step`: the last ones set before it.
    fn in_force(&self, step: usize) -> (i32, CanaryScale) {
        let steps = self.canary_spec().steps;
        let mut weight = 0;
        let mut scale = CanaryScale::MatchWeight;
        for s in steps.iter().take(step) {
            if let Some(w) = s.set_weight {
                weight = w;
            }
            if let Some(cs) = &s.set_canary_scale {
                scale = match (cs.replicas, cs.weight) {
                    (Some(n), _) => CanaryScale::Replicas(n),
                    (None, Some(p)) => CanaryScale::Percent(p),
                    _ => CanaryScale::MatchWeight,
                };
            }
        }
        (weight, scale)
    }

    fn canary(&mut self, stable: &str, mut step: i32, mut started: Timestamp) {
        let input = self.input;
        let canary = input.desired;
        let steps: Vec<CanaryStep> = self.canary_spec().steps;
        let n = steps.len() as i32;
        step = step.min(n);
        if let Some(bg) = self.canary_spec().analysis {
            if step >= bg.starting_step.unwrap_or(0) {
                let a = self.analysis("background", canary, &bg);
                match a.phase.as_str() {
                    FAILED | ERROR => {
                        let abort = self.analysis_abort(canary, &a);
                        return self.aborted(stable, canary, abort);
                    }
                    INCONCLUSIVE => {
                        let (weight, scale) = self.in_force(step as usize);
                        self.weigh(stable, weight, scale);
                        self.plan.status.current_step_index = Some(step);
                        self.plan.status.step_started_at = Some(Time(started));
                        self.pause("AnalysisInconclusive");
                        self.plan.status.message = format!(
                            "background analysis inconclusive ({}): {}; `kybctl rollout abort` stops, then `retry` starts again with new analysis runs",
                            a.run, a.message
                        );
                        return;
                    }
                    _ => {}
                }
            }
        }
        loop {
            self.plan.status.current_step_index = Some(step);
            self.plan.status.step_started_at = Some(Time(started));
            self.plan.status.pause_conditions.clear();
            if step >= n {
                if self.weigh(stable, 100, CanaryScale::MatchWeight)
                    || pods(input, canary).ready >= input.total
                {
                    // Every pod of the canary is ready: it becomes stable, the old one retires.
                    return self.switch(stable, canary, 0);
                }
                break;
            }
            let at = &steps[step as usize];
            let (weight, scale) = self.in_force(step as usize);
            if let Some(w) = at.set_weight {
                if self.weigh(stable, w, scale) {
                    self.advance(&mut step, &mut started);
                    continue;
                }
                break;
            }
            if at.set_canary_scale.is_some() {
                self.advance(&mut step, &mut started);
                continue;
            }
            // A pause or an analysis step: hold the weight in force.
            self.weigh(stable, weight, scale);
            let token = commands::promote_token(canary, step);
            if input.commands.promote.as_deref() == Some(token.as_str()) {
                self.advance(&mut step, &mut started);
                continue;
            }
            if let Some(reference) = &at.analysis {
                let a = self.analysis(&format!("step-{step}"), canary, reference);
                match a.phase.as_str() {
                    SUCCESSFUL => {
                        self.advance(&mut step, &mut started);
                        continue;
                    }
                    FAILED | ERROR => {
                        let abort = self.analysis_abort(canary, &a);
                        return self.aborted(stable, canary, abort);
                    }
                    INCONCLUSIVE => {
                        self.pause("AnalysisInconclusive");
                        self.plan.status.message = format!(
                            "step {step}: analysis inconclusive ({}): {}; `kybctl rollout promote` continues, `abort` stops",
                            a.run, a.message
                        );
                    }
                    _ => self.phase(
                        PROGRESSING,
                        format!(
                            "step {step}: analysis running at {weight} % ({}): {}",
                            a.run, a.message
                        ),
                    ),
                }
                return;
            }
            if let Some(d) = at.pause.as_ref().and_then(|p| p.duration.as_deref()) {
                let d = humantime::parse_duration(d).unwrap_or_default();
                let end = after(started, d.as_secs() as i64);
                if input.now >= end {
                    self.advance(&mut step, &mut started);
                    continue;
                }
                self.soonest(until(input.now, end));
                self.pause("CanaryPauseStep");
                self.plan.status.message = format!(
                    "step {step}: paused at {weight} % until {}; `kybctl rollout promote` continues now",
                    end
                );
                return;
            }
            self.pause("CanaryPauseStep");
            self.plan.status.message =
                format!("step {step}: paused at {weight} %; `kybctl rollout promote` continues");
            return;
        }
        if !self.deadline(stable, step, started) {
            let (s, c) = (pods(input, stable), pods(input, canary));
            self.phase(
                PROGRESSING,
                format!(
                    "step {step}: weight {} % desired, {} % effective; ready pods {}/{} canary, {}/{} stable",
                    self.plan.status.weights.desired,
                    self.plan.status.weights.effective,
                    c.ready,
                    self.plan.scale.get(canary).copied().unwrap_or(0),
                    s.ready,
                    self.plan.scale.get(stable).copied().unwrap_or(0)
                ),
            );
        }
    }
}

/// The Event a status change deserves (step, pause, promotion, abort), if any: (warning, reason, note).
pub fn event(
    prev: Option<&RolloutStatus>,
    next: &RolloutStatus,
) -> Option<(bool, &'static str, String)> {
    let before = prev.cloned().unwrap_or_default();
    let key = |s: &RolloutStatus| {
        (
            s.phase.clone(),
            s.current_step_index,
            s.stable_revision.clone(),
            s.canary_revision.clone(),
            s.abort.is_some(),
        )
    };
    if key(&before) == key(next) {
        return None;
    }
    let note = next.message.clone();
    Some(match next.phase.as_str() {
        ABORTED => (true, "RolloutAborted", note),
        DEGRADED => (true, "RolloutDegraded", note),
        _ if before.stable_revision.is_some() && next.stable_revision != before.stable_revision => {
            (
                false,
                "RolloutPromoted",
                format!(
                    "revision {} is stable (was {}); {note}",
                    next.stable_revision.as_deref().unwrap_or("?"),
                    before.stable_revision.as_deref().unwrap_or("?")
                ),
            )
        }
        PAUSED => (false, "RolloutPaused", note),
        HEALTHY => (false, "RolloutHealthy", note),
        _ => (false, "RolloutStep", note),
    })
}

pub fn plan(input: &Input) -> Plan {
    let prev = input.previous.cloned().unwrap_or_default();
    let plan = Plan {
        scale: input
            .revisions
            .iter()
            .map(|(r, l)| (r.clone(), l.spec))
            .collect(),
        stable_pin: None,
        canary_target: input.desired.to_owned(),
        route_weight: None,
        status: RolloutStatus::default(),
        requeue: None,
        fully_promoted: false,
        wanted: Vec::new(),
    };
    let mut p = Planner {
        input,
        prev,
        plan,
        hold_previous: false,
    };
    // Never reset: every rollout and every retry names its analysis runs afresh.
    p.plan.status.attempt = p.prev.attempt;
    let stable = p
        .prev
        .stable_revision
        .clone()
        .filter(|r| input.revisions.contains_key(r));
    let undo_window = match (&p.prev.previous_revision, &p.prev.scale_down_at) {
        (Some(rev), Some(at)) => rev == input.desired && at.0 > input.now,
        _ => false,
    };
    match stable {
        None => p.initial(),
        Some(s) if s == input.desired => p.settled(&s),
        // Undo to the revision a blue-green promotion just replaced, still at full size: switch back
        // at once, no steps.
        Some(s) if undo_window && pods(input, input.desired).ready >= input.total => {
            let delay = input
                .rollout
                .blue_green
                .as_ref()
                .map_or(30, |b| b.scale_down_delay_seconds);
            p.switch(&s, input.desired, i64::from(delay));
        }
        Some(s) => p.progress(&s),
    }
    p.plan
}

#[cfg(test)]
mod tests;
