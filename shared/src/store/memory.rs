//! The embedded store: sharded maps behind short mutexes, bounded in size.
//!
//! Each decision locks one shard for the duration of a pure `engine::evaluate`, which is the
//! compare-and-set: nothing else can touch the tenant in between.
//!
//! Bounded without forgetting usage: only a tenant whose state is what a fresh tenant would have
//! at that instant (every bucket full, nothing counted in any current period) is evicted.
//! When a shard holds nothing evictable, a new tenant is refused with `StoreError::Full` (the
//! gate answers it with the fail mode) instead of resetting someone's quota.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{Charge, Charged, Consume, Reset, Store, StoreError, Usage};
use crate::engine::clock::Timestamp;
use crate::engine::decision::Decision;
use crate::engine::policy::{BucketId, Limits};
use crate::engine::quota::{Calendar, Counter};
use crate::engine::{self, State};

/// At most one "store full" warning per this much request time: a flood of new tenants must not
/// become a flood of log lines.
const FULL_WARN_EVERY: Duration = Duration::from_secs(60);

/// foldhash: several times faster than SipHash on short keys, and still seeded per process.
type Hasher = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Shard {
    tenants: HashMap<Box<str>, Entry, Hasher>,
    /// No entry can be evicted before this instant (set when an eviction found none): state only
    /// moves forward, so the earliest instant any entry turns fresh can only move later, and a
    /// full shard is not rescanned for every new tenant.
    full_until: Timestamp,
}

#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: Hasher,
    per_shard: usize,
    evictions: AtomicU64,
    full_refusals: AtomicU64,
    /// Request time (s) of the last "store full" warning.
    last_full_warning: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    tat: Option<Timestamp>,
    routes: Vec<(Box<str>, Timestamp)>,
    /// Each period kind's current counter, by `Period::index`.
    current: [Option<Current>; 3],
    /// Closed periods inside the kept window.
    history: Vec<(Counter, u64)>,
    /// The last charge applied of each writer (`Store::charge`): writer, seq.
    charged: Vec<(u64, u64)>,
}

#[derive(Debug, Clone, Copy)]
struct Current {
    counter: Counter,
    used: u64,
    /// When the counter's period ends.
    end: Timestamp,
}

impl Entry {
    fn new() -> Entry {
        Entry {
            tat: None,
            routes: Vec::new(),
            current: [None; 3],
            history: Vec::new(),
            charged: Vec::new(),
        }
    }

    /// The count of `calendar`'s period containing `now`.
    fn used(&mut self, calendar: &Calendar, now: Timestamp) -> &mut u64 {
        let counter = calendar.counter(now);
        self.settle(calendar, counter, now);
        self.count(calendar.period().index(), counter)
    }

    /// Makes room for the count of `counter`, the one of `calendar`'s period containing `now`
    /// (found by the caller). The current counter only rolls forward: a request stamped in an
    /// earlier period of the same calendar (it reached the lock after one stamped in the next
    /// period) counts in that period's history slot, as it would in the DynamoDB item. A calendar
    /// change (another zone, start day or anchor) makes the new calendar's counter current, with
    /// what history already holds for it.
    #[inline]
    fn settle(&mut self, calendar: &Calendar, counter: Counter, now: Timestamp) {
        if !matches!(self.current[calendar.period().index()], Some(c) if c.counter == counter) {
            self.roll(calendar, counter, now);
        }
    }

    /// `settle` when `counter` is not the current one.
    #[inline(never)]
    fn roll(&mut self, calendar: &Calendar, counter: Counter, now: Timestamp) {
        let i = calendar.period().index();
        let current = self.current[i];
        if current.is_some_and(|c| c.counter > counter && calendar.owns(c.counter)) {
            return;
        }
        if let Some(old) = current.filter(|c| c.used > 0) {
            self.history.push((old.counter, old.used));
        }
        let used = match self.history.iter().position(|(h, _)| *h == counter) {
            Some(at) => self.history.swap_remove(at).1,
            None => 0,
        };
        // Only what left the window goes: a later period of another calendar is kept for when
        // the plan changes back.
        let window = calendar.window(now);
        self.history.retain(|(c, _)| !window.is_expired(*c));
        self.current[i] = Some(Current {
            counter,
            used,
            end: calendar.bounds(now).1,
        });
    }

    /// The count of `counter`, of the kind at index `i`, once settled: the current one's, or
    /// its history slot (made on first use).
    #[inline]
    fn count(&mut self, i: usize, counter: Counter) -> &mut u64 {
        if let Some(current) = self.current[i].as_mut().filter(|c| c.counter == counter) {
            return &mut current.used;
        }
        let at = match self.history.iter().position(|(h, _)| *h == counter) {
            Some(at) => at,
            None => {
                self.history.push((counter, 0));
                self.history.len() - 1
            }
        };
        &mut self.history[at].1
    }

    fn tat(&self, id: &BucketId) -> Option<Timestamp> {
        match id {
            BucketId::Plan => self.tat,
            BucketId::Route(name) => self.routes.iter().find(|(n, _)| **n == **name).map(|(_, t)| *t),
        }
    }

    fn set_tat(&mut self, id: &BucketId, tat: Timestamp) {
        match id {
            BucketId::Plan => self.tat = Some(tat),
            BucketId::Route(name) => match self.routes.iter_mut().find(|(n, _)| **n == **name) {
                Some(slot) => slot.1 = tat,
                None => self.routes.push((name.as_str().into(), tat)),
            },
        }
    }

    /// From when this entry decides exactly like no entry at all: every bucket full (TATs
    /// passed) and every current counter's period over (or nothing counted in it). Closed
    /// periods' history does not decide anything, so it does not hold a tenant in memory.
    fn fresh_at(&self) -> Timestamp {
        let counted = self.current.iter().flatten().filter(|c| c.used > 0).map(|c| c.end);
        self.routes
            .iter()
            .map(|(_, t)| *t)
            .chain(self.tat)
            .chain(counted)
            .fold(Timestamp::default(), Timestamp::max)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_capacity(1_000_000)
    }
}

impl MemoryStore {
    /// A store holding at most about `max_tenants` tenants (spread over shards: a shard can fill
    /// a little before the whole store does). Decisions are always exact: only state equivalent to
    /// a fresh tenant is evicted (counted in `evictions`); a new tenant that finds its shard full
    /// of live state is refused with `StoreError::Full` (counted in `full_refusals`).
    pub fn with_capacity(max_tenants: usize) -> MemoryStore {
        let shards = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16).next_power_of_two();
        MemoryStore {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Hasher::default(),
            per_shard: max_tenants.div_ceil(shards).max(1),
            evictions: AtomicU64::new(0),
            full_refusals: AtomicU64::new(0),
            last_full_warning: AtomicU64::new(0),
        }
    }

    /// Tenants forgotten to stay within capacity, each in a state equivalent to a fresh one.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// New tenants refused because their shard was full of state that could not be forgotten.
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals.load(Ordering::Relaxed)
    }

    /// The decision, synchronously: what `Store::consume` does, without the future.
    pub fn decide(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        let mut guard = self.shard(req.tenant);
        let shard = &mut *guard;
        // Known tenants (the hot path) are found without allocating a key.
        let entry = match shard.tenants.get_mut(req.tenant) {
            Some(e) => e,
            None => {
                if shard.tenants.len() >= self.per_shard {
                    self.evict(shard, req.now)?;
                }
                shard.tenants.entry(req.tenant.into()).or_insert_with(Entry::new)
            }
        };
        let bucket = req.limits.bucket.as_ref().map(|(id, _)| id);
        let mut state = State {
            tat: bucket.and_then(|id| entry.tat(id)),
            ..State::default()
        };
        let mut counters = [None; 3];
        for calendar in req.limits.counted() {
            let (i, counter) = (calendar.period().index(), calendar.counter(req.now));
            entry.settle(calendar, counter, req.now);
            state.used[i] = *entry.count(i, counter);
            counters[i] = Some(counter);
        }
        let eval = engine::evaluate(req.limits, &state, req.now, req.weight);
        if let Some(next) = eval.next {
            if let (Some(id), Some(tat)) = (bucket, next.tat) {
                entry.set_tat(id, tat);
            }
            for (i, (counter, used)) in counters.into_iter().zip(next.used).enumerate() {
                if let Some(counter) = counter {
                    *entry.count(i, counter) = used;
                }
            }
        }
        Ok(eval.decision)
    }

    fn shard_index(&self, tenant: &str) -> usize {
        self.hasher.hash_one(tenant) as usize & (self.shards.len() - 1)
    }

    fn shard(&self, tenant: &str) -> MutexGuard<'_, Shard> {
        let i = self.shard_index(tenant);
        // A poisoned shard only means a panic elsewhere mid-update of plain data; keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes room in a full shard by forgetting the tenants whose state is a fresh tenant's, or
    /// says when room will come.
    fn evict(&self, shard: &mut Shard, now: Timestamp) -> Result<(), StoreError> {
        if now >= shard.full_until {
            let before = shard.tenants.len();
            shard.tenants.retain(|_, e| e.fresh_at() > now);
            self.evictions
                .fetch_add((before - shard.tenants.len()) as u64, Ordering::Relaxed);
            if shard.tenants.len() < self.per_shard {
                return Ok(());
            }
            shard.full_until = shard.tenants.values().map(Entry::fresh_at).min().unwrap_or(now);
        }
        self.full_refusals.fetch_add(1, Ordering::Relaxed);
        let retry_after = shard.full_until.saturating_since(now);
        let last = self.last_full_warning.load(Ordering::Relaxed);
        let secs = now.as_secs();
        if (last == 0 || secs >= last.saturating_add(FULL_WARN_EVERY.as_secs()))
            && self
                .last_full_warning
                .compare_exchange(last, secs.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                capacity = self.per_shard * self.shards.len(),
                refused = self.full_refusals(),
                retry_after_secs = retry_after.as_secs(),
                "memory store full of unexpired usage: refusing new tenants rather than forgetting anyone's"
            );
        }
        Err(StoreError::Full {
            capacity: self.per_shard * self.shards.len(),
            retry_after,
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        self.decide(req)
    }

    async fn usage(&self, tenant: &str, limits: &Limits, now: Timestamp) -> Result<Usage, StoreError> {
        let mut shard = self.shard(tenant);
        Ok(match shard.tenants.get_mut(tenant) {
            Some(e) => {
                let current = e.current.iter().flatten().filter(|c| c.used > 0);
                let counters = e.history.iter().copied().chain(current.map(|c| (c.counter, c.used)));
                let mut usage = Usage::from_counters(counters, limits, now);
                usage.tat = e.tat;
                usage
            }
            None => Usage::default(),
        })
    }

    async fn reset(&self, tenant: &str, reset: Reset, limits: &Limits, now: Timestamp) -> Result<(), StoreError> {
        let mut shard = self.shard(tenant);
        if let Some(e) = shard.tenants.get_mut(tenant) {
            if reset.rate {
                e.tat = None;
                e.routes.clear();
            }
            for calendar in limits.counted().filter(|c| reset.clears(c.period())) {
                *e.used(calendar, now) = 0;
            }
        }
        Ok(())
    }

    /// The same contract as the DynamoDB store's: a writer's charge applies once, by its `seq`.
    /// (Its answer always reaches the caller, so the gate sends each once; a second call with
    /// the same `seq` is still refused.) A tenant not held needs room, as a decision does.
    async fn charge(&self, tenant: &str, charge: &Charge, now: Timestamp) -> Result<Charged, StoreError> {
        let mut guard = self.shard(tenant);
        let shard = &mut *guard;
        if !shard.tenants.contains_key(tenant) && shard.tenants.len() >= self.per_shard {
            self.evict(shard, now)?;
        }
        let e = shard.tenants.entry(tenant.into()).or_insert_with(Entry::new);
        match e.charged.iter_mut().find(|(w, _)| *w == charge.writer) {
            Some((_, seq)) if *seq >= charge.seq => return Ok(Charged::AlreadyApplied),
            Some((_, seq)) => *seq = charge.seq,
            None => e.charged.push((charge.writer, charge.seq)),
        }
        for &(counter, n) in &charge.counts {
            let used = e.count(counter.period().index(), counter);
            *used = used.saturating_add_signed(n);
        }
        Ok(Charged::Applied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::decision::Reason;
    use crate::engine::gcra::Bucket;
    use crate::engine::quota::Period;

    // 2026-11-23T17:49:37Z
    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);
    const HOUR: Duration = Duration::from_secs(3600);

    fn limits(daily: Option<u64>) -> Limits {
        Limits::utc(Some((BucketId::Plan, Bucket::per_second(1.0, 5))), daily, None)
    }

    fn consume<'a>(tenant: &'a str, limits: &'a Limits, now: Timestamp) -> Consume<'a> {
        Consume {
            tenant,
            limits,
            weight: 1,
            now,
        }
    }

    /// `n` tenant names that land in the same shard as `tenant`.
    fn neighbours(store: &MemoryStore, tenant: &str, n: usize) -> Vec<String> {
        let shard = store.shard_index(tenant);
        (0..)
            .map(|i| format!("other-{i}"))
            .filter(|t| store.shard_index(t) == shard)
            .take(n)
            .collect()
    }

    #[tokio::test]
    async fn a_tenant_who_spent_its_daily_quota_keeps_it_under_eviction_pressure() {
        // GIVEN a store with room for one tenant per shard, and a tenant that spent its daily
        // quota of 3 and then went quiet (bucket full again, an hour later)
        let store = MemoryStore::with_capacity(1);
        let spent = limits(Some(3));
        for _ in 0..3 {
            assert!(
                store
                    .consume(&consume("spender", &spent, NOW))
                    .await
                    .expect("decides")
                    .allowed
            );
        }
        // WHEN new tenants arrive in its shard, the same day
        let later = NOW.saturating_add(HOUR);
        for other in neighbours(&store, "spender", 20) {
            let _ = store.consume(&consume(&other, &limits(None), later)).await;
        }
        // THEN the spender is still refused until the day ends: nobody got a fresh quota
        let d = store
            .consume(&consume("spender", &spent, later.saturating_add(HOUR)))
            .await
            .expect("decides");
        assert!(!d.allowed, "eviction handed out a fresh daily quota");
        assert_eq!(d.reason, Some(Reason::DailyQuota));
    }

    #[test]
    fn a_full_store_refuses_new_tenants_counts_them_and_says_when_room_comes() {
        // GIVEN a full shard whose tenant has counted usage today
        let store = MemoryStore::with_capacity(1);
        let l = limits(Some(100));
        assert!(store.decide(&consume("held", &l, NOW)).expect("decides").allowed);
        // WHEN a new tenant arrives in that shard, twice
        let newcomer = &neighbours(&store, "held", 1)[0];
        let first = store.decide(&consume(newcomer, &l, NOW)).expect_err("no room");
        let second = store.decide(&consume(newcomer, &l, NOW.saturating_add(HOUR)));
        // THEN it is refused, without touching the held tenant, until the month's counter ends
        // (every request counts towards the month, limited or not)
        let month_end = Calendar::utc(Period::Month).reset_after(NOW);
        assert!(
            matches!(first, StoreError::Full { retry_after, .. } if retry_after == month_end),
            "{first}"
        );
        assert_eq!(first.scope(), super::super::ErrorScope::Item);
        assert!(!first.is_indeterminate());
        assert!(matches!(second, Err(StoreError::Full { .. })));
        assert_eq!((store.full_refusals(), store.evictions()), (2, 0));
        let held = store
            .decide(&consume("held", &l, NOW))
            .expect("held tenants are served");
        assert_eq!(held.daily.map(|q| q.used), Some(2));
    }

    #[tokio::test]
    async fn a_request_stamped_before_midnight_that_arrives_after_one_stamped_after_counts_in_its_own_day() {
        // GIVEN a daily quota of 3, spent by three requests stamped just after midnight
        let l = Limits::utc(None, Some(3), None);
        let midnight = Calendar::utc(Period::Day).bounds(NOW).1;
        let before = Timestamp::from_nanos(midnight.as_nanos() - 1_000_000);
        let after = midnight.saturating_add(Duration::from_millis(1));
        let store = MemoryStore::default();
        for _ in 0..3 {
            assert!(store.decide(&consume("t", &l, after)).expect("decides").allowed);
        }
        // WHEN a request stamped a millisecond before midnight reaches the lock after them
        let late = store.decide(&consume("t", &l, before)).expect("decides");
        // THEN it is decided on the day it was stamped in, which had nothing counted
        assert!(late.allowed);
        assert_eq!(late.daily.map(|q| q.used), Some(1));
        // AND today's count is intact: the next request of today is refused
        let next = store.decide(&consume("t", &l, after)).expect("decides");
        assert!(!next.allowed, "the late request wiped today's count");
        // AND the usage holds both days
        let usage = store.usage("t", &l, after).await.expect("usage");
        let days: Vec<u64> = usage.of(Period::Day).iter().map(|(_, n)| *n).collect();
        assert_eq!(days, vec![1, 3]);
    }

    #[test]
    fn a_calendar_changed_back_finds_its_count_again() {
        // GIVEN a weekly quota of 4 from Monday with 3 counted, then the plan's weeks start on
        // Sunday for one request
        let weekly = |start: u8| Limits {
            bucket: None,
            quotas: [
                None,
                Some(crate::engine::quota::Quota {
                    limit: 4,
                    calendar: Calendar::new(Period::Week, jiff::tz::TimeZone::UTC, start, 1),
                }),
                None,
            ],
        };
        let (monday, sunday) = (weekly(0), weekly(6));
        let store = MemoryStore::default();
        for _ in 0..3 {
            assert!(store.decide(&consume("t", &monday, NOW)).expect("decides").allowed);
        }
        assert!(store.decide(&consume("t", &sunday, NOW)).expect("decides").allowed);
        // WHEN the weeks start on Monday again, in the same week
        let back = store.decide(&consume("t", &monday, NOW)).expect("decides");
        // THEN the Monday week's count is where it was
        assert_eq!(back.weekly.map(|q| q.used), Some(4));
        assert!(!store.decide(&consume("t", &monday, NOW)).expect("decides").allowed);
    }

    #[test]
    fn state_equivalent_to_a_fresh_tenant_makes_room() {
        // GIVEN a full shard whose tenant was last used in the previous month
        let store = MemoryStore::with_capacity(1);
        let l = limits(Some(100));
        assert!(store.decide(&consume("old", &l, NOW)).expect("decides").allowed);
        let next_month = Calendar::utc(Period::Month).bounds(NOW).1.saturating_add(HOUR);
        // WHEN a new tenant arrives in that shard next month
        let newcomer = &neighbours(&store, "old", 1)[0];
        let d = store.decide(&consume(newcomer, &l, next_month)).expect("room was made");
        // THEN the old tenant, whose every bucket was full and whose counters had closed, was
        // evicted to make room, and nobody was refused
        assert!(d.allowed);
        assert_eq!((store.evictions(), store.full_refusals()), (1, 0));
    }
}
