//! How the programs tell PostgreSQL failures apart: "the server is not there" (retry later) from "not
//! found", a conflict, or a query that is wrong. Shared by the service's queries and the schema tools
//! (migrations, index builds), which retry or report on the same distinction.

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached (down, refusing, pool exhausted): clients should retry.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("not found")]
    NotFound,
    #[error("precondition failed: {0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Query(sqlx::Error),
    /// A statement's error told to each of several requests it served (`sqlx::Error` is not `Clone`).
    #[error("database error: {0}")]
    Failed(String),
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        if is_connection_error(&e) {
            DbError::Unavailable(e.to_string())
        } else if matches!(e, sqlx::Error::RowNotFound) {
            DbError::NotFound
        } else {
            DbError::Query(e)
        }
    }
}

/// Errors that say "the server is not there" rather than "the query is wrong".
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // 57P01 admin_shutdown, 57P03 cannot_connect_now (starting up / shutting down / recovery).
        sqlx::Error::Database(db) => {
            matches!(db.code().as_deref(), Some("57P01" | "57P02" | "57P03"))
        }
        _ => false,
    }
}
