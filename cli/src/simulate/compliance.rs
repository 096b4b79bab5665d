//! Did a store or gateway admit more than the policy permits? Checked from what was observed, the
//! way history checkers do: every admitted request happened somewhere between its send and its
//! answer, and whatever order the limiter applied them in, the GCRA bound holds for any set of
//! admitted requests:
//!
//! `units × T ≤ capacity + (last answer − first send)`, with `T` the emission interval and
//! `capacity = burst × T`.
//!
//! Quotas: the units admitted in each period of a quota's calendar (a day, week or month in its
//! zone, with its exact boundaries, DST included) never exceed the quota.

use std::collections::BTreeMap;

use tollgate::engine::clock::Timestamp;
use tollgate::engine::gcra::Bucket;
use tollgate::engine::quota::{Calendar, Counter, reference};

/// One admitted request as seen from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub sent: Timestamp,
    pub answered: Timestamp,
    pub weight: u32,
}

/// Units admitted beyond the bucket's bound, in the worst window (0 when exact).
///
/// Windows start at a send and end at the latest answer so far, in send order: O(n), and never
/// a false alarm (answers are taken as late as they could have been).
pub fn bucket_excess(bucket: &Bucket, admitted: &[Admitted]) -> u64 {
    // Nothing admitted (a tenant refused throughout, e.g. shed) is never too much.
    if admitted.is_empty() {
        return 0;
    }
    let mut sorted = admitted.to_vec();
    sorted.sort_by_key(|a| a.sent);
    let t = i128::from(bucket.interval());
    let capacity = i128::from(bucket.capacity());
    let (mut units, mut latest) = (0i128, i128::MIN);
    // min over i ≤ j of (units before i) × T − sent_i
    let mut best_start = i128::MAX;
    let mut worst = i128::MIN;
    for a in &sorted {
        best_start = best_start.min(units * t - i128::from(a.sent.as_nanos()));
        units += i128::from(a.weight);
        latest = latest.max(i128::from(a.answered.as_nanos()));
        worst = worst.max(units * t - latest - best_start);
    }
    let excess = worst - capacity;
    if excess <= 0 || t == 0 {
        0
    } else {
        u64::try_from((excess + t - 1) / t).unwrap_or(u64::MAX)
    }
}

/// Units admitted in each period of `calendar`, by the period an admission was answered in,
/// found by `quota::reference` (jiff's local dates), not by the calendar the store counted with.
pub fn per_period(calendar: &Calendar, admitted: &[Admitted]) -> BTreeMap<Counter, u64> {
    let mut used: BTreeMap<Counter, u64> = BTreeMap::new();
    for a in admitted {
        *used.entry(reference::counter(calendar, a.answered)).or_default() += u64::from(a.weight);
    }
    used
}

/// Units admitted beyond `quota` per period of `calendar` (summed over periods).
pub fn quota_excess(calendar: &Calendar, quota: u64, admitted: &[Admitted]) -> u64 {
    per_period(calendar, admitted)
        .values()
        .map(|u| u.saturating_sub(quota))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T0: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn at(ms: u64) -> Admitted {
        let t = T0.saturating_add(Duration::from_millis(ms));
        Admitted {
            sent: t,
            answered: t,
            weight: 1,
        }
    }

    #[test]
    fn a_burst_then_the_rate_is_exact() {
        // GIVEN 1/s with burst 5: five at once, then one per second
        let bucket = Bucket::per_second(1.0, 5);
        let mut seen: Vec<Admitted> = (0..5).map(|_| at(0)).collect();
        seen.extend((1..=3).map(|s| at(s * 1000)));
        assert_eq!(bucket_excess(&bucket, &seen), 0);
        // WHEN one more is admitted in the same second THEN it is one unit too many
        seen.push(at(3000));
        assert_eq!(bucket_excess(&bucket, &seen), 1);
    }

    #[test]
    fn nothing_admitted_is_no_excess() {
        // GIVEN a tenant with no admission at all (every request shed) THEN no excess
        assert_eq!(bucket_excess(&Bucket::per_second(1.0, 5), &[]), 0);
    }

    #[test]
    fn order_of_observation_does_not_matter() {
        let bucket = Bucket::per_second(10.0, 2);
        let mut seen: Vec<Admitted> = (0..20).map(|i| at(i * 100)).collect();
        seen.reverse();
        assert_eq!(bucket_excess(&bucket, &seen), 0);
        seen.push(at(50));
        seen.push(at(60));
        assert_eq!(bucket_excess(&bucket, &seen), 1);
    }

    #[test]
    fn slow_answers_are_given_the_benefit_of_the_doubt() {
        // GIVEN six requests sent at once, answered over 1.5 s: the server may have seen the
        // sixth a second later
        let bucket = Bucket::per_second(1.0, 5);
        let mut seen: Vec<Admitted> = (0..5).map(|_| at(0)).collect();
        seen.push(Admitted {
            answered: T0.saturating_add(Duration::from_millis(1500)),
            ..at(0)
        });
        assert_eq!(bucket_excess(&bucket, &seen), 0);
    }

    #[test]
    fn quota_excess_is_counted_per_utc_day() {
        let day = 86_400_000;
        let seen = [at(0), at(1), at(2), at(day), at(day + 1)];
        let utc = Calendar::utc(tollgate::engine::quota::Period::Day);
        assert_eq!(quota_excess(&utc, 2, &seen), 1);
        assert_eq!(quota_excess(&utc, 3, &seen), 0);
    }

    #[test]
    fn quota_periods_follow_the_zone_across_a_dst_change() {
        // GIVEN a day quota of 2 in New York
        let ny = tollgate::engine::quota::zone("America/New_York").expect("zone");
        let day = Calendar::new(tollgate::engine::quota::Period::Day, ny, 0, 1);
        let t = |secs: u64| Admitted {
            sent: Timestamp::from_secs(secs),
            answered: Timestamp::from_secs(secs),
            weight: 1,
        };
        // 2027-03-14T04:30Z (23:30 EST the 13th) and a day of seconds later, 2027-03-15T04:30Z
        // (00:30 EDT the 15th: the 14th had 23 hours)
        let a = 1_804_998_600u64;
        let b = a + 86_400;
        let seen = [t(a), t(a + 1), t(b), t(b + 1)];
        // THEN the pairs fall in local days two apart (the 13th and the 15th): nothing over
        assert_eq!(quota_excess(&day, 2, &seen), 0);
        let days: Vec<String> = per_period(&day, &seen).keys().map(|c| day.name(*c)).collect();
        assert_eq!(days, ["2027-03-13", "2027-03-15"]);
        // AND a third request in the 15th's 23-hour predecessor's successor is one too many
        assert_eq!(quota_excess(&day, 2, &[t(b), t(b + 1), t(b + 20 * 3600)]), 1);
    }
}
