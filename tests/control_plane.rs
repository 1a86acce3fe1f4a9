//! Proves the test control plane (tests/cluster) is a real Kubernetes: controllers, scheduler, fake
//! kubelets (kwok), garbage collection, Jobs, CRD structural schemas with CEL rules, RBAC with
//! ServiceAccount tokens, and a clean stop. Run: `cargo test --test control_plane`.

#[path = "common/cluster.rs"]
mod cluster;

use std::time::{Duration, Instant};

use cluster::{check, check_with_stdin, cluster, eventually, run, run_with_stdin, UpProcess};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};

#[tokio::test]
async fn deployment_becomes_available_and_is_garbage_collected() {
    let c = cluster().await;
    let ns = c.namespace("deploy").await;
    let manifest = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1.0
        ports: [{containerPort: 8080}]
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
"#;
    check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), manifest);
    check(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Available",
        "deployment/web",
        "--timeout=120s",
    ]));

    let client = c.client().await;
    let rss: Api<ReplicaSet> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let by_app = ListParams::default().labels("app=web");

    let rs_list = rss.list(&by_app).await.expect("list replicasets");
    assert_eq!(rs_list.items.len(), 1, "one ReplicaSet");
    let rs = &rs_list.items[0];
    let owner = &rs.metadata.owner_references.as_ref().expect("RS owner")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Deployment", "web")
    );
    assert_eq!(rs.status.as_ref().and_then(|s| s.ready_replicas), Some(3));

    let pod_list = pods.list(&by_app).await.expect("list pods");
    assert_eq!(pod_list.items.len(), 3, "three pods");
    for pod in &pod_list.items {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let spec = pod.spec.as_ref().expect("pod spec");
        assert!(
            spec.node_name
                .as_deref()
                .unwrap_or_default()
                .starts_with("kwok-node-"),
            "{name} scheduled onto a fake node"
        );
        let status = pod.status.as_ref().expect("pod status");
        assert_eq!(status.phase.as_deref(), Some("Running"), "{name} Running");
        assert!(
            status.pod_ip.as_deref().is_some_and(|ip| !ip.is_empty()),
            "{name} has a pod IP"
        );
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        assert!(ready, "{name} Ready");
    }

    // Garbage collection: deleting the Deployment removes its ReplicaSet and, through it, the pods.
    check(c.kubectl().args([
        "delete",
        "-n",
        &ns,
        "deployment/web",
        "--wait=true",
        "--timeout=60s",
    ]));
    eventually(
        Duration::from_secs(90),
        "the ReplicaSet and pods to be garbage-collected",
        || {
            let (rss, pods, by_app) = (rss.clone(), pods.clone(), by_app.clone());
            async move {
                let rs_left = rss
                    .list(&by_app)
                    .await
                    .map(|l| l.items.len())
                    .unwrap_or(usize::MAX);
                let pods_left = pods
                    .list(&by_app)
                    .await
                    .map(|l| l.items.len())
                    .unwrap_or(usize::MAX);
                rs_left == 0 && pods_left == 0
            }
        },
    )
    .await;
}

#[tokio::test]
async fn job_completes_and_a_job_marked_to_fail_fails() {
    let c = cluster().await;
    let ns = c.namespace("jobs").await;
    let manifest = r#"
apiVersion: batch/v1
kind: Job
metadata:
  name: succeeds
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: registry.invalid/job:1.0
---
apiVersion: batch/v1
kind: Job
metadata:
  name: fails
spec:
  backoffLimit: 0
  template:
    metadata:
      annotations:
        # tests/cluster/stages.yaml: kwok makes this pod fail with exit code 3.
        kwok.x-k8s.io/fail: "true"
        kwok.x-k8s.io/exit-code: "3"
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: registry.invalid/job:1.0
"#;
    check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), manifest);
    check(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Complete",
        "job/succeeds",
        "--timeout=120s",
    ]));
    check(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Failed",
        "job/fails",
        "--timeout=120s",
    ]));

    // Each Job's condition is the opposite one's absence: the succeeding Job did not fail and vice versa.
    let (ok, _, _) = run(c.kubectl().args([
        "wait",
        "-n",
        &ns,
        "--for=condition=Failed",
        "job/succeeds",
        "--timeout=1s",
    ]));
    assert!(!ok, "job/succeeds must not be Failed");

    let pods: Api<Pod> = Api::namespaced(c.client().await, &ns);
    let failed = pods
        .list(&ListParams::default().labels("job-name=fails"))
        .await
        .expect("list pods");
    assert_eq!(failed.items.len(), 1, "backoffLimit 0: exactly one pod");
    let status = failed.items[0].status.as_ref().expect("status");
    assert_eq!(status.phase.as_deref(), Some("Failed"));
    let exit_code = status
        .container_statuses
        .iter()
        .flatten()
        .next()
        .and_then(|cs| cs.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code));
    assert_eq!(exit_code, Some(3));

    let succeeded = pods
        .list(&ListParams::default().labels("job-name=succeeds"))
        .await
        .expect("list pods");
    assert_eq!(succeeded.items.len(), 1);
    assert_eq!(
        succeeded.items[0]
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref()),
        Some("Succeeded")
    );
}

#[tokio::test]
async fn crd_structural_schema_and_cel_rule_are_enforced() {
    let c = cluster().await;
    let ns = c.namespace("crd").await;
    let crd = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.kybctl.local
spec:
  group: test.kybctl.local
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [replicas, minReplicas]
            properties:
              replicas: {type: integer, minimum: 0}
              minReplicas: {type: integer, minimum: 0}
            x-kubernetes-validations:
            - rule: "self.minReplicas <= self.replicas"
              message: "minReplicas must not exceed replicas"
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;
    check_with_stdin(c.kubectl().args(["apply", "-f", "-"]), crd);
    cluster::wait_established(c, &["crd/widgets.test.kybctl.local".into()]);

    let valid = "apiVersion: test.kybctl.local/v1\nkind: Widget\nmetadata: {name: good}\nspec: {replicas: 3, minReplicas: 1}\n";
    check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), valid);

    // Through kubectl: the rule's message is in the error.
    let invalid = "apiVersion: test.kybctl.local/v1\nkind: Widget\nmetadata: {name: bad}\nspec: {replicas: 1, minReplicas: 5}\n";
    let (ok, _, stderr) =
        run_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), invalid);
    assert!(!ok, "an object breaking the CEL rule must be rejected");
    assert!(
        stderr.contains("minReplicas must not exceed replicas"),
        "kubectl stderr: {stderr}"
    );

    // The structural schema is enforced too (type checking).
    let mistyped = "apiVersion: test.kybctl.local/v1\nkind: Widget\nmetadata: {name: typo}\nspec: {replicas: three, minReplicas: 1}\n";
    let (ok, _, stderr) =
        run_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), mistyped);
    assert!(
        !ok && stderr.contains("spec.replicas"),
        "a mistyped field must be rejected: {stderr}"
    );

    // Through the kube crate: 422 Invalid with the rule's message.
    let gvk = GroupVersionKind::gvk("test.kybctl.local", "v1", "Widget");
    let widgets: Api<DynamicObject> =
        Api::namespaced_with(c.client().await, &ns, &ApiResource::from_gvk(&gvk));
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "test.kybctl.local/v1", "kind": "Widget",
        "metadata": {"name": "bad2"}, "spec": {"replicas": 0, "minReplicas": 2}
    }))
    .unwrap();
    match widgets.create(&PostParams::default(), &obj).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(
                status
                    .message
                    .contains("minReplicas must not exceed replicas"),
                "{status:?}"
            );
        }
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
    assert!(widgets.get_opt("good").await.expect("get").is_some());
}

#[tokio::test]
async fn service_account_token_is_forbidden_until_granted_by_rbac() {
    let c = cluster().await;
    let ns = c.namespace("rbac").await;
    check(
        c.kubectl()
            .args(["create", "serviceaccount", "reader", "-n", &ns]),
    );
    let token = check(
        c.kubectl()
            .args(["create", "token", "reader", "-n", &ns, "--duration=1h"]),
    );
    let token = token.trim().to_string();
    assert!(!token.is_empty());

    // Who am I: the token authenticates as the ServiceAccount.
    let whoami = check(c.kubectl_with_token(&token).args([
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ]));
    assert_eq!(whoami.trim(), format!("system:serviceaccount:{ns}:reader"));

    // kubectl: forbidden.
    let (ok, _, stderr) = run(c
        .kubectl_with_token(&token)
        .args(["get", "pods", "-n", &ns]));
    assert!(
        !ok && stderr.contains("forbidden"),
        "expected forbidden, got: {stderr}"
    );

    // kube crate: 403.
    let pods: Api<Pod> = Api::namespaced(c.client_with_token(&token).await, &ns);
    match pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("expected 403 Forbidden, got {other:?}"),
    }

    // Plain HTTPS with the bearer token: 403.
    let http = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(&std::fs::read(&c.ca_cert).unwrap()).unwrap(),
        )
        .build()
        .unwrap();
    let url = format!("{}/api/v1/namespaces/{ns}/pods", c.server);
    let resp = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET pods");
    assert_eq!(resp.status().as_u16(), 403);
    assert!(resp.text().await.unwrap().contains("forbidden"));

    // Grant it: Role + RoleBinding.
    let rbac = format!(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: pod-reader}}
rules:
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: reader-reads-pods}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}}
subjects:
- {{kind: ServiceAccount, name: reader, namespace: {ns}}}
"#
    );
    check_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &rbac);

    // The RBAC authorizer works from an informer cache: allow it a moment.
    eventually(
        Duration::from_secs(30),
        "the RoleBinding to take effect",
        || {
            let pods = pods.clone();
            async move { pods.list(&ListParams::default()).await.is_ok() }
        },
    )
    .await;
    check(
        c.kubectl_with_token(&token)
            .args(["get", "pods", "-n", &ns]),
    );
    let resp = http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("GET pods");
    assert_eq!(resp.status().as_u16(), 200);

    // Still only what was granted.
    let (ok, _, stderr) = run(c
        .kubectl_with_token(&token)
        .args(["get", "secrets", "-n", &ns]));
    assert!(
        !ok && stderr.contains("forbidden"),
        "secrets must stay forbidden: {stderr}"
    );
    let (ok, _, stderr) = run(c
        .kubectl_with_token(&token)
        .args(["delete", "pod", "nothing", "-n", &ns]));
    assert!(
        !ok && stderr.contains("forbidden"),
        "delete must stay forbidden: {stderr}"
    );
}

/// Is anything accepting TCP connections on 127.0.0.1:port?
fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &(std::net::Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is not "alive": it has let go of everything. Read the state to tell.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_separate_control_plane_stops_without_leaving_processes_or_ports() {
    // Make sure the binaries exist (the shared control plane builds them) so this one starts quickly.
    let _ = cluster().await;

    let tmp = tempfile::Builder::new()
        .prefix("kybctl-k8s-stop-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().join("cp");
    let started = Instant::now();
    let mut up = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut up = UpProcess::spawn(&dir, &["--nodes".into(), "1".into()]).expect("spawn up");
            if let Err(e) = up.wait_ready(Duration::from_secs(600)) {
                let _ = up.child.kill();
                panic!("second control plane did not start: {e}");
            }
            up
        }
    })
    .await
    .expect("start second control plane");
    eprintln!("second control plane ready in {:?}", started.elapsed());

    let kubeconfig = dir.join("kubeconfig");
    let nodes = check(
        std::process::Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(["get", "nodes", "-o", "name"]),
    );
    assert_eq!(nodes.trim(), "node/kwok-node-0");

    let pids = up.pids();
    let ports = up.ports();
    let names: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok"
        ]
    );
    assert!(
        pids.iter().all(|(_, pid)| pid_alive(*pid)),
        "all components run: {pids:?}"
    );
    for (name, port) in &ports {
        assert!(listening(*port), "{name} listens on 127.0.0.1:{port}");
    }

    let status =
        tokio::task::spawn_blocking(move || up.stop(Duration::from_secs(90)).map(|s| (s, up)))
            .await
            .unwrap()
            .expect("stop up");
    assert!(status.0.success(), "up exits 0 on SIGTERM: {:?}", status.0);

    let alive: Vec<_> = pids.iter().filter(|(_, pid)| pid_alive(*pid)).collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
    let open: Vec<_> = ports.iter().filter(|(_, port)| listening(*port)).collect();
    assert!(open.is_empty(), "ports still listening: {open:?}");
    // Nothing else was started from that directory either.
    let strays: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(dir.to_str().unwrap()))
        .collect();
    assert!(
        strays.is_empty(),
        "processes still referring to {}: {strays:?}",
        dir.display()
    );
}
