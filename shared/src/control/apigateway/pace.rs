//! Pacing: API Gateway's management API allows about 10 requests a second for the whole account,
//! shared with the account's own tools, so a sync keeps to a stated share of it. A `Pace` gives
//! each call a start no earlier than `1 / calls_per_second` after the previous call's, read from
//! the injected clock; the wait itself is a `Pause` (Tokio's sleep when deployed; a test's pause
//! that moves a manual clock on, so pacing is checked without sleeping).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::engine::clock::{Clock, Timestamp};

/// The share of the account's ~10 requests a second the plan-sync function takes by default.
pub const DEFAULT_CALLS_PER_SECOND: f64 = 2.0;

/// Waiting for a duration.
#[async_trait]
pub trait Pause: Send + Sync + fmt::Debug {
    async fn pause(&self, d: Duration);
}

/// Tokio's sleep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sleep;

#[async_trait]
impl Pause for Sleep {
    async fn pause(&self, d: Duration) {
        tokio::time::sleep(d).await;
    }
}

/// At most `calls_per_second` calls a second, however many callers share it.
pub struct Pace {
    interval: Duration,
    clock: Arc<dyn Clock>,
    pause: Arc<dyn Pause>,
    /// When the next call may start; `None` before the first.
    next: Mutex<Option<Timestamp>>,
}

impl fmt::Debug for Pace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pace")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl Pace {
    /// A pace of `calls_per_second` (more than 0, finite), read from `clock`, waiting with `pause`.
    pub fn new(calls_per_second: f64, clock: Arc<dyn Clock>, pause: Arc<dyn Pause>) -> Result<Pace, String> {
        if !(calls_per_second.is_finite() && calls_per_second > 0.0) {
            return Err(format!("{calls_per_second} calls a second: a number above 0 is needed"));
        }
        Ok(Pace {
            interval: Duration::from_secs_f64(1.0 / calls_per_second),
            clock,
            pause,
            next: Mutex::new(None),
        })
    }

    /// The least time between two calls' starts.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The wait before a call that would start at `now`; the call's start is reserved (the next
    /// call's is an interval later).
    pub fn reserve(&self, now: Timestamp) -> Duration {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let start = next.map_or(now, |n| n.max(now));
        *next = Some(start.saturating_add(self.interval));
        start.saturating_since(now)
    }

    /// Waits for the next call's turn.
    pub async fn wait(&self) {
        let wait = self.reserve(self.clock.now());
        if !wait.is_zero() {
            self.pause.pause(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::clock::ManualClock;

    fn pace(rate: f64) -> Pace {
        let clock = Arc::new(ManualClock::new(Timestamp::from_secs(100)));
        Pace::new(rate, clock, Arc::new(Sleep)).expect("pace")
    }

    #[test]
    fn calls_at_one_instant_are_spread_an_interval_apart() {
        let p = pace(2.0);
        let now = Timestamp::from_secs(100);
        let waits: Vec<u128> = (0..4).map(|_| p.reserve(now).as_millis()).collect();
        assert_eq!(waits, vec![0, 500, 1000, 1500]);
    }

    #[test]
    fn a_call_after_a_quiet_spell_waits_for_nothing_and_the_budget_is_not_saved_up() {
        let p = pace(4.0);
        assert_eq!(p.reserve(Timestamp::from_secs(100)), Duration::ZERO);
        // 10 s later: no wait, and the next call at that instant waits a full interval
        let later = Timestamp::from_secs(110);
        assert_eq!(p.reserve(later), Duration::ZERO);
        assert_eq!(p.reserve(later), Duration::from_millis(250));
    }

    #[test]
    fn a_rate_that_is_not_a_positive_number_is_refused() {
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(Timestamp::EPOCH));
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Pace::new(rate, clock.clone(), Arc::new(Sleep)).is_err(), "{rate}");
        }
    }
}
