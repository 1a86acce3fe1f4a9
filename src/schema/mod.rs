//! The database schema and its upkeep: the embedded migrations and the guarded runner around sqlx's
//! migrator, the migration linter, concurrent index builds and the reference-table sync. Used by the
//! CLI (`kybctl migrate`, `kybctl db`), the operator's migration Job (which runs the same binary) and
//! the service's readiness check (the schema version it expects).

pub mod indexes;
pub mod lint;
pub mod migrate;
pub mod reference;
