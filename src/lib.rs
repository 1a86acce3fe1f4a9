//! kybctl: the KYB platform's API service, operator and command line, in one crate.
//!
//! The three programs: [`service`] (the KYB API), [`operator`] (the `KybPlatform` controller) and
//! [`cli`] (`kybctl`, which also starts the other two). The gates the CLI runs: [`loadtest`] and
//! [`slo`]. What they share: [`schema`] (migrations, lint, index builds), [`classify`] (the pure
//! classifier and its reference data), [`config`], [`telemetry`], [`tls`] and the programs'
//! [`allocator`]; [`local`] starts throwaway PostgreSQL and Redis servers for the demo and the tests.

pub mod allocator;
pub mod classify;
pub mod cli;
pub mod config;
pub mod db_error;
pub mod db_row;
pub mod jobs;
pub mod loadtest;
pub mod local;
pub mod markup;
pub mod operator;
pub mod schema;
pub mod service;
pub mod slo;
pub mod telemetry;
pub mod tls;
