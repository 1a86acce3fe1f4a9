//! kybctl: the KYB platform's API service, operator and command line, in one crate.

pub mod api;
pub mod app;
pub mod cache;
pub mod classification;
pub mod classify;
pub mod cli;
pub mod config;
pub mod crd;
pub mod db;
pub mod loadtest;
pub mod local;
pub mod metrics;
pub mod model;
pub mod operator;
pub mod registry;
pub mod risk;
pub mod schema;
pub mod server;
pub mod slo;
pub mod telemetry;
pub mod tls;
