//! The verdict of `kybctl rollout status`: where a KybPlatform's rollout stands (Healthy,
//! Progressing, Paused, Degraded or Aborted) and the exit code CI reads from it. A pure function of
//! the KybPlatform; `rollout` reads and watches it.

use super::exit;
use crate::operator::crd::KybPlatform;
use crate::operator::progressive::{ABORTED, DEGRADED as ROLLOUT_DEGRADED, PAUSED};
use crate::operator::status::{DEGRADED, PROGRESSING, READY};

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy(String),
    Progressing(String),
    Paused(String),
    Degraded(String),
    /// The new revision was aborted (by the user or by a failed step): as bad as Degraded for CI.
    Aborted(String),
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Healthy(_) => exit::OK,
            Verdict::Degraded(_) | Verdict::Aborted(_) => exit::CHECK_FAILED,
            Verdict::Paused(_) => exit::PAUSED,
            Verdict::Progressing(_) => exit::NOT_SETTLED,
        }
    }

    /// What `rollout status` prints: `NAME: PHASE: MESSAGE`.
    pub fn line(&self, name: &str) -> String {
        let (phase, message) = match self {
            Verdict::Healthy(m) => ("Healthy", m),
            Verdict::Progressing(m) => ("Progressing", m),
            Verdict::Paused(m) => ("Paused", m),
            Verdict::Degraded(m) => ("Degraded", m),
            Verdict::Aborted(m) => ("Aborted", m),
        };
        format!("{name}: {phase}: {message}")
    }
}

/// The verdict on a KybPlatform's status. A status written for an older generation says nothing about
/// the current spec, so it is Progressing until the operator has observed the latest one. An aborted
/// blue-green or canary rollout is Aborted (exit 1) from `status.rollout` alone, whatever the
/// conditions say.
pub fn verdict(kp: &KybPlatform) -> Verdict {
    let Some(status) = &kp.status else {
        return Verdict::Progressing("no status yet (is the operator running?)".into());
    };
    let generation = kp.metadata.generation.unwrap_or(0);
    if status.observed_generation.unwrap_or(0) < generation {
        return Verdict::Progressing(format!(
            "waiting for the operator to observe generation {generation}"
        ));
    }
    let rollout = status.rollout.as_ref();
    if let Some(r) = rollout.filter(|r| r.phase == ABORTED) {
        let reason = r
            .abort
            .as_ref()
            .map(|a| a.reason.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("Aborted");
        let message = if !r.message.is_empty() {
            r.message.clone()
        } else {
            r.abort
                .as_ref()
                .map(|a| a.message.clone())
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| "the rollout was aborted".into())
        };
        return Verdict::Aborted(format!("{reason}: {message}"));
    }
    let condition = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind);
    if let Some(c) = condition(DEGRADED).filter(|c| c.status == "True") {
        return Verdict::Degraded(format!("{}: {}", c.reason, c.message));
    }
    if let Some(r) = rollout.filter(|r| r.phase == ROLLOUT_DEGRADED) {
        return Verdict::Degraded(format!("RolloutDegraded: {}", r.message));
    }
    let progressing = condition(PROGRESSING);
    let rollout_paused = rollout.filter(|r| r.phase == PAUSED);
    if status.phase.as_deref() == Some("Paused") || rollout_paused.is_some() {
        return Verdict::Paused(
            rollout_paused
                .map(|r| r.message.clone())
                .filter(|m| !m.is_empty())
                .or_else(|| progressing.map(|p| p.message.clone()))
                .unwrap_or_else(|| "paused".into()),
        );
    }
    let ready = condition(READY).is_some_and(|c| c.status == "True");
    match progressing {
        Some(p) if p.status == "False" && ready => Verdict::Healthy(format!(
            "{}/{} pods ready{}",
            status.ready_replicas,
            status.replicas,
            status
                .revision
                .as_deref()
                .map(|r| format!(", revision {r}"))
                .unwrap_or_default()
        )),
        Some(p) => Verdict::Progressing(p.message.clone()),
        None => Verdict::Progressing("no Progressing condition yet".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{AbortStatus, KybPlatformStatus, RolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn kp(generation: i64, observed: i64, conditions: &[(&str, &str, &str)]) -> KybPlatform {
        let mut kp: KybPlatform =
            serde_yaml::from_str(include_str!("../../manifests/samples/minimal.yaml")).unwrap();
        kp.metadata.generation = Some(generation);
        kp.status = Some(KybPlatformStatus {
            observed_generation: Some(observed),
            conditions: conditions
                .iter()
                .map(|(t, s, r)| Condition {
                    type_: (*t).into(),
                    status: (*s).into(),
                    reason: (*r).into(),
                    message: format!("{t} is {s}"),
                    last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                    observed_generation: Some(observed),
                })
                .collect(),
            replicas: 3,
            ready_replicas: 3,
            revision: Some("abc".into()),
            ..Default::default()
        });
        kp
    }

    #[test]
    fn verdicts() {
        let healthy = [
            (READY, "True", "Available"),
            (PROGRESSING, "False", "Stable"),
            (DEGRADED, "False", "AsExpected"),
        ];
        assert_eq!(
            verdict(&kp(2, 2, &healthy)),
            Verdict::Healthy("3/3 pods ready, revision abc".into())
        );
        assert_eq!(verdict(&kp(2, 2, &healthy)).exit_code(), 0);
        // The same status for an older generation says nothing about the new spec.
        assert!(matches!(
            verdict(&kp(3, 2, &healthy)),
            Verdict::Progressing(_)
        ));
        let rolling = [
            (READY, "False", "NotAvailable"),
            (PROGRESSING, "True", "RollingOut"),
            (DEGRADED, "False", "AsExpected"),
        ];
        assert_eq!(
            verdict(&kp(2, 2, &rolling)),
            Verdict::Progressing("Progressing is True".into())
        );
        assert_eq!(verdict(&kp(2, 2, &rolling)).exit_code(), 4);
        let failed = [
            (READY, "True", "Available"),
            (PROGRESSING, "False", "Stable"),
            (DEGRADED, "True", "MigrationFailed"),
        ];
        assert_eq!(
            verdict(&kp(2, 2, &failed)),
            Verdict::Degraded("MigrationFailed: Degraded is True".into())
        );
        assert_eq!(verdict(&kp(2, 2, &failed)).exit_code(), 1);
        let mut paused = kp(2, 2, &rolling);
        paused.status.as_mut().unwrap().phase = Some("Paused".into());
        assert_eq!(
            verdict(&paused),
            Verdict::Paused("Progressing is True".into())
        );
        assert_eq!(verdict(&paused).exit_code(), 3);
        let mut none = kp(1, 1, &[]);
        none.status = None;
        assert!(matches!(verdict(&none), Verdict::Progressing(_)));
    }

    #[test]
    fn verdicts_from_the_rollout_status_alone() {
        let rolling = [
            (READY, "True", "Available"),
            (PROGRESSING, "True", "RollingOut"),
            (DEGRADED, "False", "AsExpected"),
        ];
        let mut aborted = kp(2, 2, &rolling);
        aborted.status.as_mut().unwrap().rollout = Some(RolloutStatus {
            phase: "Aborted".into(),
            message: "step 3 of revision c2 did not complete".into(),
            abort: Some(AbortStatus {
                revision: "c2".into(),
                reason: "ProgressDeadlineExceeded".into(),
                message: "deadline".into(),
                at: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            }),
            ..Default::default()
        });
        let v = verdict(&aborted);
        assert_eq!(
            v,
            Verdict::Aborted(
                "ProgressDeadlineExceeded: step 3 of revision c2 did not complete".into()
            )
        );
        assert_eq!(v.exit_code(), 1);
        assert_eq!(
            v.line("kyb"),
            "kyb: Aborted: ProgressDeadlineExceeded: step 3 of revision c2 did not complete"
        );
        // Aborted with nothing else said: still exit 1, never a panic.
        aborted.status.as_mut().unwrap().rollout = Some(RolloutStatus {
            phase: "Aborted".into(),
            ..Default::default()
        });
        assert_eq!(
            verdict(&aborted),
            Verdict::Aborted("Aborted: the rollout was aborted".into())
        );
        // Aborted wins over the Degraded condition the operator sets with it.
        let mut both = kp(
            2,
            2,
            &[
                (READY, "True", "Available"),
                (PROGRESSING, "False", "Aborted"),
                (DEGRADED, "True", "RolloutAborted"),
            ],
        );
        both.status.as_mut().unwrap().rollout = aborted.status.as_ref().unwrap().rollout.clone();
        assert!(matches!(verdict(&both), Verdict::Aborted(_)));
        // But not over a status of an older generation.
        both.metadata.generation = Some(3);
        assert!(matches!(verdict(&both), Verdict::Progressing(_)));

        let mut paused = kp(2, 2, &rolling);
        paused.status.as_mut().unwrap().rollout = Some(RolloutStatus {
            phase: "Paused".into(),
            message: "step 1: paused at 20 %".into(),
            ..Default::default()
        });
        assert_eq!(
            verdict(&paused),
            Verdict::Paused("step 1: paused at 20 %".into())
        );
        assert_eq!(verdict(&paused).exit_code(), 3);
        let mut degraded = kp(2, 2, &rolling);
        degraded.status.as_mut().unwrap().rollout = Some(RolloutStatus {
            phase: "Degraded".into(),
            message: "migration Job failed".into(),
            ..Default::default()
        });
        assert_eq!(verdict(&degraded).exit_code(), 1);
    }
}
