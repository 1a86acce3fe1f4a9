//! On the real node (kubelet, containerd, runc, a CNI bridge and kube-proxy; `tests/cluster/up
//! --real-node`): pods of the `kybctl` image really run, their probes are really called, and Services
//! really route, so what kwok cannot show is checked here.

#[path = "common/cluster.rs"]
mod cluster;
mod common;
#[path = "common/node.rs"]
mod node;

use std::time::Duration;

use cluster::{check, check_with_stdin, cluster_with_real_node, eventually};
use common::migrated_db_on;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};

async fn get(url: &str) -> Result<(u16, String), String> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    Ok((status, resp.text().await.unwrap_or_default()))
}

/// Ready endpoint addresses of Service `name`.
async fn ready_endpoints(ns: &str, name: &str) -> Vec<String> {
    let c = cluster_with_real_node().await;
    Api::<EndpointSlice>::namespaced(c.client().await, ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .unwrap()
        .items
        .iter()
        .flat_map(|s| s.endpoints.clone().unwrap_or_default())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .flat_map(|e| e.addresses)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kybctl_pod_serves_through_its_service_and_leaves_it_while_unready() {
    let c = cluster_with_real_node().await;
    let image = node::kybctl_image();
    let mut pg = node::postgres_for_pods();
    let db = node::from_pods(&migrated_db_on(&pg).await);
    let ns = c.namespace("node").await;
    check_with_stdin(
        c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
        &format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: kyb, labels: {{app: kyb}}}}
spec:
{on_node}  automountServiceAccountToken: false
  securityContext: {{runAsNonRoot: true, runAsUser: 65532, seccompProfile: {{type: RuntimeDefault}}}}
  containers:
  - name: kyb
    image: {image}
    imagePullPolicy: Never
    args: [serve]
    env: [{{name: KYB_DATABASE_URL, value: "{db}"}}]
    ports: [{{name: http, containerPort: 8080}}]
    readinessProbe: {{httpGet: {{path: /ready, port: http}}, periodSeconds: 1, failureThreshold: 1}}
    securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {{drop: [ALL]}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: kyb}}
spec:
  selector: {{app: kyb}}
  ports: [{{port: 80, targetPort: http}}]
"#,
            on_node = node::ON_REAL_NODE
        ),
    );
    check(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Ready",
        "pod/kyb",
        "--timeout=90s",
    ]));
    let pods = Api::<Pod>::namespaced(c.client().await, &ns);
    let pod_ip = pods
        .get("kyb")
        .await
        .unwrap()
        .status
        .unwrap()
        .pod_ip
        .unwrap();
    assert!(pod_ip.starts_with("198.18.0."), "{pod_ip}");
    let (status, body) = get(&format!("http://{pod_ip}:8080/health")).await.unwrap();
    assert_eq!(status, 200, "{body}");

    let svc = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "service/kyb",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]));
    assert!(svc.starts_with("198.19."), "{svc}");
    let through_service = format!("http://{svc}/ready");
    eventually(Duration::from_secs(30), "the ClusterIP routes", || {
        let url = through_service.clone();
        async move { get(&url).await.is_ok_and(|(s, _)| s == 200) }
    })
    .await;

    // The database stops: /ready fails, the kubelet's probe sees it, the pod leaves the endpoints.
    pg.stop();
    eventually(
        Duration::from_secs(30),
        "the pod to leave the endpoints",
        || {
            let ns = ns.clone();
            async move { ready_endpoints(&ns, "kyb").await.is_empty() }
        },
    )
    .await;
    pg.restart().expect("restart PostgreSQL");
    eventually(Duration::from_secs(60), "the pod to return", || {
        let ns = ns.clone();
        let ip = pod_ip.clone();
        async move { ready_endpoints(&ns, "kyb").await == vec![ip] }
    })
    .await;
    // kube-proxy follows the endpoints within its sync interval.
    eventually(
        Duration::from_secs(30),
        "the ClusterIP to route again",
        || {
            let url = through_service.clone();
            async move { get(&url).await.is_ok_and(|(s, _)| s == 200) }
        },
    )
    .await;
}
