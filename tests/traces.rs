//! Traces end to end: the real `kybctl serve` binary, configured by the standard `OTEL_*` variables,
//! exports over OTLP to a real OpenTelemetry Collector (built from its upstream Go modules by
//! `tests/cluster/otelcol/build`: the OTLP receiver and the contrib file exporter), whose file is read
//! back. A caller's W3C `traceparent` is honoured, the registry is sent the client span's, and every
//! span of a request (server, cache, Redis, database, outbound) hangs from the request's server span
//! and carries its request id.

mod common;
#[path = "common/go_tool.rs"]
mod go_tool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use common::{business, migrated_db, redis};
use serde_json::Value;

/// The collector binary, built once per test process (reused from the cache across runs).
fn otelcol_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| go_tool::build("tests/cluster/otelcol/build"))
}

/// A collector receiving OTLP/HTTP on a loopback port and writing every batch to `spans.jsonl`.
struct Collector {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Collector {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = kybctl::local::free_port().unwrap();
        let config = format!(
            "receivers:\n  otlp:\n    protocols:\n      http:\n        endpoint: 127.0.0.1:{port}\n\
             exporters:\n  file:\n    path: {out}\n    flush_interval: 100ms\n\
             service:\n  telemetry:\n    metrics:\n      level: none\n    logs:\n      level: warn\n\
             \x20 pipelines:\n    traces:\n      receivers: [otlp]\n      exporters: [file]\n",
            out = dir.path().join("spans.jsonl").display()
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let mut cmd = Command::new(otelcol_bin());
        cmd.arg("--config")
            .arg(dir.path().join("config.yaml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("collector.log")).unwrap());
        let child = kybctl::local::spawn_tied(cmd, None, libc::SIGKILL).unwrap();
        let up = common::eventually(Duration::from_secs(20), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        assert!(
            up,
            "the collector did not listen:\n{}",
            std::fs::read_to_string(dir.path().join("collector.log")).unwrap_or_default()
        );
        Self { child, dir, port }
    }

    /// Every span the collector has written, flattened, with its resource's `service.name`.
    fn spans(&self) -> Vec<(String, Value)> {
        let text = std::fs::read_to_string(self.dir.path().join("spans.jsonl")).unwrap_or_default();
        let mut spans = vec![];
        for line in text.lines() {
            // The last line may be half-written while the collector flushes: read again later.
            let Ok(batch) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            for rs in batch["resourceSpans"].as_array().unwrap() {
                let service = attribute(&rs["resource"], "service.name").unwrap_or_default();
                for ss in rs["scopeSpans"].as_array().unwrap() {
                    for span in ss["spans"].as_array().unwrap() {
                        spans.push((service.clone(), span.clone()));
                    }
                }
            }
        }
        spans
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A string (or integer, as OTLP JSON writes it) attribute of a span or resource.
fn attribute(of: &Value, key: &str) -> Option<String> {
    of["attributes"].as_array()?.iter().find_map(|a| {
        (a["key"] == key).then(|| {
            let v = &a["value"];
            v["stringValue"]
                .as_str()
                .map(str::to_owned)
                .or_else(|| v["intValue"].as_str().map(str::to_owned))
                .unwrap_or_else(|| v.to_string())
        })
    })
}

const SPAN_KIND_SERVER: i64 = 2;
const SPAN_KIND_CLIENT: i64 = 3;
const STATUS_ERROR: i64 = 2;

/// One trace's spans, by id.
struct Trace<'a> {
    by_id: HashMap<&'a str, &'a Value>,
}

impl<'a> Trace<'a> {
    fn of(spans: &'a [(String, Value)], trace_id: &str) -> Self {
        let by_id = spans
            .iter()
            .map(|(_, s)| s)
            .filter(|s| s["traceId"] == trace_id)
            .map(|s| (s["spanId"].as_str().unwrap(), s))
            .collect();
        Self { by_id }
    }

    fn named(&self, name: &str) -> Vec<&'a Value> {
        self.by_id
            .values()
            .copied()
            .filter(|s| s["name"] == name)
            .collect()
    }

    fn one(&self, name: &str) -> &'a Value {
        let found = self.named(name);
        assert_eq!(found.len(), 1, "one span {name:?} in {:#?}", self.names());
        found[0]
    }

    fn names(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self
            .by_id
            .values()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        n.sort();
        n
    }

    /// Whether `span` descends from `ancestor` through spans of this trace.
    fn descends(&self, span: &Value, ancestor: &Value) -> bool {
        let mut at = span;
        for _ in 0..64 {
            let parent = at["parentSpanId"].as_str().unwrap_or("");
            if parent == ancestor["spanId"] {
                return true;
            }
            match self.by_id.get(parent) {
                Some(p) => at = p,
                None => return false,
            }
        }
        false
    }
}

/// A registry that records the `traceparent` of each call.
async fn fake_registry() -> (Arc<Mutex<Vec<String>>>, String) {
    let seen = Arc::new(Mutex::new(vec![]));
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/v1/businesses/lookup",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                if let Some(tp) = headers.get("traceparent") {
                    s.lock().unwrap().push(tp.to_str().unwrap().to_owned());
                }
                axum::Json(serde_json::json!({"naics_code": "722511", "mcc": "5812"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (seen, format!("http://{addr}/"))
}

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
const PATCH_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[tokio::test]
async fn a_requests_spans_reach_a_real_collector_under_the_callers_trace() {
    let collector = Collector::start().await;
    let (registry_calls, registry) = fake_registry().await;
    let db = migrated_db().await;
    let port = kybctl::local::free_port().unwrap();
    let metrics_port = kybctl::local::free_port().unwrap();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_kybctl"));
    serve
        .arg("serve")
        .env("KYB_LISTEN", format!("127.0.0.1:{port}"))
        .env("KYB_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("KYB_DATABASE_URL", &db)
        .env("KYB_REDIS_URL", redis().url())
        .env("KYB_CACHE_KEY_PREFIX", common::unique("tr"))
        .env("KYB_REGISTRY_URL", &registry)
        .env("KYB_INSECURE_NO_AUTH", "true")
        .env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", collector.port),
        )
        .env("OTEL_SERVICE_NAME", "kyb-trace-test")
        // Nothing is exported on the schedule during the test: what arrives is what the exit flushed.
        .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = kybctl::local::spawn_tied(serve, None, libc::SIGKILL).unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let ready = common::eventually(Duration::from_secs(30), || async {
        http.get(format!("{base}/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await;
    assert!(ready, "kybctl serve did not become ready");

    // A creation inside the caller's trace: classification (the registry), the INSERT, the commit.
    let created = http
        .post(format!("{base}/v1/merchants"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "trace-create-1")
        .json(&business("Traced Bakery", "bakery bread"))
        .send()
        .await
        .unwrap();
    let etag = created.headers()["etag"].clone();
    let created: Value = created.json().await.unwrap();
    let id = created["id"].as_str().expect("a merchant").to_owned();
    // A status change: a transaction of several statements.
    let suspended = http
        .patch(format!("{base}/v1/merchants/{id}"))
        .header("traceparent", format!("00-{PATCH_TRACE}-{CALLER_SPAN}-01"))
        .header("x-request-id", "trace-patch-1")
        .header("if-match", etag)
        .json(&serde_json::json!({"status": "suspended"}))
        .send()
        .await
        .unwrap();
    assert!(suspended.status().is_success(), "{}", suspended.status());
    // A read with no caller trace: a trace of its own, answered by the cache (Redis).
    let read = http
        .get(format!("{base}/v1/merchants/{id}"))
        .header("x-request-id", "trace-read-1")
        .send()
        .await
        .unwrap();
    assert!(read.status().is_success());
    assert_eq!(read.headers()["x-cache-status"], "HIT-L2");
    // A malformed traceparent is ignored, not an error: the request starts a trace of its own. This
    // read skips the cache, so it goes to the database.
    let odd = http
        .get(format!("{base}/v1/merchants/{id}"))
        .header("traceparent", "00-not-a-trace-01")
        .header("cache-control", "no-cache")
        .header("x-request-id", "trace-read-2")
        .send()
        .await
        .unwrap();
    assert!(odd.status().is_success());
    assert_eq!(odd.headers()["x-cache-status"], "MISS");
    assert!(
        collector.spans().is_empty(),
        "nothing is exported before the batch delay or the exit"
    );

    // SIGTERM: the service drains, and the exit flushes the batched spans.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut exited = None;
    for _ in 0..300 {
        exited = child.try_wait().unwrap();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = exited.expect("kybctl serve exits within 30 s of SIGTERM");
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let mut spans = vec![];
    for _ in 0..50 {
        spans = collector.spans();
        // Every request's server span: the exit's flush may arrive in more than one export.
        let servers = [
            "POST /v1/merchants",
            "PATCH /v1/merchants/{id}",
            "GET /v1/merchants/{id}",
        ];
        if servers
            .iter()
            .all(|name| spans.iter().any(|(_, s)| s["name"] == *name))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!spans.is_empty(), "no spans reached the collector");
    assert!(
        spans.iter().all(|(service, _)| service == "kyb-trace-test"),
        "OTEL_SERVICE_NAME names the resource"
    );

    // The creation: the caller's trace, the server span a child of the caller's span.
    let create = Trace::of(&spans, CALLER_TRACE);
    let server = create.one("POST /v1/merchants");
    assert_eq!(server["parentSpanId"], CALLER_SPAN);
    assert_eq!(server["kind"], SPAN_KIND_SERVER);
    assert_eq!(
        attribute(server, "request_id").as_deref(),
        Some("trace-create-1")
    );
    assert_eq!(
        attribute(server, "http.route").as_deref(),
        Some("/v1/merchants")
    );
    assert_eq!(
        attribute(server, "http.response.status_code").as_deref(),
        Some("201")
    );
    for name in [
        "cache.get",
        "registry.lookup",
        "GET /v1/businesses/lookup",
        "INSERT merchants",
    ] {
        let spans = create.named(name);
        assert!(
            !spans.is_empty(),
            "no {name:?} span in the creation's trace: {:#?}",
            create.names()
        );
        for span in spans {
            assert!(
                create.descends(span, server),
                "{name:?} does not hang from the server span"
            );
            assert_eq!(
                attribute(span, "request_id").as_deref(),
                Some("trace-create-1"),
                "{name:?} carries the request id"
            );
        }
    }
    // The record written through to Redis after the commit.
    let redis_calls: Vec<&Value> = create
        .by_id
        .values()
        .copied()
        .filter(|s| attribute(s, "db.system.name").as_deref() == Some("redis"))
        .collect();
    assert!(
        redis_calls.iter().any(|s| s["name"] == "EVAL"),
        "{:#?}",
        create.names()
    );
    for span in redis_calls {
        assert!(create.descends(span, server));
        assert_eq!(span["kind"], SPAN_KIND_CLIENT);
        assert_eq!(
            attribute(span, "request_id").as_deref(),
            Some("trace-create-1")
        );
    }
    let insert = create.one("INSERT merchants");
    assert_eq!(insert["kind"], SPAN_KIND_CLIENT);
    assert_eq!(
        attribute(insert, "db.system.name").as_deref(),
        Some("postgresql")
    );
    // The registry got the trace context of the client span that called it.
    let outbound = create.one("GET /v1/businesses/lookup");
    assert_eq!(outbound["kind"], SPAN_KIND_CLIENT);
    assert_eq!(
        attribute(outbound, "http.response.status_code").as_deref(),
        Some("200")
    );
    let url = attribute(outbound, "url.full").unwrap();
    assert!(
        url.ends_with("/v1/businesses/lookup"),
        "url.full without the query (it names the business): {url}"
    );
    assert_eq!(
        registry_calls.lock().unwrap().as_slice(),
        [format!(
            "00-{CALLER_TRACE}-{}-01",
            outbound["spanId"].as_str().unwrap()
        )]
    );

    // The status change: its statements in order inside one transaction, all under the request.
    let patch = Trace::of(&spans, PATCH_TRACE);
    let server = patch.one("PATCH /v1/merchants/{id}");
    assert_eq!(server["parentSpanId"], CALLER_SPAN);
    // Every statement, in order: the read, then the transaction (the lock, the write, the read-back,
    // the audit record, the invalidation notice).
    let mut statements: Vec<&Value> = patch
        .by_id
        .values()
        .copied()
        .filter(|s| attribute(s, "db.system.name").as_deref() == Some("postgresql"))
        .filter(|s| patch.descends(s, server))
        .collect();
    statements.sort_by_key(|s| {
        s["startTimeUnixNano"]
            .as_str()
            .unwrap()
            .parse::<u128>()
            .unwrap()
    });
    let statements: Vec<&str> = statements
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        statements[..8],
        [
            "SELECT merchants",
            "BEGIN",
            "SELECT merchants",
            "UPDATE merchants",
            "SELECT merchants",
            "INSERT merchant_status_changes",
            "SELECT pg_notify",
            "COMMIT",
        ]
    );
    for span in patch
        .by_id
        .values()
        .filter(|s| s["spanId"] != server["spanId"])
    {
        assert!(patch.descends(span, server));
        assert_eq!(
            attribute(span, "request_id").as_deref(),
            Some("trace-patch-1")
        );
    }

    // The reads: each its own trace, a root server span with the cache below, and below that Redis
    // (the cached read) or the database (the read that skipped the cache).
    let reads: Vec<&Value> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s["name"] == "GET /v1/merchants/{id}")
        .collect();
    assert_eq!(reads.len(), 2);
    assert_ne!(reads[0]["traceId"], reads[1]["traceId"]);
    for server in reads {
        assert_ne!(server["traceId"], CALLER_TRACE);
        assert_eq!(server["parentSpanId"].as_str().unwrap_or(""), "");
        let trace = Trace::of(&spans, server["traceId"].as_str().unwrap());
        let request_id = attribute(server, "request_id").unwrap();
        let cache = trace.one("cache.get_record");
        assert!(trace.descends(cache, server));
        match request_id.as_str() {
            "trace-read-1" => {
                assert_eq!(attribute(cache, "cache.status").as_deref(), Some("HIT-L2"));
                let hmget = trace.one("HMGET");
                assert!(trace.descends(hmget, cache));
                assert_eq!(attribute(hmget, "db.system.name").as_deref(), Some("redis"));
                assert!(trace.named("SELECT merchants").is_empty());
            }
            "trace-read-2" => {
                assert_eq!(attribute(cache, "cache.status").as_deref(), Some("MISS"));
                let select = trace.one("SELECT merchants");
                assert!(trace.descends(select, cache));
                assert_eq!(select["kind"], SPAN_KIND_CLIENT);
            }
            other => panic!("unexpected request {other}"),
        }
        for span in trace
            .by_id
            .values()
            .filter(|s| s["spanId"] != server["spanId"])
        {
            assert_eq!(attribute(span, "request_id"), Some(request_id.clone()));
            assert_ne!(span["status"]["code"], STATUS_ERROR, "{span}");
        }
    }
}
