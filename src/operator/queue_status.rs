//! `status.queue`: the job queue's figures, read by the operator from each database that holds jobs
//! (every shard's primary) with the connection string the pods mount, at most every [`REFRESH`].
//!
//! Read here rather than scraped from the workers: the figures are the databases' own, whatever the
//! workers are doing (none running, all crash-looping), and the operator already reads the Secrets
//! it checks. One short-lived connection per database, with connect and statement timeouts, so a
//! database that is down costs a reconcile a few seconds at most and never blocks it.

use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, Client};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use super::crd::{KybPlatform, QueueStatus, SecretKeyRef};
use crate::jobs::queue;

/// How often the figures are read: the plan's metrics interval.
pub const REFRESH: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the figures last read at `previous` are old enough to read again at `now`. A little
/// under [`REFRESH`], so a reconcile requeued after `REFRESH` always reads.
pub fn due(previous: Option<&QueueStatus>, now: &Time) -> bool {
    let Some(at) = previous.and_then(|q| q.observed_at.as_ref()) else {
        return true;
    };
    let age = now.0.as_second() - at.0.as_second();
    age < 0 || age >= REFRESH.as_secs() as i64 - 2
}

/// `host` as the platform's pods resolve it from namespace `ns`: a single-label name (a Service of
/// that namespace, `db`) becomes `db.NS.svc`, since the operator resolves names from its own
/// namespace and would otherwise reach another namespace's `db`, or none. Dotted names, addresses,
/// `localhost` and socket paths stand.
pub fn as_pods_resolve(host: &str, ns: &str) -> String {
    let single_label = !host.contains('.') && !host.contains(':') && !host.starts_with('/');
    if single_label && host != "localhost" && !host.is_empty() {
        format!("{host}.{ns}.svc")
    } else {
        host.to_owned()
    }
}

/// Where jobs live, each with a name for it: every shard's primary (`shard-<id>`), or the one
/// primary (`primary`).
pub fn job_databases(kp: &KybPlatform) -> Vec<(String, &SecretKeyRef)> {
    let db = &kp.spec.database;
    if db.shards.is_empty() {
        db.primary
            .iter()
            .map(|p| ("primary".to_owned(), p))
            .collect()
    } else {
        db.shards
            .iter()
            .map(|s| (format!("shard-{}", s.id), &s.primary))
            .collect()
    }
}

/// The figures over all of `kp`'s job databases; on failure, the previous figures with the error.
pub async fn read(client: &Client, ns: &str, kp: &KybPlatform, now: Time) -> QueueStatus {
    let previous = kp
        .status
        .as_ref()
        .and_then(|s| s.queue.clone())
        .unwrap_or_default();
    let mut total = QueueStatus {
        observed_at: Some(now),
        ..Default::default()
    };
    let secrets = Api::<Secret>::namespaced(client.clone(), ns);
    for (_, db) in job_databases(kp) {
        match read_one(&secrets, ns, db).await {
            Ok(g) => {
                total.ready += g.depth.iter().map(|d| d.3).sum::<i64>();
                total.running += g.running;
                total.dead_letters += g.dead_letters.iter().map(|d| d.1).sum::<i64>();
                let oldest = g.oldest_ready_seconds.iter().map(|o| o.1 as i64).max();
                total.oldest_ready_seconds = total.oldest_ready_seconds.max(oldest);
            }
            Err(e) => {
                return QueueStatus {
                    observed_at: total.observed_at,
                    error: Some(e),
                    ..previous
                }
            }
        }
    }
    total
}

/// One database's gauges. Errors name the Secret, never its value.
async fn read_one(
    secrets: &Api<Secret>,
    ns: &str,
    db: &SecretKeyRef,
) -> Result<queue::Gauges, String> {
    let secret = secrets
        .get(&db.name)
        .await
        .map_err(|e| format!("Secret {}: {e}", db.name))?;
    let url = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&db.key))
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
        .ok_or_else(|| format!("Secret {} has no UTF-8 key {}", db.name, db.key))?;
    let options = PgConnectOptions::from_str(url.trim())
        .map_err(|_| format!("Secret {} key {}: not a PostgreSQL URL", db.name, db.key))?;
    let host = as_pods_resolve(options.get_host(), ns);
    let options = options
        .host(&host)
        .application_name("kybctl-operator")
        .options([("statement_timeout", "5s")]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_with(options)
        .await
        .map_err(|e| format!("database of Secret {}: {e}", db.name))?;
    let gauges = queue::gauges(&pool)
        .await
        .map_err(|e| format!("database of Secret {}: {e}", db.name));
    pool.close().await;
    gauges
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())
    }

    #[test]
    fn short_host_names_resolve_in_the_platforms_namespace() {
        assert_eq!(as_pods_resolve("db", "team"), "db.team.svc");
        for stands in [
            "db.data.svc",
            "10.0.0.7",
            "::1",
            "localhost",
            "/var/run/postgresql",
            "db.example.com",
        ] {
            assert_eq!(as_pods_resolve(stands, "team"), stands);
        }
    }

    #[test]
    fn read_when_never_read_or_nearly_a_refresh_ago() {
        let q = |s| QueueStatus {
            observed_at: Some(at(s)),
            ..Default::default()
        };
        assert!(due(None, &at(1000)));
        assert!(
            !due(Some(&q(1000)), &at(1010)),
            "a status write wakes no read"
        );
        assert!(due(Some(&q(1000)), &at(1028)));
        assert!(due(Some(&q(1000)), &at(990)), "a clock gone back reads");
        assert!(due(Some(&QueueStatus::default()), &at(1000)));
    }
}
