//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas can run and only
//! one reconciles.
//!
//! Written here because kube-runtime has no leader election and the crates that add it trail kube's
//! major versions. It follows client-go's rules:
//! - **Expiry is judged by local observation.** A follower notes when it last saw the Lease record
//!   change and takes it over only once it has seen no change for the lease duration; the holder's
//!   `renewTime` (its clock) is never compared with ours, so skewed clocks cannot shorten a lease.
//! - **The renew deadline is shorter than the lease** (two thirds): a leader that cannot renew within
//!   it stops reconciling, and has abandoned in-flight work (see `controller::run_elected`) before
//!   another replica can take the Lease.
//! - **Every call is bounded** (the retry period), so an apiserver that hangs cannot stall renewals,
//!   and shutdown never waits for it.
//!
//! Updates carry the Lease's resourceVersion, so two candidates can never both win.

use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Free or expired: take it.
    Acquire,
    /// Ours: extend it.
    Renew,
    /// Someone else holds it.
    Follow { holder: String },
}

/// The election's clock: client-go's 15 s lease, 10 s renew deadline, 2 s retry period, scaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub lease: Duration,
    pub renew_deadline: Duration,
    pub retry: Duration,
}

impl Timing {
    pub fn for_lease(lease: Duration) -> Self {
        Self {
            lease,
            renew_deadline: lease * 2 / 3,
            retry: (lease * 2 / 15).max(Duration::from_millis(100)),
        }
    }
}

/// Pure: what a candidate should do with the Lease it sees. `unchanged_for`: how long this candidate
/// has seen the same record (`None`: it has just seen it change, or seen it for the first time).
pub fn decide(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Option<Duration>) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    let holder = spec.holder_identity.clone().unwrap_or_default();
    if holder.is_empty() {
        return Decision::Acquire;
    }
    if holder == me {
        return Decision::Renew;
    }
    let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    match unchanged_for {
        Some(d) if d >= duration => Decision::Acquire,
        _ => Decision::Follow { holder },
    }
}

/// What identifies one version of the Lease record: a renewal changes it.
fn fingerprint(lease: &Lease) -> String {
    let spec = lease.spec.as_ref();
    format!(
        "{:?}/{:?}/{:?}",
        lease.metadata.resource_version,
        spec.and_then(|s| s.holder_identity.as_ref()),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0)
    )
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    /// The Lease record last seen, and when (local time).
    seen: Mutex<Option<(String, Instant)>>,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity: identity.to_owned(),
            timing: Timing::for_lease(duration),
            seen: Mutex::new(None),
        }
    }

    /// How long in-flight work may take once leadership is lost: half the time between the renew
    /// deadline and the lease's end, so it is over before anyone else may take the Lease.
    pub fn stop_work_within(&self) -> Duration {
        (self.timing.lease - self.timing.renew_deadline) / 2
    }

    /// How long the record `lease` has gone unchanged in this candidate's eyes.
    fn unchanged_for(&self, lease: Option<&Lease>) -> Option<Duration> {
        let print = lease.map(fingerprint).unwrap_or_default();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match &*seen {
            Some((p, since)) if *p == print => Some(since.elapsed()),
            _ => {
                *seen = Some((print, Instant::now()));
                None
            }
        }
    }

    /// One round: returns whether this candidate holds the Lease afterwards. Conflicts (someone else
    /// updated first) count as not leading.
    pub async fn try_lead(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        let decision = decide(
            existing.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            self.unchanged_for(existing.as_ref()),
        );
        if let Decision::Follow { .. } = decision {
            return Ok(false);
        }
        let previous = existing
            .as_ref()
            .and_then(|l| l.spec.clone())
            .unwrap_or_default();
        let spec = LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease.as_secs().max(1) as i32),
            acquire_time: match decision {
                Decision::Renew => previous.acquire_time.clone(),
                _ => Some(MicroTime(now)),
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous.lease_transitions.unwrap_or(0)
                    + i32::from(decision == Decision::Acquire && existing.is_some()),
            ),
            ..Default::default()
        };
        let result = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            Some(mut lease) => {
                // Carries the resourceVersion we read: a concurrent winner makes this a 409.
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives the Lease up (on shutdown) so a follower takes over at once instead of after it expires.
    pub async fn release(&self) -> Result<(), kube::Error> {
        if let Some(mut lease) = self.api.get_opt(&self.name).await? {
            let ours = lease
                .spec
                .as_ref()
                .and_then(|s| s.holder_identity.as_deref())
                == Some(self.identity.as_str());
            if ours {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                }
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await?;
            }
        }
        Ok(())
    }

    /// Campaigns and renews every retry period, publishing whether this candidate leads. Leadership
    /// is dropped the moment the renew deadline passes with no renewal sent since then having
    /// succeeded, whatever calls are still in flight.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let t = self.timing;
        let mut tick = tokio::time::interval(t.retry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last renewal that succeeded was sent: the Lease runs from then, not from its answer.
        let mut renewed_at: Option<Instant> = None;
        let step_down = |renewed_at: &mut Option<Instant>| {
            tracing::error!(deadline = ?t.renew_deadline, "lease not renewed within its deadline; stepping down");
            *renewed_at = None;
            leading.send_if_modified(|l| std::mem::replace(l, false));
        };
        let until = |at: Option<Instant>| async move {
            match at {
                Some(at) => tokio::time::sleep_until(at + t.renew_deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = until(renewed_at) => { step_down(&mut renewed_at); continue; }
                _ = tick.tick() => {}
            }
            let sent = Instant::now();
            let attempt = tokio::select! {
                _ = &mut stop => break,
                _ = until(renewed_at) => { step_down(&mut renewed_at); continue; }
                r = tokio::time::timeout(t.retry, self.try_lead()) => r,
            };
            match attempt {
                Ok(Ok(true)) => {
                    renewed_at = Some(sent);
                    leading.send_if_modified(|l| !std::mem::replace(l, true));
                }
                Ok(Ok(false)) => {
                    renewed_at = None;
                    leading.send_if_modified(|l| std::mem::replace(l, false));
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "lease renewal failed"),
                Err(_) => tracing::warn!("lease renewal got no answer in time"),
            }
        }
        leading.send_if_modified(|l| std::mem::replace(l, false));
        match tokio::time::timeout(t.retry.max(Duration::from_secs(1)), self.release()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release the lease"),
            Err(_) => tracing::warn!("could not release the lease in time; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renew_time: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(renew_time)),
            ..Default::default()
        }
    }

    #[test]
    fn decisions_by_local_observation() {
        let now = Timestamp::now();
        let s = |d: u64| Some(Duration::from_secs(d));
        assert_eq!(decide(None, "a", None), Decision::Acquire);
        assert_eq!(decide(Some(&spec(None, now)), "a", None), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec(Some("a"), now)), "a", s(100)),
            Decision::Renew
        );
        let b = Decision::Follow { holder: "b".into() };
        assert_eq!(
            decide(Some(&spec(Some("b"), now)), "a", None),
            b,
            "first sight"
        );
        assert_eq!(decide(Some(&spec(Some("b"), now)), "a", s(14)), b);
        assert_eq!(
            decide(Some(&spec(Some("b"), now)), "a", s(15)),
            Decision::Acquire,
            "expired"
        );
    }

    #[test]
    fn skewed_clocks_do_not_move_expiry() {
        // The holder's clock an hour behind, or an hour ahead: only what we observed counts.
        let hour = k8s_openapi::jiff::SignedDuration::from_secs(3600);
        let b = Decision::Follow { holder: "b".into() };
        for renew in [Timestamp::now() - hour, Timestamp::now() + hour] {
            let lease = spec(Some("b"), renew);
            assert_eq!(decide(Some(&lease), "a", Some(Duration::from_secs(5))), b);
            assert_eq!(
                decide(Some(&lease), "a", Some(Duration::from_secs(15))),
                Decision::Acquire
            );
        }
    }

    #[test]
    fn the_renew_deadline_is_inside_the_lease() {
        let t = Timing::for_lease(Duration::from_secs(15));
        assert_eq!(t.renew_deadline, Duration::from_secs(10));
        assert_eq!(t.retry, Duration::from_secs(2));
        assert!(t.renew_deadline + (t.lease - t.renew_deadline) / 2 < t.lease);
    }
}
