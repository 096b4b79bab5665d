//! Bounded fail-open: while the store cannot decide, a fail-open answer is still the engine's,
//! from a per-container in-memory store. Each tenant gets at most its plan's burst and rate here,
//! and its quotas minus the usage this container last saw the store report, so one container
//! over-admits a tenant by at most `burst + rate × outage` (plus, for a tenant it has never seen
//! the store decide, its quota's remainder), and an outage over `c` containers by `c` times that.
//! Every admission is kept for the write-back (`write_back`), which charges it to the tenant's
//! counters once the store answers again.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::quota::{Counter, QuotaStatus};
use crate::store::{Consume, MemoryStore, Store, StoreError};

use super::cache::TtlCache;
use super::write_back::{WriteBack, WriteBackStats};

/// A usage figure is only used in its own period; past that it is dead weight.
const SEEN_TTL: Duration = Duration::from_secs(32 * 86_400);

#[derive(Debug)]
pub struct Fallback {
    /// Fail-open admissions, by tenant: the bucket and the quota units spent without the store.
    spent: MemoryStore,
    /// The quota usage the store last reported for each tenant. Shared names: the eviction
    /// order's copy of a key costs no allocation of its own.
    seen: TtlCache<Arc<str>, Seen>,
    /// The admissions made here, until they are written to the store.
    write_back: WriteBack,
    capacity: usize,
}

/// Each period kind's counter and its usage, by `Period::index`.
#[derive(Debug, Clone, Copy, Default)]
struct Seen([Option<(Counter, u64)>; 3]);

impl Seen {
    /// What the store reported for the current period of `counter`'s kind.
    fn used(&self, counter: Counter) -> u64 {
        self.0[counter.period().index()]
            .filter(|(c, _)| *c == counter)
            .map_or(0, |(_, n)| n)
    }
}

impl Fallback {
    /// Room for `tenants` tenants (beyond that, only tenants whose state is that of a fresh one
    /// make room, as in every memory store).
    pub fn new(tenants: usize) -> Fallback {
        Fallback {
            spent: MemoryStore::with_capacity(tenants),
            seen: TtlCache::new(tenants),
            write_back: WriteBack::new(tenants),
            capacity: tenants,
        }
    }

    /// Remembers the quota usage of a decision the store made at `now`.
    pub fn observe(&self, tenant: &str, decision: &Decision, now: Timestamp) {
        if decision.quotas().next().is_none() {
            return;
        }
        let mut seen = Seen::default();
        for q in decision.quotas() {
            seen.0[q.period.index()] = Some((q.counter, q.used));
        }
        // On the request path: a known tenant's figures are replaced in place, no key allocated.
        if !self.seen.update(tenant, seen, now) {
            self.seen
                .insert(Arc::from(tenant), seen, now.saturating_add(SEEN_TTL), now);
        }
    }

    /// The engine's decision for a request the store could not decide. Quota figures are against
    /// the plan's quotas: what the store last reported plus what was admitted here since.
    /// `StoreError::Full` when every tenant it tracks still has state it may not forget, or the
    /// write-back holds as many other tenants as it may. An admission is kept for the write-back.
    pub fn decide(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let full = || StoreError::Full {
            capacity: self.capacity,
            retry_after: Duration::ZERO,
        };
        if !self.write_back.has_room(req.tenant) {
            return Err(full());
        }
        let seen = self.seen.get(req.tenant, req.now).unwrap_or_default();
        let used =
            (req.limits.quotas.each_ref()).map(|q| q.as_ref().map_or(0, |q| seen.used(q.calendar.counter(req.now))));
        // The local store counts only what it admitted: give it what is left of each quota.
        let mut left = req.limits.clone();
        for (q, used) in left.quotas.iter_mut().zip(used) {
            if let Some(q) = q.as_mut() {
                q.limit = q.limit.saturating_sub(used);
            }
        }
        let mut decision = self.spent.decide(&Consume { limits: &left, ..*req })?;
        for (slot, quota) in [&mut decision.daily, &mut decision.weekly, &mut decision.monthly]
            .into_iter()
            .zip(&req.limits.quotas)
        {
            if let (Some(q), Some(quota)) = (slot.as_mut(), quota) {
                let before = used[quota.calendar.period().index()];
                *q = QuotaStatus::new(quota, before.saturating_add(q.used), req.now);
            }
        }
        if decision.allowed && !self.write_back.admitted(req.tenant, req.limits, req.weight, req.now) {
            return Err(full());
        }
        Ok(decision)
    }

    /// The store decided `req`: its quota usage is remembered (`observe`), and the tenant's
    /// pending write-back, if any, is sent (within `budget`).
    pub async fn answered(&self, store: &dyn Store, req: &Consume<'_>, decision: &Decision, budget: Duration) {
        self.observe(req.tenant, decision, req.now);
        (self.write_back)
            .settle(store, req.tenant, req.limits, req.now, budget)
            .await;
    }

    pub fn write_back_stats(&self) -> WriteBackStats {
        self.write_back.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::gcra::Bucket;
    use crate::engine::policy::BucketId;
    use crate::engine::policy::Limits;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    fn limits() -> Limits {
        Limits::utc(
            Some((BucketId::Plan, Bucket::per_second(10.0, 50))),
            Some(100),
            Some(1_000),
        )
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
                limits: &Limits::utc(None, Some(100), None),
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
