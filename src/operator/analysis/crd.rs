//! `KybAnalysisTemplate` (what to measure and how to judge it) and `KybAnalysisRun` (one analysis of one
//! revision, with every measurement it took). Field names and meanings follow Argo Rollouts'
//! AnalysisTemplate and AnalysisRun where the idea is the same.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::operator::crd::{SecretKeyRef, DURATION};

/// What to measure and how to judge it; referenced by name from a KybPlatform's rollout.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "kyb.io",
    version = "v1alpha1",
    kind = "KybAnalysisTemplate",
    plural = "kybanalysistemplates",
    shortname = "kat",
    namespaced,
    doc = "Metrics that judge a revision during a rollout, with the conditions that pass or fail it."
)]
#[serde(rename_all = "camelCase")]
pub struct KybAnalysisTemplateSpec {
    /// Arguments the queries use as `{{args.NAME}}`; a value here is the default.
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub args: Vec<Arg>,
    #[schemars(length(min = 1, max = 16))]
    pub metrics: Vec<Metric>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct Arg {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_-]*$")
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// What an empty result, NaN, or fewer samples than `minSamples` counts as. Never a pass.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum NoData {
    #[default]
    Inconclusive,
    Fail,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new(
    "has(self.provider.job) || has(self.provider.slo) ? !has(self.successCondition) && !has(self.failureCondition) : has(self.successCondition) || has(self.failureCondition)"
).message("a prometheus or web metric needs successCondition or failureCondition; a job or slo metric is judged by its Job's outcome and takes neither"))]
#[serde(rename_all = "camelCase")]
pub struct Metric {
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Time between measurements.
    #[serde(default = "default_interval")]
    #[schemars(regex(pattern = DURATION))]
    pub interval: String,
    /// Measurements to take; the metric succeeds once they are all taken without reaching a limit.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: i32,
    /// Wait before the first measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub initial_delay: Option<String>,
    /// CEL over `result` (the value, a number) and `samples`: true means the measurement passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_condition: Option<String>,
    /// CEL over `result` and `samples`: true means the measurement failed (checked first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_condition: Option<String>,
    /// Failed measurements tolerated; one more fails the metric.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub failure_limit: i32,
    /// Inconclusive measurements tolerated; one more makes the metric inconclusive.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub inconclusive_limit: i32,
    /// Consecutive measurement errors (the provider could not answer) tolerated; one more ends the
    /// metric as `noData` says.
    #[serde(default = "four")]
    #[schemars(range(min = 0, max = 1000))]
    pub consecutive_error_limit: i32,
    /// Measured and recorded, never decides.
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default)]
    pub no_data: NoData,
    /// Fewer samples than this behind a value is no data (the provider's sample count; for `slo`,
    /// the requests per check below which `kybctl slo check` calls it inconclusive, 100 when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_samples: Option<i64>,
    pub provider: Provider,
}

impl Metric {
    /// A metric with the defaults an empty template entry gets (30 s interval, one measurement, no
    /// conditions, four consecutive errors tolerated).
    pub fn new(name: &str, provider: Provider) -> Self {
        Self {
            name: name.into(),
            interval: default_interval(),
            count: one(),
            initial_delay: None,
            success_condition: None,
            failure_condition: None,
            failure_limit: 0,
            inconclusive_limit: 0,
            consecutive_error_limit: four(),
            dry_run: false,
            no_data: NoData::default(),
            min_samples: None,
            provider,
        }
    }
}

fn default_interval() -> String {
    "30s".into()
}
fn one() -> i32 {
    1
}
fn four() -> i32 {
    4
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new(
    "[has(self.prometheus), has(self.web), has(self.job), has(self.slo)].filter(x, x).size() == 1"
).message("a metric's provider sets exactly one of prometheus, web, job, slo"))]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<WebProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobProvider>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slo: Option<SloProvider>,
}

/// A Kubernetes Job per measurement: the Job completing passes it, the Job failing fails it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobProvider {
    /// Labels and annotations of the Job.
    #[serde(default)]
    pub metadata: JobMetadata,
    /// A batch/v1 JobSpec, with `{{args.NAME}}` placeholders in its strings. Only its shape is checked
    /// here; the apiserver checks the rest when the Job is made (an invalid one ends the run in Error,
    /// saying why). Kept open rather than embedding the whole JobSpec schema, which would make this CRD
    /// too large for a client-side `kubectl apply`.
    #[schemars(schema_with = "job_spec_schema")]
    pub spec: serde_json::Value,
    /// The longest one measurement may take. The Job's activeDeadlineSeconds is capped at this, and a
    /// Job still unfinished a minute past it (its controller down, or the Job suspended) fails the
    /// measurement and is deleted.
    #[serde(default = "ten_minutes")]
    #[schemars(range(min = 1, max = 86400))]
    pub deadline_seconds: i64,
}

fn ten_minutes() -> i64 {
    600
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
pub struct JobMetadata {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

fn job_spec_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let open = |extra: serde_json::Value| {
        let mut o = serde_json::json!({
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true
        });
        o.as_object_mut()
            .expect("an object")
            .extend(extra.as_object().cloned().unwrap_or_default());
        o
    };
    let containers = serde_json::json!({
        "type": "array",
        "minItems": 1,
        "items": open(serde_json::json!({}))
    });
    let pod_spec = open(serde_json::json!({
        "required": ["containers"],
        "properties": {"containers": containers}
    }));
    let template = open(serde_json::json!({
        "required": ["spec"],
        "properties": {"spec": pod_spec}
    }));
    let spec = open(serde_json::json!({
        "required": ["template"],
        "properties": {"template": template}
    }));
    schemars::Schema::try_from(spec).expect("a JSON object is a schema")
}

/// The platform's own `spec.slos`, judged by `kybctl loadtest --threshold` (the code of `kybctl slo
/// check`) in a Job that loads the revision under analysis through its Service. One SLO spec serves the
/// CI gate and the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SloProvider {
    /// The Service to load. Unset: the preview Service before a blue-green promotion, the active one
    /// after it, the canary Service during a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<SloService>,
    /// Virtual users.
    #[serde(default = "ten_users")]
    #[schemars(range(min = 1, max = 10000))]
    pub users: i32,
    /// How long the load runs (whole seconds).
    #[serde(default = "thirty_seconds")]
    #[schemars(regex(pattern = r"^([0-9]+(s|m|h))+$"))]
    pub duration: String,
    /// Requests per second for all users together; unset, they go as fast as they can. Set it when the
    /// throughput SLO should be judged on a requested rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000000))]
    pub rate: Option<i32>,
    /// A built-in traffic mix of `kybctl loadtest`.
    #[serde(default)]
    pub scenario: SloScenario,
    /// The image that runs `kybctl loadtest`; the platform's `spec.image` when unset. Its kybctl must
    /// know the flags of this operator's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Annotations of the load-test pod (for instance to keep a mesh sidecar out of it).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
    /// The longest one measurement may take; the duration plus two minutes when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86400))]
    pub deadline_seconds: Option<i64>,
}

/// The same values as an empty `slo: {}` in a template.
impl Default for SloProvider {
    fn default() -> Self {
        Self {
            service: None,
            users: ten_users(),
            duration: thirty_seconds(),
            rate: None,
            scenario: SloScenario::default(),
            image: None,
            pod_annotations: BTreeMap::new(),
            deadline_seconds: None,
        }
    }
}

fn ten_users() -> i32 {
    10
}
fn thirty_seconds() -> String {
    "30s".into()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum SloService {
    Stable,
    Canary,
    Preview,
}

#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum SloScenario {
    #[default]
    KybMix,
    Trivial,
    ClassifyCached,
}

impl SloScenario {
    /// The `kybctl loadtest --scenario` name.
    pub fn name(self) -> &'static str {
        match self {
            SloScenario::KybMix => "kyb-mix",
            SloScenario::Trivial => "trivial",
            SloScenario::ClassifyCached => "classify-cached",
        }
    }
}

/// An instant query against Prometheus's HTTP API; the result must be one number (a scalar, or a
/// vector of one sample).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusProvider {
    /// `http://prometheus.monitoring:9090`
    #[schemars(length(min = 1))]
    pub address: String,
    /// PromQL with `{{args.NAME}}` placeholders.
    #[schemars(length(min = 1))]
    pub query: String,
    /// PromQL giving how many samples (requests) the value rests on, for `minSamples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_query: Option<String>,
}

/// An HTTP GET whose JSON answer holds the value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebProvider {
    /// With `{{args.NAME}}` placeholders.
    #[schemars(length(min = 1))]
    pub url: String,
    /// JSON pointer (RFC 6901) to the value, e.g. `/data/errorRate`.
    #[serde(default)]
    pub json_path: String,
    /// JSON pointer to the sample count, for `minSamples`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples_path: Option<String>,
    #[serde(default)]
    #[schemars(length(max = 16))]
    pub headers: Vec<WebHeader>,
    #[serde(default = "ten")]
    #[schemars(range(min = 1, max = 300))]
    pub timeout_seconds: i32,
}

fn ten() -> i32 {
    10
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.value) != has(self.valueFrom)")
    .message("a header sets exactly one of value, valueFrom"))]
#[serde(rename_all = "camelCase")]
pub struct WebHeader {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// A Secret key in the template's namespace (for tokens; never copied into the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_from: Option<SecretKeyRef>,
}

/// One analysis of one revision: the template's metrics with the arguments resolved.
// One `printcolumn(...)` per column is kube's syntax; clippy reads the repeated `type_` keys as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[kube(
    group = "kyb.io",
    version = "v1alpha1",
    kind = "KybAnalysisRun",
    plural = "kybanalysisruns",
    shortname = "kar",
    namespaced,
    status = "KybAnalysisRunStatus",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Purpose", type_ = "string", json_path = ".spec.purpose"),
    printcolumn(name = "Revision", type_ = "string", json_path = ".spec.revision"),
    printcolumn(name = "Message", type_ = "string", json_path = ".status.message"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    doc = "An analysis of one revision during a rollout, with its measurements and outcome."
)]
#[serde(rename_all = "camelCase")]
pub struct KybAnalysisRunSpec {
    pub platform: String,
    pub revision: String,
    /// `step-N`, `background`, `pre-promotion` or `post-promotion`.
    pub purpose: String,
    /// The templates it was made from.
    #[schemars(length(max = 8))]
    pub templates: Vec<String>,
    /// Every argument, resolved.
    #[schemars(length(max = 256))]
    pub args: Vec<Arg>,
    #[schemars(length(max = 128))]
    pub metrics: Vec<Metric>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KybAnalysisRunStatus {
    /// `Running`, `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    #[serde(default)]
    pub metric_results: Vec<MetricResult>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricResult {
    pub name: String,
    pub phase: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub dry_run: bool,
    pub count: i32,
    pub successful: i32,
    pub failed: i32,
    pub inconclusive: i32,
    pub error: i32,
    pub consecutive_error: i32,
    pub measurements: Vec<Measurement>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// `Successful`, `Failed`, `Inconclusive` or `Error`.
    pub phase: String,
    /// The query or URL as sent (arguments substituted; no credentials).
    pub query: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub samples: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    pub at: Time,
}
