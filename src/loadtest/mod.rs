//! `kybctl loadtest`: a KYB traffic mix driven by goose, measured by kybctl itself (HDR histograms in
//! microseconds per request type), written as the result file `slo check` reads.
//!
//! - [`scenario`]: the traffic mix as data (`loadtests/*.yaml`)
//! - [`client`]: each user's HTTP connection (hyper)
//! - [`recorder`]: per-user histograms and counters, and the rate pacer
//! - [`summary`]: the result file and the verdict on the generator (saturated or not)
//! - [`report`]: the table and the HTML page
//! - [`platform`]: target and thresholds from a KybPlatform
//! - [`run`]: goose wiring

pub mod client;
pub mod platform;
pub mod recorder;
pub mod report;
pub mod run;
pub mod scenario;
pub mod summary;
