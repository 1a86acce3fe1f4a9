//! The KybPlatform operator: the custom resource's types (`crd`), the controller, leader election and
//! the operator's metrics. `render` and `build` are pure: from a KybPlatform they produce the service's
//! configuration and every child object, so what the operator will apply is unit-tested without a
//! cluster.

pub mod analysis;
pub mod backoff;
pub mod build;
pub mod commands;
pub mod connections;
pub mod controller;
pub mod crd;
pub mod drift;
pub mod dynamic;
pub mod keda;
pub mod leader;
pub mod metrics;
pub mod monitoring;
pub mod ownership;
pub mod progressive;
pub mod queue_status;
pub mod render;
pub mod revisions;
pub mod split;
pub mod status;
