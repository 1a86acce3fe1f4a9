//! The KYB API service (`kybctl serve`): the HTTP API, its state and server loop, the multi-level
//! cache, the registry client, risk scoring, database access (pools by role, shard routing, queries,
//! read-your-writes) and the service's metrics.

pub mod api;
pub mod auth;
pub mod cache;
pub mod classify_cached;
pub mod db;
pub mod http_server;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod risk_scoring;
pub mod state;
