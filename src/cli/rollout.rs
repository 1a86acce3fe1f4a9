//! `kybctl rollout status`: whether a KybPlatform's latest spec has rolled out, for people and for CI,
//! in the manner of `kubectl rollout status`. The decision is a pure function of the KybPlatform; the
//! watch around it only feeds it.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};

use super::exit;
use crate::operator::crd::KybPlatform;
use crate::operator::status::{DEGRADED, PROGRESSING, READY};

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Report whether the latest spec has rolled out. Exit codes: 0 Healthy, 1 Degraded, 3 Paused, 4
    /// still progressing (without --watch, or when --timeout passed), 2 usage or environment error.
    Status {
        /// The KybPlatform.
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Keep watching until the rollout is Healthy or Degraded (or --timeout passes).
        #[arg(short, long)]
        watch: bool,
        /// With --watch: give up after this long (exit 4).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Hold the rollout: running pods stay, a new spec waits. Already paused is a no-op.
    Pause {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Continue a paused rollout. Not paused is a no-op.
    Resume {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
}

/// Where a rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Healthy(String),
    Progressing(String),
    Paused(String),
    Degraded(String),
}

impl Verdict {
    pub fn exit_code(&self) -> u8 {
        match self {
            Verdict::Healthy(_) => exit::OK,
            Verdict::Degraded(_) => exit::CHECK_FAILED,
            Verdict::Paused(_) => exit::PAUSED,
            Verdict::Progressing(_) => exit::NOT_SETTLED,
        }
    }

    fn line(&self, name: &str) -> String {
        let (phase, message) = match self {
            Verdict::Healthy(m) => ("Healthy", m),
            Verdict::Progressing(m) => ("Progressing", m),
            Verdict::Paused(m) => ("Paused", m),
            Verdict::Degraded(m) => ("Degraded", m),
        };
        format!("{name}: {phase}: {message}")
    }
}

/// The verdict on a KybPlatform's status. A status written for an older generation says nothing about
/// the current spec, so it is Progressing until the operator has observed the latest one.
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
    let condition = |kind: &str| status.conditions.iter().find(|c| c.type_ == kind);
    if let Some(c) = condition(DEGRADED).filter(|c| c.status == "True") {
        return Verdict::Degraded(format!("{}: {}", c.reason, c.message));
    }
    let progressing = condition(PROGRESSING);
    if status.phase.as_deref() == Some("Paused") {
        return Verdict::Paused(
            progressing
                .map(|p| p.message.clone())
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

pub async fn run(cmd: RolloutCommand) -> u8 {
    match cmd {
        RolloutCommand::Status {
            name,
            namespace,
            watch,
            timeout,
        } => status(&name, &namespace, watch, timeout).await,
        RolloutCommand::Pause { name, namespace } => set_paused(&name, &namespace, true).await,
        RolloutCommand::Resume { name, namespace } => set_paused(&name, &namespace, false).await,
    }
}

/// Reads the KybPlatform, or prints why not and returns the exit code.
async fn get(api: &Api<KybPlatform>, ns: &str, name: &str) -> Result<KybPlatform, u8> {
    match api.get_opt(name).await {
        Ok(Some(kp)) => Ok(kp),
        Ok(None) => {
            eprintln!("error: KybPlatform {ns}/{name} not found");
            Err(exit::USAGE)
        }
        Err(e) => {
            eprintln!("error: cannot read KybPlatform {ns}/{name}: {e}");
            Err(exit::USAGE)
        }
    }
}

async fn api(ns: &str) -> Result<Api<KybPlatform>, u8> {
    match Client::try_default().await {
        Ok(c) => Ok(Api::namespaced(c, ns)),
        Err(e) => {
            eprintln!("error: cannot reach the Kubernetes API: {e}");
            Err(exit::USAGE)
        }
    }
}

/// `pause` and `resume`: one merge patch of `spec.rollout.paused`, sent only when it changes something.
async fn set_paused(name: &str, ns: &str, paused: bool) -> u8 {
    let api = match api(ns).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    let kp = match get(&api, ns, name).await {
        Ok(kp) => kp,
        Err(code) => return code,
    };
    let verb = if paused { "paused" } else { "resumed" };
    if kp.spec.rollout.paused == paused {
        println!(
            "{name}: already {}; nothing to do",
            if paused {
                "paused"
            } else {
                "running (not paused)"
            }
        );
        return exit::OK;
    }
    let patch = serde_json::json!({"spec": {"rollout": {"paused": paused}}});
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => {
            println!("{name}: {verb}");
            exit::OK
        }
        Err(e) => {
            eprintln!("error: cannot patch KybPlatform {ns}/{name}: {e}");
            exit::USAGE
        }
    }
}

async fn status(name: &str, ns: &str, watch: bool, timeout: Duration) -> u8 {
    let api = match api(ns).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    let kp = match get(&api, ns, name).await {
        Ok(kp) => kp,
        Err(code) => return code,
    };
    let mut last = verdict(&kp);
    println!("{}", last.line(name));
    if !watch || !matches!(last, Verdict::Progressing(_)) {
        return last.exit_code();
    }
    // kube-runtime's watcher re-lists and re-watches on its own after errors (an apiserver restart
    // mid-rollout is not the rollout's failure); the timeout bounds the whole wait.
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    let outcome = tokio::time::timeout(timeout, async {
        while let Some(event) = events.next().await {
            let kp = match event {
                Ok(watcher::Event::Apply(kp) | watcher::Event::InitApply(kp)) => kp,
                Ok(watcher::Event::Delete(_)) => {
                    eprintln!("error: KybPlatform {ns}/{name} was deleted");
                    return exit::USAGE;
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watch interrupted; retrying");
                    continue;
                }
            };
            let now = verdict(&kp);
            if now != last {
                println!("{}", now.line(name));
                last = now;
            }
            if !matches!(last, Verdict::Progressing(_)) {
                return last.exit_code();
            }
        }
        exit::USAGE
    })
    .await;
    outcome.unwrap_or_else(|_| {
        eprintln!(
            "error: {ns}/{name} still progressing after {}",
            humantime::format_duration(timeout)
        );
        exit::NOT_SETTLED
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::KybPlatformStatus;
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
}
