//! Throwaway PostgreSQL and Redis servers on loopback, for `kybctl demo` and the tests.
//!
//! Each server runs from a temporary directory on a free port and is tied to this process: it gets
//! SIGTERM (Redis) or SIGQUIT (PostgreSQL: immediate shutdown) if the process dies, and is stopped and
//! its directory removed on drop.

mod postgres;
mod process;
mod redis;

pub use postgres::TempPostgres;
pub use process::{free_port, owned_temp_dir, spawn_tied, stop, tail};
pub use redis::TempRedis;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{what} did not become ready within {secs}s; last log lines:\n{log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
