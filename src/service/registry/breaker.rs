//! A circuit breaker with the plan's semantics: open after N consecutive failures, stay open for the
//! recovery timeout, then let a limited number of trial calls through (half-open); all trials succeeding
//! closes it, any failing reopens it.
//!
//! Written here rather than taken from a crate because the well-kept tower stack has no breaker and the
//! available crates count failure rates over windows instead of the plan's consecutive-failure and
//! half-open-call-budget rules. Time is passed in, so the state machine is tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::CircuitBreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { admitted: u32, succeeded: u32 },
}

impl State {
    /// The `circuit_breaker_state` gauge value.
    pub fn gauge(&self) -> i64 {
        match self {
            State::Closed { .. } => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("circuit open")]
pub struct Rejected;

pub struct CircuitBreaker {
    threshold: u32,
    recovery: Duration,
    half_open_calls: u32,
    state: Mutex<State>,
}

impl CircuitBreaker {
    pub fn new(cfg: &CircuitBreakerConfig) -> Self {
        Self {
            threshold: cfg.failure_threshold.max(1),
            recovery: cfg.recovery_timeout,
            half_open_calls: cfg.half_open_max_calls.max(1),
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the state half-updated (plain copies), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: Instant) -> State {
        let mut s = self.lock();
        if let State::Open { until } = *s {
            if now >= until {
                *s = State::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                };
            }
        }
        *s
    }

    /// Asks to make a call.
    pub fn try_acquire(&self, now: Instant) -> Result<(), Rejected> {
        self.state(now);
        let mut s = self.lock();
        match &mut *s {
            State::Closed { .. } => Ok(()),
            State::Open { .. } => Err(Rejected),
            State::HalfOpen { admitted, .. } => {
                if *admitted < self.half_open_calls {
                    *admitted += 1;
                    Ok(())
                } else {
                    Err(Rejected)
                }
            }
        }
    }

    pub fn on_success(&self) {
        let mut s = self.lock();
        match &mut *s {
            State::Closed { failures } => *failures = 0,
            State::HalfOpen { succeeded, .. } => {
                *succeeded += 1;
                if *succeeded >= self.half_open_calls {
                    *s = State::Closed { failures: 0 };
                }
            }
            State::Open { .. } => {}
        }
    }

    pub fn on_failure(&self, now: Instant) {
        let mut s = self.lock();
        match &mut *s {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= self.threshold {
                    *s = State::Open {
                        until: now + self.recovery,
                    };
                }
            }
            State::HalfOpen { .. } => {
                *s = State::Open {
                    until: now + self.recovery,
                }
            }
            State::Open { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(&CircuitBreakerConfig::default())
    }

    #[test]
    fn opens_after_five_consecutive_failures() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..4 {
            b.try_acquire(t).unwrap();
            b.on_failure(t);
        }
        b.on_success();
        for _ in 0..4 {
            b.on_failure(t);
        }
        assert_eq!(b.try_acquire(t), Ok(()), "a success resets the count");
        b.on_failure(t);
        assert_eq!(b.try_acquire(t), Err(Rejected));
        assert_eq!(b.state(t).gauge(), 1);
    }

    #[test]
    fn half_open_admits_three_then_closes() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..5 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(30);
        assert_eq!(b.try_acquire(t + Duration::from_secs(29)), Err(Rejected));
        for _ in 0..3 {
            assert_eq!(b.try_acquire(later), Ok(()));
        }
        assert_eq!(
            b.try_acquire(later),
            Err(Rejected),
            "only three trial calls"
        );
        assert_eq!(b.state(later).gauge(), 2);
        b.on_success();
        b.on_success();
        assert_eq!(b.state(later).gauge(), 2);
        b.on_success();
        assert_eq!(b.state(later), State::Closed { failures: 0 });
    }

    #[test]
    fn a_failing_trial_reopens() {
        let b = breaker();
        let t = Instant::now();
        for _ in 0..5 {
            b.on_failure(t);
        }
        let later = t + Duration::from_secs(31);
        b.try_acquire(later).unwrap();
        b.on_failure(later);
        assert_eq!(b.try_acquire(later), Err(Rejected));
        assert_eq!(b.state(later + Duration::from_secs(30)).gauge(), 2);
    }
}
