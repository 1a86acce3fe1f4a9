//! `--platform NAME -n NS`: the target and default thresholds from a KybPlatform, for CI jobs that run
//! inside the cluster. The mapping is pure; only [`fetch`] talks to the apiserver.

use crate::operator::crd::{KybPlatform, SloSpec};

#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(String),
    #[error("cannot read KybPlatform {ns}/{name}: {cause}")]
    Get {
        ns: String,
        name: String,
        cause: String,
    },
    #[error("KybPlatform {ns}/{name} has no service endpoint in its status yet (is the operator running and the platform ready?)")]
    NoEndpoint { ns: String, name: String },
    #[error("KybPlatform {ns}/{name} has an invalid SLO: {reason}")]
    Slo {
        ns: String,
        name: String,
        reason: String,
    },
}

/// What a load test takes from a KybPlatform.
#[derive(Debug, Clone, PartialEq)]
pub struct PlatformTarget {
    pub endpoint: String,
    /// `slo check` threshold expressions equivalent to `spec.slos`.
    pub thresholds: Vec<String>,
    /// The platform's generated API key, when the caller may read its Secret.
    pub credential: Option<String>,
}

pub async fn fetch(name: &str, ns: &str) -> Result<PlatformTarget, PlatformError> {
    crate::tls::ensure_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| PlatformError::Client(e.to_string()))?;
    let api: kube::Api<KybPlatform> = kube::Api::namespaced(client.clone(), ns);
    let p = api.get(name).await.map_err(|e| PlatformError::Get {
        ns: ns.to_owned(),
        name: name.to_owned(),
        cause: e.to_string(),
    })?;
    let mut target = target_of(&p, name, ns)?;
    if !p.spec.auth.insecure_no_auth {
        target.credential = generated_key(&client, name, ns).await;
    }
    // Off the cluster's DNS (a node or a bastion whose kube-proxy routes ClusterIPs) the Service's
    // name does not resolve, but its ClusterIP, read from the API, is reachable.
    if !resolves(&target.endpoint).await {
        let services: kube::Api<k8s_openapi::api::core::v1::Service> =
            kube::Api::namespaced(client, ns);
        let ip = services
            .get_opt(name)
            .await
            .ok()
            .flatten()
            .and_then(|s| s.spec?.cluster_ip)
            .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok());
        if let Some(endpoint) = ip.and_then(|ip| with_host(&target.endpoint, &ip)) {
            eprintln!(
                "{} does not resolve here; using the Service's ClusterIP: {endpoint}",
                target.endpoint
            );
            target.endpoint = endpoint;
        }
    }
    Ok(target)
}

/// The platform's generated API key (`<name>-api-key`), or `None`, said once, when the caller may not
/// read it; `--api-key-file` / `KYB_API_KEY` then have to supply one.
async fn generated_key(client: &kube::Client, name: &str, ns: &str) -> Option<String> {
    use crate::operator::render::{generated_key_secret, GENERATED_KEY};
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), ns);
    let secret_name = generated_key_secret(name);
    match secrets.get_opt(&secret_name).await {
        Ok(Some(s)) => s
            .data
            .and_then(|d| d.get(GENERATED_KEY).cloned())
            .and_then(|b| String::from_utf8(b.0).ok())
            .map(|k| k.trim().to_owned()),
        Ok(None) => None,
        Err(e) => {
            eprintln!("cannot read Secret {ns}/{secret_name} for the platform's API key ({e}); pass --api-key-file");
            None
        }
    }
}

async fn resolves(endpoint: &str) -> bool {
    let Ok(url) = url::Url::parse(endpoint) else {
        return false;
    };
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return false;
    };
    tokio::net::lookup_host((host, port))
        .await
        .is_ok_and(|mut a| a.next().is_some())
}

/// `endpoint` with its host replaced by `ip`, port and path kept.
pub fn with_host(endpoint: &str, ip: &str) -> Option<String> {
    let mut url = url::Url::parse(endpoint).ok()?;
    url.set_host(Some(ip)).ok()?;
    Some(url.as_str().trim_end_matches('/').to_owned())
}

pub fn target_of(p: &KybPlatform, name: &str, ns: &str) -> Result<PlatformTarget, PlatformError> {
    let endpoint = p
        .status
        .as_ref()
        .and_then(|s| s.endpoint.clone())
        .filter(|e| !e.trim().is_empty())
        .ok_or_else(|| PlatformError::NoEndpoint {
            ns: ns.to_owned(),
            name: name.to_owned(),
        })?;
    let thresholds = thresholds_of(&p.spec.slos).map_err(|reason| PlatformError::Slo {
        ns: ns.to_owned(),
        name: name.to_owned(),
        reason,
    })?;
    Ok(PlatformTarget {
        endpoint: endpoint.trim_end_matches('/').to_owned(),
        thresholds,
        credential: None,
    })
}

/// `spec.slos` as `slo check` expressions: p95 latency (a Go duration, in ms), error rate and cache hit
/// rate (percent), throughput (rpm).
pub fn thresholds_of(slos: &SloSpec) -> Result<Vec<String>, String> {
    let p95 = humantime::parse_duration(&slos.p95_latency)
        .map_err(|e| format!("p95Latency `{}`: {e}", slos.p95_latency))?;
    Ok(vec![
        format!("p95<{}ms", trim(p95.as_secs_f64() * 1000.0)),
        format!("error_rate<{}%", trim(slos.error_rate_percent)),
        format!("throughput>{}rpm", slos.throughput_rpm),
        format!("cache_hit_rate>{}%", trim(slos.cache_hit_rate_percent)),
    ])
}

/// `500` not `500.0`, `0.1` stays.
fn trim(v: f64) -> String {
    let s = format!("{v}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::crd::{KybPlatformSpec, KybPlatformStatus};

    fn platform(endpoint: Option<&str>, p95: &str) -> KybPlatform {
        let mut spec: KybPlatformSpec =
            serde_yaml::from_str("image: kybctl:1\ndatabase: {primary: {name: db, key: url}}\n")
                .unwrap();
        spec.slos.p95_latency = p95.into();
        let mut p = KybPlatform::new("kyb", spec);
        p.status = Some(KybPlatformStatus {
            endpoint: endpoint.map(str::to_owned),
            ..Default::default()
        });
        p
    }

    #[test]
    fn endpoint_and_slos_become_target_and_thresholds() {
        let t = target_of(
            &platform(Some("http://kyb.prod.svc:8080/"), "1m30s"),
            "kyb",
            "prod",
        )
        .unwrap();
        assert_eq!(t.endpoint, "http://kyb.prod.svc:8080");
        assert_eq!(
            t.thresholds,
            [
                "p95<90000ms",
                "error_rate<0.1%",
                "throughput>10000rpm",
                "cache_hit_rate>95%"
            ]
        );
        // Every expression is one `slo check` accepts.
        for e in &t.thresholds {
            crate::slo::threshold::parse(e).unwrap();
        }
    }

    #[test]
    fn an_endpoint_can_be_pointed_at_the_cluster_ip() {
        assert_eq!(
            with_host("http://kyb.prod.svc:80", "198.19.0.7").as_deref(),
            Some("http://198.19.0.7")
        );
        assert_eq!(
            with_host("http://kyb.prod.svc:8080", "10.0.0.1").as_deref(),
            Some("http://10.0.0.1:8080")
        );
    }

    #[test]
    fn a_platform_without_an_endpoint_is_a_clear_error() {
        let err = target_of(&platform(None, "500ms"), "kyb", "prod").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("KybPlatform prod/kyb has no service endpoint"),
            "{err}"
        );
        let err = target_of(&platform(Some("http://x"), "soon"), "kyb", "prod").unwrap_err();
        assert!(err.to_string().contains("p95Latency `soon`"), "{err}");
    }
}
