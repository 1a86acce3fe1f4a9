//! How many database connections each pod may open, from the database's budget and the most pods
//! that can run at once (the autoscaler's maximum, the rollout's surge, the job workers). Pure.
//!
//! Every pod opens its own pools (see `service::db::pools`): the main one (of which an API pod keeps a
//! share for one-statement requests, `service::db::direct`, within the same count), a small one for
//! writes that need no durability wait, and the analytics pool, which is on the primary when there is
//! neither a replica nor an analytics DSN. Sized per pod from the plan's 100 without regard to the pod count, 20
//! pods could open 3,000 connections against a 200-connection database: under load, when it hurts.

use serde::{Deserialize, Serialize};

use crate::operator::crd::{KybPlatformSpec, RolloutStrategy};
use crate::operator::split::surge_pods;

/// Connections kept back from the pods: migration and analysis Jobs, `kybctl` at a terminal, and
/// PostgreSQL's own reserved superuser slots.
pub const RESERVED: i32 = 10;
/// Fewer main-pool connections than this per pod cannot serve: the service's own floor
/// (`config::MIN_MAIN_POOL`), one of which its cache-invalidation listener holds.
pub const MIN_MAIN: i32 = crate::config::MIN_MAIN_POOL as i32;
/// A worker pod's main-pool connections besides its jobs': one for claims and heartbeats, and the
/// cache-invalidation listener's.
pub const WORKER_OVERHEAD: i32 = 2;

/// What each pod gets, in the KybPlatform's status.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionBudget {
    /// The database's connections (`spec.database.maxConnections`).
    pub database: i32,
    /// The most pods (API and workers) that can run at once.
    pub peak_pods: i32,
    /// Main pool per pod (also the size of each replica pool).
    pub main: i32,
    /// Writes without a durability wait, per pod.
    pub relaxed: i32,
    /// Reporting queries on the primary per pod (0 when they go to a replica).
    pub analytics: i32,
}

/// The most pods that can run at once: the autoscaler's maximum (or the fixed count), what a rollout
/// adds on top (the surge, or a whole preview for blue-green), and the job workers (their Deployment
/// replaces pods without a surge; KEDA may scale them up to `maxReplicas`).
pub fn peak_pods(spec: &KybPlatformSpec) -> i32 {
    api_pods(spec)
        + spec
            .workers
            .as_ref()
            .map_or(0, |w| w.max_replicas.unwrap_or(w.replicas).max(w.replicas))
}

fn api_pods(spec: &KybPlatformSpec) -> i32 {
    let base = if spec.autoscaling.enabled {
        spec.autoscaling.max_replicas
    } else {
        spec.replicas.unwrap_or(1)
    }
    .max(1);
    let r = &spec.rollout;
    match r.strategy {
        RolloutStrategy::RollingUpdate => base + surge_pods(&r.max_surge, base),
        RolloutStrategy::Canary => {
            let surge = r.canary.as_ref().map_or("25%", |c| c.max_surge.as_str());
            base + surge_pods(surge, base)
        }
        RolloutStrategy::BlueGreen => 2 * base,
    }
}

/// The per-pod budget, or why the spec cannot fit its database.
pub fn budget(spec: &KybPlatformSpec) -> Result<ConnectionBudget, String> {
    let db = &spec.database;
    let pods = peak_pods(spec);
    let per_pod = (db.max_connections - RESERVED).max(0) / pods;
    let analytics_on_primary = db.replicas.is_empty() && db.analytics.is_none();
    // An eighth each for the side pools, at least one connection.
    let side = (per_pod / 8).max(1);
    let relaxed = side;
    let analytics = if analytics_on_primary { side } else { 0 };
    let main = (per_pod - relaxed - analytics).min(db.pool.max_connections);
    if main < MIN_MAIN {
        return Err(format!(
            "spec.database.maxConnections {} cannot serve up to {pods} pods (the autoscaling maximum \
             and the rollout's surge) with at least {} connections each ({RESERVED} kept for Jobs): \
             raise maxConnections, lower the replica count, or put a pooler such as PgBouncer in front \
             and set maxConnections to its pool size",
            db.max_connections,
            MIN_MAIN + 1 + i32::from(analytics_on_primary),
        ));
    }
    // A worker's jobs each hold a main-pool connection for their transaction, and the worker needs
    // more for claims and heartbeats and for its cache-invalidation listener.
    if let Some(w) = spec
        .workers
        .as_ref()
        .filter(|w| w.replicas > 0 || w.max_replicas.is_some())
    {
        if w.concurrency + WORKER_OVERHEAD > main {
            return Err(format!(
                "spec.workers.concurrency {} needs {} connections per worker pod, but each pod gets \
                 {main} from spec.database.maxConnections {} over {pods} pods: lower the concurrency \
                 or the replica counts, or raise maxConnections",
                w.concurrency,
                w.concurrency + WORKER_OVERHEAD,
                db.max_connections,
            ));
        }
    }
    Ok(ConnectionBudget {
        database: db.max_connections,
        peak_pods: pods,
        main,
        relaxed,
        analytics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> KybPlatformSpec {
        let db = if extra.contains("database:") {
            ""
        } else {
            "database: {primary: {name: db, key: url}}\n"
        };
        serde_yaml::from_str(&format!("image: x\n{db}{extra}")).unwrap()
    }

    #[test]
    fn the_plans_twenty_pods_share_its_two_hundred_connections() {
        // Autoscaling to 20 with 25 % surge: 25 pods at most; (200 - 10) / 25 = 7 each.
        let s = spec("autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 20}\n");
        let b = budget(&s).unwrap();
        assert_eq!(b.peak_pods, 25);
        assert_eq!((b.main, b.relaxed, b.analytics), (5, 1, 1));
        assert!(b.peak_pods * (b.main + b.relaxed + b.analytics) <= 200 - RESERVED);
    }

    #[test]
    fn a_small_platform_keeps_the_plans_pool_size() {
        let s = spec("autoscaling: {enabled: false}\nreplicas: 1\ndatabase: {primary: {name: db, key: url}, replicas: [{name: db, key: r}], maxConnections: 1000}\n");
        let b = budget(&s).unwrap();
        assert_eq!(b.peak_pods, 2);
        assert_eq!(b.main, 100, "capped at pool.maxConnections");
        assert_eq!(b.analytics, 0, "reports go to the replica");
    }

    #[test]
    fn blue_green_counts_the_whole_preview() {
        let s = spec("autoscaling: {enabled: false}\nreplicas: 5\nrollout: {strategy: BlueGreen, blueGreen: {}}\n");
        assert_eq!(peak_pods(&s), 10);
    }

    #[test]
    fn workers_are_pods_too_and_their_jobs_need_connections() {
        let s = spec("autoscaling: {enabled: false}\nreplicas: 2\nworkers: {replicas: 3}\n");
        let b = budget(&s).unwrap();
        assert_eq!(
            b.peak_pods,
            3 + 3,
            "2 API pods, their surge of 1, 3 workers"
        );
        assert!(b.main >= 12, "10 jobs, the claims and the listener: {b:?}");
        let s = spec(
            "autoscaling: {enabled: false}\nreplicas: 2\nworkers: {replicas: 0, maxReplicas: 8}\n",
        );
        assert_eq!(
            budget(&s).unwrap().peak_pods,
            3 + 8,
            "as many workers as KEDA may run"
        );
        let s = spec("autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 20}\nworkers: {replicas: 2, concurrency: 10}\n");
        let e = budget(&s).unwrap_err();
        assert!(e.contains("spec.workers.concurrency 10 needs 12 connections per worker pod, but each pod gets 5 from"), "{e}");
    }

    #[test]
    fn a_spec_that_cannot_fit_says_why() {
        let s = spec("autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 100}\n");
        let e = budget(&s).unwrap_err();
        assert!(e.contains("cannot serve up to 125 pods"), "{e}");
        assert!(e.contains("PgBouncer"), "{e}");
    }
}
