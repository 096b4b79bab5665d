//! A circuit breaker for the state store: after `failures` consecutive store-wide failures it
//! opens, and the fail mode answers at once instead of waiting out the time budget on every
//! request. After `cool_down` one request probes the store (half-open); its success closes the
//! breaker.
//!
//! A probe must not be able to hold the breaker half-open: it is a [`Call`] whose drop without a
//! reported success counts as a failure (a client that disconnects drops the request's future),
//! and a probe still out past its deadline (the store budget) counts as failed however it ends.

use std::sync::Mutex;
use std::time::Duration;

use crate::engine::clock::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    pub failures: u32,
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failures: 5,
            cool_down: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until: Timestamp,
    },
    /// One probe is out: `probe` identifies it, `deadline` is when it counts as failed.
    HalfOpen {
        probe: u64,
        deadline: Timestamp,
    },
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    /// How long a probe may take: the gate's store budget.
    probe_budget: Duration,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: BreakerState,
    probes: u64,
}

/// Permission for one store call. Report how it ended with [`Call::success`] or
/// [`Call::failure`]; a probe dropped without a report counts as failed.
#[derive(Debug)]
#[must_use = "report the call's result, or the probe counts as failed"]
pub struct Call<'a> {
    breaker: &'a Breaker,
    /// `Some((id, deadline))` when this call is the half-open probe.
    probe: Option<(u64, Timestamp)>,
    reported: bool,
}

impl Call<'_> {
    pub fn is_probe(&self) -> bool {
        self.probe.is_some()
    }

    /// The store answered.
    pub fn success(mut self) {
        self.reported = true;
        self.breaker.report(self.probe, true, None);
    }

    /// The store as a whole failed (an item-scoped error is an answer: report `success`).
    pub fn failure(mut self, now: Timestamp) {
        self.reported = true;
        self.breaker.report(self.probe, false, Some(now));
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if !self.reported && self.probe.is_some() {
            // No clock here: the probe is deemed to have failed at its deadline.
            self.breaker.report(self.probe, false, None);
        }
    }
}

impl Breaker {
    pub fn new(config: BreakerConfig, probe_budget: Duration) -> Breaker {
        Breaker {
            config,
            probe_budget,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed { failures: 0 },
                probes: 0,
            }),
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Whether a call to the store may be made now, and the permission to make it. While open,
    /// `None` until the cool-down ends; then one call is let through as the probe. A probe past
    /// its deadline has failed: the breaker reopens from that deadline.
    pub fn permits(&self, now: Timestamp) -> Option<Call<'_>> {
        let mut inner = self.lock();
        if let BreakerState::HalfOpen { deadline, .. } = inner.state
            && now >= deadline
        {
            inner.state = BreakerState::Open {
                until: deadline.saturating_add(self.config.cool_down),
            };
        }
        let probe = match inner.state {
            BreakerState::Closed { .. } => None,
            BreakerState::Open { until } if now >= until => {
                inner.probes += 1;
                let deadline = now.saturating_add(self.probe_budget);
                inner.state = BreakerState::HalfOpen {
                    probe: inner.probes,
                    deadline,
                };
                Some((inner.probes, deadline))
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => return None,
        };
        Some(Call {
            breaker: self,
            probe,
            reported: false,
        })
    }

    /// Calls made while closed move a closed breaker only; the probe alone decides a half-open
    /// one, and a probe that is no longer the current one (past its deadline) changes nothing.
    fn report(&self, probe: Option<(u64, Timestamp)>, ok: bool, now: Option<Timestamp>) {
        let mut inner = self.lock();
        let cool_down = self.config.cool_down;
        inner.state = match (inner.state, probe) {
            (BreakerState::Closed { .. }, None) if ok => BreakerState::Closed { failures: 0 },
            (BreakerState::Closed { failures }, None) => match now {
                Some(_) if failures + 1 < self.config.failures => BreakerState::Closed { failures: failures + 1 },
                Some(now) => BreakerState::Open {
                    until: now.saturating_add(cool_down),
                },
                None => BreakerState::Closed { failures },
            },
            (BreakerState::HalfOpen { probe: current, .. }, Some((id, deadline))) if current == id => {
                if ok {
                    BreakerState::Closed { failures: 0 }
                } else {
                    let at = now.map_or(deadline, |n| n.min(deadline));
                    BreakerState::Open {
                        until: at.saturating_add(cool_down),
                    }
                }
            }
            (state, _) => state,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clock::{Clock, ManualClock};

    const BUDGET: Duration = Duration::from_millis(150);

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerConfig {
                failures: 3,
                cool_down: Duration::from_secs(5),
            },
            BUDGET,
        )
    }

    /// Three store-wide failures at `now`: the breaker opens until `now + 5 s`.
    fn open(b: &Breaker, now: Timestamp) {
        for _ in 0..3 {
            b.permits(now).expect("closed").failure(now);
        }
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: now.saturating_add(Duration::from_secs(5))
            }
        );
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_probe_closes_it() {
        let b = breaker();
        let t0 = Timestamp::from_secs(100);
        b.permits(t0).expect("closed").failure(t0);
        b.permits(t0).expect("closed").success();
        b.permits(t0).expect("closed").failure(t0);
        b.permits(t0).expect("closed").failure(t0);
        assert!(
            b.permits(t0).is_some_and(|c| !c.is_probe()),
            "two consecutive failures keep it closed"
        );
        b.permits(t0).expect("closed").failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp::from_secs(105)
            }
        );
        assert!(b.permits(Timestamp::from_secs(104)).is_none());
        let probe = b.permits(Timestamp::from_secs(105)).expect("the probe");
        assert!(probe.is_probe());
        assert!(
            b.permits(Timestamp::from_secs(105)).is_none(),
            "only one probe at a time"
        );
        probe.failure(Timestamp::from_secs(105));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp::from_secs(110)
            }
        );
        b.permits(Timestamp::from_secs(110)).expect("the next probe").success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_dropped_probe_counts_as_failed_and_the_next_cool_down_brings_another() {
        // GIVEN an open breaker whose cool-down has passed
        let clock = ManualClock::new(Timestamp::from_secs(100));
        let b = breaker();
        open(&b, clock.now());
        clock.advance(Duration::from_secs(5));
        // WHEN the probe is dropped without a report (its client went away)
        drop(b.permits(clock.now()).expect("the probe"));
        // THEN the breaker is open again, not half-open for good, and probes after the cool-down
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        clock.advance(Duration::from_secs(5) + BUDGET);
        let probe = b.permits(clock.now()).expect("a new probe");
        assert!(probe.is_probe());
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn a_probe_that_never_finishes_fails_at_its_deadline_and_its_late_success_is_ignored() {
        // GIVEN a probe that is out and never reports
        let clock = ManualClock::new(Timestamp::from_secs(100));
        let b = breaker();
        open(&b, clock.now());
        clock.advance(Duration::from_secs(5));
        let stuck = b.permits(clock.now()).expect("the probe");
        // WHEN its deadline passes THEN it has failed: open for a cool-down from the deadline
        clock.advance(BUDGET);
        assert!(b.permits(clock.now()).is_none());
        let deadline = Timestamp::from_secs(105).saturating_add(BUDGET);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: deadline.saturating_add(Duration::from_secs(5))
            }
        );
        // WHEN it finally succeeds THEN that changes nothing: it counted as failed
        stuck.success();
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        // AND the next cool-down lets a new probe close the breaker
        clock.advance(Duration::from_secs(5));
        b.permits(clock.now()).expect("a new probe").success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }

    #[test]
    fn calls_from_before_the_breaker_opened_do_not_decide_the_probe() {
        let clock = ManualClock::new(Timestamp::from_secs(100));
        let b = breaker();
        let slow = b.permits(clock.now()).expect("closed");
        open(&b, clock.now());
        clock.advance(Duration::from_secs(5));
        let probe = b.permits(clock.now()).expect("the probe");
        slow.success();
        assert!(matches!(b.state(), BreakerState::HalfOpen { .. }));
        probe.failure(clock.now());
        assert!(matches!(b.state(), BreakerState::Open { .. }));
    }

    #[tokio::test]
    async fn a_probe_future_dropped_mid_call_reopens_the_breaker() {
        // GIVEN an open breaker past its cool-down
        let clock = ManualClock::new(Timestamp::from_secs(100));
        let b = breaker();
        open(&b, clock.now());
        clock.advance(Duration::from_secs(5));
        // WHEN the future making the probe is dropped while it waits for the store
        let probe = async {
            let call = b.permits(clock.now()).expect("the probe");
            std::future::pending::<()>().await;
            call.success();
        };
        let _ = tokio::time::timeout(Duration::from_millis(1), probe).await;
        // THEN the probe counted as failed and the breaker is open, not half-open
        assert!(matches!(b.state(), BreakerState::Open { .. }));
        clock.advance(Duration::from_secs(5) + BUDGET);
        assert!(b.permits(clock.now()).is_some_and(|c| c.is_probe()));
    }
}
