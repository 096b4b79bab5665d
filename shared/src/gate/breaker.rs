//! A circuit breaker for the state store: after `failures` consecutive failures it opens, and
//! the fail mode answers at once instead of waiting out the time budget on every request. After
//! `cool_down` one request probes the store (half-open); its success closes the breaker.

use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Timestamp;

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
    Closed { failures: u32 },
    Open { until: Timestamp },
    HalfOpen,
}

#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: Mutex<BreakerState>,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker {
            config,
            state: Mutex::new(BreakerState::Closed { failures: 0 }),
        }
    }

    pub fn state(&self) -> BreakerState {
        *self.lock()
    }

    /// Whether a call to the store may be made now. While open, `false` until the cool-down
    /// ends; then one call is let through as the probe.
    pub fn permits(&self, now: Timestamp) -> bool {
        let mut s = self.lock();
        match *s {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now >= until => {
                *s = BreakerState::HalfOpen;
                true
            }
            BreakerState::Open { .. } | BreakerState::HalfOpen => false,
        }
    }

    pub fn success(&self) {
        *self.lock() = BreakerState::Closed { failures: 0 };
    }

    pub fn failure(&self, now: Timestamp) {
        let mut s = self.lock();
        let open = BreakerState::Open {
            until: now.saturating_add(self.config.cool_down),
        };
        *s = match *s {
            BreakerState::Closed { failures } if failures + 1 < self.config.failures => {
                BreakerState::Closed { failures: failures + 1 }
            }
            _ => open,
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BreakerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_recovers_through_a_probe() {
        let b = Breaker::new(BreakerConfig {
            failures: 3,
            cool_down: Duration::from_secs(5),
        });
        let t0 = Timestamp::from_secs(100);
        b.failure(t0);
        b.success();
        b.failure(t0);
        b.failure(t0);
        assert!(b.permits(t0), "two consecutive failures keep it closed");
        b.failure(t0);
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp::from_secs(105)
            }
        );
        assert!(!b.permits(Timestamp::from_secs(104)));
        assert!(b.permits(Timestamp::from_secs(105)), "the probe");
        assert!(!b.permits(Timestamp::from_secs(105)), "only one probe at a time");
        b.failure(Timestamp::from_secs(105));
        assert_eq!(
            b.state(),
            BreakerState::Open {
                until: Timestamp::from_secs(110)
            }
        );
        assert!(b.permits(Timestamp::from_secs(110)));
        b.success();
        assert_eq!(b.state(), BreakerState::Closed { failures: 0 });
    }
}
