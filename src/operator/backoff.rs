//! The backoff between retries of the controller's watches.
//!
//! kube-runtime puts ONE backoff in front of all of a controller's watches together (the KybPlatform
//! watch and one per owned kind, eight in all): while it sleeps, no watch is polled. Its default grows
//! to 30 s, as client-go's does per informer; shared, that adds up. After an apiserver restart every
//! watch fails once (connection refused, then "410 Gone" for its old resourceVersion) and each failure
//! lengthened the sleep before the next watch could recover: the operator was blind to new
//! KybPlatforms for minutes (tests/operator_apiserver_restart.rs). A short cap keeps recovery to
//! seconds and is still no hot loop: while the apiserver is down the watches are retried at most once
//! per cap, one watch at a time.

use std::time::Duration;

use kube::runtime::utils::Backoff;

const MIN: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_secs(2);

/// Exponential from 200 ms to 2 s with jitter; reset by the controller on the next good event.
pub struct WatchBackoff {
    builder: backon::ExponentialBuilder,
    current: backon::ExponentialBackoff,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        let builder = backon::ExponentialBuilder::default()
            .with_min_delay(MIN)
            .with_max_delay(MAX)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            current: backon::BackoffBuilder::build(builder),
            builder,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.current.next()
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.current = backon::BackoffBuilder::build(self.builder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_never_ends_and_resets() {
        let mut b = WatchBackoff::default();
        let delays: Vec<Duration> = b.by_ref().take(20).collect();
        assert_eq!(delays.len(), 20, "never gives up");
        // Jitter adds up to one more delay on top of the exponential value.
        assert!(delays[0] >= MIN && delays[0] <= 2 * MIN, "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 2 * MAX), "{delays:?}");
        assert!(delays[10..].iter().all(|d| *d >= MAX), "{delays:?}");
        b.reset();
        assert!(b.next().unwrap() <= 2 * MIN);
    }
}
