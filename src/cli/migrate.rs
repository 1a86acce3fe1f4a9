//! `kybctl migrate`.

use super::exit;
use crate::config::{Config, Overrides};
use crate::db::migrate;
use crate::db::Database;

#[derive(Debug, clap::Subcommand)]
pub enum MigrateCommand {
    /// Apply every pending migration on every shard (safe to run from several processes at once).
    Up {
        #[command(flatten)]
        overrides: Overrides,
    },
}

pub async fn run(cmd: MigrateCommand) -> u8 {
    let MigrateCommand::Up { overrides } = cmd;
    let config = match Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let db = match Database::connect_lazy(&config) {
        Ok(db) => db,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let mut code = exit::OK;
    for shard in db.shards() {
        match migrate::up(&shard.primary).await {
            Ok(()) => println!(
                "shard {}: schema at version {}",
                shard.id,
                migrate::expected_version()
            ),
            Err(e) => {
                eprintln!(
                    "error: cannot migrate PostgreSQL at {} (shard {}): {e}",
                    shard.primary_target, shard.id
                );
                code = exit::USAGE;
            }
        }
    }
    code
}
