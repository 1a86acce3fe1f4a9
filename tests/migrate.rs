//! `kybctl migrate up|down|status|lint` against a real PostgreSQL: concurrent runners, tampered
//! checksums, round trips, lint rules, the unsafe-migration guard and the lock timeout.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kybctl::schema::lint::Rule;
use kybctl::schema::migrate::{self, MigrateError, RunOptions, MIGRATOR};
use sqlx::migrate::Migrator;

fn fresh_db() -> String {
    let pg = common::pg();
    let name = common::unique("t");
    pg.create_database(&name).unwrap();
    pg.url(&name)
}

fn up_versions() -> Vec<i64> {
    MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect()
}

fn opts(allow_unsafe: bool) -> RunOptions {
    RunOptions {
        allow_unsafe,
        ..RunOptions::default()
    }
}

#[test]
fn concurrent_up_from_four_processes_applies_each_migration_once() {
    let url = fresh_db();
    let children: Vec<_> = (0..4)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_kybctl"))
                .args(["migrate", "up", "--database-url", &url])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let mut all = String::new();
    for out in &outputs {
        let (stdout, stderr) = common::text(out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("schema at version"), "{stdout}");
        all.push_str(&stdout);
    }
    for v in up_versions() {
        let applied = all
            .lines()
            .filter(|l| l.starts_with(&format!("shard default: applied {v} ")))
            .count();
        assert_eq!(
            applied, 1,
            "migration {v} reported applied {applied} times:\n{all}"
        );
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let rows: Vec<(i64, bool)> = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query_as("SELECT version, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&pool)
            .await
            .unwrap()
    });
    assert_eq!(
        rows,
        up_versions()
            .into_iter()
            .map(|v| (v, true))
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn status_shows_applied_and_names_a_tampered_checksum() {
    let url = common::migrated_db().await;
    let out = common::kybctl(&["migrate", "status", "--database-url", &url, "-o", "json"]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let migrations = json[0]["migrations"].as_array().unwrap();
    assert_eq!(json[0]["shard"], "default");
    assert_eq!(migrations.len(), up_versions().len());
    for m in migrations {
        assert_eq!(m["state"], "applied", "{m}");
        assert_eq!(m["checksum_mismatch"], false);
        assert_eq!(m["checksum"].as_str().unwrap().len(), 16);
    }

    let tampered = up_versions()[0];
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00ff'::bytea WHERE version = $1")
        .bind(tampered)
        .execute(&pool)
        .await
        .unwrap();
    let out = common::kybctl(&["migrate", "status", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains(&format!(
            "migration {tampered} was modified after it was applied"
        )),
        "{stderr}"
    );
    assert!(
        stdout.contains("applied") && stdout.contains("VERSION"),
        "{stdout}"
    );
    let out = common::kybctl(&["migrate", "status", "--database-url", &url, "-o", "yaml"]);
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    let first = &yaml[0]["migrations"][0];
    assert_eq!(first["version"].as_i64(), Some(tampered));
    assert_eq!(first["checksum_mismatch"].as_bool(), Some(true));
    // And `up` refuses to go on over a modified migration: a failed check.
    let out = common::kybctl(&["migrate", "up", "--database-url", &url]);
    assert_eq!(out.status.code(), Some(1), "{:?}", common::text(&out));
}

#[tokio::test]
async fn down_then_up_round_trips() {
    let url = common::migrated_db().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let versions = up_versions();
    let newest = *versions.last().unwrap();

    let out = common::kybctl(&["migrate", "down", "--dry-run", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("would revert {newest} ")),
        "{stdout}"
    );
    assert_eq!(migrate::applied_version(&pool).await.unwrap(), Some(newest));

    let out = common::kybctl(&[
        "migrate",
        "down",
        "--steps",
        &versions.len().to_string(),
        "--database-url",
        &url,
    ]);
    let (stdout, stderr) = common::text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for v in &versions {
        assert!(stdout.contains(&format!("reverted {v} ")), "{stdout}");
    }
    let merchants: Option<String> = sqlx::query_scalar("SELECT to_regclass('merchants')::text")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(merchants, None, "the schema's tables are gone");

    let out = common::kybctl(&["migrate", "up", "--dry-run", "--database-url", &url]);
    let (stdout, _) = common::text(&out);
    assert!(out.status.success());
    for v in &versions {
        assert!(stdout.contains(&format!("would apply {v} ")), "{stdout}");
    }
    assert_eq!(migrate::applied_version(&pool).await.unwrap(), None);

    let out = common::kybctl(&["migrate", "up", "--database-url", &url]);
    assert!(out.status.success(), "{:?}", common::text(&out));
    let out = common::kybctl(&["migrate", "status", "--database-url", &url, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    let codes: i64 = sqlx::query_scalar("SELECT count(*) FROM industry_codes")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(codes > 1000, "reference data refreshed after up");
}

/// One unsafe example per rule, each in a file of its own.
const UNSAFE: &[(&str, Rule)] = &[
    (
        "CREATE INDEX idx_m_name ON merchants (name);",
        Rule::CreateIndexNotConcurrently,
    ),
    (
        "ALTER TABLE merchants ADD COLUMN tier text NOT NULL;",
        Rule::AddColumnNotNullWithoutDefault,
    ),
    (
        "ALTER TABLE merchants ALTER COLUMN name TYPE varchar(500);",
        Rule::AlterColumnType,
    ),
    (
        "ALTER TABLE merchants DROP COLUMN website;",
        Rule::DropColumnStillRead,
    ),
    (
        "ALTER TABLE classifications ADD CONSTRAINT fk_x FOREIGN KEY (business_id) REFERENCES merchants (id);",
        Rule::ConstraintNotValid,
    ),
    (
        "ALTER TABLE merchants ADD CONSTRAINT name_len CHECK (length(name) < 300);",
        Rule::ConstraintNotValid,
    ),
    (
        "CREATE INDEX CONCURRENTLY idx_m_name ON merchants (name);",
        Rule::ConcurrentlyInTransaction,
    ),
    (
        "-- no-transaction\nCREATE INDEX CONCURRENTLY a ON merchants (name);\nCREATE INDEX CONCURRENTLY b ON merchants (website);",
        Rule::NoTransactionMultipleStatements,
    ),
    (
        "ALTER TABLE merchants DROP COLUMN IF EXISTS legacy_unused_column;",
        Rule::BreaksPreviousRelease,
    ),
    (
        "ALTER TABLE merchants RENAME COLUMN website TO homepage;",
        Rule::BreaksPreviousRelease,
    ),
];

const SAFE: &[&str] = &[
    "-- no-transaction\nCREATE INDEX CONCURRENTLY IF NOT EXISTS idx_m_name ON merchants (name);",
    "CREATE TABLE notes (id int PRIMARY KEY, body text);\nCREATE INDEX idx_notes_body ON notes (body);",
    "ALTER TABLE merchants ADD COLUMN tier text NOT NULL DEFAULT 'standard';",
    "-- contract: nothing has read it since the previous release\nALTER TABLE merchants DROP COLUMN IF EXISTS legacy_unused_column;",
    "ALTER TABLE classifications ADD CONSTRAINT fk_x FOREIGN KEY (business_id) REFERENCES merchants (id) NOT VALID;",
];

#[test]
fn lint_catches_each_unsafe_pattern_and_passes_the_projects_migrations() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (sql, rule)) in UNSAFE.iter().enumerate() {
        let f = dir.path().join(format!("unsafe_{i}.sql"));
        std::fs::write(&f, format!("{sql}\n")).unwrap();
        let out = common::kybctl(&["migrate", "lint", f.to_str().unwrap()]);
        let (stdout, stderr) = common::text(&out);
        assert_eq!(out.status.code(), Some(1), "{sql}: {stdout}{stderr}");
        let prefix = format!("{}:", f.display());
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&prefix) && l.contains(&format!(": {}: ", rule.as_str())))
            .unwrap_or_else(|| panic!("{sql}: no {rule} finding in {stdout}"));
        let line_no: usize = line[prefix.len()..]
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(line_no >= 1, "{line}");
    }
    for (i, sql) in SAFE.iter().enumerate() {
        let f = dir.path().join(format!("safe_{i}.sql"));
        std::fs::write(&f, sql).unwrap();
        let out = common::kybctl(&["migrate", "lint", f.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{sql}: {:?}",
            common::text(&out)
        );
        assert!(out.stdout.is_empty());
    }
    let out = common::kybctl(&["migrate", "lint"]);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    let files: Vec<String> = std::fs::read_dir(project)
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["migrate", "lint"];
    args.extend(files.iter().map(String::as_str));
    let out = common::kybctl(&args);
    assert_eq!(out.status.code(), Some(0), "{:?}", common::text(&out));
    let out = common::kybctl(&["migrate", "lint", "/nonexistent/x.sql"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The project's migrations plus `extra` (file name, SQL) in a temporary folder.
async fn migrator_with(extra: &[(&str, &str)]) -> (tempfile::TempDir, Migrator) {
    let dir = tempfile::tempdir().unwrap();
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
    for e in std::fs::read_dir(project).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    for (name, sql) in extra {
        std::fs::write(dir.path().join(name), sql).unwrap();
    }
    let m = Migrator::new(dir.path().to_owned()).await.unwrap();
    (dir, m)
}

#[tokio::test]
async fn up_refuses_a_migration_that_fails_lint_unless_allowed() {
    let url = fresh_db();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (_dir, migrator) = migrator_with(&[
        (
            "20300101000001_name_index.up.sql",
            "CREATE INDEX idx_merchants_name ON merchants (name);\n",
        ),
        (
            "20300101000001_name_index.down.sql",
            "DROP INDEX idx_merchants_name;\n",
        ),
    ])
    .await;
    let err = migrate::up_with(&pool, &migrator, &opts(false))
        .await
        .unwrap_err();
    match &err {
        MigrateError::Unsafe { version, findings } => {
            assert_eq!(*version, 20300101000001);
            assert_eq!(findings[0].rule, Rule::CreateIndexNotConcurrently);
        }
        other => panic!("expected a lint refusal, got {other}"),
    }
    assert_eq!(
        migrate::applied_version(&pool).await.unwrap(),
        None,
        "nothing is applied when one pending migration is unsafe"
    );
    let plan = migrate::plan_up(&pool, &migrator, false).await.unwrap();
    assert_eq!(plan.len(), up_versions().len() + 1);
    assert!(!plan.last().unwrap().findings.is_empty());

    let applied = migrate::up_with(&pool, &migrator, &opts(true))
        .await
        .unwrap();
    assert_eq!(applied.len(), up_versions().len() + 1);
    assert_eq!(
        migrate::applied_version(&pool).await.unwrap(),
        Some(20300101000001)
    );
    assert!(migrate::up_with(&pool, &migrator, &opts(false))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_migration_behind_a_long_lock_fails_fast_then_applies() {
    let url = common::migrated_db().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (_dir, migrator) = migrator_with(&[
        (
            "20300101000002_note.up.sql",
            "ALTER TABLE merchants ADD COLUMN note text;\n",
        ),
        (
            "20300101000002_note.down.sql",
            "ALTER TABLE merchants DROP COLUMN note;\n",
        ),
    ])
    .await;
    // A long reader: ALTER TABLE needs ACCESS EXCLUSIVE and would queue behind it (and every later
    // query on merchants behind the ALTER).
    let mut reader = pool.begin().await.unwrap();
    sqlx::query("SELECT count(*) FROM merchants")
        .execute(&mut *reader)
        .await
        .unwrap();
    let short = RunOptions {
        lock_timeout: Duration::from_millis(300),
        ..opts(false)
    };
    let started = Instant::now();
    let err = migrate::up_with(&pool, &migrator, &short)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.to_string().contains("lock timeout"), "{err}");
    reader.rollback().await.unwrap();
    let applied = migrate::up_with(&pool, &migrator, &short).await.unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].version, 20300101000002);
    // The failed attempt left nothing behind: the session's lock is released, no failed row.
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE NOT success")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 0);
}

/// The upgrade contract (issue 10): the next release's expand step runs while this release serves;
/// this binary stays ready and its `migrate up` succeeds without applying anything; contract steps
/// wait for `--contract`.
#[tokio::test]
async fn expand_runs_ahead_of_the_rollout_and_contract_waits_for_full_promotion() {
    let url = common::migrated_db().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let s = common::Service::start(common::config(&url, None)).await;
    assert_eq!(s.get("/ready").await.status(), reqwest::StatusCode::OK);

    // The next release: an expand step and a contract step.
    let (_dir, next) = migrator_with(&[
        (
            "20300101000003_note.up.sql",
            "ALTER TABLE merchants ADD COLUMN note text;\n",
        ),
        (
            "20300101000004_drop_note.up.sql",
            "-- contract: nothing reads note since the release that stopped writing it\nALTER TABLE merchants DROP COLUMN note;\n",
        ),
    ])
    .await;
    let applied = migrate::up_with(&pool, &next, &opts(false)).await.unwrap();
    let versions: Vec<i64> = applied.iter().map(|s| s.version).collect();
    assert_eq!(
        versions,
        vec![20300101000003],
        "the contract step is held back"
    );
    let held: Vec<i64> = migrate::held_back(&pool, &next)
        .await
        .unwrap()
        .iter()
        .map(|s| s.version)
        .collect();
    assert_eq!(held, vec![20300101000004]);

    // This (now older) release keeps serving and stays ready on the newer schema.
    let r = s.get("/ready").await;
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body.to_string().contains("schema at 20300101000003"),
        "{body}"
    );
    // Its `migrate up` (the binary, as a rollback would run it) succeeds and applies nothing; its
    // `migrate status` reports the newer migration without failing.
    let out = common::kybctl(&["migrate", "up", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("nothing to apply"), "{stdout}");
    let out = common::kybctl(&["migrate", "status", "--database-url", &url]);
    let (stdout, stderr) = common::text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("applied by a newer release"), "{stdout}");

    // After full promotion: the contract step.
    let contract = RunOptions {
        contract: true,
        ..opts(false)
    };
    let applied = migrate::up_with(&pool, &next, &contract).await.unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0].version, 20300101000004);
    let note: Option<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns WHERE table_name = 'merchants' AND column_name = 'note'",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(note, None);
    assert_eq!(s.get("/ready").await.status(), reqwest::StatusCode::OK);
    s.stop().await;
}

/// A migration the binary needs but the database lacks makes it unready, naming the version.
#[tokio::test]
async fn a_missing_migration_makes_the_service_unready() {
    let url = common::migrated_db().await;
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let newest = *up_versions().last().unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();
    let s = common::Service::start(common::config(&url, None)).await;
    let r = s.get("/ready").await;
    assert_eq!(r.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.unwrap();
    assert!(body.contains(&format!("lacks {newest}")), "{body}");
    s.stop().await;
}
