//! The generic cell rate algorithm over one number: the theoretical arrival time (TAT).
//!
//! Pure: no IO, no clock reads. `now` and the previous TAT come in; an outcome goes out. A denied
//! request has no new TAT, so the caller has nothing to write.

use std::time::Duration;

use crate::engine::clock::Timestamp;

/// A token bucket expressed as an emission interval and a burst.
///
/// With `T = 1 / rate` and tolerance `tau = (burst - 1) * T`, a request of weight `n` at `now` is
/// admitted iff `max(tat, now) + n*T - now <= tau + T`, i.e. `<= burst * T`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    interval: u64,
    burst: u32,
}

/// What one check of a bucket says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketOutcome {
    /// Admitted: store `tat`. `remaining` units could still pass right now.
    Allow {
        tat: Timestamp,
        remaining: u32,
        reset_after: Duration,
    },
    /// Not admitted: keep the old TAT. The same request passes after `retry_after`.
    Deny {
        retry_after: Duration,
        remaining: u32,
        reset_after: Duration,
    },
}

impl Bucket {
    /// `interval` is the emission interval in nanoseconds (at least 1); `burst` at least 1.
    pub fn new(interval: u64, burst: u32) -> Self {
        Bucket {
            interval: interval.max(1),
            burst: burst.max(1),
        }
    }

    /// A bucket of `rate` units per second. Rates are validated by `policy`; this only rounds,
    /// up: a nanosecond more per request, so the bucket never runs faster than the declared rate.
    pub fn per_second(rate: f64, burst: u32) -> Self {
        let interval = (1e9 / rate).ceil();
        // `as` saturates for out-of-range floats and maps NaN to 0, which `new` lifts to 1.
        Bucket::new(interval as u64, burst)
    }

    pub fn interval(&self) -> u64 {
        self.interval
    }

    pub fn burst(&self) -> u32 {
        self.burst
    }

    /// `tau + T`: how far ahead of `now` the TAT may run.
    pub fn capacity(&self) -> u64 {
        self.interval.saturating_mul(u64::from(self.burst))
    }

    /// Time for an empty bucket to refill completely (the policy "window").
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.capacity())
    }

    /// Checks a request of weight `n` against the bucket whose TAT is `tat` (`None`: never used).
    pub fn check(&self, tat: Option<Timestamp>, now: Timestamp, n: u32) -> BucketOutcome {
        let now_ns = now.as_nanos();
        let base = tat.map_or(now_ns, |t| t.as_nanos().max(now_ns));
        let new_tat = base.saturating_add(self.interval.saturating_mul(u64::from(n)));
        let cap = self.capacity();
        let ahead = new_tat - now_ns;
        if ahead <= cap {
            BucketOutcome::Allow {
                tat: Timestamp::from_nanos(new_tat),
                remaining: self.units_free(ahead),
                reset_after: Duration::from_nanos(ahead),
            }
        } else {
            BucketOutcome::Deny {
                retry_after: Duration::from_nanos(ahead - cap),
                remaining: self.units_free(base - now_ns),
                reset_after: Duration::from_nanos(base - now_ns),
            }
        }
    }

    /// The TAT after admitting weight `n` at `now` on a bucket whose TAT is `tat`, without the
    /// admission check (used to predict the value a conditional write will produce).
    pub fn advance(&self, tat: Option<Timestamp>, now: Timestamp, n: u32) -> Timestamp {
        let base = tat.map_or(now, |t| t.max(now));
        Timestamp::from_nanos(
            base.as_nanos()
                .saturating_add(self.interval.saturating_mul(u64::from(n))),
        )
    }

    fn units_free(&self, ahead: u64) -> u32 {
        let free = self.capacity().saturating_sub(ahead) / self.interval;
        u32::try_from(free).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    fn t(secs_f: f64) -> Timestamp {
        Timestamp::from_nanos((secs_f * SEC as f64) as u64)
    }

    #[test]
    fn fresh_bucket_admits_exactly_burst_at_once() {
        let b = Bucket::per_second(1.0, 5);
        let mut tat = None;
        let now = t(100.0);
        for expected_remaining in (0..5).rev() {
            match b.check(tat, now, 1) {
                BucketOutcome::Allow {
                    tat: next, remaining, ..
                } => {
                    assert_eq!(remaining, expected_remaining);
                    tat = Some(next);
                }
                deny => panic!("expected allow, got {deny:?}"),
            }
        }
        assert_eq!(
            b.check(tat, now, 1),
            BucketOutcome::Deny {
                retry_after: Duration::from_secs(1),
                remaining: 0,
                reset_after: Duration::from_secs(5),
            }
        );
    }

    #[test]
    fn fractional_rate_is_a_longer_interval() {
        let b = Bucket::per_second(0.5, 1);
        let first = b.check(None, t(0.0), 1);
        let BucketOutcome::Allow { tat, .. } = first else {
            panic!("{first:?}")
        };
        assert!(matches!(b.check(Some(tat), t(1.999), 1), BucketOutcome::Deny { .. }));
        assert!(matches!(b.check(Some(tat), t(2.0), 1), BucketOutcome::Allow { .. }));
    }

    #[test]
    fn weight_consumes_several_units() {
        let b = Bucket::per_second(10.0, 10);
        let BucketOutcome::Allow { tat, remaining, .. } = b.check(None, t(0.0), 7) else {
            panic!()
        };
        assert_eq!(remaining, 3);
        match b.check(Some(tat), t(0.0), 4) {
            BucketOutcome::Deny {
                retry_after, remaining, ..
            } => {
                assert_eq!(remaining, 3);
                assert_eq!(retry_after, Duration::from_millis(100));
            }
            allow => panic!("{allow:?}"),
        }
    }

    #[test]
    fn idle_time_refills_but_never_beyond_burst() {
        let b = Bucket::per_second(100.0, 3);
        let BucketOutcome::Allow { tat, .. } = b.check(None, t(0.0), 3) else {
            panic!()
        };
        // An hour later only `burst` requests fit, not 360_000.
        let BucketOutcome::Allow { remaining, .. } = b.check(Some(tat), t(3600.0), 1) else {
            panic!()
        };
        assert_eq!(remaining, 2);
    }

    #[test]
    fn now_before_tat_from_another_clock_is_handled() {
        let b = Bucket::per_second(1.0, 2);
        // A TAT written by a container whose clock runs ahead: no underflow, no panic.
        let out = b.check(Some(t(50.0)), t(10.0), 1);
        assert!(matches!(out, BucketOutcome::Deny { .. }));
    }

    proptest! {
        /// Over any window of a request sequence, admitted units never exceed
        /// `burst + elapsed / T`, and a denied request leaves the state as it was.
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_elapsed(
            interval_ms in 1u64..2_000,
            burst in 1u32..50,
            steps in prop::collection::vec((0u64..3_000, 1u32..5), 1..200),
        ) {
            let b = Bucket::new(interval_ms * 1_000_000, burst);
            let mut tat = None;
            let mut now = 1_000 * SEC;
            let mut admitted: Vec<(u64, u32)> = Vec::new();
            for (gap_ms, n) in steps {
                now += gap_ms * 1_000_000;
                match b.check(tat, Timestamp::from_nanos(now), n) {
                    BucketOutcome::Allow { tat: next, .. } => {
                        tat = Some(next);
                        admitted.push((now, n));
                    }
                    BucketOutcome::Deny { retry_after, .. } => {
                        // Pure: a deny yields nothing to store, and waiting `retry_after` is enough.
                        let later = Timestamp::from_nanos(now).saturating_add(retry_after);
                        if n <= burst {
                            prop_assert!(
                                matches!(b.check(tat, later, n), BucketOutcome::Allow { .. }),
                                "waiting retry_after must suffice"
                            );
                        }
                    }
                }
            }
            for i in 0..admitted.len() {
                let mut units = 0u64;
                for &(at, n) in &admitted[i..] {
                    units += u64::from(n);
                    let elapsed = at - admitted[i].0;
                    let bound = u64::from(burst) + elapsed / b.interval();
                    prop_assert!(units <= bound, "{units} units in {elapsed} ns > {bound}");
                }
            }
        }

        /// A fresh bucket admits exactly `burst` single requests at one instant.
        #[test]
        fn admits_exactly_burst_at_one_instant(interval in 1u64..10_000_000_000, burst in 1u32..500) {
            let b = Bucket::new(interval, burst);
            let now = Timestamp::from_secs(1_000_000);
            let mut tat = None;
            let mut n = 0;
            while let BucketOutcome::Allow { tat: next, .. } = b.check(tat, now, 1) {
                tat = Some(next);
                n += 1;
                prop_assert!(n <= burst);
            }
            prop_assert_eq!(n, burst);
        }
    }
}
