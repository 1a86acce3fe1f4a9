//! The KybPlatform CRD on the real apiserver: accepted, documented by `kubectl explain`, defaults
//! applied, scale subresource working, and every bad spec refused with a message naming the field.

#[path = "common/cluster.rs"]
mod cluster;
#[path = "common/operator.rs"]
mod operator;

use cluster::{check, cluster, run, run_with_stdin};

const SAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/manifests/samples");

async fn installed() -> &'static cluster::Cluster {
    operator::install_crd().await;
    cluster().await
}

#[tokio::test]
async fn samples_are_accepted_defaulted_and_scalable() {
    let c = installed().await;
    let ns = c.namespace("crd").await;
    for sample in [
        "minimal.yaml",
        "full.yaml",
        "analysis-success-rate.yaml",
        "analysis-latency.yaml",
        "analysis-slo.yaml",
        "analysis-smoke-job.yaml",
    ] {
        check(
            c.kubectl()
                .args(["apply", "-n", &ns, "-f", &format!("{SAMPLES}/{sample}")]),
        );
    }
    let min_replicas = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "kyb/kyb",
        "-o",
        "jsonpath={.spec.autoscaling.minReplicas} {.spec.database.pool.maxConnections} {.spec.slos.p95Latency}",
    ]));
    assert_eq!(
        min_replicas.trim(),
        "3 100 500ms",
        "the apiserver applies the plan's defaults"
    );
    let table = check(c.kubectl().args(["get", "-n", &ns, "kyb"]));
    for column in [
        "NAME", "READY", "IMAGE", "PHASE", "STRATEGY", "STEP", "WEIGHT", "AGE",
    ] {
        assert!(table.contains(column), "{table}");
    }
    // The plan's two rollout configurations, as shipped.
    for (sample, strategy) in [("blue-green.yaml", "BlueGreen"), ("canary.yaml", "Canary")] {
        let ns = c.namespace("crd-rollout").await;
        check(
            c.kubectl()
                .args(["apply", "-n", &ns, "-f", &format!("{SAMPLES}/{sample}")]),
        );
        let got = check(c.kubectl().args([
            "get",
            "-n",
            &ns,
            "kyb/kyb-platform",
            "-o",
            "jsonpath={.spec.rollout.strategy} {.spec.replicas} {.spec.rollout.blueGreen.scaleDownDelaySeconds}{.spec.rollout.canary.steps[*].setWeight}",
        ]));
        let want = match strategy {
            "BlueGreen" => "BlueGreen 5 30",
            _ => "Canary 10 20 40 60 80",
        };
        assert_eq!(got.trim(), want, "{sample}");
    }
    check(
        c.kubectl()
            .args(["scale", "-n", &ns, "kyb/kyb-full", "--replicas=5"]),
    );
    let replicas = check(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "kyb/kyb-full",
        "-o",
        "jsonpath={.spec.replicas}",
    ]));
    assert_eq!(replicas.trim(), "5");
}

#[tokio::test]
async fn explain_documents_the_spec() {
    let c = installed().await;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let mut out = String::new();
    for _ in 0..60 {
        let (ok, stdout, _) = run(c.kubectl().args(["explain", "kybplatform.spec"]));
        if ok {
            out = stdout;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    for field in [
        "image",
        "replicas",
        "autoscaling",
        "resources",
        "database",
        "cache",
        "server",
        "circuitBreaker",
        "healthCheck",
        "slos",
        "migrations",
        "rollout",
    ] {
        assert!(
            out.contains(field),
            "`kubectl explain kybplatform.spec` lacks {field}:\n{out}"
        );
    }
    let out = check(
        c.kubectl()
            .args(["explain", "kybplatform.spec.autoscaling.minReplicas"]),
    );
    assert!(out.contains("integer"), "{out}");
}

#[tokio::test]
async fn invalid_analysis_templates_are_rejected_saying_why() {
    let c = installed().await;
    let ns = c.namespace("crd-bad-kat").await;
    let prom = "prometheus: {address: http://p, query: q}";
    let job = "job: {spec: {template: {spec: {containers: [{name: x, image: y}]}}}}";
    let cases = [
        (
            format!("successCondition: result < 1\n    provider: {{{prom}, {job}}}"),
            "exactly one of prometheus, web, job, slo",
        ),
        (
            format!("provider: {{{prom}}}"),
            "needs successCondition or failureCondition",
        ),
        (
            "successCondition: result < 1\n    provider: {slo: {}}".into(),
            "takes neither",
        ),
        (
            "provider: {job: {spec: {backoffLimit: 0}}}".into(),
            "spec.template",
        ),
        (
            "provider: {job: {spec: {template: {spec: {containers: []}}}}}".into(),
            "containers",
        ),
        ("provider: {slo: {users: 0}}".into(), "users"),
        ("provider: {slo: {scenario: everything}}".into(), "scenario"),
    ];
    for (metric, want) in cases {
        let yaml = format!(
            "apiVersion: kyb.io/v1alpha1\nkind: KybAnalysisTemplate\nmetadata: {{name: bad}}\nspec:\n  metrics:\n  - name: m\n    {metric}\n"
        );
        let (ok, _, err) = run_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &yaml);
        assert!(
            !ok && err.contains(want),
            "{yaml}\nwanted {want:?}, got: {err}"
        );
    }
}

#[tokio::test]
async fn invalid_specs_are_rejected_naming_the_field() {
    let c = installed().await;
    let ns = c.namespace("crd-bad").await;
    let db = "database: {primary: {name: db, key: url}}";
    let cases: Vec<(String, &str)> = vec![
        ("database: {primary: {name: db, key: url}}".into(), "spec.image"),
        (format!("image: x\n  {db}\n  autoscaling: {{minReplicas: 10, maxReplicas: 5}}"), "minReplicas must be <= spec.autoscaling.maxReplicas"),
        (format!("image: x\n  {db}\n  autoscaling: {{targetCpuUtilizationPercentage: 150}}"), "targetCpuUtilizationPercentage"),
        (format!("image: x\n  {db}\n  replicas: 50"), "spec.replicas must lie within"),
        (format!("image: x\n  {db}\n  server: {{readTimeout: fifteen}}"), "spec.server.readTimeout"),
        (format!("image: x\n  {db}\n  slos: {{errorRatePercent: 101}}"), "spec.slos.errorRatePercent"),
        ("image: x\n  database: {}".into(), "spec.database.primary is required"),
        (
            "image: x\n  database: {primary: {name: db, key: url}, shards: [{id: a, primary: {name: db, key: a}}]}".into(),
            "set either primary (one database) or shards",
        ),
        (
            "image: x\n  database: {shards: [{id: a, primary: {name: db, key: a}}, {id: a, primary: {name: db, key: b}}]}".into(),
            "ids must be unique",
        ),
        (
            "image: x\n  database: {primary: {name: db, key: url}, pool: {minConnections: 50, maxConnections: 10}}".into(),
            "spec.database.pool.minConnections must be <= maxConnections",
        ),
        (format!("image: x\n  {db}\n  rollout: {{strategy: Linear}}"), "spec.rollout.strategy"),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, canary: {{steps: [{{setWeight: 40}}, {{pause: {{}}}}, {{setWeight: 20}}]}}}}"),
            "setWeight must not decrease",
        ),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, canary: {{steps: [{{setWeight: 120}}]}}}}"),
            "spec.rollout.canary.steps[0].setWeight",
        ),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, canary: {{steps: [{{setWeight: 20, pause: {{}}}}]}}}}"),
            "a canary step sets exactly one of",
        ),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, canary: {{steps: [{{setCanaryScale: {{replicas: 2}}}}]}}}}"),
            "setCanaryScale needs trafficRouting",
        ),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, blueGreen: {{}}}}"),
            "spec.rollout.blueGreen is only read with strategy BlueGreen",
        ),
        (
            format!("image: x\n  {db}\n  rollout: {{strategy: Canary, canary: {{steps: [{{pause: {{duration: soon}}}}]}}}}"),
            "spec.rollout.canary.steps[0].pause.duration",
        ),
        (format!("image: x\n  {db}\n  imagePullPolicy: Sometimes"), "spec.imagePullPolicy"),
        (
            format!("image: x\n  {db}\n  auth: {{insecureNoAuth: true, apiKeys: [{{name: k, key: keys.yaml}}]}}"),
            "insecureNoAuth excludes apiKeys and jwt",
        ),
        (
            format!("image: x\n  {db}\n  auth: {{jwt: {{issuer: x, jwksUrl: 'ftp://x', audience: a}}}}"),
            "spec.auth.jwt.jwksUrl",
        ),
        (
            "image: x\n  database: {primary: {name: db, key: url}, maxConnections: 5}".into(),
            "spec.database.maxConnections",
        ),
        ("image: x\n  database: {primary: {name: Bad_Name, key: url}}".into(), "spec.database.primary.name"),
    ];
    for (i, (spec, needle)) in cases.iter().enumerate() {
        let manifest = format!("apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata:\n  name: bad-{i}\nspec:\n  {spec}\n");
        let (ok, _out, err) =
            run_with_stdin(c.kubectl().args(["apply", "-n", &ns, "-f", "-"]), &manifest);
        assert!(!ok, "case {i} was accepted:\n{manifest}");
        assert!(
            err.contains(needle),
            "case {i}: expected {needle:?} in:\n{err}\n{manifest}"
        );
    }
    let (_, listed, _) = run(c.kubectl().args(["get", "-n", &ns, "kyb", "-o", "name"]));
    assert!(listed.trim().is_empty(), "nothing half-applied: {listed}");
}

/// Hash, range or directory routing depends on the shard list: once set, it cannot change (merchants
/// would turn 404), while a single database may still become one shard; keys and ranges belong to
/// their own strategies only.
#[tokio::test]
async fn shards_cannot_be_reshuffled_once_set() {
    let c = installed().await;
    let ns = c.namespace("crd-shards").await;
    let shard = |id: &str| format!("{{id: {id}, primary: {{name: db, key: {id}}}}}");
    let manifest = |database: &str| {
        format!("apiVersion: kyb.io/v1alpha1\nkind: KybPlatform\nmetadata:\n  name: sharded\nspec:\n  image: x\n  database: {database}\n")
    };
    let apply_named = |name: &str, database: String| {
        run_with_stdin(
            c.kubectl().args(["apply", "-n", &ns, "-f", "-"]),
            &manifest(&database).replace("name: sharded", &format!("name: {name}")),
        )
    };
    let apply = |database: String| apply_named("sharded", database);
    let (ok, _, err) = apply("{primary: {name: db, key: url}}".into());
    assert!(ok, "{err}");
    let (ok, _, err) = apply(format!("{{shards: [{}]}}", shard("a")));
    assert!(
        ok,
        "one database to one shard routes nothing elsewhere: {err}"
    );
    let (ok, _, err) = apply(format!("{{shards: [{}, {}]}}", shard("a"), shard("b")));
    assert!(!ok, "a second shard was accepted");
    assert!(err.contains("cannot change once set"), "{err}");
    let (_, spec, _) = run(c.kubectl().args([
        "get",
        "-n",
        &ns,
        "kyb/sharded",
        "-o",
        "jsonpath={.spec.database.shards[*].id}",
    ]));
    assert_eq!(spec.trim(), "a", "nothing half-applied");

    // Directory keys pin ids to shards: they are part of the routing too.
    let pinned = |keys: &str| {
        format!("{{shardingStrategy: directory, shards: [{{id: a, primary: {{name: db, key: a}}, keys: [{keys}]}}, {}]}}", shard("b"))
    };
    let (ok, _, err) = apply_named("directory", pinned("big-1"));
    assert!(ok, "{err}");
    let (ok, _, err) = apply_named("directory", pinned("big-1, big-2"));
    assert!(!ok, "a new pinned key was accepted");
    assert!(err.contains("directory keys"), "{err}");
    for (database, needle) in [
        (format!("{{shardingStrategy: hash, shards: [{{id: a, primary: {{name: db, key: a}}, keys: [x]}}, {}]}}", shard("b")), "only the directory sharding strategy"),
        (format!("{{shardingStrategy: hash, shards: [{{id: a, primary: {{name: db, key: a}}, rangeFrom: ''}}, {}]}}", shard("b")), "only the range sharding strategy"),
    ] {
        let (ok, _, err) = apply_named("misplaced", database.clone());
        assert!(!ok, "accepted: {database}");
        assert!(err.contains(needle), "{err}");
    }
}

/// What the operator would apply for a real KybPlatform is accepted by the apiserver (server-side
/// dry-run apply of every child, under the operator's field manager).
#[tokio::test]
async fn built_children_pass_server_side_validation() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{Api, Patch, PatchParams};
    use kybctl::operator::build::{build, FIELD_MANAGER};
    use kybctl::operator::crd::KybPlatform;

    let c = installed().await;
    let ns = c.namespace("children").await;
    check(
        c.kubectl()
            .args(["apply", "-n", &ns, "-f", &format!("{SAMPLES}/full.yaml")]),
    );
    let client = c.client().await;
    let kp = Api::<KybPlatform>::namespaced(client.clone(), &ns)
        .get("kyb-full")
        .await
        .unwrap();
    let children = build(&kp).unwrap();
    let pp = PatchParams::apply(FIELD_MANAGER).dry_run();

    async fn apply<K>(client: &kube::Client, ns: &str, obj: &K, pp: &PatchParams)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let name = obj.meta().name.clone().unwrap();
        Api::<K>::namespaced(client.clone(), ns)
            .patch(&name, pp, &Patch::Apply(obj))
            .await
            .unwrap_or_else(|e| panic!("{} {name} rejected: {e}", K::kind(&Default::default())));
    }
    apply::<ServiceAccount>(&client, &ns, &children.service_account, &pp).await;
    apply::<ConfigMap>(&client, &ns, &children.config_map, &pp).await;
    apply::<Deployment>(&client, &ns, &children.deployment, &pp).await;
    apply::<Service>(&client, &ns, &children.service, &pp).await;
    apply::<HorizontalPodAutoscaler>(&client, &ns, children.hpa.as_ref().unwrap(), &pp).await;
    apply::<PodDisruptionBudget>(&client, &ns, &children.pdb, &pp).await;
    apply::<Job>(&client, &ns, children.migration_job.as_ref().unwrap(), &pp).await;
    let np = children
        .network_policy
        .as_ref()
        .expect("the sample declares its clients");
    apply::<k8s_openapi::api::networking::v1::NetworkPolicy>(&client, &ns, np, &pp).await;
    let key = kybctl::operator::build::generated_key_secret(&kp, "kyb_x", "[]\n").unwrap();
    apply::<k8s_openapi::api::core::v1::Secret>(&client, &ns, &key, &pp).await;
}
