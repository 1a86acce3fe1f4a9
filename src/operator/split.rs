//! How many pods each revision runs for a canary weight, and the weight that split really gives.
//! Pure and table-tested: replica-ratio weights are approximations, so the operator publishes both the
//! weight a step asks for and the one its pods give.

/// Pods of the stable and canary revisions, and the percent of traffic the canary then gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Split {
    pub stable: i32,
    pub canary: i32,
    /// Percent of traffic on the canary.
    pub effective: i32,
}

/// Percent `part` is of `whole`, rounded to the nearest whole percent (0 when `whole` is 0).
pub fn percent(part: i32, whole: i32) -> i32 {
    if whole <= 0 {
        return 0;
    }
    ((200 * i64::from(part) + i64::from(whole)) / (2 * i64::from(whole))) as i32
}

/// `total` × `pct` %, rounded half up.
fn share(total: i32, pct: i32) -> i32 {
    ((i64::from(total) * i64::from(pct) + 50) / 100) as i32
}

/// Weight by replica ratio: every pod behind the stable Service gets an equal share, so the canary's
/// weight is its share of the pods. A step strictly between 0 and 100 % always gets at least one canary
/// and one stable pod; with a single replica that means one of each (the canary is a surge pod).
pub fn by_replicas(total: i32, weight: i32) -> Split {
    let total = total.max(0);
    let weight = weight.clamp(0, 100);
    let canary = match weight {
        _ if total == 0 => 0,
        0 => 0,
        100 => total,
        _ if total <= 1 => {
            return Split {
                stable: 1,
                canary: 1,
                effective: 50,
            }
        }
        _ => share(total, weight).clamp(1, total - 1),
    };
    let stable = total - canary;
    Split {
        stable,
        canary,
        effective: percent(canary, total),
    }
}

/// How many canary pods run beside a full stable revision when a route carries the weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CanaryScale {
    /// As many pods as the weight's share of the total (at least one while the weight is above 0).
    #[default]
    MatchWeight,
    Replicas(i32),
    /// A percentage of the total, whatever the weight.
    Percent(i32),
}

/// Weight by route: stable keeps its full size (abort is one weight change), the route gives the
/// canary exactly `weight` %.
pub fn by_route(total: i32, weight: i32, scale: CanaryScale) -> Split {
    let total = total.max(0);
    let weight = weight.clamp(0, 100);
    let canary = match scale {
        CanaryScale::MatchWeight if weight > 0 => share(total, weight).max(1),
        CanaryScale::MatchWeight => 0,
        CanaryScale::Replicas(n) => n.max(0),
        CanaryScale::Percent(p) => share(total, p.clamp(0, 100)),
    };
    Split {
        stable: total,
        canary,
        effective: weight,
    }
}

/// `maxSurge` (a count or a percentage of `total`, rounded up as the Deployment controller does) in pods.
pub fn surge_pods(max_surge: &str, total: i32) -> i32 {
    match max_surge.strip_suffix('%') {
        Some(pct) => {
            let pct: i64 = pct.parse().unwrap_or(0);
            ((i64::from(total) * pct + 99) / 100) as i32
        }
        None => max_surge.parse().unwrap_or(0),
    }
}

/// Pods of one revision: what its Deployment asks for and what is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pods {
    /// The larger of the Deployment's desired and existing pods (surge is counted until gone).
    pub replicas: i32,
    pub ready: i32,
}

/// The next scale of each side on the way to `target` (replica-ratio weights): add pods first, within
/// `surge` pods above `total`; remove pods of one side only as ready pods of the other replace them, so
/// ready pods never drop below the total. Returns (stable, canary).
pub fn step_towards(
    total: i32,
    surge: i32,
    target: Split,
    stable: Pods,
    canary: Pods,
) -> (i32, i32) {
    let room = (total + surge - stable.replicas - canary.replicas).max(0);
    let canary_scale = if target.canary > canary.replicas {
        target.canary.min(canary.replicas + room)
    } else {
        target.canary.max(total - stable.ready).min(canary.replicas)
    };
    let room = (room - (canary_scale - canary.replicas).max(0)).max(0);
    let stable_scale = if target.stable > stable.replicas {
        target.stable.min(stable.replicas + room)
    } else {
        target.stable.max(total - canary.ready).min(stable.replicas)
    };
    (stable_scale, canary_scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_ratio_table() {
        // (total, weight) -> (stable, canary, effective)
        let table = [
            (10, 0, (10, 0, 0)),
            (10, 20, (8, 2, 20)),
            (10, 40, (6, 4, 40)),
            (10, 60, (4, 6, 60)),
            (10, 80, (2, 8, 80)),
            (10, 100, (0, 10, 100)),
            (3, 20, (2, 1, 33)),
            (3, 50, (1, 2, 67)),
            (4, 20, (3, 1, 25)),
            (2, 1, (1, 1, 50)),
            (2, 99, (1, 1, 50)),
            (20, 1, (19, 1, 5)),
            (20, 99, (1, 19, 95)),
            (100, 99, (1, 99, 99)),
            (5, 10, (4, 1, 20)),
            (1, 20, (1, 1, 50)),
            (1, 100, (0, 1, 100)),
            (1, 0, (1, 0, 0)),
            (0, 50, (0, 0, 0)),
            (0, 0, (0, 0, 0)),
        ];
        for (total, weight, (stable, canary, effective)) in table {
            assert_eq!(
                by_replicas(total, weight),
                Split {
                    stable,
                    canary,
                    effective
                },
                "{total} replicas at {weight} %"
            );
        }
    }

    #[test]
    fn a_step_between_0_and_100_never_gets_zero_canary_pods() {
        for total in 2..60 {
            for weight in 1..100 {
                let s = by_replicas(total, weight);
                assert!(s.canary >= 1 && s.stable >= 1, "{total} at {weight}: {s:?}");
                assert_eq!(s.canary + s.stable, total);
            }
        }
    }

    #[test]
    fn route_weights_are_exact_and_stable_stays_full() {
        assert_eq!(
            by_route(10, 20, CanaryScale::MatchWeight),
            Split {
                stable: 10,
                canary: 2,
                effective: 20
            }
        );
        assert_eq!(by_route(3, 5, CanaryScale::MatchWeight).canary, 1);
        assert_eq!(by_route(10, 0, CanaryScale::MatchWeight).canary, 0);
        assert_eq!(by_route(10, 5, CanaryScale::Replicas(3)).canary, 3);
        assert_eq!(by_route(10, 5, CanaryScale::Percent(50)).canary, 5);
        assert_eq!(by_route(10, 37, CanaryScale::Replicas(1)).effective, 37);
    }

    #[test]
    fn surge_rounds_up_like_the_deployment_controller() {
        assert_eq!(surge_pods("25%", 10), 3);
        assert_eq!(surge_pods("25%", 4), 1);
        assert_eq!(surge_pods("0", 10), 0);
        assert_eq!(surge_pods("2", 10), 2);
    }

    #[test]
    fn stepping_adds_within_surge_and_removes_only_what_ready_pods_replace() {
        let p = |replicas, ready| Pods { replicas, ready };
        // 2/8 -> 4/6 with 3 surge pods: canary up at once, stable waits for the new canary pods.
        let target = by_replicas(10, 40);
        assert_eq!(step_towards(10, 3, target, p(8, 8), p(2, 2)), (8, 4));
        assert_eq!(step_towards(10, 3, target, p(8, 8), p(4, 2)), (8, 4));
        assert_eq!(step_towards(10, 3, target, p(8, 8), p(4, 4)), (6, 4));
        // No surge allowed: stable gives way pod by pod, only as far as the ready canary covers.
        assert_eq!(step_towards(10, 0, target, p(8, 8), p(2, 2)), (8, 2));
        // Abort: stable back to full first, then the canary goes.
        let home = by_replicas(10, 0);
        assert_eq!(step_towards(10, 3, home, p(6, 6), p(4, 4)), (9, 4));
        assert_eq!(step_towards(10, 30, home, p(6, 6), p(4, 4)), (10, 4));
        assert_eq!(step_towards(10, 3, home, p(10, 10), p(4, 4)), (10, 0));
        assert_eq!(step_towards(10, 3, home, p(10, 8), p(4, 4)), (10, 2));
    }
}
