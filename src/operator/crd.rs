//! The `KybPlatform` custom resource (`kyb.io/v1alpha1`): the API platform teams use to run the KYB
//! service. Defaults are the plan's values; validation runs in the apiserver itself (OpenAPI constraints
//! and CEL rules whose messages name the field), so a bad spec is refused at `kubectl apply`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Go-style durations as the service's configuration accepts them: `500ms`, `15s`, `10m`, `1h30m`.
pub(crate) const DURATION: &str = r"^([0-9]+(ms|s|m|h))+$";

// One `printcolumn(...)` per column is kube's syntax; clippy reads the repeated `type_` keys as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "kyb.io",
    version = "v1alpha1",
    kind = "KybPlatform",
    plural = "kybplatforms",
    shortname = "kyb",
    namespaced,
    status = "KybPlatformStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods ready"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.image",
        description = "Image serving now"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.rollout.strategy"
    ),
    printcolumn(
        name = "Step",
        type_ = "integer",
        json_path = ".status.rollout.currentStepIndex"
    ),
    printcolumn(
        name = "Weight",
        type_ = "integer",
        json_path = ".status.rollout.weights.effective",
        description = "Percent of traffic on the canary or preview"
    ),
    printcolumn(
        name = "Queue",
        type_ = "integer",
        json_path = ".status.queue.ready",
        description = "Jobs ready to run, not started (all shards)"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "A KYB API deployment: service, autoscaling, database, cache, SLOs and rollout policy."
)]
#[x_kube(validation = Rule::new(
    "!has(self.replicas) || !self.autoscaling.enabled || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)"
).message("spec.replicas must lie within spec.autoscaling.minReplicas..maxReplicas while autoscaling is enabled (the autoscaler sets it through the scale subresource)"))]
#[serde(rename_all = "camelCase")]
pub struct KybPlatformSpec {
    /// Container image of kybctl (the service, the migration Job and the workers run from it).
    #[schemars(length(min = 1))]
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: PullPolicy,
    /// Pods to run; while autoscaling is enabled the autoscaler writes this through the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas")
        .message("spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas"))]
    pub autoscaling: Autoscaling,
    /// Requests and limits of the service container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    pub database: DatabaseSpec,
    #[serde(default)]
    pub cache: CacheSpec,
    #[serde(default)]
    pub server: ServerSpec,
    #[serde(default)]
    pub circuit_breaker: CircuitBreakerSpec,
    #[serde(default)]
    pub health_check: HealthCheckSpec,
    /// Service-level objectives: the defaults of `kybctl slo check` and of rollout analysis.
    #[serde(default)]
    pub slos: SloSpec,
    #[serde(default)]
    pub migrations: MigrationsSpec,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.strategy == 'BlueGreen' || !has(self.blueGreen)")
        .message("spec.rollout.blueGreen is only read with strategy BlueGreen"))]
    #[x_kube(validation = Rule::new("self.strategy == 'Canary' || !has(self.canary)")
        .message("spec.rollout.canary is only read with strategy Canary"))]
    #[x_kube(validation = Rule::new("!has(self.canary) || self.canary.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted()")
        .message("spec.rollout.canary.steps: setWeight must not decrease from one step to the next"))]
    #[x_kube(validation = Rule::new("!has(self.canary) || has(self.canary.trafficRouting) || !self.canary.steps.exists(s, has(s.setCanaryScale))")
        .message("spec.rollout.canary.steps: setCanaryScale needs trafficRouting (with replica-ratio weights the pod counts are the weights)"))]
    pub rollout: RolloutSpec,
    /// Which nodes the pods may run on, for the API pods and the migration and analysis Jobs alike.
    #[serde(default, skip_serializing_if = "Scheduling::is_empty")]
    pub scheduling: Scheduling,
    /// Who may call the API. Whatever is set here, the operator also generates an API key of its own
    /// (Secret `<name>-api-key`: `key`, and its hashed entry `keys.yaml`) for in-cluster callers such
    /// as the `slo` analysis Job; with nothing else set, it is the only way in.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The external business registry the service consults when classifying (its calls go through
    /// `circuitBreaker`); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<RegistrySpec>,
    /// When set, a NetworkPolicy admits only these to the API pods (enforced where the cluster's
    /// network plugin enforces NetworkPolicies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySpec>,
    /// Job workers (`kybctl worker`): a Deployment `<name>-worker` with its own
    /// PodDisruptionBudget; none when absent. Their pods count against the database's connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<WorkersSpec>,
    /// Alerts, scraping and a dashboard: where the Prometheus Operator's CRDs are installed, a
    /// PodMonitor and a PrometheusRule (the plan's thresholds and burn-rate alerts on `slos`); a
    /// Grafana dashboard ConfigMap everywhere.
    #[serde(default)]
    pub monitoring: MonitoringSpec,
    /// OpenTelemetry traces from the API pods and the workers, over OTLP/HTTP to a collector; none
    /// when absent. Rendered as the standard `OTEL_*` variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingSpec>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TracingSpec {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended), e.g.
    /// `http://otel-collector.observability:4318`.
    #[schemars(regex(pattern = r"^https?://[^\s/?#]+(/\S*)?$"), length(max = 2048))]
    pub endpoint: String,
    /// Share of the traces this platform starts that are kept (a caller's own decision, carried in its
    /// `traceparent`, is followed).
    #[serde(default = "TracingSpec::default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
}

impl TracingSpec {
    fn default_sample_ratio() -> f64 {
        1.0
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MonitoringSpec {
    pub enabled: bool,
    /// Scrape and rule-evaluation interval (the plan's 30 s).
    #[schemars(regex(pattern = DURATION))]
    pub interval: String,
    /// How long a threshold alert's condition must hold before it fires.
    #[schemars(regex(pattern = DURATION))]
    pub alert_for: String,
    /// Labels added to the PodMonitor and PrometheusRule, for Prometheus's selectors (e.g.
    /// `release: prometheus`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// A Grafana dashboard ConfigMap, labelled `grafana_dashboard: "1"` for Grafana's sidecar.
    pub dashboard: bool,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: "30s".into(),
            alert_for: "5m".into(),
            labels: BTreeMap::new(),
            dashboard: true,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.maxReplicas) || self.maxReplicas >= self.replicas")
    .message("spec.workers.maxReplicas must be >= replicas (the fewest pods KEDA scales to)"))]
#[serde(rename_all = "camelCase")]
pub struct WorkersSpec {
    /// Job kinds these workers run (default all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub types: Vec<crate::jobs::JobKind>,
    /// Jobs each pod runs at once (the plan's 10).
    #[serde(default = "WorkersSpec::default_concurrency")]
    #[schemars(range(min = 1, max = 100))]
    pub concurrency: i32,
    /// Pods; with `maxReplicas`, the fewest KEDA scales to (0 lets idle workers scale to none).
    #[serde(default = "WorkersSpec::default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Scale on the queue: when KEDA is installed, a ScaledObject sizes the workers to the jobs
    /// ready or running of their types (`concurrency` per pod), up to this many. Without KEDA the
    /// workers stay at `replicas` and the WorkersAutoscaled condition says why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: Option<i32>,
    /// How long a job may run; pods get this plus a margin to finish their jobs when stopped.
    #[serde(default = "WorkersSpec::default_job_timeout")]
    #[schemars(regex(pattern = DURATION))]
    pub job_timeout: String,
    /// Requests and limits of the worker container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
}

impl WorkersSpec {
    fn default_concurrency() -> i32 {
        10
    }
    fn default_replicas() -> i32 {
        1
    }
    fn default_job_timeout() -> String {
        "60s".into()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegistrySpec {
    /// Base URL (`/v1/businesses/lookup` is appended).
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    /// Per-call timeout.
    #[serde(default = "RegistrySpec::default_timeout")]
    #[schemars(regex(pattern = DURATION))]
    pub timeout: String,
    /// Retries of a failed call (with backoff), before the breaker counts a failure.
    #[serde(default = "RegistrySpec::default_retries")]
    #[schemars(range(min = 0, max = 10))]
    pub retries: u32,
    /// A Secret key holding the bearer token the registry expects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<SecretKeyRef>,
}

impl RegistrySpec {
    fn default_timeout() -> String {
        "2s".into()
    }
    fn default_retries() -> u32 {
        2
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// May call the API (port 8080): NetworkPolicy `from` entries. The platform's own analysis Jobs
    /// are always admitted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub clients: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
    /// May scrape `/metrics` (port 9090).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub prometheus: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.insecureNoAuth || (size(self.apiKeys) == 0 && !has(self.jwt))")
    .message("spec.auth.insecureNoAuth excludes apiKeys and jwt"))]
pub struct AuthSpec {
    /// Files of hashed API keys (entries made by `kybctl auth new-key`), each a Secret key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub api_keys: Vec<SecretKeyRef>,
    /// Bearer JWTs from an OpenID Connect issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    #[serde(default)]
    pub rate_limit: RateLimitSpec,
    /// Serve every caller without credentials, with every scope: throwaway environments only. No key
    /// is generated.
    #[serde(default)]
    pub insecure_no_auth: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Must equal the tokens' `iss`.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// The issuer's JSON Web Key Set.
    #[schemars(regex(pattern = r"^https?://"))]
    pub jwks_url: String,
    /// Must be among the tokens' `aud`.
    #[schemars(length(min = 1))]
    pub audience: String,
}

/// Requests per second per client; 0 turns the limit off.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RateLimitSpec {
    #[schemars(range(min = 0, max = 1000000))]
    pub per_second: u32,
    #[schemars(range(min = 0, max = 1000000))]
    pub burst: u32,
}

impl Default for RateLimitSpec {
    fn default() -> Self {
        let d = crate::config::RateLimitConfig::default();
        Self {
            per_second: d.per_second,
            burst: d.burst,
        }
    }
}

/// A node selector and tolerations, as on a PodSpec.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<k8s_openapi::api::core::v1::Toleration>,
}

impl Scheduling {
    pub fn is_empty(&self) -> bool {
        self.node_selector.is_empty() && self.tolerations.is_empty()
    }

    /// Puts a pod where this says.
    pub fn place(&self, pod: &mut k8s_openapi::api::core::v1::PodSpec) {
        if !self.node_selector.is_empty() {
            pod.node_selector = Some(self.node_selector.clone());
        }
        if !self.tolerations.is_empty() {
            pod.tolerations = Some(self.tolerations.clone());
        }
    }
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// The plan's HorizontalPodAutoscaler: 3 to 20 pods on 70 % CPU / 80 % memory, up 100 % per 15 s after
/// 60 s of stability, down 10 % per 60 s after 300 s.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Autoscaling {
    pub enabled: bool,
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    #[schemars(range(min = 1, max = 100))]
    pub target_memory_utilization_percentage: i32,
    pub scale_up: ScalingPolicy,
    pub scale_down: ScalingPolicy,
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            enabled: true,
            min_replicas: 3,
            max_replicas: 20,
            target_cpu_utilization_percentage: 70,
            target_memory_utilization_percentage: 80,
            scale_up: ScalingPolicy {
                percent: 100,
                period_seconds: 15,
                stabilization_window_seconds: 60,
            },
            scale_down: ScalingPolicy {
                percent: 10,
                period_seconds: 60,
                stabilization_window_seconds: 300,
            },
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// Pods added or removed per period, as a percentage of the current count.
    #[schemars(range(min = 1, max = 1000))]
    pub percent: i32,
    #[schemars(range(min = 1, max = 1800))]
    pub period_seconds: i32,
    #[schemars(range(min = 0, max = 3600))]
    pub stabilization_window_seconds: i32,
}

/// A key of a Secret in the KybPlatform's namespace. Credentials are only ever referenced, never copied.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!(has(self.primary) && size(self.shards) > 0)")
    .message("spec.database: set either primary (one database) or shards, not both"))]
#[x_kube(validation = Rule::new("has(self.primary) || size(self.shards) > 0")
    .message("spec.database.primary is required (or spec.database.shards)"))]
#[x_kube(validation = Rule::new("(size(oldSelf.shards) <= 1 && size(self.shards) <= 1) || (self.shardingStrategy == oldSelf.shardingStrategy && self.shards.map(s, s.id) == oldSelf.shards.map(s, s.id) && self.shards.map(s, has(s.rangeFrom) ? s.rangeFrom : '') == oldSelf.shards.map(s, has(s.rangeFrom) ? s.rangeFrom : '') && self.shards.map(s, has(s.keys) ? s.keys : []) == oldSelf.shards.map(s, has(s.keys) ? s.keys : []))")
    .message("spec.database: the shards (in order), their ranges, their directory keys and the sharding strategy cannot change once set: existing merchants would be routed to shards that do not hold them (and answer 404). Copy the data to a new layout and point a new KybPlatform at it"))]
#[x_kube(validation = Rule::new("self.shardingStrategy == 'directory' || self.shards.all(s, !has(s.keys) || size(s.keys) == 0)")
    .message("spec.database.shards[].keys: only the directory sharding strategy pins keys to shards"))]
#[x_kube(validation = Rule::new("self.shardingStrategy == 'range' || self.shards.all(s, !has(s.rangeFrom))")
    .message("spec.database.shards[].rangeFrom: only the range sharding strategy reads it"))]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// DSN of the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub primary: Option<SecretKeyRef>,
    /// DSNs of read replicas.
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub replicas: Vec<SecretKeyRef>,
    /// DSN for reporting queries (default: the first replica, else the primary).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analytics: Option<SecretKeyRef>,
    #[serde(default)]
    #[x_kube(validation = Rule::new("self.minConnections <= self.maxConnections")
        .message("spec.database.pool.minConnections must be <= maxConnections"))]
    pub pool: PoolSpec,
    /// Connections the database (each shard's, each replica's) allows this platform: every pod's
    /// pools are sized so the most pods that can run at once (the autoscaler's maximum and the
    /// rollout's surge) fit in it; a spec that cannot fit is refused. `pool.maxConnections` caps the
    /// main pool further.
    #[serde(default = "DatabaseSpec::default_max_connections")]
    #[schemars(range(min = 10, max = 100000))]
    pub max_connections: i32,
    #[serde(default)]
    pub sharding_strategy: ShardingStrategy,
    /// Shards, each its own database; empty for a single database.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.id == s.id))")
        .message("spec.database.shards: ids must be unique"))]
    pub shards: Vec<ShardSpec>,
}

impl DatabaseSpec {
    /// The plan's database: 200 connections.
    fn default_max_connections() -> i32 {
        200
    }
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ShardingStrategy {
    #[default]
    Hash,
    Range,
    Directory,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShardSpec {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub id: String,
    pub primary: SecretKeyRef,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub replicas: Vec<SecretKeyRef>,
    /// Range strategy: lower bound (inclusive) of the business ids this shard holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub range_from: Option<String>,
    /// Directory strategy: business ids pinned to this shard (the others are hashed). Each may be
    /// pinned to one shard only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256), inner(length(min = 1, max = 64)))]
    pub keys: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct PoolSpec {
    #[schemars(range(min = 1, max = 10000))]
    pub max_connections: i32,
    #[schemars(range(min = 0, max = 10000))]
    pub min_connections: i32,
    #[schemars(regex(pattern = DURATION))]
    pub max_lifetime: String,
    #[schemars(regex(pattern = DURATION))]
    pub idle_timeout: String,
}

impl Default for PoolSpec {
    fn default() -> Self {
        Self {
            max_connections: 100,
            min_connections: 25,
            max_lifetime: "10m".into(),
            idle_timeout: "5m".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CacheSpec {
    #[schemars(range(min = 1, max = 10000000))]
    pub l1_max_entries: i64,
    #[schemars(regex(pattern = DURATION))]
    pub l1_ttl: String,
    /// Redis URL; no L2 cache when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<SecretKeyRef>,
    #[schemars(regex(pattern = DURATION))]
    pub l2_ttl: String,
    #[schemars(regex(pattern = DURATION))]
    pub l3_ttl: String,
}

impl Default for CacheSpec {
    fn default() -> Self {
        Self {
            l1_max_entries: 1000,
            l1_ttl: "5m".into(),
            redis: None,
            l2_ttl: "1h".into(),
            l3_ttl: "30m".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ServerSpec {
    #[schemars(regex(pattern = DURATION))]
    pub read_timeout: String,
    #[schemars(regex(pattern = DURATION))]
    pub write_timeout: String,
    #[schemars(regex(pattern = DURATION))]
    pub idle_timeout: String,
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            read_timeout: "15s".into(),
            write_timeout: "15s".into(),
            idle_timeout: "60s".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CircuitBreakerSpec {
    #[schemars(range(min = 1, max = 1000))]
    pub failure_threshold: i32,
    #[schemars(regex(pattern = DURATION))]
    pub recovery_timeout: String,
    #[schemars(range(min = 1, max = 100))]
    pub half_open_max_calls: i32,
}

impl Default for CircuitBreakerSpec {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            recovery_timeout: "30s".into(),
            half_open_max_calls: 3,
        }
    }
}

/// Becomes the Deployment's probes: liveness on `path`, readiness on `/ready`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct HealthCheckSpec {
    #[schemars(regex(pattern = r"^/[A-Za-z0-9/_.-]*$"))]
    pub path: String,
    #[schemars(regex(pattern = DURATION))]
    pub interval: String,
    #[schemars(regex(pattern = DURATION))]
    pub timeout: String,
    #[schemars(range(min = 1, max = 100))]
    pub retries: i32,
}

impl Default for HealthCheckSpec {
    fn default() -> Self {
        Self {
            path: "/health".into(),
            interval: "30s".into(),
            timeout: "5s".into(),
            retries: 3,
        }
    }
}

/// The plan's KPIs as defaults.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct SloSpec {
    #[schemars(regex(pattern = DURATION))]
    pub p95_latency: String,
    /// Percent of requests that may fail.
    #[schemars(range(min = 0.0, max = 100.0))]
    pub error_rate_percent: f64,
    #[schemars(range(min = 0))]
    pub throughput_rpm: i64,
    #[schemars(range(min = 0.0, max = 100.0))]
    pub cache_hit_rate_percent: f64,
}

impl Default for SloSpec {
    fn default() -> Self {
        Self {
            p95_latency: "500ms".into(),
            error_rate_percent: 0.1,
            throughput_rpm: 10_000,
            cache_hit_rate_percent: 95.0,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct MigrationsSpec {
    /// Run `kybctl migrate up` as a Job before each new image rolls out.
    pub enabled: bool,
    /// Annotations for the migration Job's pod (sidecar injection switches and the like).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The migration Job fails (and the rollout with it) when it runs longer than this.
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: i64,
    /// A finished migration Job is deleted this long after it finished.
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: i32,
}

impl Default for MigrationsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            pod_annotations: BTreeMap::new(),
            active_deadline_seconds: 600,
            ttl_seconds_after_finished: 3600,
        }
    }
}

/// How a new revision replaces the old one: the Deployment's own rolling update, or blue-green and
/// canary rollouts run by the operator over one Deployment per revision. Field names follow Argo
/// Rollouts where the idea is the same.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RolloutSpec {
    pub strategy: RolloutStrategy,
    /// Extra pods during a rolling update (count or percentage).
    #[schemars(regex(pattern = r"^([0-9]+|[0-9]{1,3}%)$"))]
    pub max_surge: String,
    #[schemars(regex(pattern = r"^([0-9]+|[0-9]{1,3}%)$"))]
    pub max_unavailable: String,
    /// Hold the rollout where it is: running pods stay, a new spec waits until resumed
    /// (`kybctl rollout pause|resume NAME`).
    pub paused: bool,
    /// A step that has not completed this long after it started aborts the rollout (blue-green and
    /// canary; the Deployment's own deadline for a rolling update). Pauses do not count.
    #[schemars(range(min = 1, max = 86400))]
    pub progress_deadline_seconds: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanarySpec>,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::RollingUpdate,
            max_surge: "25%".into(),
            max_unavailable: "0".into(),
            paused: false,
            progress_deadline_seconds: 600,
            blue_green: None,
            canary: None,
        }
    }
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum RolloutStrategy {
    #[default]
    RollingUpdate,
    BlueGreen,
    Canary,
}

/// Blue-green: the new revision runs beside the active one behind the preview Service `<name>-preview`;
/// only promotion moves the active Service `<name>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct BlueGreenSpec {
    /// Promote without `kybctl rollout promote` once the preview is ready (after
    /// `autoPromotionSeconds`).
    pub auto_promotion_enabled: bool,
    /// With auto-promotion: how long the ready preview waits before it is promoted.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86400))]
    pub auto_promotion_seconds: Option<i32>,
    /// How long the previous revision keeps running after promotion, so switching back is instant.
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_delay_seconds: i32,
    /// Pods of the preview before promotion (default: all); scaled to full before the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub preview_replica_count: Option<i32>,
    /// Analysis against the preview before the switch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<AnalysisRef>,
    /// Analysis against the active Service after the switch; failing it switches back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<AnalysisRef>,
}

impl Default for BlueGreenSpec {
    fn default() -> Self {
        Self {
            auto_promotion_enabled: false,
            auto_promotion_seconds: None,
            scale_down_delay_seconds: 30,
            preview_replica_count: None,
            pre_promotion_analysis: None,
            post_promotion_analysis: None,
        }
    }
}

/// Canary: the new revision takes a growing share of the traffic step by step; the stable Service is
/// `<name>`, the canary Service `<name>-canary`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct CanarySpec {
    #[schemars(length(max = 64))]
    pub steps: Vec<CanaryStep>,
    /// Pods above the desired total while weights shift (count or percentage; replica-ratio weights).
    #[schemars(regex(pattern = r"^([0-9]+|[0-9]{1,3}%)$"))]
    pub max_surge: String,
    /// How traffic is split: absent, by the ratio of pods behind `<name>`; `gatewayAPI`, by the
    /// weights of an HTTPRoute's backend refs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic_routing: Option<TrafficRouting>,
    /// Analysis that runs for the whole rollout; failing it aborts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRef>,
}

impl Default for CanarySpec {
    fn default() -> Self {
        Self {
            steps: Vec::new(),
            max_surge: "25%".into(),
            traffic_routing: None,
            analysis: None,
        }
    }
}

/// One canary step: exactly one of its fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.setWeight), has(self.pause), has(self.setCanaryScale), has(self.analysis)].filter(x, x).size() == 1")
    .message("a canary step sets exactly one of setWeight, pause, setCanaryScale, analysis"))]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of traffic to the canary from this step on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// How long to wait; without it the rollout waits for `kybctl rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub duration: Option<String>,
}

/// Canary pods independent of the traffic weight (with trafficRouting): a fixed count, a percentage of
/// the total, or back to following the weight.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("[has(self.replicas), has(self.weight), has(self.matchTrafficWeight) && self.matchTrafficWeight].filter(x, x).size() == 1")
    .message("setCanaryScale sets exactly one of replicas, weight, matchTrafficWeight: true"))]
#[serde(rename_all = "camelCase")]
pub struct SetCanaryScale {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouting {
    #[serde(rename = "gatewayAPI")]
    pub gateway_api: GatewayApiRouting,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayApiRouting {
    /// An HTTPRoute in the platform's namespace whose backend refs name the stable Service `<name>` and
    /// the canary Service `<name>-canary`; the operator owns their weights.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub http_route: String,
}

/// Which analysis to run: KybAnalysisTemplates by name, and values for their arguments.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisRef {
    #[schemars(length(min = 1, max = 8))]
    pub templates: Vec<AnalysisTemplateRef>,
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub args: Vec<AnalysisArg>,
    /// Background analysis (`canary.analysis`) only: the step it starts at (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 64))]
    pub starting_step: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisTemplateRef {
    pub template_name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisArg {
    pub name: String,
    pub value: String,
}

/// Where a blue-green or canary rollout stands (also filled for rolling updates, from the Deployment).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// `Healthy`, `Progressing`, `Paused`, `Degraded` or `Aborted`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The step the canary is at (`steps.len()` once every step is done).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_step_index: Option<i32>,
    /// The revision serving behind `<name>` (active for blue-green).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_revision: Option<String>,
    /// The revision being rolled out (preview for blue-green), while there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_revision: Option<String>,
    #[serde(default)]
    pub weights: Weights,
    /// When the current step started (pause durations and the progress deadline count from it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Why the rollout waits, while it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pause_conditions: Vec<PauseCondition>,
    /// Set when the canary revision was aborted; cleared by `kybctl rollout retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<AbortStatus>,
    /// Retries of the canary revision so far (names its analysis runs afresh).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: i32,
    /// The analysis runs of the current rollout and what they concluded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub analysis: Vec<AnalysisStatus>,
    /// Blue-green: the revision replaced by the last promotion, kept running until `scaleDownAt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_at: Option<Time>,
    /// Every revision the operator keeps (newest first), with its pods: `kybctl rollout get|history`
    /// read it, and `undo` restores a revision's spec from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revisions: Vec<RevisionStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// 1 for the platform's first revision, then counting up.
    pub number: i64,
    pub revision: String,
    pub image: String,
    /// `stable`, `canary`, `preview`, `previous` (blue-green, until its scale-down) or `old`.
    pub role: String,
    pub replicas: i32,
    pub ready_replicas: i32,
    /// The spec fields this revision was built from (JSON; all but replicas, autoscaling and rollout).
    pub spec: String,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// `step-N`, `background`, `pre-promotion` or `post-promotion`.
    pub purpose: String,
    /// The KybAnalysisRun.
    pub run: String,
    /// `Running`, `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// Percent of traffic to the canary: what the step asks for and what the pods or route give.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub struct Weights {
    pub desired: i32,
    pub effective: i32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseCondition {
    /// `CanaryPauseStep`, `BlueGreenPause`, `AnalysisPending` or `Paused`.
    pub reason: String,
    pub start_time: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AbortStatus {
    pub revision: String,
    pub reason: String,
    pub message: String,
    pub at: Time,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KybPlatformStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Types: Ready, Progressing, Degraded, MigrationsApplied.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub replicas: i32,
    #[serde(default)]
    pub ready_replicas: i32,
    /// Label selector of the pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// The schema hash (image and databases) whose migration Job last succeeded: the gate's memory
    /// once that Job has been cleaned up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrated_schema: Option<String>,
    /// The schema hash whose contract Job (`migrate up --contract`, after full promotion) last
    /// succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contracted_schema: Option<String>,
    /// `http://NAME.NAMESPACE.svc:PORT` of the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// The database connections each pod may open, sized from `spec.database.maxConnections`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_connections: Option<crate::operator::connections::ConnectionBudget>,
    /// The job queue, read from the databases every 30 s or so while `spec.workers` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueStatus>,
}

/// The job queue over all shards, as the operator last read it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    /// Jobs ready to run and not started.
    pub ready: i64,
    /// Jobs running now.
    pub running: i64,
    /// How long the oldest ready job has waited, in whole seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_ready_seconds: Option<i64>,
    /// Dead letters not replayed.
    pub dead_letters: i64,
    pub observed_at: Option<Time>,
    /// Why the last read failed (the figures above are from the read before); none when it worked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The CustomResourceDefinitions as the files of `crds/`: the KybPlatform, and the two analysis kinds.
pub fn crd_files() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use crate::operator::analysis::crd::{KybAnalysisRun, KybAnalysisTemplate};
    use kube::CustomResourceExt;
    Ok(vec![
        (
            "kybplatform.yaml",
            serde_yaml::to_string(&KybPlatform::crd())?,
        ),
        (
            "kybanalysis.yaml",
            format!(
                "{}---\n{}",
                serde_yaml::to_string(&KybAnalysisTemplate::crd())?,
                serde_yaml::to_string(&KybAnalysisRun::crd())?
            ),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crds_match_the_code() {
        for (file, yaml) in crd_files().unwrap() {
            let path = format!("{}/crds/{file}", env!("CARGO_MANIFEST_DIR"));
            let on_disk = std::fs::read_to_string(&path).expect("a file in crds/");
            assert!(
                on_disk == yaml,
                "crds/{file} is stale: run `cargo run -- crd --dir crds`"
            );
        }
    }

    #[test]
    fn minimal_spec_gets_the_plans_defaults() {
        let spec: KybPlatformSpec =
            serde_yaml::from_str("image: kybctl:1\ndatabase: {primary: {name: db, key: url}}\n")
                .unwrap();
        assert_eq!(spec.autoscaling, Autoscaling::default());
        assert_eq!(spec.autoscaling.min_replicas, 3);
        assert_eq!(spec.database.pool.max_connections, 100);
        assert_eq!(spec.slos.p95_latency, "500ms");
        assert!(spec.migrations.enabled);
    }
}
