//! The answer to one request, as the authorizer, the CLI and the usage API consume it, and the
//! HTTP rate-limit headers it renders to.

use std::time::Duration;

use serde::Serialize;

use crate::engine::clock::ceil_secs;
use crate::engine::quota::{Period, QuotaStatus};

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Rate,
    DailyQuota,
    WeeklyQuota,
    MonthlyQuota,
    /// The plan's priority is below the shed level (`shed`): refused before the store, so no
    /// budget was consumed.
    Shed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::DailyQuota => "daily_quota",
            Reason::WeeklyQuota => "weekly_quota",
            Reason::MonthlyQuota => "monthly_quota",
            Reason::Shed => "shed",
        }
    }

    /// The refusal of a period kind's quota.
    pub fn quota(period: Period) -> Reason {
        match period {
            Period::Day => Reason::DailyQuota,
            Period::Week => Reason::WeeklyQuota,
            Period::Month => Reason::MonthlyQuota,
        }
    }

    /// The `RateLimit-Policy` item name this reason corresponds to.
    fn policy_name(self) -> &'static str {
        match self {
            Reason::Rate => "rate",
            Reason::DailyQuota => "day",
            Reason::WeeklyQuota => "week",
            Reason::MonthlyQuota => "month",
            // No budget was read: no limit is the headline.
            Reason::Shed => "shed",
        }
    }
}

/// The token bucket's side of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RateStatus {
    /// The burst: requests that fit in a full bucket.
    pub limit: u32,
    pub remaining: u32,
    /// Until the bucket is full again.
    #[serde(with = "crate::engine::clock::secs_ceil")]
    pub reset_after: Duration,
    /// Time for an empty bucket to refill: the policy window.
    #[serde(with = "crate::engine::clock::secs_ceil")]
    pub window: Duration,
}

/// One decision. Quota figures are after this request when it was admitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub allowed: bool,
    /// The limit that refused the request (the one with the longest wait when several did).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "crate::engine::clock::opt_secs_ceil"
    )]
    pub retry_after: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate: Option<RateStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daily: Option<QuotaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekly: Option<QuotaStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub monthly: Option<QuotaStatus>,
}

/// The limit closest to refusing, summarised for `RateLimit` and `X-RateLimit-*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Headline {
    pub name: &'static str,
    pub limit: u64,
    pub remaining: u64,
    pub reset_after: Duration,
}

impl Decision {
    /// Every limit of the decision, summarised: the rate, then each quota, days first.
    fn summaries(&self) -> impl Iterator<Item = Headline> + '_ {
        let rate = self.rate.map(|r| Headline {
            name: "rate",
            limit: u64::from(r.limit),
            remaining: u64::from(r.remaining),
            reset_after: r.reset_after,
        });
        let quotas = self.quotas().map(|q| Headline {
            name: q.period.as_str(),
            limit: q.limit,
            remaining: q.remaining,
            reset_after: q.reset_after,
        });
        rate.into_iter().chain(quotas)
    }

    /// The limit a client should watch: on a refusal the one that bit, otherwise the one with the
    /// fewest requests left. `None` for a plan without limits.
    pub fn headline(&self) -> Option<Headline> {
        let mut candidates = self.summaries();
        match self.reason {
            Some(reason) => candidates.find(|h| h.name == reason.policy_name()),
            None => candidates.min_by_key(|h| h.remaining),
        }
    }

    /// The quotas' states, days first.
    pub fn quotas(&self) -> impl Iterator<Item = QuotaStatus> {
        [self.daily, self.weekly, self.monthly].into_iter().flatten()
    }

    /// HTTP response headers: `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers),
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` (seconds until reset),
    /// and `Retry-After` on a refusal. Seconds are rounded up so a client never retries early.
    /// A quota's window is its current period's true length (23 or 25 hours on a DST day, 28 to
    /// 31 days for a month), and its reset the end of that period in the quota's zone.
    /// `RateLimit` has an item per limit, the headline first; `X-RateLimit-*` is the headline.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(6);
        let mut policies = Vec::with_capacity(4);
        if let Some(r) = self.rate {
            policies.push(format!("\"rate\";q={};w={}", r.limit, ceil_secs(r.window).max(1)));
        }
        for q in self.quotas() {
            let name = q.period.as_str();
            policies.push(format!("\"{name}\";q={};w={}", q.limit, ceil_secs(q.window).max(1)));
        }
        if !policies.is_empty() {
            out.push(("RateLimit-Policy", policies.join(", ")));
        }
        if let Some(h) = self.headline() {
            let reset = ceil_secs(h.reset_after);
            let item = |h: &Headline| format!("\"{}\";r={};t={}", h.name, h.remaining, ceil_secs(h.reset_after));
            let others = self.summaries().filter(|o| o.name != h.name).map(|o| item(&o));
            let items: Vec<String> = std::iter::once(item(&h)).chain(others).collect();
            out.push(("RateLimit", items.join(", ")));
            out.push(("X-RateLimit-Limit", h.limit.to_string()));
            out.push(("X-RateLimit-Remaining", h.remaining.to_string()));
            out.push(("X-RateLimit-Reset", reset.to_string()));
        }
        if let Some(wait) = self.retry_after {
            out.push(("Retry-After", ceil_secs(wait).max(1).to_string()));
        }
        out
    }
}

impl Decision {
    /// A shed refusal: no limit was consulted, so it carries only its wait. Its headers are
    /// `Retry-After` alone: the remaining budget is unknown without the store, and unchanged.
    pub fn shed(retry_after: Duration) -> Decision {
        Decision {
            allowed: false,
            reason: Some(Reason::Shed),
            retry_after: Some(retry_after),
            rate: None,
            daily: None,
            weekly: None,
            monthly: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(period: Period, limit: u64, used: u64, reset: u64) -> QuotaStatus {
        QuotaStatus {
            period,
            limit,
            used,
            remaining: limit - used,
            reset_after: Duration::from_secs(reset),
            counter: crate::engine::quota::Counter::of(period, 0),
            window: Duration::from_secs(match period {
                Period::Day => 86_400,
                Period::Week => 604_800,
                Period::Month => 2_592_000,
            }),
        }
    }

    #[test]
    fn throttled_by_rate_renders_every_header() {
        let d = Decision {
            allowed: false,
            reason: Some(Reason::Rate),
            retry_after: Some(Duration::from_millis(1200)),
            rate: Some(RateStatus {
                limit: 10,
                remaining: 0,
                reset_after: Duration::from_millis(9500),
                window: Duration::from_secs(10),
            }),
            daily: Some(quota(Period::Day, 1000, 3, 3600)),
            weekly: None,
            monthly: None,
        };
        assert_eq!(
            d.headers(),
            vec![
                (
                    "RateLimit-Policy",
                    "\"rate\";q=10;w=10, \"day\";q=1000;w=86400".to_owned()
                ),
                ("RateLimit", "\"rate\";r=0;t=10, \"day\";r=997;t=3600".to_owned()),
                ("X-RateLimit-Limit", "10".to_owned()),
                ("X-RateLimit-Remaining", "0".to_owned()),
                ("X-RateLimit-Reset", "10".to_owned()),
                ("Retry-After", "2".to_owned()),
            ]
        );
    }

    #[test]
    fn allowed_headline_is_the_limit_with_fewest_left() {
        let d = Decision {
            allowed: true,
            reason: None,
            retry_after: None,
            rate: Some(RateStatus {
                limit: 50,
                remaining: 49,
                reset_after: Duration::from_millis(100),
                window: Duration::from_secs(5),
            }),
            daily: Some(quota(Period::Day, 100, 98, 60)),
            weekly: None,
            monthly: Some(quota(Period::Month, 10_000, 98, 86_400)),
        };
        let h = d.headline().expect("has limits");
        assert_eq!((h.name, h.remaining), ("day", 2));
        assert!(!d.headers().iter().any(|(k, _)| *k == "Retry-After"));
    }

    #[test]
    fn unlimited_decision_has_no_headers() {
        let d = Decision {
            allowed: true,
            reason: None,
            retry_after: None,
            rate: None,
            daily: None,
            weekly: None,
            monthly: None,
        };
        assert!(d.headers().is_empty());
    }

    #[test]
    fn a_shed_refusal_renders_retry_after_only() {
        // GIVEN a shed refusal WHEN rendered THEN Retry-After alone, no invented budget
        let d = Decision::shed(Duration::from_secs(5));
        assert_eq!(d.headers(), vec![("Retry-After", "5".to_owned())]);
        assert_eq!(d.headline(), None);
        assert_eq!(serde_json::to_value(&d).expect("json")["reason"], "shed");
    }

    #[test]
    fn serializes_durations_as_whole_seconds() {
        let d = Decision {
            allowed: false,
            reason: Some(Reason::DailyQuota),
            retry_after: Some(Duration::from_millis(10)),
            rate: None,
            daily: Some(quota(Period::Day, 5, 5, 7)),
            weekly: None,
            monthly: None,
        };
        let json = serde_json::to_value(&d).expect("serializes");
        assert_eq!(json["retry_after"], 1);
        assert_eq!(json["reason"], "daily_quota");
        assert_eq!(json["daily"]["reset_after"], 7);
    }
}
