//! One decision from a tenant's state: the token bucket and both quotas, combined. Pure.
//!
//! Every store calls this, so they all answer alike; a store's only job is to apply the
//! admitted state change atomically.

use std::time::Duration;

use crate::clock::Timestamp;
use crate::decision::{Decision, RateStatus, Reason};
use crate::gcra::Outcome;
use crate::policy::Limits;
use crate::quota::{Period, QuotaStatus};

/// What a tenant's state holds for one request's limits: the TAT of the bucket the request
/// draws from, and the current period's quota counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    pub tat: Option<Timestamp>,
    pub daily_used: u64,
    pub monthly_used: u64,
}

/// The decision and, when admitted, the state to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub decision: Decision,
    /// `Some` iff admitted: the state after this request.
    pub next: Option<State>,
}

/// Decides a request of `weight` units at `now` against `state`.
pub fn evaluate(limits: &Limits, state: &State, now: Timestamp, weight: u32) -> Evaluation {
    let n = u64::from(weight);
    let mut refusal: Option<(Reason, Duration)> = None;

    let bucket = limits
        .bucket
        .as_ref()
        .map(|(_, b)| (b, b.check(state.tat, now, weight)));
    let mut next_tat = state.tat;
    let rate = bucket.map(|(b, outcome)| match outcome {
        Outcome::Allow {
            tat,
            remaining,
            reset_after,
        } => {
            next_tat = Some(tat);
            rate_status(b.burst(), remaining, reset_after, b.window())
        }
        Outcome::Deny {
            retry_after,
            remaining,
            reset_after,
        } => {
            refuse(&mut refusal, Reason::Rate, retry_after);
            rate_status(b.burst(), remaining, reset_after, b.window())
        }
    });

    let mut quota = |limit: Option<u64>, used: u64, period: Period, reason: Reason| {
        limit.map(|limit| {
            let status = QuotaStatus::new(period, limit, used, now);
            if !status.admits(n) {
                refuse(&mut refusal, reason, status.reset_after);
            }
            status
        })
    };
    let daily = quota(limits.daily, state.daily_used, Period::Day, Reason::DailyQuota);
    let monthly = quota(limits.monthly, state.monthly_used, Period::Month, Reason::MonthlyQuota);

    if let Some((reason, retry_after)) = refusal {
        return Evaluation {
            decision: Decision {
                allowed: false,
                reason: Some(reason),
                retry_after: Some(retry_after),
                rate,
                daily,
                monthly,
            },
            next: None,
        };
    }
    let next = State {
        tat: next_tat,
        daily_used: state.daily_used + n,
        monthly_used: state.monthly_used + n,
    };
    Evaluation {
        decision: admitted(limits, &next, now),
        next: Some(next),
    }
}

/// The decision for a request that was admitted and left the tenant in state `after`.
pub fn admitted(limits: &Limits, after: &State, now: Timestamp) -> Decision {
    let rate = limits.bucket.as_ref().map(|(_, b)| {
        let ahead = after.tat.map_or(Duration::ZERO, |t| t.saturating_since(now));
        let free = b.capacity().saturating_sub(crate::clock::duration_nanos(ahead)) / b.interval();
        rate_status(b.burst(), u32::try_from(free).unwrap_or(u32::MAX), ahead, b.window())
    });
    let quota = |limit: Option<u64>, used, period| limit.map(|l| QuotaStatus::new(period, l, used, now));
    Decision {
        allowed: true,
        reason: None,
        retry_after: None,
        rate,
        daily: quota(limits.daily, after.daily_used, Period::Day),
        monthly: quota(limits.monthly, after.monthly_used, Period::Month),
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
    use crate::gcra::Bucket;
    use crate::policy::BucketId;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn limits(rate: f64, burst: u32, daily: Option<u64>, monthly: Option<u64>) -> Limits {
        Limits {
            bucket: Some((BucketId::Plan, Bucket::per_second(rate, burst))),
            daily,
            monthly,
        }
    }

    #[test]
    fn admitted_request_advances_bucket_and_counters() {
        let l = limits(1.0, 5, Some(100), Some(1000));
        let e = evaluate(&l, &State::default(), NOW, 2);
        let next = e.next.expect("admitted");
        assert_eq!(next.daily_used, 2);
        assert_eq!(next.monthly_used, 2);
        assert_eq!(next.tat, Some(NOW.saturating_add(Duration::from_secs(2))));
        assert_eq!(e.decision.rate.map(|r| r.remaining), Some(3));
        assert_eq!(e.decision.daily.map(|q| q.remaining), Some(98));
        assert_eq!(e.decision, admitted(&l, &next, NOW));
    }

    #[test]
    fn quota_refusal_waits_until_the_period_ends() {
        let l = limits(100.0, 100, Some(10), None);
        let state = State {
            daily_used: 10,
            ..State::default()
        };
        let e = evaluate(&l, &state, NOW, 1);
        assert_eq!(e.next, None);
        assert_eq!(e.decision.reason, Some(Reason::DailyQuota));
        assert_eq!(e.decision.retry_after, Some(Period::Day.reset_after(NOW)));
    }

    #[test]
    fn longest_wait_wins_when_several_limits_refuse() {
        let l = limits(1.0, 1, Some(100), Some(5));
        let state = State {
            tat: Some(NOW.saturating_add(Duration::from_secs(1))),
            daily_used: 5,
            monthly_used: 5,
        };
        let e = evaluate(&l, &state, NOW, 1);
        assert_eq!(e.decision.reason, Some(Reason::MonthlyQuota));
    }

    #[test]
    fn unlimited_always_admits_and_still_counts() {
        let e = evaluate(&Limits::UNLIMITED, &State::default(), NOW, 3);
        assert!(e.decision.allowed);
        assert_eq!(e.next.map(|s| s.daily_used), Some(3));
        assert_eq!(e.decision.rate, None);
    }
}
