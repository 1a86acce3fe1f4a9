//! A real Prometheus server (Debian package `prometheus`, `/usr/bin/prometheus`) for tests that read metrics
//! the way the operator's rollout analysis does: through the HTTP API (`/api/v1/query`).
//!
//! It runs from a temporary directory (config, TSDB, log) on a free loopback port, scrapes the static
//! targets it was started with every second (job `kyb`, each target with the labels the caller gave), and
//! is tied to the test process like the other local servers (`kybctl::local::spawn_tied`: SIGKILL by
//! `PR_SET_PDEATHSIG` when the process dies; killed and its directory removed on drop). It never uses the
//! package's own service, config or data (`/etc/prometheus`, `/var/lib/prometheus`).
//!
//! Timing to plan tests around: `start` returns once `/-/ready` answers 200 (well under a second), but
//! Prometheus hands static targets to its scrape loops only on its 5 s discovery tick, so the first sample
//! of a target lands about 5-6 s after start ([`TempPrometheus::wait_scraped`] waits for it). Counters
//! that a target already had at its first scrape do not show in `rate()`/`increase()`: send the traffic to
//! be measured after `wait_scraped`, spread over more than one scrape.
//!
//! Include it next to the shared harness:
//!
//! ```ignore
//! mod common;
//! #[path = "common/prometheus.rs"]
//! mod prometheus;
//! ```
#![allow(dead_code)] // each test binary uses a different part

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

/// The `job` label of every target.
pub const JOB: &str = "kyb";
/// How long `start` and `restart` wait for `/-/ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bind races (the port chosen is taken before Prometheus binds it) are retried on a new port.
const START_ATTEMPTS: usize = 3;

pub struct TempPrometheus {
    // Before `dir`: the process is killed (in `drop`) before its directory is removed.
    child: Option<Child>,
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    http: reqwest::Client,
    targets: usize,
    ready_after: Duration,
}

/// Why a query gave no result.
#[derive(Debug)]
pub enum QueryError {
    /// Nothing answered: connection refused (stopped), or no answer within the client's timeouts.
    Unreachable(String),
    /// Prometheus answered with `"status": "error"` (e.g. `bad_data` for a PromQL syntax error).
    Api {
        http_status: u16,
        error_type: String,
        error: String,
    },
    /// An answer that is not the API's JSON, or a result of an unexpected shape.
    Malformed(String),
}

impl QueryError {
    pub fn is_unreachable(&self) -> bool {
        matches!(self, QueryError::Unreachable(_))
    }
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::Unreachable(e) => write!(f, "Prometheus unreachable: {e}"),
            QueryError::Api {
                http_status,
                error_type,
                error,
            } => write!(f, "Prometheus answered {http_status} {error_type}: {error}"),
            QueryError::Malformed(e) => write!(f, "unexpected answer from Prometheus: {e}"),
        }
    }
}

impl std::error::Error for QueryError {}

fn find_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("KYB_PROMETHEUS") {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/bin", "/usr/local/bin"])
        .map(|d| PathBuf::from(d).join("prometheus"))
        .find(|p| p.is_file())
}

/// The scrape config: one static group per target, each with its own labels. Written as JSON, which
/// Prometheus's YAML parser reads as it is.
fn config(targets: &[(&str, &[(&str, &str)])]) -> Value {
    let groups: Vec<Value> = targets
        .iter()
        .map(|(target, labels)| {
            let labels: Map<String, Value> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Value::from(*v)))
                .collect();
            json!({"targets": [target], "labels": labels})
        })
        .collect();
    json!({
        // scrape_timeout may not exceed scrape_interval (its default is 10 s).
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": JOB, "metrics_path": "/metrics", "static_configs": groups}],
    })
}

impl TempPrometheus {
    pub fn installed() -> bool {
        find_bin().is_some()
    }

    /// Starts Prometheus scraping `targets` (`host:port`, each with extra labels, e.g.
    /// `("127.0.0.1:8080", &[("revision", "canary"), ("service", "kyb")])`) and returns once `/-/ready`
    /// answers 200. Panics, with the last log lines, when it is not installed or not ready within 30 s.
    pub fn start(targets: &[(&str, &[(&str, &str)])]) -> TempPrometheus {
        Self::start_with_rules(targets, None)
    }

    /// [`Self::start`], evaluating the rule file `rules` (YAML, `groups:`) too.
    pub fn start_with_rules(
        targets: &[(&str, &[(&str, &str)])],
        rules: Option<&str>,
    ) -> TempPrometheus {
        let bin = find_bin().unwrap_or_else(|| {
            panic!(
                "the tests need Prometheus: install it (Debian: apt-get install --no-install-recommends \
                 prometheus; tests/run does) or set KYB_PROMETHEUS"
            )
        });
        let dir = kybctl::local::owned_temp_dir("kyb-prometheus-").expect("temporary directory");
        let mut cfg = config(targets);
        if let Some(rules) = rules {
            std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules.yml");
            cfg["rule_files"] = json!([dir.path().join("rules.yml")]);
        }
        let cfg = serde_json::to_string_pretty(&cfg).unwrap();
        std::fs::write(dir.path().join("prometheus.yml"), cfg).expect("write prometheus.yml");
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut p = TempPrometheus {
            child: None,
            dir,
            bin,
            port: 0,
            http,
            targets: targets.len(),
            ready_after: Duration::ZERO,
        };
        for attempt in 1..=START_ATTEMPTS {
            p.port = kybctl::local::free_port().expect("a free loopback port");
            match p.launch() {
                Ok(()) => return p,
                Err(log) if attempt < START_ATTEMPTS && log.contains("address already in use") => {}
                Err(log) => panic!("{log}"),
            }
        }
        unreachable!()
    }

    /// Spawns the server on `self.port` with the directory's config and data and waits for `/-/ready`.
    /// Err carries the panic message (with the log tail) when it exits or is not ready in time.
    fn launch(&mut self) -> Result<(), String> {
        self.stop();
        let dir = self.dir.path();
        let log_path = dir.join("prometheus.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open prometheus.log");
        let mut cmd = Command::new(&self.bin);
        cmd.arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{}", self.port))
        .arg("--storage.tsdb.retention.time=1h")
        // Into the log file only; info is a few dozen lines per start and names config errors.
        .arg("--log.level=info")
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
        let started = Instant::now();
        let mut child = kybctl::local::spawn_tied(cmd, None, libc::SIGKILL)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        loop {
            if http_status(addr, "/-/ready") == Some(200) {
                self.ready_after = started.elapsed();
                self.child = Some(child);
                return Ok(());
            }
            let exited = child.try_wait().ok().flatten();
            if exited.is_some() || started.elapsed() > READY_TIMEOUT {
                kybctl::local::stop(&mut child, libc::SIGKILL);
                let why = match exited {
                    Some(status) => format!("exited ({status})"),
                    None => format!("did not answer 200 on /-/ready within {READY_TIMEOUT:?}"),
                };
                return Err(format!(
                    "prometheus on 127.0.0.1:{} {why}; last lines of {}:\n{}",
                    self.port,
                    log_path.display(),
                    kybctl::local::tail(&log_path, 30)
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// From spawning the process to `/-/ready` answering 200, for the last start or restart.
    pub fn ready_after(&self) -> Duration {
        self.ready_after
    }

    /// The server's log (`--log.level=info`), for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        kybctl::local::tail(&self.dir.path().join("prometheus.log"), lines)
    }

    /// Kills the server (SIGKILL, as a crashed or evicted Prometheus); queries then fail at once with
    /// connection refused. A no-op when it is not running.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kybctl::local::stop(&mut c, libc::SIGKILL);
        }
    }

    /// Starts it again on the same port with the same config and data (the samples scraped before the
    /// stop are replayed from the TSDB write-ahead log). Panics when it does not become ready.
    pub fn restart(&mut self) {
        if let Err(log) = self.launch() {
            panic!("{log}");
        }
    }

    /// An instant query (`/api/v1/query`, evaluated now): the API's `data`, i.e.
    /// `{"resultType": "vector", "result": [{"metric": {..}, "value": [ts, "1"]}, ..]}`.
    pub async fn query(&self, promql: &str) -> Result<Value, QueryError> {
        self.api("/api/v1/query", &[("query", promql)]).await
    }

    /// The value of a query that yields one number: a scalar, or a vector of at most one series (e.g. a
    /// `sum(..)`). None for an empty vector (no such series yet, or a division by an absent series); an
    /// error for more than one series. NaN (e.g. 0/0) is returned as NaN.
    pub async fn value(&self, promql: &str) -> Result<Option<f64>, QueryError> {
        let data = self.query(promql).await?;
        let malformed = || QueryError::Malformed(format!("{promql}: {data}"));
        let sample = match data["resultType"].as_str() {
            Some("scalar") => &data["result"],
            Some("vector") => {
                let series = data["result"].as_array().ok_or_else(malformed)?;
                match series.as_slice() {
                    [] => return Ok(None),
                    [one] => &one["value"],
                    _ => {
                        return Err(QueryError::Malformed(format!(
                            "{promql}: expected at most one series, got {}: {data}",
                            series.len()
                        )))
                    }
                }
            }
            _ => return Err(malformed()),
        };
        let text = sample[1].as_str().ok_or_else(malformed)?;
        text.parse::<f64>().map(Some).map_err(|_| malformed())
    }

    /// `/api/v1/targets`: each active target's labels, health, last error and last scrape, for failure
    /// messages.
    /// `/api/v1/alerts`: the alerts pending or firing now.
    pub async fn alerts(&self) -> Result<Value, QueryError> {
        self.api("/api/v1/alerts", &[]).await
    }

    /// `/api/v1/targets/metadata` of this Prometheus's job: each family's type and help as scraped.
    pub async fn metadata(&self) -> Result<Value, QueryError> {
        let target = format!(r#"{{job="{JOB}"}}"#);
        self.api("/api/v1/targets/metadata", &[("match_target", &target)])
            .await
    }

    pub async fn targets(&self) -> Result<Value, QueryError> {
        self.api("/api/v1/targets", &[("state", "active")]).await
    }

    /// Waits until every target has been scraped at least once (has an `up` sample, whether 1 or 0) and
    /// returns the time it took; panics with the targets' state after `timeout`. Prometheus starts
    /// scraping static targets on its 5 s discovery tick, so this is about 5-6 s after start.
    pub async fn wait_scraped(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        let want = self.targets as f64;
        let query = format!(r#"count(up{{job="{JOB}"}})"#);
        loop {
            if let Ok(Some(n)) = self.value(&query).await {
                if n >= want {
                    return start.elapsed();
                }
            }
            if start.elapsed() > timeout {
                let targets = self.targets().await;
                panic!(
                    "Prometheus did not scrape all {want} targets within {timeout:?}; targets: \
                     {targets:?}\nlog:\n{}",
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, QueryError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.url()))
            .query(params)
            .send()
            .await
            .map_err(|e| QueryError::Unreachable(error_chain(&e)))?;
        let http_status = resp.status().as_u16();
        let body = resp
            .text()
            .await
            .map_err(|e| QueryError::Unreachable(error_chain(&e)))?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|_| QueryError::Malformed(format!("{http_status}: {body}")))?;
        match v["status"].as_str() {
            Some("success") => Ok(v["data"].clone()),
            Some("error") => Err(QueryError::Api {
                http_status,
                error_type: v["errorType"].as_str().unwrap_or_default().to_owned(),
                error: v["error"].as_str().unwrap_or_default().to_owned(),
            }),
            _ => Err(QueryError::Malformed(format!("{http_status}: {body}"))),
        }
    }
}

impl Drop for TempPrometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// reqwest's message with its sources ("error sending request ...: ... Connection refused (os error 111)").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// The status code of `GET path` over plain HTTP/1.0; None when nothing answers within a second. Blocking
/// on purpose: `start` is called from sync and async tests alike (a blocking reqwest client may not be
/// created or dropped inside a Tokio runtime).
fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut head = [0u8; 32];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    // "HTTP/1.0 200 OK"
    std::str::from_utf8(&head[..n])
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
