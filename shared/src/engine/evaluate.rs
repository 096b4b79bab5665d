//! One decision from a tenant's state: the token bucket and the plan's quotas, combined. Pure.
//!
//! Every store calls this, so they all answer alike; a store's only job is to apply the
//! admitted state change atomically.

use std::time::Duration;

use crate::engine::clock::Timestamp;
use crate::engine::decision::{Decision, RateStatus, Reason};
use crate::engine::gcra::BucketOutcome;
use crate::engine::policy::Limits;
use crate::engine::quota::{Period, QuotaStatus};

/// What a tenant's state holds for one request's limits: the TAT of the bucket the request
/// draws from, and the units used in each quota's current period (by `Period::index`; the
/// counters of period kinds the plan has no quota for count too, as usage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub tat: Option<Timestamp>,
    pub used: [u64; 3],
}

impl State {
    pub fn used(&self, period: Period) -> u64 {
        self.used[period.index()]
    }
}

/// The decision and, when admitted, the state to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// `Some` iff admitted: the state after this request.
    pub next: Option<State>,
}

/// Decides a request of `weight` units at `now` against `state`.
// Inlined: a store then builds the decision where it returns it, not in a copy.
#[inline]
pub fn evaluate(limits: &Limits, state: &State, now: Timestamp, weight: u32) -> Evaluation {
    let n = u64::from(weight);
    let mut refusal: Option<(Reason, Duration)> = None;

    let bucket = limits
        .bucket
        .as_ref()
        .map(|(_, b)| (b, b.check(state.tat, now, weight)));
    let mut next_tat = state.tat;
    let rate = bucket.map(|(b, outcome)| match outcome {
        BucketOutcome::Allow {
            tat,
            remaining,
            reset_after,
        } => {
            next_tat = Some(tat);
            rate_status(b.burst(), remaining, reset_after, b.window())
        }
        BucketOutcome::Deny {
            retry_after,
            remaining,
            reset_after,
        } => {
            refuse(&mut refusal, Reason::Rate, retry_after);
            rate_status(b.burst(), remaining, reset_after, b.window())
        }
    });

    let mut quota = |slot: Period| {
        limits.quota(slot).map(|q| {
            let period = q.calendar.period();
            let status = QuotaStatus::new(q, state.used(period), now);
            if !status.admits(n) {
                refuse(&mut refusal, Reason::quota(period), status.reset_after);
            }
            status
        })
    };
    // One at a time, not through an array: a decision is built without copying three empty
    // statuses around.
    let (daily, weekly, monthly) = (quota(Period::Day), quota(Period::Week), quota(Period::Month));

    if let Some((reason, retry_after)) = refusal {
        return Evaluation {
            decision: Decision {
                allowed: false,
                reason: Some(reason),
                retry_after: Some(retry_after),
                rate,
                daily,
                weekly,
                monthly,
            },
            next: None,
        };
    }
    // Saturating: unlimited counters of a long-lived tenant, or a hand-edited item, must not
    // wrap (quotas are at most 15 digits, so a limited counter never gets near).
    let next = State {
        tat: next_tat,
        used: state.used.map(|u| u.saturating_add(n)),
    };
    // What `admitted` would say, from what is already known: the bucket's outcome is its rate
    // status after this request, and each quota's period is the one just found.
    let after = |q: Option<QuotaStatus>, p: Period| q.map(|q| q.with_used(next.used(p)));
    Evaluation {
        decision: Decision {
            allowed: true,
            reason: None,
            retry_after: None,
            rate,
            daily: after(daily, Period::Day),
            weekly: after(weekly, Period::Week),
            monthly: after(monthly, Period::Month),
        },
        next: Some(next),
    }
}

/// The decision for a request that was admitted and left the tenant in state `after`.
pub fn admitted(limits: &Limits, after: &State, now: Timestamp) -> Decision {
    let rate = limits.bucket.as_ref().map(|(_, b)| {
        let ahead = after.tat.map_or(Duration::ZERO, |t| t.saturating_since(now));
        let free = b.capacity().saturating_sub(crate::engine::clock::duration_nanos(ahead)) / b.interval();
        rate_status(b.burst(), u32::try_from(free).unwrap_or(u32::MAX), ahead, b.window())
    });
    let quota = |p: Period| limits.quota(p).map(|q| QuotaStatus::new(q, after.used(p), now));
    Decision {
        allowed: true,
        reason: None,
        retry_after: None,
        rate,
        daily: quota(Period::Day),
        weekly: quota(Period::Week),
        monthly: quota(Period::Month),
    }
}

/// Keeps the refusal with the longest wait: it is the one that really bites, as retrying
/// earlier is futile.
fn refuse(current: &mut Option<(Reason, Duration)>, reason: Reason, wait: Duration) {
    if current.is_none_or(|(_, longest)| wait > longest) {
        *current = Some((reason, wait));
    }
}

fn rate_status(limit: u32, remaining: u32, reset_after: Duration, window: Duration) -> RateStatus {
    RateStatus {
        limit,
        remaining,
        reset_after,
        window,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gcra::Bucket;
    use crate::engine::policy::BucketId;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn limits(rate: f64, burst: u32, daily: Option<u64>, monthly: Option<u64>) -> Limits {
        Limits::utc(Some((BucketId::Plan, Bucket::per_second(rate, burst))), daily, monthly)
    }

    #[test]
    fn admitted_request_advances_bucket_and_counters() {
        let l = limits(1.0, 5, Some(100), Some(1000));
        let e = evaluate(&l, &State::default(), NOW, 2);
        let next = e.next.expect("admitted");
        assert_eq!(next.used, [2, 2, 2]);
        assert_eq!(next.tat, Some(NOW.saturating_add(Duration::from_secs(2))));
        assert_eq!(e.decision.rate.map(|r| r.remaining), Some(3));
        assert_eq!(e.decision.daily.map(|q| q.remaining), Some(98));
        assert_eq!(e.decision, admitted(&l, &next, NOW));
    }

    #[test]
    fn quota_refusal_waits_until_the_period_ends() {
        let l = limits(100.0, 100, Some(10), None);
        let state = State {
            used: [10, 0, 0],
            ..State::default()
        };
        let e = evaluate(&l, &state, NOW, 1);
        assert_eq!(e.next, None);
        assert_eq!(e.decision.reason, Some(Reason::DailyQuota));
        let day = crate::engine::quota::Calendar::utc(Period::Day);
        assert_eq!(e.decision.retry_after, Some(day.reset_after(NOW)));
    }

    #[test]
    fn longest_wait_wins_when_several_limits_refuse() {
        let l = limits(1.0, 1, Some(100), Some(5));
        let state = State {
            tat: Some(NOW.saturating_add(Duration::from_secs(1))),
            used: [5, 5, 5],
        };
        let e = evaluate(&l, &state, NOW, 1);
        assert_eq!(e.decision.reason, Some(Reason::MonthlyQuota));
    }

    #[test]
    fn unlimited_always_admits_and_still_counts() {
        let e = evaluate(&Limits::UNLIMITED, &State::default(), NOW, 3);
        assert!(e.decision.allowed);
        assert_eq!(e.next.map(|s| s.used(Period::Day)), Some(3));
        assert_eq!(e.decision.rate, None);
    }

    mod accepted_range {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;
        use crate::engine::policy::{MAX_QUOTA, MAX_WINDOW_SECS, Plan, PlanSpec};
        use crate::engine::quota::{Calendar, Counter};

        const NS: u64 = 1_000_000_000;

        /// Any plan `Plan::new` accepts, drawn log-uniformly over the whole accepted range: rates
        /// from one per 366 days to 10^6/s, bursts up to what fits the longest window, quotas up
        /// to 15 digits, weights up to the smallest limit.
        fn accepted_plan() -> impl Strategy<Value = Plan> {
            (
                -7.49f64..6.0,
                0f64..9.7,
                prop::option::of(0f64..15.0),
                prop::option::of(0f64..15.0),
                0f64..1.0,
            )
                .prop_map(|(rate_exp, burst_exp, daily_exp, monthly_exp, weight_frac)| {
                    let rate = 10f64.powf(rate_exp);
                    let interval = (1e9 / rate).ceil() as u64;
                    let max_burst = (MAX_WINDOW_SECS * NS / interval).min(u64::from(u32::MAX));
                    let burst = (10f64.powf(burst_exp) as u64).clamp(1, max_burst) as u32;
                    let quota = |e: Option<f64>| e.map(|e| (10f64.powf(e) as i64).clamp(1, MAX_QUOTA));
                    let (mut daily, mut monthly) = (quota(daily_exp), quota(monthly_exp));
                    if let (Some(d), Some(m)) = (daily, monthly)
                        && d > m
                    {
                        (daily, monthly) = (Some(m), Some(d));
                    }
                    let smallest = [Some(i64::from(burst)), daily, monthly].into_iter().flatten().min();
                    let max_weight = smallest.unwrap_or(1).min(i64::from(u32::MAX)) as f64;
                    let weight = (max_weight.powf(weight_frac) as u32).max(1);
                    let mut spec = PlanSpec::unlimited();
                    spec.rate = Some(rate);
                    spec.burst = Some(burst);
                    spec.daily_quota = daily;
                    spec.monthly_quota = monthly;
                    spec.weights.insert("POST".to_owned(), weight);
                    Plan::new("p", spec).expect("drawn inside the accepted range")
                })
        }

        /// Gaps between requests: at one instant, around the emission interval, or days apart
        /// (crossing quota periods).
        fn gaps() -> impl Strategy<Value = Vec<(u8, f64, bool)>> {
            prop::collection::vec((0u8..4, 0f64..3.0, any::<bool>()), 1..120)
        }

        /// The RFC 8941 check of the structured headers, and whole non-negative numbers of at most
        /// 15 digits for the others.
        fn assert_valid_headers(d: &Decision) -> Result<(), TestCaseError> {
            for (name, value) in d.headers() {
                match name {
                    "RateLimit-Policy" | "RateLimit" => {
                        let parsed = sfv::Parser::new(&value).parse::<sfv::List>();
                        prop_assert!(
                            parsed.is_ok(),
                            "{name}: {value} is not a Structured Field list: {parsed:?}"
                        );
                    }
                    _ => prop_assert!(
                        !value.is_empty() && value.len() <= 15 && value.bytes().all(|b| b.is_ascii_digit()),
                        "{name}: {value}"
                    ),
                }
            }
            if let Some(h) = d.headline() {
                prop_assert!(h.remaining <= h.limit, "{h:?}");
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// Every accepted plan is honoured: admitted units over any span never exceed
            /// `burst + rate × elapsed`, nor a quota within its period; the first request sees
            /// `burst - weight` remaining; a refusal's wait always suffices; headers stay valid.
            #[test]
            fn every_accepted_plan_is_honoured(
                plan in accepted_plan(),
                start in 1_700_000_000u64..2_000_000_000,
                steps in gaps(),
            ) {
                let limits = plan.limits().clone();
                let (_, bucket) = limits.bucket.clone().expect("drawn with a rate");
                let interval = bucket.interval();
                prop_assert!(interval as f64 >= 1e9 / plan.spec().rate.expect("rate"), "faster than declared");
                let heavy = plan.weight("POST");
                let mut now = start * NS;
                let mut state = State::default();
                let mut admitted: Vec<(u64, u64)> = Vec::new();
                let mut per_period: HashMap<Counter, u64> = HashMap::new();
                let calendars: Vec<Calendar> = Period::ALL
                    .iter()
                    .map(|p| limits.quota(*p).map_or_else(|| Calendar::utc(*p), |q| q.calendar.clone()))
                    .collect();
                let roll = |state: &mut State, before: u64, after: u64| {
                    let (b, a) = (Timestamp::from_nanos(before), Timestamp::from_nanos(after));
                    for (used, c) in state.used.iter_mut().zip(&calendars) {
                        if c.counter(b) != c.counter(a) {
                            *used = 0;
                        }
                    }
                };
                for (i, (kind, frac, is_heavy)) in steps.into_iter().enumerate() {
                    let gap = match kind {
                        0 => 0,
                        1 | 2 => (interval as f64 * frac) as u64,
                        _ => (frac * 20.0 * 86_400.0) as u64 * NS,
                    };
                    roll(&mut state, now, now + gap);
                    now += gap;
                    let n = if is_heavy { heavy } else { 1 };
                    let at = Timestamp::from_nanos(now);
                    let e = evaluate(&limits, &state, at, n);
                    assert_valid_headers(&e.decision)?;
                    match e.next {
                        Some(next) => {
                            prop_assert_eq!(&e.decision, &super::admitted(&limits, &next, at));
                            if i == 0 {
                                let r = e.decision.rate.expect("rate status");
                                prop_assert_eq!(r.remaining, bucket.burst() - n);
                            }
                            state = next;
                            admitted.push((now, u64::from(n)));
                            // Grouped by the reference, not by the counters the state rolled on.
                            for c in calendars.iter().map(|c| crate::engine::quota::reference::counter(c, at)) {
                                *per_period.entry(c).or_default() += u64::from(n);
                            }
                        }
                        None => {
                            let wait = e.decision.retry_after.expect("a refusal says how long to wait");
                            prop_assert!(wait > Duration::ZERO);
                            let later = now + crate::engine::clock::duration_nanos(wait);
                            let mut rolled = state;
                            roll(&mut rolled, now, later);
                            let retried = evaluate(&limits, &rolled, Timestamp::from_nanos(later), n);
                            prop_assert!(retried.decision.allowed, "waiting {wait:?} did not suffice: {:?}", e.decision);
                        }
                    }
                }
                for (c, used) in per_period {
                    let limit = limits.limit(c.period());
                    prop_assert!(limit.is_none_or(|l| used <= l), "{c}: {used} > {limit:?}");
                }
                let burst = u128::from(bucket.burst());
                for i in 0..admitted.len() {
                    let mut units = 0u128;
                    for &(at, n) in &admitted[i..] {
                        units += u128::from(n);
                        let elapsed = u128::from(at - admitted[i].0);
                        prop_assert!(units * u128::from(interval) <= burst * u128::from(interval) + elapsed,
                            "{units} units in {elapsed} ns with burst {burst}, interval {interval}");
                    }
                }
            }
        }
    }
}
