//! What `kybctl rollout get` and `kybctl rollout history` print: pure functions of the KybPlatform.

use serde::Serialize;

use super::output::{self, Format};
use super::rollout_actions::{no_history_hint, step_kind};
use crate::operator::crd::{
    AnalysisStatus, KybPlatform, RevisionStatus, RolloutStatus, RolloutStrategy,
};

/// `-o json|yaml` of `rollout get`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutView<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub strategy: RolloutStrategy,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub rollout: Option<&'a RolloutStatus>,
}

pub fn view<'a>(kp: &'a KybPlatform, namespace: &'a str) -> RolloutView<'a> {
    RolloutView {
        name: kp.metadata.name.as_deref().unwrap_or_default(),
        namespace: kp.metadata.namespace.as_deref().unwrap_or(namespace),
        strategy: kp.spec.rollout.strategy,
        generation: kp.metadata.generation,
        observed_generation: kp.status.as_ref().and_then(|s| s.observed_generation),
        rollout: kp.status.as_ref().and_then(|s| s.rollout.as_ref()),
    }
}

fn strategy_name(s: RolloutStrategy) -> &'static str {
    match s {
        RolloutStrategy::RollingUpdate => "RollingUpdate",
        RolloutStrategy::BlueGreen => "BlueGreen",
        RolloutStrategy::Canary => "Canary",
    }
}

/// The step as `get` shows it: `i/n (kind)` for a canary, the stage for blue-green.
pub fn step_line(kp: &KybPlatform, r: &RolloutStatus) -> Option<String> {
    let step = r.current_step_index?;
    match kp.spec.rollout.strategy {
        RolloutStrategy::RollingUpdate => None,
        RolloutStrategy::BlueGreen => Some(
            match step {
                0 => "preview starting",
                1 => "awaiting promotion",
                _ => "switching",
            }
            .to_owned(),
        ),
        RolloutStrategy::Canary => {
            let steps = kp
                .spec
                .rollout
                .canary
                .as_ref()
                .map_or(&[][..], |c| c.steps.as_slice());
            let kind = usize::try_from(step)
                .ok()
                .and_then(|i| steps.get(i))
                .map_or_else(|| "all steps done".to_owned(), step_kind);
            Some(format!("{step}/{} ({kind})", steps.len()))
        }
    }
}

/// NUMBER, REVISION, IMAGE, ROLE, PODS (ready/replicas), newest first.
pub fn revisions_table(revisions: &[RevisionStatus]) -> comfy_table::Table {
    let mut t = output::table(vec!["NUMBER", "REVISION", "IMAGE", "ROLE", "PODS"]);
    let mut sorted: Vec<&RevisionStatus> = revisions.iter().collect();
    sorted.sort_by_key(|r| std::cmp::Reverse(r.number));
    for r in sorted {
        t.add_row(vec![
            r.number.to_string(),
            r.revision.clone(),
            r.image.clone(),
            r.role.clone(),
            format!("{}/{}", r.ready_replicas, r.replicas),
        ]);
    }
    t
}

/// The analysis runs as `get` lists them: purpose, run, phase and message in aligned columns, one
/// run a line (continuation lines indented to the value column).
fn analysis_lines(analysis: &[AnalysisStatus]) -> String {
    fn run(a: &AnalysisStatus) -> &str {
        // Empty until the operator has created the run.
        if a.run.is_empty() {
            "-"
        } else {
            &a.run
        }
    }
    let width = |column: fn(&AnalysisStatus) -> &str| {
        analysis
            .iter()
            .map(|a| column(a).chars().count())
            .max()
            .unwrap_or(0)
    };
    let purpose_w = width(|a| &a.purpose);
    let run_w = width(run);
    let phase_w = width(|a| &a.phase);
    analysis
        .iter()
        .map(|a| {
            format!(
                "{:purpose_w$}  {:run_w$}  {:phase_w$}  {}",
                a.purpose,
                run(a),
                a.phase,
                a.message
            )
            .trim_end()
            .to_owned()
        })
        .collect::<Vec<_>>()
        .join(&format!("\n{:WIDTH$}", ""))
}

/// What to do about an inconclusive analysis the rollout waits on, as the operator's messages say
/// it; `None` when there is none (or the rollout is aborted, or past the point where promote helps).
fn inconclusive_hint(kp: &KybPlatform, r: &RolloutStatus) -> Option<String> {
    if r.abort.is_some() || r.phase == "Aborted" || r.canary_revision.is_none() {
        return None;
    }
    let name = kp.metadata.name.as_deref().unwrap_or("NAME");
    let inconclusive = |purpose: &str| {
        r.analysis
            .iter()
            .any(|a| a.phase == "Inconclusive" && a.purpose == purpose)
    };
    // The operator checks the background analysis before any step (a promote of the step cannot
    // pass it), and the pre-promotion analysis before the promotion (only --full skips it).
    if inconclusive("background") {
        Some(format!(
            "`kybctl rollout abort {name}` stops, `retry` starts it again with new analysis runs"
        ))
    } else if inconclusive("pre-promotion") {
        Some(format!(
            "`kybctl rollout promote --full {name}` switches anyway, `abort` stops"
        ))
    } else if r
        .analysis
        .iter()
        .any(|a| a.phase == "Inconclusive" && a.purpose.starts_with("step-"))
    {
        Some(format!(
            "`kybctl rollout promote {name}` continues, `abort` stops"
        ))
    } else {
        None
    }
}

/// The `get` tree: one `Key: value` line per fact, then the revisions table.
pub fn get_text(kp: &KybPlatform, namespace: &str) -> String {
    let v = view(kp, namespace);
    let mut lines: Vec<(&str, String)> = vec![
        ("Name", v.name.to_owned()),
        ("Namespace", v.namespace.to_owned()),
        ("Strategy", strategy_name(v.strategy).to_owned()),
    ];
    let generation = match (v.generation, v.observed_generation) {
        (Some(g), Some(o)) if o < g => format!("{g} (operator has observed {o})"),
        (Some(g), _) => g.to_string(),
        (None, _) => "-".into(),
    };
    let Some(r) = v.rollout else {
        lines.push((
            "Phase",
            "unknown: no rollout status yet (is the operator running?)".into(),
        ));
        lines.push(("Generation", generation));
        return key_values(&lines);
    };
    lines.push(("Phase", r.phase.clone()));
    if !r.message.is_empty() {
        lines.push(("Message", r.message.clone()));
    }
    if kp.spec.rollout.paused {
        lines.push(("Paused", "yes (spec.rollout.paused)".into()));
    }
    lines.push(("Generation", generation));
    if let Some(step) = step_line(kp, r) {
        lines.push(("Step", step));
    }
    let canary = kp.spec.rollout.strategy == RolloutStrategy::Canary;
    if canary && (r.canary_revision.is_some() || r.weights.desired != 0 || r.weights.effective != 0)
    {
        lines.push((
            "Weights",
            format!(
                "desired {} %, effective {} %",
                r.weights.desired, r.weights.effective
            ),
        ));
    }
    let image_of = |rev: &str| {
        r.revisions
            .iter()
            .find(|x| x.revision == rev)
            .map(|x| format!(" ({})", x.image))
            .unwrap_or_default()
    };
    if let Some(s) = &r.stable_revision {
        lines.push(("Stable", format!("{s}{}", image_of(s))));
    }
    if let Some(c) = &r.canary_revision {
        let label = if kp.spec.rollout.strategy == RolloutStrategy::BlueGreen {
            "Preview"
        } else {
            "Canary"
        };
        lines.push((label, format!("{c}{}", image_of(c))));
    }
    if let Some(p) = &r.previous_revision {
        let until = r
            .scale_down_at
            .as_ref()
            .map(|t| format!(", scales down at {}", t.0))
            .unwrap_or_default();
        lines.push(("Previous", format!("{p}{until}")));
    }
    if let Some(t) = &r.step_started_at {
        lines.push(("Step started", t.0.to_string()));
    }
    for p in &r.pause_conditions {
        lines.push(("Pause", format!("{} since {}", p.reason, p.start_time.0)));
    }
    if let Some(a) = &r.abort {
        lines.push((
            "Abort",
            format!(
                "revision {} at {}: {}: {}",
                a.revision, a.at.0, a.reason, a.message
            ),
        ));
    }
    if !r.analysis.is_empty() {
        lines.push(("Analysis", analysis_lines(&r.analysis)));
    }
    if let Some(hint) = inconclusive_hint(kp, r) {
        lines.push(("Hint", hint));
    }
    let mut text = key_values(&lines);
    if r.revisions.is_empty() {
        text.push_str("Revisions:     none reported\n");
    } else {
        text.push('\n');
        text.push_str(&format!("{}\n", revisions_table(&r.revisions)));
    }
    text
}

/// Where `get` values start.
const WIDTH: usize = 15;

fn key_values(lines: &[(&str, String)]) -> String {
    lines
        .iter()
        .map(|(k, v)| format!("{:WIDTH$}{v}\n", format!("{k}:")))
        .collect()
}

/// `kybctl rollout get -o FORMAT`.
pub fn render_get(kp: &KybPlatform, namespace: &str, format: Format) -> String {
    match format {
        Format::Table => get_text(kp, namespace),
        _ => output::render(format, &view(kp, namespace), comfy_table::Table::new),
    }
}

/// `kybctl rollout history`: the revisions table, or why there is none.
pub fn render_history(kp: &KybPlatform) -> String {
    let name = kp.metadata.name.as_deref().unwrap_or("NAME");
    let revisions = kp
        .status
        .as_ref()
        .and_then(|s| s.rollout.as_ref())
        .map_or(&[][..], |r| r.revisions.as_slice());
    if !revisions.is_empty() {
        return format!("{}\n", revisions_table(revisions));
    }
    if kp.spec.rollout.strategy == RolloutStrategy::RollingUpdate {
        format!("{name}: {}\n", no_history_hint(kp, "history"))
    } else {
        format!("{name}: no revisions reported yet (is the operator running?)\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::rollout_actions::tests::{blue_green, canary, settled};
    use crate::operator::crd::{AbortStatus, AnalysisStatus};

    fn analysis(purpose: &str, run: &str, phase: &str, message: &str) -> AnalysisStatus {
        AnalysisStatus {
            purpose: purpose.into(),
            run: run.into(),
            phase: phase.into(),
            message: message.into(),
        }
    }

    fn rollout_mut(kp: &mut KybPlatform) -> &mut RolloutStatus {
        kp.status.as_mut().unwrap().rollout.as_mut().unwrap()
    }

    /// `canary(4)` with a background analysis, paused at its analysis step (4) because the step's
    /// run came out inconclusive, as the operator reports it.
    fn paused_on_inconclusive_analysis() -> KybPlatform {
        let mut kp = canary(4);
        kp.spec.rollout.canary.as_mut().unwrap().analysis = Some(Default::default());
        let r = rollout_mut(&mut kp);
        r.message = "step 4: analysis inconclusive (kyb-c3-step-4-0): error-ratio: no data: the query returned no series; `kybctl rollout promote` continues, `abort` stops".into();
        r.weights.desired = 40;
        r.weights.effective = 40;
        r.pause_conditions[0].reason = "AnalysisInconclusive".into();
        r.analysis = vec![
            analysis(
                "background",
                "kyb-c3-background-0",
                "Running",
                "error-ratio: 0.01 (3 measurements)",
            ),
            analysis(
                "step-4",
                "kyb-c3-step-4-0",
                "Inconclusive",
                "error-ratio: no data: the query returned no series",
            ),
        ];
        kp
    }

    /// `canary(4)` on its second attempt, aborted by the failed run of its analysis step.
    fn aborted_by_failed_analysis() -> KybPlatform {
        let mut kp = canary(4);
        let r = rollout_mut(&mut kp);
        r.phase = "Aborted".into();
        r.message = "revision c3 aborted: step-4 analysis Failed (kyb-c3-step-4-1): error-ratio: successCondition false for 0.43".into();
        r.weights.desired = 0;
        r.weights.effective = 0;
        r.pause_conditions.clear();
        r.attempt = 1;
        r.abort = Some(AbortStatus {
            revision: "c3".into(),
            reason: "AnalysisFailed".into(),
            message: "step-4 analysis Failed (kyb-c3-step-4-1): error-ratio: successCondition false for 0.43".into(),
            at: r.step_started_at.clone().unwrap(),
        });
        r.analysis = vec![analysis(
            "step-4",
            "kyb-c3-step-4-1",
            "Failed",
            "error-ratio: successCondition false for 0.43",
        )];
        kp
    }

    /// The index of `needle` in `text`, which must contain it.
    fn at(text: &str, needle: &str) -> usize {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle:?} in\n{text}"))
    }

    #[test]
    fn get_lists_the_analysis_a_canary_waits_on_and_what_to_do() {
        let text = get_text(&paused_on_inconclusive_analysis(), "default");
        let section = [
            "Pause:         AnalysisInconclusive since 2027-01-15T08:00:00Z",
            "Analysis:      background  kyb-c3-background-0  Running       error-ratio: 0.01 (3 measurements)",
            "               step-4      kyb-c3-step-4-0      Inconclusive  error-ratio: no data: the query returned no series",
            "Hint:          `kybctl rollout promote kyb` continues, `abort` stops",
        ]
        .join("\n");
        assert!(
            text.contains(&format!("{section}\n")),
            "{section}\nin\n{text}"
        );
        // After the pause, before the revisions table.
        assert!(at(&text, "Analysis:") < at(&text, "NUMBER"), "{text}");
        assert!(!text.contains("Abort:"), "{text}");
        assert!(text.lines().all(|l| l == l.trim_end()), "{text:?}");
    }

    #[test]
    fn get_shows_the_failed_analysis_an_abort_names_and_no_hint() {
        let text = get_text(&aborted_by_failed_analysis(), "default");
        let section = [
            "Abort:         revision c3 at 2027-01-15T08:00:00Z: AnalysisFailed: step-4 analysis Failed (kyb-c3-step-4-1): error-ratio: successCondition false for 0.43",
            "Analysis:      step-4  kyb-c3-step-4-1  Failed  error-ratio: successCondition false for 0.43",
        ]
        .join("\n");
        assert!(
            text.contains(&format!("{section}\n")),
            "{section}\nin\n{text}"
        );
        assert!(at(&text, "Analysis:") < at(&text, "NUMBER"), "{text}");
        assert!(!text.contains("Pause:"), "{text}");
        assert!(!text.contains("Hint:"), "{text}");
        // An inconclusive run left over from before the abort: promote is refused now, so no hint.
        let mut kp = aborted_by_failed_analysis();
        rollout_mut(&mut kp).analysis[0].phase = "Inconclusive".into();
        let text = get_text(&kp, "default");
        assert!(!text.contains("Hint:"), "{text}");
    }

    #[test]
    fn get_omits_the_analysis_section_without_runs() {
        for kp in [canary(3), settled(), blue_green(1)] {
            let text = get_text(&kp, "default");
            assert!(!text.contains("Analysis:"), "{text}");
            assert!(!text.contains("Hint:"), "{text}");
        }
    }

    #[test]
    fn get_hints_only_what_passes_an_inconclusive_analysis() {
        // Conclusive or still running: nothing to decide.
        for phase in ["Running", "Successful"] {
            let mut kp = paused_on_inconclusive_analysis();
            rollout_mut(&mut kp).analysis[1].phase = phase.into();
            let text = get_text(&kp, "default");
            assert!(!text.contains("Hint:"), "{text}");
        }
        // The operator checks the background analysis before any step: a promote cannot pass it.
        let mut kp = paused_on_inconclusive_analysis();
        let r = rollout_mut(&mut kp);
        r.analysis[0].phase = "Inconclusive".into();
        r.analysis[1].phase = "Running".into();
        let text = get_text(&kp, "default");
        assert!(
            text.contains("Hint:          `kybctl rollout abort kyb` stops, `retry` starts it again with new analysis runs\n"),
            "{text}"
        );
        // Blue-green waits for the pre-promotion analysis before the promotion; --full skips it.
        let mut kp = blue_green(1);
        rollout_mut(&mut kp).analysis = vec![analysis(
            "pre-promotion",
            "",
            "Inconclusive",
            "error-ratio: no data",
        )];
        let text = get_text(&kp, "default");
        assert!(
            text.contains("Analysis:      pre-promotion  -  Inconclusive  error-ratio: no data\n"),
            "{text}"
        );
        assert!(
            text.contains(
                "Hint:          `kybctl rollout promote --full kyb` switches anyway, `abort` stops\n"
            ),
            "{text}"
        );
        // Post-promotion: the switch is done, nothing to promote; the previous revision is kept.
        let mut kp = settled();
        kp.spec.rollout.strategy = RolloutStrategy::BlueGreen;
        kp.spec.rollout.canary = None;
        rollout_mut(&mut kp).analysis = vec![analysis(
            "post-promotion",
            "kyb-c3-post-promotion-0",
            "Inconclusive",
            "",
        )];
        let text = get_text(&kp, "default");
        assert!(
            text.contains("Analysis:      post-promotion  kyb-c3-post-promotion-0  Inconclusive\n"),
            "{text}"
        );
        assert!(!text.contains("Hint:"), "{text}");
    }

    #[test]
    fn get_shows_the_canary_step_weights_and_revisions() {
        let text = get_text(&canary(3), "default");
        let expected = [
            "Name:          kyb",
            "Namespace:     prod",
            "Strategy:      Canary",
            "Phase:         Paused",
            "Message:       step 3: paused",
            "Generation:    7",
            "Step:          3/5 (pause 10m)",
            "Weights:       desired 20 %, effective 20 %",
            "Stable:        s2 (registry.example.com/kybctl:2)",
            "Canary:        c3 (registry.example.com/kybctl:3)",
            "Pause:         CanaryPauseStep since 2027-01-15T08:00:00Z",
        ];
        for line in expected {
            assert!(text.contains(&format!("{line}\n")), "{line:?} in\n{text}");
        }
        assert!(!text.contains("Abort:"), "{text}");
        for header in ["NUMBER", "REVISION", "IMAGE", "ROLE", "PODS"] {
            assert!(text.contains(header), "{text}");
        }
        // Newest first, pods as ready/replicas.
        let c3 = text.find("│ 3 ").expect("row 3");
        let s2 = text.find("│ 2 ").expect("row 2");
        assert!(c3 < s2, "{text}");
        assert!(text.contains("4/5"), "{text}");
    }

    #[test]
    fn get_names_the_blue_green_stage_abort_and_staleness() {
        let text = get_text(&blue_green(1), "default");
        assert!(
            text.contains("Step:          awaiting promotion\n"),
            "{text}"
        );
        assert!(text.contains("Preview:       c3"), "{text}");
        assert!(!text.contains("Weights:"), "{text}");
        let mut kp = canary(2);
        let r = kp.status.as_mut().unwrap().rollout.as_mut().unwrap();
        r.phase = "Aborted".into();
        r.abort = Some(crate::operator::crd::AbortStatus {
            revision: "c3".into(),
            reason: "AbortedByUser".into(),
            message: "aborted by you".into(),
            at: r.step_started_at.clone().unwrap(),
        });
        kp.metadata.generation = Some(8);
        let text = get_text(&kp, "default");
        assert!(
            text.contains("Abort:         revision c3 at 2027-01-15T08:00:00Z: AbortedByUser: aborted by you\n"),
            "{text}"
        );
        assert!(
            text.contains("Generation:    8 (operator has observed 7)\n"),
            "{text}"
        );
        let text = get_text(&settled(), "default");
        assert!(!text.contains("Canary:"), "{text}");
        assert!(!text.contains("Weights:"), "{text}");
        let mut bare = canary(0);
        bare.status = None;
        let text = get_text(&bare, "default");
        assert!(text.contains("no rollout status yet"), "{text}");
    }

    #[test]
    fn get_json_and_yaml_are_the_structured_object() {
        let kp = canary(1);
        let json: serde_json::Value =
            serde_json::from_str(&render_get(&kp, "default", Format::Json)).unwrap();
        assert_eq!(json["name"], "kyb");
        assert_eq!(json["namespace"], "prod");
        assert_eq!(json["strategy"], "Canary");
        assert_eq!(json["generation"], 7);
        assert_eq!(json["observedGeneration"], 7);
        assert_eq!(json["rollout"]["currentStepIndex"], 1);
        assert_eq!(json["rollout"]["canaryRevision"], "c3");
        assert_eq!(json["rollout"]["revisions"][0]["number"], 3);
        let yaml: serde_json::Value =
            serde_yaml::from_str(&render_get(&kp, "default", Format::Yaml)).unwrap();
        assert_eq!(yaml, json);
        assert_eq!(json["rollout"].get("analysis"), None, "no runs, no field");
        // The analysis runs and the attempt come along with the rest of status.rollout.
        for kp in [
            aborted_by_failed_analysis(),
            paused_on_inconclusive_analysis(),
        ] {
            let json: serde_json::Value =
                serde_json::from_str(&render_get(&kp, "default", Format::Json)).unwrap();
            let want =
                serde_json::to_value(&view(&kp, "default").rollout.unwrap().analysis).unwrap();
            assert_eq!(json["rollout"]["analysis"], want);
            let yaml: serde_json::Value =
                serde_yaml::from_str(&render_get(&kp, "default", Format::Yaml)).unwrap();
            assert_eq!(yaml, json);
        }
        let json: serde_json::Value = serde_json::from_str(&render_get(
            &aborted_by_failed_analysis(),
            "default",
            Format::Json,
        ))
        .unwrap();
        assert_eq!(json["rollout"]["attempt"], 1);
        assert_eq!(json["rollout"]["abort"]["reason"], "AnalysisFailed");
        assert_eq!(
            json["rollout"]["analysis"][0],
            serde_json::json!({
                "purpose": "step-4",
                "run": "kyb-c3-step-4-1",
                "phase": "Failed",
                "message": "error-ratio: successCondition false for 0.43",
            })
        );
        let mut bare = canary(1);
        bare.status = None;
        let json: serde_json::Value =
            serde_json::from_str(&render_get(&bare, "default", Format::Json)).unwrap();
        assert_eq!(json["rollout"], serde_json::Value::Null);
    }

    #[test]
    fn history_lists_every_kept_revision() {
        let text = render_history(&settled());
        for want in [
            "registry.example.com/kybctl:1",
            "registry.example.com/kybctl:2",
            "registry.example.com/kybctl:3",
            "stable",
            "old",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }
}
