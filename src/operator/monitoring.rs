//! Alerts, scraping and a dashboard for a KybPlatform, rendered from its spec (pure; the operator
//! applies them where the Prometheus Operator's CRDs are installed, and `kybctl alerts render` /
//! `kybctl dashboard render` print them for anyone else).
//!
//! - A `PodMonitor` scraping every pod of the platform (API pods of every revision, and workers) on
//!   their `metrics` port, labelled `kyb_platform`, `revision` and `component`. A PodMonitor rather
//!   than a ServiceMonitor: blue-green and canary put a pod behind more than one Service (it would be
//!   scraped twice) and workers have no Service at all.
//! - A `PrometheusRule`: the plan's thresholds (p95 latency, error rate, CPU 80 %, memory 85 %, queue
//!   depth 1,000) and multi-window, multi-burn-rate alerts on the error-rate SLO (the SRE workbook's
//!   method, as sloth and pyrra generate them), over recorded error ratios.
//! - A Grafana dashboard as a ConfigMap labelled for Grafana's dashboard sidecar.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::Client;
use serde_json::{json, Value};

use super::crd::{KybPlatform, MonitoringSpec};
use super::dynamic;

pub const GROUP: &str = "monitoring.coreos.com";
pub const VERSION: &str = "v1";

/// Requests that count for the SLO: the API's own routes (not probes, not `/metrics`).
const API_ROUTES: &str = r#"route=~"/v1/.*""#;
/// The plan's alert thresholds that the spec does not carry.
const CPU_LIMIT_RATIO: f64 = 0.8;
const MEMORY_LIMIT_RATIO: f64 = 0.85;
const QUEUE_DEPTH: i64 = 1_000;

/// The error-ratio windows recorded, shortest first.
const WINDOWS: [&str; 7] = ["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// The SRE workbook's burn-rate alerts for a 30-day SLO: (long window, short window, burn rate,
/// `for`, severity). 14.4 burns 2 % of the budget in an hour, 6 burns 5 % in six hours (page);
/// 3 and 1 burn 10 % in a day and three days (ticket).
const BURN_RATES: [(&str, &str, f64, &str, &str); 4] = [
    ("1h", "5m", 14.4, "2m", "critical"),
    ("6h", "30m", 6.0, "15m", "critical"),
    ("1d", "2h", 3.0, "1h", "warning"),
    ("3d", "6h", 1.0, "3h", "warning"),
];

/// The label selector every query of `kp` carries.
pub fn selector(kp: &KybPlatform) -> String {
    format!(
        r#"namespace="{}",kyb_platform="{}""#,
        kp.metadata.namespace.as_deref().unwrap_or_default(),
        kp.metadata.name.as_deref().unwrap_or_default()
    )
}

fn error_ratio_record(window: &str) -> String {
    format!("kyb_platform:http_request_errors:ratio_rate{window}")
}

/// The p95 latency objective in seconds, from `spec.slos.p95Latency`.
fn p95_seconds(kp: &KybPlatform) -> f64 {
    humantime::parse_duration(&kp.spec.slos.p95_latency)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.5)
}

/// `meta` with `spec.monitoring.labels` added, so Prometheus's selectors can pick the object.
fn with_labels(mut meta: ObjectMeta, m: &MonitoringSpec) -> Value {
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .extend(m.labels.clone());
    serde_json::to_value(meta).unwrap_or_default()
}

fn alert(
    name: &str,
    expr: String,
    for_: &str,
    severity: &str,
    summary: String,
    kp: &KybPlatform,
) -> Value {
    json!({
        "alert": name,
        "expr": expr,
        "for": for_,
        "labels": {
            "severity": severity,
            "kyb_platform": kp.metadata.name.as_deref().unwrap_or_default(),
            "namespace": kp.metadata.namespace.as_deref().unwrap_or_default(),
        },
        "annotations": {"summary": summary},
    })
}

/// The rule groups (the `spec.groups` of a PrometheusRule, or a Prometheus rule file).
pub fn rule_groups(kp: &KybPlatform, m: &MonitoringSpec) -> Value {
    let sel = selector(kp);
    let name = kp.metadata.name.as_deref().unwrap_or_default();
    let budget = kp.spec.slos.error_rate_percent / 100.0;
    let records: Vec<Value> = WINDOWS
        .iter()
        .map(|w| {
            json!({
                "record": error_ratio_record(w),
                "expr": format!(
                    r#"(sum(rate(kyb_http_requests_total{{{sel},{API_ROUTES},status=~"5.."}}[{w}])) or vector(0))
  / sum(rate(kyb_http_requests_total{{{sel},{API_ROUTES}}}[{w}]))"#
                ),
                "labels": {"kyb_platform": name, "namespace": kp.metadata.namespace.as_deref().unwrap_or_default()},
            })
        })
        .collect();
    let burn: Vec<Value> = BURN_RATES
        .iter()
        .map(|(long, short, rate, for_, severity)| {
            let threshold = rate * budget;
            let mut a = alert(
                "KybErrorBudgetBurn",
                format!(
                    "{} > {threshold} and {} > {threshold}",
                    error_ratio_record(long),
                    error_ratio_record(short)
                ),
                for_,
                severity,
                format!(
                    "{name} is spending its error budget {rate}x too fast ({long} and {short} \
                     windows; SLO {}% errors)",
                    kp.spec.slos.error_rate_percent
                ),
                kp,
            );
            // One alert name, four pairs of windows: the long window tells them apart.
            a["labels"]["long_window"] = json!(long);
            a
        })
        .collect();
    let for_ = m.alert_for.as_str();
    let p95 = p95_seconds(kp);
    let pods = format!(
        r#"namespace="{}",pod=~"{}""#,
        kp.metadata.namespace.as_deref().unwrap_or_default(),
        pod_name_pattern(kp)
    );
    let thresholds = vec![
        alert(
            "KybHighErrorRate",
            format!("{} > {budget}", error_ratio_record("5m")),
            for_,
            "warning",
            format!("more than {}% of {name}'s API requests fail (5xx)", kp.spec.slos.error_rate_percent),
            kp,
        ),
        alert(
            "KybHighLatency",
            format!(
                "histogram_quantile(0.95, sum by (le) (rate(kyb_http_request_duration_seconds_bucket{{{sel},{API_ROUTES}}}[5m]))) > {p95}"
            ),
            for_,
            "warning",
            format!("{name}'s p95 API latency is above {}", kp.spec.slos.p95_latency),
            kp,
        ),
        alert(
            "KybHighCpu",
            format!(
                r#"sum by (pod) (rate(container_cpu_usage_seconds_total{{{pods},container!="",container!="POD"}}[5m]))
  / sum by (pod) (kube_pod_container_resource_limits{{{pods},resource="cpu"}}) > {CPU_LIMIT_RATIO}"#
            ),
            for_,
            "warning",
            format!("a pod of {name} uses more than 80% of its CPU limit"),
            kp,
        ),
        alert(
            "KybHighMemory",
            format!(
                r#"sum by (pod) (container_memory_working_set_bytes{{{pods},container!="",container!="POD"}})
  / sum by (pod) (kube_pod_container_resource_limits{{{pods},resource="memory"}}) > {MEMORY_LIMIT_RATIO}"#
            ),
            for_,
            "warning",
            format!("a pod of {name} uses more than 85% of its memory limit"),
            kp,
        ),
        alert(
            "KybQueueDeep",
            // Every worker reports the same counts (read from the database): one per series.
            format!("sum(max by (queue, kind, priority) (kyb_queue_depth{{{sel}}})) > {QUEUE_DEPTH}"),
            for_,
            "warning",
            format!("more than {QUEUE_DEPTH} of {name}'s jobs are waiting to run"),
            kp,
        ),
    ];
    json!([
        {"name": format!("kyb-{name}-slo-records"), "interval": m.interval, "rules": records},
        {"name": format!("kyb-{name}-slo-burn"), "interval": m.interval, "rules": burn},
        {"name": format!("kyb-{name}-thresholds"), "interval": m.interval, "rules": thresholds},
    ])
}

/// The platform's pods by name, as kube-state-metrics and cAdvisor label them: `<name>-<hash>-<id>`
/// (the API Deployment), `<name>-<revision>-<hash>-<id>` (a revision's) and, only while the spec has
/// workers, `<name>-worker-<hash>-<id>`. Exact enough that a platform `kyb` does not take in
/// `kyb-staging`'s pods, nor the API pods of a platform `kyb-worker` (which can exist only while
/// `kyb` has no workers: the operator refuses a Deployment name another platform holds). Pod labels
/// would be exact, but kube-state-metrics exports none unless told to.
fn pod_name_pattern(kp: &KybPlatform) -> String {
    let name = kp.metadata.name.as_deref().unwrap_or_default();
    let middle = if kp.spec.workers.is_some() {
        "worker|[0-9a-f]{10}"
    } else {
        "[0-9a-f]{10}"
    };
    format!("{name}-(({middle})-)?[a-z0-9]{{1,10}}-[a-z0-9]{{5}}")
}

/// The PrometheusRule object, named and owned by `meta`.
pub fn prometheus_rule(kp: &KybPlatform, m: &MonitoringSpec, meta: ObjectMeta) -> Value {
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "PrometheusRule",
        "metadata": with_labels(meta, m),
        "spec": {"groups": rule_groups(kp, m)},
    })
}

/// The PodMonitor object, named and owned by `meta`: every pod of the platform on its `metrics`
/// port.
pub fn pod_monitor(kp: &KybPlatform, m: &MonitoringSpec, meta: ObjectMeta) -> Value {
    let relabel = |from: &str, to: &str| json!({"sourceLabels": [format!("__meta_kubernetes_pod_label_{from}")], "targetLabel": to});
    json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": "PodMonitor",
        "metadata": with_labels(meta, m),
        "spec": {
            "selector": {"matchLabels": {
                "app.kubernetes.io/instance": kp.metadata.name,
                "app.kubernetes.io/part-of": "kyb-platform",
            }},
            "podMetricsEndpoints": [{
                "port": "metrics",
                "path": "/metrics",
                "interval": m.interval,
                "relabelings": [
                    relabel("app_kubernetes_io_instance", "kyb_platform"),
                    relabel("kyb_io_revision", "revision"),
                    relabel("app_kubernetes_io_component", "component"),
                ],
            }],
        },
    })
}

/// Label Grafana's dashboard sidecar looks for (its default `label`), and the value it takes.
pub const DASHBOARD_LABEL: (&str, &str) = ("grafana_dashboard", "1");

/// One dashboard panel: a title, its queries (`legendFormat`, PromQL) and a unit.
struct Panel {
    title: &'static str,
    unit: &'static str,
    targets: Vec<(&'static str, String)>,
}

fn panels(kp: &KybPlatform) -> Vec<Panel> {
    let sel = selector(kp);
    let name = kp.metadata.name.as_deref().unwrap_or_default();
    let rate =
        |metric: &str, extra: &str| format!("rate({metric}{{{sel}{extra}}}[$__rate_interval])");
    let api = format!(",{API_ROUTES}");
    let quantile = |q: &str| {
        format!(
            "histogram_quantile({q}, sum by (le) ({}))",
            rate("kyb_http_request_duration_seconds_bucket", &api)
        )
    };
    vec![
        Panel {
            title: "Traffic by route",
            unit: "reqps",
            targets: vec![(
                "{{route}}",
                format!("sum by (route) ({})", rate("kyb_http_requests_total", &api)),
            )],
        },
        Panel {
            title: "Errors (5xx share of API requests)",
            unit: "percentunit",
            targets: vec![(
                "5xx",
                format!(
                    r#"(sum({}) or vector(0)) / sum({})"#,
                    rate("kyb_http_requests_total", &format!(r#"{api},status=~"5..""#)),
                    rate("kyb_http_requests_total", &api)
                ),
            )],
        },
        Panel {
            title: "Latency",
            unit: "s",
            targets: vec![
                ("p50", quantile("0.5")),
                ("p95", quantile("0.95")),
                ("p99", quantile("0.99")),
            ],
        },
        Panel {
            title: "Cache hit rate by level",
            unit: "percentunit",
            targets: vec![(
                "{{level}}",
                format!(
                    "sum by (level) ({hits}) / (sum by (level) ({hits}) + sum by (level) ({misses}))",
                    hits = rate("kyb_cache_hits_total", ""),
                    misses = rate("kyb_cache_misses_total", "")
                ),
            )],
        },
        Panel {
            title: "Database pool connections",
            unit: "short",
            targets: vec![(
                "{{shard}} {{role}} {{state}}",
                format!("sum by (shard, role, state) (kyb_db_pool_connections{{{sel}}})"),
            )],
        },
        Panel {
            title: "Circuit breaker (0 closed, 1 open, 2 half-open)",
            unit: "short",
            targets: vec![(
                "state",
                format!("max(kyb_circuit_breaker_state{{{sel}}})"),
            )],
        },
        Panel {
            title: "Pods scraped",
            unit: "short",
            targets: vec![(
                "{{component}} {{revision}}",
                format!("count by (component, revision) (up{{{sel}}} == 1)"),
            )],
        },
        Panel {
            title: "Rollout weight (canary or preview)",
            unit: "percent",
            targets: vec![(
                "weight",
                format!(r#"max(kyb_operator_rollout_canary_weight_percent{{name="{name}"}})"#),
            )],
        },
        Panel {
            title: "Job queue depth",
            unit: "short",
            targets: vec![(
                "{{kind}}",
                format!("sum by (kind) (max by (queue, kind, priority) (kyb_queue_depth{{{sel}}}))"),
            )],
        },
    ]
}

/// Every PromQL query of the dashboard with its panel's title, Grafana's `$__rate_interval` as
/// written.
pub fn dashboard_queries(kp: &KybPlatform) -> Vec<(&'static str, String)> {
    panels(kp)
        .into_iter()
        .flat_map(|p| p.targets.into_iter().map(move |(_, q)| (p.title, q)))
        .collect()
}

/// The Grafana dashboard (JSON model) for `kp`.
pub fn dashboard(kp: &KybPlatform) -> Value {
    let name = kp.metadata.name.as_deref().unwrap_or_default();
    let ns = kp.metadata.namespace.as_deref().unwrap_or_default();
    let panels: Vec<Value> = panels(kp)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let targets: Vec<Value> = p
                .targets
                .into_iter()
                .enumerate()
                .map(|(j, (legend, expr))| {
                    json!({
                        "refId": char::from(b'A' + j as u8).to_string(),
                        "expr": expr,
                        "legendFormat": legend,
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    })
                })
                .collect();
            json!({
                "id": i + 1,
                "type": "timeseries",
                "title": p.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                "targets": targets,
            })
        })
        .collect();
    json!({
        "uid": format!("kyb-{}", short_uid(ns, name)),
        "title": format!("KYB platform {ns}/{name}"),
        "tags": ["kyb"],
        "schemaVersion": 39,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource",
            "type": "datasource",
            "query": "prometheus",
            "label": "Prometheus",
        }]},
        "panels": panels,
    })
}

/// A dashboard uid of at most 40 characters (Grafana's limit) that stays the same for a platform.
fn short_uid(ns: &str, name: &str) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(format!("{ns}/{name}").as_bytes())[..8])
}

/// The ConfigMap Grafana's sidecar loads the dashboard from, named and owned by `meta`.
pub fn dashboard_config_map(kp: &KybPlatform, meta: ObjectMeta) -> ConfigMap {
    let mut meta = meta;
    meta.labels
        .get_or_insert_with(BTreeMap::new)
        .insert(DASHBOARD_LABEL.0.into(), DASHBOARD_LABEL.1.into());
    let name = kp.metadata.name.as_deref().unwrap_or_default();
    ConfigMap {
        metadata: meta,
        data: Some(BTreeMap::from([(
            format!("kyb-{name}.json"),
            serde_json::to_string_pretty(&dashboard(kp)).unwrap_or_default(),
        )])),
        ..Default::default()
    }
}

pub fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(GROUP, VERSION, kind), plural)
}

/// Whether the Prometheus Operator's PodMonitor and PrometheusRule are served.
pub async fn installed(client: &Client) -> Result<bool, kube::Error> {
    for kind in ["PodMonitor", "PrometheusRule"] {
        if !dynamic::served(client, &GroupVersionKind::gvk(GROUP, VERSION, kind)).await? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The PodMonitor and PrometheusRule of platform `name`: applied when given, deleted when not (if
/// the platform's `claim` covers them; see `dynamic::delete`). Returns the objects written.
pub async fn reconcile(
    client: &Client,
    ns: &str,
    name: &str,
    objects: Option<&(Value, Value)>,
    claim: &ObjectMeta,
) -> Result<u32, dynamic::Error> {
    let monitors = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &resource("PodMonitor", "podmonitors"),
    );
    let rules = Api::<DynamicObject>::namespaced_with(
        client.clone(),
        ns,
        &resource("PrometheusRule", "prometheusrules"),
    );
    let mut writes = 0;
    match objects {
        Some((monitor, rule)) => {
            for (api, obj) in [(&monitors, monitor), (&rules, rule)] {
                let obj: DynamicObject =
                    serde_json::from_value(obj.clone()).map_err(kube::Error::SerdeError)?;
                writes += u32::from(dynamic::apply(api, obj).await?);
            }
        }
        None => {
            for api in [&monitors, &rules] {
                writes += u32::from(dynamic::delete(api, name, claim).await?);
            }
        }
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kp() -> KybPlatform {
        let mut kp: KybPlatform =
            serde_yaml::from_str(include_str!("../../manifests/samples/minimal.yaml")).unwrap();
        kp.metadata.namespace = Some("team".into());
        kp
    }

    fn rules(groups: &Value) -> Vec<&Value> {
        groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .collect()
    }

    #[test]
    fn the_plans_thresholds_and_the_slo_burn_rates_are_alerts() {
        let k = kp();
        let groups = rule_groups(&k, &k.spec.monitoring);
        let all = rules(&groups);
        let alert = |name: &str| -> Vec<&Value> {
            all.iter().copied().filter(|r| r["alert"] == name).collect()
        };
        for name in [
            "KybHighErrorRate",
            "KybHighLatency",
            "KybHighCpu",
            "KybHighMemory",
            "KybQueueDeep",
        ] {
            let a = alert(name);
            assert_eq!(a.len(), 1, "{name}");
            assert_eq!(a[0]["for"], "5m", "{name}");
            assert_eq!(
                a[0]["labels"]["kyb_platform"],
                k.metadata.name.as_deref().unwrap()
            );
        }
        let expr = |name: &str| alert(name)[0]["expr"].as_str().unwrap().to_owned();
        assert!(
            expr("KybHighErrorRate").ends_with("> 0.001"),
            "{}",
            expr("KybHighErrorRate")
        );
        assert!(expr("KybHighLatency").ends_with("> 0.5"));
        assert!(expr("KybHighCpu").ends_with("> 0.8"));
        assert!(expr("KybHighMemory").ends_with("> 0.85"));
        assert!(expr("KybQueueDeep").ends_with("> 1000"));
        // Four burn-rate pairs: 14.4x and 6x page, 3x and 1x ticket, each over a long and a short window.
        let burn = alert("KybErrorBudgetBurn");
        let pairs: Vec<(&str, &str)> = burn
            .iter()
            .map(|a| {
                (
                    a["labels"]["long_window"].as_str().unwrap(),
                    a["labels"]["severity"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("1h", "critical"),
                ("6h", "critical"),
                ("1d", "warning"),
                ("3d", "warning")
            ]
        );
        let fast = burn[0]["expr"].as_str().unwrap();
        assert!(
            fast.contains("ratio_rate1h > 0.0144") && fast.contains("ratio_rate5m > 0.0144"),
            "{fast}"
        );
        // Each window a burn alert reads is recorded.
        let recorded: Vec<&str> = all.iter().filter_map(|r| r["record"].as_str()).collect();
        for a in &burn {
            for part in a["expr"].as_str().unwrap().split(" and ") {
                let record = part.split(" > ").next().unwrap();
                assert!(recorded.contains(&record), "{record} is not recorded");
            }
        }
        // Only the platform's API requests count: probes and /metrics do not.
        assert!(all
            .iter()
            .filter_map(|r| r["record"].as_str().map(|_| r["expr"].as_str().unwrap()))
            .all(|e| e.contains(r#"namespace="team",kyb_platform="kyb""#)
                && e.contains(r#"route=~"/v1/.*""#)));
    }

    /// The pod pattern the CPU and memory alerts of `k` select, as a regex anchored like PromQL's.
    fn resource_alert_pods(k: &KybPlatform) -> regex::Regex {
        let groups = rule_groups(k, &k.spec.monitoring);
        let all = rules(&groups);
        let patterns: Vec<&str> = ["KybHighCpu", "KybHighMemory"]
            .iter()
            .map(|n| {
                let expr = all.iter().find(|r| r["alert"] == *n).unwrap()["expr"]
                    .as_str()
                    .unwrap();
                expr.split(r#"pod=~""#)
                    .nth(1)
                    .unwrap()
                    .split('"')
                    .next()
                    .unwrap()
            })
            .collect();
        assert_eq!(
            patterns[0], patterns[1],
            "CPU and memory watch the same pods"
        );
        regex::Regex::new(&format!("^(?:{})$", patterns[0])).unwrap()
    }

    #[test]
    fn resource_alerts_take_this_platforms_pods_only() {
        let mut k = kp();
        k.spec.workers = Some(serde_json::from_value(json!({})).unwrap());
        let re = resource_alert_pods(&k);
        for ours in [
            "kyb-6d4cf56db6-x7k2p",
            "kyb-worker-5f9c7b-abcde",
            "kyb-0123456789-7c9d8f-zz9q1",
        ] {
            assert!(re.is_match(ours), "{ours}");
        }
        for theirs in [
            "kyb-staging-6d4cf56db6-x7k2p",
            "kyb-staging-worker-5f9c7b-abcde",
            "kyb2-6d4cf56db6-x7k2p",
        ] {
            assert!(!re.is_match(theirs), "{theirs}");
        }
    }

    #[test]
    fn without_workers_a_platform_named_like_its_workers_is_not_taken_in() {
        // Platform `kyb` has no workers, so a platform `kyb-worker` may exist beside it.
        let re = resource_alert_pods(&kp());
        assert!(re.is_match("kyb-6d4cf56db6-x7k2p"));
        for theirs in [
            "kyb-worker-5f9c7b-abcde",            // kyb-worker's API pods
            "kyb-worker-0123456789-7c9d8f-zz9q1", // and its revisions'
        ] {
            assert!(!re.is_match(theirs), "{theirs}");
        }
    }

    #[test]
    fn objectives_and_knobs_come_from_the_spec() {
        let mut k = kp();
        k.spec.slos.error_rate_percent = 1.0;
        k.spec.slos.p95_latency = "250ms".into();
        k.spec.monitoring.alert_for = "1m".into();
        k.spec.monitoring.interval = "15s".into();
        let groups = rule_groups(&k, &k.spec.monitoring);
        assert!(groups
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["interval"] == "15s"));
        let all = rules(&groups);
        let find = |n: &str| all.iter().find(|r| r["alert"] == n).unwrap();
        assert!(find("KybHighErrorRate")["expr"]
            .as_str()
            .unwrap()
            .ends_with("> 0.01"));
        assert!(find("KybHighLatency")["expr"]
            .as_str()
            .unwrap()
            .ends_with("> 0.25"));
        assert_eq!(find("KybHighLatency")["for"], "1m");
        assert_eq!(
            find("KybErrorBudgetBurn")["for"],
            "2m",
            "burn windows keep the workbook's"
        );
    }

    #[test]
    fn the_pod_monitor_scrapes_every_pod_once_with_the_platforms_labels() {
        let mut k = kp();
        k.spec
            .monitoring
            .labels
            .insert("release".into(), "prometheus".into());
        let meta = ObjectMeta {
            name: Some("kyb".into()),
            ..Default::default()
        };
        let pm = pod_monitor(&k, &k.spec.monitoring, meta);
        assert_eq!(pm["kind"], "PodMonitor");
        assert_eq!(pm["metadata"]["labels"]["release"], "prometheus");
        let spec = &pm["spec"];
        assert_eq!(
            spec["selector"]["matchLabels"]["app.kubernetes.io/instance"],
            "kyb"
        );
        let ep = &spec["podMetricsEndpoints"][0];
        assert_eq!(
            (&ep["port"], &ep["interval"]),
            (&json!("metrics"), &json!("30s"))
        );
        let targets: Vec<&str> = ep["relabelings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["targetLabel"].as_str().unwrap())
            .collect();
        assert_eq!(targets, ["kyb_platform", "revision", "component"]);
    }

    #[test]
    fn the_dashboard_has_a_panel_for_each_concern_and_is_labelled_for_the_sidecar() {
        let k = kp();
        let d = dashboard(&k);
        let titles: Vec<&str> = d["panels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["title"].as_str().unwrap())
            .collect();
        for t in [
            "Traffic",
            "Errors",
            "Latency",
            "Cache hit rate",
            "Database pool",
            "Circuit breaker",
            "Pods",
            "Rollout weight",
            "queue",
        ] {
            assert!(titles.iter().any(|x| x.contains(t)), "{t} in {titles:?}");
        }
        assert!(d["uid"].as_str().unwrap().len() <= 40);
        assert_eq!(dashboard(&k)["uid"], d["uid"], "stable");
        assert!(dashboard_queries(&k).iter().all(|(_, q)| q.contains("kyb")));
        let cm = dashboard_config_map(&k, ObjectMeta::default());
        assert_eq!(cm.metadata.labels.unwrap()["grafana_dashboard"], "1");
        let json: Value = serde_json::from_str(cm.data.unwrap().values().next().unwrap()).unwrap();
        assert_eq!(json["title"], d["title"]);
    }
}
