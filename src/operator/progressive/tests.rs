//! The rollout rules on a small simulated cluster: every scale the plan asks for is applied, and pods
//! become ready at once unless a test holds them back.

use super::*;
use crate::operator::crd::{GatewayApiRouting, PauseStep, TrafficRouting};

struct Sim {
    rollout: RolloutSpec,
    total: i32,
    revisions: BTreeMap<String, Live>,
    status: Option<RolloutStatus>,
    commands: Commands,
    gate: Gate,
    analyses: BTreeMap<String, AnalysisStatus>,
    now: Timestamp,
    /// Pods of these revisions never become ready.
    stuck: Vec<String>,
    /// Largest number of pods seen at once.
    peak: i32,
}

fn weight(w: i32) -> CanaryStep {
    CanaryStep {
        set_weight: Some(w),
        ..Default::default()
    }
}

fn pause(duration: Option<&str>) -> CanaryStep {
    CanaryStep {
        pause: Some(PauseStep {
            duration: duration.map(str::to_owned),
        }),
        ..Default::default()
    }
}

/// The plan's canary: 20 → 40 → 60 → 80 with a pause after each step.
fn plans_steps(duration: Option<&str>) -> Vec<CanaryStep> {
    [20, 40, 60, 80]
        .into_iter()
        .flat_map(|w| [weight(w), pause(duration)])
        .collect()
}

impl Sim {
    fn canary(total: i32, steps: Vec<CanaryStep>) -> Self {
        let rollout = RolloutSpec {
            strategy: RolloutStrategy::Canary,
            canary: Some(CanarySpec {
                steps,
                ..Default::default()
            }),
            ..Default::default()
        };
        Self::with(rollout, total)
    }

    fn blue_green(total: i32) -> Self {
        let rollout = RolloutSpec {
            strategy: RolloutStrategy::BlueGreen,
            blue_green: Some(BlueGreenSpec::default()),
            ..Default::default()
        };
        Self::with(rollout, total)
    }

    fn with(rollout: RolloutSpec, total: i32) -> Self {
        let mut sim = Self {
            rollout,
            total,
            revisions: BTreeMap::new(),
            status: None,
            commands: Commands::default(),
            gate: Gate::Open,
            analyses: BTreeMap::new(),
            now: Timestamp::from_second(1_800_000_000).unwrap(),
            stuck: Vec::new(),
            peak: 0,
        };
        sim.settle("a");
        assert_eq!(sim.stable(), Some("a"));
        sim
    }

    fn once(&mut self, desired: &str) -> Plan {
        let plan = plan(&Input {
            rollout: &self.rollout,
            total: self.total,
            desired,
            revisions: &self.revisions,
            previous: self.status.as_ref(),
            gate: self.gate.clone(),
            commands: &self.commands,
            analyses: &self.analyses,
            now: self.now,
        });
        for (rev, n) in &plan.scale {
            let ready = if self.stuck.contains(rev) { 0 } else { *n };
            self.revisions.insert(
                rev.clone(),
                Live {
                    spec: *n,
                    pods: Pods {
                        replicas: *n,
                        ready,
                    },
                },
            );
        }
        self.peak = self
            .peak
            .max(self.revisions.values().map(|l| l.pods.replicas).sum());
        self.status = Some(plan.status.clone());
        plan
    }

    /// Reconciles until nothing changes (as the watch events of each scale would).
    fn settle(&mut self, desired: &str) -> Plan {
        let mut last = self.once(desired);
        for _ in 0..50 {
            let next = self.once(desired);
            if next == last {
                return next;
            }
            last = next;
        }
        panic!("no fixed point: {last:?}");
    }

    fn pods(&self, rev: &str) -> i32 {
        self.revisions.get(rev).map_or(0, |l| l.pods.ready)
    }

    fn status(&self) -> &RolloutStatus {
        self.status.as_ref().unwrap()
    }

    fn stable(&self) -> Option<&str> {
        self.status().stable_revision.as_deref()
    }

    fn step(&self) -> Option<i32> {
        self.status().current_step_index
    }

    fn promote(&mut self, rev: &str) {
        let step = self.step().unwrap();
        self.commands.promote = Some(commands::promote_token(rev, step));
    }

    fn wait(&mut self, seconds: i64) {
        self.now = after(self.now, seconds);
    }
}

#[test]
fn ten_replicas_through_20_40_60_80_then_promoted() {
    let mut sim = Sim::canary(10, plans_steps(None));
    let mut seen = Vec::new();
    let mut plan = sim.settle("b");
    loop {
        seen.push((sim.pods("b"), sim.pods("a")));
        if sim.status().phase != PAUSED {
            break;
        }
        assert_eq!(
            plan.stable_pin, None,
            "replica ratio: the Service selects both"
        );
        assert_eq!(
            sim.status().weights.desired,
            sim.status().weights.effective,
            "10 replicas express every step exactly"
        );
        sim.promote("b");
        plan = sim.settle("b");
    }
    assert_eq!(seen, [(2, 8), (4, 6), (6, 4), (8, 2), (10, 0)]);
    assert_eq!(sim.stable(), Some("b"));
    assert_eq!(sim.status().phase, HEALTHY);
    assert_eq!(plan.stable_pin.as_deref(), Some("b"));
    assert!(plan.fully_promoted);
    // 25 % surge of 10 is 3 pods.
    assert!(sim.peak <= 13, "peak {}", sim.peak);
}

#[test]
fn a_repeated_promote_is_a_no_op_not_a_skipped_step() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    assert_eq!(sim.step(), Some(1));
    sim.promote("b");
    sim.settle("b");
    assert_eq!(sim.step(), Some(3));
    // The same command again (kybctl rollout promote run twice): still at step 3.
    sim.settle("b");
    assert_eq!(sim.step(), Some(3));
    assert_eq!((sim.pods("b"), sim.pods("a")), (4, 6));
}

#[test]
fn abort_moves_traffic_at_once_restores_stable_then_removes_the_canary() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    sim.promote("b");
    sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (4, 6));
    sim.commands.abort = Some("b".into());
    let first = sim.once("b");
    assert_eq!(sim.status().phase, ABORTED);
    assert_eq!(
        first.stable_pin.as_deref(),
        Some("a"),
        "the first write takes the canary out of the Service"
    );
    assert_eq!(sim.status().weights.effective, 0);
    assert_eq!(first.scale["a"], 10, "stable back to full size");
    assert_eq!(first.scale["b"], 4, "canary stays until stable is ready");
    sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 10));
    assert_eq!(sim.status().abort.as_ref().unwrap().reason, "AbortedByUser");
    assert_eq!(sim.stable(), Some("a"));

    // Retry names the abort it undoes and starts from the first step.
    let token = commands::retry_token(sim.status().abort.as_ref().unwrap());
    sim.commands = Commands {
        retry: Some(token),
        ..Default::default()
    };
    sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED);
    assert_eq!(sim.step(), Some(1));
    assert_eq!((sim.pods("b"), sim.pods("a")), (2, 8));
}

#[test]
fn undo_mid_canary_returns_to_stable_without_touching_it() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    let plan = sim.once("a");
    assert_eq!(plan.stable_pin.as_deref(), Some("a"));
    assert_eq!(plan.scale["a"], 10);
    sim.settle("a");
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 10));
    assert_eq!(sim.status().phase, HEALTHY);
}

#[test]
fn timed_pauses_continue_on_their_own() {
    let mut sim = Sim::canary(10, plans_steps(Some("10m")));
    let plan = sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED);
    assert_eq!(plan.requeue, Some(Duration::from_secs(600)));
    sim.wait(599);
    sim.settle("b");
    assert_eq!(sim.step(), Some(1));
    sim.wait(1);
    sim.settle("b");
    assert_eq!(sim.step(), Some(3));
    assert_eq!((sim.pods("b"), sim.pods("a")), (4, 6));
}

#[test]
fn a_step_past_its_deadline_aborts() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.stuck.push("b".into());
    let plan = sim.settle("b");
    assert_eq!(sim.status().phase, PROGRESSING);
    assert_eq!(plan.requeue, Some(Duration::from_secs(600)));
    sim.wait(600);
    sim.settle("b");
    assert_eq!(sim.status().phase, ABORTED);
    assert_eq!(
        sim.status().abort.as_ref().unwrap().reason,
        "ProgressDeadlineExceeded"
    );
    assert_eq!(sim.pods("a"), 10);
}

#[test]
fn the_migration_gate_keeps_every_pod_of_the_canary_away() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.gate = Gate::Waiting("migration Job kyb-migrate-x is running".into());
    sim.settle("b");
    assert_eq!(sim.status().phase, PROGRESSING);
    assert!(!sim.revisions.contains_key("b"), "no Deployment for b yet");
    sim.gate = Gate::Failed("migration Job kyb-migrate-x failed".into());
    sim.settle("b");
    assert_eq!(sim.status().phase, DEGRADED);
    assert!(sim.status().message.contains("stable revision a untouched"));
    assert_eq!(sim.pods("a"), 10);
    sim.gate = Gate::Open;
    sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (2, 8));
}

#[test]
fn raising_the_total_mid_canary_resplits_within_the_surge() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    sim.peak = 0;
    sim.total = 15;
    sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (3, 12));
    assert!(sim.peak <= 15 + 4, "peak {}", sim.peak);
}

#[test]
fn promote_full_skips_the_remaining_steps() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    sim.commands.promote = Some(commands::promote_full_token("b"));
    sim.settle("b");
    assert_eq!(sim.stable(), Some("b"));
    assert_eq!((sim.pods("b"), sim.pods("a")), (10, 0));
}

#[test]
fn a_new_spec_mid_canary_starts_over_and_drops_the_old_canary() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.settle("b");
    sim.promote("b");
    sim.settle("b");
    sim.settle("c");
    assert_eq!(sim.step(), Some(1));
    assert_eq!((sim.pods("c"), sim.pods("b"), sim.pods("a")), (2, 0, 8));
}

#[test]
fn route_weights_are_exact_and_stable_keeps_full_size() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.rollout.canary.as_mut().unwrap().traffic_routing = Some(TrafficRouting {
        gateway_api: GatewayApiRouting {
            http_route: "kyb".into(),
        },
    });
    let mut weights = Vec::new();
    loop {
        let plan = sim.settle("b");
        if sim.status().phase != PAUSED {
            break;
        }
        assert_eq!(sim.pods("a"), 10, "stable keeps its full size");
        assert_eq!(plan.stable_pin.as_deref(), Some("a"));
        weights.push((plan.route_weight.unwrap(), sim.pods("b")));
        if weights.len() == 2 {
            sim.commands.abort = Some("b".into());
            let abort = sim.once("b");
            assert_eq!(abort.route_weight, Some(0));
            assert_eq!(abort.scale["b"], 0, "abort is one weight change");
            assert_eq!(abort.scale["a"], 10);
            assert_eq!(sim.status().phase, ABORTED);
            return assert_eq!(weights, [(20, 2), (40, 4)]);
        }
        sim.promote("b");
    }
    panic!("ended before the abort: {weights:?}");
}

#[test]
fn blue_green_previews_promotes_and_keeps_the_old_version_for_the_delay() {
    let mut sim = Sim::blue_green(5);
    let plan = sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED);
    assert_eq!(sim.status().pause_conditions[0].reason, "BlueGreenPause");
    assert_eq!((sim.pods("b"), sim.pods("a")), (5, 5));
    assert_eq!(plan.stable_pin.as_deref(), Some("a"), "active unchanged");
    assert_eq!(plan.canary_target, "b", "preview selects the new pods");
    sim.promote("b");
    let plan = sim.settle("b");
    assert_eq!(
        plan.stable_pin.as_deref(),
        Some("b"),
        "promotion switches active"
    );
    assert_eq!(
        sim.pods("a"),
        5,
        "the old revision stays for scaleDownDelaySeconds"
    );
    assert_eq!(plan.requeue, Some(Duration::from_secs(30)));
    assert!(!plan.fully_promoted);
    // Undo inside the delay: straight back, no preview, no promotion.
    let back = sim.settle("a");
    assert_eq!(back.stable_pin.as_deref(), Some("a"));
    assert_eq!(sim.status().phase, HEALTHY);
    assert_eq!(sim.pods("b"), 5, "now b waits out the delay");
    sim.wait(30);
    let plan = sim.settle("a");
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 5));
    assert!(plan.fully_promoted);
}

#[test]
fn blue_green_auto_promotion_and_preview_size() {
    let mut sim = Sim::blue_green(5);
    sim.rollout.blue_green = Some(BlueGreenSpec {
        auto_promotion_enabled: true,
        auto_promotion_seconds: Some(60),
        preview_replica_count: Some(2),
        ..Default::default()
    });
    let plan = sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (2, 5));
    assert_eq!(plan.requeue, Some(Duration::from_secs(60)));
    sim.wait(60);
    let plan = sim.settle("b");
    assert_eq!(plan.stable_pin.as_deref(), Some("b"));
    assert_eq!(sim.pods("b"), 5, "scaled to full before the switch");
}

#[test]
fn a_paused_rollout_holds_every_pod() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.rollout.paused = true;
    sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED);
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 10));
    sim.rollout.paused = false;
    sim.settle("b");
    assert_eq!((sim.pods("b"), sim.pods("a")), (2, 8));
}

#[test]
fn three_replicas_report_the_weight_they_really_give() {
    let mut sim = Sim::canary(3, plans_steps(None));
    sim.settle("b");
    assert_eq!(sim.status().weights.desired, 20);
    assert_eq!(sim.status().weights.effective, 33);
    assert_eq!((sim.pods("b"), sim.pods("a")), (1, 2));
}

fn analysis_ref() -> AnalysisRef {
    AnalysisRef {
        templates: vec![crate::operator::crd::AnalysisTemplateRef {
            template_name: "success-rate".into(),
        }],
        ..Default::default()
    }
}

fn concluded(purpose: &str, phase: &str) -> (String, AnalysisStatus) {
    (
        purpose.to_owned(),
        AnalysisStatus {
            purpose: purpose.into(),
            run: format!("kyb-b-{purpose}-1"),
            phase: phase.into(),
            message: format!("success-rate: {phase}"),
        },
    )
}

fn with_analysis_step() -> Vec<CanaryStep> {
    vec![
        weight(20),
        CanaryStep {
            analysis: Some(analysis_ref()),
            ..Default::default()
        },
        weight(50),
        pause(None),
    ]
}

#[test]
fn an_analysis_step_waits_for_its_run_and_goes_on_when_it_succeeds() {
    let mut sim = Sim::canary(10, with_analysis_step());
    let plan = sim.settle("b");
    assert_eq!(sim.step(), Some(1));
    assert_eq!(sim.status().phase, PROGRESSING, "analysis running");
    assert_eq!(plan.wanted.len(), 1);
    assert_eq!(plan.wanted[0].purpose, "step-1");
    assert_eq!(plan.wanted[0].revision, "b");
    assert_eq!(plan.requeue, None, "no deadline while analysis runs");
    sim.analyses.extend([concluded("step-1", SUCCESSFUL)]);
    sim.settle("b");
    assert_eq!(sim.step(), Some(3));
    assert_eq!((sim.pods("b"), sim.pods("a")), (5, 5));
}

#[test]
fn a_failed_analysis_aborts_and_an_inconclusive_one_pauses() {
    let mut sim = Sim::canary(10, with_analysis_step());
    sim.settle("b");
    sim.analyses.extend([concluded("step-1", INCONCLUSIVE)]);
    sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED);
    assert_eq!(
        sim.status().pause_conditions[0].reason,
        "AnalysisInconclusive"
    );
    sim.analyses.extend([concluded("step-1", FAILED)]);
    let plan = sim.settle("b");
    assert_eq!(sim.status().phase, ABORTED);
    let abort = sim.status().abort.clone().unwrap();
    assert_eq!(abort.reason, "AnalysisFailed");
    assert!(
        abort.message.contains("kyb-b-step-1-1"),
        "{}",
        abort.message
    );
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 10));
    assert!(
        plan.wanted.is_empty(),
        "an aborted rollout measures nothing"
    );
}

#[test]
fn background_analysis_from_its_starting_step_aborts_on_failure() {
    let mut sim = Sim::canary(10, plans_steps(None));
    sim.rollout.canary.as_mut().unwrap().analysis = Some(AnalysisRef {
        starting_step: Some(2),
        ..analysis_ref()
    });
    let plan = sim.settle("b");
    assert_eq!(sim.step(), Some(1));
    assert!(plan.wanted.is_empty(), "not before step 2");
    sim.promote("b");
    let plan = sim.settle("b");
    assert_eq!(sim.step(), Some(3));
    assert_eq!(plan.wanted[0].purpose, "background");
    sim.analyses.extend([concluded("background", FAILED)]);
    sim.settle("b");
    assert_eq!(sim.status().phase, ABORTED);
    assert_eq!(sim.pods("a"), 10);
}

#[test]
fn every_rollout_and_retry_names_its_runs_afresh() {
    let mut sim = Sim::canary(10, with_analysis_step());
    let first = sim.settle("b").wanted[0].attempt;
    sim.analyses.extend([concluded("step-1", FAILED)]);
    sim.settle("b");
    let token = commands::retry_token(sim.status().abort.as_ref().unwrap());
    sim.analyses.clear();
    sim.commands.retry = Some(token);
    let retried = sim.settle("b").wanted[0].attempt;
    assert!(retried > first, "{first} -> {retried}");
}

#[test]
fn blue_green_pre_promotion_analysis_gates_the_switch() {
    let mut sim = Sim::blue_green(5);
    sim.rollout
        .blue_green
        .as_mut()
        .unwrap()
        .pre_promotion_analysis = Some(analysis_ref());
    let plan = sim.settle("b");
    assert_eq!(sim.status().phase, PROGRESSING);
    assert_eq!(plan.wanted[0].purpose, "pre-promotion");
    sim.analyses
        .extend([concluded("pre-promotion", SUCCESSFUL)]);
    sim.settle("b");
    assert_eq!(sim.status().phase, PAUSED, "then waits for promotion");
    sim.analyses.extend([concluded("pre-promotion", FAILED)]);
    sim.settle("b");
    assert_eq!(sim.status().phase, ABORTED);
    assert_eq!(sim.pods("b"), 0);
}

#[test]
fn blue_green_failing_post_promotion_analysis_switches_back() {
    let mut sim = Sim::blue_green(5);
    sim.rollout
        .blue_green
        .as_mut()
        .unwrap()
        .post_promotion_analysis = Some(analysis_ref());
    sim.settle("b");
    sim.promote("b");
    let plan = sim.settle("b");
    assert_eq!(plan.stable_pin.as_deref(), Some("b"));
    assert_eq!(plan.wanted[0].purpose, "post-promotion");
    assert!(!plan.fully_promoted);
    // Past the scale-down delay, the previous revision stays while the analysis runs.
    sim.wait(60);
    sim.settle("b");
    assert_eq!(sim.pods("a"), 5);
    sim.analyses.extend([concluded("post-promotion", FAILED)]);
    let plan = sim.once("b");
    assert_eq!(
        plan.stable_pin.as_deref(),
        Some("a"),
        "active back on a at once"
    );
    assert_eq!(sim.status().phase, ABORTED);
    sim.settle("b");
    assert_eq!(sim.status().phase, ABORTED);
    assert_eq!(sim.stable(), Some("a"));
    assert_eq!((sim.pods("b"), sim.pods("a")), (0, 5));
}
