//! The I/O side of blue-green and canary rollouts: observe each revision's Deployment from the cache,
//! ask `progressive::plan` what to do, and apply it in the order that keeps traffic safe: Services
//! and route weights first (an abort takes the canary out of traffic with its first write), then the
//! scales.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::ResourceExt;
use serde_json::{json, Value};

use super::analysis::runs;
use super::build::{self, Children, FIELD_MANAGER, REVISION_HISTORY_LIMIT, REVISION_LABEL};
use super::commands::{self, Commands, REVISION_NUMBER, REVISION_SPEC};
use super::controller::{apply, cached, delete, meta, object, Context, Error};
use super::crd::{AnalysisStatus, KybPlatform, RevisionStatus, RolloutStatus, RolloutStrategy};
use super::progressive::{self, Gate, Live};
use super::split::Pods;
use super::status::{Blocker, Migration, Rollout};

/// What a blue-green or canary reconcile found and did, for the status.
pub struct Outcome {
    pub rollout: Rollout,
    pub status: RolloutStatus,
    pub requeue: Option<Duration>,
    pub fully_promoted: bool,
    pub blocker: Option<Blocker>,
}

/// The revision Deployments of platform `name` in `ns`, by revision.
fn revision_deployments(ctx: &Context, ns: &str, name: &str) -> BTreeMap<String, Arc<Deployment>> {
    ctx.caches
        .deployments
        .state_filter(|d| {
            let labels = d.labels();
            d.namespace().as_deref() == Some(ns)
                && labels.get("app.kubernetes.io/instance").map(String::as_str) == Some(name)
                && labels.contains_key(REVISION_LABEL)
        })
        .into_iter()
        .filter_map(|d| Some((d.labels().get(REVISION_LABEL)?.clone(), d)))
        .collect()
}

fn live(d: &Deployment) -> Live {
    let spec = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let st = d.status.clone().unwrap_or_default();
    Live {
        spec,
        pods: Pods {
            replicas: spec.max(st.replicas.unwrap_or(0)),
            ready: st.ready_replicas.unwrap_or(0),
        },
    }
}

fn number(d: &Deployment) -> i64 {
    d.annotations()
        .get(REVISION_NUMBER)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn gate(migration: &Migration) -> Gate {
    match migration {
        Migration::Disabled | Migration::Succeeded { .. } => Gate::Open,
        Migration::Waiting => Gate::Waiting("migration not started".into()),
        Migration::Running { job } => Gate::Waiting(format!("migration Job {job} is running")),
        Migration::Failed { job, message } => {
            Gate::Failed(format!("migration Job {job} failed: {message}"))
        }
    }
}

/// The side Service a strategy uses, and the one it does not.
fn side(strategy: RolloutStrategy) -> (Option<&'static str>, &'static [&'static str]) {
    match strategy {
        RolloutStrategy::BlueGreen => (Some("preview"), &["canary"]),
        RolloutStrategy::Canary => (Some("canary"), &["preview"]),
        RolloutStrategy::RollingUpdate => (None, &["canary", "preview"]),
    }
}

/// Applies `svc` if it differs from the cache.
async fn apply_service(ctx: &Context, ns: &str, svc: Service) -> Result<(), Error> {
    let live = cached(&ctx.caches.services, ns, &svc.name_any());
    apply(
        &ctx.client,
        ns,
        svc,
        meta(&live),
        object(&live)?,
        &ctx.metrics,
    )
    .await?;
    Ok(())
}

/// Deletes the side Services a strategy does not use (after a strategy change).
pub async fn delete_unused_side_services(
    ctx: &Context,
    ns: &str,
    name: &str,
    strategy: RolloutStrategy,
) -> Result<(), Error> {
    for suffix in side(strategy).1 {
        let svc = format!("{name}-{suffix}");
        if cached(&ctx.caches.services, ns, &svc).is_some() {
            delete::<Service>(&ctx.client, ns, &svc, &ctx.metrics).await?;
        }
    }
    Ok(())
}

fn httproute() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        "httproutes",
    )
}

/// `rules` with the weights of the backend refs naming `stable` and `canary` set; how many refs
/// matched each.
pub fn weighted_rules(
    rules: &Value,
    stable: &str,
    canary: &str,
    weight: i32,
) -> (Value, usize, usize) {
    let mut rules = rules.clone();
    let (mut s, mut c) = (0, 0);
    for rule in rules.as_array_mut().into_iter().flatten() {
        for r in rule
            .get_mut("backendRefs")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            let kind = r.get("kind").and_then(Value::as_str).unwrap_or("Service");
            let named = r.get("name").and_then(Value::as_str).unwrap_or_default();
            if kind != "Service" {
                continue;
            }
            if named == stable {
                r["weight"] = json!(100 - weight);
                s += 1;
            } else if named == canary {
                r["weight"] = json!(weight);
                c += 1;
            }
        }
    }
    (rules, s, c)
}

/// Sets the canary's weight on the HTTPRoute. The rules list is atomic in the Gateway API schema, so
/// server-side apply takes the whole list: the operator applies it back as read, with only the two
/// weights changed, and only when they differ.
async fn set_route_weight(
    ctx: &Context,
    ns: &str,
    route: &str,
    stable: &str,
    canary: &str,
    weight: i32,
) -> Result<Option<Blocker>, Error> {
    let api = Api::<DynamicObject>::namespaced_with(ctx.client.clone(), ns, &httproute());
    ctx.metrics.reads.inc();
    let found = match api.get_opt(route).await {
        Ok(found) => found,
        // No Gateway API in the cluster: say so instead of retrying in a loop.
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(e.into()),
    };
    let Some(obj) = found else {
        return Ok(Some(Blocker {
            reason: "HTTPRouteMissing",
            message: format!(
                "HTTPRoute {route} not found in namespace {ns} (spec.rollout.canary.trafficRouting.gatewayAPI.httpRoute)"
            ),
        }));
    };
    let rules = obj
        .data
        .pointer("/spec/rules")
        .cloned()
        .unwrap_or(json!([]));
    let (next, s, c) = weighted_rules(&rules, stable, canary, weight);
    if s == 0 || c == 0 {
        return Ok(Some(Blocker {
            reason: "HTTPRouteBackends",
            message: format!(
                "HTTPRoute {route} must have backend refs to Services {stable} and {canary} (found {s} and {c})"
            ),
        }));
    }
    if next == rules {
        return Ok(None);
    }
    ctx.metrics.writes.inc();
    let patch = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": route},
        "spec": {"rules": next},
    });
    api.patch(
        route,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(None)
}

/// Scales a revision's Deployment (not the spec's revision: its template is not rebuilt).
async fn scale(ctx: &Context, ns: &str, deployment: &str, replicas: i32) -> Result<(), Error> {
    ctx.metrics.writes.inc();
    Api::<Deployment>::namespaced(ctx.client.clone(), ns)
        .patch(
            deployment,
            &PatchParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

fn role(status: &RolloutStatus, revision: &str, strategy: RolloutStrategy) -> &'static str {
    if status.stable_revision.as_deref() == Some(revision) {
        "stable"
    } else if status.canary_revision.as_deref() == Some(revision) {
        if strategy == RolloutStrategy::BlueGreen {
            "preview"
        } else {
            "canary"
        }
    } else if status.previous_revision.as_deref() == Some(revision)
        && status.scale_down_at.is_some()
    {
        "previous"
    } else {
        "old"
    }
}

pub async fn reconcile(
    ctx: &Context,
    ns: &str,
    kp: &KybPlatform,
    children: &Children,
    migration: &Migration,
    total: i32,
) -> Result<Outcome, Error> {
    let name = kp.name_any();
    let strategy = kp.spec.rollout.strategy;
    let deployments = revision_deployments(ctx, ns, &name);
    let revisions: BTreeMap<String, Live> = deployments
        .iter()
        .map(|(r, d)| (r.clone(), live(d)))
        .collect();
    let desired = children.revision.as_str();
    let commands = Commands::from_annotations(kp.metadata.annotations.as_ref());
    let previous = kp.status.as_ref().and_then(|s| s.rollout.as_ref());
    let gate = gate(migration);
    let plan_with = |analyses: &BTreeMap<String, AnalysisStatus>| {
        progressive::plan(&progressive::Input {
            rollout: &kp.spec.rollout,
            total,
            desired,
            revisions: &revisions,
            previous,
            gate: gate.clone(),
            commands: &commands,
            analyses,
            now: k8s_openapi::jiff::Timestamp::now(),
        })
    };
    // Plan once to learn which analysis runs the rollout needs, drive them (create, measure), then
    // plan again with what they concluded.
    let first = plan_with(&BTreeMap::new());
    let (analyses, measure_again) = runs::drive(ctx, ns, kp, &first.wanted).await?;
    let mut plan = plan_with(&analyses);
    plan.requeue = match (plan.requeue, measure_again) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };

    // 1. Traffic: the stable Service, the canary or preview Service, the route's weights.
    apply_service(
        ctx,
        ns,
        build::pinned_service(&children.service, plan.stable_pin.as_deref()),
    )
    .await?;
    if let Some(suffix) = side(strategy).0 {
        apply_service(
            ctx,
            ns,
            build::side_service(&children.service, suffix, &plan.canary_target),
        )
        .await?;
    }
    delete_unused_side_services(ctx, ns, &name, strategy).await?;
    let mut blocker = None;
    let route = kp
        .spec
        .rollout
        .canary
        .as_ref()
        .and_then(|c| c.traffic_routing.as_ref())
        .filter(|_| strategy == RolloutStrategy::Canary);
    if let (Some(route), Some(weight)) = (route, plan.route_weight) {
        blocker = set_route_weight(
            ctx,
            ns,
            &route.gateway_api.http_route,
            &name,
            &format!("{name}-canary"),
            weight,
        )
        .await?;
    }

    // 2. Pods: the spec's revision as built, the others scaled.
    let next_number = deployments.values().map(|d| number(d)).max().unwrap_or(0) + 1;
    let mut applied: BTreeMap<String, Arc<Deployment>> = deployments.clone();
    for (rev, replicas) in &plan.scale {
        match deployments.get(rev) {
            Some(d) if rev != desired => {
                if live(d).spec != *replicas {
                    scale(ctx, ns, &d.name_any(), *replicas).await?;
                }
            }
            existing => {
                let number = existing.map(|d| number(d)).unwrap_or(next_number);
                let wanted = build::revision_deployment(
                    &children.deployment,
                    rev,
                    number,
                    commands::revision_spec(&kp.spec),
                    *replicas,
                );
                let cached = existing.cloned();
                if let Some(d) = apply(
                    &ctx.client,
                    ns,
                    wanted,
                    meta(&cached),
                    object(&cached)?,
                    &ctx.metrics,
                )
                .await?
                {
                    applied.insert(rev.clone(), Arc::new(d));
                }
            }
        }
    }

    // 3. Clean-up: the rolling-update Deployment once a stable revision serves in full; revisions
    // beyond the history limit once they have no pods.
    let stable_full = plan
        .status
        .stable_revision
        .as_ref()
        .and_then(|s| revisions.get(s))
        .is_some_and(|l| l.pods.ready >= total);
    if stable_full && cached(&ctx.caches.deployments, ns, &name).is_some() {
        delete::<Deployment>(&ctx.client, ns, &name, &ctx.metrics).await?;
    }
    let mut by_age: Vec<(i64, String, String)> = applied
        .iter()
        .map(|(r, d)| (number(d), r.clone(), d.name_any()))
        .collect();
    by_age.sort_by_key(|a| std::cmp::Reverse(a.0));
    let keep_roles = [
        plan.status.stable_revision.clone(),
        plan.status.canary_revision.clone(),
        plan.status.previous_revision.clone(),
    ];
    for (_, rev, deployment) in by_age.iter().skip(REVISION_HISTORY_LIMIT as usize + 1) {
        let idle = revisions
            .get(rev)
            .is_some_and(|l| l.spec == 0 && l.pods.replicas == 0);
        if idle && !keep_roles.contains(&Some(rev.clone())) {
            delete::<Deployment>(&ctx.client, ns, deployment, &ctx.metrics).await?;
            applied.remove(rev);
        }
    }

    // 4. What the status reports.
    let mut status = plan.status.clone();
    status.revisions = by_age
        .iter()
        .filter_map(|(n, rev, _)| {
            let d = applied.get(rev)?;
            let l = live(d);
            Some(RevisionStatus {
                number: *n,
                revision: rev.clone(),
                image: image(d),
                role: role(&plan.status, rev, strategy).into(),
                replicas: d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
                ready_replicas: l.pods.ready,
                spec: d
                    .annotations()
                    .get(REVISION_SPEC)
                    .cloned()
                    .unwrap_or_default(),
            })
        })
        .collect();
    let serving: Vec<&RevisionStatus> = status
        .revisions
        .iter()
        .filter(|r| r.role == "stable" || r.role == "canary")
        .collect();
    let serving_image = status
        .stable_revision
        .as_ref()
        .and_then(|s| applied.get(s))
        .or_else(|| applied.get(desired))
        .map(|d| image(d));
    let rollout = Rollout {
        replicas: status.revisions.iter().map(|r| r.replicas).sum(),
        ready_replicas: serving
            .iter()
            .map(|r| r.ready_replicas)
            .sum::<i32>()
            .min(total),
        updated_replicas: revisions.get(desired).map_or(0, |l| l.pods.ready),
        desired: total,
        image: serving_image,
    };
    Ok(Outcome {
        rollout,
        status,
        requeue: plan.requeue,
        fully_promoted: plan.fully_promoted,
        blocker,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_weights_change_only_the_two_services_refs() {
        let rules = json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
             "backendRefs": [
                {"name": "kyb", "port": 80, "weight": 100},
                {"name": "kyb-canary", "port": 80, "weight": 0},
                {"name": "other", "port": 80, "weight": 5}
             ]},
            {"backendRefs": [{"name": "kyb", "kind": "ServiceImport", "port": 80}]}
        ]);
        let (next, s, c) = weighted_rules(&rules, "kyb", "kyb-canary", 20);
        assert_eq!((s, c), (1, 1));
        assert_eq!(next[0]["backendRefs"][0]["weight"], 80);
        assert_eq!(next[0]["backendRefs"][1]["weight"], 20);
        assert_eq!(next[0]["backendRefs"][2]["weight"], 5);
        assert_eq!(next[1], rules[1], "not a Service: left alone");
        assert_eq!(next[0]["matches"], rules[0]["matches"]);
        let (again, ..) = weighted_rules(&next, "kyb", "kyb-canary", 20);
        assert_eq!(again, next, "a second pass changes nothing (no write)");
    }
}
