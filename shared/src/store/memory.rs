//! The embedded store: sharded maps behind short mutexes, bounded in size.
//!
//! Each decision locks one shard for the duration of a pure `engine::evaluate`, which is the
//! compare-and-set: nothing else can touch the tenant in between.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{Consume, Store, StoreError, Usage};
use crate::clock::Timestamp;
use crate::decision::Decision;
use crate::engine::{self, State};
use crate::policy::BucketId;
use crate::quota::{Counter, Period};

/// Tenants idle this long with a full bucket are the first to go when a shard is full.
const IDLE: Duration = Duration::from_secs(3600);

/// foldhash: several times faster than SipHash on short keys, and still seeded per process.
type Hasher = foldhash::fast::RandomState;
type Shard = HashMap<Box<str>, Entry, Hasher>;

#[derive(Debug)]
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: Hasher,
    per_shard: usize,
    evictions: AtomicU64,
}

#[derive(Debug)]
struct Entry {
    tat: Option<Timestamp>,
    routes: Vec<(Box<str>, Timestamp)>,
    day: (Counter, u64),
    month: (Counter, u64),
    /// Closed periods inside the kept window.
    history: Vec<(Counter, u64)>,
    last_seen: Timestamp,
    /// Days since the epoch of the current counters: a new day is the only time they can roll.
    epoch_day: u64,
}

impl Entry {
    fn new(now: Timestamp) -> Entry {
        Entry {
            tat: None,
            routes: Vec::new(),
            day: (Period::Day.counter(now), 0),
            month: (Period::Month.counter(now), 0),
            history: Vec::new(),
            last_seen: now,
            epoch_day: epoch_day(now),
        }
    }

    /// Rolls the current counters over when `now` is in a later period.
    fn roll(&mut self, now: Timestamp) {
        let today = epoch_day(now);
        if today <= self.epoch_day {
            return;
        }
        self.epoch_day = today;
        for (slot, period) in [(&mut self.day, Period::Day), (&mut self.month, Period::Month)] {
            let current = period.counter(now);
            if slot.0 < current {
                if slot.1 > 0 {
                    self.history.push(*slot);
                }
                *slot = (current, 0);
            }
        }
        if !self.history.is_empty() {
            self.history.retain(|(c, _)| c.is_kept(now));
        }
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

    fn is_idle(&self, now: Timestamp) -> bool {
        let full = |t: &Timestamp| *t <= now;
        self.last_seen.saturating_add(IDLE) <= now
            && self.tat.iter().all(full)
            && self.routes.iter().all(|(_, t)| full(t))
    }
}

fn epoch_day(t: Timestamp) -> u64 {
    t.as_secs() / 86_400
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::with_capacity(1_000_000)
    }
}

impl MemoryStore {
    /// A store holding at most about `max_tenants` tenants. Decisions are exact while the number
    /// of active tenants stays below that; beyond it the least recently seen are forgotten
    /// (counted in `evictions`).
    pub fn with_capacity(max_tenants: usize) -> MemoryStore {
        let shards = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16).next_power_of_two();
        MemoryStore {
            shards: (0..shards).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: Hasher::default(),
            per_shard: max_tenants.div_ceil(shards).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    /// Tenants forgotten to stay within capacity.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// The decision, synchronously: what `Store::consume` does, without the future.
    pub fn decide(&self, req: &Consume<'_>) -> Decision {
        let mut shard = self.shard(req.tenant);
        let entry = match shard.get_mut(req.tenant) {
            Some(e) => e,
            None => {
                if shard.len() >= self.per_shard {
                    self.evict(&mut shard, req.now);
                }
                shard.entry(req.tenant.into()).or_insert_with(|| Entry::new(req.now))
            }
        };
        entry.roll(req.now);
        entry.last_seen = entry.last_seen.max(req.now);
        let bucket = req.limits.bucket.as_ref().map(|(id, _)| id);
        let state = State {
            tat: bucket.and_then(|id| entry.tat(id)),
            daily_used: entry.day.1,
            monthly_used: entry.month.1,
        };
        let eval = engine::evaluate(req.limits, &state, req.now, req.weight);
        if let Some(next) = eval.next {
            if let (Some(id), Some(tat)) = (bucket, next.tat) {
                entry.set_tat(id, tat);
            }
            entry.day.1 = next.daily_used;
            entry.month.1 = next.monthly_used;
        }
        eval.decision
    }

    fn shard(&self, tenant: &str) -> MutexGuard<'_, Shard> {
        let i = self.hasher.hash_one(tenant) as usize & (self.shards.len() - 1);
        // A poisoned shard only means a panic elsewhere mid-update of plain data; keep serving.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn evict(&self, shard: &mut Shard, now: Timestamp) {
        let before = shard.len();
        shard.retain(|_, e| !e.is_idle(now));
        if shard.len() >= self.per_shard
            && let Some(oldest) = shard.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone())
        {
            shard.remove(&oldest);
        }
        self.evictions
            .fetch_add((before - shard.len()) as u64, Ordering::Relaxed);
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn consume(&self, req: &Consume<'_>) -> Result<Decision, StoreError> {
        Ok(self.decide(req))
    }

    async fn usage(&self, tenant: &str, now: Timestamp) -> Result<Usage, StoreError> {
        let mut shard = self.shard(tenant);
        Ok(match shard.get_mut(tenant) {
            Some(e) => {
                e.roll(now);
                let current = [e.day, e.month].into_iter().filter(|(_, n)| *n > 0);
                Usage::from_counters(e.history.iter().copied().chain(current), now)
            }
            None => Usage::default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcra::Bucket;
    use crate::policy::Limits;

    #[test]
    fn capacity_is_bounded_and_idle_tenants_go_first() {
        let store = MemoryStore::with_capacity(1);
        let limits = Limits {
            bucket: Some((BucketId::Plan, Bucket::per_second(1.0, 1))),
            daily: None,
            monthly: None,
        };
        let now = Timestamp::from_secs(1_000_000);
        let total = store.shards.len() * 3;
        for i in 0..total {
            let tenant = format!("t{i}");
            let req = Consume {
                tenant: &tenant,
                limits: &limits,
                weight: 1,
                now,
            };
            assert!(store.decide(&req).allowed);
        }
        let held: usize = store
            .shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum();
        assert!(held <= store.shards.len(), "held {held}");
        assert_eq!(store.evictions() as usize, total - held);
    }
}
