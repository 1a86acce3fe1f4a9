//! Leader election on a `coordination.k8s.io/v1` Lease, so several operator replicas can run and only
//! one reconciles.
//!
//! Written here because kube-runtime has no leader election and the crates that add it trail kube's
//! major versions; the protocol is small: take the Lease when it is free or expired, renew it well
//! inside its duration, and treat a failed renewal past the duration as lost leadership. Updates use the
//! Lease's resourceVersion, so two candidates can never both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use kube::Client;
use tokio::sync::watch;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Free or expired: take it.
    Acquire,
    /// Ours: extend it.
    Renew,
    /// Someone else holds it.
    Follow { holder: String },
}

/// Pure: what a candidate should do with the Lease it sees.
pub fn decide(spec: Option<&LeaseSpec>, me: &str, now: Timestamp) -> Decision {
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
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let renewed = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(|t| t.0);
    match renewed {
        Some(at) if at + duration > now => Decision::Follow { holder },
        _ => Decision::Acquire,
    }
}

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
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
            duration,
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
            now,
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
            lease_duration_seconds: Some(self.duration.as_secs() as i32),
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

    /// Campaigns and renews every third of the lease duration, publishing whether this candidate leads.
    /// Leadership is dropped when renewals have failed for longer than the lease duration.
    pub async fn run(
        self,
        leading: watch::Sender<bool>,
        stop: impl std::future::Future<Output = ()>,
    ) {
        let mut tick = tokio::time::interval(self.duration / 3);
        let mut last_ok = tokio::time::Instant::now();
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tick.tick() => {}
            }
            match self.try_lead().await {
                Ok(lead) => {
                    last_ok = tokio::time::Instant::now();
                    leading.send_if_modified(|l| std::mem::replace(l, lead) != lead);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_ok.elapsed() > self.duration {
                        leading.send_if_modified(|l| std::mem::replace(l, false));
                    }
                }
            }
        }
        leading.send_if_modified(|l| std::mem::replace(l, false));
        if let Err(e) = self.release().await {
            tracing::warn!(error = %e, "could not release the lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(Into::into),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..Default::default()
        }
    }

    #[test]
    fn decisions() {
        let now = Timestamp::now();
        assert_eq!(decide(None, "a", now), Decision::Acquire);
        assert_eq!(
            decide(Some(&spec(None, 1, now)), "a", now),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 1, now)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("a"), 100, now)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 5, now)), "a", now),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 16, now)), "a", now),
            Decision::Acquire,
            "expired"
        );
    }
}
