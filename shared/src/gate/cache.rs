//! A small bounded cache with per-entry expiry, for directory answers (negative ones included).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

use crate::clock::Timestamp;

#[derive(Debug)]
pub struct TtlCache<K, V> {
    capacity: usize,
    entries: Mutex<HashMap<K, (V, Timestamp)>>,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// The table is sized once: growing it while serving would leave the old ones as fragments.
    /// Untouched slots cost address space, not resident memory.
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        TtlCache {
            capacity,
            entries: Mutex::new(HashMap::with_capacity(capacity)),
        }
    }

    pub fn get(&self, key: &K, now: Timestamp) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(key).filter(|(_, exp)| now < *exp).map(|(v, _)| v.clone())
    }

    pub fn insert(&self, key: K, value: V, expires: Timestamp, now: Timestamp) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (_, exp)| now < *exp);
            if entries.len() >= self.capacity {
                // Everything is fresh: forgetting costs a directory read each, nothing more.
                entries.clear();
            }
        }
        entries.insert(key, (value, expires));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.len() <= 2);
    }
}
