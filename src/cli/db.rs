//! `kybctl db indexes apply|status|verify`.

use std::sync::Arc;
use std::time::Duration;

use super::exit;
use super::output::{self, Format};
use super::shard_report::{self, ShardReport};
use crate::config::Overrides;
use crate::schema::indexes::{self, ApplyOptions, IndexError, IndexState, IndexStatus, Verified};
use crate::service::db::ShardPools;

#[derive(Debug, clap::Subcommand)]
pub enum DbCommand {
    /// The indexes the service's queries need.
    #[command(subcommand)]
    Indexes(IndexesCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum IndexesCommand {
    /// Build missing indexes and rebuild INVALID ones (left by interrupted concurrent builds), one at
    /// a time with CREATE INDEX CONCURRENTLY: writes go on during the build.
    Apply {
        #[command(flatten)]
        overrides: Overrides,
        /// lock_timeout of each build; a build that times out waiting for its lock is retried.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        lock_timeout: Duration,
        /// Builds per index before giving up on lock timeouts.
        #[arg(long, default_value_t = 5)]
        attempts: u32,
    },
    /// Validity, size and scans of each index; exits 1 when one is missing or INVALID.
    Status {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// EXPLAIN ANALYZE the hot queries and exit 1 when one does not use its index.
    Verify {
        #[command(flatten)]
        overrides: Overrides,
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
}

pub async fn run(cmd: DbCommand) -> u8 {
    let DbCommand::Indexes(cmd) = cmd;
    match cmd {
        IndexesCommand::Apply {
            overrides,
            lock_timeout,
            attempts,
        } => {
            let opts = ApplyOptions {
                lock_timeout,
                attempts,
            };
            let db = match super::database(&overrides) {
                Ok(db) => db,
                Err(code) => return code,
            };
            let mut code = exit::OK;
            for shard in db.shards() {
                code = code.max(apply(shard, &opts).await);
            }
            code
        }
        IndexesCommand::Status { overrides, output } => {
            shard_report::run(&Status, &overrides, output).await
        }
        IndexesCommand::Verify { overrides, output } => verify(&overrides, output).await,
    }
}

async fn apply(shard: &Arc<ShardPools>, opts: &ApplyOptions) -> u8 {
    let spinner = super::progress::spinner(format!(
        "building indexes on shard {} (CREATE INDEX CONCURRENTLY)",
        shard.id
    ));
    let result = indexes::apply(&shard.primary, opts).await;
    spinner.finish_and_clear();
    match result {
        Ok(report) => {
            for a in report {
                let retries = match a.retries {
                    0 => String::new(),
                    n => format!(", {n} lock-timeout retries"),
                };
                println!(
                    "shard {}: {} {} ({}{retries})",
                    shard.id,
                    a.name,
                    a.outcome.as_str(),
                    output::millis(a.elapsed)
                );
            }
            exit::OK
        }
        Err(e) => failed(shard, &e),
    }
}

fn failed(shard: &ShardPools, e: &IndexError) -> u8 {
    let (target, id) = (&shard.primary_target, &shard.id);
    if e.is_unreachable() {
        eprintln!("error: cannot reach PostgreSQL at {target} (shard {id}): {e}");
    } else {
        eprintln!("error: indexes on PostgreSQL at {target} (shard {id}): {e}");
    }
    exit::USAGE
}

/// `db indexes status`: exits 1 when an index is missing or INVALID.
struct Status;

impl ShardReport for Status {
    type Row = IndexStatus;
    type Error = IndexError;
    const FIELD: &'static str = "indexes";
    const COLUMNS: &'static [&'static str] = &["INDEX", "TABLE", "STATE", "SIZE", "SCANS"];

    async fn read(&self, shard: &ShardPools) -> Result<Vec<IndexStatus>, IndexError> {
        indexes::status(&shard.primary).await
    }
    fn problem(&self, i: &IndexStatus) -> Option<String> {
        (i.state != IndexState::Valid).then(|| {
            format!(
                "{} is {}; run `kybctl db indexes apply`",
                i.name,
                state_word(i.state)
            )
        })
    }
    fn failed(&self, shard: &ShardPools, e: &IndexError) -> u8 {
        failed(shard, e)
    }
    fn cells(&self, i: &IndexStatus) -> Vec<String> {
        vec![
            i.name.to_owned(),
            i.table.to_owned(),
            state_word(i.state).to_owned(),
            output::human_bytes(i.size_bytes),
            i.scans.to_string(),
        ]
    }
}

fn state_word(s: IndexState) -> &'static str {
    match s {
        IndexState::Valid => "valid",
        IndexState::Invalid => "INVALID",
        IndexState::Missing => "missing",
    }
}

/// `db indexes verify`: exits 1 when a hot query does not use its index.
struct Verify;

impl ShardReport for Verify {
    type Row = Verified;
    type Error = IndexError;
    const FIELD: &'static str = "queries";
    const COLUMNS: &'static [&'static str] = &[
        "QUERY", "INDEX", "USES IT", "PLAN", "ROWS", "TIME", "BUFFERS",
    ];

    async fn read(&self, shard: &ShardPools) -> Result<Vec<Verified>, IndexError> {
        let spinner = super::progress::spinner(format!(
            "EXPLAIN ANALYZE of the hot queries on shard {}",
            shard.id
        ));
        let result = indexes::verify(&shard.primary).await;
        spinner.finish_and_clear();
        result
    }
    fn problem(&self, q: &Verified) -> Option<String> {
        (!q.uses_index).then(|| {
            format!(
                "{} does not use {} (plan: {})",
                q.query,
                q.index,
                q.plan.nodes.join(" > ")
            )
        })
    }
    fn failed(&self, shard: &ShardPools, e: &IndexError) -> u8 {
        failed(shard, e)
    }
    fn cells(&self, q: &Verified) -> Vec<String> {
        vec![
            q.query.to_owned(),
            q.index.to_owned(),
            if q.uses_index { "yes" } else { "NO" }.to_owned(),
            q.plan.nodes.join(" > "),
            q.plan.rows.to_string(),
            format!("{:.2} ms", q.plan.execution_ms),
            format!("hit {} read {}", q.plan.shared_hit, q.plan.shared_read),
        ]
    }
}

async fn verify(overrides: &Overrides, format: Format) -> u8 {
    let code = shard_report::run(&Verify, overrides, format).await;
    if matches!(format, Format::Table) {
        // Why a seq-scan-free plan: see `indexes::verify`.
        eprintln!("plans taken with enable_seqscan=off: they show each index is usable by its query, whatever the table size");
    }
    code
}
