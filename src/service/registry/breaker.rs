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
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `round` tells one half-open period from the next, so a trial admitted in an earlier one cannot
    /// give back a slot of this one.
    HalfOpen {
        admitted: u32,
        succeeded: u32,
        round: u64,
    },
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
    state: Mutex<(State, u64)>,
}

/// Leave to make one call. Report how it went with [`Permit::success`] or [`Permit::failure`]; a permit
/// dropped unreported (the call was cancelled: its request timed out, its client went away) says
/// nothing about the dependency, and gives its half-open trial slot back, so a breaker can never stay
/// half-open with every slot held by calls that no longer exist.
#[must_use = "report the call's outcome"]
pub struct Permit<'a> {
    breaker: &'a CircuitBreaker,
    /// The half-open round this call is a trial of.
    trial_of: Option<u64>,
    reported: bool,
}

impl Permit<'_> {
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.on_success();
    }

    pub fn failure(mut self, now: Instant) {
        self.reported = true;
        self.breaker.on_failure(now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let Some(round) = self.trial_of.filter(|_| !self.reported) else {
            return;
        };
        let mut s = self.breaker.lock();
        if let State::HalfOpen {
            admitted, round: r, ..
        } = &mut s.0
        {
            if *r == round {
                *admitted = admitted.saturating_sub(1);
            }
        }
    }
}

impl CircuitBreaker {
    pub fn new(cfg: &CircuitBreakerConfig) -> Self {
        Self {
            threshold: cfg.failure_threshold.max(1),
            recovery: cfg.recovery_timeout,
            half_open_calls: cfg.half_open_max_calls.max(1),
            state: Mutex::new((State::Closed { failures: 0 }, 0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (State, u64)> {
        // A panic while holding this lock cannot leave the state half-updated (plain copies), so a
        // poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn state(&self, now: Instant) -> State {
        let mut s = self.lock();
        if let State::Open { until } = s.0 {
            if now >= until {
                s.1 += 1;
                s.0 = State::HalfOpen {
                    admitted: 0,
                    succeeded: 0,
                    round: s.1,
                };
            }
        }
        s.0
    }

    /// Asks to make a call.
    pub fn try_acquire(&self, now: Instant) -> Result<Permit<'_>, Rejected> {
        self.state(now);
        let mut s = self.lock();
        let trial_of = match &mut s.0 {
            State::Closed { .. } => None,
            State::Open { .. } => return Err(Rejected),
            State::HalfOpen {
                admitted, round, ..
            } => {
                if *admitted >= self.half_open_calls {
                    return Err(Rejected);
                }
                *admitted += 1;
                Some(*round)
            }
        };
        Ok(Permit {
            breaker: self,
            trial_of,
            reported: false,
        })
    }

    fn on_success(&self) {
        let mut s = self.lock();
        match &mut s.0 {
            State::Closed { failures } => *failures = 0,
            State::HalfOpen { succeeded, .. } => {
                *succeeded += 1;
                if *succeeded >= self.half_open_calls {
                    s.0 = State::Closed { failures: 0 };
                }
            }
            State::Open { .. } => {}
        }
    }

    fn on_failure(&self, now: Instant) {
        let mut s = self.lock();
        match &mut s.0 {
            State::Closed { failures } => {
                *failures += 1;
                if *failures >= self.threshold {
                    s.0 = State::Open {
                        until: now + self.recovery,
                    };
                }
            }
            State::HalfOpen { .. } => {
                s.0 = State::Open {
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

    fn fail(b: &CircuitBreaker, t: Instant, n: usize) {
        for _ in 0..n {
            b.try_acquire(t).unwrap().failure(t);
        }
    }

    #[test]
    fn opens_after_five_consecutive_failures() {
        let b = breaker();
        let t = Instant::now();
        fail(&b, t, 4);
        b.try_acquire(t).unwrap().success();
        fail(&b, t, 4);
        assert!(b.try_acquire(t).is_ok(), "a success resets the count");
        fail(&b, t, 1);
        assert_eq!(b.try_acquire(t).err(), Some(Rejected));
        assert_eq!(b.state(t).gauge(), 1);
    }

    #[test]
    fn half_open_admits_three_then_closes() {
        let b = breaker();
        let t = Instant::now();
        fail(&b, t, 5);
        let later = t + Duration::from_secs(30);
        assert_eq!(
            b.try_acquire(t + Duration::from_secs(29)).err(),
            Some(Rejected)
        );
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(later).unwrap()).collect();
        assert_eq!(
            b.try_acquire(later).err(),
            Some(Rejected),
            "only three trial calls"
        );
        assert_eq!(b.state(later).gauge(), 2);
        let mut trials = trials.into_iter();
        trials.next().unwrap().success();
        trials.next().unwrap().success();
        assert_eq!(b.state(later).gauge(), 2);
        trials.next().unwrap().success();
        assert_eq!(b.state(later), State::Closed { failures: 0 });
    }

    #[test]
    fn a_failing_trial_reopens() {
        let b = breaker();
        let t = Instant::now();
        fail(&b, t, 5);
        let later = t + Duration::from_secs(31);
        b.try_acquire(later).unwrap().failure(later);
        assert_eq!(b.try_acquire(later).err(), Some(Rejected));
        assert_eq!(b.state(later + Duration::from_secs(30)).gauge(), 2);
    }

    #[test]
    fn a_cancelled_trial_gives_its_slot_back() {
        let b = breaker();
        let t = Instant::now();
        fail(&b, t, 5);
        let later = t + Duration::from_secs(30);
        // Three trials whose calls are cancelled before they answer.
        for _ in 0..3 {
            drop(b.try_acquire(later).unwrap());
        }
        let trials: Vec<Permit> = (0..3).map(|_| b.try_acquire(later).unwrap()).collect();
        trials.into_iter().for_each(Permit::success);
        assert_eq!(
            b.state(later),
            State::Closed { failures: 0 },
            "not stuck half-open"
        );
    }

    #[test]
    fn a_trial_from_an_earlier_round_cannot_free_a_slot_of_this_one() {
        let b = breaker();
        let t = Instant::now();
        fail(&b, t, 5);
        let round1 = t + Duration::from_secs(30);
        let stale = b.try_acquire(round1).unwrap();
        b.try_acquire(round1).unwrap().failure(round1); // reopens
        let round2 = round1 + Duration::from_secs(30);
        let held: Vec<Permit> = (0..3).map(|_| b.try_acquire(round2).unwrap()).collect();
        drop(stale);
        assert_eq!(
            b.try_acquire(round2).err(),
            Some(Rejected),
            "still three in flight"
        );
        drop(held);
    }
}
