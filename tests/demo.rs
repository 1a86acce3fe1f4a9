//! `kybctl demo` end to end, as a user runs it (scaled down so it fits a test): throwaway PostgreSQL and
//! Redis, migrations, indexes, the service as its own process, seed data, a load test and the SLO gate.

use std::process::Command;

#[test]
fn demo_runs_the_whole_loop_and_exits_with_the_gates_code() {
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--users",
            "20",
            "--duration",
            "3s",
            "--ramp-up",
            "1s",
            "--rate",
            "200",
            "--merchants",
            "50",
            "--out",
        ])
        .arg(&result)
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let code = out.status.code().expect("exited, not killed");
    assert!([0, 1, 3].contains(&code), "exit {code}\n{stdout}\n{stderr}");
    assert!(stderr.contains("seeded 50 merchants"), "{stderr}");
    for row in [
        "classify",
        "merchant_read",
        "cache hit rate",
        "p95<500ms",
        "throughput>10000rpm",
    ] {
        assert!(stdout.contains(row), "no `{row}` in\n{stdout}");
    }
    // 200 requests/s is 12,000 per minute, so the throughput KPI (10,000/min) is judged on real traffic.
    let parsed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert!(
        parsed["requests"]["total"].as_u64().unwrap() > 300,
        "{parsed}"
    );

    // The exit code is the gate's: `slo check` on the same result with the same (default) KPIs agrees.
    let gate = Command::new(env!("CARGO_BIN_EXE_kybctl"))
        .args(["slo", "check", "--result"])
        .arg(&result)
        .output()
        .unwrap();
    assert_eq!(
        gate.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&gate.stdout)
    );

    // Everything it started is gone: the service's working directory (and its log) was removed.
    let log = stderr
        .split("(log: ")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("the demo names the service log");
    let workdir = std::path::Path::new(log).parent().unwrap();
    assert!(!workdir.exists(), "{} was left behind", workdir.display());
}
