//! The container's predictions: each tenant's item as this container last saw it, compacted,
//! with when it was checked and the hold-off after lost races. A wrong prediction costs one more
//! write, never a wrong answer (the write's failed condition returns the item as it is).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::item::{Snapshot, TatAttr};
use crate::engine::clock::{Timestamp, duration_nanos};
use crate::engine::policy::Limits;
use crate::engine::quota::Counter;

#[derive(Debug)]
pub(super) struct Predictions {
    cache: Mutex<HashMap<Box<str>, Cached>>,
    capacity: usize,
    max_hold_off: Duration,
}

/// A tenant's compacted snapshot as kept between decisions: two boxed slices, no spare capacity,
/// and what this container knows of its own dealings with the tenant.
#[derive(Debug)]
struct Cached {
    tats: Box<[(TatAttr, Timestamp)]>,
    counters: Box<[(Counter, u64)]>,
    /// When the store last answered (or was last asked) for this tenant.
    checked: Timestamp,
    /// Races lost in a row at the bucket's edge.
    losses: u8,
    /// No write for this tenant before this time, unless the cached item shows a free token.
    hold_until: Timestamp,
}

/// What the cache knows of a tenant.
pub(super) struct Seen {
    pub snap: Snapshot,
    pub checked: Timestamp,
    pub hold_until: Timestamp,
}

/// How a write's answer moves the hold-off.
pub(super) enum Race {
    Won,
    Lost(Duration),
    Neither,
}

impl Predictions {
    pub(super) fn new(capacity: usize, max_hold_off: Duration) -> Predictions {
        Predictions {
            // Sized once: growing the table while serving would leave the old ones as fragments.
            cache: Mutex::new(HashMap::with_capacity(capacity)),
            capacity,
            max_hold_off,
        }
    }

    pub(super) fn seen(&self, tenant: &str) -> Option<Seen> {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(tenant)
            .map(|c| Seen {
                snap: Snapshot {
                    tats: c.tats.to_vec(),
                    counters: c.counters.to_vec(),
                    ..Snapshot::default()
                },
                checked: c.checked,
                hold_until: c.hold_until,
            })
    }

    /// Marks a cached tenant as being re-checked, so that concurrent requests keep using the
    /// cache while one of them asks the store.
    pub(super) fn forget(&self, tenant: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant);
    }

    pub(super) fn touch(&self, tenant: &str, now: Timestamp) {
        if let Some(c) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(tenant) {
            c.checked = c.checked.max(now);
        }
    }

    pub(super) fn remember(&self, tenant: &str, snap: Snapshot, limits: &Limits, now: Timestamp, race: Race) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= self.capacity && !cache.contains_key(tenant) {
            // Dropping a prediction costs at most one extra write later; keep it simple.
            cache.clear();
        }
        let snap = snap.compact(limits, now);
        let (mut losses, mut hold_until) = cache
            .get(tenant)
            .map_or((0, Timestamp::from_nanos(0)), |c| (c.losses, c.hold_until));
        match race {
            // One success does not make this container the only one at the edge: the hold-off
            // shrinks by one step rather than vanishing, so a winner by chance steps back again.
            Race::Won => (losses, hold_until) = (losses.saturating_sub(1), Timestamp::from_nanos(0)),
            Race::Lost(window) => {
                losses = losses.saturating_add(1);
                let cap = duration_nanos(self.max_hold_off).max(1);
                let span = duration_nanos(window)
                    .saturating_mul(1 << (2 * u32::from(losses.min(16))))
                    .clamp(1, cap);
                hold_until = now.saturating_add(Duration::from_nanos(rand::random::<u64>() % span));
            }
            Race::Neither => {}
        }
        let cached = Cached {
            tats: snap.tats.into_boxed_slice(),
            counters: snap.counters.into_boxed_slice(),
            checked: now,
            losses,
            hold_until,
        };
        match cache.get_mut(tenant) {
            Some(slot) => *slot = cached,
            None => {
                cache.insert(tenant.into(), cached);
            }
        }
    }
}
