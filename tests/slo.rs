//! `kybctl slo check` as CI runs it: crafted result files in a temporary directory, exit codes, the JUnit
//! and JSON reports.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{json, Value};

/// A run of 20,000 requests: p95 300 ms, 0.05% errors, 200 rps (12,000 rpm) of 200 requested, 97% cache
/// hits; 5,000 `classify` requests with p95 150 ms.
fn result() -> Value {
    let summary = |count: u64, p95_us: f64| {
        json!({"count": count, "p50": p95_us / 3.0, "p90": p95_us * 0.8, "p95": p95_us,
               "p99": p95_us * 2.0, "p99.9": p95_us * 4.0, "max": p95_us * 8.0})
    };
    json!({
        "version": 1,
        "started_at": "2026-11-29T03:00:00Z",
        "duration_seconds": 100.0,
        "requests": {"total": 20000, "errors": 10, "by_status": {"200": 19990, "503": 10}},
        "throughput_rps": 200.0,
        "cache": {"hits": 19400, "lookups": 20000},
        "latency_us": {
            "overall": summary(20000, 300_000.0),
            "by_type": {"classify": summary(5000, 150_000.0)}
        },
        "generator": {"requested_rps": 200.0, "achieved_rps": 200.0, "saturated": false}
    })
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
    path
}

fn slo_check(result: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(["slo", "check", "--result"])
        .arg(result)
        .args(args)
        .env_remove("NO_COLOR")
        .output()
        .unwrap()
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited normally")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn defaults_pass_with_exit_0() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(dir.path(), "result.json", &result());
    let out = slo_check(&r, &[]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    for default in [
        "p95<500ms",
        "error_rate<0.1%",
        "throughput>10000rpm",
        "cache_hit_rate>95%",
    ] {
        assert!(table.contains(default), "{table}");
    }
    assert!(
        !table.contains('\u{1b}'),
        "colors when stdout is not a terminal: {table}"
    );
    assert!(
        table.contains("SLO check: PASS (4 passed, 0 failed, 0 inconclusive)"),
        "{table}"
    );
}

#[test]
fn a_failed_threshold_exits_1_and_is_a_junit_failure() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(dir.path(), "result.json", &result());
    let junit = dir.path().join("slo.xml");
    let markdown = dir.path().join("summary.md");
    let out = slo_check(
        &r,
        &[
            "--threshold",
            "p95<300ms",
            "--threshold",
            "classify:p95<=150ms",
            "--threshold",
            "p99.9<2s",
            "--junit",
            junit.to_str().unwrap(),
            "--markdown",
            markdown.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains(r#"<testsuite name="kybctl-slo" tests="3" failures="1""#),
        "{xml}"
    );
    assert_eq!(xml.matches("<testcase ").count(), 3, "{xml}");
    assert_eq!(xml.matches("<failure ").count(), 1, "{xml}");
    assert!(
        xml.contains(r#"name="p95&lt;300ms">"#) && xml.contains("p95 is 300ms, expected &lt;300ms"),
        "{xml}"
    );
    let md = std::fs::read_to_string(&markdown).unwrap();
    assert!(
        md.contains("| classify:p95&lt;=150ms | classify | 150ms |"),
        "{md}"
    );
}

#[test]
fn too_few_samples_exit_3_and_are_skipped_in_junit() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = result();
    v["latency_us"]["overall"]["count"] = json!(5000);
    let r = write(dir.path(), "result.json", &v);
    let junit = dir.path().join("slo.xml");
    let out = slo_check(
        &r,
        &[
            "--threshold",
            "p99.9<2s",
            "--threshold",
            "p95<1s",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("<skipped message=") && xml.contains("needs at least 10000 samples"),
        "{xml}"
    );
    assert!(!xml.contains("<failure"), "{xml}");
}

#[test]
fn a_saturated_generator_makes_throughput_inconclusive() {
    let dir = tempfile::tempdir().unwrap();
    let mut v = result();
    v["generator"]["saturated"] = json!(true);
    let r = write(dir.path(), "result.json", &v);
    let out = slo_check(&r, &["--threshold", "throughput>100rps", "-o", "json"]);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["checks"][0]["outcome"], "inconclusive");
    assert_eq!(
        report["checks"][0]["detail"],
        "the load generator was saturated"
    );
}

#[test]
fn json_report_fields() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(dir.path(), "result.json", &result());
    let out = slo_check(&r, &["--threshold", "error_rate<0.1%", "-o", "json"]);
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "pass");
    assert_eq!(
        (report["passed"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0))
    );
    let c = &report["checks"][0];
    assert_eq!(c["name"], "error_rate<0.1%");
    assert_eq!(c["kind"], "threshold");
    assert_eq!(c["scope"], "overall");
    assert_eq!(c["metric"], "error_rate");
    assert_eq!(c["unit"], "%");
    assert_eq!(c["op"], "<");
    assert_eq!(c["measured"], 0.05);
    assert_eq!(c["limit"], 0.1);
    assert_eq!(c["outcome"], "pass");
    assert_eq!(c["detail"], "");
}

#[test]
fn baseline_regression_fails_as_an_extra_row() {
    let dir = tempfile::tempdir().unwrap();
    let mut base = result();
    base["latency_us"]["overall"]["p95"] = json!(250_000.0);
    let baseline = write(dir.path(), "baseline.json", &base);
    let r = write(dir.path(), "result.json", &result());
    let out = slo_check(
        &r,
        &[
            "--threshold",
            "p95<500ms",
            "--baseline",
            baseline.to_str().unwrap(),
            "-o",
            "yaml",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let report: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let checks = report["checks"].as_sequence().unwrap();
    assert_eq!(checks.len(), 2);
    assert_eq!(checks[0]["outcome"].as_str(), Some("pass"));
    assert_eq!(checks[1]["name"].as_str(), Some("p95 vs baseline"));
    assert_eq!(checks[1]["outcome"].as_str(), Some("fail"));

    let out = slo_check(
        &r,
        &[
            "--threshold",
            "p95<500ms",
            "--baseline",
            baseline.to_str().unwrap(),
            "--tolerance",
            "25%",
        ],
    );
    assert_eq!(code(&out), 0, "{}", stderr(&out));
}

#[test]
fn thresholds_file_adds_to_flags() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(dir.path(), "result.json", &result());
    let file = dir.path().join("slos.yaml");
    std::fs::write(
        &file,
        "slos:\n  - classify:p99<1s\n  - cache_hit_rate>0.99\n",
    )
    .unwrap();
    let out = slo_check(
        &r,
        &[
            "--threshold",
            "p50<1s",
            "--thresholds-file",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(
        names,
        [
            json!("p50<1s"),
            json!("classify:p99<1s"),
            json!("cache_hit_rate>0.99")
        ]
    );
}

#[test]
fn usage_errors_exit_2_naming_target_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let r = write(dir.path(), "result.json", &result());

    let out = slo_check(&r, &["--threshold", "p97<500ms"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("invalid threshold `p97<500ms`: percentile p97 is not recorded"),
        "{}",
        stderr(&out)
    );

    let out = slo_check(&r, &["--threshold", "p95<500"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("`p95<500`: a latency needs a unit"),
        "{}",
        stderr(&out)
    );

    let missing = dir.path().join("out.json");
    let out = slo_check(&missing, &[]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot read result file {}: No such file or directory",
            missing.display()
        )),
        "{err}"
    );

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 1, ").unwrap();
    let out = slo_check(&bad, &[]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains(&format!("invalid result file {}", bad.display())),
        "{}",
        stderr(&out)
    );

    let out = slo_check(&r, &["--baseline", "/nonexistent/base.json"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("cannot read baseline file /nonexistent/base.json"),
        "{}",
        stderr(&out)
    );

    let file = dir.path().join("slos.yaml");
    std::fs::write(&file, "p95: 500ms\n").unwrap();
    let out = slo_check(&r, &["--thresholds-file", file.to_str().unwrap()]);
    assert_eq!(code(&out), 2);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "invalid thresholds file {}: expected a YAML list",
            file.display()
        )),
        "{err}"
    );

    let out = slo_check(&r, &["--tolerance", "lots"]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("invalid tolerance `lots`"),
        "{}",
        stderr(&out)
    );
}
