//! `kybctl migrate up|down|status|lint`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use sqlx::migrate::{Migration, MigrationType};

use super::exit;
use super::output::{self, Format};
use super::shard_report::{self, ShardReport};
use crate::config::Overrides;
use crate::schema::lint::{self, QueryCorpus};
use crate::schema::migrate::{self, embedded, MigrateError, MigrationStatus, RunOptions, Step};
use crate::schema::reference;
use crate::service::db::ShardPools;

#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Apply every pending expand migration on every shard (safe to run from several processes at
    /// once). Contract steps (`-- contract`) wait for `--contract`.
    Up {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        run: RunArgs,
        /// Apply migrations even when `migrate lint` flags them.
        #[arg(long)]
        allow_unsafe: bool,
        /// Print what would be applied on each shard (with lint findings) and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Apply contract steps too: migrations that drop or rename what the previous release read.
        /// Only once every instance runs this release (the operator runs it after a rollout has fully
        /// promoted).
        #[arg(long)]
        contract: bool,
    },
    /// Revert the newest applied migrations on every shard (their .down.sql scripts).
    Down {
        #[command(flatten)]
        overrides: Overrides,
        #[command(flatten)]
        run: RunArgs,
        /// How many migrations to revert.
        #[arg(long, default_value_t = 1)]
        steps: usize,
        /// Print what would be reverted on each shard and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Applied, pending and failed migrations per shard; exits 1 when one failed or was modified after
    /// it was applied.
    Status {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Flag statements that lock or rewrite busy tables (the embedded migrations when no file is
    /// given); exits 1 on findings.
    Lint {
        /// Migration files to lint.
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// lock_timeout of the migrating session: a migration queued behind a long lock fails instead of
    /// blocking the traffic queued behind it (0s disables).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    lock_timeout: Duration,
    /// statement_timeout of the migrating session (0s disables).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    statement_timeout: Duration,
}

pub async fn run(cmd: MigrateCommand) -> u8 {
    match cmd {
        MigrateCommand::Up {
            overrides,
            run,
            allow_unsafe,
            dry_run,
            contract,
        } => {
            let opts = RunOptions {
                contract,
                ..options(&run, allow_unsafe)
            };
            each_shard(&overrides, |s| up(s, &opts, dry_run)).await
        }
        MigrateCommand::Down {
            overrides,
            run,
            steps,
            dry_run,
        } => {
            let opts = options(&run, false);
            each_shard(&overrides, |s| down(s, &opts, steps, dry_run)).await
        }
        MigrateCommand::Status { overrides, output } => {
            shard_report::run(&Status, &overrides, output).await
        }
        MigrateCommand::Lint { files } => lint_files(&files),
    }
}

fn options(run: &RunArgs, allow_unsafe: bool) -> RunOptions {
    RunOptions {
        lock_timeout: run.lock_timeout,
        statement_timeout: run.statement_timeout,
        allow_unsafe,
        contract: false,
    }
}

/// Runs `f` on every shard in order and returns the worst exit code.
async fn each_shard<F, Fut>(overrides: &Overrides, f: F) -> u8
where
    F: Fn(std::sync::Arc<ShardPools>) -> Fut,
    Fut: std::future::Future<Output = u8>,
{
    let db = match super::database(overrides) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let mut code = exit::OK;
    for shard in db.shards() {
        code = code.max(f(shard.clone()).await);
    }
    code
}

async fn up(shard: std::sync::Arc<ShardPools>, opts: &RunOptions, dry_run: bool) -> u8 {
    let id = &shard.id;
    if dry_run {
        return match migrate::plan_up(&shard.primary, embedded(), opts.contract).await {
            Ok(steps) if steps.is_empty() => {
                println!("shard {id}: nothing to apply");
                held_back(&shard, opts).await
            }
            Ok(steps) => {
                let mut code = exit::OK;
                for s in &steps {
                    let refuse = !s.findings.is_empty() && !opts.allow_unsafe;
                    println!(
                        "shard {id}: would {} {} {}",
                        if refuse { "refuse" } else { "apply" },
                        s.version,
                        s.description
                    );
                    print_findings(s, MigrationType::ReversibleUp);
                    if refuse {
                        code = exit::CHECK_FAILED;
                    }
                }
                code.max(held_back(&shard, opts).await)
            }
            Err(e) => failed(&shard, "read migrations of", &e),
        };
    }
    let spinner = super::progress::spinner(format!("migrating shard {id}"));
    let result = migrate::up_with(&shard.primary, embedded(), opts).await;
    spinner.finish_and_clear();
    match result {
        Ok(steps) => {
            for s in &steps {
                let elapsed = s.elapsed.map(output::millis).unwrap_or_default();
                println!(
                    "shard {id}: applied {} {} ({elapsed})",
                    s.version, s.description
                );
                // Only with --allow-unsafe can there be any: say what was let through.
                print_findings(s, MigrationType::ReversibleUp);
            }
            if let Err(e) = reference::sync(&shard.primary).await {
                return failed(&shard, "refresh reference data on", &e.into());
            }
            let newest = migrate::applied_version(&shard.primary)
                .await
                .ok()
                .flatten();
            println!(
                "shard {id}: schema at version {}{}",
                newest.unwrap_or(0),
                if steps.is_empty() {
                    " (nothing to apply)"
                } else {
                    ""
                }
            );
            held_back(&shard, opts).await
        }
        Err(e) => {
            if let MigrateError::Unsafe { version, findings } = &e {
                let file = file_of(*version, MigrationType::ReversibleUp);
                for f in findings {
                    eprintln!("  {file}:{}: {}: {}", f.line, f.rule, f.message);
                }
            }
            failed(&shard, "migrate", &e)
        }
    }
}

/// Says which contract steps an expand-only run left for later; they are not a failure.
async fn held_back(shard: &ShardPools, opts: &RunOptions) -> u8 {
    if opts.contract {
        return exit::OK;
    }
    match migrate::held_back(&shard.primary, embedded()).await {
        Ok(held) => {
            for s in held {
                println!(
                    "shard {}: holding contract step {} {} until `kybctl migrate up --contract` (once every instance runs this release)",
                    shard.id, s.version, s.description
                );
            }
            exit::OK
        }
        Err(e) => failed(shard, "read migrations of", &e),
    }
}

async fn down(
    shard: std::sync::Arc<ShardPools>,
    opts: &RunOptions,
    steps: usize,
    dry_run: bool,
) -> u8 {
    let id = &shard.id;
    let result = if dry_run {
        migrate::plan_down(&shard.primary, embedded(), steps).await
    } else {
        migrate::down(&shard.primary, embedded(), steps, opts).await
    };
    match result {
        Ok(done) if done.is_empty() => {
            println!("shard {id}: nothing to revert");
            exit::OK
        }
        Ok(done) => {
            for s in &done {
                match s.elapsed {
                    Some(d) => println!(
                        "shard {id}: reverted {} {} ({})",
                        s.version,
                        s.description,
                        output::millis(d)
                    ),
                    None => println!("shard {id}: would revert {} {}", s.version, s.description),
                }
                print_findings(s, MigrationType::ReversibleDown);
            }
            exit::OK
        }
        Err(e) => failed(&shard, "revert migrations on", &e),
    }
}

fn print_findings(s: &Step, kind: MigrationType) {
    let file = file_of(s.version, kind);
    for f in &s.findings {
        println!("  {file}:{}: {}: {}", f.line, f.rule, f.message);
    }
}

/// Prints the error naming the target (never the credentials) and returns the exit code: 1 when the
/// database or a migration failed a check, 2 when it could not be reached or the run failed.
fn failed(shard: &ShardPools, verb: &str, e: &MigrateError) -> u8 {
    let (target, id) = (&shard.primary_target, &shard.id);
    if e.is_unreachable() {
        eprintln!("error: cannot reach PostgreSQL at {target} (shard {id}): {e}");
        return exit::USAGE;
    }
    eprintln!("error: cannot {verb} PostgreSQL at {target} (shard {id}): {e}");
    use sqlx::migrate::MigrateError as Sqlx;
    match e {
        MigrateError::Unsafe { .. }
        | MigrateError::Migrate(
            Sqlx::VersionMismatch(_) | Sqlx::Dirty(_) | Sqlx::VersionMissing(_),
        ) => exit::CHECK_FAILED,
        _ => exit::USAGE,
    }
}

/// `migrate status`: exits 1 when a migration failed or was modified after it was applied.
struct Status;

impl ShardReport for Status {
    type Row = MigrationStatus;
    type Error = MigrateError;
    const FIELD: &'static str = "migrations";
    const COLUMNS: &'static [&'static str] =
        &["VERSION", "DESCRIPTION", "STATE", "CHECKSUM", "NOTE"];

    async fn read(&self, shard: &ShardPools) -> Result<Vec<MigrationStatus>, MigrateError> {
        migrate::status(&shard.primary, embedded()).await
    }
    fn problem(&self, m: &MigrationStatus) -> Option<String> {
        m.is_problem()
            .then(|| format!("migration {} {}", m.version, problem(m)))
    }
    fn failed(&self, shard: &ShardPools, e: &MigrateError) -> u8 {
        failed(shard, "read migrations of", e)
    }
    fn cells(&self, m: &MigrationStatus) -> Vec<String> {
        vec![
            m.version.to_string(),
            m.description.clone(),
            serde_plain(&m.state),
            m.checksum.clone(),
            if m.is_problem() {
                problem(m)
            } else if m.newer_release {
                "applied by a newer release".into()
            } else if m.contract && m.state == migrate::State::Pending {
                "contract step: `migrate up --contract` once every instance runs this release"
                    .into()
            } else {
                String::new()
            },
        ]
    }
}

fn problem(m: &MigrationStatus) -> String {
    if !m.embedded {
        "is applied but not in this binary, and older than its newest: the histories diverged"
            .into()
    } else if m.checksum_mismatch {
        "was modified after it was applied (its checksum differs from the embedded script's)".into()
    } else {
        "failed; fix the database and delete its row from _sqlx_migrations".into()
    }
}

/// A unit enum's serde name (`applied`), so the table and the JSON say the same word.
fn serde_plain<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// `migrations/<version>_<description>.up.sql`, the file an embedded migration came from.
fn file_of(version: i64, kind: MigrationType) -> String {
    embedded()
        .iter()
        .find(|m| m.version == version && m.migration_type == kind)
        .map(file_name)
        .unwrap_or_else(|| format!("migration {version}"))
}

fn file_name(m: &Migration) -> String {
    format!(
        "migrations/{}_{}{}",
        m.version,
        m.description.replace(' ', "_"),
        m.migration_type.suffix()
    )
}

fn lint_files(files: &[PathBuf]) -> u8 {
    let sources: Vec<(String, String)> = if files.is_empty() {
        embedded()
            .iter()
            .map(|m| (file_name(m), m.sql.as_str().to_owned()))
            .collect()
    } else {
        let mut read = Vec::new();
        for f in files {
            match std::fs::read_to_string(f) {
                Ok(text) => read.push((f.display().to_string(), text)),
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", f.display());
                    return exit::USAGE;
                }
            }
        }
        read
    };
    let corpus = QueryCorpus::service();
    let mut findings = 0;
    for (name, sql) in &sources {
        let script = lint::Script::of(sql, name.ends_with(".down.sql"));
        for f in lint::lint(sql, &corpus, script) {
            println!("{name}:{}: {}: {}", f.line, f.rule, f.message);
            findings += 1;
        }
    }
    eprintln!("{} file(s) linted, {findings} finding(s)", sources.len());
    if findings > 0 {
        exit::CHECK_FAILED
    } else {
        exit::OK
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_file_names_match_the_migrations_folder() {
        let root = env!("CARGO_MANIFEST_DIR");
        for m in migrate::MIGRATOR.iter() {
            let path = format!("{root}/{}", file_name(m));
            assert!(std::path::Path::new(&path).exists(), "{path}");
        }
    }
}
