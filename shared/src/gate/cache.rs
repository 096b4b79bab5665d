//! Small bounded caches with per-entry expiry, for directory answers.
//!
//! A full cache evicts its oldest entries one at a time, never all at once, and unknown answers
//! live in a space of their own ([`AnswerCache`]): a flood of random keys can only displace other
//! unknown keys, never a known tenant's entry.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use crate::engine::clock::Timestamp;

#[derive(Debug)]
pub struct TtlCache<K, V> {
    capacity: usize,
    /// How long past its expiry an entry is kept for `get_stale` (zero: dropped at expiry).
    grace: Duration,
    inner: Mutex<Inner<K, V>>,
}

#[derive(Debug)]
struct Inner<K, V> {
    entries: HashMap<K, (V, Timestamp)>,
    /// Insertion order with each insert's expiry. Every entry of one cache gets the same TTL, so
    /// this is also expiry order: the front is the first to expire and the first to evict. An
    /// element whose expiry differs from its entry's is stale (the key was inserted again).
    order: VecDeque<(K, Timestamp)>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    /// The table is sized once: growing it while serving would leave the old ones as fragments.
    /// Untouched slots cost address space, not resident memory.
    pub fn new(capacity: usize) -> Self {
        Self::with_grace(capacity, Duration::ZERO)
    }

    /// A cache that keeps each entry `grace` past its expiry, for `get_stale` only.
    pub fn with_grace(capacity: usize, grace: Duration) -> Self {
        let capacity = capacity.max(1);
        TtlCache {
            capacity,
            grace,
            inner: Mutex::new(Inner {
                entries: HashMap::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
            }),
        }
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Timestamp) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.get_within(key, now, Duration::ZERO)
    }

    /// An entry that expired at most `grace` ago (or is live): the last good answer, for when
    /// the source cannot answer.
    pub fn get_stale<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Timestamp) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.get_within(key, now, self.grace)
    }

    /// An entry that expired less than `past` ago, or is live.
    fn get_within<Q: Hash + Eq + ?Sized>(&self, key: &Q, now: Timestamp, past: Duration) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let inner = self.lock();
        inner
            .entries
            .get(key)
            .filter(|(_, exp)| now < exp.saturating_add(past))
            .map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V, expires: Timestamp, now: Timestamp) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        // Drop what expired past its grace (and stale order elements) from the front.
        while let Some((k, exp)) = inner.order.front() {
            let current = inner.entries.get(k).map(|(_, e)| *e);
            if current == Some(*exp) && now < exp.saturating_add(self.grace) {
                break;
            }
            if current == Some(*exp) {
                inner.entries.remove(k);
            }
            inner.order.pop_front();
        }
        // Full of fresh entries: the oldest goes (a directory read when it is asked for again).
        while inner.entries.len() >= self.capacity && !inner.entries.contains_key(&key) {
            let Some((k, exp)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&k).is_some_and(|(_, e)| *e == exp) {
                inner.entries.remove(&k);
            }
        }
        inner.entries.insert(key.clone(), (value, expires));
        inner.order.push_back((key, expires));
        if inner.order.len() > 2 * self.capacity {
            // Only re-inserts of live keys leave stale elements; rebuild rather than let them pile up.
            let mut live: Vec<(K, Timestamp)> = inner.entries.iter().map(|(k, (_, e))| (k.clone(), *e)).collect();
            live.sort_by_key(|(_, e)| *e);
            inner.order = live.into();
        }
    }

    /// Replaces a live entry's value in place, keeping its expiry and its place in the eviction
    /// order, without allocating a key. `false` when there is no live entry (then `insert`).
    pub fn update<Q: Hash + Eq + ?Sized>(&self, key: &Q, value: V, now: Timestamp) -> bool
    where
        K: Borrow<Q>,
    {
        let mut inner = self.lock();
        match inner.entries.get_mut(key) {
            Some((v, exp)) if now < *exp => {
                *v = value;
                true
            }
            _ => false,
        }
    }

    /// Forgets `key`'s entry, live or kept for `get_stale`. Its place in the eviction order is
    /// left to go stale (as a re-insert's is).
    pub fn remove<Q: Hash + Eq + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.lock().entries.remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A directory answer cache: found answers and "not found" answers in separate bounded spaces,
/// each with its own TTL.
#[derive(Debug)]
pub struct AnswerCache<K, V> {
    found: TtlCache<K, V>,
    missing: TtlCache<K, ()>,
}

impl<K: Hash + Eq + Clone, V: Clone> AnswerCache<K, V> {
    /// Room for `capacity` found answers and, apart, `capacity` unknown ones. Found answers are
    /// kept `grace` past their expiry for `get_stale`; unknown ones are not (a key onboarded
    /// meanwhile would be refused).
    pub fn new(capacity: usize, grace: Duration) -> Self {
        AnswerCache {
            found: TtlCache::with_grace(capacity, grace),
            missing: TtlCache::new(capacity),
        }
    }

    /// The last good found answer, if it expired at most `grace` ago.
    pub fn get_stale(&self, key: &K, now: Timestamp) -> Option<V> {
        self.found.get_stale(key, now)
    }

    /// `Some(answer)` on a hit (`Some(None)`: known to be unknown), `None` on a miss.
    pub fn get(&self, key: &K, now: Timestamp) -> Option<Option<V>> {
        if let Some(v) = self.found.get(key, now) {
            return Some(Some(v));
        }
        self.missing.get(key, now).map(|()| None)
    }

    /// The directory's answer for `key`; it replaces any earlier one, so a key now unknown (a
    /// revoked one) leaves no last good answer behind for `get_stale`.
    pub fn insert(&self, key: K, answer: Option<V>, expires: Timestamp, now: Timestamp) {
        match answer {
            Some(v) => {
                self.missing.remove(&key);
                self.found.insert(key, v, expires, now);
            }
            None => {
                self.found.remove(&key);
                self.missing.insert(key, (), expires, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_a_live_value_in_place_and_keeps_its_expiry() {
        let c: TtlCache<String, u32> = TtlCache::new(4);
        let t = Timestamp::from_secs;
        assert!(!c.update("a", 1, t(0)), "nothing to update yet");
        c.insert("a".to_owned(), 1, t(10), t(0));
        assert!(c.update("a", 2, t(5)));
        assert_eq!(c.get("a", t(9)), Some(2));
        assert_eq!(c.get("a", t(10)), None, "the first insert's expiry still holds");
        assert!(!c.update("a", 3, t(10)), "an expired entry is not revived");
    }

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let c = TtlCache::new(2);
        let t = Timestamp::from_secs;
        c.insert("a", 1, t(10), t(0));
        assert_eq!(c.get(&"a", t(9)), Some(1));
        assert_eq!(c.get(&"a", t(10)), None);
        c.insert("b", 2, t(20), t(0));
        c.insert("c", 3, t(20), t(11));
        assert_eq!(c.len(), 2, "the expired entry made room");
        c.insert("d", 4, t(20), t(11));
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn a_full_cache_evicts_its_oldest_entry_not_everything() {
        // GIVEN a full cache of fresh entries
        let c = TtlCache::new(3);
        let t = Timestamp::from_secs;
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            c.insert(k, i, t(100 + i as u64), t(0));
        }
        // WHEN one more is inserted THEN only the oldest goes
        c.insert("d", 3, t(103), t(1));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get(&"a", t(1)), None);
        assert_eq!(
            [c.get(&"b", t(1)), c.get(&"c", t(1)), c.get(&"d", t(1))],
            [Some(1), Some(2), Some(3)]
        );
    }

    #[test]
    fn reinserting_a_key_keeps_the_order_bounded() {
        let c = TtlCache::new(4);
        for i in 0..1_000u64 {
            let now = Timestamp::from_secs(i);
            c.insert(i % 3, i, now.saturating_add(std::time::Duration::from_secs(1)), now);
        }
        assert!(c.lock().order.len() <= 8);
        assert_eq!(c.get(&(999 % 3), Timestamp::from_secs(999)), Some(999));
    }

    #[test]
    fn a_flood_of_unknown_keys_never_displaces_a_found_answer() {
        // GIVEN a known key cached
        let c: AnswerCache<u32, &str> = AnswerCache::new(10, Duration::ZERO);
        let t = Timestamp::from_secs;
        c.insert(0, Some("acme"), t(60), t(0));
        // WHEN ten times the capacity of unknown keys are cached after it
        for k in 1..=100 {
            c.insert(k, None, t(10), t(1));
        }
        // THEN the known key is still a hit, and the unknown ones stay bounded
        assert_eq!(c.get(&0, t(2)), Some(Some("acme")));
        assert_eq!(c.get(&100, t(2)), Some(None));
        assert_eq!(c.get(&1, t(2)), None, "the oldest unknown key was evicted");
        assert_eq!(c.missing.len(), 10);
    }
}
