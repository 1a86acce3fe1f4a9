//! `kybctl rollout`: follow and steer a KybPlatform's rollout, in the manner of `kubectl rollout` and
//! `kubectl argo rollouts`. `status` reports whether the latest spec has rolled out, for people and for
//! CI; `pause`/`resume` set `spec.rollout.paused`; `promote`, `abort` and `retry` give the operator a
//! command (an annotation, see `operator::commands`); `undo` restores an earlier revision's spec;
//! `get` and `history` show `status.rollout`.
//!
//! This module is the commands and their I/O: it only reads, watches, patches and prints. Every
//! decision is a pure function of the KybPlatform elsewhere: the verdict in `rollout_status`, which
//! token to write or why not and the undo target and its patch in `rollout_actions`, what `get` and
//! `history` print in `rollout_view`.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use serde_json::Value;

use super::exit;
use super::output::Format;
use super::rollout_actions::{abort, promote, retry, undo, Decision};
use super::rollout_status::{verdict, Verdict};
use super::rollout_view;
use crate::operator::crd::KybPlatform;

#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Report whether the latest spec has rolled out. Exit codes: 0 Healthy, 1 Degraded or Aborted, 3
    /// Paused, 4 still progressing (without --watch, or when --timeout passed), 2 usage or environment
    /// error.
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
    /// Show the rollout: strategy, phase, step, weights, stable and canary revisions, pause and abort,
    /// and every kept revision with its pods. Exit codes: 0 shown, 2 usage or environment error.
    Get {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// `json` and `yaml`: {name, namespace, strategy, generation, observedGeneration, rollout}
        /// with `rollout` as in `status.rollout`.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// List the revisions the operator keeps (BlueGreen and Canary), newest first. A RollingUpdate
    /// platform keeps none in the KybPlatform: a hint is printed instead. Exit codes: 0 listed (or the
    /// hint), 2 usage or environment error.
    History {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Move a BlueGreen or Canary rollout past the pause or analysis step it waits at (BlueGreen: the
    /// wait for promotion, so the active Service switches). A setWeight step completes on its own and
    /// is not promoted (use --full). Repeating a promote is a no-op, never a second step. Exit codes: 0
    /// promoted (or already promoted: a no-op, which the message says), 1 refused because the rollout's
    /// state does not allow it (the message says why and what to do instead), 2 usage or environment
    /// error (not found, API unreachable, patch rejected).
    Promote {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// Skip every remaining step: the new revision goes to full size and becomes stable.
        #[arg(long)]
        full: bool,
    },
    /// Abort the rollout of the canary (or preview) revision: traffic returns to the stable revision at
    /// once and the new revision's pods go. The spec keeps asking for the new revision until `retry`
    /// (run it again) or `undo` (back to the stable spec). Exit codes: 0 aborting (or already
    /// aborted or asked to), 1 refused (nothing to abort, or a stale status), 2 usage or environment
    /// error.
    Abort {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Start an aborted rollout again from its first step (clearing the abort and promote commands).
    /// Exit codes: 0 retrying (or already retried or asked to), 1 refused (not aborted, or a stale
    /// status), 2 usage or environment error.
    Retry {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
    },
    /// Restore an earlier revision's spec (image and configuration; replicas, autoscaling and rollout
    /// stay as they are) from `status.rollout.revisions`. Default: the stable revision while a canary
    /// or preview is in progress, else the revision before the stable one. Also clears pending
    /// `abort` and `promote` commands. Exit codes: 0 restored (or already at that revision), 1
    /// refused (revision not kept, no history: RollingUpdate), 2 usage or environment error, or the
    /// KybPlatform was changed by someone else meanwhile (the patch tests its resourceVersion, so
    /// nothing is changed).
    Undo {
        name: String,
        #[arg(short, long, default_value = "default")]
        namespace: String,
        /// The revision NUMBER to restore (as `kybctl rollout history` lists it).
        #[arg(long, value_name = "NUMBER")]
        to_revision: Option<i64>,
    },
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
        RolloutCommand::Get {
            name,
            namespace,
            output,
        } => {
            show(&name, &namespace, |kp| {
                rollout_view::render_get(kp, &namespace, output)
            })
            .await
        }
        RolloutCommand::History { name, namespace } => {
            show(&name, &namespace, rollout_view::render_history).await
        }
        RolloutCommand::Promote {
            name,
            namespace,
            full,
        } => act(&name, &namespace, "promote", |kp| promote(kp, full)).await,
        RolloutCommand::Abort { name, namespace } => act(&name, &namespace, "abort", abort).await,
        RolloutCommand::Retry { name, namespace } => act(&name, &namespace, "retry", retry).await,
        RolloutCommand::Undo {
            name,
            namespace,
            to_revision,
        } => act(&name, &namespace, "undo", |kp| undo(kp, to_revision)).await,
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

/// `get` and `history`: read once, print what `render` makes of it.
async fn show(name: &str, ns: &str, render: impl FnOnce(&KybPlatform) -> String) -> u8 {
    let api = match api(ns).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    match get(&api, ns, name).await {
        Ok(kp) => {
            print!("{}", render(&kp));
            exit::OK
        }
        Err(code) => code,
    }
}

/// The apiserver's own words for a refused request (kube's Display of a Status is its Debug dump).
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

/// `promote`, `abort`, `retry` and `undo`: read, decide, send the one patch decided. An undo whose
/// resourceVersion test fails because only the status moved (the operator writes it as pods become
/// ready) is decided again on a fresh read; a change of the spec or the annotations is reported.
async fn act(name: &str, ns: &str, verb: &str, decide: impl Fn(&KybPlatform) -> Decision) -> u8 {
    let api = match api(ns).await {
        Ok(a) => a,
        Err(code) => return code,
    };
    let mut kp = match get(&api, ns, name).await {
        Ok(kp) => kp,
        Err(code) => return code,
    };
    let mut attempts = 0;
    loop {
        attempts += 1;
        let decision = decide(&kp);
        let json = matches!(decision, Decision::Json { .. });
        let (result, done) = match decision {
            Decision::NoOp(message) => {
                println!("{name}: {message}");
                return exit::OK;
            }
            Decision::Refused(message) => {
                eprintln!("{name}: {message}");
                return exit::CHECK_FAILED;
            }
            Decision::Merge { patch, done } => (
                api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await,
                done,
            ),
            Decision::Json { ops, done } => {
                let patch = match serde_json::from_value(Value::Array(ops)) {
                    Ok(p) => p,
                    Err(e) => {
                        eprintln!("error: cannot build the {verb} patch: {e}");
                        return exit::USAGE;
                    }
                };
                (
                    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
                        .await,
                    done,
                )
            }
        };
        match result {
            Ok(_) => {
                println!("{name}: {done}");
                return exit::OK;
            }
            // The apiserver answers a failed `test` like any JSON patch it cannot apply (422
            // Invalid, no detail): a changed resourceVersion tells the two apart.
            Err(e)
                if json && matches!(&e, kube::Error::Api(s) if s.code == 422 || s.code == 409) =>
            {
                let fresh = match get(&api, ns, name).await {
                    Ok(fresh) => fresh,
                    Err(code) => return code,
                };
                if fresh.metadata.resource_version == kp.metadata.resource_version {
                    eprintln!(
                        "error: KybPlatform {ns}/{name} rejected the {verb} patch: {}",
                        api_message(&e)
                    );
                    return exit::USAGE;
                }
                let same = fresh.metadata.generation == kp.metadata.generation
                    && fresh.metadata.annotations == kp.metadata.annotations;
                if same && attempts < 3 {
                    tracing::debug!(
                        verb,
                        "only the status changed since the read; deciding again on a fresh read"
                    );
                    kp = fresh;
                    continue;
                }
                eprintln!(
                    "error: KybPlatform {ns}/{name} changed while {verb} was preparing its patch (someone else edited it); nothing was changed: check `kybctl rollout get {name} -n {ns}` and run {verb} again"
                );
                return exit::USAGE;
            }
            Err(e) => {
                eprintln!(
                    "error: cannot patch KybPlatform {ns}/{name} ({verb}): {}",
                    api_message(&e)
                );
                return exit::USAGE;
            }
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
