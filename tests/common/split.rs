//! Two real in-process services standing in for a rollout's stable and canary pods (kwok's pods run
//! nothing), scraped every second by a real Prometheus as `service="kyb"` with `revision` `stable` or
//! `canary`, and a client sending them ten requests every 100 ms split by the rollout's effective
//! weight. The canary has a PostgreSQL of its own, so a test can make it bad by a real fault: stopping
//! that database makes it answer 503. Shared by `tests/analysis.rs` and `benches/analysis.rs`.
#![allow(dead_code)] // each binary uses a different part

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kybctl::local::TempPostgres;

use crate::common::{config, migrated_db_on, Service};
use crate::prometheus::TempPrometheus;

pub struct SplitTraffic {
    pub stable: Service,
    pub canary: Service,
    pub canary_pg: TempPostgres,
    pub prom: TempPrometheus,
    weight: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
    /// When a client first saw the canary fail (ms since `epoch`; 0: not yet).
    first_5xx: Arc<AtomicI64>,
}

impl SplitTraffic {
    /// The stable service on `stable_db` (migrated), the canary on a new PostgreSQL of its own, both
    /// scraped, and the traffic running at weight 0.
    pub async fn start(stable_db: &str) -> Self {
        let canary_pg = TempPostgres::start().expect("PostgreSQL for the canary");
        let stable = Service::start(config(stable_db, None)).await;
        let canary = Service::start(config(&migrated_db_on(&canary_pg).await, None)).await;
        // Every series exists before the first scrape: rate() ignores a counter's value when first seen.
        for s in [&stable, &canary] {
            s.get("/ready").await;
        }
        let target = |s: &Service| s.metrics_base.strip_prefix("http://").unwrap().to_owned();
        let prom = TempPrometheus::start(&[
            (
                &target(&stable),
                &[("revision", "stable"), ("service", "kyb")],
            ),
            (
                &target(&canary),
                &[("revision", "canary"), ("service", "kyb")],
            ),
        ]);
        prom.wait_scraped(Duration::from_secs(30)).await;
        let split = Self {
            stable,
            canary,
            canary_pg,
            prom,
            weight: Arc::new(AtomicI64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
            epoch: Instant::now(),
            first_5xx: Arc::new(AtomicI64::new(0)),
        };
        split.send();
        split
    }

    fn send(&self) {
        let (weight, stop, first_5xx) = (
            self.weight.clone(),
            self.stop.clone(),
            self.first_5xx.clone(),
        );
        let (http, epoch) = (self.stable.http.clone(), self.epoch);
        let (s_url, c_url) = (self.stable.url("/ready"), self.canary.url("/ready"));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let to_canary = (weight.load(Ordering::Relaxed) + 5) / 10;
                for i in 0..10 {
                    let url = if i < to_canary { &c_url } else { &s_url };
                    let failed = http
                        .get(url)
                        .send()
                        .await
                        .map_or(true, |r| r.status().is_server_error());
                    if failed && url == &c_url && first_5xx.load(Ordering::Relaxed) == 0 {
                        first_5xx.store(epoch.elapsed().as_millis() as i64, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }

    /// The canary's share of the traffic, in percent (the rollout's effective weight).
    pub fn set_weight(&self, percent: i32) {
        self.weight.store(i64::from(percent), Ordering::Relaxed);
    }

    /// Forgets when the canary last failed a client, so [`Self::first_canary_5xx`] times the next fault.
    pub fn reset_first_5xx(&self) {
        self.first_5xx.store(0, Ordering::Relaxed);
    }

    /// When a client first saw the canary fail since the last reset.
    pub fn first_canary_5xx(&self) -> Option<Instant> {
        match self.first_5xx.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(self.epoch + Duration::from_millis(ms as u64)),
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for SplitTraffic {
    fn drop(&mut self) {
        self.stop();
    }
}
