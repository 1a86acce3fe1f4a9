//! The skeleton shared by the per-shard reports (`migrate status`, `db indexes status|verify`): read
//! each shard's rows from its primary, print each problem row as an error naming the shard, then
//! render everything that was read as one table or document. A shard that cannot be read is reported
//! and the others still are.

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::exit;
use super::output::{self, Format};
use crate::config::Overrides;
use crate::service::db::ShardPools;

/// One report: how to read a shard, which rows are problems, and how a row looks in the table.
pub trait ShardReport {
    type Row: Serialize;
    type Error;
    /// The field that holds a shard's rows in `-o json|yaml` (`{"shard": "a", FIELD: [...]}`).
    const FIELD: &'static str;
    /// The table's columns after SHARD.
    const COLUMNS: &'static [&'static str];

    async fn read(&self, shard: &ShardPools) -> Result<Vec<Self::Row>, Self::Error>;
    /// What is wrong with `row`, printed after "error: shard ID: "; `None` when it is fine.
    fn problem(&self, row: &Self::Row) -> Option<String>;
    /// Prints why `shard` could not be read and returns the exit code.
    fn failed(&self, shard: &ShardPools, e: &Self::Error) -> u8;
    /// The table cells after the shard's id.
    fn cells(&self, row: &Self::Row) -> Vec<String>;
}

struct ShardRows<R: ShardReport> {
    shard: String,
    rows: Vec<R::Row>,
}

impl<R: ShardReport> Serialize for ShardRows<R> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ShardRows", 2)?;
        st.serialize_field("shard", &self.shard)?;
        st.serialize_field(R::FIELD, &self.rows)?;
        st.end()
    }
}

/// Runs `report` over every configured shard and prints it in `format`; returns the worst exit code
/// (1 when a row is a problem, 2 when a shard could not be read or the configuration is unusable).
pub async fn run<R: ShardReport>(report: &R, overrides: &Overrides, format: Format) -> u8 {
    let db = match super::database(overrides) {
        Ok(db) => db,
        Err(code) => return code,
    };
    let mut code = exit::OK;
    let mut shards: Vec<ShardRows<R>> = Vec::new();
    for shard in db.shards() {
        match report.read(shard).await {
            Ok(rows) => {
                for p in rows.iter().filter_map(|r| report.problem(r)) {
                    eprintln!("error: shard {}: {p}", shard.id);
                    code = code.max(exit::CHECK_FAILED);
                }
                shards.push(ShardRows {
                    shard: shard.id.clone(),
                    rows,
                });
            }
            Err(e) => code = code.max(report.failed(shard, &e)),
        }
    }
    if shards.is_empty() {
        return code;
    }
    print!(
        "{}",
        output::render(format, &shards, || {
            let header = std::iter::once("SHARD").chain(R::COLUMNS.iter().copied());
            let mut t = output::table(header.collect::<Vec<_>>());
            for s in &shards {
                for r in &s.rows {
                    t.add_row(std::iter::once(s.shard.clone()).chain(report.cells(r)));
                }
            }
            t
        })
    );
    code
}
