//! The operator run in-process against the test control plane, and waiting helpers for its tests.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::{Duration, Instant};

use kybctl::crd::KybPlatform;
use kybctl::operator::controller;
use kybctl::operator::metrics::OperatorMetrics;

use crate::cluster::cluster;

/// Polls `f` every 250 ms until it is true; panics naming `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub fn condition(kp: &KybPlatform, kind: &str) -> Option<(String, String)> {
    kp.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub struct Operator {
    pub metrics: Arc<OperatorMetrics>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    pub async fn start(ns: &str) -> Self {
        Self::start_as(ns, cluster().await.client().await).await
    }

    pub async fn start_as(ns: &str, client: kube::Client) -> Self {
        let metrics = Arc::new(OperatorMetrics::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let m = metrics.clone();
        let ns = ns.to_owned();
        let task = tokio::spawn(async move {
            controller::run(client, Some(ns), m, async move {
                let _ = rx.await;
            })
            .await;
        });
        Self {
            metrics,
            stop: Some(tx),
            task,
        }
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}
