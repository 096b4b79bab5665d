//! The container's predictions: each tenant's item as this container last saw it, compacted,
//! with when it was checked and the hold-off of one bucket after lost races. A wrong prediction
//! costs one more write, never a wrong answer (the write's failed condition returns the item as
//! it is). Bounded: past its capacity the entries written longest ago are evicted first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::item::{Snapshot, TatAttr};
use crate::engine::clock::{Timestamp, duration_nanos};
use crate::engine::quota::Counter;

#[derive(Debug)]
pub(super) struct Predictions {
    cache: Mutex<Cache>,
    capacity: usize,
    max_hold_off: Duration,
}

/// The entries, and the order they were written in: `(tenant, seq)` per write, oldest first; a
/// pair whose `seq` is no longer the entry's is a stale mark, dropped when reached.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<Arc<str>, Cached>,
    order: VecDeque<(Arc<str>, u64)>,
    seq: u64,
}

/// A tenant's compacted snapshot as kept between decisions: two boxed slices, no spare capacity,
/// and what this container knows of its own dealings with the tenant.
#[derive(Debug)]
struct Cached {
    tats: Box<[(TatAttr, Timestamp)]>,
    counters: Box<[(Counter, u64)]>,
    /// When the store last answered (or was last asked) for this tenant.
    checked: Timestamp,
    /// The bucket this container lost races on lately, if any.
    hold: Option<Hold>,
    window: Window,
    seq: u64,
}

/// Units that reached this process for a tenant in the current span and the last complete one.
#[derive(Debug, Default, Clone, Copy)]
struct Window {
    start: Timestamp,
    units: u64,
    last: u64,
}

impl Window {
    fn observe(&mut self, now: Timestamp, units: u32, span: Duration) {
        if now >= self.start.saturating_add(span) {
            let next = self.start.saturating_add(span).saturating_add(span);
            self.last = if now < next { self.units } else { 0 };
            (self.start, self.units) = (now, 0);
        }
        self.units = self.units.saturating_add(u64::from(units));
    }

    /// Units expected in the next span at `now`: the last complete span's, or the current one's
    /// extrapolated once it has lasted an eighth of a span. Requests at one instant say nothing
    /// of a rate. 0 when one unit or none is expected.
    fn expected(&self, now: Timestamp, span: Duration) -> u64 {
        let elapsed = now.saturating_since(self.start);
        let current = if self.units >= 2 && elapsed >= span / 8 && !elapsed.is_zero() {
            let scaled = u128::from(self.units) * span.as_nanos() / elapsed.as_nanos();
            u64::try_from(scaled).unwrap_or(u64::MAX)
        } else {
            0
        };
        let expected = self.last.max(current);
        if expected > 1 { expected } else { 0 }
    }
}

/// A hold-off on one bucket: no write for it before `until`, unless the cached item shows a free
/// token.
#[derive(Debug, Clone, Copy)]
struct Hold {
    bucket: Option<TatAttr>,
    /// Races lost in a row at the bucket's edge.
    losses: u8,
    until: Timestamp,
}

/// What the cache knows of a tenant.
pub(super) struct Seen {
    pub snap: Snapshot,
    pub checked: Timestamp,
    /// Until when this container holds off the bucket asked about.
    pub hold_until: Timestamp,
}

/// How a write's answer moves the hold-off of a bucket.
pub(super) enum Race {
    Won(Option<TatAttr>),
    /// Lost the bucket's last token; the next one is this far away, one emission interval apart.
    Lost {
        bucket: Option<TatAttr>,
        next_token: Duration,
        interval: Duration,
    },
    Neither,
}

impl Predictions {
    pub(super) fn new(capacity: usize, max_hold_off: Duration) -> Predictions {
        let capacity = capacity.max(1);
        Predictions {
            // Sized once: growing the table while serving would leave the old ones as fragments.
            cache: Mutex::new(Cache {
                entries: HashMap::with_capacity(capacity),
                order: VecDeque::with_capacity(capacity),
                seq: 0,
            }),
            capacity,
            max_hold_off,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The tenant's cached item, and the hold-off of `bucket`.
    pub(super) fn seen(&self, tenant: &str, bucket: Option<TatAttr>) -> Option<Seen> {
        self.lock().entries.get(tenant).map(|c| Seen {
            snap: Snapshot {
                tats: c.tats.to_vec(),
                counters: c.counters.to_vec(),
                ..Snapshot::default()
            },
            checked: c.checked,
            hold_until: c
                .hold
                .filter(|h| h.bucket == bucket)
                .map_or(Timestamp::from_nanos(0), |h| h.until),
        })
    }

    /// Drops a tenant's prediction (after an operator's reset).
    pub(super) fn forget(&self, tenant: &str) {
        self.lock().entries.remove(tenant);
    }

    /// Marks a cached tenant as being re-checked, so that concurrent requests keep using the
    /// cache while one of them asks the store.
    pub(super) fn touch(&self, tenant: &str, now: Timestamp) {
        if let Some(c) = self.lock().entries.get_mut(tenant) {
            c.checked = c.checked.max(now);
        }
    }

    /// Counts `units` arriving for a cached tenant at `now`; the units expected in the next
    /// `span` (0 for a tenant not cached: its first request says nothing of a rate).
    pub(super) fn observe(&self, tenant: &str, now: Timestamp, units: u32, span: Duration) -> u64 {
        if span.is_zero() {
            return 0;
        }
        let mut cache = self.lock();
        let Some(c) = cache.entries.get_mut(tenant) else {
            return 0;
        };
        c.window.observe(now, units, span);
        c.window.expected(now, span)
    }

    pub(super) fn remember(&self, tenant: &str, snap: Snapshot, now: Timestamp, race: Race) {
        let snap = snap.compact(now);
        let mut cache = self.lock();
        let (hold, window) = cache
            .entries
            .get(tenant)
            .map_or((None, Window::default()), |c| (c.hold, c.window));
        let hold = self.next_hold(hold, race, now);
        cache.seq += 1;
        let seq = cache.seq;
        let cached = Cached {
            tats: snap.tats.into_boxed_slice(),
            counters: snap.counters.into_boxed_slice(),
            checked: now,
            hold,
            window,
            seq,
        };
        let key: Arc<str> = match cache.entries.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => tenant.into(),
        };
        cache.entries.insert(key.clone(), cached);
        cache.order.push_back((key, seq));
        cache.evict(self.capacity);
    }

    /// The hold-off after a write's answer: a lost race holds the bucket off until its next token
    /// and a jitter of up to a few emission intervals (more after repeated losses, at most
    /// `max_hold_off`), so that many containers at the edge do not all write for the same token.
    fn next_hold(&self, hold: Option<Hold>, race: Race, now: Timestamp) -> Option<Hold> {
        match race {
            // One success does not make this container the only one at the edge: the losses
            // shrink by one step rather than vanishing.
            Race::Won(bucket) => hold.filter(|h| h.bucket == bucket && h.losses > 1).map(|h| Hold {
                losses: h.losses - 1,
                until: Timestamp::from_nanos(0),
                ..h
            }),
            Race::Lost {
                bucket,
                next_token,
                interval,
            } => {
                let losses = hold
                    .filter(|h| h.bucket == bucket)
                    .map_or(1, |h| h.losses.saturating_add(1).min(4));
                let step = duration_nanos(interval.min(self.max_hold_off)).max(1);
                let jitter = rand::random::<u64>() % step.saturating_mul(u64::from(losses));
                let until = now
                    .saturating_add(next_token)
                    .saturating_add(Duration::from_nanos(jitter));
                Some(Hold { bucket, losses, until })
            }
            Race::Neither => hold,
        }
    }
}

impl Cache {
    /// Evicts the entries written longest ago until `capacity` are left, and drops stale marks
    /// once they outnumber the entries (amortised O(1) per write).
    fn evict(&mut self, capacity: usize) {
        while self.entries.len() > capacity {
            let Some((key, seq)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&key).is_some_and(|c| c.seq == seq) {
                self.entries.remove(&key);
            }
        }
        if self.order.len() > 2 * capacity {
            let entries = &self.entries;
            self.order.retain(|(k, s)| entries.get(k).is_some_and(|c| c.seq == *s));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_secs(1_795_456_177);

    #[test]
    fn a_full_cache_evicts_its_oldest_entries_not_everything() {
        // GIVEN a cache of three tenants, the first rewritten last
        let p = Predictions::new(3, Duration::from_secs(1));
        for t in ["a", "b", "c", "a"] {
            p.remember(t, Snapshot::default(), NOW, Race::Neither);
        }
        // WHEN a fourth arrives
        p.remember("d", Snapshot::default(), NOW, Race::Neither);
        // THEN only the entry written longest ago is gone
        let kept: Vec<bool> = ["a", "b", "c", "d"].iter().map(|t| p.seen(t, None).is_some()).collect();
        assert_eq!(kept, [true, false, true, true]);
        // AND the marks stay bounded however often one tenant is rewritten
        for _ in 0..100 {
            p.remember("a", Snapshot::default(), NOW, Race::Neither);
        }
        assert!(p.lock().order.len() <= 2 * 3 + 1);
        assert_eq!(p.lock().entries.len(), 3);
    }

    #[test]
    fn a_lost_race_holds_off_only_its_bucket_and_not_past_a_few_tokens() {
        let p = Predictions::new(10, Duration::from_secs(60));
        let route = TatAttr::parse("r00ab12");
        let interval = Duration::from_millis(100);
        for _ in 0..10 {
            p.remember(
                "t",
                Snapshot::default(),
                NOW,
                Race::Lost {
                    bucket: route,
                    next_token: interval,
                    interval,
                },
            );
            let held = p.seen("t", route).expect("cached").hold_until;
            // THEN the hold-off ends after the next token and within four intervals of it
            assert!(held >= NOW.saturating_add(interval));
            assert!(held < NOW.saturating_add(interval * 5), "{held:?}");
            // AND the tenant's other buckets are not held off
            assert_eq!(p.seen("t", None).expect("cached").hold_until, Timestamp::from_nanos(0));
        }
    }
}
