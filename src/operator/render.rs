//! The service configuration a KybPlatform asks for, and where its Secrets are mounted.
//!
//! Credentials never enter the ConfigMap: each referenced Secret key is mounted as a file and the
//! configuration names the file (`url_file`), which is how `kybctl serve` reads them.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::operator::crd::{KybPlatformSpec, SecretKeyRef};

/// Where the projected Secret volume is mounted in the pod.
pub const SECRETS_DIR: &str = "/var/run/secrets/kyb";
/// Where the ConfigMap is mounted; the config file is `CONFIG_DIR/config.yaml`.
pub const CONFIG_DIR: &str = "/etc/kyb";
pub const CONFIG_FILE: &str = "config.yaml";
pub const HTTP_PORT: i32 = 8080;
/// `/metrics`, off the API port.
pub const METRICS_PORT: i32 = 9090;

/// The Secret holding the API key the operator generates for a platform (see `AuthSpec`).
pub fn generated_key_secret(platform: &str) -> String {
    format!("{platform}-api-key")
}
/// Its key: the API key itself, for in-cluster callers (the `slo` analysis Job).
pub const GENERATED_KEY: &str = "key";
/// Its key: the key's hashed entry, which the API pods mount as a key file.
pub const GENERATED_KEY_ENTRY: &str = "keys.yaml";

/// One Secret key mounted at `SECRETS_DIR/path`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretMount {
    pub secret: String,
    pub key: String,
    pub path: String,
}

pub struct Rendered {
    /// `config.yaml` for the ConfigMap.
    pub config_yaml: String,
    pub mounts: Vec<SecretMount>,
}

fn mount(mounts: &mut Vec<SecretMount>, r: &SecretKeyRef, path: String) -> String {
    mounts.push(SecretMount {
        secret: r.name.clone(),
        key: r.key.clone(),
        path: path.clone(),
    });
    format!("{SECRETS_DIR}/{path}")
}

/// The `auth` part of the configuration: key files mounted from Secrets (the generated one first).
fn auth(platform: &str, spec: &KybPlatformSpec, mounts: &mut Vec<SecretMount>) -> Value {
    let a = &spec.auth;
    if a.insecure_no_auth {
        return json!({"insecure_no_auth": true});
    }
    let generated = SecretKeyRef {
        name: generated_key_secret(platform),
        key: GENERATED_KEY_ENTRY.into(),
    };
    let mut files = vec![mount(mounts, &generated, "auth/generated-keys.yaml".into())];
    files.extend(
        a.api_keys
            .iter()
            .enumerate()
            .map(|(i, r)| mount(mounts, r, format!("auth/keys-{i}.yaml"))),
    );
    let mut out = json!({
        "api_key_files": files,
        "rate_limit": {"per_second": a.rate_limit.per_second, "burst": a.rate_limit.burst},
    });
    if let Some(j) = &a.jwt {
        out["jwt"] = json!({"issuer": j.issuer, "jwks_url": j.jwks_url, "audience": j.audience});
    }
    out
}

pub fn render(platform: &str, spec: &KybPlatformSpec) -> Rendered {
    let mut mounts = Vec::new();
    let auth = auth(platform, spec, &mut mounts);
    let db = &spec.database;
    let mut database = serde_json::Map::new();
    if let Some(primary) = &db.primary {
        database.insert(
            "url_file".into(),
            json!(mount(&mut mounts, primary, "database/primary-url".into())),
        );
    }
    let replicas: Vec<String> = db
        .replicas
        .iter()
        .enumerate()
        .map(|(i, r)| mount(&mut mounts, r, format!("database/replica-{i}-url")))
        .collect();
    if !replicas.is_empty() {
        database.insert("replica_url_files".into(), json!(replicas));
    }
    if let Some(a) = &db.analytics {
        database.insert(
            "analytics_url_file".into(),
            json!(mount(&mut mounts, a, "database/analytics-url".into())),
        );
    }
    let mut pool = json!({
        "max_connections": db.pool.max_connections,
        "min_connections": db.pool.min_connections,
        "max_lifetime": db.pool.max_lifetime,
        "idle_timeout": db.pool.idle_timeout,
    });
    // `build` refuses a spec whose budget does not fit before rendering it.
    if let Ok(b) = crate::operator::connections::budget(spec) {
        pool["max_connections"] = json!(b.main);
        pool["min_connections"] = json!(db.pool.min_connections.min(b.main));
        pool["relaxed_max_connections"] = json!(b.relaxed);
        pool["analytics_max_connections"] = json!(b.analytics.max(1));
    }
    database.insert("pool".into(), pool);
    if !db.shards.is_empty() {
        let shards: Vec<Value> = db
            .shards
            .iter()
            .map(|s| {
                let url = mount(
                    &mut mounts,
                    &s.primary,
                    format!("shards/{}/primary-url", s.id),
                );
                let replicas: Vec<String> = s
                    .replicas
                    .iter()
                    .enumerate()
                    .map(|(i, r)| mount(&mut mounts, r, format!("shards/{}/replica-{i}-url", s.id)))
                    .collect();
                let mut shard = json!({"id": s.id, "url_file": url, "replica_url_files": replicas});
                if let Some(from) = &s.range_from {
                    shard["range_from"] = json!(from);
                }
                if !s.keys.is_empty() {
                    shard["keys"] = json!(s.keys);
                }
                shard
            })
            .collect();
        database.insert(
            "sharding".into(),
            json!({"strategy": db.sharding_strategy, "shards": shards}),
        );
    }
    let mut redis = serde_json::Map::new();
    if let Some(r) = &spec.cache.redis {
        redis.insert(
            "url_file".into(),
            json!(mount(&mut mounts, r, "redis/url".into())),
        );
    }
    let mut registry = json!({
        "circuit_breaker": {
            "failure_threshold": spec.circuit_breaker.failure_threshold,
            "recovery_timeout": spec.circuit_breaker.recovery_timeout,
            "half_open_max_calls": spec.circuit_breaker.half_open_max_calls,
        }
    });
    if let Some(r) = &spec.registry {
        registry["base_url"] = json!(r.url);
        registry["timeout"] = json!(r.timeout);
        registry["retries"] = json!(r.retries);
        if let Some(c) = &r.credentials {
            registry["token_file"] = json!(mount(&mut mounts, c, "registry/token".into()));
        }
    }
    let config = json!({
        "listen": format!("0.0.0.0:{HTTP_PORT}"),
        "metrics_listen": format!("0.0.0.0:{METRICS_PORT}"),
        "auth": auth,
        "database": database,
        "redis": redis,
        "cache": {
            "l1_max_entries": spec.cache.l1_max_entries,
            "l1_ttl": spec.cache.l1_ttl,
            "l2_ttl": spec.cache.l2_ttl,
            "l3_ttl": spec.cache.l3_ttl,
        },
        "server": {
            "read_timeout": spec.server.read_timeout,
            "write_timeout": spec.server.write_timeout,
            "idle_timeout": spec.server.idle_timeout,
        },
        "registry": registry,
    });
    mounts.sort();
    Rendered {
        // A JSON value always renders as YAML.
        config_yaml: serde_yaml::to_string(&config).unwrap_or_default(),
        mounts,
    }
}

/// The Secrets a spec references, by name (for "is everything there?" checks).
pub fn referenced_secrets(mounts: &[SecretMount]) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in mounts {
        out.entry(m.secret.as_str())
            .or_default()
            .push(m.key.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn spec(yaml: &str) -> KybPlatformSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn rendered_config_is_what_the_service_reads() {
        let sample: crate::operator::crd::KybPlatform =
            serde_yaml::from_str(include_str!("../../manifests/samples/full.yaml")).unwrap();
        let s = sample.spec;
        let r = render("kyb", &s);
        let c = Config::from_yaml(&r.config_yaml)
            .expect("the service accepts the rendered configuration");
        assert_eq!(c.listen.port(), 8080);
        // 200 connections over up to 25 pods (20 by autoscaling, 25 % surge), 10 kept back.
        assert_eq!(c.database.pool.max_connections, 6);
        assert_eq!(c.database.pool.relaxed_max_connections, Some(1));
        assert_eq!(
            c.database.url_file.unwrap().to_str().unwrap(),
            "/var/run/secrets/kyb/database/primary-url"
        );
        assert_eq!(c.database.replica_url_files.len(), 2);
        assert_eq!(
            c.redis.url_file.unwrap().to_str().unwrap(),
            "/var/run/secrets/kyb/redis/url"
        );
        assert_eq!(c.server.read_timeout, std::time::Duration::from_secs(15));
        assert_eq!(c.cache.l1_ttl, std::time::Duration::from_secs(300));
        assert!(
            !r.config_yaml.contains("kyb-db"),
            "no Secret names or values in the ConfigMap"
        );
        let secrets = referenced_secrets(&r.mounts);
        assert_eq!(secrets["kyb-db"].len(), 4);
        assert_eq!(secrets["kyb-redis"], vec!["url"]);
    }

    #[test]
    fn auth_renders_key_files_the_generated_one_first() {
        let s = spec(
            "image: x\ndatabase: {primary: {name: db, key: url}}\nauth:\n  apiKeys: [{name: partners, key: keys.yaml}]\n  jwt: {issuer: 'https://id.example.com', jwksUrl: 'https://id.example.com/jwks', audience: kyb}\n  rateLimit: {perSecond: 50, burst: 100}\n",
        );
        let r = render("pay", &s);
        let c = Config::from_yaml(&r.config_yaml).unwrap();
        let files: Vec<&str> = c
            .auth
            .api_key_files
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect();
        assert_eq!(
            files,
            vec![
                "/var/run/secrets/kyb/auth/generated-keys.yaml",
                "/var/run/secrets/kyb/auth/keys-0.yaml"
            ]
        );
        assert_eq!(c.auth.jwt.unwrap().audience, "kyb");
        assert_eq!(
            (c.auth.rate_limit.per_second, c.auth.rate_limit.burst),
            (50, 100)
        );
        assert!(!c.auth.insecure_no_auth);
        assert_eq!(c.metrics_listen.port(), 9090);
        let secrets = referenced_secrets(&r.mounts);
        assert_eq!(secrets["pay-api-key"], vec!["keys.yaml"]);
        assert_eq!(secrets["partners"], vec!["keys.yaml"]);

        // Insecure: no key files, nothing generated to mount.
        let s = spec(
            "image: x\ndatabase: {primary: {name: db, key: url}}\nauth: {insecureNoAuth: true}\n",
        );
        let r = render("pay", &s);
        let c = Config::from_yaml(&r.config_yaml).unwrap();
        assert!(c.auth.insecure_no_auth && c.auth.api_key_files.is_empty());
        assert!(!referenced_secrets(&r.mounts).contains_key("pay-api-key"));
    }

    #[test]
    fn shards_render_with_their_own_files() {
        let s = spec(
            "image: x\ndatabase:\n  shardingStrategy: range\n  shards:\n  - {id: a, primary: {name: s, key: a}, rangeFrom: ''}\n  - {id: b, primary: {name: s, key: b}, replicas: [{name: s, key: b1}], rangeFrom: '8'}\n",
        );
        let r = render("kyb", &s);
        let c = Config::from_yaml(&r.config_yaml).unwrap();
        let shards = &c.database.sharding.shards;
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[1].replica_url_files.len(), 1);
        assert_eq!(shards[1].range_from.as_deref(), Some("8"));
        assert_eq!(
            c.database.sharding.strategy,
            crate::config::ShardingStrategy::Range
        );
        // Three database files and the generated API key's entry.
        assert_eq!(r.mounts.len(), 4);
    }
}
