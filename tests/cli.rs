//! The `kybctl` binary as users run it: `migrate up`, `serve` with flags and environment, logs and exit
//! codes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn kybctl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kybctl"))
}

/// Whether `ok` holds within ten seconds, asked every 100 ms (a `kybctl serve` coming up).
fn within_10s(mut ok: impl FnMut() -> bool) -> bool {
    (0..100).any(|_| {
        let done = ok();
        if !done {
            std::thread::sleep(Duration::from_millis(100));
        }
        done
    })
}

/// Stops a `kybctl serve` as Kubernetes does (SIGTERM) and returns its exit status and its stderr's
/// lines (piped when spawned).
fn stop(mut child: std::process::Child) -> (std::process::ExitStatus, Vec<String>) {
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let lines = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    (child.wait().unwrap(), lines)
}

#[test]
fn migrate_up_is_idempotent_and_reports() {
    let pg = common::pg();
    let name = common::unique("t");
    pg.create_database(&name).unwrap();
    for _ in 0..2 {
        let out = kybctl()
            .args(["migrate", "up", "--database-url", &pg.url(&name)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("schema at version"));
    }
}

#[test]
fn unreachable_database_is_a_clear_usage_error() {
    let port = kybctl::local::free_port().unwrap();
    let out = kybctl()
        .args([
            "migrate",
            "up",
            "--database-url",
            &format!("postgres://u:hunter2@127.0.0.1:{port}/x"),
        ])
        .env("KYB_LOG_FORMAT", "human")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot reach PostgreSQL at 127.0.0.1:{port} (shard default)"
        )),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "credentials leaked: {err}");
}

#[test]
fn bad_config_file_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.yaml");
    std::fs::write(&f, "databse: {}\n").unwrap();
    let out = kybctl()
        .args(["serve", "--config"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("databse"));
}

/// Secure by default: no authentication configured is a refusal to start, saying what to do.
#[test]
fn serve_without_authentication_refuses_to_start() {
    let out = kybctl()
        .args(["serve", "--database-url", "postgres://u@127.0.0.1:1/x"])
        .env_remove("KYB_INSECURE_NO_AUTH")
        .env_remove("KYB_API_KEYS_FILES")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no authentication configured") && err.contains("--insecure-no-auth"),
        "{err}"
    );
}

/// `--insecure-no-auth` is taken, and said at warning level where any log collector sees it.
#[test]
fn serve_with_insecure_no_auth_says_so_loudly() {
    let pg = common::pg();
    let name = common::unique("t");
    pg.create_database(&name).unwrap();
    assert!(kybctl()
        .args(["migrate", "up", "--database-url", &pg.url(&name)])
        .status()
        .unwrap()
        .success());
    let port = kybctl::local::free_port().unwrap();
    let child = kybctl()
        .args([
            "serve",
            "--insecure-no-auth",
            "--database-url",
            &pg.url(&name),
        ])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{}", kybctl::local::free_port().unwrap()),
        ])
        .env_remove("KYB_API_KEYS_FILES")
        .env("KYB_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let client = reqwest::blocking::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/reports/industries");
    let served = within_10s(|| {
        client
            .get(&url)
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    let (_, lines) = stop(child);
    assert!(served, "no credentials needed: {lines:?}");
    let warning = lines
        .iter()
        .find(|l| l.contains("AUTHENTICATION IS OFF"))
        .unwrap_or_else(|| panic!("no warning in {lines:?}"));
    assert!(warning.contains("\"level\":\"WARN\""), "{warning}");
}

/// At the default log level (`RUST_LOG` unset) a request makes no span and a success writes nothing,
/// and a request the server fails is one line naming it: id, method, route, status, cause. The
/// failure here is the database's: the service starts without it and answers what needs it with 503.
#[test]
fn serve_logs_each_failed_request_once_with_its_id_at_the_default_level() {
    let port = kybctl::local::free_port().unwrap();
    let dead = kybctl::local::free_port().unwrap();
    let child = kybctl()
        .args(["serve", "--insecure-no-auth", "--database-url"])
        .arg(format!("postgres://kyb@127.0.0.1:{dead}/kyb"))
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args([
            "--metrics-listen",
            &format!("127.0.0.1:{}", kybctl::local::free_port().unwrap()),
        ])
        .env_remove("KYB_API_KEYS_FILES")
        .env_remove("RUST_LOG")
        .env("KYB_LOG_FORMAT", "json")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let get = |path: &str, id: &str| {
        client
            .get(format!("{base}{path}"))
            .header("x-request-id", id)
            .send()
            .map(|r| r.status().as_u16())
    };
    let up = within_10s(|| get("/health", "req-wait").is_ok_and(|s| s == 200));
    let quiet = get("/health", "req-quiet");
    let failed = get(
        "/v1/merchants/00000000-0000-4000-8000-000000000001",
        "req-down",
    );
    let (_, lines) = stop(child);
    assert!(up, "service did not answer /health: {lines:?}");
    assert_eq!(quiet.ok(), Some(200));
    assert_eq!(failed.ok(), Some(503), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("req-quiet")),
        "a success is logged at the default level: {lines:?}"
    );
    let logged: Vec<serde_json::Value> = lines
        .iter()
        .filter(|l| l.contains("req-down"))
        .map(|l| serde_json::from_str(l).expect("JSON log lines"))
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "one line for the failed request: {lines:?}"
    );
    let line = &logged[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["message"], "request failed", "{line}");
    assert_eq!(line["request_id"], "req-down", "{line}");
    assert_eq!(line["method"], "GET", "{line}");
    assert_eq!(line["route"], "/v1/merchants/{id}", "{line}");
    assert_eq!(line["status"], 503, "{line}");
    assert_eq!(line["problem"], "unavailable", "{line}");
    let cause = line["cause"].as_str().unwrap_or_default();
    // sqlx's refused connection, or the pool's own verdict once its probe has run.
    assert!(
        cause.contains("database") || cause.contains(&format!("127.0.0.1:{dead}")),
        "the cause names what was down: {line}"
    );
    assert!(
        line.get("span").is_none(),
        "a request span at the default level: {line}"
    );
}

#[test]
fn serve_from_env_logs_request_ids_hides_secrets_and_stops_on_sigterm() {
    let pg = common::pg();
    let name = common::unique("t");
    pg.create_database(&name).unwrap();
    // Trust authentication ignores the password, so it can be a marker that must never be printed.
    let url = pg.url(&name).replace("postgres@", "postgres:pw-marker-93@");
    assert!(kybctl()
        .args(["migrate", "up", "--database-url", &url])
        .status()
        .unwrap()
        .success());
    let port = kybctl::local::free_port().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("redis-url");
    std::fs::write(&secret_file, format!("{}\n", common::redis().url())).unwrap();
    // An API key made as a user would: the key to a 0600 file, its hashed entry to the key file.
    let key_file = dir.path().join("client.key");
    let made = kybctl()
        .args([
            "auth",
            "new-key",
            "--client",
            "cli-test",
            "--scope",
            "merchants:read",
            "--key-out",
        ])
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let entry = String::from_utf8(made.stdout).unwrap();
    let key = std::fs::read_to_string(&key_file)
        .unwrap()
        .trim()
        .to_owned();
    assert!(!entry.contains(&key), "new-key printed the key itself");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys_file = dir.path().join("keys.yaml");
    std::fs::write(&keys_file, &entry).unwrap();
    let metrics_port = kybctl::local::free_port().unwrap();
    let child = kybctl()
        .arg("serve")
        .env("KYB_LISTEN", format!("127.0.0.1:{port}"))
        .env("KYB_METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("KYB_API_KEYS_FILES", &keys_file)
        .env("KYB_DATABASE_URL", &url)
        .env("KYB_REDIS_URL_FILE", &secret_file)
        .env("KYB_LOG_FORMAT", "json")
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let up = within_10s(|| {
        client
            .get(format!("{base}/ready"))
            .send()
            .is_ok_and(|r| r.status().is_success())
    });
    assert!(up, "service did not become ready");
    let classify = |key: Option<&str>| {
        let mut req = client
            .post(format!("{base}/v1/classifications"))
            .header("x-request-id", "req-abc-123")
            .json(&serde_json::json!({"name": "Log Test Bakery"}));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        req.send().unwrap()
    };
    assert_eq!(classify(None).status(), 401);
    let r = classify(Some(&key));
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-abc-123");
    // Metrics on their own port only.
    assert_eq!(
        client
            .get(format!("{base}/metrics"))
            .send()
            .unwrap()
            .status(),
        404
    );
    let metrics = client
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let (status, lines) = stop(child);
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    let all = lines.join("\n");
    assert!(!all.contains("pw-marker-93"), "password logged");
    assert!(!all.contains(&key), "API key logged");
    let request_lines: Vec<&String> = lines.iter().filter(|l| l.contains("req-abc-123")).collect();
    assert!(
        !request_lines.is_empty(),
        "no log line carries the request id:\n{all}"
    );
    for l in &request_lines {
        serde_json::from_str::<serde_json::Value>(l).expect("JSON log lines");
    }
}

#[test]
fn completions_cover_every_subcommand_and_bad_shells_are_usage_errors() {
    for shell in ["bash", "zsh", "fish"] {
        let out = kybctl().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "completions {shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        for sub in ["serve", "migrate", "db", "demo", "operator", "slo"] {
            assert!(script.contains(sub), "{shell} completions lack `{sub}`");
        }
    }
    let out = kybctl().args(["completions", "cmd.exe"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value 'cmd.exe'"));
}

/// `kybctl operator` against an apiserver that accepts connections and never answers (gone away
/// behind a load balancer): SIGTERM still stops it within seconds, elected or not.
#[test]
fn operator_stops_promptly_on_sigterm_with_its_apiserver_gone() {
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hole.local_addr().unwrap().port();
    std::thread::spawn(move || {
        // Held open, never read: every request hangs.
        let held: Vec<_> = hole.incoming().collect();
        drop(held);
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'https://127.0.0.1:{port}', insecure-skip-tls-verify: true}}}}]\nusers: [{{name: u, user: {{token: t}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    for elect in ["true", "false"] {
        let listen = format!("127.0.0.1:{}", kybctl::local::free_port().unwrap());
        let mut child = kybctl()
            .args([
                "operator",
                "--listen",
                &listen,
                "--lease-namespace",
                "default",
            ])
            .arg(format!("--leader-elect={elect}"))
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("POD_NAMESPACE")
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(3));
        assert!(
            child.try_wait().unwrap().is_none(),
            "it keeps trying meanwhile"
        );
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let asked = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if asked.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let took = asked.elapsed();
        assert!(
            status.is_some(),
            "leader-elect={elect}: still running 20 s after SIGTERM"
        );
        assert!(
            took < Duration::from_secs(8),
            "leader-elect={elect}: stopped after {took:?}"
        );
    }
}

/// The two ways to build the image make the same layout: the Dockerfile's final stage and
/// `tests/cluster/kybctl-image` (which the real-node tests run) put the binary at the same path, run
/// it as the same numeric user, and the operator's pods check for a non-root user of that kind.
#[test]
fn the_dockerfile_and_the_engineless_image_agree() {
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    let script = std::fs::read_to_string(format!("{root}/tests/cluster/kybctl-image")).unwrap();
    let final_stage = dockerfile.rsplit("\nFROM ").next().unwrap();
    assert!(
        final_stage.starts_with("gcr.io/distroless/"),
        "{final_stage}"
    );
    assert!(
        final_stage.contains("\nUSER 65532:65532\n"),
        "{final_stage}"
    );
    assert!(
        final_stage.contains(r#"ENTRYPOINT ["/usr/local/bin/kybctl"]"#),
        "{final_stage}"
    );
    assert!(
        script.contains("--entrypoint /usr/local/bin/kybctl --user 65532:65532"),
        "{script}"
    );
    assert!(script.contains("=/usr/local/bin/kybctl"), "{script}");
}
