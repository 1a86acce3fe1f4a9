//! Primary connections for one-statement requests, handed back without sqlx's ping on release.
//!
//! sqlx's `PgPool` pings every connection it takes back (`PoolConnection::return_to_pool`: a Sync and
//! a wait for ReadyForQuery), a second round trip per statement that no setting turns off. The
//! service's merchant read by id ran at 0.51–0.63 × the rate of the same statement without that ping
//! (`examples/release_ping.rs`, BENCHMARKS.md). This pool is deadpool's over sqlx's `PgConnection`:
//! a connection is asked whether it is alive only when it is taken after a rest ([`check_before_use`],
//! as the sqlx pools' `before_acquire` does) and never when it comes back. What the ping also did,
//! bring a connection whose statement was cut short back to a known state, [`Lease`] does by closing
//! such a connection instead of returning it.
//!
//! Transactions stay on the sqlx pools: a transaction dropped unfinished queues its `ROLLBACK` for
//! that ping to send.

use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection};

use super::pools::check_before_use;
use crate::config::PoolConfig;
use crate::db_error::is_connection_error;

/// Opens connections and decides whether a pooled one may be used again.
pub struct Connector {
    options: PgConnectOptions,
    max_lifetime: Duration,
}

impl managed::Manager for Connector {
    type Type = PgConnection;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<PgConnection, sqlx::Error> {
        PgConnection::connect_with(&self.options).await
    }

    async fn recycle(&self, conn: &mut PgConnection, m: &Metrics) -> RecycleResult<sqlx::Error> {
        if m.age() >= self.max_lifetime {
            return Err(RecycleError::message("past its lifetime"));
        }
        // `last_used` is the time since the connection was last taken, so at least its rest.
        if check_before_use(m.last_used()) {
            conn.ping().await?;
        }
        Ok(())
    }
}

/// At most `size` connections to one primary, opened on demand. A clone shares the connections.
#[derive(Clone)]
pub struct DirectPool {
    pool: managed::Pool<Connector>,
    idle_timeout: Duration,
}

impl DirectPool {
    /// With the main pool's timeouts and lifetimes (`database.pool`).
    pub fn new(options: PgConnectOptions, size: usize, cfg: &PoolConfig) -> Self {
        let connector = Connector {
            options,
            max_lifetime: cfg.max_lifetime,
        };
        let wait = Some(cfg.acquire_timeout);
        let pool = managed::Pool::builder(connector)
            .max_size(size)
            .timeouts(Timeouts {
                wait,
                create: wait,
                recycle: wait,
            })
            .runtime(deadpool::Runtime::Tokio1)
            .build()
            // Only a timeout without a runtime fails to build, and the runtime is set above.
            .expect("a pool with a runtime builds");
        Self {
            pool,
            idle_timeout: cfg.idle_timeout,
        }
    }

    /// A connection for one statement, or why there is none (a timeout reads as sqlx's own).
    pub async fn lease(&self) -> Result<Lease, sqlx::Error> {
        match self.pool.get().await {
            Ok(conn) => Ok(Lease { conn: Some(conn) }),
            Err(PoolError::Backend(e)) => Err(e),
            Err(PoolError::Timeout(_)) => Err(sqlx::Error::PoolTimedOut),
            Err(PoolError::Closed) => Err(sqlx::Error::PoolClosed),
            Err(e) => Err(sqlx::Error::Protocol(format!("connection pool: {e}"))),
        }
    }

    /// Closes connections that have rested longer than the idle timeout.
    pub fn reap_idle(&self) {
        let idle_timeout = self.idle_timeout;
        self.pool.retain(|_, m| m.last_used() < idle_timeout);
    }

    /// Open connections and how many of them are free.
    pub fn stats(&self) -> (u32, u32) {
        let s = self.pool.status();
        (s.size as u32, s.available as u32)
    }
}

/// A connection taken for one statement. [`Lease::finish`] returns it to the pool; dropped without
/// it (the request was cancelled mid-statement, or the connection broke) the connection is closed,
/// since its place in the protocol is unknown.
pub struct Lease {
    conn: Option<Object<Connector>>,
}

impl Lease {
    pub fn conn(&mut self) -> &mut PgConnection {
        // `Some` from `lease` until `finish` or drop, both of which consume the lease.
        self.conn.as_mut().expect("a lease holds its connection")
    }

    /// Hands the connection back unless the statement's error says it broke; returns the result.
    pub fn finish<T>(mut self, result: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if !matches!(&result, Err(e) if is_connection_error(e)) {
            drop(self.conn.take());
        }
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // Out of the pool: dropping the connection closes its socket.
            drop(Object::take(conn));
        }
    }
}
