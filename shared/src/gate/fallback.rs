//! Bounded fail-open: while the store cannot decide, a fail-open answer is still the engine's,
//! from a per-container in-memory store. Each tenant gets at most its plan's burst and rate here,
//! and its quotas minus the usage this container last saw the store report and minus what it
//! admitted here since, so one container over-admits a tenant's rate by at most
//! `burst + rate × outage`, and an outage over `c` containers by `c` times that.
//!
//! Nothing it admits goes uncounted: every admission is owed to the store (`owed`) and settled
//! into the tenant's counters once the store answers again (`Store::settle`, one idempotent write
//! per tenant), so quotas, usage and history count it. Quotas can still be overshot during an
//! outage by what other containers admitted meanwhile, never under-counted.

use std::time::Duration;

use crate::engine::State;
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::Limits;
use crate::engine::quota::{Counter, Period, QuotaStatus};
use crate::store::{Consume, MemoryStore, Settled, StoreError};

use super::cache::TtlCache;
use super::owed::{Ledger, Outcome, Pending};

/// A usage figure is only used in its own period; past that it is dead weight.
const SEEN_TTL: Duration = Duration::from_secs(32 * 86_400);

#[derive(Debug)]
pub struct Fallback {
    /// Fail-open admissions, by tenant: the bucket spent without the store.
    spent: MemoryStore,
    /// The quota usage the store last reported for each tenant.
    seen: TtlCache<String, Seen>,
    /// Units admitted here, not yet settled into the store.
    owed: Ledger,
}

#[derive(Debug, Clone, Copy, Default)]
struct Seen {
    day: Option<(Counter, u64)>,
    month: Option<(Counter, u64)>,
}

impl Seen {
    fn used(&self, period: Period, now: Timestamp) -> u64 {
        let slot = match period {
            Period::Day => self.day,
            Period::Month => self.month,
        };
        slot.filter(|(c, _)| *c == period.counter(now)).map_or(0, |(_, n)| n)
    }

    /// Adds settled units of the current periods: the store holds them now, so the figures it
    /// last reported were short of them.
    fn add(&mut self, units: &[(Counter, u64)], now: Timestamp) {
        for period in [Period::Day, Period::Month] {
            let current = period.counter(now);
            let settled: u64 = units.iter().filter(|(c, _)| *c == current).map(|(_, n)| n).sum();
            if settled > 0 {
                let used = self.used(period, now) + settled;
                let slot = match period {
                    Period::Day => &mut self.day,
                    Period::Month => &mut self.month,
                };
                *slot = Some((current, used));
            }
        }
    }
}

impl Fallback {
    /// Room for `tenants` tenants (beyond that, only tenants whose state is that of a fresh one
    /// make room, as in every memory store), and as many owing the store at once.
    pub fn new(tenants: usize) -> Fallback {
        Fallback {
            spent: MemoryStore::with_capacity(tenants),
            seen: TtlCache::new(tenants),
            owed: Ledger::new(tenants),
        }
    }

    /// Remembers the quota usage of a decision the store made at `now`.
    pub fn observe(&self, tenant: &str, decision: &Decision, now: Timestamp) {
        if decision.daily.is_none() && decision.monthly.is_none() {
            return;
        }
        let at = |q: Option<QuotaStatus>, period: Period| q.map(|q| (period.counter(now), q.used));
        let seen = Seen {
            day: at(decision.daily, Period::Day),
            month: at(decision.monthly, Period::Month),
        };
        // On the request path: a known tenant's figures are replaced in place, no key allocated.
        if !self.seen.update(tenant, seen, now) {
            self.seen
                .insert(tenant.to_owned(), seen, now.saturating_add(SEEN_TTL), now);
        }
    }

    /// The engine's decision for a request the store could not decide. Quota figures are against
    /// the plan's quotas: what the store last reported plus what was admitted here and not yet
    /// settled. `StoreError::Full` when the tenant cannot be tracked (every tenant tracked still
    /// has state it may not forget, or owes the store): admitting it would go uncounted.
    pub fn decide(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let now = req.now;
        let mut book = self.owed.lock();
        if !self.owed.has_room(&book, req.tenant) {
            return Err(StoreError::Full {
                capacity: book.len(),
                retry_after: Duration::from_secs(1),
            });
        }
        let seen = self.seen.get(req.tenant, now).unwrap_or_default();
        let counters = [Period::Day.counter(now), Period::Month.counter(now)];
        let used = |period: Period, counter: Counter| seen.used(period, now) + Ledger::owed(&book, req.tenant, counter);
        let state = State {
            tat: None,
            daily_used: used(Period::Day, counters[0]),
            monthly_used: used(Period::Month, counters[1]),
        };
        let quotas = Limits {
            bucket: None,
            ..req.limits.clone()
        };
        let by_quota = crate::engine::evaluate(&quotas, &state, now, req.weight);
        if by_quota.next.is_none() {
            return Ok(by_quota.decision);
        }
        // The quotas admit: the bucket decides (and is spent only now).
        let bucket = Limits {
            bucket: req.limits.bucket.clone(),
            ..Limits::UNLIMITED
        };
        let mut decision = self.spent.decide(&Consume {
            limits: &bucket,
            ..*req
        })?;
        if decision.allowed {
            (decision.daily, decision.monthly) = (by_quota.decision.daily, by_quota.decision.monthly);
            self.owed.add(&mut book, req.tenant, &counters, u64::from(req.weight));
        } else {
            let status = |q: Option<u64>, period, used| q.map(|q| QuotaStatus::new(period, q, used, now));
            decision.daily = status(req.limits.daily, Period::Day, state.daily_used);
            decision.monthly = status(req.limits.monthly, Period::Month, state.monthly_used);
        }
        Ok(decision)
    }

    /// Whether any tenant owes the store: one atomic load, on every decision the store made.
    pub fn owes(&self) -> bool {
        self.owed.owes()
    }

    /// A charge to settle: `tenant`'s when it owes, else another owing tenant's.
    pub fn take_charge(&self, tenant: &str, draw: impl FnOnce() -> u64) -> Option<Pending<'_>> {
        self.owed.take(tenant, draw)
    }

    /// Records a settlement's outcome. Settled units count as the store's usage from now on,
    /// in the figures this container last saw too (the store's next answer will include them).
    pub fn settled(&self, pending: Pending<'_>, outcome: &Result<Settled, StoreError>, now: Timestamp) {
        let tenant = pending.tenant.clone();
        if let Outcome::Settled(units) = self.owed.report(pending, outcome) {
            let mut seen = self.seen.get(&*tenant, now).unwrap_or_default();
            seen.add(&units, now);
            if !self.seen.update(&*tenant, seen, now) {
                self.seen.insert(tenant.into(), seen, now.saturating_add(SEEN_TTL), now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gcra::Bucket;
    use crate::engine::policy::BucketId;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn limits() -> Limits {
        Limits {
            bucket: Some((BucketId::Plan, Bucket::per_second(10.0, 50))),
            daily: Some(100),
            monthly: Some(1_000),
        }
    }

    fn admitted(f: &Fallback, tenant: &str, now: Timestamp, n: usize) -> usize {
        let limits = limits();
        let req = Consume {
            tenant,
            limits: &limits,
            weight: 1,
            now,
        };
        (0..n)
            .filter(|_| f.decide(&req).expect("room for the tenant").allowed)
            .count()
    }

    #[test]
    fn a_tenant_gets_at_most_its_burst_and_rate_without_the_store() {
        let f = Fallback::new(100);
        assert_eq!(admitted(&f, "a", NOW, 500), 50, "the burst");
        let later = NOW.saturating_add(Duration::from_secs(2));
        assert_eq!(admitted(&f, "a", later, 500), 20, "rate × 2 s");
        assert_eq!(admitted(&f, "b", later, 500), 50, "each tenant has its own bucket");
    }

    #[test]
    fn a_container_that_saw_90_of_100_spent_admits_at_most_10_more() {
        // GIVEN the store last reported 90 of the daily 100 used
        let f = Fallback::new(100);
        let decision = crate::store::MemoryStore::default()
            .decide(&Consume {
                tenant: "a",
                limits: &Limits {
                    bucket: None,
                    daily: Some(100),
                    monthly: None,
                },
                weight: 90,
                now: NOW,
            })
            .expect("room");
        assert_eq!(decision.daily.map(|q| q.used), Some(90));
        f.observe("a", &decision, NOW);
        // WHEN the store is gone for long enough to refill the bucket many times over
        let mut total = 0;
        for s in 0..60 {
            total += admitted(&f, "a", NOW.saturating_add(Duration::from_secs(s)), 100);
        }
        // THEN the quota holds: 10 more, and the last refusal reports the quota as spent
        assert_eq!(total, 10);
        let limits = limits();
        let refused = f
            .decide(&Consume {
                tenant: "a",
                limits: &limits,
                weight: 1,
                now: NOW.saturating_add(Duration::from_secs(61)),
            })
            .expect("room");
        assert_eq!(refused.daily.map(|q| (q.used, q.remaining)), Some((100, 0)));
        assert_eq!(refused.reason, Some(crate::engine::decision::Reason::DailyQuota));
    }

    #[test]
    fn a_full_fallback_refuses_a_new_tenant_instead_of_forgetting_one() {
        // GIVEN a fallback with room for few tenants, each of which spent part of its burst
        let f = Fallback::new(1);
        let limits = limits();
        // WHEN ever more tenants fail open at the same instant
        let names: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
        let first_full = names.iter().position(|tenant| {
            let req = Consume {
                tenant,
                limits: &limits,
                weight: 1,
                now: NOW,
            };
            f.decide(&req).is_err()
        });
        // THEN at some point a new tenant is refused (the gate then fails closed for it), and
        // the tenants already tracked keep what they spent: the first one is not fresh again
        let first_full = first_full.expect("the fallback fills up");
        assert!(first_full >= 1);
        let spent_before = admitted(&f, "t0", NOW, 100);
        assert_eq!(spent_before, 49, "t0 keeps its first admission: 50 - 1 left");
    }
}
